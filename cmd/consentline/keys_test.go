package main

import (
	"context"
	"database/sql"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/pii/piitest"
)

// keys rotate re-seals the database under the new ENCRYPTION_KEY, after
// which only the new key is needed for the records (patient_ref unchanged)
// while the audit log's copies keep the old one; a second run rotates 0.
func TestKeysRotate(t *testing.T) {
	oldHex, newHex := strings.Repeat("ab", 32), strings.Repeat("cd", 32)
	env := validEnv()
	env["ENCRYPTION_KEY"] = oldHex
	env["DATA_DIR"] = t.TempDir()
	ids := decideCalls(t, env, 3)

	db, err := sql.Open("sqlite", filepath.Join(env["DATA_DIR"], "consentline.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// One value as an older version stored it: not bound to its place.
	var sid string
	if err := db.QueryRow(`SELECT call_sid FROM started_calls ORDER BY call_sid LIMIT 1`).Scan(&sid); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE started_calls SET to_sealed = ? WHERE call_sid = ?`, string(piitest.LegacySeal(t, oldHex, "+18005550199")), sid); err != nil {
		t.Fatal(err)
	}
	var patientRef, event string
	if err := db.QueryRow(`SELECT patient_ref FROM consent_records WHERE id = ?`, ids[0]).Scan(&patientRef); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT event FROM relay_audit WHERE event_id = ?`, ids[0]).Scan(&event); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := runCmd(t, env, "keys", "status")
	if code != 0 || !regexp.MustCompile(`\d+ stored values; 0 still under retired keys`).MatchString(out) || !strings.Contains(out, "1 sealed before values were bound") {
		t.Fatalf("keys status: exit %d\n%s%s", code, out, errOut)
	}

	rotating := validEnv()
	rotating["DATA_DIR"] = env["DATA_DIR"]
	rotating["ENCRYPTION_KEY"], rotating["ENCRYPTION_KEYS_RETIRED"] = newHex, oldHex
	oldKID := pii.KeyID(mustKey(t, oldHex))
	code, out, errOut = runCmd(t, rotating, "keys", "status")
	if code != 0 || !regexp.MustCompile(`(\d+) stored values; (\d+) still under retired keys \(kid `+oldKID+`: \d+\)`).MatchString(out) {
		t.Fatalf("keys status before rotating: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCmd(t, rotating, "keys", "rotate", "--batch", "2")
	m := regexp.MustCompile(`rotated (\d+) values; 0 still under retired keys`).FindStringSubmatch(out)
	if code != 0 || m == nil || m[1] == "0" || !strings.Contains(out, "can go from ENCRYPTION_KEYS_RETIRED") ||
		!strings.Contains(out, "relay_audit: not rewritten") || !strings.Contains(errOut, "consent_records: re-sealed") {
		t.Fatalf("keys rotate: exit %d\n%s%s", code, out, errOut)
	}
	for _, phi := range []string{"4155550123", "8005550199"} {
		if strings.Contains(out+errOut, phi) {
			t.Fatalf("keys rotate printed PHI")
		}
	}
	t.Logf("keys rotate:\n%s%s", out, errOut)
	if code, out, _ = runCmd(t, rotating, "keys", "rotate"); code != 0 || !strings.Contains(out, "rotated 0 values; 0 still under retired keys") {
		t.Fatalf("second keys rotate: exit %d\n%s", code, out)
	}

	// Only the new key from here: the records open, patient_ref is the same.
	newOnly := validEnv()
	newOnly["DATA_DIR"] = env["DATA_DIR"]
	newOnly["ENCRYPTION_KEY"] = newHex
	var from string
	if err := db.QueryRow(`SELECT from_sealed FROM consent_records WHERE id = ?`, ids[0]).Scan(&from); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut = runCmd(t, newOnly, "decrypt", from); code != 0 || strings.TrimSpace(out) != "+14155550123" {
		t.Fatalf("decrypt a rotated value with the new key only: exit %d %q %s", code, out, errOut)
	}
	keys, err := pii.ParseKeyring(newHex, "")
	if err != nil {
		t.Fatal(err)
	}
	d, err := openDatabase(context.Background(), "", env["DATA_DIR"], nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.store.Close()
	p, err := pii.LoadPseudonymizer(context.Background(), d.store, keys)
	if err != nil || p.Ref("+14155550123") != patientRef {
		t.Fatalf("patient_ref after rotation: %v (changed: %v)", err, p == nil || p.Ref("+14155550123") != patientRef)
	}
	c, err := d.store.StartedCall(context.Background(), sid)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := keys.OpenFor(consent.StartedCallBinding(sid, consent.FieldTo), c.To); err != nil || v != "+18005550199" {
		t.Fatalf("the legacy value after rotation: %v", err)
	}
	if h, _ := pii.ReadHeader(c.To); h.Binding.IsZero() {
		t.Fatal("rotation left the legacy value unbound")
	}

	// The audit log's copy was not rewritten: it needs the retired key.
	if code, _, errOut = runCmd(t, newOnly, "decrypt", event); code == 0 || !strings.Contains(errOut, oldKID) {
		t.Fatalf("decrypt an audit event with the old key gone: exit %d %s", code, errOut)
	}
	if code, out, _ = runCmd(t, rotating, "decrypt", event); code != 0 || !strings.Contains(out, `"from": "+14155550123"`) {
		t.Fatalf("decrypt an audit event with the old key retired: exit %d %s", code, out)
	}
	if code, _, _ = runCmd(t, rotating, "keys", "spin"); code != exitUsage {
		t.Errorf("keys spin: exit %d", code)
	}
}

func mustKey(t *testing.T, h string) []byte {
	t.Helper()
	k, err := pii.ParseKey(h)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
