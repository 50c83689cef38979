package vad

import "math"

// Small signal-processing pieces shared by both tracks. Samples are
// float64 scaled so that ±1 is full scale: a level of 0 dBFS is a mean
// square of 1.

// minDB is the level given to digital silence, so that arithmetic on
// levels never meets -Inf.
const minDB = -100.0

func toDB(meanSquare float64) float64 {
	if meanSquare <= 1e-10 {
		return minDB
	}
	return 10 * math.Log10(meanSquare)
}

// highPass is a 2nd-order Butterworth high-pass (RBJ biquad). At 200 Hz it
// removes what is never speech on a phone line but often carries energy:
// DC, 50/60 Hz hum and its low harmonics, and most of brown/rumble noise.
type highPass struct {
	x1, x2, y1, y2 float64
}

var hpB0, hpB1, hpB2, hpA1, hpA2 = func() (b0, b1, b2, a1, a2 float64) {
	const fc, q = 200.0, math.Sqrt2 / 2
	w0 := 2 * math.Pi * fc / SampleRate
	cw, alpha := math.Cos(w0), math.Sin(w0)/(2*q)
	a0 := 1 + alpha
	return (1 + cw) / 2 / a0, -(1 + cw) / a0, (1 + cw) / 2 / a0, -2 * cw / a0, (1 - alpha) / a0
}()

// filter decodes src (μ-law, absent bytes = silence) into dst, high-passed.
func (h *highPass) filter(dst *[FrameBytes]float64, src []byte) {
	x1, x2, y1, y2 := h.x1, h.x2, h.y1, h.y2
	for i := range dst {
		var x float64
		if i < len(src) {
			x = float64(MuLaw[src[i]]) * (1.0 / 32768)
		}
		y := hpB0*x + hpB1*x1 + hpB2*x2 - hpA1*y1 - hpA2*y2
		x2, x1, y2, y1 = x1, x, y1, y
		dst[i] = y
	}
	// Flush denormal-range state after long silence.
	if math.Abs(y1) < 1e-12 && math.Abs(y2) < 1e-12 {
		y1, y2 = 0, 0
	}
	h.x1, h.x2, h.y1, h.y2 = x1, x2, y1, y2
}

// blockEnergies returns the mean square of each 5 ms block of the frame.
func blockEnergies(x *[FrameBytes]float64) (e [blocksPerFr]float64) {
	for b := range blocksPerFr {
		var s float64
		for _, v := range x[b*blockLen : (b+1)*blockLen] {
			s += v * v
		}
		e[b] = s / blockLen
	}
	return e
}

// Periodicity: the normalized autocorrelation peak over pitch lags 2.5–16 ms
// (62–400 Hz), computed at 4 kHz (pairs averaged) to halve the work. Voiced
// speech scores 0.6–0.95; noise, coughs and clicks stay near 0.3.
const (
	decFrame = FrameBytes / 2 // decimated samples per frame
	minLag   = 10             // 2.5 ms at 4 kHz
	maxLag   = 64             // 16 ms at 4 kHz
)

type pitchBuf struct {
	x [maxLag + decFrame]float64 // maxLag of history, then the current frame
}

// push shifts the frame (decimated) into the buffer.
func (p *pitchBuf) push(x *[FrameBytes]float64) {
	copy(p.x[:maxLag], p.x[decFrame:])
	for i := range decFrame {
		p.x[maxLag+i] = 0.5 * (x[2*i] + x[2*i+1])
	}
}

// periodicity returns the normalized autocorrelation peak of the current frame.
func (p *pitchBuf) periodicity() float64 {
	cur := p.x[maxLag:]
	var e0 float64
	for _, v := range cur {
		e0 += v * v
	}
	if e0 <= 1e-12 {
		return 0
	}
	// eLag: energy of the lagged window x[maxLag-lag : maxLag-lag+decFrame],
	// slid one sample at a time as lag grows.
	eLag := 0.0
	start := maxLag - minLag
	for _, v := range p.x[start : start+decFrame] {
		eLag += v * v
	}
	best := 0.0
	for lag := minLag; lag <= maxLag; lag++ {
		s := maxLag - lag
		if lag > minLag {
			// window moved one sample earlier
			eLag += p.x[s]*p.x[s] - p.x[s+decFrame]*p.x[s+decFrame]
		}
		past := p.x[s : s+decFrame]
		var c float64
		for i, v := range cur {
			c += v * past[i]
		}
		if c > 0 && eLag > 1e-12 {
			if r := c * c / (e0 * eLag); r > best {
				best = r
			}
		}
	}
	return math.Sqrt(best)
}

// DTMF: a key press is one row tone (697–941 Hz) plus one column tone
// (1209–1633 Hz). Speech can pile energy near one of these frequencies (a
// harmonic on the first formant) but not at a row and a column together.
var dtmfHz = [8]float64{697, 770, 852, 941, 1209, 1336, 1477, 1633}

var dtmfCoef = func() (c [8]float64) {
	for i, f := range dtmfHz {
		c[i] = 2 * math.Cos(2*math.Pi*f/SampleRate)
	}
	return c
}()

// dtmfFraction is the share of the frame's energy held by its strongest
// row tone and strongest column tone together, the weaker of the two
// counted twice (a DTMF pair has both, within a few dB of each other).
func dtmfFraction(x *[FrameBytes]float64) float64 {
	var e float64
	for _, v := range x {
		e += v * v
	}
	if e <= 1e-12 {
		return 0
	}
	var best [2]float64 // row, column
	for i, c := range dtmfCoef {
		var s1, s2 float64
		for _, v := range x {
			s1, s2 = v+c*s1-s2, s1
		}
		// Goertzel power; a tone of energy E gives ≈ E·N/2.
		p := (s1*s1 + s2*s2 - c*s1*s2) * 2 / (FrameBytes * e)
		best[i/4] = max(best[i/4], p)
	}
	return 2 * min(best[0], best[1])
}
