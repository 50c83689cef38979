// Package democall synthesizes a small two-track call for the product's
// demo, from a fixed seed, so that a clone without the test fixtures (and
// a binary that must not embed a megabyte of audio) can still play one.
//
// The outbound track is a speech-like disclosure: voiced syllables
// (harmonics of a gliding pitch, shaped by two moving formant peaks) under
// a syllabic amplitude envelope, in sentences separated by pauses, about
// 8 s in all. The inbound track is what a caller's line sends back: faint
// line noise, the disclosure's echo (80 ms late, low-passed, gain 0.1) and
// an answer in another, higher voice that starts mid-disclosure (a
// barge-in) and lasts about a second. It is synthetic sound, not words: it
// exercises voice activity detection, not speech recognition.
package democall

import (
	"math"
	"math/rand/v2"

	"github.com/consentline/consentline/mediastream/vad"
)

const (
	rate        = vad.SampleRate
	seed        = 0xC0DE5EED
	echoDelayMS = 80
	echoGain    = 0.1
	// PromptOnsetMS is where the disclosure's first syllable starts.
	PromptOnsetMS = 300
	// CallerOnsetMS is where the caller's answer starts: inside the third
	// sentence of the disclosure.
	CallerOnsetMS = 5230
	lengthMS      = 8800
)

// Call is the generated call: two aligned μ-law tracks of equal length
// (160 bytes per 20 ms) and the true onsets.
type Call struct {
	Outbound, Inbound []byte
	PromptOnsetMS     int64 // first speech on the outbound track
	CallerOnsetMS     int64 // first speech of the caller on the inbound track
	DisclosureEndMS   int64 // last speech on the outbound track
}

// Generate returns the demo call. It is deterministic: every call returns
// the same bytes.
func Generate() Call {
	rng := rand.New(rand.NewPCG(seed, seed>>7))
	n := lengthMS * rate / 1000
	out := make([]float64, n)

	// The disclosure: four sentences with pauses between them.
	at := ms(PromptOnsetMS)
	var end int
	for i, syllables := range []int{7, 9, 8, 8} {
		at = sentence(out, rng, at, syllables, 125, 0.45)
		end = at
		if i < 3 {
			at += ms(380 + rng.IntN(120))
		}
	}

	in := make([]float64, n)
	for i := range in { // line noise, about −66 dBFS
		in[i] = 0.0007 * rng.NormFloat64()
	}
	// The echo: delayed, two-pole low-pass at 1.2 kHz, attenuated.
	a := 1 - math.Exp(-2*math.Pi*1200/rate)
	var y1, y2 float64
	d := ms(echoDelayMS)
	for i := range in {
		var x float64
		if i >= d {
			x = out[i-d]
		}
		y1 += a * (x - y1)
		y2 += a * (y1 - y2)
		in[i] += echoGain * y2
	}
	// The answer: three syllables, a higher voice, at a handset caller's level.
	sentence(in, rng, ms(CallerOnsetMS), 3, 210, 0.4)

	return Call{
		Outbound:        encode(out),
		Inbound:         encode(in),
		PromptOnsetMS:   PromptOnsetMS,
		CallerOnsetMS:   CallerOnsetMS,
		DisclosureEndMS: int64(end * 1000 / rate),
	}
}

func ms(v int) int { return v * rate / 1000 }

// sentence adds syllables to x from sample at, with pitch around f0 Hz and
// peak amplitude amp, and returns where the sentence ends.
func sentence(x []float64, rng *rand.Rand, at, syllables int, f0, amp float64) int {
	phase := 0.0
	for s := range syllables {
		dur := ms(150 + rng.IntN(120))
		// Two formant peaks for this syllable's vowel.
		f1 := 350 + 450*rng.Float64()
		f2 := 1000 + 1400*rng.Float64()
		pitch := f0 * (1.1 - 0.2*float64(s)/float64(syllables)) // declination
		glide := (rng.Float64() - 0.5) * 0.15
		for i := range dur {
			if at+i >= len(x) {
				return len(x)
			}
			t := float64(i) / float64(dur)
			env := math.Sin(math.Pi*t) * math.Sin(math.Pi*t)
			if t < 0.15 { // a quick attack, as a consonant release gives
				env = math.Max(env, t/0.15*0.5)
			}
			f := pitch * (1 + glide*t)
			phase += 2 * math.Pi * f / rate
			var v float64
			for h := 1; float64(h)*f < 3400; h++ {
				hf := float64(h) * f
				g := 1/(1+sq((hf-f1)/120)) + 0.5/(1+sq((hf-f2)/200)) + 0.02
				v += g * math.Sin(float64(h)*phase)
			}
			x[at+i] += amp * env * v / 3
		}
		at += dur
		if rng.IntN(3) == 0 { // some syllables are followed by a short gap
			at += ms(30 + rng.IntN(50))
		}
	}
	return at
}

func sq(v float64) float64 { return v * v }

func encode(x []float64) []byte {
	b := make([]byte, len(x))
	for i, v := range x {
		b[i] = vad.MuLawEncode(int16(math.Round(math.Max(-1, math.Min(1, v)) * 32767)))
	}
	return b
}
