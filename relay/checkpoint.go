package relay

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/relay/relaydriver"
)

// Signed checkpoints.
//
// The hash chains alone prove nothing to someone who can drop the
// append-only triggers: they can rewrite an entry and recompute every hash
// after it. So every so often the head of each chain — (chain, seq, hash) —
// is signed with an Ed25519 key that is not in the database in the clear
// (AUDIT_SIGNING_KEY, or a key generated once and stored sealed under
// ENCRYPTION_KEY), and the signature is kept in relay_audit_checkpoints.
// A rewrite then either leaves a signed head that no longer matches its entry
// or needs the key. Copies of the signed heads kept outside the database
// (`consentline audit checkpoint`) catch even a rewrite re-signed with a
// stolen key, and a tail cut off after the last copy.

// CheckpointDomain starts every signed checkpoint message, so a checkpoint
// signature can never be mistaken for (or replayed as) a signature over
// anything else made with the same key: 31 ASCII bytes and a zero byte.
const CheckpointDomain = "consentline/audit-checkpoint/v1\x00"

// CheckpointMessageSize is the length of every checkpoint message.
const CheckpointMessageSize = len(CheckpointDomain) + 4 + 8 + sha256.Size + 8

// CheckpointMessage returns the exact bytes a checkpoint's Ed25519
// signature covers (plain Ed25519, RFC 8032, not Ed25519ph), 84 bytes:
//
//	offset  size  field
//	     0    32  "consentline/audit-checkpoint/v1" followed by one zero byte
//	    32     4  chain, unsigned big-endian
//	    36     8  seq, unsigned big-endian
//	    44    32  the head entry's hash: the hash column, hex-decoded
//	    76     8  signed_at as Unix milliseconds, signed big-endian
//
// Every field has a fixed length and a fixed place, so no two different
// checkpoints have the same message. To check one with any Ed25519 tool
// (hash, public_key and signature as exported by `consentline audit
// checkpoint`, which also gives the message itself, base64):
//
//	SIGNED_AT_MS=$(date -d SIGNED_AT +%s%3N)
//	printf 'consentline/audit-checkpoint/v1\0' > msg
//	printf '%08x%016x%s%016x' CHAIN SEQ HASH $SIGNED_AT_MS | xxd -r -p >> msg
//	echo SIGNATURE | base64 -d > sig
//	openssl pkeyutl -verify -pubin -inkey audit-pubkey.pem -rawin -in msg -sigfile sig
func CheckpointMessage(chain int, seq int64, hash string, signedAt time.Time) ([]byte, error) {
	raw, err := hex.DecodeString(hash)
	if err != nil || len(raw) != sha256.Size {
		return nil, errors.New("relay: checkpoint: hash is not 32 bytes of hex")
	}
	if chain < 0 || int64(chain) > int64(^uint32(0)) {
		return nil, fmt.Errorf("relay: checkpoint: chain %d out of range", chain)
	}
	if seq < 1 {
		return nil, fmt.Errorf("relay: checkpoint: seq %d out of range", seq)
	}
	m := make([]byte, 0, CheckpointMessageSize)
	m = append(m, CheckpointDomain...)
	m = binary.BigEndian.AppendUint32(m, uint32(chain))
	m = binary.BigEndian.AppendUint64(m, uint64(seq))
	m = append(m, raw...)
	m = binary.BigEndian.AppendUint64(m, uint64(signedAt.UnixMilli()))
	return m, nil
}

// checkpointTimeLayout is signed_at's text form: RFC 3339, UTC, exactly
// milliseconds (what the message carries).
const checkpointTimeLayout = "2006-01-02T15:04:05.000Z07:00"

// Checkpoint is one signed chain head: a row of relay_audit_checkpoints,
// and one head of the JSON `consentline audit checkpoint` prints.
type Checkpoint struct {
	Chain     int    `json:"chain"`
	Seq       int64  `json:"seq"`
	Hash      string `json:"hash"`       // the entry's hash, hex
	SignedAt  string `json:"signed_at"`  // RFC 3339 UTC, milliseconds
	KeyID     string `json:"key_id"`     // AuditKeyID(public key)
	PublicKey string `json:"public_key"` // Ed25519, 32 bytes, standard base64
	Signature string `json:"signature"`  // Ed25519 over CheckpointMessage, standard base64
}

// Message is the checkpoint's signed message.
func (c Checkpoint) Message() ([]byte, error) {
	at, err := time.Parse(time.RFC3339Nano, c.SignedAt)
	if err != nil {
		return nil, errors.New("relay: checkpoint: signed_at is not an RFC 3339 time")
	}
	return CheckpointMessage(c.Chain, c.Seq, c.Hash, at)
}

// Check verifies the checkpoint's signature under the public key it names
// (whether that key is one to trust is the caller's question) and that its
// key_id is that key's.
func (c Checkpoint) Check() error {
	pub, err := decodePublicKey(c.PublicKey)
	if err != nil {
		return err
	}
	if c.KeyID != AuditKeyID(pub) {
		return errors.New("key_id is not the public key's")
	}
	sig, err := base64.StdEncoding.DecodeString(c.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return errors.New("signature is not 64 bytes of base64")
	}
	msg, err := c.Message()
	if err != nil {
		return err
	}
	if !ed25519.Verify(pub, msg, sig) {
		return errors.New("signature does not verify (checkpoint forged or altered)")
	}
	return nil
}

func decodePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("public_key is not 32 bytes of base64")
	}
	return ed25519.PublicKey(b), nil
}

// AuditKeyFingerprint is the SHA-256 of the raw 32-byte public key, hex:
// what `echo PUBLIC_KEY | base64 -d | sha256sum` prints.
func AuditKeyFingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:])
}

// AuditKeyID is the first 16 hex characters of AuditKeyFingerprint: enough
// to tell a handful of keys apart in a checkpoint row.
func AuditKeyID(pub ed25519.PublicKey) string { return AuditKeyFingerprint(pub)[:16] }

// ParseAuditPublicKey reads a public key as `consentline audit pubkey`
// prints it: standard base64 of the 32 raw bytes, or a PEM "PUBLIC KEY"
// block.
func ParseAuditPublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	if blk, _ := pem.Decode([]byte(s)); blk != nil {
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if pub, ok := k.(ed25519.PublicKey); err == nil && ok {
			return pub, nil
		}
		return nil, errors.New("not an Ed25519 public key")
	}
	pub, err := decodePublicKey(s)
	if err != nil {
		return nil, errors.New("not an Ed25519 public key (want the base64 or PEM that consentline audit pubkey prints)")
	}
	return pub, nil
}

// AuditSigner signs checkpoints. It is immutable and safe for concurrent
// use.
type AuditSigner struct {
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
}

// NewAuditSigner returns the signer for a 32-byte Ed25519 seed.
func NewAuditSigner(seed []byte) (*AuditSigner, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("relay: audit signing key is %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	return &AuditSigner{priv: priv, pub: priv.Public().(ed25519.PublicKey)}, nil
}

// AuditSigningKeyHelp says how to make an AUDIT_SIGNING_KEY.
const AuditSigningKeyHelp = "make one with: openssl rand -base64 32"

// ParseAuditSigningKey reads the AUDIT_SIGNING_KEY setting: base64 of a
// 32-byte Ed25519 seed. Empty gives nil (the key is then the one stored in
// the database, LoadAuditSigner). Errors name the setting and how to make
// one, and never echo the value.
func ParseAuditSigningKey(v string) (*AuditSigner, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	seed, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		seed, err = base64.RawStdEncoding.DecodeString(v)
	}
	if err != nil {
		return nil, fmt.Errorf("AUDIT_SIGNING_KEY is malformed: not base64 (%s)", AuditSigningKeyHelp)
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("AUDIT_SIGNING_KEY is malformed: want base64 of a %d-byte Ed25519 seed, got %d bytes (%s)", ed25519.SeedSize, len(seed), AuditSigningKeyHelp)
	}
	return NewAuditSigner(seed)
}

// PublicKey is the verifying key.
func (s *AuditSigner) PublicKey() ed25519.PublicKey { return s.pub }

// PublicKeyBase64 is the public key as checkpoints carry it.
func (s *AuditSigner) PublicKeyBase64() string { return base64.StdEncoding.EncodeToString(s.pub) }

// PublicKeyPEM is the public key as a PEM "PUBLIC KEY" block (SPKI), for
// openssl.
func (s *AuditSigner) PublicKeyPEM() string {
	der, _ := x509.MarshalPKIXPublicKey(s.pub) // cannot fail for an ed25519.PublicKey
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// KeyID is AuditKeyID of the public key.
func (s *AuditSigner) KeyID() string { return AuditKeyID(s.pub) }

// Sign makes the checkpoint of the entry (chain, seq, hash) at time at
// (kept to the millisecond).
func (s *AuditSigner) Sign(chain int, seq int64, hash string, at time.Time) (Checkpoint, error) {
	at = at.UTC().Truncate(time.Millisecond)
	msg, err := CheckpointMessage(chain, seq, hash, at)
	if err != nil {
		return Checkpoint{}, err
	}
	return Checkpoint{
		Chain: chain, Seq: seq, Hash: hash,
		SignedAt:  at.Format(checkpointTimeLayout),
		KeyID:     s.KeyID(),
		PublicKey: s.PublicKeyBase64(),
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(s.priv, msg)),
	}, nil
}

// AuditKeySecretName is the consent.Store.Secret name of the generated
// audit signing key (base64 of the seed, sealed).
const AuditKeySecretName = "audit_signing_key"

// LoadAuditSigner returns the signer stored in the database, generating and
// storing one (sealed with k, first writer wins) when there is none, so
// every instance signs with the same key. Like the patient_ref key, it is
// bound to its secret's name, and opening it needs the ENCRYPTION_KEY that
// sealed it (keep it in ENCRYPTION_KEYS_RETIRED until `consentline keys
// rotate` has re-sealed it).
func LoadAuditSigner(ctx context.Context, store pii.SecretStore, k *pii.Keyring) (*AuditSigner, error) {
	return loadAuditSigner(ctx, store, k, func() (consent.Sealed, error) {
		seed := make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return "", err
		}
		return k.SealFor(consent.SecretBinding(AuditKeySecretName), base64.StdEncoding.EncodeToString(seed))
	})
}

// errNoStoredKey stops Secret from storing anything.
var errNoStoredKey = errors.New("no audit signing key stored")

// StoredAuditSigner returns the signer stored in the database, or nil when
// none was ever generated (AUDIT_SIGNING_KEY was set from the start). It
// stores nothing.
func StoredAuditSigner(ctx context.Context, store pii.SecretStore, k *pii.Keyring) (*AuditSigner, error) {
	s, err := loadAuditSigner(ctx, store, k, func() (consent.Sealed, error) { return "", errNoStoredKey })
	if errors.Is(err, errNoStoredKey) {
		return nil, nil
	}
	return s, err
}

func loadAuditSigner(ctx context.Context, store pii.SecretStore, k *pii.Keyring, generate func() (consent.Sealed, error)) (*AuditSigner, error) {
	sealed, err := store.Secret(ctx, AuditKeySecretName, generate)
	if err != nil {
		return nil, fmt.Errorf("relay: load %s: %w", AuditKeySecretName, err)
	}
	plain, err := k.OpenFor(consent.SecretBinding(AuditKeySecretName), sealed)
	if err != nil {
		return nil, fmt.Errorf("relay: open %s: %w", AuditKeySecretName, err)
	}
	seed, err := base64.StdEncoding.DecodeString(plain)
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("relay: stored %s is not a %d-byte base64 seed", AuditKeySecretName, ed25519.SeedSize)
	}
	return NewAuditSigner(seed)
}

// CheckpointPolicy says when the checkpoint loop signs a chain's head.
type CheckpointPolicy struct {
	// Every: a chain with this many entries since its last checkpoint is
	// signed at the next poll (default 100).
	Every int64
	// Interval: a chain with anything new is signed once its last
	// checkpoint is this old (default 1 minute); a chain never signed, at
	// the next poll.
	Interval time.Duration
	// Poll is how often the loop looks (default 5 s). Looking costs two
	// index lookups per chain.
	Poll time.Duration
}

// Checkpoint policy defaults.
const (
	DefaultCheckpointEvery    = 100
	DefaultCheckpointInterval = time.Minute
	DefaultCheckpointPoll     = 5 * time.Second
)

// Checkpointer signs the audit log's chain heads.
type Checkpointer struct {
	db      relaydriver.DB
	signer  *AuditSigner
	p       CheckpointPolicy
	now     func() time.Time
	log     *slog.Logger
	metrics *telemetry.Metrics
}

// Checkpointer returns the relay's checkpointer, signing with s.
func (r *Relay) Checkpointer(s *AuditSigner, p CheckpointPolicy) (*Checkpointer, error) {
	if s == nil {
		return nil, errors.New("relay: checkpointer needs a signer")
	}
	db := r.b.db()
	if p.Every <= 0 {
		p.Every = DefaultCheckpointEvery
	}
	if p.Interval <= 0 {
		p.Interval = DefaultCheckpointInterval
	}
	if p.Poll <= 0 {
		p.Poll = DefaultCheckpointPoll
	}
	return &Checkpointer{db: db, signer: s, p: p, now: r.cfg.Now, log: r.log, metrics: r.cfg.Metrics}, nil
}

// Checkpoint signs the head of every chain that has entries after its last
// checkpoint, now, and returns what it signed (`consentline audit
// checkpoint`, and the loop's last pass at shutdown). When another instance
// stored a checkpoint of the same head first, theirs is kept and this one
// dropped.
func (c *Checkpointer) Checkpoint(ctx context.Context) ([]Checkpoint, error) {
	return c.pass(ctx, true)
}

// Due signs the heads the policy says are due.
func (c *Checkpointer) Due(ctx context.Context) ([]Checkpoint, error) { return c.pass(ctx, false) }

// Run signs due heads every Poll until ctx ends (serve runs it in the
// background). Failures are logged, at most once per Interval when they
// repeat, and do not stop it.
func (c *Checkpointer) Run(ctx context.Context) {
	t := time.NewTicker(c.p.Poll)
	defer t.Stop()
	var lastErr string
	var lastLogged time.Time
	for {
		cps, err := c.Due(ctx)
		if ctx.Err() != nil {
			return
		}
		if len(cps) > 0 {
			c.log.DebugContext(ctx, "audit checkpoint signed", "chains", len(cps), "key_id", c.signer.KeyID())
		}
		if err != nil {
			if msg := err.Error(); msg != lastErr || time.Since(lastLogged) >= c.p.Interval {
				c.log.ErrorContext(ctx, "audit checkpoint", "error", msg)
				lastErr, lastLogged = msg, time.Now()
			}
		} else {
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pass looks at every chain and signs the due heads; one chain's failure
// does not keep the others unsigned.
func (c *Checkpointer) pass(ctx context.Context, force bool) ([]Checkpoint, error) {
	var (
		out  []Checkpoint
		errs []error
	)
	for chain := range AuditChains {
		cp, err := c.chain(ctx, chain, force)
		if err != nil {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			c.metrics.CheckpointFailed()
			errs = append(errs, err)
			continue
		}
		if cp != nil {
			c.metrics.CheckpointWritten()
			out = append(out, *cp)
		}
	}
	return out, errors.Join(errs...)
}

func (c *Checkpointer) chain(ctx context.Context, chain int, force bool) (*Checkpoint, error) {
	var headSeq int64
	var headHash string
	err := c.db.QueryRow(ctx, `SELECT seq, hash FROM relay_audit WHERE chain = $1 ORDER BY seq DESC LIMIT 1`, chain).Scan(&headSeq, &headHash)
	if errors.Is(err, relaydriver.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("relay: checkpoint chain %d: head: %w", chain, err)
	}
	last, err := latestCheckpoint(ctx, c.db, chain)
	if err != nil {
		return nil, fmt.Errorf("relay: checkpoint chain %d: %w", chain, err)
	}
	// From where the chain was last signed (its genesis when never).
	from := ChainHead{Chain: chain, Hash: GenesisHash}
	if last != nil {
		if err := last.Check(); err != nil {
			return nil, &CheckpointError{Chain: chain, Seq: last.Seq, KeyID: last.KeyID, Reason: "latest checkpoint: " + err.Error() + "; run consentline audit verify"}
		}
		if last.Seq > headSeq {
			return nil, &CheckpointError{Chain: chain, Seq: last.Seq, KeyID: last.KeyID, Reason: fmt.Sprintf("the log's head is seq %d (entries after it are gone); run consentline audit verify", headSeq)}
		}
		if last.Seq == headSeq {
			return nil, nil
		}
		from = ChainHead{Chain: chain, Seq: last.Seq, Hash: last.Hash}
		if !force && headSeq-last.Seq < c.p.Every {
			at, err := time.Parse(time.RFC3339Nano, last.SignedAt)
			if err == nil && c.now().Sub(at) < c.p.Interval {
				return nil, nil
			}
		}
	}
	head, err := c.extend(ctx, from)
	if err != nil {
		return nil, err
	}
	cp, err := c.signer.Sign(chain, head.Seq, head.Hash, c.now())
	if err != nil {
		return nil, err
	}
	// Another instance may have signed the same head a moment ago: then
	// this one is dropped, theirs stands.
	if err := c.db.Exec(ctx, `INSERT INTO relay_audit_checkpoints (`+checkpointColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (chain, seq) DO NOTHING`, cp.Chain, cp.Seq, cp.Hash, cp.SignedAt, cp.KeyID, cp.PublicKey, cp.Signature); err != nil {
		return nil, fmt.Errorf("relay: checkpoint chain %d: insert: %w", chain, err)
	}
	return &cp, nil
}

// checkpointPage is how many entries extend reads per query (on SQLite the
// relay's handle is the single writer connection; paging hands it back to
// decisions between pages).
const checkpointPage = 500

// extend verifies the chain's entries after from — its last signed head —
// up to its current head and returns that head. Only a head that extends
// the signed history correctly is signed, so the checkpoint loop never
// launders an entry edited since the last checkpoint.
func (c *Checkpointer) extend(ctx context.Context, from ChainHead) (ChainHead, error) {
	v := newAuditVerifier()
	v.heads[from.Chain] = &from
	for {
		start := *v.heads[from.Chain]
		rows, err := c.db.Query(ctx, `SELECT `+relaydriver.AuditColumns+` FROM relay_audit WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3`,
			from.Chain, start.Seq, checkpointPage)
		if err != nil {
			return ChainHead{}, fmt.Errorf("relay: checkpoint chain %d: %w", from.Chain, err)
		}
		n := 0
		for rows.Next() {
			e, err := scanEntry(rows)
			if err == nil {
				err = v.check(e)
			}
			if err != nil {
				rows.Close()
				return ChainHead{}, err
			}
			n++
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return ChainHead{}, fmt.Errorf("relay: checkpoint chain %d: %w", from.Chain, err)
		}
		if n < checkpointPage {
			return *v.heads[from.Chain], nil
		}
	}
}

const checkpointColumns = `chain, seq, hash, signed_at, key_id, public_key, signature`

func scanCheckpoint(r relaydriver.Row) (Checkpoint, error) {
	var c Checkpoint
	err := r.Scan(&c.Chain, &c.Seq, &c.Hash, &c.SignedAt, &c.KeyID, &c.PublicKey, &c.Signature)
	return c, err
}

func latestCheckpoint(ctx context.Context, db relaydriver.DB, chain int) (*Checkpoint, error) {
	cp, err := scanCheckpoint(db.QueryRow(ctx, `SELECT `+checkpointColumns+` FROM relay_audit_checkpoints WHERE chain = $1 ORDER BY seq DESC LIMIT 1`, chain))
	if errors.Is(err, relaydriver.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("latest checkpoint: %w", err)
	}
	return &cp, nil
}

// Latest returns each chain's latest checkpoint, by chain (what `consentline
// audit checkpoint` exports). They are returned as stored; VerifyAudit
// checks them.
func (c *Checkpointer) Latest(ctx context.Context) ([]Checkpoint, error) {
	var out []Checkpoint
	for chain := range AuditChains {
		cp, err := latestCheckpoint(ctx, c.db, chain)
		if err != nil {
			return nil, fmt.Errorf("relay: chain %d: %w", chain, err)
		}
		if cp != nil {
			out = append(out, *cp)
		}
	}
	return out, nil
}

// HeadsFormat names the JSON `consentline audit checkpoint` prints.
const HeadsFormat = "consentline-audit-heads/v1"

// Heads is the JSON document of signed heads a clinic keeps outside the
// database; `consentline audit verify --heads FILE` checks the log against
// it.
type Heads struct {
	Format     string `json:"format"`
	ExportedAt string `json:"exported_at"`
	// The key that signs now; each head names its own.
	KeyID       string         `json:"key_id"`
	PublicKey   string         `json:"public_key"`
	Fingerprint string         `json:"fingerprint"`
	Heads       []ExportedHead `json:"heads"`
}

// ExportedHead is a checkpoint with its signed message spelled out
// (base64), for checking it with other tools; verify recomputes the message
// and ignores this copy.
type ExportedHead struct {
	Checkpoint
	Message string `json:"message,omitempty"`
}

// ExportHeads builds the Heads document for cps.
func ExportHeads(s *AuditSigner, cps []Checkpoint, now time.Time) Heads {
	h := Heads{Format: HeadsFormat, ExportedAt: now.UTC().Format(checkpointTimeLayout), KeyID: s.KeyID(),
		PublicKey: s.PublicKeyBase64(), Fingerprint: AuditKeyFingerprint(s.PublicKey()), Heads: []ExportedHead{}}
	for _, cp := range cps {
		e := ExportedHead{Checkpoint: cp}
		if m, err := cp.Message(); err == nil {
			e.Message = base64.StdEncoding.EncodeToString(m)
		}
		h.Heads = append(h.Heads, e)
	}
	return h
}

// ReadHeads parses a Heads document (a file written by `consentline audit
// checkpoint`) into its checkpoints. It only checks the shape; VerifyAudit
// checks the signatures.
func ReadHeads(r io.Reader) ([]Checkpoint, error) {
	var h Heads
	if err := json.NewDecoder(r).Decode(&h); err != nil {
		return nil, errors.New("not a heads file written by consentline audit checkpoint (invalid JSON)")
	}
	if h.Format != HeadsFormat {
		return nil, fmt.Errorf("not a heads file written by consentline audit checkpoint (format %q, want %q)", h.Format, HeadsFormat)
	}
	out := make([]Checkpoint, 0, len(h.Heads))
	for _, e := range h.Heads {
		out = append(out, e.Checkpoint)
	}
	return out, nil
}

// CheckpointError names the first checkpoint, or kept head, that the log
// no longer agrees with.
type CheckpointError struct {
	Chain int
	Seq   int64
	KeyID string
	// Kept: a head from the --heads file, not a row of
	// relay_audit_checkpoints.
	Kept   bool
	Reason string
}

func (e *CheckpointError) Error() string {
	what := "audit checkpoint"
	if e.Kept {
		what = "kept audit head"
	}
	return fmt.Sprintf("%s of chain %d at seq %d (key %s): %s", what, e.Chain, e.Seq, e.KeyID, e.Reason)
}

// VerifyOptions are what VerifyAuditSigned checks besides the hashes.
type VerifyOptions struct {
	// TrustedKeys: every checkpoint and kept head must be signed by one of
	// them. Empty: any key whose signature verifies (only the signatures
	// and the heads are checked then, not who made them).
	TrustedKeys []ed25519.PublicKey
	// Heads kept outside the database (ReadHeads): each must still be the
	// log's entry at its chain and seq, and be validly signed.
	Heads []Checkpoint
}

// SignedVerifyResult is a verified log and what vouches for it.
type SignedVerifyResult struct {
	VerifyResult
	Checkpoints int64 // rows of relay_audit_checkpoints checked
	KeptHeads   int   // heads from VerifyOptions.Heads checked
	// Latest is each chain's latest checkpoint, by chain.
	Latest []Checkpoint
	// Unsigned counts, over all chains, the entries after their chain's
	// latest checkpoint (or kept head): the part of the log no signature
	// covers yet. serve signs within a minute, so a large number here on a
	// quiet log means checkpoints are not being written — or were removed.
	Unsigned int64
}

// VerifyAuditSigned walks every chain like VerifyAudit and checks every
// checkpoint (and kept head): its signature, its key (when TrustedKeys is
// given), and that the log's entry at its chain and seq exists and has its
// hash. The first failure in (chain, seq) order is returned: a *ChainError
// for an entry, a *CheckpointError for a checkpoint; the result then covers
// what was verified before it.
func (r *Relay) VerifyAuditSigned(ctx context.Context, opts VerifyOptions) (SignedVerifyResult, error) {
	db := r.b.db()
	// Checkpoints first: each one refers to entries committed before it
	// was written, so the walk that follows sees them.
	var cps []Checkpoint
	rows, err := db.Query(ctx, `SELECT `+checkpointColumns+` FROM relay_audit_checkpoints ORDER BY chain, seq`)
	if err != nil {
		return SignedVerifyResult{}, fmt.Errorf("relay: audit checkpoints: %w", err)
	}
	for rows.Next() {
		cp, err := scanCheckpoint(rows)
		if err != nil {
			rows.Close()
			return SignedVerifyResult{}, fmt.Errorf("relay: audit checkpoints: %w", err)
		}
		cps = append(cps, cp)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return SignedVerifyResult{}, fmt.Errorf("relay: audit checkpoints: %w", err)
	}
	sv := newSignedVerifier(cps, opts)
	err = r.b.walk(ctx, sv.entry)
	if err == nil {
		err = sv.finish()
	}
	return sv.result(), err
}

// signedVerifier merges the walk of the entries (by chain, seq) with the
// checkpoints and kept heads (sorted the same way).
type signedVerifier struct {
	v       *auditVerifier
	marks   []mark
	next    int
	trusted map[string]bool // key ids; nil: any
	// matched is, per chain, the highest seq a checkpoint or kept head
	// vouched for; latest the latest stored checkpoint.
	matched map[int]int64
	latest  map[int]Checkpoint
	cps     int64
	kept    int
}

type mark struct {
	Checkpoint
	kept bool
}

func newSignedVerifier(cps []Checkpoint, opts VerifyOptions) *signedVerifier {
	s := &signedVerifier{v: newAuditVerifier(), matched: map[int]int64{}, latest: map[int]Checkpoint{}}
	if len(opts.TrustedKeys) > 0 {
		s.trusted = map[string]bool{}
		for _, k := range opts.TrustedKeys {
			s.trusted[AuditKeyID(k)] = true
		}
	}
	for _, cp := range cps {
		s.marks = append(s.marks, mark{Checkpoint: cp})
	}
	for _, h := range opts.Heads {
		s.marks = append(s.marks, mark{Checkpoint: h, kept: true})
	}
	sortMarks(s.marks)
	return s
}

func sortMarks(ms []mark) {
	// By (chain, seq), a stored checkpoint before a kept head.
	slices.SortStableFunc(ms, func(a, b mark) int {
		switch {
		case a.Chain != b.Chain:
			return a.Chain - b.Chain
		case a.Seq < b.Seq:
			return -1
		case a.Seq > b.Seq:
			return 1
		case a.kept == b.kept:
			return 0
		case !a.kept:
			return -1
		}
		return 1
	})
}

func (s *signedVerifier) fail(m mark, format string, a ...any) error {
	return &CheckpointError{Chain: m.Chain, Seq: m.Seq, KeyID: m.KeyID, Kept: m.kept, Reason: fmt.Sprintf(format, a...)}
}

// gone is the error for a mark whose entry the log does not hold.
func (s *signedVerifier) gone(m mark) error {
	head := int64(0)
	if h := s.v.heads[m.Chain]; h != nil {
		head = h.Seq
	}
	return s.fail(m, "the log has no entry at this seq (its chain ends at seq %d): entries were removed after it was signed", head)
}

func (s *signedVerifier) entry(e AuditEntry) error {
	if err := s.v.check(e); err != nil {
		return err
	}
	for s.next < len(s.marks) {
		m := s.marks[s.next]
		if m.Chain > e.Chain || (m.Chain == e.Chain && m.Seq > e.Seq) {
			break
		}
		if m.Chain < e.Chain || m.Seq < e.Seq {
			return s.gone(m)
		}
		if err := s.check(m, e); err != nil {
			return err
		}
		s.next++
	}
	return nil
}

// check verifies one mark against the entry at its chain and seq.
func (s *signedVerifier) check(m mark, e AuditEntry) error {
	if err := m.Check(); err != nil {
		return s.fail(m, "%v", err)
	}
	if s.trusted != nil && !s.trusted[m.KeyID] {
		return s.fail(m, "signed by a key that is not trusted (not the current audit signing key nor one given with --pubkey or in the heads file)")
	}
	if m.Hash != e.Hash {
		where := "at or before this seq"
		if after := s.matched[m.Chain]; after > 0 {
			where = fmt.Sprintf("after seq %d (which an earlier checkpoint vouches for) and at or before this seq", after)
		}
		return s.fail(m, "signed hash %s but the log's entry (event %s) has %s: history was rewritten %s", short(m.Hash), e.EventID, short(e.Hash), where)
	}
	s.matched[m.Chain] = m.Seq
	if m.kept {
		s.kept++
	} else {
		s.cps++
		s.latest[m.Chain] = m.Checkpoint
	}
	return nil
}

func (s *signedVerifier) finish() error {
	if s.next < len(s.marks) {
		return s.gone(s.marks[s.next])
	}
	return nil
}

func (s *signedVerifier) result() SignedVerifyResult {
	res := SignedVerifyResult{VerifyResult: s.v.result(), Checkpoints: s.cps, KeptHeads: s.kept}
	for _, h := range res.Chains {
		res.Unsigned += h.Seq - s.matched[h.Chain]
		if cp, ok := s.latest[h.Chain]; ok {
			res.Latest = append(res.Latest, cp)
		}
	}
	return res
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}
