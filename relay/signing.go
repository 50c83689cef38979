package relay

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks header names.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// SecretPrefix starts every RELAY_SIGNING_SECRET.
const SecretPrefix = "whsec_"

// DefaultTolerance is how far a webhook-timestamp may be from the
// verifier's clock (the Standard Webhooks reference libraries use 5 minutes),
// which bounds how long a captured request can be replayed.
const DefaultTolerance = 5 * time.Minute

// Signer signs relay requests per the Standard Webhooks spec.
type Signer struct {
	key []byte
}

// MinSecretBytes is the shortest signing key ParseSigningSecret accepts: the
// 24 bytes (192 bits) at which Standard Webhooks starts its range of secret
// sizes (24 to 64). Shorter keys would still "work" with HMAC-SHA256, but a
// secret the spec calls too short is one a receiver's library may refuse,
// and it is the only thing keeping forged events out of a clinic's CRM.
// NewSigningSecret and the README's recipe make 32. Keys longer than 64
// bytes are not refused: HMAC hashes them down and they are no weaker.
const MinSecretBytes = 24

// howToMakeSecret ends every RELAY_SIGNING_SECRET error.
const howToMakeSecret = "(make one with: echo whsec_$(openssl rand -base64 32))"

// errNoSigningSecret is the one error for a relay to Zapier without a
// secret, from the settings and from Config alike.
var errNoSigningSecret = errors.New("RELAY_SIGNING_SECRET is required when ZAPIER_WEBHOOK_URL is set " + howToMakeSecret)

// ParseSigningSecret reads RELAY_SIGNING_SECRET: "whsec_" + base64 of an
// HMAC key of at least MinSecretBytes. It is the one check of the setting,
// used by the settings loader at start and by anything else that signs.
// Errors are one line naming the setting and how to make a good one, and
// never quote the value.
func ParseSigningSecret(secret string) (*Signer, error) {
	secret = strings.TrimSpace(secret)
	if secret == "" {
		return nil, errNoSigningSecret
	}
	b64, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, errors.New("RELAY_SIGNING_SECRET is malformed: want " + SecretPrefix + " followed by base64 " + howToMakeSecret)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errors.New("RELAY_SIGNING_SECRET is malformed: the part after " + SecretPrefix + " is not base64 " + howToMakeSecret)
	}
	if len(key) < MinSecretBytes {
		return nil, fmt.Errorf("RELAY_SIGNING_SECRET is malformed: want at least %d bytes after %s, got %d %s", MinSecretBytes, SecretPrefix, len(key), howToMakeSecret)
	}
	return &Signer{key: key}, nil
}

// NewSigningSecret returns a fresh "whsec_" secret with a 32-byte key.
func NewSigningSecret() (string, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return "", err
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(key), nil
}

// Sign returns the webhook-signature value "v1," + base64(HMAC-SHA256(key,
// id "." timestamp "." body)).
func (s *Signer) Sign(id string, ts time.Time, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(s.mac(id, ts.Unix(), body))
}

func (s *Signer) mac(id string, unix int64, body []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write([]byte(strconv.FormatInt(unix, 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// SetHeaders sets the three Standard Webhooks headers on h.
func (s *Signer) SetHeaders(h http.Header, id string, ts time.Time, body []byte) {
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, s.Sign(id, ts, body))
}

// Verification errors.
var (
	ErrMissingHeaders   = errors.New("relay: webhook-id, webhook-timestamp or webhook-signature missing")
	ErrTimestamp        = errors.New("relay: webhook-timestamp outside tolerance")
	ErrNoValidSignature = errors.New("relay: no matching v1 signature")
)

// Verify checks a received request's headers and raw body, as a receiver
// would: the timestamp must be within tolerance of now and one of the
// space-separated signatures must be a matching "v1," signature.
func (s *Signer) Verify(h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	id, tsStr, sigs := h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature)
	if id == "" || tsStr == "" || sigs == "" {
		return ErrMissingHeaders
	}
	unix, err := strconv.ParseInt(tsStr, 10, 64)
	if err != nil {
		return ErrTimestamp
	}
	if d := now.Sub(time.Unix(unix, 0)); d > tolerance || d < -tolerance {
		return ErrTimestamp
	}
	want := s.mac(id, unix, body)
	for _, sig := range strings.Fields(sigs) {
		version, b64, ok := strings.Cut(sig, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrNoValidSignature
}
