package vad

import (
	"math"
	"math/bits"
)

// Config tunes a Detector. The zero value of every field means its default;
// New() uses all defaults. Levels are dBFS of the 200 Hz high-passed signal
// (a full-scale sine is −3 dBFS).
type Config struct {
	// SpeechLevelDB is the level a voiced 20 ms frame of the caller must
	// reach to count towards an onset. Default −30 dBFS. A caller on a
	// handset speaks at about −26 dBov active level (ITU-T P.56): their
	// voiced frames reach −25 to −15 dBFS (the fixtures' callers: −17 to
	// −20 at their loudest). Distant talk "well below" the caller — 12–15
	// dB or more under such a caller — stays under it.
	SpeechLevelDB float64
	// NoiseMarginDB is how far above the adaptive noise floor a voiced
	// frame must be to count. Default 12 dB.
	NoiseMarginDB float64
	// BackgroundMarginDB is how far above the loudest recent background
	// talk a voiced frame must be to count. Background talk is voiced sound
	// that did not grow into an onset within 320 ms; its level decays by
	// 1 dB/s. Default 9 dB.
	BackgroundMarginDB float64
	// EchoMarginDB is how far above the echo's learnt upper level (see
	// echo.go) a frame must be to count as the caller. Default 3 dB.
	EchoMarginDB float64
	// MaxEchoDelayMS is the longest echo delay searched. Default 250, at
	// most 300.
	MaxEchoDelayMS int
	// MinVoicedMS is how much voiced speech (in 20 ms frames, within twice
	// that span) confirms an onset. Default 80 ms: longer than a click or
	// a cough's voiced part, shorter than any word.
	MinVoicedMS int
	// HangoverMS is the silence after which the caller's speech has ended.
	// Default 400 ms (spans the pauses between words of one answer).
	HangoverMS int
	// PromptHangoverMS is the silence after which an outbound speech
	// segment has ended. Default 200 ms (shorter than sentence pauses, so
	// each sentence of the disclosure is its own segment).
	PromptHangoverMS int
}

func (c Config) withDefaults() Config {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.SpeechLevelDB, -30)
	def(&c.NoiseMarginDB, 12)
	def(&c.BackgroundMarginDB, 9)
	def(&c.EchoMarginDB, 3)
	defInt(&c.MaxEchoDelayMS, 250)
	c.MaxEchoDelayMS = min(c.MaxEchoDelayMS, maxDelayBlocks*blockMS)
	defInt(&c.MinVoicedMS, 80)
	c.MinVoicedMS = min(c.MinVoicedMS, 32*FrameMS) // the history holds 64 frames
	defInt(&c.HangoverMS, 400)
	defInt(&c.PromptHangoverMS, 200)
	return c
}

// Change is what one Push confirmed. Times are milliseconds from the start
// of the first pushed frame. An onset is confirmed some frames after it
// happened (MinVoicedMS of voiced speech for the caller, 40 ms for the
// prompt) and is reported backdated to where the sound began, to 5 ms; an
// end is confirmed after the hangover and reported where the sound stopped.
type Change struct {
	CallerOnset   bool
	CallerOnsetMS int64
	// PromptSpeaking is whether the outbound track was inside a speech
	// segment when the caller onset was confirmed. Whether the answer was
	// a barge-in is only known once the disclosure has finished: the
	// onset is before Detector.LastPromptEndMS.
	PromptSpeaking bool

	CallerEnd   bool
	CallerEndMS int64

	PromptOnset   bool
	PromptOnsetMS int64
	PromptEnd     bool
	PromptEndMS   int64
}

// Any reports whether anything was confirmed.
func (c Change) Any() bool { return c.CallerOnset || c.CallerEnd || c.PromptOnset || c.PromptEnd }

// Detector follows one Media Stream: the outbound track (what the caller
// hears) and the inbound track (what their line sends back), frame by
// frame. It is not safe for concurrent use; one per stream. It holds no
// audio beyond 640 ms of levels and, for the echo canceller, 0.7 s of
// both tracks' samples (never written anywhere).
type Detector struct {
	cfg                                 Config
	minVoicedFrames, hangFrames         int64
	promptHangFrames, voiceWindowFrames int64

	frame int64 // frames pushed so far

	hpIn, hpOut highPass
	raw, out    [FrameBytes]float64 // high-passed inbound and outbound
	in          [FrameBytes]float64 // what the caller is looked for in: raw, or the echo canceller's residual
	pitch       pitchBuf
	canc        canceller

	// Per 5 ms block rings (index b&ringMask, b = absolute block number).
	inLin, outLin [blocksPerFr]float64 // linear block energies, last 4 blocks
	outWin        [ringBlocks]float64  // outbound 20 ms window level ending at block
	inWin         [ringBlocks]float64  // inbound 20 ms window level ending at block
	inBlk, outBlk [ringBlocks]float64  // 5 ms block levels
	rawLin        [blocksPerFr]float64 // raw inbound, for echo.go's level-domain path
	rawWin        [ringBlocks]float64
	resLin, yLin  [blocksPerFr]float64 // canceller residual and echo estimate
	resWin, yWin  [ringBlocks]float64
	thr           [ringBlocks]float64 // inbound activity threshold at block
	echo          echoPath
	// Frames of loud outbound, and those of them where the raw inbound
	// came within quietSlackDB of the noise gate (see echoBound).
	quietLoud, quietHigh int

	// Inbound (caller).
	floorDB       float64
	floorInit     bool
	bgDB          float64
	pendingBg     [16]float64 // candidate background levels of the last 16 frames
	strongHist    uint64      // bit i: frame (frame-1-i) was strong voiced speech
	callerOn      bool
	lastCallerOn  int64 // last onset ms, -1 none
	callerEndBlk  int64 // block after the last caller end (backdating stops there)
	lastActiveF   int64
	lastActiveEnd int64 // ms

	// Outbound (prompt).
	outFloorDB     float64
	outFloorInit   bool
	promptOn       bool
	promptRun      int64
	promptEndBlk   int64
	promptLastF    int64
	promptLastEnd  int64
	firstPromptOn  int64
	lastPromptEnd  int64
	lastPromptOnMS int64

	trace func(frameTrace) // tests only
}

// frameTrace is the per-frame state, for tests that explain a decision.
type frameTrace struct {
	ms                                   int64
	inDB, floorDB, echoUpDB, bgDB, outDB float64
	periodicity, tonalDB                 float64
	strong, active, callerOn             bool
	rawDB, yDB, resDB, resUpDB, rawUpDB  float64 // raw inbound, echo estimate, residual, ratio bounds
	mode                                 int
	delayMS                              int
}

const (
	voicedMin         = 0.5 // periodicity of a voiced frame
	dtmfMaxFraction   = 0.5 // see dtmfFraction
	activeMarginDB    = 6.0 // above floor: still sound (hangover, backdating)
	promptMinDB       = -50.0
	promptMarginDB    = 15.0
	maxBackdateBlk    = 60 // 300 ms
	bgDecayDB         = 0.02 * FrameMS / 20
	rawOverEstimateDB = 1.0
	quietMinFrames    = 100 // 2 s
	quietSlackDB      = 3.0
	levelsThin        = 4
)

// New returns a Detector with cfg (zero fields take their defaults).
func New(cfg ...Config) *Detector {
	var c Config
	if len(cfg) > 0 {
		c = cfg[0]
	}
	c = c.withDefaults()
	d := &Detector{cfg: c}
	d.minVoicedFrames = int64((c.MinVoicedMS + FrameMS - 1) / FrameMS)
	d.voiceWindowFrames = 2 * d.minVoicedFrames
	d.hangFrames = int64((c.HangoverMS + FrameMS - 1) / FrameMS)
	d.promptHangFrames = int64((c.PromptHangoverMS + FrameMS - 1) / FrameMS)
	d.echo.lags = c.MaxEchoDelayMS/blockMS + 1
	d.echo.cand = -1
	d.canc.init(c.MaxEchoDelayMS)
	d.bgDB, d.floorDB, d.outFloorDB = minDB, minDB, minDB
	d.lastCallerOn, d.firstPromptOn, d.lastPromptEnd, d.lastPromptOnMS = -1, -1, -1, -1
	for i := range d.pendingBg {
		d.pendingBg[i] = minDB
	}
	for i := range d.outWin {
		d.outWin[i], d.inWin[i], d.inBlk[i], d.outBlk[i], d.thr[i] = minDB, minDB, minDB, minDB, 0
		d.rawWin[i], d.resWin[i], d.yWin[i] = minDB, minDB, minDB
	}
	return d
}

// CallerSpeaking reports whether the caller is speaking (onset confirmed,
// end not yet).
func (d *Detector) CallerSpeaking() bool { return d.callerOn }

// PromptSpeaking reports whether the outbound track is in a speech segment.
func (d *Detector) PromptSpeaking() bool { return d.promptOn }

// FirstPromptOnsetMS is when outbound speech first began, -1 before.
func (d *Detector) FirstPromptOnsetMS() int64 { return d.firstPromptOn }

// LastPromptEndMS is where the last confirmed outbound speech segment
// ended, -1 before any.
func (d *Detector) LastPromptEndMS() int64 { return d.lastPromptEnd }

// LastCallerOnsetMS is the onset of the caller's latest utterance, -1 before any.
func (d *Detector) LastCallerOnsetMS() int64 { return d.lastCallerOn }

// ElapsedMS is the stream time covered by the frames pushed so far.
func (d *Detector) ElapsedMS() int64 { return d.frame * FrameMS }

// EchoDelayMS is the learnt echo delay and whether it has been learnt yet.
func (d *Detector) EchoDelayMS() (int, bool) { return d.echo.best * blockMS, d.echo.converged }

// Push takes the next aligned pair of 20 ms frames (μ-law, 160 bytes each;
// nil or short means absent, counted as silence; bytes past 160 are
// ignored) and returns what it confirmed. It does not allocate.
func (d *Detector) Push(inbound, outbound []byte) Change {
	var ch Change
	f := d.frame
	d.frame++
	b0 := f * blocksPerFr

	d.hpIn.filter(&d.raw, inbound)
	d.hpOut.filter(&d.out, outbound)
	d.canc.push(&d.out, &d.raw)
	br, bo := blockEnergies(&d.raw), blockEnergies(&d.out)
	hasY := d.canc.estimate()
	var res [FrameBytes]float64
	if hasY {
		for i, v := range d.raw {
			res[i] = v - d.canc.y[i]
		}
	} else {
		res = d.raw
	}
	be := blockEnergies(&res)
	md := d.canc.mode()
	if md == modeResidual && be[0]+be[1]+be[2]+be[3] > 0.8*(br[0]+br[1]+br[2]+br[3]) {
		// The estimate did not remove energy here: it may be wrong for
		// this sound (the filter has not seen its like yet), so the
		// residual says nothing; the raw inbound and ŷ's level do.
		md = d.canc.fallback()
	}
	bi := br
	if md == modeResidual {
		d.in, bi = res, be
	} else {
		d.in = d.raw
	}
	var by [blocksPerFr]float64
	if hasY {
		by = blockEnergies(&d.canc.y)
	}
	win := func(lin *[blocksPerFr]float64) float64 {
		return toDB((lin[0] + lin[1] + lin[2] + lin[3]) / blocksPerFr)
	}
	for j := range int64(blocksPerFr) {
		b := b0 + j
		i := b & ringMask
		k := b % blocksPerFr
		d.inLin[k], d.outLin[k], d.rawLin[k], d.resLin[k], d.yLin[k] = bi[j], bo[j], br[j], be[j], by[j]
		d.inWin[i], d.outWin[i] = win(&d.inLin), win(&d.outLin)
		d.rawWin[i], d.resWin[i], d.yWin[i] = win(&d.rawLin), win(&d.resLin), win(&d.yLin)
		d.inBlk[i], d.outBlk[i] = toDB(bi[j]), toDB(bo[j])
	}
	last := (b0 + blocksPerFr - 1) & ringMask

	d.prompt(f, b0, d.outWin[last], &ch)

	// ---- Inbound: is this frame the caller? ----
	inDB := d.inWin[last]
	if !d.floorInit {
		d.floorDB, d.floorInit = inDB, true
	}
	echoUp := d.echoBound(md, b0+blocksPerFr-1)
	d.pitch.push(&d.in)
	c := &d.cfg
	var per, tonal float64
	levelOK := inDB >= echoUp+c.EchoMarginDB && inDB >= d.floorDB+c.NoiseMarginDB
	if md == modeResidual {
		// A caller adds energy: the raw inbound is then above the echo
		// estimate. A residual over its bound with the raw inbound not
		// above ŷ is the filter failing on a sound it has not learnt.
		y := max(d.yWin[last], d.yWin[(last-1)&ringMask], d.yWin[(last-2)&ringMask])
		levelOK = levelOK && d.rawWin[last] >= y+rawOverEstimateDB
	}
	if levelOK { // the costly features only when the level could be speech
		per, tonal = d.pitch.periodicity(), dtmfFraction(&d.in)
	}
	voiced := levelOK && per >= voicedMin && tonal < dtmfMaxFraction
	strong := voiced && inDB >= c.SpeechLevelDB && inDB >= d.bgDB+c.BackgroundMarginDB

	activeThr := max(d.floorDB+activeMarginDB, d.bgDB+3)
	active := inDB >= max(activeThr, echoUp+c.EchoMarginDB)
	lastActiveBlk := int64(-1)
	for j := range int64(blocksPerFr) {
		b := b0 + j
		d.thr[b&ringMask] = max(activeThr, d.echoBound(md, b))
		if d.inBlk[b&ringMask] >= d.thr[b&ringMask] {
			lastActiveBlk = b
		}
	}

	d.strongHist <<= 1
	if strong {
		d.strongHist |= 1
	}
	// Background talk: voiced sound that is not (yet) the caller; it
	// becomes background only if no onset follows within 320 ms.
	slot := f % int64(len(d.pendingBg))
	if old := d.pendingBg[slot]; old > d.bgDB {
		d.bgDB = old
	}
	d.pendingBg[slot] = minDB
	if voiced && !strong && !d.callerOn {
		d.pendingBg[slot] = inDB
	}
	d.bgDB = max(d.bgDB-bgDecayDB, minDB)

	if !d.callerOn {
		window := d.strongHist & (1<<uint(d.voiceWindowFrames) - 1)
		if int64(bits.OnesCount64(window)) >= d.minVoicedFrames {
			first := f - int64(63-bits.LeadingZeros64(window))
			ms := d.backdate(first)
			d.callerOn = true
			d.lastCallerOn = ms
			d.lastActiveF, d.lastActiveEnd = f, (b0+blocksPerFr)*blockMS
			ch.CallerOnset, ch.CallerOnsetMS, ch.PromptSpeaking = true, ms, d.promptOn
			for i := range d.pendingBg { // it was the caller, not background
				d.pendingBg[i] = minDB
			}
		}
	} else {
		if active || strong {
			d.lastActiveF = f
			end := b0 + blocksPerFr
			if lastActiveBlk >= 0 {
				end = lastActiveBlk + 1
			}
			d.lastActiveEnd = end * blockMS
		}
		if f-d.lastActiveF >= d.hangFrames {
			d.callerOn = false
			d.strongHist = 0
			d.callerEndBlk = d.lastActiveEnd / blockMS
			ch.CallerEnd, ch.CallerEndMS = true, d.lastActiveEnd
		}
	}

	// ---- Adapt: noise floor and echo path, never from the caller. ----
	if !d.callerOn && d.outWin[last] >= max(d.outFloorDB+loudAboveFloor, loudMinDB) {
		d.quietLoud++
		if d.rawWin[last] >= d.floorDB+c.NoiseMarginDB-quietSlackDB {
			d.quietHigh++
		}
	}
	if inDB < d.floorDB {
		d.floorDB += 0.3 * (inDB - d.floorDB)
	} else if !d.callerOn && !strong && inDB > echoUp {
		d.floorDB += 0.01 * min(inDB-d.floorDB, 10)
	}
	// While the canceller is in use, echo.go's bound is not (it is the
	// fallback for when the delay changes): one frame in levelsThin keeps
	// it following the call at a quarter of the cost.
	if !d.callerOn && !strong && d.strongHist == 0 && (d.canc.mode() == modeLevels || f%levelsThin == 0) {
		loud := max(d.outFloorDB+loudAboveFloor, loudMinDB)
		for j := range int64(blocksPerFr) {
			b := b0 + j
			d.echo.learn(&d.outWin, b, d.rawWin[b&ringMask], loud, d.floorDB)
		}
		d.echo.settle()
	}
	// The canceller learns on frames without the caller (its double-talk
	// detector): no onset under way, nothing voiced over the echo bound.
	if !d.callerOn && d.strongHist&(1<<uint(d.voiceWindowFrames)-1) == 0 && !voiced {
		// Nothing over the echo bound, nothing the echo estimate cannot
		// explain: echo (and noise) alone.
		if !active && d.canc.explains(d.rawWin[last], d.yWin[last], d.floorDB) {
			d.canc.learn(&d.raw, f, d.rawWin[last] >= d.floorDB+activeMarginDB)
		}
		if hasY && d.canc.lsAudible >= minLSFrames {
			fl := math.Pow(10, d.floorDB/10)
			for j := range int64(blocksPerFr) {
				i := (b0 + j) & ringMask
				if d.yWin[i] < d.floorDB+yLoudDB {
					continue
				}
				resEcho := max(math.Pow(10, d.resWin[i]/10)-fl, fl/4)
				rawEcho := max(math.Pow(10, d.rawWin[i]/10)-fl, fl/4)
				if rawR := toDB(rawEcho) - d.yWin[i]; d.canc.raw.admits(rawR) {
					d.canc.res.add(toDB(resEcho) - d.yWin[i])
					d.canc.raw.add(rawR)
				}
			}
			d.canc.res.update()
			d.canc.raw.update()
		}
	}

	if d.trace != nil {
		d.trace(frameTrace{ms: f * FrameMS, inDB: inDB, floorDB: d.floorDB, echoUpDB: echoUp, bgDB: d.bgDB,
			outDB: d.outWin[last], periodicity: per, tonalDB: tonal, strong: strong, active: active, callerOn: d.callerOn,
			rawDB: d.rawWin[last], yDB: d.yWin[last], resUpDB: d.canc.res.upper(), rawUpDB: d.canc.raw.upper(), resDB: d.resWin[last], mode: int(md), delayMS: d.canc.delay / 8})
	}
	return ch
}

// echoBound is the highest level of the inbound window ending at block b
// that the outbound explains: of the canceller's residual when it is
// trusted (its echo estimate's level, at most 10 ms back, plus the learnt
// residual ratio), else of the raw inbound (echo.go).
func (d *Detector) echoBound(md mode, b int64) float64 {
	y := max(d.yWin[b&ringMask], d.yWin[(b-1)&ringMask], d.yWin[(b-2)&ringMask])
	switch md {
	case modeResidual:
		return y + d.canc.res.upper()
	case modeEstimate:
		// The estimate is least squares: it may fall short of the echo,
		// not exceed it; a ratio under 0 dB is noise in the ratio.
		return y + max(d.canc.raw.upper(), 0)
	}
	if d.canc.delay < 0 && d.quietLoud >= quietMinFrames && d.quietHigh*10 <= d.quietLoud {
		// The outbound has been loud for seconds and the inbound rarely
		// came near a caller's level meanwhile: whatever echo there is
		// stays under the noise gate.
		return minDB
	}
	if d.canc.sure && !d.echo.converged {
		// The delay is known from the cross-correlation before the
		// level-domain search settles: bound by the outbound around it.
		return d.echo.boundAt(&d.outWin, b, d.canc.delay/(blockLen))
	}
	return d.echo.bound(&d.outWin, b)
}

// backdate finds where the run of sound containing frame first began: the
// earliest 5 ms block, contiguous with the frame (gaps of one block
// allowed), above the activity threshold of its time; at most 300 ms back
// and never before the caller's previous end.
func (d *Detector) backdate(first int64) int64 {
	p := first * blocksPerFr
	for j := 0; j < blocksPerFr-1 && d.inBlk[p&ringMask] < d.thr[p&ringMask]; j++ {
		p++
	}
	limit := max(p-maxBackdateBlk, d.callerEndBlk, 0, d.frame*blocksPerFr-ringBlocks+1)
	act := func(b int64) bool { return b >= limit && d.inBlk[b&ringMask] >= d.thr[b&ringMask] }
	for {
		switch {
		case act(p - 1):
			p--
		case act(p-2) && p-2 >= limit:
			p -= 2
		default:
			return p * blockMS
		}
	}
}

// prompt runs the outbound track's segmenter. The outbound is our own
// text-to-speech: clean, so a level threshold over its floor suffices.
func (d *Detector) prompt(f, b0 int64, outDB float64, ch *Change) {
	if !d.outFloorInit {
		d.outFloorDB, d.outFloorInit = outDB, true
	}
	thr := max(d.outFloorDB+promptMarginDB, promptMinDB)
	active := outDB >= thr
	if active {
		d.promptRun++
		d.promptLastF = f
		end := b0 + blocksPerFr
		for j := int64(blocksPerFr - 1); j >= 0; j-- {
			if d.outBlk[(b0+j)&ringMask] >= thr {
				end = b0 + j + 1
				break
			}
		}
		d.promptLastEnd = end * blockMS
	} else {
		d.promptRun = 0
	}
	switch {
	case !d.promptOn && d.promptRun >= 2:
		p := (f - 1) * blocksPerFr
		for j := 0; j < blocksPerFr-1 && d.outBlk[p&ringMask] < thr; j++ {
			p++
		}
		limit := max(p-maxBackdateBlk, d.promptEndBlk, 0)
		for p-1 >= limit && d.outBlk[(p-1)&ringMask] >= thr {
			p--
		}
		d.promptOn = true
		ms := p * blockMS
		d.lastPromptOnMS = ms
		if d.firstPromptOn < 0 {
			d.firstPromptOn = ms
		}
		ch.PromptOnset, ch.PromptOnsetMS = true, ms
	case d.promptOn && f-d.promptLastF >= d.promptHangFrames:
		d.promptOn = false
		d.lastPromptEnd = d.promptLastEnd
		d.promptEndBlk = d.promptLastEnd / blockMS
		ch.PromptEnd, ch.PromptEndMS = true, d.promptLastEnd
	}
	switch {
	case outDB < d.outFloorDB:
		d.outFloorDB += 0.3 * (outDB - d.outFloorDB)
	case !active:
		d.outFloorDB += 0.01 * min(outDB-d.outFloorDB, 10)
	}
}
