package e2e

import (
	"bufio"
	"debug/elf"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestImageBuildIsStatic builds the binary with the Dockerfile's own `go
// build` line (read from the Dockerfile, so the two cannot drift; only the
// -o path is changed), checks it is static (no ELF interpreter: it runs on
// distroless/static, which has no libc or loader), and starts it as the
// image does: `serve`, with an empty environment but for the required
// settings, PORT (Railway sets it) and the image's DATA_DIR. /healthz must
// answer 200, and SIGTERM must end it with exit 0.
func TestImageBuildIsStatic(t *testing.T) {
	t.Parallel()
	env, args := dockerfileBuild(t, "../../Dockerfile")
	bin := filepath.Join(t.TempDir(), "consentline")
	for i, a := range args {
		if a == "-o" && i+1 < len(args) {
			args[i+1] = bin
		}
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command(goTool, args...)
	build.Dir = "../.."
	build.Env = append(os.Environ(), env...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the image's binary has an ELF interpreter (dynamically linked): it will not start on distroless/static")
		}
	}
	_ = f.Close()

	s := newSecrets(t)
	port := freePort(t)
	cmd := exec.Command(bin, "serve")
	cmd.Dir = t.TempDir()
	cmd.Env = []string{ // nothing inherited, not even PATH or HOME
		"PORT=" + port,
		"DATA_DIR=" + t.TempDir(),
		"PUBLIC_BASE_URL=https://consent.example.com",
		"TWILIO_ACCOUNT_SID=" + s.accountSID,
		"TWILIO_AUTH_TOKEN=" + s.authToken,
		"ENCRYPTION_KEY=" + s.keyHex,
	}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("http://127.0.0.1:" + port + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("/healthz answered %d", resp.StatusCode)
			}
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("serve exited before answering /healthz: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz did not answer within 30 s:\n%s", out.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Errorf("still running 20 s after SIGTERM")
	}
}

// dockerfileBuild reads the Dockerfile's `RUN … go build …` line and
// returns its environment assignments and the go command's arguments.
func dockerfileBuild(t *testing.T, path string) (env, args []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "RUN ") || !strings.Contains(line, " go build ") {
			continue
		}
		words, err := shellWords(strings.TrimPrefix(line, "RUN "))
		if err != nil {
			t.Fatalf("Dockerfile build line: %v", err)
		}
		for i, w := range words {
			if w == "go" {
				return env, words[i+1:]
			}
			if !strings.Contains(w, "=") {
				t.Fatalf("Dockerfile build line: %q before go is not an assignment", w)
			}
			env = append(env, w)
		}
	}
	t.Fatal("the Dockerfile has no `RUN … go build` line")
	return nil, nil
}

// shellWords splits a simple shell command line: words separated by
// blanks, single quotes kept together. Anything more (double quotes,
// escapes, expansions, &&) is refused, so the Dockerfile's build line stays
// something this test runs exactly.
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord, quoted := false, false
	for _, r := range s {
		switch {
		case quoted:
			if r == '\'' {
				quoted = false
			} else {
				w.WriteRune(r)
			}
		case r == '\'':
			quoted, inWord = true, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case strings.ContainsRune("\"\\$&|;<>`()", r):
			return nil, fmt.Errorf("%q is more shell than this test runs", string(r))
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote")
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}
