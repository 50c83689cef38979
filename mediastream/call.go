package mediastream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/mediastream/vad"
	"github.com/consentline/consentline/twiml"
)

// The stream's custom parameters, which the TwiML sets
// (ivr.disclosureURLs) and Calls.Open reads: which script's disclosure the
// stream measures.
const (
	ParamScript   = "script"
	ParamLanguage = "lang"
)

// Evidence window around the caller's answer (CONTRACT §3 and the issue's
// "onset − 300 ms to end + 300 ms, at most 30 s").
const (
	preRollMS  = 300
	postRollMS = 300
	// ringMS of inbound audio is kept so the pre-roll can be copied when
	// an onset is confirmed: the VAD confirms an onset up to ~650 ms
	// after it began (MinVoicedMS within its 640 ms window), and reports
	// it backdated.
	ringMS = 1200
)

// Calls turns each accepted media stream into measurements, evidence and —
// with a recognizer — decisions for its call. Its Open is the Server's
// Config.Open.
type Calls struct {
	Consent *consent.Service
	Scripts *twiml.Library
	// Recognizer, when set, recognizes the caller's answer on the stream;
	// a final utterance then decides through the same threshold, lock and
	// exactly-once record as a Gather's result (source media_stream).
	Recognizer Recognizer
	// MoveToReadBack moves the live call to the read-back once the stream
	// has decided (ivr.Server.MoveToReadBack); when it fails, the Gather's
	// callback still reads the decision back.
	MoveToReadBack func(ctx context.Context, callSID string, script consent.ScriptRef) error
	Logger         *slog.Logger
	// Now defaults to time.Now; the wall clock ties stream time to webhook
	// time (the must-hear redirect, the decision).
	Now func() time.Time
	// Metrics counts streams, their errors, VAD onsets and recognizer
	// failures (nil: none).
	Metrics *telemetry.Metrics
}

// Open starts following one stream: the Server calls it after the stream's
// start message. A stream whose parameters name no known script is refused.
func (c *Calls) Open(ctx context.Context, start Start) (func(Frame), func(End), error) {
	script, ok := c.Scripts.ByLanguage(start.CustomParameters[ParamLanguage])
	if !ok || script.ID != start.CustomParameters[ParamScript] {
		return nil, nil, errors.New("stream parameters name no known disclosure script")
	}
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	sc := &streamCall{
		calls: c, log: log.With("call_sid", start.CallSID, "stream_sid", start.StreamSID),
		now: now, script: script.Ref(), det: vad.New(),
		saves: make(chan snapshot, 1), savedAll: make(chan struct{}),
	}
	c.Metrics.StreamOpened()
	sc.m = consent.StreamMeasurement{CallSID: start.CallSID, ScriptID: script.ID, StreamSID: start.StreamSID,
		StartedAt: now().UTC(), PromptOnsetMS: -1, PromptEndMS: -1, AnswerOnsetMS: -1, AnswerEndMS: -1}
	sc.utt.endMS = -1
	// The saver and the recognizer outlive no stream: onEnd waits for both.
	sc.ctx, sc.cancel = context.WithCancel(context.WithoutCancel(ctx))
	go sc.saveLoop()
	if c.Recognizer != nil {
		rec, err := c.Recognizer.Open(sc.ctx, script.Language)
		if err != nil {
			// The call goes on without recognition: the Gather decides.
			sc.log.Warn("stream recognizer not available; the Gather decides", "error", err)
			c.Metrics.RecognizerFailed()
		} else {
			sc.rec = rec
			sc.recDone = make(chan struct{})
			go sc.recognize(rec.Utterances())
		}
	}
	return sc.frame, sc.end, nil
}

// streamCall is one stream's state. frame and end run on the stream's
// reading goroutine; saveLoop and recognize on their own, sharing m and
// utt under mu.
type streamCall struct {
	calls  *Calls
	log    *slog.Logger
	now    func() time.Time
	script consent.ScriptRef
	det    *vad.Detector

	ctx    context.Context
	cancel context.CancelFunc

	// ring holds the last ringMS of inbound audio, for the pre-roll.
	ring    [ringMS / vad.FrameMS * vad.FrameBytes]byte
	ringPos int // total bytes ever written

	mu  sync.Mutex
	m   consent.StreamMeasurement
	utt utterance // the caller's latest utterance
	// frozen: a decision was recorded before the latest utterance began,
	// so it is not the answer and must not replace the answer's evidence.
	frozen bool

	saves    chan snapshot
	savedAll chan struct{}

	// rec is the recognizer session while it works (nil once it failed);
	// recDone closes when its utterances are drained, and closing tracks
	// a failed session's Close, so end waits for both.
	rec     RecognizerSession
	recDone chan struct{}
	closing sync.WaitGroup
}

// utterance is the caller's latest stretch of speech as the VAD saw it.
type utterance struct {
	onsetMS, endMS int64
	// fromMS is where audio starts (preRollMS before the onset).
	fromMS int64
	// audio is the evidence: from preRollMS before the onset, growing
	// until postRollMS after the end (at most consent.MaxAnswerAudioBytes).
	audio []byte
	// closed: the post-roll is complete and the audio final.
	closed bool
}

// snapshot is one measurement to save, with the answer audio so far.
type snapshot struct {
	m     consent.StreamMeasurement
	audio []byte
}

var silence = func() (f [vad.FrameBytes]byte) {
	for i := range f {
		f[i] = 0xFF // μ-law zero
	}
	return f
}()

func (sc *streamCall) frame(f Frame) {
	in := f.Inbound
	if len(in) != vad.FrameBytes {
		in = silence[:]
	}
	ch := sc.det.Push(f.Inbound, f.Outbound)
	sc.remember(in)
	if sc.rec != nil {
		if err := sc.rec.Send(in); err != nil && !errors.Is(err, context.Canceled) {
			sc.stopRecognizer(err)
		}
	}

	sc.mu.Lock()
	save := false
	if ch.PromptOnset && sc.m.PromptOnsetMS < 0 {
		// The disclosure started: saved at once, so a decision anywhere
		// knows the stream is measuring this call.
		sc.m.PromptOnsetMS, save = ch.PromptOnsetMS, true
	}
	if ch.PromptOnset {
		sc.calls.Metrics.VADOnset(telemetry.TrackOutbound)
	}
	if ch.PromptEnd && sc.m.AnswerOnsetMS < 0 {
		// Saved as it moves (at most once a sentence): a caller who hangs
		// up without answering is recorded with how much played, and the
		// status callback may come before the stream's end is saved.
		sc.m.PromptEndMS, save = ch.PromptEndMS, true
	}
	if ch.PromptOnset && sc.det.CallerSpeaking() && sc.m.AnswerOnsetMS >= 0 {
		// The disclosure resumed while the caller talked: they talked
		// over it.
		if !sc.m.BargeIn {
			sc.m.BargeIn, save = true, true
		}
	}
	if ch.CallerOnset {
		sc.closeUtterance() // a new utterance ends the previous one's post-roll
		sc.m.AnswerOnsetMS, sc.m.AnswerEndMS = ch.CallerOnsetMS, -1
		sc.m.PromptEndMS = sc.det.LastPromptEndMS()
		// A barge-in: the disclosure was playing, or (a pause between
		// its sentences) resumes before the caller stops; see above.
		sc.m.BargeIn = ch.PromptSpeaking || sc.det.PromptSpeaking()
		from := max(ch.CallerOnsetMS-preRollMS, 0, f.MS+vad.FrameMS-ringMS)
		sc.utt = utterance{onsetMS: ch.CallerOnsetMS, endMS: -1, fromMS: from, audio: sc.preRoll(from, f.MS+vad.FrameMS)}
		save = true
		sc.calls.Metrics.VADOnset(telemetry.TrackInbound)
	} else {
		sc.capture(in)
	}
	if ch.CallerEnd && sc.m.AnswerOnsetMS >= 0 {
		sc.m.AnswerEndMS, sc.utt.endMS = ch.CallerEndMS, ch.CallerEndMS
		if sc.rec != nil {
			_ = sc.rec.Finalize()
		}
	}
	if sc.utt.endMS >= 0 && !sc.utt.closed && f.MS+vad.FrameMS >= sc.utt.endMS+postRollMS {
		sc.closeUtterance()
		save = false // closeUtterance saved
	}
	if save {
		sc.saveLocked()
	}
	sc.mu.Unlock()
}

// remember appends one inbound frame to the ring.
func (sc *streamCall) remember(in []byte) {
	n := copy(sc.ring[sc.ringPos%len(sc.ring):], in)
	copy(sc.ring[:], in[n:])
	sc.ringPos += len(in)
}

// preRoll copies the ring's audio from fromMS up to nowMS (the end of the
// frame just pushed) into a new evidence buffer.
func (sc *streamCall) preRoll(fromMS, nowMS int64) []byte {
	n := int(nowMS-fromMS) * vad.SampleRate / 1000
	n = min(n, sc.ringPos, len(sc.ring))
	buf := make([]byte, n, min(n+32*vad.FrameBytes, consent.MaxAnswerAudioBytes))
	start := sc.ringPos - n
	for i := range n {
		buf[i] = sc.ring[(start+i)%len(sc.ring)]
	}
	return buf
}

// capture appends an inbound frame to the open utterance's evidence.
func (sc *streamCall) capture(in []byte) {
	if sc.utt.closed || sc.utt.audio == nil {
		return
	}
	room := consent.MaxAnswerAudioBytes - len(sc.utt.audio)
	sc.utt.audio = append(sc.utt.audio, in[:min(len(in), max(room, 0))]...)
}

// closeUtterance finishes the open utterance's evidence and saves it.
// Called with mu held.
func (sc *streamCall) closeUtterance() {
	if sc.utt.audio == nil || sc.utt.closed {
		return
	}
	sc.utt.closed = true
	if sc.utt.endMS >= 0 {
		// The end is confirmed a hangover after the sound stopped, and
		// reported where it stopped: keep postRollMS after it, no more.
		keep := (sc.utt.endMS + postRollMS - sc.utt.fromMS) * vad.SampleRate / 1000
		sc.utt.audio = sc.utt.audio[:min(int64(len(sc.utt.audio)), max(keep, 0))]
	}
	sc.saveLocked()
}

// saveLocked hands the current measurement to the saver, replacing one
// not yet saved (only the latest matters). Called with mu held.
func (sc *streamCall) saveLocked() {
	if sc.frozen {
		return
	}
	s := snapshot{m: sc.m}
	if sc.utt.closed {
		s.audio = sc.utt.audio
	}
	select {
	case <-sc.saves:
	default:
	}
	sc.saves <- s
}

// saveTimeout bounds one save; a stream outlives a slow database by
// keeping only the latest measurement to save.
const saveTimeout = 5 * time.Second

func (sc *streamCall) saveLoop() {
	defer close(sc.savedAll)
	for {
		select {
		case s := <-sc.saves:
			sc.save(s)
		case <-sc.ctx.Done():
			// The last measurement, if any, still goes in.
			select {
			case s := <-sc.saves:
				sc.save(s)
			default:
			}
			return
		}
	}
}

func (sc *streamCall) save(s snapshot) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(sc.ctx), saveTimeout)
	defer cancel()
	if s.m.AnswerOnsetMS >= 0 && sc.decidedBefore(ctx, s.m) {
		sc.mu.Lock()
		sc.frozen = true
		sc.mu.Unlock()
		return
	}
	if err := sc.calls.Consent.SaveStreamMeasurement(ctx, s.m, s.audio); err != nil {
		sc.log.Warn("stream measurement not saved; the record keeps what was saved before", "error", err)
	}
}

// decidedBefore reports whether the call's decision was recorded before the
// measurement's utterance began: then that utterance (a "thank you" after
// the read-back) is not the answer, and the answer's measurement and audio
// stay as they are.
func (sc *streamCall) decidedBefore(ctx context.Context, m consent.StreamMeasurement) bool {
	rec, ok, err := sc.calls.Consent.Decision(ctx, m.CallSID, m.ScriptID)
	if err != nil || !ok {
		return false
	}
	onset := m.StartedAt.Add(time.Duration(m.AnswerOnsetMS) * time.Millisecond)
	return rec.DecidedAt.Before(onset)
}

// end runs once when the stream ends: the open utterance's evidence is
// saved as it is, recognition stops, and nothing of the stream outlives it.
func (sc *streamCall) end(e End) {
	sc.mu.Lock()
	if sc.utt.audio != nil && !sc.utt.closed {
		sc.closeUtterance()
	} else if sc.m.PromptOnsetMS >= 0 {
		sc.saveLocked() // the disclosure's end as measured
	}
	sc.mu.Unlock()
	if sc.rec != nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(sc.ctx), 2*time.Second)
		_ = sc.rec.Close(ctx)
		cancel()
	}
	sc.closing.Wait()
	if sc.recDone != nil {
		<-sc.recDone
	}
	sc.cancel()
	<-sc.savedAll
	sc.calls.Metrics.StreamClosed()
	switch e.Reason {
	case ReasonMalformed:
		sc.calls.Metrics.StreamError(telemetry.StreamErrorProtocol)
	case ReasonReadTimeout:
		sc.calls.Metrics.StreamError(telemetry.StreamErrorTimeout)
	}
	sc.log.Debug("media stream ended", "reason", e.Reason)
}

func (sc *streamCall) stopRecognizer(err error) {
	sc.log.Warn("stream recognizer failed; the Gather decides", "error", err)
	sc.calls.Metrics.RecognizerFailed()
	sc.calls.Metrics.StreamError(telemetry.StreamErrorRecognizer)
	rec := sc.rec
	sc.rec = nil
	sc.closing.Add(1)
	go func() {
		defer sc.closing.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(sc.ctx), 2*time.Second)
		defer cancel()
		_ = rec.Close(ctx)
	}()
}

// recognize decides from each final utterance the recognizer delivers.
func (sc *streamCall) recognize(utterances <-chan Utterance) {
	defer close(sc.recDone)
	for u := range utterances {
		sc.decide(u)
	}
}

// attributionSlackMS is how far a recognized utterance may lie from the
// VAD's caller speech and still be the caller's: recognizers place words
// a little differently from an energy detector.
const attributionSlackMS = 700

// decideTimeout bounds one stream decision, like a webhook's.
const decideTimeout = 2 * time.Second

// decide records the decision an utterance makes, if it makes one, and
// moves the call to the read-back. The answer must be what the VAD heard
// from the caller: words the recognizer found where the VAD heard only
// echo or background talk are not the caller's and decide nothing.
func (sc *streamCall) decide(u Utterance) {
	sc.mu.Lock()
	m := sc.m
	sc.mu.Unlock()
	if m.AnswerOnsetMS < 0 || u.EndMS < m.AnswerOnsetMS-attributionSlackMS ||
		(m.AnswerEndMS >= 0 && u.StartMS > m.AnswerEndMS+attributionSlackMS) {
		sc.log.Info("recognized speech the VAD did not attribute to the caller; not deciding from it")
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(sc.ctx), decideTimeout)
	defer cancel()
	svc := sc.calls.Consent
	call, ok, err := svc.StartedCall(ctx, m.CallSID)
	if err != nil || !ok {
		sc.log.Warn("stream decision skipped: the call's start is not stored; the Gather decides", "error", err)
		return
	}
	call.Script = sc.script
	// The stream's own measurement, with the must-hear end another
	// instance may have stored.
	heard, ok, err := svc.StreamHeard(ctx, m, false)
	if err != nil || !ok {
		sc.log.Warn("stream decision skipped: no measurement", "error", err)
		return
	}
	conf := u.Confidence
	out, err := svc.Decide(ctx, consent.Answer{Call: call, Source: consent.SourceMediaStream,
		Transcript: u.Transcript, Confidence: &conf, Heard: heard})
	if err != nil {
		sc.log.Warn("stream decision failed; the Gather decides", "error", err)
		return
	}
	if !out.Created {
		return // unclear, below the threshold, or decided already
	}
	sc.log.Info("consent decided", "decision", out.Record.Decision, "source", out.Record.Source,
		"barge_in", out.Record.BargeIn, "timing", out.Record.Timing)
	if sc.calls.MoveToReadBack == nil {
		return
	}
	if err := sc.calls.MoveToReadBack(ctx, m.CallSID, sc.script); err != nil {
		sc.log.Warn("call not moved to the read-back; the Gather's callback reads the decision back", "error", fmt.Sprint(err))
	}
}
