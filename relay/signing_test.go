package relay

import (
	"encoding/base64"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The Standard Webhooks reference vector, as published with the spec's
// reference libraries: secret, id, timestamp and body -> signature.
const (
	vecSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vecID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vecUnix   = 1614265330
	vecBody   = `{"test": 2432232314}`
	vecSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func TestSignStandardWebhooksVector(t *testing.T) {
	s, err := ParseSigningSecret(vecSecret)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Sign(vecID, time.Unix(vecUnix, 0), []byte(vecBody)); got != vecSig {
		t.Fatalf("Sign = %s, want %s", got, vecSig)
	}
	h := http.Header{}
	s.SetHeaders(h, vecID, time.Unix(vecUnix, 0), []byte(vecBody))
	if err := s.Verify(h, []byte(vecBody), time.Unix(vecUnix+10, 0), DefaultTolerance); err != nil {
		t.Fatal(err)
	}
}

// TestSignMatchesOpenSSL recomputes a signature with openssl, independently
// of Go's crypto, on a body shaped like a real event.
func TestSignMatchesOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	s, _ := ParseSigningSecret(vecSecret)
	body := `{"id":"rec_1","type":"consent.granted"}`
	keyHex := strings.TrimSpace(run(t, "sh", "-c", "printf %s '"+strings.TrimPrefix(vecSecret, SecretPrefix)+"' | openssl base64 -d -A | od -An -tx1 | tr -d ' \\n'"))
	out := run(t, "sh", "-c", "printf %s 'rec_1.1700000000."+body+"' | openssl dgst -sha256 -mac HMAC -macopt hexkey:"+keyHex+" -binary | openssl base64 -A")
	if want, got := "v1,"+strings.TrimSpace(out), s.Sign("rec_1", time.Unix(1700000000, 0), []byte(body)); got != want {
		t.Fatalf("Sign = %s, openssl says %s", got, want)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out)
}

func TestVerifyRejects(t *testing.T) {
	s, _ := ParseSigningSecret(vecSecret)
	now := time.Unix(vecUnix, 0)
	good := http.Header{}
	s.SetHeaders(good, vecID, now, []byte(vecBody))

	if err := s.Verify(good, []byte(vecBody+" "), now, DefaultTolerance); err != ErrNoValidSignature {
		t.Fatalf("altered body: %v", err)
	}
	if err := s.Verify(good, []byte(vecBody), now.Add(6*time.Minute), DefaultTolerance); err != ErrTimestamp {
		t.Fatalf("stale: %v", err)
	}
	if err := s.Verify(http.Header{}, []byte(vecBody), now, DefaultTolerance); err != ErrMissingHeaders {
		t.Fatalf("missing: %v", err)
	}
	other, _ := NewSigningSecret()
	o, _ := ParseSigningSecret(other)
	if err := o.Verify(good, []byte(vecBody), now, DefaultTolerance); err != ErrNoValidSignature {
		t.Fatalf("wrong key: %v", err)
	}
	// Several signatures (key rotation on the receiver side): any match wins.
	multi := good.Clone()
	multi.Set(HeaderSignature, "v1,bm9wZQ== v2,xyz "+good.Get(HeaderSignature))
	if err := s.Verify(multi, []byte(vecBody), now, DefaultTolerance); err != nil {
		t.Fatalf("multi: %v", err)
	}
}

func TestParseSigningSecretErrors(t *testing.T) {
	short := func(n int) string { return SecretPrefix + base64.StdEncoding.EncodeToString(make([]byte, n)) }
	for _, bad := range []string{"", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!!notbase64!!!", "whsec_c2hvcnQ=", short(16), short(MinSecretBytes - 1)} {
		_, err := ParseSigningSecret(bad)
		if err == nil {
			t.Fatalf("accepted %q", bad)
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "RELAY_SIGNING_SECRET ") || strings.Contains(msg, "\n") ||
			!strings.HasSuffix(msg, "(make one with: echo whsec_$(openssl rand -base64 32))") {
			t.Fatalf("want one line naming the setting and how to make one: %v", err)
		}
		if bad != "" && strings.Contains(err.Error(), strings.TrimPrefix(bad, SecretPrefix)) {
			t.Fatalf("error echoes the secret: %v", err)
		}
	}
}

// Standard Webhooks' range of secret sizes starts at 24 bytes; a longer key
// than its 64 is no weaker and is accepted.
func TestParseSigningSecretSizes(t *testing.T) {
	for _, n := range []int{MinSecretBytes, 32, 64, 100} {
		secret := SecretPrefix + base64.StdEncoding.EncodeToString(make([]byte, n))
		if _, err := ParseSigningSecret(" " + secret + "\n"); err != nil {
			t.Errorf("%d bytes: %v", n, err)
		}
	}
	fresh, err := NewSigningSecret()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSigningSecret(fresh); err != nil {
		t.Errorf("NewSigningSecret's secret is refused: %v", err)
	}
}

func BenchmarkSign(b *testing.B) {
	s, _ := ParseSigningSecret(vecSecret)
	body := []byte(strings.Repeat("x", 1500)) // about one event with sealed PII
	ts := time.Unix(vecUnix, 0)
	for b.Loop() {
		s.Sign("0b6c3f0e-5d1e-4f7a-9a51-3c4c2f1d8e77", ts, body)
	}
}
