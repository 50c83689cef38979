package main

import (
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/consentline/consentline/relay"
)

// rewriteChain edits the first entry of the chain holding eventID (granted
// → declined) and recomputes every hash after it, with the triggers
// dropped: what someone with the database file can do.
func rewriteChain(t *testing.T, db *sql.DB, eventID string) (chain int, head int64) {
	t.Helper()
	for _, q := range []string{`DROP TRIGGER IF EXISTS relay_audit_no_update`, `DROP TRIGGER IF EXISTS relay_audit_checkpoints_no_delete`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.QueryRow(`SELECT chain FROM relay_audit WHERE event_id = ?`, eventID).Scan(&chain); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query(`SELECT seq, event_id, type, occurred_at, event FROM relay_audit WHERE chain = ? ORDER BY seq`, chain)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		seq                int64
		id, typ, at, event string
	}
	var rs []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.seq, &r.id, &r.typ, &r.at, &r.event); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	rows.Close()
	prev := relay.GenesisHash
	for i, r := range rs {
		if i == 0 {
			r.typ = "consent.declined"
			r.event = strings.Replace(r.event, "consent.granted", "consent.declined", 1)
		}
		h, err := relay.ChainHash(prev, chain, r.seq, r.id, r.typ, r.at, []byte(r.event))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`UPDATE relay_audit SET type = ?, event = ?, prev_hash = ?, hash = ? WHERE chain = ? AND seq = ?`,
			r.typ, r.event, prev, h, chain, r.seq); err != nil {
			t.Fatal(err)
		}
		prev = h
		head = r.seq
	}
	return chain, head
}

func TestAuditCommands(t *testing.T) {
	env := validEnv()
	env["DATA_DIR"] = t.TempDir()
	ids := decideCalls(t, env, 3)

	// pubkey: generated once, stored; the same on every run.
	code, out, errOut := runCmd(t, env, "audit", "pubkey")
	pubRE := regexp.MustCompile(`public key:  ([A-Za-z0-9+/]{43}=)\nfingerprint: ([0-9a-f]{64})  .*\nkey id:      ([0-9a-f]{16})  .*\nsource:      generated once, stored sealed in the database\n-----BEGIN PUBLIC KEY-----\n`)
	m := pubRE.FindStringSubmatch(out)
	if code != 0 || m == nil || !strings.HasPrefix(m[2], m[3]) {
		t.Fatalf("audit pubkey: exit %d\n%s%s", code, out, errOut)
	}
	if _, again, _ := runCmd(t, env, "audit", "pubkey"); again != out {
		t.Fatalf("a second audit pubkey printed another key:\n%s", again)
	}

	// checkpoint: signs every head, prints them as JSON.
	code, out, errOut = runCmd(t, env, "audit", "checkpoint")
	var heads relay.Heads
	if code != 0 || json.Unmarshal([]byte(out), &heads) != nil || heads.Format != relay.HeadsFormat || heads.PublicKey != m[1] ||
		len(heads.Heads) == 0 || !strings.Contains(errOut, "new checkpoint(s)") {
		t.Fatalf("audit checkpoint: exit %d\n%s%s", code, out, errOut)
	}
	for _, h := range heads.Heads {
		msg, _ := base64.StdEncoding.DecodeString(h.Message)
		if err := h.Check(); err != nil || len(msg) != relay.CheckpointMessageSize {
			t.Fatalf("exported head %+v: %v", h, err)
		}
	}
	headsFile := filepath.Join(t.TempDir(), "heads.json")
	if err := os.WriteFile(headsFile, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}

	code, out, errOut = runCmd(t, env, "audit", "verify", "--heads", headsFile)
	if code != 0 || !regexp.MustCompile(`audit chains intact: 3 entries in [1-3] chains`).MatchString(out) ||
		!strings.Contains(out, fmt.Sprintf("signed checkpoints: %d,", len(heads.Heads))) ||
		!strings.Contains(out, fmt.Sprintf("kept heads: %d from", len(heads.Heads))) || strings.Contains(out, "not signed yet") {
		t.Fatalf("audit verify: exit %d\n%s%s", code, out, errOut)
	}

	// AUDIT_SIGNING_KEY set later: it signs from then on, and the stored
	// key's checkpoints stay trusted.
	withKey := map[string]string{"AUDIT_SIGNING_KEY": base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 32)))}
	for k, v := range env {
		withKey[k] = v
	}
	if code, out, errOut = runCmd(t, withKey, "audit", "pubkey"); code != 0 || !strings.Contains(out, "source:      AUDIT_SIGNING_KEY") || strings.Contains(out, m[1]) {
		t.Fatalf("audit pubkey with AUDIT_SIGNING_KEY: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut = runCmd(t, withKey, "audit", "verify"); code != 0 {
		t.Fatalf("verify with AUDIT_SIGNING_KEY: exit %d\n%s%s", code, out, errOut)
	}
	bad := map[string]string{"AUDIT_SIGNING_KEY": "nope"}
	for k, v := range env {
		bad[k] = v
	}
	bad["AUDIT_SIGNING_KEY"] = "nope"
	if code, _, errOut = runCmd(t, bad, "audit", "verify"); code != exitUsage || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "AUDIT_SIGNING_KEY is malformed") {
		t.Fatalf("malformed AUDIT_SIGNING_KEY: exit %d %q", code, errOut)
	}
	for _, args := range [][]string{{"audit"}, {"audit", "frob"}, {"audit", "verify", "--pubkey", "AAAA"}, {"audit", "verify", "--heads", "/nonexistent/heads.json"}, {"audit", "checkpoint", "x"}} {
		if code, _, errOut = runCmd(t, env, args...); code != exitUsage {
			t.Errorf("%v: exit %d %q", args, code, errOut)
		}
	}

	// History rewritten with every hash recomputed: the hash chains agree,
	// the signed checkpoint does not.
	db, err := sql.Open("sqlite", filepath.Join(env["DATA_DIR"], "consentline.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	chain, head := rewriteChain(t, db, ids[1])
	code, out, errOut = runCmd(t, env, "audit", "verify")
	if code != 1 || !strings.Contains(errOut, fmt.Sprintf("audit checkpoint of chain %d at seq %d", chain, head)) || !strings.Contains(errOut, "history was rewritten") {
		t.Fatalf("verify after a rewrite: exit %d\n%s%s", code, out, errOut)
	}
	if strings.Count(errOut, "\n") != 1 {
		t.Errorf("more than one line: %q", errOut)
	}

	// The same rewrite re-signed with the (stolen) key: only the heads kept
	// outside the database catch it.
	if _, err := db.Exec(`DELETE FROM relay_audit_checkpoints`); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut = runCmd(t, env, "audit", "checkpoint"); code != 0 {
		t.Fatalf("re-sign: exit %d %s", code, errOut)
	}
	if code, out, errOut = runCmd(t, env, "audit", "verify"); code != 0 {
		t.Fatalf("re-signed rewrite without kept heads: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCmd(t, env, "audit", "verify", "--heads", headsFile)
	if code != 1 || !strings.Contains(errOut, fmt.Sprintf("kept audit head of chain %d at seq %d", chain, head)) {
		t.Fatalf("verify --heads after a re-signed rewrite: exit %d\n%s%s", code, out, errOut)
	}
}
