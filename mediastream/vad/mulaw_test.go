package vad

import "testing"

// Reference points of G.711 μ-law (ITU-T G.711 table 2a, 16-bit scaled).
func TestMuLawTable(t *testing.T) {
	cases := map[byte]int16{
		0xFF: 0, 0x7F: 0,
		0x00: -32124, 0x80: 32124,
		0xFE: 8, 0x7E: -8,
		0xF0: 120, 0x70: -120,
		0xEF: 132, 0x6F: -132,
		0x8F: 16764, 0x0F: -16764, 0x9F: 8316,
	}
	for b, want := range cases {
		if got := MuLaw[b]; got != want {
			t.Errorf("MuLaw[%#02x] = %d, want %d", b, got, want)
		}
	}
	// Monotone within each sign half: larger code = smaller magnitude.
	for i := 1; i < 128; i++ {
		if MuLaw[0x80+i] >= MuLaw[0x80+i-1] || MuLaw[i] <= MuLaw[i-1] {
			t.Fatalf("MuLaw not monotone at %#02x", i)
		}
	}
}

func TestDecode(t *testing.T) {
	dst := make([]int16, 4)
	if n := Decode(dst, []byte{0x80, 0x00}); n != 2 || dst[0] != 32124 || dst[1] != -32124 {
		t.Fatalf("Decode = %d %v", n, dst)
	}
	if n := Decode(dst[:1], []byte{0xFF, 0xFF, 0xFF}); n != 1 {
		t.Fatalf("Decode into short dst = %d, want 1", n)
	}
}
