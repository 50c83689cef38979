package vad

import "math"

// Echo path estimation in the level domain: the fallback of cancel.go's
// sample-level canceller, in charge until that has learnt the echo (the
// first ~0.5 s of it) or when the tracks do not correlate.
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
// The inbound's noise floor is subtracted before r is taken, so that noise
// does not pose as a loud echo; an outbound that stays loud while the
// inbound stays at its floor means there is no audible echo at all.
//
// Until ~0.5 s of loud outbound has been seen and the best delay has held
// for 300 ms, the path is unknown and each lag bounds the echo by its own
// estimate, never above the prior: the outbound level minus
// priorEchoLossDB (an echo with linear gain up to ~0.7). A caller barging
// in that early must be about as loud as the prompt to count at once.

const (
	ringBlocks      = 128 // 640 ms of 5 ms blocks: echo lags and onset backdating
	ringMask        = ringBlocks - 1
	maxDelayBlocks  = 60 // hard cap on the search: 300 ms
	priorEchoLossDB = 3.0
	echoMemory      = 1000 // blocks (5 s) of memory for the variance once warmed up
	echoSigmas      = 2.5
	maxEchoSpreadDB = 4.0
	echoSpread      = 2 // ± lags (±10 ms) around the estimated delay
	minEchoCount    = 100
	stableFrames    = 15   // 300 ms
	loudAboveFloor  = 20.0 // outbound windows this far over its floor teach the path
	loudMinDB       = -50.0
)

type echoPath struct {
	lags      int // candidate delays 0..lags-1 (blocks)
	n         [maxDelayBlocks + 1]float64
	q50, q16  [maxDelayBlocks + 1]float64
	mean, vr  [maxDelayBlocks + 1]float64
	best      int
	converged bool
	silent    bool    // outbound loud, inbound at its floor: no audible echo
	loud      float64 // loud outbound blocks seen
	cand      int     // best lag at the last settle, -1 none
	stable    int     // settles for which cand has held
	upDB      float64 // echo upper level relative to the outbound window at the best lag
}

// learn adds block b: the inbound window level inDB against the outbound
// window level k blocks earlier, for every lag k where that was loud.
func (e *echoPath) learn(outRing *[ringBlocks]float64, b int64, inDB, loudDB, floorDB float64) {
	if outRing[b&ringMask] >= loudDB {
		e.loud++
	}
	if inDB < floorDB+activeMarginDB { // the echo, if any, is under the noise here
		return
	}
	// What is left of the inbound once its noise floor is taken out: the
	// echo, if the outbound explains it. Noise that happens to rise above
	// the floor then counts for little instead of posing as a loud echo.
	inDB = toDB(math.Pow(10, inDB/10) - math.Pow(10, floorDB/10))
	for k := 0; k < e.lags; k++ {
		o := outRing[(b-int64(k))&ringMask]
		if o < loudDB {
			continue
		}
		r := inDB - o
		e.n[k]++
		a := max(1/e.n[k], 1.0/echoMemory)
		d := r - e.mean[k]
		e.mean[k] += a * d
		e.vr[k] = (1 - a) * (e.vr[k] + a*d*d)
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

// upper is lag k's own estimate of the echo's upper level (relative to
// the outbound), never above the prior.
func (e *echoPath) upper(k int) float64 {
	if e.n[k] < minEchoCount/3 {
		return -priorEchoLossDB
	}
	return min(e.q50[k]+echoSigmas*min(max(e.q50[k]-e.q16[k], 1), maxEchoSpreadDB), -priorEchoLossDB)
}

// settle picks the delay of least variance once enough has been seen.
// When the outbound has been loud for long but the inbound rarely rose
// above its noise floor meanwhile, there is no audible echo at all.
func (e *echoPath) settle() {
	best, bestV, most := -1, math.Inf(1), 0.0
	for k := 0; k < e.lags; k++ {
		most = max(most, e.n[k])
		if e.n[k] >= minEchoCount && e.vr[k] < bestV {
			best, bestV = k, e.vr[k]
		}
	}
	switch {
	case best >= 0:
		// Trust a delay only once it has held (±5 ms) for stableFrames:
		// early on, a sentence's rhythm can make a wrong lag look best.
		if e.cand >= 0 && abs(best-e.cand) <= 1 {
			e.stable++
		} else {
			e.stable = 0
		}
		e.cand = best
		if e.stable >= stableFrames {
			e.best, e.converged, e.silent = best, true, false
			e.upDB = e.upper(best)
		}
	case e.loud >= minEchoCount && most < e.loud/10:
		e.converged, e.silent = true, true
	}
}

// bound is the highest inbound window level (dB) the outbound explains at block b.
func (e *echoPath) bound(outRing *[ringBlocks]float64, b int64) float64 {
	if e.silent {
		return minDB
	}
	if !e.converged {
		m := minDB
		for k := 0; k < e.lags; k++ {
			m = max(m, outRing[(b-int64(k))&ringMask]+e.upper(k))
		}
		return m
	}
	m := minDB
	for k := max(e.best-echoSpread, 0); k <= min(e.best+echoSpread, e.lags-1); k++ {
		m = max(m, outRing[(b-int64(k))&ringMask])
	}
	return m + e.upDB
}

// boundAt is bound with the delay given (blocks): the outbound around it
// plus each lag's own estimate (the prior until it has one).
func (e *echoPath) boundAt(outRing *[ringBlocks]float64, b int64, delay int) float64 {
	m := minDB
	for k := max(delay-echoSpread, 0); k <= min(delay+echoSpread+1, e.lags-1); k++ {
		m = max(m, outRing[(b-int64(k))&ringMask]+e.upper(k))
	}
	return m
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
