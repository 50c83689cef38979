package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// consentlineBinary builds ./cmd/consentline once per test run (without
// -race: the subprocess is what is being tested, not instrumented) and
// returns its path.
func consentlineBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "consentline-e2e-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "consentline")
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command(goTool, "build", "-o", binPath, "github.com/consentline/consentline/cmd/consentline")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/consentline: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// environ turns settings into a process environment: nothing is inherited
// but PATH, so a developer's own DATABASE_URL or keys cannot leak in.
func environ(env map[string]string) []string {
	out := []string{"PATH=" + os.Getenv("PATH")}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out
}

// serverProc is one `consentline serve` subprocess.
type serverProc struct {
	cmd    *exec.Cmd
	out    *lockedBuffer // stdout and stderr (the JSON log)
	exited chan struct{}
	err    error // Wait's result, once exited is closed
}

// startServe starts `consentline serve` with env and waits until it has
// logged that it serves and /readyz answers 200. The process is killed at
// the end of the test if it still runs; its output is shared by restarts
// through out.
//
// A port from freePort can be taken by another process between freePort
// and serve binding it (tests start servers in parallel): then serve exits
// saying so, and startServe moves env to a fresh port (PORT and a
// PUBLIC_BASE_URL on it) and starts again. It waits for serve's own
// "consentline serving" line, not only for /readyz, which another
// process on the port could answer.
func startServe(t testing.TB, env map[string]string, out *lockedBuffer) *serverProc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		p, inUse := tryStartServe(t, env, out)
		if !inUse {
			return p
		}
		if attempt == 3 {
			t.Fatalf("consentline serve found its port taken 3 times:\n%s", out.String())
		}
		old := env["PORT"]
		env["PORT"] = freePort(t)
		if env["PUBLIC_BASE_URL"] == "http://127.0.0.1:"+old {
			env["PUBLIC_BASE_URL"] = "http://127.0.0.1:" + env["PORT"]
		}
	}
}

// tryStartServe is one start of startServe; inUse reports that serve
// exited because its port was taken.
func tryStartServe(t testing.TB, env map[string]string, out *lockedBuffer) (p *serverProc, inUse bool) {
	t.Helper()
	logStart := len(out.String())
	p = &serverProc{out: out, exited: make(chan struct{})}
	p.cmd = exec.Command(consentlineBinary(t), "serve")
	p.cmd.Env = environ(env)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.kill)

	readyz := "http://127.0.0.1:" + env["PORT"] + "/readyz"
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.exited:
			if log := out.String()[logStart:]; strings.Contains(log, "address already in use") {
				return nil, true
			}
			t.Fatalf("consentline serve exited before it was ready: %v\n%s", p.err, out.String())
		default:
		}
		if strings.Contains(out.String()[logStart:], `"msg":"consentline serving"`) {
			if resp, err := client.Get(readyz); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return p, false
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("consentline serve not ready within 30 s:\n%s", out.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// kill SIGKILLs the process (no shutdown of any kind) and waits for it.
func (p *serverProc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// runCLI runs one consentline command to completion.
func runCLI(t testing.TB, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, consentlineBinary(t), args...)
	cmd.Env = environ(env)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("consentline %v: %v", args, err)
	}
	return code, o.String(), e.String()
}

// freePort returns a loopback TCP port nothing listens on right now.
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// serveEnv is a complete `consentline serve` configuration on databaseURL,
// relaying to hookURL, with fresh credentials.
func serveEnv(t testing.TB, s secrets, databaseURL, hookURL string) map[string]string {
	port := freePort(t)
	return map[string]string{
		"PORT":                 port,
		"PUBLIC_BASE_URL":      "http://127.0.0.1:" + port,
		"TWILIO_ACCOUNT_SID":   s.accountSID,
		"TWILIO_AUTH_TOKEN":    s.authToken,
		"ENCRYPTION_KEY":       s.keyHex,
		"ZAPIER_WEBHOOK_URL":   hookURL,
		"RELAY_SIGNING_SECRET": s.signingSecret,
		"DATABASE_URL":         databaseURL,
		"DATA_DIR":             t.TempDir(),
	}
}
