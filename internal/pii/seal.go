package pii

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/consentline/consentline/consent"
)

// sealHeader is a sealed value's JWE protected header: direct encryption
// with AES-256-GCM under the key named by kid, and the place the value is
// bound to (ctx and fld always; rid, sid and scr absent, not empty, when
// the place has none).
type sealHeader struct {
	Alg      string `json:"alg"`
	Enc      string `json:"enc"`
	KID      string `json:"kid"`
	Table    string `json:"ctx"`
	ID       string `json:"rid,omitempty"`
	CallSID  string `json:"sid,omitempty"`
	ScriptID string `json:"scr,omitempty"`
	Field    string `json:"fld"`
}

const (
	gcmIVSize  = 12
	gcmTagSize = 16
)

// seal writes plaintext as a JWE compact serialization (RFC 7516 §7.1) with
// alg "dir" and enc "A256GCM": BASE64URL(header) . "" . BASE64URL(IV) .
// BASE64URL(ciphertext) . BASE64URL(tag), the header's encoded form being
// the additional authenticated data (§5.1 step 14), so the binding in it
// cannot be changed without the value failing to open.
//
// Written here rather than with go-jose's Encrypter, which builds an
// encrypter, marshals its header through reflection and copies each part
// several times: 13 µs and 106 allocations per value, and every decision
// seals three values on the request's path (the status callback of an
// undecided call five). This is one JSON marshal and one AES-GCM seal with
// the cipher made once per keyring. Values in this form are read back
// without go-jose too (readOwn); any other goes to go-jose, and
// TestSealOpensWithGoJose checks that go-jose parses and decrypts what
// this writes, header and all.
func (k *Keyring) seal(b Binding, plaintext string) (consent.Sealed, error) {
	hdr, err := json.Marshal(sealHeader{
		Alg: "dir", Enc: "A256GCM", KID: k.kid,
		Table: b.Table, ID: b.ID, CallSID: b.CallSID, ScriptID: b.ScriptID, Field: b.Field,
	})
	if err != nil {
		return "", fmt.Errorf("pii: seal: %w", err)
	}
	enc := base64.RawURLEncoding
	protected := make([]byte, enc.EncodedLen(len(hdr)))
	enc.Encode(protected, hdr)

	var iv [gcmIVSize]byte
	if _, err := rand.Read(iv[:]); err != nil {
		return "", fmt.Errorf("pii: seal: %w", err)
	}
	sealed := k.aead.Seal(nil, iv[:], []byte(plaintext), protected)
	ct, tag := sealed[:len(sealed)-gcmTagSize], sealed[len(sealed)-gcmTagSize:]

	out := make([]byte, 0, len(protected)+4+enc.EncodedLen(gcmIVSize)+enc.EncodedLen(len(ct))+enc.EncodedLen(gcmTagSize))
	out = append(out, protected...)
	out = append(out, '.', '.') // no encrypted key: "dir"
	out = enc.AppendEncode(out, iv[:])
	out = append(out, '.')
	out = enc.AppendEncode(out, ct)
	out = append(out, '.')
	out = enc.AppendEncode(out, tag)
	return consent.Sealed(out), nil
}

// openOwn opens a value in exactly the form seal writes: five parts, an
// empty encrypted key, a 12-byte IV, a 16-byte tag, and a header with alg
// "dir", enc "A256GCM", a kid and no member seal does not write (a "zip"
// or "crit" this did not understand would change what the value means).
// ok false leaves the value to go-jose (open), which reads any valid
// dir/A256GCM JWE; ok true means this is the answer, opened or refused.
// A third of go-jose's cost: a status callback of an undecided call opens
// the record's two numbers to seal them for its call.completed event, in
// the transaction that holds the embedded database's one writer.
func (k *Keyring) openOwn(s consent.Sealed) (pt string, b Binding, ok bool, err error) {
	v, ok := readOwn(s)
	if !ok {
		return "", Binding{}, false, nil
	}
	aead, known := k.aeads[v.header.KID]
	if !known {
		return "", Binding{}, true, fmt.Errorf("%w %q (list the key that made it in ENCRYPTION_KEYS_RETIRED)", ErrUnknownKey, v.header.KID)
	}
	plain, err := aead.Open(nil, v.iv, append(v.ct, v.tag...), []byte(v.protected))
	if err != nil {
		return "", Binding{}, true, fmt.Errorf("pii: open: authentication failed for kid %q (value altered or wrong key)", v.header.KID)
	}
	if b, err = v.binding(); err != nil {
		return "", Binding{}, true, fmt.Errorf("pii: open: kid %q: %w", v.header.KID, err)
	}
	return string(plain), b, true, nil
}

// ownValue is a sealed value in seal's form, split and decoded.
type ownValue struct {
	protected   string // the header as encoded: the AAD
	header      sealHeader
	iv, ct, tag []byte
}

// readOwn splits and decodes a value in exactly the form seal writes (see
// openOwn); ok false leaves it to go-jose.
func readOwn(s consent.Sealed) (v ownValue, ok bool) {
	var parts [5]string
	rest := string(s)
	for i := range 4 {
		j := indexDot(rest)
		if j < 0 {
			return ownValue{}, false
		}
		parts[i], rest = rest[:j], rest[j+1:]
	}
	parts[4] = rest
	if parts[1] != "" || indexDot(rest) >= 0 {
		return ownValue{}, false
	}
	enc := base64.RawURLEncoding
	raw, err := enc.DecodeString(parts[0])
	if err != nil {
		return ownValue{}, false
	}
	// Exactly what seal marshals, byte for byte: no member it does not
	// write, none twice, nothing around it.
	h := &v.header
	if json.Unmarshal(raw, h) != nil || h.Alg != "dir" || h.Enc != "A256GCM" || h.KID == "" {
		return ownValue{}, false
	}
	if again, err := json.Marshal(h); err != nil || !bytes.Equal(again, raw) {
		return ownValue{}, false
	}
	var err1, err2, err3 error
	v.iv, err1 = enc.DecodeString(parts[2])
	v.ct, err2 = enc.DecodeString(parts[3])
	v.tag, err3 = enc.DecodeString(parts[4])
	if err1 != nil || err2 != nil || err3 != nil || len(v.iv) != gcmIVSize || len(v.tag) != gcmTagSize {
		return ownValue{}, false
	}
	v.protected = parts[0]
	return v, true
}

// binding is the place the header binds the value to.
func (v ownValue) binding() (Binding, error) {
	h := v.header
	b := Binding{Table: h.Table, ID: h.ID, CallSID: h.CallSID, ScriptID: h.ScriptID, Field: h.Field}
	if !b.IsZero() && (b.Table == "" || b.Field == "") {
		return Binding{}, errors.New("binding header names no table or field")
	}
	return b, nil
}

func indexDot(s string) int { return strings.IndexByte(s, '.') }
