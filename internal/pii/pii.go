// Package pii seals ConsentLine's protected health information (caller and
// called numbers, transcripts) and derives the caller pseudonym.
//
// Sealed values are JWE compact strings, dir/A256GCM, with the key's
// fingerprint as "kid" in the protected header (CONTRACT.md §3). The same
// format is used at rest and in relay events, so a value can be opened by
// whoever holds the key: the service, the CLI's decrypt command, or the
// clinic's Zapier step.
//
// Each value is also bound to its place — table, row, field — by extra
// protected-header parameters (ctx, rid, sid, scr, fld; see SealFor). The
// header is authenticated, so a value moved to another field or record fails
// to open with a *PlaceError, while any JWE library that ignores the
// parameters still opens it (none is in "crit"). Values sealed before
// bindings existed still open; Rotate rewrites them bound.
//
// Nothing in this package ever puts a key or a plaintext into an error.
package pii

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
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
	aead   cipher.AEAD            // AES-256-GCM under active, for SealFor
	aeads  map[string]cipher.AEAD // by kid, every key's, for openOwn
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
	k.aeads = make(map[string]cipher.AEAD, len(k.byKID))
	for kid, key := range k.byKID {
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("pii: key %s: %w", kid, err)
		}
		if k.aeads[kid], err = cipher.NewGCM(block); err != nil {
			return nil, fmt.Errorf("pii: key %s: %w", kid, err)
		}
	}
	k.aead = k.aeads[k.kid]
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

// Binding names the place a sealed value belongs (see consent.Binding).
type Binding = consent.Binding

// The protected-header parameters that carry a Binding. None is listed in
// "crit" (CONTRACT.md §3): a standard JWE library ignores them and still
// opens the value, while AES-GCM authenticates them as part of the header,
// so they cannot be edited without the key.
const (
	hdrTable    jose.HeaderKey = "ctx"
	hdrID       jose.HeaderKey = "rid"
	hdrCallSID  jose.HeaderKey = "sid"
	hdrScriptID jose.HeaderKey = "scr"
	hdrField    jose.HeaderKey = "fld"
)

// SealFor encrypts plaintext under the active key, bound to b: b's members
// go into the protected header, and OpenFor opens the value only for the
// same place. There is deliberately no unbound Seal: every caller has to
// say where the value is going. The empty string seals to the empty Sealed,
// so an absent value stays absent rather than becoming an encryption of "".
// Each seal draws a fresh random 96-bit IV, so two seals of the same value
// differ (see seal.go).
func (k *Keyring) SealFor(b Binding, plaintext string) (consent.Sealed, error) {
	if b.Table == "" || b.Field == "" {
		// A programming error, caught before anything is written.
		return "", errors.New("pii: seal: the binding names no table or field")
	}
	if plaintext == "" {
		return "", nil
	}
	return k.seal(b, plaintext)
}

// ErrUnknownKey is wrapped by the Open methods when the value's kid is not
// in the keyring (typically: a retired key was dropped from
// ENCRYPTION_KEYS_RETIRED too early).
var ErrUnknownKey = errors.New("pii: no key for kid")

// ErrWrongPlace is wrapped (by a *PlaceError) when a value opens but is
// bound to another place than the one it was read from: it was moved there.
var ErrWrongPlace = errors.New("pii: value bound to another place")

// PlaceError says where a value was found and where it belongs. It holds
// ids and the kid, never the value.
type PlaceError struct {
	Want, Got Binding
	KID       string
}

func (e *PlaceError) Error() string {
	return fmt.Sprintf("pii: open: value read from %s is bound to %s (kid %q): it was moved from another field or record",
		e.Want, e.Got, e.KID)
}

func (e *PlaceError) Unwrap() error { return ErrWrongPlace }

// OpenFor decrypts a value read from the place b, with the key its kid
// names (active or retired). A value bound to another place fails with a
// *PlaceError (errors.Is ErrWrongPlace), after authentication, so the
// binding it reports is the one it was sealed with. A value with no binding
// at all was sealed before bindings existed and opens anywhere (legacy);
// `consentline keys rotate` rewrites those with their binding. The empty
// Sealed opens to "". Errors name at most the place and the kid; go-jose's
// own errors are not wrapped because we can't vouch for what they quote.
func (k *Keyring) OpenFor(b Binding, s consent.Sealed) (string, error) {
	pt, got, err := k.open(s)
	if err != nil {
		return "", err
	}
	if !got.IsZero() && got != b {
		return "", &PlaceError{Want: b, Got: got, KID: SealedKID(s)}
	}
	return pt, nil
}

// OpenAny decrypts a value wherever it belongs and returns the binding its
// own (authenticated) header names, zero for a legacy value. It is for
// tools shown a lone value out of context (`consentline decrypt VALUE`);
// code that read the value from a known place uses OpenFor.
func (k *Keyring) OpenAny(s consent.Sealed) (string, Binding, error) {
	return k.open(s)
}

func (k *Keyring) open(s consent.Sealed) (string, Binding, error) {
	if s == "" {
		return "", Binding{}, nil
	}
	if pt, b, ok, err := k.openOwn(s); ok {
		return pt, b, err
	}
	obj, err := parse(s)
	if err != nil {
		return "", Binding{}, err
	}
	kid := obj.Header.KeyID
	if kid == "" {
		return "", Binding{}, errors.New("pii: open: sealed value has no kid")
	}
	key, ok := k.byKID[kid]
	if !ok {
		return "", Binding{}, fmt.Errorf("%w %q (list the key that made it in ENCRYPTION_KEYS_RETIRED)", ErrUnknownKey, kid)
	}
	pt, err := obj.Decrypt(key)
	if err != nil {
		return "", Binding{}, fmt.Errorf("pii: open: authentication failed for kid %q (value altered or wrong key)", kid)
	}
	// Read only now: before Decrypt the header was not authenticated.
	b, err := headerBinding(obj.Header)
	if err != nil {
		return "", Binding{}, fmt.Errorf("pii: open: kid %q: %w", kid, err)
	}
	return string(pt), b, nil
}

func parse(s consent.Sealed) (*jose.JSONWebEncryption, error) {
	obj, err := jose.ParseEncryptedCompact(string(s),
		[]jose.KeyAlgorithm{jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, errors.New("pii: open: not a dir/A256GCM JWE compact value")
	}
	return obj, nil
}

func headerBinding(h jose.Header) (Binding, error) {
	var b Binding
	for key, dst := range map[jose.HeaderKey]*string{
		hdrTable: &b.Table, hdrID: &b.ID, hdrCallSID: &b.CallSID, hdrScriptID: &b.ScriptID, hdrField: &b.Field,
	} {
		v, ok := h.ExtraHeaders[key]
		if !ok {
			continue
		}
		str, ok := v.(string)
		if !ok || str == "" {
			return Binding{}, fmt.Errorf("binding header %q is not a non-empty string", key)
		}
		*dst = str
	}
	if !b.IsZero() && (b.Table == "" || b.Field == "") {
		return Binding{}, errors.New("binding header names no table or field")
	}
	return b, nil
}

// Header is what a sealed value's protected header says, read without
// opening it (nothing in it is authenticated until the value is opened).
type Header struct {
	KID     string
	Binding Binding
}

// ReadHeader parses a sealed value's protected header without opening it:
// key rotation uses it to skip values already under the active key and
// bound to their place, without decrypting them.
func ReadHeader(s consent.Sealed) (Header, error) {
	if v, ok := readOwn(s); ok {
		// seal's own form, read without go-jose (a tenth of its cost): the
		// relay reads the header of every number a decision relays.
		b, err := v.binding()
		if err != nil {
			return Header{}, fmt.Errorf("pii: kid %q: %w", v.header.KID, err)
		}
		return Header{KID: v.header.KID, Binding: b}, nil
	}
	obj, err := parse(s)
	if err != nil {
		return Header{}, err
	}
	b, err := headerBinding(obj.Header)
	if err != nil {
		return Header{}, fmt.Errorf("pii: kid %q: %w", obj.Header.KeyID, err)
	}
	return Header{KID: obj.Header.KeyID, Binding: b}, nil
}

// SealedKID returns the kid in a sealed value's protected header without
// opening it ("" if it has none or isn't a JWE).
func SealedKID(s consent.Sealed) string {
	if s == "" {
		return ""
	}
	if v, ok := readOwn(s); ok {
		return v.header.KID
	}
	obj, err := parse(s)
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
// The sealed key is bound to its secret's name. Opening needs the key that
// sealed it, so after a rotation the old key must stay in
// ENCRYPTION_KEYS_RETIRED until `consentline keys rotate` re-seals it —
// otherwise
// this fails, naming the kid, instead of silently minting a new pseudonym key
// that would change every patient_ref.
func LoadPseudonymizer(ctx context.Context, store SecretStore, k *Keyring) (*Pseudonymizer, error) {
	sealed, err := store.Secret(ctx, PseudonymSecretName, func() (consent.Sealed, error) {
		key, err := NewPseudonymKey()
		if err != nil {
			return "", err
		}
		return k.SealFor(consent.SecretBinding(PseudonymSecretName), hex.EncodeToString(key))
	})
	if err != nil {
		return nil, fmt.Errorf("pii: load %s: %w", PseudonymSecretName, err)
	}
	plain, err := k.OpenFor(consent.SecretBinding(PseudonymSecretName), sealed)
	if err != nil {
		return nil, fmt.Errorf("pii: open %s: %w", PseudonymSecretName, err)
	}
	key, err := hex.DecodeString(plain)
	if err != nil || len(key) != KeySize {
		return nil, fmt.Errorf("pii: stored %s is not a %d-byte hex key", PseudonymSecretName, KeySize)
	}
	return NewPseudonymizer(key), nil
}
