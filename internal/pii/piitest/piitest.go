// Package piitest helps tests seal values: with a keyring made from hex
// keys (Ring, Seal), and the way ConsentLine sealed them before each value
// was bound to its place (LegacySeal: no ctx/rid/sid/scr/fld header
// parameters), for tests that check such legacy values still open and that
// key rotation rewrites them. Production code has no way to seal a value
// unbound: that is the point of pii.Keyring.SealFor.
package piitest

import (
	"encoding/hex"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
)

// LegacySeal seals plaintext under the 64-hex-character key hexKey exactly
// as pii did before bindings: dir/A256GCM, kid, nothing else in the header.
func LegacySeal(t testing.TB, hexKey, plaintext string) consent.Sealed {
	t.Helper()
	key, err := hex.DecodeString(hexKey)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.DIRECT, Key: key, KeyID: pii.KeyID(key)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := enc.Encrypt([]byte(plaintext))
	if err != nil {
		t.Fatal(err)
	}
	s, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return consent.Sealed(s)
}

// Ring returns the keyring with the hex key active and the comma-separated
// hex keys retired.
func Ring(t testing.TB, active, retired string) *pii.Keyring {
	t.Helper()
	k, err := pii.ParseKeyring(active, retired)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Seal seals plain for its place b under k's active key.
func Seal(t testing.TB, k *pii.Keyring, b consent.Binding, plain string) consent.Sealed {
	t.Helper()
	s, err := k.SealFor(b, plain)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
