package pii

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/consentline/consentline/consent"
)

// What seal writes, go-jose reads: the header (kid and binding) and the
// plaintext, for bindings with and without their optional members and for
// plaintexts of every kind, including ones JSON would escape.
func TestSealOpensWithGoJose(t *testing.T) {
	k := mustRing(t, hexA, "")
	rng := rand.New(rand.NewPCG(7, 9))
	texts := []string{"+14158675309", "yes I agree", "sí, estoy de acuerdo", `"<&>'\` + "\x00\n", string(make([]byte, 4096))}
	for i := range 200 {
		b := consent.Binding{Table: "consent_records", Field: consent.FieldTranscript}
		if i%2 == 0 {
			b.CallSID = fmt.Sprintf("CA%032x", rng.Uint64())
		}
		if i%3 == 0 {
			b.ScriptID = "hipaa-consent"
		}
		if i%5 == 0 {
			b.Table, b.ID = "relay_event", fmt.Sprintf("cc_CA%032x", rng.Uint64())
		}
		plain := texts[i%len(texts)] + fmt.Sprint(rng.Int())
		s, err := k.SealFor(b, plain)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := jose.ParseEncryptedCompact(string(s), []jose.KeyAlgorithm{jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
		if err != nil {
			t.Fatalf("go-jose cannot parse %q: %v", s, err)
		}
		got, err := obj.Decrypt(k.active)
		if err != nil || string(got) != plain {
			t.Fatalf("go-jose decrypts %q, %v; want %q", got, err, plain)
		}
		if obj.Header.KeyID != k.KID() {
			t.Fatalf("kid %q", obj.Header.KeyID)
		}
		if hb, err := headerBinding(obj.Header); err != nil || hb != b {
			t.Fatalf("binding read back %+v, %v; want %+v", hb, err, b)
		}
		// ReadHeader and SealedKID read seal's form without go-jose, and
		// say what go-jose says.
		if h, err := ReadHeader(s); err != nil || h != (Header{KID: obj.Header.KeyID, Binding: b}) {
			t.Fatalf("ReadHeader: %+v, %v", h, err)
		}
		if kid := SealedKID(s); kid != obj.Header.KeyID {
			t.Fatalf("SealedKID: %q", kid)
		}
		if pt, err := k.OpenFor(b, s); err != nil || pt != plain {
			t.Fatalf("OpenFor: %q, %v", pt, err)
		}
	}
}

// Values go-jose wrote (every value sealed before seal.go, and any other
// valid dir/A256GCM JWE, compressed or with members seal does not write)
// still open, through go-jose; a value under a key the ring lacks names
// its kid either way.
func TestOpenReadsGoJoseValues(t *testing.T) {
	k := mustRing(t, hexA, "")
	for _, zip := range []bool{false, true} {
		opts := &jose.EncrypterOptions{}
		if zip {
			opts.Compression = jose.DEFLATE
		}
		opts.WithHeader(hdrTable, where.Table).WithHeader(hdrCallSID, where.CallSID).
			WithHeader(hdrScriptID, where.ScriptID).WithHeader(hdrField, where.Field)
		enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.DIRECT, Key: k.active, KeyID: k.kid}, opts)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := enc.Encrypt([]byte("+14158675309"))
		if err != nil {
			t.Fatal(err)
		}
		s, err := obj.CompactSerialize()
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := k.OpenFor(where, consent.Sealed(s)); err != nil || pt != "+14158675309" {
			t.Fatalf("zip %v: OpenFor = %q, %v", zip, pt, err)
		}
		if h, err := ReadHeader(consent.Sealed(s)); err != nil || h != (Header{KID: k.kid, Binding: where}) {
			t.Fatalf("zip %v: ReadHeader = %+v, %v", zip, h, err)
		}
	}
	other := mustRing(t, hexB, "")
	s, err := other.SealFor(where, "+14158675309")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.OpenFor(where, s); !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), other.KID()) {
		t.Fatalf("a value under an unknown key: %v", err)
	}
}
