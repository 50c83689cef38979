package vad

import "math"

// Echo path estimation in the level domain.
//
// The inbound echo is the outbound delayed by d (0–250 ms), attenuated and
// band-limited. Rather than cancelling it sample by sample (an adaptive
// filter over 2,000 taps costs ~100× more per frame), we learn which inbound
// LEVELS the outbound explains: for every candidate delay k (5 ms steps) the
// log ratio r_k = inLevel(t) − outLevel(t−k) of 20 ms windows is tracked
// over blocks where the outbound is loud and the caller is not speaking.
// At the true delay the ratio is nearly constant (the path's gain, give or
// take the filter's colouring of each phoneme); at other delays it wanders.
//
// Anything else on the line (noise, background talk) ADDS power, so it can
// only push r_k up. The path is therefore measured on the lower half of
// r_k's distribution, which such interference does not reach: the median
// q50 and the 16th percentile q16 (tracked by stochastic approximation),
// whose gap is one standard deviation of the echo's own spread. The delay
// is the lag with the smallest gap; the echo's upper level is
// q50 + echoSigmas·(q50 − q16). Inbound energy above that bound, over a few
// lags around d to absorb smearing, is not echo.
//
// Until about a second of loud outbound has been seen the path is unknown
// and the bound is conservative: the loudest outbound window of the whole
// 0–maxDelay span, minus priorEchoLossDB (an echo path with linear gain
// up to 0.5). A caller barging in during that first second must therefore
// be louder than half the prompt's level to count.

const (
	ringBlocks      = 128 // 640 ms of 5 ms blocks: echo lags and onset backdating
	ringMask        = ringBlocks - 1
	maxDelayBlocks  = 60 // hard cap on the search: 300 ms
	priorEchoLossDB = 6.0
	echoSigmas      = 2.5
	echoSpread      = 2 // ± lags (±10 ms) around the estimated delay
	minEchoCount    = 150
	loudAboveFloor  = 20.0 // outbound windows this far over its floor teach the path
	loudMinDB       = -50.0
)

type echoPath struct {
	lags      int // candidate delays 0..lags-1 (blocks)
	n         [maxDelayBlocks + 1]float64
	q50, q16  [maxDelayBlocks + 1]float64
	best      int
	converged bool
	upDB      float64 // echo upper level relative to the outbound window at the best lag
}

// learn adds block b: the inbound window level inDB against the outbound
// window level k blocks earlier, for every lag k where that was loud.
func (e *echoPath) learn(outRing *[ringBlocks]float64, b int64, inDB, loudDB float64) {
	for k := 0; k < e.lags; k++ {
		o := outRing[(b-int64(k))&ringMask]
		if o < loudDB {
			continue
		}
		r := inDB - o
		e.n[k]++
		if e.n[k] == 1 {
			e.q50[k], e.q16[k] = r, r-3
			continue
		}
		// Step (dB) shrinks from 2 to 0.2 as evidence accumulates.
		step := max(2/math.Sqrt(e.n[k]/4), 0.2)
		if r < e.q50[k] {
			e.q50[k] -= step * 0.5
		} else {
			e.q50[k] += step * 0.5
		}
		if r < e.q16[k] {
			e.q16[k] -= step * 0.84
		} else {
			e.q16[k] += step * 0.16
		}
	}
}

// settle picks the delay of least spread once enough has been seen.
func (e *echoPath) settle() {
	best, bestV := -1, math.Inf(1)
	for k := 0; k < e.lags; k++ {
		if v := e.q50[k] - e.q16[k]; e.n[k] >= minEchoCount && v < bestV {
			best, bestV = k, v
		}
	}
	if best < 0 {
		return
	}
	e.best, e.converged = best, true
	// A path louder than unity cannot be echo of a handset line; cap so
	// that caller speech wrongly learnt cannot blind the detector.
	e.upDB = min(e.q50[best]+echoSigmas*max(bestV, 1), 0)
}

// bound is the highest inbound window level (dB) the outbound explains at block b.
func (e *echoPath) bound(outRing *[ringBlocks]float64, b int64) float64 {
	lo, hi, off := 0, e.lags-1, -priorEchoLossDB
	if e.converged {
		lo, hi, off = max(e.best-echoSpread, 0), min(e.best+echoSpread, e.lags-1), e.upDB
	}
	m := minDB
	for k := lo; k <= hi; k++ {
		m = max(m, outRing[(b-int64(k))&ringMask])
	}
	return m + off
}
