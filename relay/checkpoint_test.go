package relay

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/relay/relaysqlite"
)

// testSigner is a fixed key (the seed 0x01 0x02 ... 0x20).
func testSigner(t testing.TB) *AuditSigner {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i + 1)
	}
	s, err := NewAuditSigner(seed)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func otherSigner(t testing.TB) *AuditSigner {
	t.Helper()
	s, err := NewAuditSigner(bytes.Repeat([]byte{0xee}, ed25519.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCheckpointMessageLayout(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	at := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	m, err := CheckpointMessage(7, 300, hash, at)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 84 || CheckpointMessageSize != 84 || len(CheckpointDomain) != 32 {
		t.Fatalf("message is %d bytes", len(m))
	}
	if string(m[:32]) != "consentline/audit-checkpoint/v1\x00" ||
		binary.BigEndian.Uint32(m[32:36]) != 7 ||
		binary.BigEndian.Uint64(m[36:44]) != 300 ||
		hex.EncodeToString(m[44:76]) != hash ||
		int64(binary.BigEndian.Uint64(m[76:84])) != at.UnixMilli() {
		t.Fatalf("layout: %x", m)
	}
	for _, bad := range []struct {
		chain int
		seq   int64
		hash  string
	}{{-1, 1, hash}, {0, 0, hash}, {0, 1, "abc"}, {0, 1, strings.Repeat("zz", 32)}, {0, 1, strings.Repeat("ab", 31)}} {
		if _, err := CheckpointMessage(bad.chain, bad.seq, bad.hash, at); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}

	// A signed checkpoint checks; any field changed does not.
	s := testSigner(t)
	cp, err := s.Sign(7, 300, hash, at)
	if err != nil {
		t.Fatal(err)
	}
	if cp.SignedAt != "2026-03-01T12:00:00.123Z" || cp.KeyID != s.KeyID() || len(cp.KeyID) != 16 {
		t.Fatalf("checkpoint %+v", cp)
	}
	if err := cp.Check(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Checkpoint){
		"chain":      func(c *Checkpoint) { c.Chain = 8 },
		"seq":        func(c *Checkpoint) { c.Seq = 301 },
		"hash":       func(c *Checkpoint) { c.Hash = strings.Repeat("cd", 32) },
		"time":       func(c *Checkpoint) { c.SignedAt = "2026-03-01T12:00:00.124Z" },
		"signature":  func(c *Checkpoint) { c.Signature = flipB64(c.Signature) },
		"public key": func(c *Checkpoint) { c.PublicKey = otherSigner(t).PublicKeyBase64() },
		"key id":     func(c *Checkpoint) { c.KeyID = "0000000000000000" },
	} {
		c := cp
		mod(&c)
		if err := c.Check(); err == nil {
			t.Errorf("%s changed: still checks", name)
		}
	}
}

func flipB64(s string) string {
	b, _ := base64.StdEncoding.DecodeString(s)
	b[len(b)/2] ^= 1
	return base64.StdEncoding.EncodeToString(b)
}

// TestCheckpointOpenSSL checks a checkpoint with an independent Ed25519
// implementation, the way the README tells a clinic to.
func TestCheckpointOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	s := testSigner(t)
	cp, err := s.Sign(3, 42, strings.Repeat("0f", 32), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h := ExportHeads(s, []Checkpoint{cp}, time.Now())
	dir := t.TempDir()
	msg, _ := base64.StdEncoding.DecodeString(h.Heads[0].Message)
	sig, _ := base64.StdEncoding.DecodeString(cp.Signature)
	for name, b := range map[string][]byte{"pub.pem": []byte(s.PublicKeyPEM()), "msg": msg, "sig": sig} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	verify := func() (string, error) {
		out, err := exec.Command("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", filepath.Join(dir, "pub.pem"),
			"-rawin", "-in", filepath.Join(dir, "msg"), "-sigfile", filepath.Join(dir, "sig")).CombinedOutput()
		return string(out), err
	}
	if out, err := verify(); err != nil || !strings.Contains(out, "Signature Verified Successfully") {
		t.Fatalf("openssl: %v %s", err, out)
	}
	msg[40]++ // seq 42 → 43
	_ = os.WriteFile(filepath.Join(dir, "msg"), msg, 0o600)
	if out, err := verify(); err == nil {
		t.Fatalf("openssl verified an altered message: %s", out)
	}
}

func TestParseAuditSigningKey(t *testing.T) {
	if s, err := ParseAuditSigningKey("  "); s != nil || err != nil {
		t.Fatalf("empty: %v %v", s, err)
	}
	seed := bytes.Repeat([]byte{7}, 32)
	for _, v := range []string{base64.StdEncoding.EncodeToString(seed), base64.RawStdEncoding.EncodeToString(seed) + "\n"} {
		s, err := ParseAuditSigningKey(v)
		if err != nil || !bytes.Equal(s.priv.Seed(), seed) {
			t.Fatalf("%q: %v", v, err)
		}
	}
	secret := "c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw=="
	for _, v := range []string{"not base64 at all!", base64.StdEncoding.EncodeToString(seed[:16]), secret} {
		_, err := ParseAuditSigningKey(v)
		if err == nil || !strings.HasPrefix(err.Error(), "AUDIT_SIGNING_KEY is malformed") ||
			!strings.Contains(err.Error(), "openssl rand -base64 32") || strings.Contains(err.Error(), v) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v", v, err)
		}
	}
}

func TestParseAuditPublicKey(t *testing.T) {
	s := testSigner(t)
	for _, v := range []string{s.PublicKeyBase64(), s.PublicKeyPEM()} {
		pub, err := ParseAuditPublicKey(v)
		if err != nil || !pub.Equal(s.PublicKey()) {
			t.Fatalf("%q: %v", v, err)
		}
	}
	if _, err := ParseAuditPublicKey("AAAA"); err == nil {
		t.Fatal("short key accepted")
	}
}

func TestLoadAuditSigner(t *testing.T) {
	e := newSQLiteEnv(t, envOpts{})
	ctx := context.Background()
	if s, err := StoredAuditSigner(ctx, e.store, e.keyring); s != nil || err != nil {
		t.Fatalf("stored before any: %v %v", s, err)
	}
	var wg sync.WaitGroup
	signers := make([]*AuditSigner, 4)
	for i := range signers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := LoadAuditSigner(ctx, e.store, e.keyring)
			if err != nil {
				t.Error(err)
			}
			signers[i] = s
		}()
	}
	wg.Wait()
	for _, s := range signers[1:] {
		if s == nil || !s.PublicKey().Equal(signers[0].PublicKey()) {
			t.Fatal("instances loaded different audit keys")
		}
	}
	stored, err := StoredAuditSigner(ctx, e.store, e.keyring)
	if err != nil || !stored.PublicKey().Equal(signers[0].PublicKey()) {
		t.Fatalf("stored: %v", err)
	}
	// Sealed: opening needs the encryption key.
	if _, err := LoadAuditSigner(ctx, e.store, keyring(t, hexB, "")); err == nil {
		t.Fatal("opened the audit key with another ENCRYPTION_KEY")
	}
}

// cpEnv is a store and relay with entries in several chains.
type cpEnv struct {
	*env
	pg bool
}

func cpEnvs(t *testing.T) map[string]func(t *testing.T) cpEnv {
	return map[string]func(t *testing.T) cpEnv{
		"sqlite":   func(t *testing.T) cpEnv { return cpEnv{newSQLiteEnv(t, envOpts{}), false} },
		"postgres": func(t *testing.T) cpEnv { return cpEnv{newPGEnv(t, envOpts{}), true} },
	}
}

// fill records n calls' consent and call.completed events; the calls'
// SIDs are CA<prefix><i>.
func (e cpEnv) fill(t *testing.T, prefix string, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		sid := fmt.Sprintf("CA%s%d", prefix, i)
		if _, _, err := e.store.Record(ctx, record(t, e.keyring, fmt.Sprintf("rec_%s%d", prefix, i), sid)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: sid, From: "+14158675309", At: e.clock.Now()}); err != nil {
			t.Fatal(err)
		}
	}
}

// fillChain records n consents in chain.
func (e cpEnv) fillChain(t *testing.T, chain, n int) {
	t.Helper()
	for i := 0; n > 0; i++ {
		sid := fmt.Sprintf("CAchain%d", i)
		if ChainOf(sid) != chain {
			continue
		}
		if _, _, err := e.store.Record(context.Background(), record(t, e.keyring, "rec_"+sid, sid)); err != nil {
			t.Fatal(err)
		}
		n--
	}
}

// entries reads the whole log.
func (e cpEnv) entries(t *testing.T) []AuditEntry {
	t.Helper()
	var out []AuditEntry
	if err := e.relay.b.walk(context.Background(), func(a AuditEntry) error { out = append(out, a); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// hashesOnly verifies the log the way it was verified before checkpoints:
// the hash chains alone.
func (e cpEnv) hashesOnly(t *testing.T) error {
	t.Helper()
	_, err := VerifyEntries(e.entries(t))
	return err
}

// dropGuards removes the append-only triggers, as someone with the
// database's owner (or the SQLite file) can.
func (e cpEnv) dropGuards(t *testing.T) {
	t.Helper()
	qs := []string{`DROP TRIGGER relay_audit_no_update`, `DROP TRIGGER relay_audit_no_delete`,
		`DROP TRIGGER relay_audit_checkpoints_no_update`, `DROP TRIGGER relay_audit_checkpoints_no_delete`}
	if e.pg {
		qs = []string{`DROP TRIGGER relay_audit_no_update_delete ON relay_audit`,
			`DROP TRIGGER relay_audit_checkpoints_no_update_delete ON relay_audit_checkpoints`}
	}
	for _, q := range qs {
		if err := e.exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func lit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// rewrite edits the entry at chain/seq and recomputes the hash of every
// entry of the chain from there on, writing them back: a rewrite the hash
// chain alone cannot tell from the real history.
func (e cpEnv) rewrite(t *testing.T, chain int, seq int64, edit func(*AuditEntry)) {
	t.Helper()
	prev := ""
	for _, a := range e.entries(t) {
		if a.Chain != chain || a.Seq < seq {
			continue
		}
		if a.Seq == seq {
			edit(&a)
		} else {
			a.PrevHash = prev
		}
		rehash(&a)
		prev = a.Hash
		q := fmt.Sprintf(`UPDATE relay_audit SET type = %s, event = %s, prev_hash = %s, hash = %s WHERE chain = %d AND seq = %d`,
			lit(a.Type), lit(string(a.Event)), lit(a.PrevHash), lit(a.Hash), a.Chain, a.Seq)
		if err := e.exec(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
}

func (e cpEnv) insertCheckpoint(t *testing.T, cp Checkpoint) {
	t.Helper()
	q := fmt.Sprintf(`INSERT INTO relay_audit_checkpoints (`+checkpointColumns+`) VALUES (%d, %d, %s, %s, %s, %s, %s)`,
		cp.Chain, cp.Seq, lit(cp.Hash), lit(cp.SignedAt), lit(cp.KeyID), lit(cp.PublicKey), lit(cp.Signature))
	if err := e.exec(context.Background(), q); err != nil {
		t.Fatal(err)
	}
}

// declined turns a granted consent event into a declined one.
func declined(a *AuditEntry) {
	a.Type = TypeConsentDeclined
	a.Event = []byte(strings.Replace(string(a.Event), TypeConsentGranted, TypeConsentDeclined, 1))
}

// signedSetup fills the log, signs every head and returns the signer, the
// heads as a clinic would have exported them, and a chain holding at least
// two calls (four entries) whose first entry is a consent.granted event.
func signedSetup(t *testing.T, e cpEnv) (*AuditSigner, *Checkpointer, []Checkpoint, int) {
	t.Helper()
	ctx := context.Background()
	s := testSigner(t)
	c, err := e.relay.Checkpointer(s, CheckpointPolicy{})
	if err != nil {
		t.Fatal(err)
	}
	e.fill(t, "a", 24) // 24 calls over 16 chains: some chain has two
	cps, err := c.Checkpoint(ctx)
	if err != nil || len(cps) == 0 {
		t.Fatalf("checkpoint: %d %v", len(cps), err)
	}
	if again, err := c.Checkpoint(ctx); err != nil || len(again) != 0 {
		t.Fatalf("second checkpoint with nothing new: %+v %v", again, err)
	}
	latest, err := c.Latest(ctx)
	if err != nil || len(latest) != len(cps) {
		t.Fatalf("latest: %d %v", len(latest), err)
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(ExportHeads(s, latest, e.clock.Now())); err != nil {
		t.Fatal(err)
	}
	kept, err := ReadHeads(&buf)
	if err != nil || len(kept) != len(latest) {
		t.Fatalf("heads round trip: %v", err)
	}
	res, err := e.relay.VerifyAuditSigned(ctx, VerifyOptions{TrustedKeys: []ed25519.PublicKey{s.PublicKey()}, Heads: kept})
	if err != nil || res.Entries != 48 || res.Checkpoints != int64(len(cps)) || res.KeptHeads != len(kept) || res.Unsigned != 0 || len(res.Latest) != len(cps) {
		t.Fatalf("verify intact: %+v %v", res, err)
	}
	for _, cp := range cps {
		if cp.Seq >= 4 {
			return s, c, kept, cp.Chain
		}
	}
	t.Fatal("no chain with two calls")
	return nil, nil, nil, 0
}

func trusting(s *AuditSigner, heads ...Checkpoint) VerifyOptions {
	return VerifyOptions{TrustedKeys: []ed25519.PublicKey{s.PublicKey()}, Heads: heads}
}

func wantCheckpointError(t *testing.T, err error, chain int, seq int64, kept bool, reason string) {
	t.Helper()
	var ce *CheckpointError
	if !errors.As(err, &ce) || ce.Chain != chain || ce.Seq != seq || ce.Kept != kept || !strings.Contains(ce.Reason, reason) {
		t.Fatalf("got %v; want the checkpoint of chain %d at seq %d (kept %v): %q", err, chain, seq, kept, reason)
	}
}

// TestCheckpointsCatchRewrites runs each attack on a fresh database, on
// SQLite and on PostgreSQL.
func TestCheckpointsCatchRewrites(t *testing.T) {
	for name, open := range cpEnvs(t) {
		t.Run(name, func(t *testing.T) {
			t.Run("history rewritten, hashes recomputed", func(t *testing.T) {
				e := open(t)
				s, _, _, chain := signedSetup(t, e)
				head := e.head(t, chain)
				e.dropGuards(t)
				e.rewrite(t, chain, 1, declined)
				if err := e.hashesOnly(t); err != nil {
					t.Fatalf("the rewrite should fool the hash chain alone: %v", err)
				}
				_, err := e.relay.VerifyAuditSigned(context.Background(), trusting(s))
				wantCheckpointError(t, err, chain, head, false, "history was rewritten at or before this seq")
				// VerifyAudit (the demo's, no keys named) catches it too.
				if _, err := e.relay.VerifyAudit(context.Background()); !errors.As(err, new(*CheckpointError)) {
					t.Fatalf("VerifyAudit: %v", err)
				}
			})
			t.Run("rewritten after an earlier checkpoint", func(t *testing.T) {
				e := open(t)
				s, c, _, chain := signedSetup(t, e)
				first := e.head(t, chain)
				e.fillChain(t, chain, 2)
				if _, err := c.Checkpoint(context.Background()); err != nil {
					t.Fatal(err)
				}
				second := e.head(t, chain)
				e.dropGuards(t)
				e.rewrite(t, chain, first+1, declined)
				_, err := e.relay.VerifyAuditSigned(context.Background(), trusting(s))
				wantCheckpointError(t, err, chain, second, false, fmt.Sprintf("history was rewritten after seq %d", first))
			})
			t.Run("rewritten and checkpoint forged", func(t *testing.T) {
				e := open(t)
				s, _, _, chain := signedSetup(t, e)
				head := e.head(t, chain)
				e.dropGuards(t)
				e.rewrite(t, chain, 1, declined)
				var cp Checkpoint
				for _, c := range e.checkpoints(t) {
					if c.Chain == chain {
						cp = c
					}
				}
				if err := e.exec(context.Background(), fmt.Sprintf(`DELETE FROM relay_audit_checkpoints WHERE chain = %d`, chain)); err != nil {
					t.Fatal(err)
				}
				// Without the key: the old signature over the new hash.
				forged := cp
				forged.Hash = e.entryAt(t, chain, head).Hash
				e.insertCheckpoint(t, forged)
				_, err := e.relay.VerifyAuditSigned(context.Background(), trusting(s))
				wantCheckpointError(t, err, chain, head, false, "signature does not verify")

				// With a key of the attacker's own: signed, but not by a
				// trusted key.
				if err := e.exec(context.Background(), fmt.Sprintf(`DELETE FROM relay_audit_checkpoints WHERE chain = %d`, chain)); err != nil {
					t.Fatal(err)
				}
				own, err := otherSigner(t).Sign(chain, head, forged.Hash, e.clock.Now())
				if err != nil {
					t.Fatal(err)
				}
				e.insertCheckpoint(t, own)
				_, err = e.relay.VerifyAuditSigned(context.Background(), trusting(s))
				wantCheckpointError(t, err, chain, head, false, "not trusted")
			})
			t.Run("tail deleted after a checkpoint", func(t *testing.T) {
				e := open(t)
				s, _, _, chain := signedSetup(t, e)
				head := e.head(t, chain)
				e.dropGuards(t)
				if err := e.exec(context.Background(), fmt.Sprintf(`DELETE FROM relay_audit WHERE chain = %d AND seq >= %d`, chain, head-1)); err != nil {
					t.Fatal(err)
				}
				if err := e.hashesOnly(t); err != nil {
					t.Fatalf("a cut tail should fool the hash chain alone: %v", err)
				}
				_, err := e.relay.VerifyAuditSigned(context.Background(), trusting(s))
				wantCheckpointError(t, err, chain, head, false, fmt.Sprintf("no entry at this seq (its chain ends at seq %d)", head-2))
			})
			t.Run("rewritten and re-signed with the stolen key", func(t *testing.T) {
				e := open(t)
				s, c, kept, chain := signedSetup(t, e)
				head := e.head(t, chain)
				e.dropGuards(t)
				e.rewrite(t, chain, 1, declined)
				if err := e.exec(context.Background(), `DELETE FROM relay_audit_checkpoints`); err != nil {
					t.Fatal(err)
				}
				if _, err := c.Checkpoint(context.Background()); err != nil {
					t.Fatal(err)
				}
				if _, err := e.relay.VerifyAuditSigned(context.Background(), trusting(s)); err != nil {
					t.Fatalf("a re-signed rewrite passes without kept heads: %v", err)
				}
				_, err := e.relay.VerifyAuditSigned(context.Background(), trusting(s, kept...))
				wantCheckpointError(t, err, chain, head, true, "history was rewritten")
			})
			t.Run("entry edited after the last checkpoint is not signed", func(t *testing.T) {
				e := open(t)
				_, c, _, _ := signedSetup(t, e)
				e.fill(t, "b", 1)
				last := e.entries(t)
				var newest AuditEntry
				for _, a := range last {
					if a.EventID == "rec_b0" {
						newest = a
					}
				}
				e.dropGuards(t)
				if err := e.exec(context.Background(), fmt.Sprintf(`UPDATE relay_audit SET type = 'consent.declined' WHERE chain = %d AND seq = %d`, newest.Chain, newest.Seq)); err != nil {
					t.Fatal(err)
				}
				before := len(e.checkpoints(t))
				_, err := c.Checkpoint(context.Background())
				var ce *ChainError
				if !errors.As(err, &ce) || ce.Chain != newest.Chain || ce.Seq != newest.Seq {
					t.Fatalf("checkpoint over an edited entry: %v", err)
				}
				if after := len(e.checkpoints(t)); after != before {
					t.Fatalf("checkpoints %d → %d: the edited head was signed", before, after)
				}
			})
		})
	}
}

func (e cpEnv) head(t *testing.T, chain int) int64 {
	t.Helper()
	var seq int64
	for _, a := range e.entries(t) {
		if a.Chain == chain {
			seq = a.Seq
		}
	}
	return seq
}

func (e cpEnv) entryAt(t *testing.T, chain int, seq int64) AuditEntry {
	t.Helper()
	for _, a := range e.entries(t) {
		if a.Chain == chain && a.Seq == seq {
			return a
		}
	}
	t.Fatalf("no entry %d/%d", chain, seq)
	return AuditEntry{}
}

func (e cpEnv) checkpoints(t *testing.T) []Checkpoint {
	t.Helper()
	rows, err := e.relay.b.db().Query(context.Background(), `SELECT `+checkpointColumns+` FROM relay_audit_checkpoints ORDER BY chain, seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []Checkpoint
	for rows.Next() {
		cp, err := scanCheckpoint(rows)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, cp)
	}
	return out
}

func TestCheckpointsAppendOnly(t *testing.T) {
	for name, open := range cpEnvs(t) {
		t.Run(name, func(t *testing.T) {
			e := open(t)
			signedSetup(t, e)
			qs := []string{`UPDATE relay_audit_checkpoints SET hash = 'x'`, `DELETE FROM relay_audit_checkpoints WHERE chain >= 0`, `DELETE FROM relay_audit_checkpoints`}
			if e.pg {
				qs = append(qs, `TRUNCATE relay_audit_checkpoints`)
			}
			for _, q := range qs {
				if err := e.exec(context.Background(), q); err == nil || !strings.Contains(err.Error(), "relay_audit_checkpoints is append-only") {
					t.Errorf("%s: %v", q, err)
				}
			}
		})
	}
}

// TestCheckpointPolicy: a chain is signed at once when never signed, after
// Every new entries, or after Interval with anything new.
func TestCheckpointPolicy(t *testing.T) {
	e := cpEnv{newSQLiteEnv(t, envOpts{}), false}
	ctx := context.Background()
	c, err := e.relay.Checkpointer(testSigner(t), CheckpointPolicy{Every: 4, Interval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	chain := ChainOf("CApolicy")
	// Every call in the same chain: find SIDs that hash to it.
	var sids []string
	for i := 0; len(sids) < 8; i++ {
		if s := fmt.Sprintf("CApolicy%d", i); ChainOf(s) == chain {
			sids = append(sids, s)
		}
	}
	n := 0
	addN := func(k int) {
		for range k {
			if _, _, err := e.store.Record(ctx, record(t, e.keyring, fmt.Sprintf("p%d", n), sids[n])); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	due := func() []Checkpoint {
		t.Helper()
		cps, err := c.Due(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return cps
	}
	addN(1)
	if cps := due(); len(cps) != 1 || cps[0].Chain != chain || cps[0].Seq != 1 {
		t.Fatalf("never signed: %+v", cps)
	}
	addN(1)
	if cps := due(); len(cps) != 0 {
		t.Fatalf("one new entry within the interval: %+v", cps)
	}
	e.clock.Advance(time.Minute)
	if cps := due(); len(cps) != 1 || cps[0].Seq != 2 {
		t.Fatalf("interval passed: %+v", cps)
	}
	addN(3)
	if cps := due(); len(cps) != 0 {
		t.Fatalf("3 of 4 within the interval: %+v", cps)
	}
	addN(1)
	if cps := due(); len(cps) != 1 || cps[0].Seq != 6 {
		t.Fatalf("4 new entries: %+v", cps)
	}
	if cps := due(); len(cps) != 0 {
		t.Fatalf("nothing new: %+v", cps)
	}
}

// TestCheckpointersRace: several instances checkpoint the same heads at
// once; each head is signed once, nobody fails; Run stops on cancel.
func TestCheckpointersRace(t *testing.T) {
	for name, open := range cpEnvs(t) {
		t.Run(name, func(t *testing.T) {
			e := open(t)
			e.fill(t, "r", 20)
			ctx := context.Background()
			var wg sync.WaitGroup
			for range 4 {
				c, err := e.relay.Checkpointer(testSigner(t), CheckpointPolicy{})
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := c.Checkpoint(ctx); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			res, err := e.relay.VerifyAuditSigned(ctx, trusting(testSigner(t)))
			if err != nil || res.Unsigned != 0 || res.Checkpoints != int64(len(res.Chains)) {
				t.Fatalf("after racing checkpointers: %+v %v", res, err)
			}

			// The loop: signs what is due, and returns when cancelled.
			c, _ := e.relay.Checkpointer(testSigner(t), CheckpointPolicy{Poll: 10 * time.Millisecond, Every: 1})
			e.fill(t, "s", 2)
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { defer close(done); c.Run(rctx) }()
			deadline := time.Now().Add(10 * time.Second)
			for {
				res, err := e.relay.VerifyAuditSigned(ctx, trusting(testSigner(t)))
				if err != nil {
					t.Fatal(err)
				}
				if res.Unsigned == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the loop left %d entries unsigned", res.Unsigned)
				}
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
		})
	}
}

// benchLog is a SQLite log of n calls (2n entries) signed every 100
// entries per chain.
func benchLog(b *testing.B, n int) (cpEnv, *Checkpointer) {
	b.Helper()
	ctx := context.Background()
	k := keyring(b, hexA, "")
	outbox, err := NewOutbox(relaysqlite.New(nil), k, false)
	if err != nil {
		b.Fatal(err)
	}
	store, err := sqlitestore.Open(ctx, b.TempDir(), sqlitestore.Options{Migrate: true, Outbox: outbox})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	if err := relaysqlite.Migrate(ctx, store.DB()); err != nil {
		b.Fatal(err)
	}
	key, _ := pii.NewPseudonymKey()
	clock := newClock()
	r, err := New(relaysqlite.New(store.DB()), Config{Keyring: k, Pseudonymizer: pii.NewPseudonymizer(key), Now: clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	e := cpEnv{&env{store: store, relay: r, keyring: k, clock: clock}, false}
	c, err := e.relay.Checkpointer(testSigner(b), CheckpointPolicy{Every: 100})
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		sid := fmt.Sprintf("CAbench%d", i)
		if _, _, err := e.store.Record(ctx, record(b, e.keyring, "", sid)); err != nil {
			b.Fatal(err)
		}
		if _, _, err := e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: sid, At: e.clock.Now()}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Due(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := c.Checkpoint(ctx); err != nil {
		b.Fatal(err)
	}
	return e, c
}

// BenchmarkCheckpointIdlePass: what the loop costs every Poll when nothing
// is due (two index lookups per chain).
func BenchmarkCheckpointIdlePass(b *testing.B) {
	_, c := benchLog(b, 200)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Due(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyAuditSigned: a whole verify of 4,000 entries and their
// checkpoints.
func BenchmarkVerifyAuditSigned(b *testing.B) {
	e, _ := benchLog(b, 2000)
	ctx := context.Background()
	opts := trusting(testSigner(b))
	b.ResetTimer()
	for b.Loop() {
		res, err := e.relay.VerifyAuditSigned(ctx, opts)
		if err != nil || res.Unsigned != 0 {
			b.Fatal(res, err)
		}
		b.ReportMetric(float64(res.Checkpoints), "checkpoints")
	}
}
