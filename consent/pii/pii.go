// Package pii seals ConsentLine's protected health information (caller and
// called numbers, transcripts) and derives the caller pseudonym.
//
// Sealed values are JWE compact strings, dir/A256GCM, with the key's
// fingerprint as "kid" in the protected header (CONTRACT.md §3). The same
// format is used at rest and in relay events, so a value sealed once can be
// opened by whoever holds the key: the service, the CLI's decrypt command, or
// the clinic's Zapier step.
//
// Nothing in this package ever puts a key or a plaintext into an error.
package pii

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/go-jose/go-jose/v4"

	"github.com/consentline/consentline/consent"
)

// KeySize is the size of an AES-256 key and of the pseudonym key.
const KeySize = 32

// kidLabel domain-separates the key fingerprint from any other hash of the
// key, so the kid can't be confused with (or used to test guesses against)
// some other digest of the same bytes elsewhere.
const kidLabel = "consentline/pii/kid/v1\x00"

// ParseKey decodes a 64-character hex key into 32 bytes. Its errors describe
// the problem (length, non-hex character position) but never echo the input,
// since the input is a secret that might otherwise land in a log line.
func ParseKey(hexKey string) ([]byte, error) {
	hexKey = strings.TrimSpace(hexKey)
	if len(hexKey) != 2*KeySize {
		return nil, fmt.Errorf("want %d hex characters, got %d (make one with: openssl rand -hex 32)", 2*KeySize, len(hexKey))
	}
	for i := 0; i < len(hexKey); i++ {
		if !isHex(hexKey[i]) {
			return nil, fmt.Errorf("character %d is not hex (make one with: openssl rand -hex 32)", i+1)
		}
	}
	key, err := hex.DecodeString(hexKey)
	if err != nil { // unreachable after the checks above; never wrap err, it quotes the byte
		return nil, errors.New("not a hex key")
	}
	return key, nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// Keyring holds the active encryption key and the retired keys still
// accepted for opening. It is immutable and safe for concurrent use.
type Keyring struct {
	active []byte
	kid    string
	kids   []string // active first, then retired in the order given
	byKID  map[string][]byte
}

// NewKeyring builds a keyring from raw 32-byte keys. A retired key equal to
// the active one is ignored, so listing the current key among the retired
// ones during a rotation is harmless.
func NewKeyring(active []byte, retired ...[]byte) (*Keyring, error) {
	if len(active) != KeySize {
		return nil, fmt.Errorf("pii: active key is %d bytes, want %d", len(active), KeySize)
	}
	k := &Keyring{
		active: append([]byte(nil), active...),
		kid:    KeyID(active),
		byKID:  make(map[string][]byte, 1+len(retired)),
	}
	k.byKID[k.kid] = k.active
	k.kids = []string{k.kid}
	for i, r := range retired {
		if len(r) != KeySize {
			return nil, fmt.Errorf("pii: retired key %d is %d bytes, want %d", i+1, len(r), KeySize)
		}
		kid := KeyID(r)
		if _, dup := k.byKID[kid]; !dup {
			k.byKID[kid] = append([]byte(nil), r...)
			k.kids = append(k.kids, kid)
		}
	}
	return k, nil
}

// ParseKeyring builds a keyring from the ENCRYPTION_KEY and
// ENCRYPTION_KEYS_RETIRED settings. Errors name the setting, and for the
// retired list the 1-based position of the bad entry; empty entries (a
// trailing comma) are skipped.
func ParseKeyring(activeHex, retiredCSV string) (*Keyring, error) {
	if strings.TrimSpace(activeHex) == "" {
		return nil, errors.New("ENCRYPTION_KEY is not set: 64 hex characters (make one with: openssl rand -hex 32)")
	}
	active, err := ParseKey(activeHex)
	if err != nil {
		return nil, fmt.Errorf("ENCRYPTION_KEY is malformed: %w", err)
	}
	var retired [][]byte
	if strings.TrimSpace(retiredCSV) != "" {
		for i, part := range strings.Split(retiredCSV, ",") {
			if strings.TrimSpace(part) == "" {
				continue
			}
			r, err := ParseKey(part)
			if err != nil {
				return nil, fmt.Errorf("ENCRYPTION_KEYS_RETIRED entry %d is malformed: %w", i+1, err)
			}
			retired = append(retired, r)
		}
	}
	return NewKeyring(active, retired...)
}

// KeyID is the fingerprint used as a JWE "kid": the first 8 bytes of
// SHA-256(label || key), hex. 64 bits are plenty to tell a handful of keys
// apart and reveal nothing usable about a 256-bit key.
func KeyID(key []byte) string {
	h := sha256.New()
	h.Write([]byte(kidLabel))
	h.Write(key)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// KID is the fingerprint of the active key.
func (k *Keyring) KID() string { return k.kid }

// KIDs lists the fingerprints of every key the keyring can open with, the
// active one first (for startup logs and `decrypt` diagnostics).
func (k *Keyring) KIDs() []string { return append([]string(nil), k.kids...) }

// Seal encrypts plaintext under the active key. The empty string seals to
// the empty Sealed, so an absent value stays absent rather than becoming an
// encryption of "". go-jose draws a fresh random 96-bit IV per call, so two
// seals of the same value differ.
func (k *Keyring) Seal(plaintext string) (consent.Sealed, error) {
	if plaintext == "" {
		return "", nil
	}
	enc, err := jose.NewEncrypter(jose.A256GCM,
		jose.Recipient{Algorithm: jose.DIRECT, Key: k.active, KeyID: k.kid}, nil)
	if err != nil {
		return "", fmt.Errorf("pii: seal: %w", err)
	}
	obj, err := enc.Encrypt([]byte(plaintext))
	if err != nil {
		return "", fmt.Errorf("pii: seal: %w", err)
	}
	s, err := obj.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("pii: seal: %w", err)
	}
	return consent.Sealed(s), nil
}

// ErrUnknownKey is wrapped by Open when the value's kid is not in the
// keyring (typically: a retired key was dropped from ENCRYPTION_KEYS_RETIRED
// too early).
var ErrUnknownKey = errors.New("pii: no key for kid")

// Open decrypts a sealed value with the key its kid names (active or
// retired). The empty Sealed opens to "". Errors name at most the kid;
// go-jose's own errors are not wrapped because we can't vouch for what they
// quote.
func (k *Keyring) Open(s consent.Sealed) (string, error) {
	if s == "" {
		return "", nil
	}
	obj, err := jose.ParseEncryptedCompact(string(s),
		[]jose.KeyAlgorithm{jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return "", errors.New("pii: open: not a dir/A256GCM JWE compact value")
	}
	kid := obj.Header.KeyID
	if kid == "" {
		return "", errors.New("pii: open: sealed value has no kid")
	}
	key, ok := k.byKID[kid]
	if !ok {
		return "", fmt.Errorf("%w %q (list the key that made it in ENCRYPTION_KEYS_RETIRED)", ErrUnknownKey, kid)
	}
	pt, err := obj.Decrypt(key)
	if err != nil {
		return "", fmt.Errorf("pii: open: authentication failed for kid %q (value altered or wrong key)", kid)
	}
	return string(pt), nil
}

// SealedKID returns the kid in a sealed value's protected header without
// opening it ("" if it has none or isn't a JWE).
func SealedKID(s consent.Sealed) string {
	if s == "" {
		return ""
	}
	obj, err := jose.ParseEncryptedCompact(string(s),
		[]jose.KeyAlgorithm{jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return ""
	}
	return obj.Header.KeyID
}

// Pseudonymizer derives patient_ref values.
func (k *Keyring) Pseudonymizer(key []byte) *Pseudonymizer { return NewPseudonymizer(key) }

// Pseudonymizer computes a keyed pseudonym of a phone number. Its key is
// independent of the encryption keys, so patient_ref stays the same across
// encryption-key rotation; the key must stay secret, because phone numbers
// are few enough to brute-force an unkeyed hash.
type Pseudonymizer struct {
	key []byte
}

// NewPseudonymizer returns a Pseudonymizer keyed with key (32 bytes from
// NewPseudonymKey in production).
func NewPseudonymizer(key []byte) *Pseudonymizer {
	return &Pseudonymizer{key: append([]byte(nil), key...)}
}

// Ref returns "pr_" + the lowercase hex of the first 16 bytes of
// HMAC-SHA256(key, normalized number), or "" for an empty number.
// Normalizing drops spaces, dashes, dots and parentheses (keeping a leading
// +), so "+1 (415) 867-5309" and "+14158675309" are the same caller.
func (p *Pseudonymizer) Ref(phoneNumber string) string {
	n := NormalizeNumber(phoneNumber)
	if n == "" {
		return ""
	}
	m := hmac.New(sha256.New, p.key)
	m.Write([]byte(n))
	return "pr_" + hex.EncodeToString(m.Sum(nil)[:16])
}

// NormalizeNumber strips the formatting a number may carry.
func NormalizeNumber(s string) string {
	var b strings.Builder
	for _, r := range strings.TrimSpace(s) {
		switch r {
		case ' ', '\t', '-', '(', ')', '.':
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// NewPseudonymKey returns 32 random bytes.
func NewPseudonymKey() ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("pii: pseudonym key: %w", err)
	}
	return key, nil
}

// PseudonymSecretName is the consent.Store.Secret name of the pseudonym key.
const PseudonymSecretName = "patient_ref_key"

// SecretStore is the part of consent.Store that LoadPseudonymizer needs.
type SecretStore interface {
	Secret(ctx context.Context, name string, generate func() (consent.Sealed, error)) (consent.Sealed, error)
}

// LoadPseudonymizer returns the instance-wide Pseudonymizer: the key is
// generated once, stored sealed (hex inside the JWE) under
// PseudonymSecretName with first-writer-wins semantics, and opened with k.
// Opening needs the key that sealed it, so after a rotation the old key must
// stay in ENCRYPTION_KEYS_RETIRED (or the secret be re-sealed) — otherwise
// this fails, naming the kid, instead of silently minting a new pseudonym key
// that would change every patient_ref.
func LoadPseudonymizer(ctx context.Context, store SecretStore, k *Keyring) (*Pseudonymizer, error) {
	sealed, err := store.Secret(ctx, PseudonymSecretName, func() (consent.Sealed, error) {
		key, err := NewPseudonymKey()
		if err != nil {
			return "", err
		}
		return k.Seal(hex.EncodeToString(key))
	})
	if err != nil {
		return nil, fmt.Errorf("pii: load %s: %w", PseudonymSecretName, err)
	}
	plain, err := k.Open(sealed)
	if err != nil {
		return nil, fmt.Errorf("pii: open %s: %w", PseudonymSecretName, err)
	}
	key, err := hex.DecodeString(plain)
	if err != nil || len(key) != KeySize {
		return nil, fmt.Errorf("pii: stored %s is not a %d-byte hex key", PseudonymSecretName, KeySize)
	}
	return NewPseudonymizer(key), nil
}
