package relay

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
)

// zapierCode extracts the Code by Zapier step from docs/zapier.md, so the
// documented code is the tested code.
func zapierCode(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "zapier.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	_, after, ok := strings.Cut(s, "<!-- BEGIN zapier-code")
	code, _, ok2 := strings.Cut(after, "<!-- END zapier-code -->")
	if !ok || !ok2 {
		t.Fatal("docs/zapier.md: zapier-code markers not found")
	}
	_, code, _ = strings.Cut(code, "```javascript\n")
	code, _, _ = strings.Cut(code, "```")
	return code
}

// runZapierStep runs the documented code in Node the way Code by Zapier
// does: inputData in scope, output read back.
func runZapierStep(t *testing.T, input map[string]string) (map[string]any, error) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("node is not installed")
		}
		t.Skip("node is not installed")
	}
	harness := "const inputData = JSON.parse(require('fs').readFileSync(0, 'utf8'));\nlet output;\n" +
		"(async () => {\n" + zapierCode(t) + "\nprocess.stdout.write(JSON.stringify(output));\n})()" +
		".catch((e) => { process.stderr.write(String(e.message)); process.exit(3); });\n"
	file := filepath.Join(t.TempDir(), "step.js")
	if err := os.WriteFile(file, []byte(harness), 0o600); err != nil {
		t.Fatal(err)
	}
	in, _ := json.Marshal(input)
	cmd := exec.Command(node, file)
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, &nodeError{msg: stderr.String()}
	}
	var out map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("node output %q: %v", stdout.String(), err)
	}
	return out, nil
}

type nodeError struct{ msg string }

func (e *nodeError) Error() string { return e.msg }

func TestZapierCodeStepVerifiesAndDecryptsARealEvent(t *testing.T) {
	// Rotated keyring: the transcript is still under the retired key in the
	// event given to Node, to show kid-based key choice.
	old := keyring(t, hexA, "")
	k := keyring(t, hexB, hexA)
	rec := record(t, k, "rec_node", "CA_NODE")
	ev, err := NewConsentEvent(rec, k)
	if err != nil {
		t.Fatal(err)
	}
	// An event value under the old kid, as an event stored before the
	// rotation has it (NewConsentEvent re-seals under the active key).
	ev.Transcript, _ = old.SealFor(ValueBinding(ev, consent.FieldTranscript), "sí, acepto ✓")
	body, _ := ev.Body(PIIEncrypted)
	signer, _ := ParseSigningSecret(vecSecret)
	now := time.Now()
	input := map[string]string{
		"rawBody":          string(body),
		"webhookId":        ev.ID,
		"webhookTimestamp": itoa(now.Unix()),
		"webhookSignature": signer.Sign(ev.ID, now, body),
		"signingSecret":    vecSecret,
		"encryptionKeys":   hexB + ", " + hexA,
	}
	out, err := runZapierStep(t, input)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"id": "rec_node", "type": "consent.granted", "call_sid": "CA_NODE", "source": "speech",
		"confidence": 0.93, "disclosure_version": "2026-01", "disclosure_heard_ms": float64(12345), "barge_in": true,
		"patient_ref": rec.PatientRef, "from": "+14158675309", "to": "+18005551212", "transcript": "sí, acepto ✓",
	}
	for f, v := range want {
		if out[f] != v {
			t.Errorf("%s = %v, want %v", f, out[f], v)
		}
	}

	// Without keys it verifies and passes the JWE strings through.
	noKeys := clone(input)
	noKeys["encryptionKeys"] = ""
	if out, err := runZapierStep(t, noKeys); err != nil || out["from"] != string(ev.From) {
		t.Fatalf("pass-through: %v %v", out["from"], err)
	}

	for name, mod := range map[string]func(map[string]string){
		"tampered body": func(m map[string]string) { m["rawBody"] = strings.Replace(m["rawBody"], "granted", "declined", 1) },
		"wrong secret":  func(m map[string]string) { m["signingSecret"] = "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0" },
		"stale timestamp": func(m map[string]string) {
			old := now.Add(-time.Hour)
			m["webhookTimestamp"] = itoa(old.Unix())
			m["webhookSignature"] = signer.Sign(ev.ID, old, body)
		},
		"missing key":     func(m map[string]string) { m["encryptionKeys"] = hexB },
		"tampered cipher": func(m map[string]string) { tamperField(t, m, signer, ev.ID, now) },
		"missing headers": func(m map[string]string) { m["webhookSignature"] = "" },
	} {
		m := clone(input)
		mod(m)
		if _, err := runZapierStep(t, m); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "8675309") {
			t.Errorf("%s: error leaks PHI: %v", name, err)
		}
	}
}

// tamperField flips a ciphertext byte inside a correctly re-signed body, so
// only the JWE tag check can catch it.
func tamperField(t *testing.T, m map[string]string, s *Signer, id string, now time.Time) {
	var ev map[string]any
	_ = json.Unmarshal([]byte(m["rawBody"]), &ev)
	parts := strings.Split(ev["from"].(string), ".")
	c := []byte(parts[3])
	if c[0] == 'A' {
		c[0] = 'B'
	} else {
		c[0] = 'A'
	}
	parts[3] = string(c)
	ev["from"] = strings.Join(parts, ".")
	body, _ := json.Marshal(ev)
	m["rawBody"] = string(body)
	m["webhookSignature"] = s.Sign(id, now, body)
}

func clone(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }
