package ivr

import "testing"

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
