package deepgram_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/consentline/consentline/mediastream/deepgram"
	"github.com/consentline/consentline/mediastream/deepgram/deepgramtest"
)

// frame is 20 ms of μ-law silence, Twilio's frame size.
var frame = bytes.Repeat([]byte{0xff}, 160)

// noLeaks checks, after every other cleanup (the fake server's included), that
// no goroutine outlived the test. Call it first.
func noLeaks(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

func newServer(t *testing.T, cfg deepgramtest.Config) *deepgramtest.Server {
	srv := deepgramtest.NewServer(cfg)
	t.Cleanup(srv.Close)
	return srv
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func config(srv *deepgramtest.Server, logs *syncBuffer) deepgram.Config {
	cfg := deepgram.Config{APIKey: srv.APIKey, URL: srv.URL, SendQueue: 4096}
	if logs != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

func dial(t *testing.T, cfg deepgram.Config) *deepgram.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := deepgram.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// sendAudio sends ms of audio as 20 ms frames.
func sendAudio(t *testing.T, s *deepgram.Stream, ms int) {
	t.Helper()
	for range ms / 20 {
		if err := s.Send(frame); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
}

// sendAudioUntilFailure is sendAudio for a stream the server is about to end:
// it stops at the first error, which the terminal event will explain.
func sendAudioUntilFailure(s *deepgram.Stream, ms int) {
	for range ms / 20 {
		if s.Send(frame) != nil {
			return
		}
	}
}

func closeStream(t *testing.T, s *deepgram.Stream) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.Close(ctx)
}

// drain reads events until the channel closes.
func drain(t *testing.T, s *deepgram.Stream) []deepgram.Event {
	t.Helper()
	var out []deepgram.Event
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-s.Events():
			if !ok {
				return out
			}
			out = append(out, ev)
		case <-timeout:
			t.Fatalf("events channel not closed; got %d events", len(out))
		}
	}
}

// closedErr is the Err of the terminal event, checking that there is exactly one
// and that it is last.
func closedErr(t *testing.T, events []deepgram.Event) error {
	t.Helper()
	for i, ev := range events {
		if c, ok := ev.(*deepgram.Closed); ok {
			if i != len(events)-1 {
				t.Fatalf("Closed at %d of %d events", i, len(events))
			}
			return c.Err
		}
	}
	t.Fatalf("no Closed event in %d events", len(events))
	return nil
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nextEvent waits for the next event of type T, skipping others.
func nextEvent[T deepgram.Event](t *testing.T, s *deepgram.Stream) T {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-s.Events():
			if !ok {
				t.Fatalf("events closed before a %T", *new(T))
			}
			if e, ok := ev.(T); ok {
				return e
			}
			if c, ok := ev.(*deepgram.Closed); ok {
				t.Fatalf("stream closed (%v) before a %T", c.Err, *new(T))
			}
		case <-timeout:
			t.Fatalf("no %T", *new(T))
		}
	}
}

func TestHappyPathInterimsThenFinalInOrder(t *testing.T) {
	noLeaks(t)
	srv := newServer(t, deepgramtest.Config{Script: []deepgramtest.Step{
		deepgramtest.SpeechStartedAt(100),
		deepgramtest.InterimAt(300, "yes", 0.61),
		deepgramtest.InterimAt(500, "yes I", 0.7),
		deepgramtest.FinalAt(600, "yes I agree", 0.93, true),
		deepgramtest.UtteranceEndAt(1000),
	}})
	logs := &syncBuffer{}
	cfg := config(srv, logs)
	cfg.Model, cfg.Language = "nova-3", "en-US"
	s := dial(t, cfg)
	sendAudio(t, s, 1200)
	if err := closeStream(t, s); err != nil {
		t.Fatalf("Close: %v", err)
	}
	events := drain(t, s)

	var kinds []string
	for _, ev := range events {
		kinds = append(kinds, strings.TrimPrefix(typeName(ev), "*deepgram."))
	}
	want := "SpeechStarted Interim Interim Final UtteranceEnd Metadata Closed"
	if got := strings.Join(kinds, " "); got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	if ss := events[0].(*deepgram.SpeechStarted); ss.Timestamp != 0.1 {
		t.Errorf("SpeechStarted.Timestamp = %v, want 0.1", ss.Timestamp)
	}
	in := events[1].(*deepgram.Interim)
	if in.Transcript != "yes" || in.IsFinal || in.Confidence != 0.61 {
		t.Errorf("first interim = %+v", in.Result)
	}
	fin := events[3].(*deepgram.Final)
	if fin.Transcript != "yes I agree" || fin.Confidence != 0.93 || !fin.IsFinal || !fin.SpeechFinal || fin.FromFinalize {
		t.Errorf("final = %+v", fin.Result)
	}
	if fin.Start != 0 || fin.Duration != 0.6 {
		t.Errorf("final start %v duration %v, want 0 and 0.6", fin.Start, fin.Duration)
	}
	if ue := events[4].(*deepgram.UtteranceEnd); ue.LastWordEnd != 0.6 {
		t.Errorf("UtteranceEnd.LastWordEnd = %v, want 0.6", ue.LastWordEnd)
	}
	md := events[5].(*deepgram.Metadata)
	if md.Duration != 1.2 || md.Channels != 1 || md.RequestID == "" {
		t.Errorf("metadata = %+v", md)
	}
	if err := closedErr(t, events); err != nil {
		t.Errorf("Closed.Err = %v, want nil", err)
	}

	st := srv.Last()
	if st.AudioBytes != 1200*deepgramtest.BytesPerMS || st.CloseStreams != 1 {
		t.Errorf("server stats %+v", st)
	}
	wantQuery := "encoding=mulaw&sample_rate=8000&channels=1&interim_results=true&endpointing=300" +
		"&utterance_end_ms=1000&vad_events=true&mip_opt_out=true&model=nova-3&language=en-US"
	if st.RawQuery != wantQuery {
		t.Errorf("query %q\nwant  %q", st.RawQuery, wantQuery)
	}
	for _, secret := range []string{srv.APIKey, "agree", "yes I"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("logs contain %q:\n%s", secret, logs.String())
		}
	}
}

func typeName(v any) string {
	switch v.(type) {
	case *deepgram.SpeechStarted:
		return "SpeechStarted"
	case *deepgram.Interim:
		return "Interim"
	case *deepgram.Final:
		return "Final"
	case *deepgram.UtteranceEnd:
		return "UtteranceEnd"
	case *deepgram.Metadata:
		return "Metadata"
	case *deepgram.Closed:
		return "Closed"
	}
	return "unknown"
}

func TestKeepAliveKeepsASilentStreamOpen(t *testing.T) {
	noLeaks(t)
	// The fake closes with 1011 NET-0001 after 150 ms without audio or KeepAlive,
	// as Deepgram does after 10 s.
	srv := newServer(t, deepgramtest.Config{IdleTimeout: 150 * time.Millisecond})
	cfg := config(srv, nil)
	cfg.KeepAliveEvery = 30 * time.Millisecond
	s := dial(t, cfg)
	sendAudio(t, s, 100)
	time.Sleep(600 * time.Millisecond) // the caller is silent: no frames
	sendAudio(t, s, 100)
	if err := closeStream(t, s); err != nil {
		t.Fatalf("Close after silence: %v", err)
	}
	if n := srv.Last().KeepAlives; n < 3 {
		t.Errorf("server saw %d KeepAlives in 600 ms of silence, want at least 3", n)
	}
}

func TestWithoutKeepAliveTheServerTimesOut1011(t *testing.T) {
	noLeaks(t)
	srv := newServer(t, deepgramtest.Config{IdleTimeout: 100 * time.Millisecond})
	cfg := config(srv, nil)
	cfg.KeepAliveEvery = time.Hour
	s := dial(t, cfg)
	sendAudio(t, s, 100)
	err := closedErr(t, drain(t, s))
	if !errors.Is(err, deepgram.ErrServerTimeout) || errors.Is(err, deepgram.ErrBadData) {
		t.Fatalf("Closed.Err = %v, want ErrServerTimeout", err)
	}
	var ce *deepgram.ServerCloseError
	if !errors.As(err, &ce) || ce.Code != 1011 || ce.Reason != "NET-0001" {
		t.Fatalf("Closed.Err = %#v, want a 1011 NET-0001 ServerCloseError", err)
	}
	if srv.Last().KeepAlives != 0 {
		t.Errorf("KeepAlives sent with KeepAliveEvery of an hour")
	}
}

func TestFinalizeFlushesTheInterimAsFinal(t *testing.T) {
	noLeaks(t)
	srv := newServer(t, deepgramtest.Config{Script: []deepgramtest.Step{
		deepgramtest.InterimAt(200, "yes I do", 0.82),
	}})
	s := dial(t, config(srv, nil))
	sendAudio(t, s, 400)
	if in := nextEvent[*deepgram.Interim](t, s); in.Transcript != "yes I do" {
		t.Fatalf("interim %q", in.Transcript)
	}
	if err := s.Finalize(); err != nil {
		t.Fatalf("Finalize: %v", err)
	}
	fin := nextEvent[*deepgram.Final](t, s)
	if !fin.FromFinalize || fin.Transcript != "yes I do" || fin.Confidence != 0.82 || fin.SpeechFinal {
		t.Fatalf("flush = %+v, want from_finalize final of the interim", fin.Result)
	}
	if got := srv.Last().Finalizes; got != 1 {
		t.Errorf("server saw %d Finalize, want 1", got)
	}
	if err := closeStream(t, s); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestCloseStreamThenMetadataThenClosedNil(t *testing.T) {
	noLeaks(t)
	srv := newServer(t, deepgramtest.Config{Script: []deepgramtest.Step{
		deepgramtest.InterimAt(100, "I agree", 0.9),
	}})
	s := dial(t, config(srv, nil))
	sendAudio(t, s, 200)
	if err := closeStream(t, s); err != nil {
		t.Fatalf("Close: %v", err)
	}
	events := drain(t, s)
	n := len(events)
	if n < 3 {
		t.Fatalf("%d events", n)
	}
	// CloseStream flushes the pending interim as a final before the Metadata.
	if fin, ok := events[n-3].(*deepgram.Final); !ok || fin.Transcript != "I agree" || fin.FromFinalize {
		t.Errorf("third-last event %#v, want the flushed final", events[n-3])
	}
	if _, ok := events[n-2].(*deepgram.Metadata); !ok {
		t.Errorf("second-last event %#v, want Metadata", events[n-2])
	}
	if err := closedErr(t, events); err != nil {
		t.Errorf("Closed.Err = %v", err)
	}
	if st := srv.Last(); st.CloseStreams != 1 || st.AudioBytes != 200*8 {
		t.Errorf("server stats %+v", st)
	}
	if err := closeStream(t, s); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Send(frame); !errors.Is(err, deepgram.ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	if err := s.Finalize(); !errors.Is(err, deepgram.ErrClosed) {
		t.Errorf("Finalize after Close = %v, want ErrClosed", err)
	}
}

func TestWrongKeyIsRefusedWith401(t *testing.T) {
	noLeaks(t)
	srv := newServer(t, deepgramtest.Config{APIKey: "right-key"})
	cfg := config(srv, nil)
	cfg.APIKey = "wrong-key-1234"
	_, err := deepgram.Dial(context.Background(), cfg)
	if !errors.Is(err, deepgram.ErrUnauthorized) {
		t.Fatalf("Dial = %v, want ErrUnauthorized", err)
	}
	var he *deepgram.HandshakeError
	if !errors.As(err, &he) || he.Status != 401 || he.RequestID == "" {
		t.Fatalf("Dial = %#v, want a 401 HandshakeError with a request id", err)
	}
	if strings.Contains(err.Error(), "wrong-key-1234") {
		t.Errorf("error shows the key: %v", err)
	}
	if r := srv.Refusals(); len(r) != 1 || r[0].Status != 401 {
		t.Errorf("refusals %+v", r)
	}
	if len(srv.Sessions()) != 0 {
		t.Errorf("a session was opened with a wrong key")
	}
}

func TestServerCloseCodesAreDistinctErrors(t *testing.T) {
	for _, tc := range []struct {
		code    int
		reason  string
		want    error
		notWant error
	}{
		{deepgramtest.CodeBadData, deepgramtest.ReasonBadData, deepgram.ErrBadData, deepgram.ErrServerTimeout},
		{deepgramtest.CodeTimeout, "NET-0000", deepgram.ErrServerTimeout, deepgram.ErrBadData},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			noLeaks(t)
			srv := newServer(t, deepgramtest.Config{Script: []deepgramtest.Step{
				deepgramtest.CloseAt(100, tc.code, tc.reason),
			}})
			s := dial(t, config(srv, nil))
			sendAudioUntilFailure(s, 200)
			err := closedErr(t, drain(t, s))
			if !errors.Is(err, tc.want) || errors.Is(err, tc.notWant) || errors.Is(err, deepgram.ErrDropped) {
				t.Fatalf("Closed.Err = %v, want %v only", err, tc.want)
			}
			var ce *deepgram.ServerCloseError
			if !errors.As(err, &ce) || ce.Code != tc.code || ce.Reason != tc.reason {
				t.Fatalf("Closed.Err = %#v", err)
			}
			if cerr := closeStream(t, s); !errors.Is(cerr, tc.want) {
				t.Errorf("Close = %v, want %v", cerr, tc.want)
			}
		})
	}
}

func TestDroppedConnectionMidStream(t *testing.T) {
	noLeaks(t)
	srv := newServer(t, deepgramtest.Config{Script: []deepgramtest.Step{
		deepgramtest.InterimAt(100, "yes", 0.5),
		deepgramtest.DropAt(200),
	}})
	s := dial(t, config(srv, nil))
	sendAudioUntilFailure(s, 300)
	err := closedErr(t, drain(t, s))
	if !errors.Is(err, deepgram.ErrDropped) {
		t.Fatalf("Closed.Err = %v, want ErrDropped", err)
	}
	var ce *deepgram.ServerCloseError
	if errors.As(err, &ce) {
		t.Fatalf("a drop reported as a close frame: %v", err)
	}
	if err := s.Send(frame); !errors.Is(err, deepgram.ErrDropped) {
		t.Errorf("Send after the drop = %v, want ErrDropped", err)
	}
}

func TestStallIsDetected(t *testing.T) {
	noLeaks(t)
	srv := newServer(t, deepgramtest.Config{Script: []deepgramtest.Step{deepgramtest.StallAt(0)}})
	cfg := config(srv, nil)
	cfg.StallTimeout = 200 * time.Millisecond
	s := dial(t, cfg)
	// Real-time audio, as Twilio delivers it, until the stream gives up.
	var events []deepgram.Event
	deadline := time.Now().Add(5 * time.Second)
	for done := false; !done; {
		if time.Now().After(deadline) {
			t.Fatal("stall not detected")
		}
		if err := s.Send(frame); err != nil && !errors.Is(err, deepgram.ErrStalled) {
			t.Fatalf("Send = %v", err)
		}
		select {
		case ev := <-s.Events():
			events = append(events, ev)
			_, done = ev.(*deepgram.Closed)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := closedErr(t, events); !errors.Is(err, deepgram.ErrStalled) {
		t.Fatalf("Closed.Err = %v, want ErrStalled", err)
	}
	if srv.Last().AudioBytes == 0 {
		t.Error("the stalled server received no audio")
	}
}

func TestCloseIsBoundedByItsContext(t *testing.T) {
	noLeaks(t)
	srv := newServer(t, deepgramtest.Config{Script: []deepgramtest.Step{deepgramtest.StallAt(0)}})
	cfg := config(srv, nil)
	cfg.StallTimeout = time.Hour
	s := dial(t, cfg)
	sendAudio(t, s, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want DeadlineExceeded", err)
	}
	if err := closedErr(t, drain(t, s)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Closed.Err = %v", err)
	}
	waitFor(t, "CloseStream at the server", func() bool { return srv.Last().CloseStreams == 1 })
}

func TestMalformedServerJSONFailsTheStream(t *testing.T) {
	noLeaks(t)
	srv := newServer(t, deepgramtest.Config{Script: []deepgramtest.Step{
		deepgramtest.InterimAt(50, "yes", 0.5),
		deepgramtest.MalformedAt(100),
	}})
	logs := &syncBuffer{}
	s := dial(t, config(srv, logs))
	sendAudioUntilFailure(s, 200)
	events := drain(t, s)
	if err := closedErr(t, events); !errors.Is(err, deepgram.ErrMalformed) {
		t.Fatalf("Closed.Err = %v, want ErrMalformed", err)
	}
	if _, ok := events[0].(*deepgram.Interim); !ok {
		t.Errorf("the interim before the fault was not delivered: %#v", events[0])
	}
	if !strings.Contains(logs.String(), "malformed") {
		t.Errorf("the fault was not logged:\n%s", logs.String())
	}
}

func TestUnreadEventsFailTheStreamInsteadOfBlocking(t *testing.T) {
	noLeaks(t)
	var script []deepgramtest.Step
	for ms := 1; ms <= 400; ms++ {
		script = append(script, deepgramtest.InterimAt(ms, "yes", 0.5))
	}
	srv := newServer(t, deepgramtest.Config{Script: script})
	s := dial(t, config(srv, nil))
	sendAudio(t, s, 400) // 400 interims; nobody reads them
	if err := closeStream(t, s); !errors.Is(err, deepgram.ErrEventsOverflow) {
		t.Fatalf("Close = %v, want ErrEventsOverflow", err)
	}
	events := drain(t, s)
	if err := closedErr(t, events); !errors.Is(err, deepgram.ErrEventsOverflow) {
		t.Fatalf("Closed.Err = %v", err)
	}
	if len(events) != 256 {
		t.Errorf("%d events, want the 255 that fit and Closed", len(events))
	}
}

func TestSendRejectsAnEmptyFrame(t *testing.T) {
	noLeaks(t)
	srv := newServer(t, deepgramtest.Config{})
	s := dial(t, config(srv, nil))
	if err := s.Send(nil); !errors.Is(err, deepgram.ErrEmptyFrame) {
		t.Fatalf("Send(nil) = %v, want ErrEmptyFrame", err)
	}
	if err := closeStream(t, s); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestDialRejectsBadConfig(t *testing.T) {
	noLeaks(t)
	for name, cfg := range map[string]deepgram.Config{
		"no key":        {URL: "ws://127.0.0.1:1/v1/listen"},
		"key with a LF": {APIKey: "a\nb", URL: "ws://127.0.0.1:1/v1/listen"},
		"http scheme":   {APIKey: "k", URL: "http://127.0.0.1:1/v1/listen"},
		"query in URL":  {APIKey: "k", URL: "ws://127.0.0.1:1/v1/listen?model=x"},
		"negative":      {APIKey: "k", URL: "ws://127.0.0.1:1/v1/listen", StallTimeout: -1},
	} {
		if _, err := deepgram.Dial(context.Background(), cfg); err == nil {
			t.Errorf("%s: Dial succeeded", name)
		}
	}
}
