package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	_ "modernc.org/sqlite"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
)

// decideCalls runs n calls to a decision against a server on dataDir, the
// way serve wires it, and returns the record ids.
func decideCalls(t *testing.T, env map[string]string, n int) []string {
	t.Helper()
	ctx := context.Background()
	s, err := loadSettings(getenv(env))
	if err != nil {
		t.Fatal(err)
	}
	outbox := &outboxSettings{keys: s.Keys}
	b, err := openBackends(ctx, "", "", s.DataDir, outbox, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	cfg, _, err := newApp(ctx, s, b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ivr.New(cfg))
	defer srv.Close()
	tw := &twiliosim.Twilio{PublicBaseURL: s.PublicBaseURL, Target: srv.URL, AuthToken: s.AuthToken, AccountSID: s.AccountSID}
	var ids []string
	for i := range n {
		c := &twiliosim.Call{Twilio: tw, SID: fmt.Sprintf("CA%032x", 0xca11+i), From: "+14155550123", To: "+18005550199"}
		resp, err := c.Start(ctx, ivr.PathIncoming)
		if err != nil {
			t.Fatal(err)
		}
		g, _ := resp.SpeechGather()
		if _, err := c.TwiML(ctx, g.Attr("action"), c.Params(url.Values{"Digits": {"1"}})); err != nil {
			t.Fatal(err)
		}
		rec, err := b.store.Get(ctx, c.SID, s.Scripts.Default().ID)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec.ID)
	}
	return ids
}

func runCmd(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, getenv(env), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestOperatorCommands(t *testing.T) {
	env := validEnv()
	env["DATA_DIR"] = t.TempDir()
	ids := decideCalls(t, env, 3)

	code, out, errOut := runCmd(t, env, "audit", "verify")
	if code != 0 || !regexp.MustCompile(`audit chains intact: 3 entries in [1-3] chains, head [0-9a-f]{64}`).MatchString(out) {
		t.Fatalf("audit verify: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = runCmd(t, env, "relay", "list", "--failed")
	if code != 0 || !strings.Contains(out, "no failed deliveries") {
		t.Errorf("relay list --failed: exit %d: %s", code, out)
	}
	if code, _, errOut = runCmd(t, env, "relay", "replay", ids[0]); code == 0 || !strings.Contains(errOut, "ZAPIER_WEBHOOK_URL") {
		t.Errorf("replay with the relay off: exit %d: %s", code, errOut)
	}
	zapier := map[string]string{"ZAPIER_WEBHOOK_URL": "https://hooks.zapier.com/hooks/catch/1/abc/", "RELAY_SIGNING_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
	for k, v := range zapier {
		env[k] = v
	}
	if code, _, errOut = runCmd(t, env, "relay", "replay", "no-such-event"); code == 0 || !strings.Contains(errOut, "no such event") {
		t.Errorf("replay of an unknown event: exit %d: %s", code, errOut)
	}
	if code, out, errOut = runCmd(t, env, "relay", "replay", ids[0]); code != 0 || !strings.Contains(out, "queued for delivery again") {
		t.Errorf("replay: exit %d: %s%s", code, out, errOut)
	}
	if code, out, _ = runCmd(t, env, "relay", "replay", ids[0]); code != 0 || !strings.Contains(out, "already queued") {
		t.Errorf("second replay: exit %d: %s", code, out)
	}
	if code, _, errOut = runCmd(t, env, "relay", "list"); code != exitUsage {
		t.Errorf("relay list without --failed: exit %d: %s", code, errOut)
	}

	// decrypt opens a stored PHI field with the configured key, and refuses
	// without it.
	db, err := sql.Open("sqlite", filepath.Join(env["DATA_DIR"], "consentline.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sealed string
	if err := db.QueryRow(`SELECT from_sealed FROM consent_records WHERE id = ?`, ids[0]).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut = runCmd(t, env, "decrypt", sealed); code != 0 || strings.TrimSpace(out) != "+14155550123" {
		t.Errorf("decrypt: exit %d %q %s", code, out, errOut)
	}
	other := validEnv()
	other["ENCRYPTION_KEY"] = strings.Repeat("cd", 32)
	if code, out, errOut = runCmd(t, other, "decrypt", sealed); code == 0 || strings.Contains(out+errOut, "4155550123") || !strings.Contains(errOut, pii.SealedKID(consent.Sealed(sealed))) {
		t.Errorf("decrypt with the wrong key: exit %d %q %q", code, out, errOut)
	}

	// Tampering with one audit row (the triggers have to go first) is named
	// by chain, seq and event id.
	if _, err := db.Exec(`DROP TRIGGER IF EXISTS relay_audit_no_update`); err != nil {
		t.Fatal(err)
	}
	var chain, seq int
	if err := db.QueryRow(`SELECT chain, seq FROM relay_audit WHERE event_id = ?`, ids[1]).Scan(&chain, &seq); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE relay_audit SET event = replace(event, 'consent.granted', 'consent.declined') WHERE event_id = ?`, ids[1]); err != nil {
		t.Fatalf("tamper: %v", err)
	}
	code, _, errOut = runCmd(t, env, "audit", "verify")
	if code == 0 || !strings.Contains(errOut, fmt.Sprintf("chain %d broken at seq %d", chain, seq)) || !strings.Contains(errOut, ids[1]) {
		t.Errorf("audit verify after tampering: exit %d: %s", code, errOut)
	}
}
