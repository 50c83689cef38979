// Package piitest makes values the way ConsentLine sealed them before each
// value was bound to its place (no ctx/rid/sid/scr/fld header parameters),
// for tests that check such legacy values still open and that key rotation
// rewrites them. Production code has no way to seal a value unbound: that
// is the point of pii.Keyring.SealFor.
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
