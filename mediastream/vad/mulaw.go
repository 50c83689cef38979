package vad

// Twilio Media Streams audio: G.711 μ-law, 8000 samples/s, mono; each
// media message carries one 20 ms frame of 160 bytes.
const (
	SampleRate  = 8000 // samples per second
	FrameMS     = 20   // milliseconds per Media Streams frame
	FrameBytes  = 160  // bytes (= samples) per frame
	blockLen    = 40   // 5 ms analysis block: onsets are placed to 5 ms
	blockMS     = 5
	blocksPerFr = FrameBytes / blockLen
)

// MuLaw maps a G.711 μ-law byte to its linear 16-bit PCM sample (ITU-T
// G.711, the 14-bit magnitude scaled to 16 bits, as SoX and Twilio decode
// it). 0xFF and 0x7F are the two zeros.
var MuLaw = func() (t [256]int16) {
	for i := range 256 {
		u := ^byte(i)
		exp := (u >> 4) & 0x07
		mag := ((int(u&0x0f) << 3) + 0x84) << exp
		v := mag - 0x84
		if u&0x80 != 0 {
			v = -v
		}
		t[i] = int16(v)
	}
	return t
}()

// Decode writes the linear PCM of the μ-law bytes src into dst and returns
// the number of samples written: min(len(dst), len(src)).
func Decode(dst []int16, src []byte) int {
	n := min(len(dst), len(src))
	for i, b := range src[:n] {
		dst[i] = MuLaw[b]
	}
	return n
}

// MuLawEncode is the G.711 μ-law byte of a linear 16-bit sample (the
// inverse of MuLaw up to the quantisation step; magnitudes past 32635 clip).
func MuLawEncode(s int16) byte {
	v := int(s)
	sign := byte(0)
	if v < 0 {
		sign, v = 0x80, -v
	}
	v = min(v, 32635) + 0x84
	exp := 7
	for mask := 0x4000; v&mask == 0 && exp > 0; mask >>= 1 {
		exp--
	}
	return ^(sign | byte(exp<<4) | byte((v>>(exp+3))&0x0f))
}
