package pii

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/consentline/consentline/consent"
)

const (
	hexA = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	hexB = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff0f0e0d0c0b0a09080706050403020100"
)

// where is the place the tests' values belong: a record's from.
var where = consent.RecordBinding("CA0123456789abcdef0123456789abcdef", "hipaa-consent", consent.FieldFrom)

func mustRing(t *testing.T, active, retired string) *Keyring {
	t.Helper()
	k, err := ParseKeyring(active, retired)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRoundTrip(t *testing.T) {
	k := mustRing(t, hexA, "")
	for _, pt := range []string{"+14158675309", "yes I agree, that's fine", "ünïcödé ☎", strings.Repeat("x", 10000)} {
		s, err := k.SealFor(where, pt)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(s), pt) {
			t.Fatal("sealed value contains the plaintext")
		}
		got, err := k.OpenFor(where, s)
		if err != nil {
			t.Fatal(err)
		}
		if got != pt {
			t.Fatalf("round trip: got %q want %q", got, pt)
		}
	}
}

func TestEmptyStaysAbsent(t *testing.T) {
	k := mustRing(t, hexA, "")
	s, err := k.SealFor(where, "")
	if err != nil || s != "" {
		t.Fatalf("Seal(\"\") = %q, %v; want \"\", nil", s, err)
	}
	pt, err := k.OpenFor(where, "")
	if err != nil || pt != "" {
		t.Fatalf("Open(\"\") = %q, %v", pt, err)
	}
}

func TestFreshIVAndHeader(t *testing.T) {
	k := mustRing(t, hexA, "")
	s1, _ := k.SealFor(where, "+14158675309")
	s2, _ := k.SealFor(where, "+14158675309")
	if s1 == s2 {
		t.Fatal("two seals of the same value are identical")
	}
	p1, p2 := strings.Split(string(s1), "."), strings.Split(string(s2), ".")
	if len(p1) != 5 {
		t.Fatalf("compact JWE has %d parts", len(p1))
	}
	if p1[1] != "" {
		t.Fatal("dir JWE must have an empty encrypted key")
	}
	iv, _ := base64.RawURLEncoding.DecodeString(p1[2])
	if len(iv) != 12 {
		t.Fatalf("IV is %d bytes, want 12", len(iv))
	}
	if p1[2] == p2[2] {
		t.Fatal("IV reused")
	}
	tag, _ := base64.RawURLEncoding.DecodeString(p1[4])
	if len(tag) != 16 {
		t.Fatalf("tag is %d bytes, want 16", len(tag))
	}
	raw, err := base64.RawURLEncoding.DecodeString(p1[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	// The binding is in the protected header, nothing in "crit" (so any
	// JWE library opens the value), and "" members are absent, not empty.
	want := map[string]any{"alg": "dir", "enc": "A256GCM", "kid": k.KID(),
		"ctx": "consent_records", "sid": where.CallSID, "scr": "hipaa-consent", "fld": "from"}
	if len(h) != len(want) {
		t.Fatalf("header = %v, want %v", h, want)
	}
	for name, v := range want {
		if h[name] != v {
			t.Fatalf("header = %v, want %v", h, want)
		}
	}
	if SealedKID(s1) != k.KID() {
		t.Fatal("SealedKID")
	}
}

func TestTamperFails(t *testing.T) {
	k := mustRing(t, hexA, "")
	s, _ := k.SealFor(where, "+14158675309")
	parts := strings.Split(string(s), ".")
	for i := range []int{0, 2, 3, 4} {
		idx := []int{0, 2, 3, 4}[i]
		p := append([]string(nil), parts...)
		b, _ := base64.RawURLEncoding.DecodeString(p[idx])
		if idx == 0 {
			// a header change that still parses: add a field
			b = []byte(strings.Replace(string(b), "{", `{"x":1,`, 1))
		} else {
			b[0] ^= 1
		}
		p[idx] = base64.RawURLEncoding.EncodeToString(b)
		if pt, err := k.OpenFor(where, consent.Sealed(strings.Join(p, "."))); err == nil {
			t.Fatalf("tampered part %d opened to %q", idx, pt)
		} else if strings.Contains(err.Error(), "8675309") {
			t.Fatal("error leaks plaintext")
		}
	}
	if _, err := k.OpenFor(where, "not-a-jwe"); err == nil {
		t.Fatal("garbage opened")
	}
}

func TestRotation(t *testing.T) {
	a := mustRing(t, hexA, "")
	s, _ := a.SealFor(where, "+14158675309")

	rotated := mustRing(t, hexB, " "+hexA+" ,")
	got, err := rotated.OpenFor(where, s)
	if err != nil || got != "+14158675309" {
		t.Fatalf("rotated keyring: %q, %v", got, err)
	}
	if rotated.KID() == a.KID() {
		t.Fatal("kid did not change with the key")
	}
	s2, _ := rotated.SealFor(where, "x")
	if SealedKID(s2) != rotated.KID() {
		t.Fatal("new seals must use the active key")
	}

	bOnly := mustRing(t, hexB, "")
	_, err = bOnly.OpenFor(where, s)
	if !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("want ErrUnknownKey, got %v", err)
	}
	if !strings.Contains(err.Error(), a.KID()) {
		t.Fatalf("error %q does not name kid %s", err, a.KID())
	}
	if strings.Contains(err.Error(), "8675309") || strings.Contains(err.Error(), hexA) {
		t.Fatal("error leaks plaintext or key")
	}
}

func TestKIDDoesNotRevealKey(t *testing.T) {
	k := mustRing(t, hexA, "")
	if len(k.KID()) != 16 || strings.Contains(hexA, k.KID()) {
		t.Fatalf("kid %q", k.KID())
	}
	if got := mustRing(t, hexB, hexA+","+hexB).KIDs(); len(got) != 2 {
		t.Fatalf("KIDs = %v (duplicate of active not dropped)", got)
	}
}

func TestParseKeyErrorsDoNotEchoInput(t *testing.T) {
	secretish := "deadbeefcafebabe"
	cases := []string{
		"",
		secretish,   // too short
		hexA + "00", // too long
		strings.Repeat(secretish, 3) + "zzzzzzzzzzzzzzzz", // right length, not hex
	}
	for _, c := range cases {
		_, err := ParseKey(c)
		if err == nil {
			t.Fatalf("ParseKey accepted %d chars", len(c))
		}
		if c != "" && strings.Contains(err.Error(), c) || strings.Contains(err.Error(), secretish) {
			t.Fatalf("error echoes input: %v", err)
		}
	}
	if k, err := ParseKey(strings.ToUpper(hexA)); err != nil || len(k) != 32 {
		t.Fatal("upper-case hex rejected")
	}
}

func TestParseKeyringNamesSetting(t *testing.T) {
	_, err := ParseKeyring("", "")
	if err == nil || !strings.Contains(err.Error(), "ENCRYPTION_KEY") {
		t.Fatalf("missing active: %v", err)
	}
	_, err = ParseKeyring("abc", "")
	if err == nil || !strings.Contains(err.Error(), "ENCRYPTION_KEY is malformed") {
		t.Fatalf("bad active: %v", err)
	}
	_, err = ParseKeyring(hexA, hexB+",nothex")
	if err == nil || !strings.Contains(err.Error(), "ENCRYPTION_KEYS_RETIRED entry 2") || strings.Contains(err.Error(), "nothex") || strings.Contains(err.Error(), hexB) {
		t.Fatalf("bad retired: %v", err)
	}
}

func TestRef(t *testing.T) {
	key, err := NewPseudonymKey()
	if err != nil {
		t.Fatal(err)
	}
	// The pseudonymizer comes from a key independent of the keyrings, so two
	// keyrings (before/after rotation) give the same refs.
	p1 := mustRing(t, hexA, "").Pseudonymizer(key)
	p2 := mustRing(t, hexB, hexA).Pseudonymizer(key)
	r := p1.Ref("+14158675309")
	if r != p2.Ref("+14158675309") {
		t.Fatal("Ref differs across keyrings")
	}
	if !strings.HasPrefix(r, "pr_") || len(r) != 3+32 || strings.ToLower(r) != r {
		t.Fatalf("Ref format %q", r)
	}
	if p1.Ref("+1 (415) 867-5309") != r {
		t.Fatal("formatting not normalized")
	}
	if p1.Ref("+14158675308") == r {
		t.Fatal("different numbers, same ref")
	}
	if p1.Ref("") != "" {
		t.Fatal(`Ref("") must be ""`)
	}
	other, _ := NewPseudonymKey()
	if NewPseudonymizer(other).Ref("+14158675309") == r {
		t.Fatal("ref not keyed")
	}
}

// fakeSecrets mimics consent.Store.Secret: first writer wins.
type fakeSecrets struct {
	mu    sync.Mutex
	vals  map[string]consent.Sealed
	calls int
}

func (f *fakeSecrets) Secret(_ context.Context, name string, gen func() (consent.Sealed, error)) (consent.Sealed, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.vals[name]; ok {
		return v, nil
	}
	f.calls++
	v, err := gen()
	if err != nil {
		return "", err
	}
	if f.vals == nil {
		f.vals = map[string]consent.Sealed{}
	}
	f.vals[name] = v
	return v, nil
}

func TestLoadPseudonymizerSurvivesRotation(t *testing.T) {
	ctx := context.Background()
	store := &fakeSecrets{}
	a := mustRing(t, hexA, "")
	p1, err := LoadPseudonymizer(ctx, store, a)
	if err != nil {
		t.Fatal(err)
	}
	p1b, err := LoadPseudonymizer(ctx, store, a)
	if err != nil || store.calls != 1 {
		t.Fatalf("second load generated again: %v calls=%d", err, store.calls)
	}
	if SealedKID(store.vals[PseudonymSecretName]) != a.KID() {
		t.Fatal("secret not sealed with the keyring")
	}
	p2, err := LoadPseudonymizer(ctx, store, mustRing(t, hexB, hexA))
	if err != nil {
		t.Fatal(err)
	}
	n := "+14158675309"
	if p1.Ref(n) != p2.Ref(n) || p1.Ref(n) != p1b.Ref(n) {
		t.Fatal("patient_ref changed across rotation")
	}
	_, err = LoadPseudonymizer(ctx, store, mustRing(t, hexB, ""))
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), a.KID()) {
		t.Fatalf("dropped retired key: %v", err)
	}
}

func BenchmarkSeal(b *testing.B) {
	k, _ := ParseKeyring(hexA, "")
	for b.Loop() {
		if _, err := k.SealFor(where, "+14158675309"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	k, _ := ParseKeyring(hexA, "")
	s, _ := k.SealFor(where, "+14158675309")
	for b.Loop() {
		if _, err := k.OpenFor(where, s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRef(b *testing.B) {
	p := NewPseudonymizer(make([]byte, 32))
	for b.Loop() {
		p.Ref("+1 (415) 867-5309")
	}
}
