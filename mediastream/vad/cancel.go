package vad

import (
	"math"
	"slices"
)

// Sample-level echo cancellation, so that a caller talking over the
// disclosure shows up at once, even when the echo is loud or the call
// has only just begun.
//
//  1. Coarse delay: the cross-correlation of the inbound with the
//     outbound at 2 kHz (both decimated by 4) over every lag up to
//     MaxEchoDelayMS, each frame adding its own normalized correlation
//     (so a loud key press or cough weighs no more than an echo frame),
//     4 s memory, frames where the inbound is at its noise floor left
//     out. A lag is taken once its mean correlation is ≥ xcMinNCC and it
//     has held for three frames: 0.1–0.3 s after the echo is heard.
//  2. A 32-tap (4 ms) least-squares echo filter from 1 ms before that
//     delay: the outbound's autocorrelation and the outbound/inbound
//     cross-correlation at those taps are accumulated (4 s memory, −20 dB
//     diagonal loading) and the Toeplitz normal equations solved by
//     Levinson recursion. Unlike NLMS, whose convergence on speech (a
//     strongly coloured input) takes seconds, this converges as fast as
//     the data allows, and what is uncorrelated with the outbound — the
//     caller, background talk, noise — adds variance, not bias. When the
//     delay is found, the last 400 ms of learnable frames are replayed
//     into the equations, so the filter starts from the echo already
//     heard.
//
// Double talk: the filter learns only from frames the detector holds to
// be echo alone — no caller onset under way, nothing voiced or otherwise
// over the echo bound, and (once known) the raw inbound not far over
// anything the echo has shown relative to ŷ (explains). This is a
// residual-energy double-talk detector with a Geigel-like guard on the
// raw level: a caller freezes adaptation within the frame they rise over
// the echo.
//
// The echo left in the residual is bounded in the level domain relative
// to the filter's own estimate ŷ (ratioTrack: order statistics of the
// residual/ŷ window-level ratio over the last 128 echo-only blocks). The
// detector then looks for the caller in the residual (modeResidual),
// needing also the raw inbound to be over ŷ (a caller adds energy; a
// residual over its bound with the raw inbound under ŷ is the filter
// failing on a sound it has not learnt). Until the filter has fitted
// 200 ms of audible echo and 30 ratio samples, echo.go's level-domain
// bound stays in charge, at the cross-correlation delay once that has
// held (boundAt).
//
// Cost (one core; see BenchmarkPush and BenchmarkPushCall): the filter,
// 32 MACs per sample (≈5k per frame) whenever the outbound under the
// taps is not silent. 32 taps (−1 to +3 ms around the delay) found the
// generated barge-ins as well as 64 did (seeds 1–9: every one found, p90
// 22 ms against 39 ms) at two thirds of the cost. Learning, ≈10k MACs per learnt frame for the first
// second of echo, then one frame in 4 and, after 4 s, one in 8; the
// cross-correlation ≈20k MACs per frame until the delay is sure, then
// one frame in 4 until the canceller is in use, then one in 25; a replay of ≤ 20 frames once per delay found.
// Memory: ≈57 KB of sample history per Detector (float32).

const (
	decim        = 4 // coarse delay at 2 kHz
	decFr        = FrameBytes / decim
	xcMaxLags    = maxDelayBlocks*blockMS*SampleRate/1000/decim + 1
	taps         = 32
	tapLead      = 8 // taps before the coarse delay (1 ms)
	outHist      = maxDelayBlocks*blockMS*SampleRate/1000 + taps + FrameBytes
	replayFrames = 20                                // 400 ms learnt at once when the delay is found
	histKeep     = outHist + replayFrames*FrameBytes // samples of outbound history needed
	histSlack    = 8 * FrameBytes                    // appended before the history is moved down
	xcMinNCC     = 0.3
	xcHold       = 3  // evaluations (frames) the lag must hold
	xcEvery      = 25 // once the canceller is in use, one frame in xcEvery keeps the delay checked
	xcSureEvery  = 4  // once the delay is sure, before the canceller is in use
	xcMinFrames  = 4  // audible frames correlated before a lag is taken
	xcSureHold   = 10 // frames a lag must hold before the levels are bounded at it alone
	lsForget     = 0.995
	lsFullFrames = 50 // frames learnt from before thinning
	lsThin       = 4
	loading      = 1e-2 // diagonal loading of the normal equations (−20 dB)
	minTrust     = 30   // ratio samples (5 ms blocks) before a bound relative to ŷ is used
	notEchoDB    = 10.0 // a ratio this far over its bound is not the echo
	minLSFrames  = 10   // frames of audible echo the filter has learnt from before it is used
	yLoudDB      = 3.0  // ŷ windows this far over the noise floor measure the ratios
)

type canceller struct {
	lags int // decimated lags searched

	// Outbound and raw inbound samples, newest at index end-1, same
	// indices on both; moved down when full (float32: it is 40 KB).
	xb, db    [histKeep + histSlack]float32
	end       int
	learnable uint32                     // bit i: frame i back was learnt from (bit 0: the current one)
	audible   uint32                     // bit i: and the inbound rose over its noise floor
	xd        [xcMaxLags + decFr]float64 // decimated outbound history, newest last
	cc        [xcMaxLags]float64         // leaky cross-correlation sums, per decimated lag
	wsum      float64                    // leaky count of the frames in cc
	xcFrames  int64                      // frames accumulated

	cand, hold int  // candidate lag and evaluations it has held
	delay      int  // samples, -1 unknown
	sure       bool // the delay has held for xcSureHold frames
	start      int  // first tap's delay (samples)

	rxx, rxd  [taps]float64
	w         [taps]float64
	wr        [taps]float64 // w reversed, for the filter's forward dot product
	eligible  int64         // frames the filter could have learnt from
	haveW     bool
	lsFrames  int
	lsAudible int           // of them, frames where the echo rose over the noise
	fw, tmp   [taps]float64 // Levinson scratch

	y  [FrameBytes]float64            // echo estimate of the current frame
	xs [taps - 1 + FrameBytes]float64 // scratch: the outbound under the taps

	// Level ratios to the estimate ŷ, on echo-only windows: of the
	// residual, and of the raw inbound.
	res, raw ratioTrack
}

func (c *canceller) init(maxDelayMS int) {
	c.lags = min(maxDelayMS*SampleRate/1000/decim+1, xcMaxLags)
	c.end = histKeep // zeros: silence before the stream
	c.delay, c.cand = -1, -1
}

// push shifts the outbound frame into the histories.
func (c *canceller) push(out, in *[FrameBytes]float64) {
	if c.end+FrameBytes > len(c.xb) {
		keep := histKeep - FrameBytes
		copy(c.xb[:keep], c.xb[c.end-keep:c.end])
		copy(c.db[:keep], c.db[c.end-keep:c.end])
		c.end = keep
	}
	for i := range FrameBytes {
		c.xb[c.end+i], c.db[c.end+i] = float32(out[i]), float32(in[i])
	}
	c.end += FrameBytes
	c.learnable <<= 1
	c.audible <<= 1
	copy(c.xd[:], c.xd[decFr:])
	base := len(c.xd) - decFr
	for i := range decFr {
		c.xd[base+i] = 0.25 * (out[4*i] + out[4*i+1] + out[4*i+2] + out[4*i+3])
	}
}

// estimate fills c.y with the echo estimate of the current frame and
// reports whether there is one.
func (c *canceller) estimate() bool {
	if !c.haveW {
		return false
	}
	if !c.filter(c.end-FrameBytes, &c.y) { // the outbound was silent: no echo
		c.y = [FrameBytes]float64{}
		return false
	}
	return true
}

// filter puts the echo estimate of the frame starting at history index p
// into y; false (y untouched) when the outbound under the taps was silent.
func (c *canceller) filter(p int, y *[FrameBytes]float64) bool {
	base := p - c.start // x[n-start-j] = xb[base+n-j]
	xs := c.span(base)
	var e float64
	for _, v := range xs {
		e += v * v
	}
	if e < 1e-9 {
		return false
	}
	wr := &c.wr
	for n := range FrameBytes {
		x := xs[n : n+taps] // x[i] = x[n-start-(taps-1-i)]
		var s0, s1, s2, s3 float64
		for i := 0; i < taps; i += 4 {
			s0 += wr[i] * x[i]
			s1 += wr[i+1] * x[i+1]
			s2 += wr[i+2] * x[i+2]
			s3 += wr[i+3] * x[i+3]
		}
		y[n] = s0 + s1 + s2 + s3
	}
	return true
}

// span converts the outbound under the taps for the frame whose delayed
// first sample is at history index base (base-taps+1 .. base+FrameBytes)
// into the scratch buffer, once, rather than in the inner loops.
func (c *canceller) span(base int) *[taps - 1 + FrameBytes]float64 {
	for i, v := range c.xb[base-taps+1 : base+FrameBytes] {
		c.xs[i] = float64(v)
	}
	return &c.xs
}

// accumulate adds the frame starting at history index p to the normal
// equations.
func (c *canceller) accumulate(p int) {
	xs := c.span(p - c.start)
	var d [FrameBytes]float64
	for n, v := range c.db[p : p+FrameBytes] {
		d[n] = float64(v)
	}
	xr := xs[taps-1:] // x[n-start]
	for j := range taps {
		x := xs[taps-1-j : taps-1-j+FrameBytes] // x[n-start-j]
		var sd0, sd1, sx0, sx1 float64
		for n := 0; n < FrameBytes; n += 2 {
			v0, v1 := x[n], x[n+1]
			sd0 += d[n] * v0
			sd1 += d[n+1] * v1
			sx0 += xr[n] * v0
			sx1 += xr[n+1] * v1
		}
		c.rxd[j] = lsForget*c.rxd[j] + sd0 + sd1
		c.rxx[j] = lsForget*c.rxx[j] + sx0 + sx1
	}
	c.lsFrames++
}

// solveNow re-solves the filter.
func (c *canceller) solveNow() {
	c.haveW = c.solve()
	for i, v := range c.w {
		c.wr[taps-1-i] = v
	}
}

// replay learns, once the delay is found, from the frames of the last
// 400 ms that were learnable: the filter starts from what the echo has
// already shown instead of from nothing, so that a caller barging in soon
// after the echo began is told from it. (The ratios are not replayed: on
// the frames it was fitted to, the filter looks better than it is.)
func (c *canceller) replay() {
	cur := c.end - FrameBytes
	for k := replayFrames - 1; k >= 1; k-- {
		if c.learnable&(1<<k) != 0 && cur-k*FrameBytes-c.start-taps >= 0 {
			c.accumulate(cur - k*FrameBytes)
			if c.audible&(1<<k) != 0 {
				c.lsAudible++
			}
		}
	}
	if c.lsFrames == 0 {
		return
	}
	c.solveNow()
}

// learn accumulates the frame's inbound d (not the caller) against the
// outbound history, updates the coarse delay and re-solves the filter.
// audible says whether the inbound rose over its noise floor: frames
// of noise alone say nothing about the delay.
func (c *canceller) learn(d *[FrameBytes]float64, frame int64, audible bool) {
	c.learnable |= 1
	if audible {
		c.audible |= 1
	}
	// Nothing to learn from while the outbound of the last 300 ms is silent.
	var ex float64
	for _, v := range c.xd[len(c.xd)-c.lags-decFr:] {
		ex += v * v
	}
	if ex < 1e-7 {
		return
	}
	// Every frame until the delay is sure; then, while the filter is not
	// yet in use, one in xcSureEvery (the delay only has to be held).
	if audible && c.xcDue(frame) && c.crossCorrelate(d) {
		c.replay()
	}
	if c.delay < 0 {
		return
	}
	// Once the filter has a second of echo behind it, one frame in
	// lsThin is enough to follow a path that does not change in a call.
	c.eligible++
	thin := int64(1)
	switch {
	case c.lsFrames >= 4*lsFullFrames:
		thin = 2 * lsThin
	case c.lsFrames >= lsFullFrames:
		thin = lsThin
	}
	if c.eligible%thin != 0 {
		return
	}
	c.accumulate(c.end - FrameBytes)
	if audible {
		c.lsAudible++
	}
	if c.lsFrames <= minLSFrames || (c.lsFrames <= 25 && c.lsFrames%2 == 0) || c.lsFrames%4 == 0 {
		c.solveNow()
	}
}

// xcDue says whether frame's cross-correlation is to be computed.
func (c *canceller) xcDue(frame int64) bool {
	if c.mode() == modeLevels {
		return !c.sure || frame%xcSureEvery == 0
	}
	return frame%xcEvery == 0
}

func (c *canceller) crossCorrelate(d *[FrameBytes]float64) (changed bool) {
	var dd [decFr]float64
	var ed float64
	for i := range decFr {
		v := 0.25 * (d[4*i] + d[4*i+1] + d[4*i+2] + d[4*i+3])
		dd[i] = v
		ed += v * v
	}
	top := len(c.xd) - decFr // index of the frame's first sample
	var ex float64
	for _, v := range c.xd[top-c.lags+1 : top+decFr] {
		ex += v * v
	}
	ex *= decFr / float64(c.lags+decFr-1) // per frame-long window, on average
	if ed <= 1e-12 || ex <= 1e-12 {
		return
	}
	// Each frame adds its own normalized correlation, so that a loud
	// frame (a DTMF key, a cough) weighs no more than a quiet one.
	norm := 1 / math.Sqrt(ed*ex)
	const forget = 0.995
	c.wsum = forget*c.wsum + 1
	c.xcFrames++
	best, bestV := -1, 0.0
	for k := range c.lags {
		xs := c.xd[top-k : top-k+decFr]
		var s0, s1 float64
		for i := 0; i < decFr; i += 2 {
			s0 += dd[i] * xs[i]
			s1 += dd[i+1] * xs[i+1]
		}
		v := forget*c.cc[k] + (s0+s1)*norm
		c.cc[k] = v
		if v < 0 {
			v = -v
		}
		if v > bestV {
			best, bestV = k, v
		}
	}
	if best < 0 || c.xcFrames < xcMinFrames || bestV/c.wsum < xcMinNCC {
		c.hold = 0
		return
	}
	if c.cand >= 0 && abs(best-c.cand) <= 1 {
		c.hold++
	} else {
		c.hold = 0
	}
	c.cand = best
	if c.hold < xcHold-1 {
		return
	}
	if c.delay >= 0 && abs(best*decim-c.delay) <= 2*decim {
		c.sure = c.hold >= xcSureHold
		return // same delay, within the filter's slack
	}
	c.delay, c.sure = best*decim, false
	c.start = max(c.delay-tapLead+2, 0) // +2: the decimators' skew is within the taps
	c.rxx, c.rxd, c.w = [taps]float64{}, [taps]float64{}, [taps]float64{}
	c.haveW, c.lsFrames, c.lsAudible = false, 0, 0
	c.res, c.raw = ratioTrack{}, ratioTrack{}
	return true
}

// solve solves the Toeplitz normal equations rxx·w = rxd (Levinson
// recursion), the diagonal loaded by −20 dB so that a narrow-band
// outbound cannot make the filter blow up.
func (c *canceller) solve() bool {
	r0 := c.rxx[0] * (1 + loading)
	if r0 <= 1e-9 {
		return false
	}
	f, w, t := &c.fw, &c.w, &c.tmp
	f[0] = 1 / r0
	w[0] = c.rxd[0] / r0
	for n := 1; n < taps; n++ {
		var ef, ew float64
		for i := range n {
			ef += c.rxx[n-i] * f[i]
			ew += c.rxx[n-i] * w[i]
		}
		den := 1 - ef*ef
		if den <= 1e-9 {
			for i := n; i < taps; i++ {
				w[i] = 0
			}
			return true
		}
		// f' = ((f,0) − ef·(0,rev f)) / den
		for i := 0; i <= n; i++ {
			var a, b float64
			if i < n {
				a = f[i]
			}
			if i > 0 {
				b = f[n-i]
			}
			t[i] = (a - ef*b) / den
		}
		copy(f[:n+1], t[:n+1])
		// w' = (w,0) + (rxd[n] − ew)·rev f'
		g := c.rxd[n] - ew
		w[n] = 0
		for i := 0; i <= n; i++ {
			w[i] += g * f[n-i]
		}
	}
	return true
}

// ratioTrack keeps the last ratioWindow samples of a level ratio (dB)
// and bounds it by their median plus ratioSigmas times the gap between
// the median and the 16th percentile (one standard deviation), that gap
// at least 1 and at most maxRatioSpreadDB. Order statistics of a window,
// so that a burst of other sound (a DTMF key, a cough: up to a third of
// the window) does not move the median, and the bound is loose where
// the filter still cancels unevenly (a sound it has not seen yet is
// cancelled far worse than the rest: a wide spread).
type ratioTrack struct {
	n      int
	r      [ratioWindow]float64
	sorted [ratioWindow]float64
	up     float64
}

const (
	ratioWindow      = 128 // 5 ms blocks of audible echo estimate: ≥ 0.64 s
	ratioSigmas      = 3.0
	maxRatioSpreadDB = 8.0
)

// add puts r in the window (and its sorted copy) in place of the oldest.
func (t *ratioTrack) add(r float64) {
	m := min(t.n, ratioWindow)
	s := t.sorted[:m]
	if t.n >= ratioWindow {
		old := t.r[t.n%ratioWindow]
		i, _ := slices.BinarySearch(s, old)
		copy(s[i:], s[i+1:])
		s = s[:m-1]
	}
	t.r[t.n%ratioWindow] = r
	t.n++
	i, _ := slices.BinarySearch(s, r)
	s = s[:len(s)+1]
	copy(s[i+1:], s[i:])
	s[i] = r
}

// admits says whether a raw/ŷ ratio r can be the echo alone: not far
// over the bound once the window is full enough to say so, nor, before,
// far over 0 dB (ŷ is fitted to audible echo by then). Else it is another
// sound over the echo (the caller, background talk, a key press), which
// would otherwise raise both bounds for seconds.
func (t *ratioTrack) admits(r float64) bool {
	if t.n >= minTrust {
		return r <= t.up+notEchoDB
	}
	return r <= notEchoDB
}

// update recomputes the bound after a frame's samples were added.
func (t *ratioTrack) update() {
	m := min(t.n, ratioWindow)
	if m == 0 {
		return
	}
	q50, q16 := t.sorted[m/2], t.sorted[m*16/100]
	t.up = q50 + ratioSigmas*min(max(q50-q16, 1), maxRatioSpreadDB)
}

// upper is the ratio's recent upper bound (dB).
func (t *ratioTrack) upper() float64 { return t.up }

// mode says what the detector looks for the caller in.
type mode int

const (
	modeLevels   mode = iota // raw inbound, echo.go's bound
	modeEstimate             // raw inbound, bounded by ŷ's level plus the raw ratio
	modeResidual             // the residual, bounded by ŷ's level plus the residual ratio
)

// explains says whether a raw inbound window (dB) can be echo alone,
// given the estimate's window level yDB: a click or a key press far over
// anything the echo has shown would skew the normal equations for
// seconds. Until the raw ratio is known, everything can.
func (c *canceller) explains(rawDB, yDB, floorDB float64) bool {
	if !c.haveW || c.raw.n < minTrust {
		return true
	}
	fl := math.Pow(10, floorDB/10)
	return toDB(max(math.Pow(10, rawDB/10)-fl, fl/4))-yDB <= c.raw.upper()+notEchoDB
}

// fallback is the mode to use when the residual cannot be.
func (c *canceller) fallback() mode {
	if c.raw.n >= minTrust {
		return modeEstimate
	}
	return modeLevels
}

// mode picks the better bound once the ratios are known.
func (c *canceller) mode() mode {
	if c.delay < 0 || c.lsAudible < minLSFrames {
		return modeLevels
	}
	resOK, rawOK := c.res.n >= minTrust, c.raw.n >= minTrust
	switch {
	case resOK && (!rawOK || c.res.upper() <= c.raw.upper()):
		return modeResidual
	case rawOK:
		return modeEstimate
	}
	return modeLevels
}
