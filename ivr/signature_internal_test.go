package ivr

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"testing"

	"github.com/twilio/twilio-go/client"
)

// signedAsIs accepts only what twilio-go's validator accepts, and together
// with it (as RequireTwilioSignature uses them) accepts exactly that:
// Twilio's vector, the URL as written, the URL with its default port added
// or removed, and nothing forged, truncated or signed with another token.
func TestSignedAsIsAgreesWithTwilioGo(t *testing.T) {
	const token = "12345"
	key := []byte(token)
	v := client.NewRequestValidator(token)
	flat := func(form url.Values) map[string]string {
		m := map[string]string{}
		for k, vs := range form {
			m[k] = vs[0]
		}
		return m
	}

	vector := url.Values{"CallSid": {"CA1234567890ABCDE"}, "Caller": {"+14158675309"}, "Digits": {"1234"}, "From": {"+14158675309"}, "To": {"+18005551212"}}
	if !signedAsIs(key, "https://mycompany.com/myapp.php?foo=1&bar=2", vector, "RSOYDt4T1cUTdK1PDd93/VVr8B8=") {
		t.Fatal("Twilio's test vector refused")
	}

	rng := rand.New(rand.NewPCG(1, 2))
	chars := "abcXYZ019 +-_.~%&=?/:é"
	word := func(n int) string {
		r := []rune(chars)
		b := make([]rune, rng.IntN(n)+1)
		for i := range b {
			b[i] = r[rng.IntN(len(r))]
		}
		return string(b)
	}
	bases := []string{"https://consent.example.com", "https://consent.example.com:443", "http://localhost:8080", "https://h.example:8443"}
	for i := range 2000 {
		u := bases[i%len(bases)] + "/voice/gather?attempt=0&lang=en-US&t0=" + fmt.Sprint(rng.Int64())
		form := url.Values{}
		for range rng.IntN(12) {
			form.Set(word(10), word(30))
		}
		var sig string
		switch i % 5 {
		case 1: // Twilio signed the URL with the default port written out
			sig = twilioSignature(key, "https://consent.example.com:443"+u[len(bases[0]):], form)
		case 2: // a forger without the token
			sig = twilioSignature([]byte("not the token"), u, form)
		default:
			sig = twilioSignature(key, u, form)
		}
		if i%7 == 3 {
			sig = sig[:len(sig)-2] // truncated
		}
		if i%11 == 4 && len(form) > 0 {
			for k := range form {
				form.Set(k, form.Get(k)+"x") // tampered after signing
				break
			}
		}
		lib := v.Validate(u, flat(form), sig)
		fast := signedAsIs(key, u, form, sig)
		if fast && !lib {
			t.Fatalf("signedAsIs accepts what twilio-go refuses: %q %v %q", u, form, sig)
		}
		if got := fast || lib; got != lib {
			t.Fatalf("combined check %v, twilio-go %v", got, lib)
		}
		if i%5 != 1 && !fast && lib {
			t.Fatalf("signedAsIs refuses a signature of the URL as written: %q", u)
		}
	}
}

func BenchmarkSignatureCheck(b *testing.B) {
	const token = "0123456789abcdef0123456789abcdef"
	u := "https://consent.example.com/voice/gather?attempt=0&lang=en-US&t0=1800000000000"
	form := url.Values{
		"AccountSid": {"AC" + fmt.Sprintf("%032x", 1)}, "CallSid": {"CA" + fmt.Sprintf("%032x", 2)}, "CallStatus": {"in-progress"},
		"Digits": {"1"}, "Direction": {"inbound"}, "From": {"+14155550123"}, "To": {"+18005550199"}, "ApiVersion": {"2010-04-01"},
	}
	sig := twilioSignature([]byte(token), u, form)
	b.Run("twilio-go", func(b *testing.B) {
		v := client.NewRequestValidator(token)
		b.ReportAllocs()
		for b.Loop() {
			params := map[string]string{}
			for k, vs := range form {
				params[k] = vs[0]
			}
			if !v.Validate(u, params, sig) {
				b.Fatal("refused")
			}
		}
	})
	b.Run("signedAsIs", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !signedAsIs([]byte(token), u, form, sig) {
				b.Fatal("refused")
			}
		}
	})
}

// twilioSignature is Twilio's signature of form posted to u, written out
// independently of both implementations under test.
func twilioSignature(key []byte, u string, form url.Values) string {
	mac := hmac.New(sha1.New, key)
	mac.Write([]byte(u))
	names := make([]string, 0, len(form))
	for k := range form {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		mac.Write([]byte(k + form[k][0]))
	}
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}
