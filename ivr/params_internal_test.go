package ivr

import (
	"net/url"
	"sort"
	"testing"
)

// A confidence that is not a finite number in [0, 1] is absent, never a
// score: NaN used to slip through (it compares false with both bounds), the
// store refused the record, and the caller was put on hold again and again.
func TestParseConfidence(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
		ok   bool
	}{
		{"0.92", 0.92, true}, {"0", 0, true}, {"1", 1, true}, {"1.0", 1, true}, {"0.5e0", 0.5, true},
		{"", 0, false}, {"NaN", 0, false}, {"nan", 0, false}, {"-NaN", 0, false},
		{"Inf", 0, false}, {"+Inf", 0, false}, {"-Inf", 0, false}, {"infinity", 0, false},
		{"1.0000001", 0, false}, {"-0.1", 0, false}, {"1e309", 0, false}, {"0.9x", 0, false}, {" 0.9", 0, false},
	} {
		got := parseConfidence(tc.in)
		if (got != nil) != tc.ok || (got != nil && *got != tc.want) {
			t.Errorf("parseConfidence(%q) = %v, want %v (ok %v)", tc.in, got, tc.want, tc.ok)
		}
	}
}

// recutBase is a gather webhook as Twilio sends it, in signing order.
var recutBase = [][2]string{
	{"AccountSid", "AC0123456789abcdef0123456789abcdef"},
	{"ApiVersion", "2010-04-01"},
	{"CallSid", "CA00112233445566778899aabbccddeeff"},
	{"CallStatus", "in-progress"},
	{"Called", "+18005550199"},
	{"Caller", "+14155550123"},
	{"Confidence", "0.93"},
	{"Digits", "1"},
	{"Direction", "inbound"},
	{"From", "+14155550123"},
	{"SpeechResult", "yes I agree"},
	{"To", "+18005550199"},
}

// FuzzRecut moves the key/value boundaries of a signed webhook — every
// variant concatenates to the same signed string, so it carries the same
// valid signature — and checks that no re-cut the validator admits changes
// the call, the account or the key pressed, and that what it admits has
// its shape.
func FuzzRecut(f *testing.F) {
	f.Add(uint8(2), uint16(0), uint8(0), uint16(0), uint8(0))  // CallSid swallows CallStatus
	f.Add(uint8(0), uint16(0), uint8(0), uint16(0), uint8(1))  // AccountSid swallows ApiVersion
	f.Add(uint8(5), uint16(40), uint8(0), uint16(0), uint8(0)) // a boundary moved into Caller
	f.Add(uint8(7), uint16(130), uint8(8), uint16(131), uint8(0))
	const accountSID = "AC0123456789abcdef0123456789abcdef"
	rules := paramRules(accountSID)
	var stream string
	bounds := []int{0}
	for _, p := range recutBase {
		stream += p[0]
		bounds = append(bounds, len(stream))
		stream += p[1]
		bounds = append(bounds, len(stream))
	}
	f.Fuzz(func(t *testing.T, i1 uint8, p1 uint16, i2 uint8, p2 uint16, merge uint8) {
		b := append([]int(nil), bounds...)
		// Move two inner boundaries anywhere in the string.
		inner := len(b) - 2
		b[1+int(i1)%inner] = int(p1) % len(stream)
		b[1+int(i2)%inner] = int(p2) % len(stream)
		// Optionally let one value swallow the next key and value.
		if merge > 0 {
			k := 2 * (int(merge) % len(recutBase))
			if k+2 < len(b)-1 {
				b = append(b[:k+1], b[k+3:]...)
			}
		}
		sort.Ints(b)
		form := url.Values{}
		prev := ""
		for i := 0; i+2 < len(b); i += 2 {
			k, v := stream[b[i]:b[i+1]], stream[b[i+1]:b[i+2]]
			// The validator sorts the keys it is given: a cut whose keys
			// are not in order (or repeat) signs a different string.
			if k == "" || k <= prev {
				return
			}
			prev = k
			form.Set(k, v)
		}
		if b[len(b)-1] != len(stream) {
			return
		}
		if bad := checkParams(form, rules); bad != "" {
			return // refused
		}
		dropMalformedScores(form)
		want := map[string]string{}
		for _, p := range recutBase {
			want[p[0]] = p[1]
		}
		for _, k := range []string{"CallSid", "AccountSid"} {
			if form.Get(k) != want[k] {
				t.Fatalf("re-cut admitted with %s = %q: %v", k, form.Get(k), form)
			}
		}
		if d, ok := form["Digits"]; ok && d[0] != want["Digits"] {
			t.Fatalf("re-cut admitted with Digits = %q: %v", d[0], form)
		}
		if c, ok := form["Confidence"]; ok && !isScore(c[0]) {
			t.Fatalf("re-cut kept Confidence = %q", c[0])
		}
	})
}

// The request FuzzRecut re-cuts is admitted as Twilio sent it, so the
// fuzzer's admitted variants are not vacuous.
func TestRecutBaseAdmitted(t *testing.T) {
	form := url.Values{}
	for _, p := range recutBase {
		form.Set(p[0], p[1])
	}
	if bad := checkParams(form, paramRules(form.Get("AccountSid"))); bad != "" {
		t.Fatalf("Twilio's own request refused at %s", bad)
	}
}
