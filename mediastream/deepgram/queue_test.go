package deepgram

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/consentline/consentline/mediastream/deepgram/deepgramtest"
)

// A socket that stops taking writes must fail the stream at once, not block the
// caller's media loop. beforeWrite holds the writer as a wedged TCP send would.
func TestFullSendQueueFailsTheStreamWithoutBlocking(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	srv := deepgramtest.NewServer(deepgramtest.Config{})
	t.Cleanup(srv.Close)

	held := make(chan struct{}, 1)
	release := make(chan struct{})
	cfg := Config{
		APIKey: srv.APIKey, URL: srv.URL, SendQueue: 2,
		KeepAliveEvery: time.Hour,
		beforeWrite: func() {
			select {
			case held <- struct{}{}:
			default:
			}
			<-release
		},
	}
	s, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	frame := bytes.Repeat([]byte{0xff}, 160)
	if err := s.Send(frame); err != nil {
		t.Fatal(err)
	}
	<-held // the writer holds the first frame
	for i := range 2 {
		if err := s.Send(frame); err != nil {
			t.Fatalf("Send %d into a queue of 2: %v", i+2, err)
		}
	}
	if err := s.Send(frame); !errors.Is(err, ErrSendQueueFull) {
		t.Fatalf("Send into a full queue = %v, want ErrSendQueueFull", err)
	}
	if err := s.Send(frame); !errors.Is(err, ErrSendQueueFull) {
		t.Fatalf("Send after the failure = %v, want ErrSendQueueFull", err)
	}
	close(release)

	var last Event
	for ev := range s.Events() {
		last = ev
	}
	if c, ok := last.(*Closed); !ok || !errors.Is(c.Err, ErrSendQueueFull) {
		t.Fatalf("last event %#v, want Closed{ErrSendQueueFull}", last)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.Close(ctx); !errors.Is(err, ErrSendQueueFull) {
		t.Fatalf("Close = %v", err)
	}
}

// BenchmarkSend is the caller's cost per 20 ms frame: a copy and a queue send,
// with the writer draining to a local fake server (which answers every second of
// audio, so the stream does not count as stalled).
func BenchmarkSend(b *testing.B) {
	srv := deepgramtest.NewServer(deepgramtest.Config{})
	defer srv.Close()
	s, err := Dial(context.Background(), Config{APIKey: srv.APIKey, URL: srv.URL, SendQueue: 1 << 16})
	if err != nil {
		b.Fatal(err)
	}
	frame := bytes.Repeat([]byte{0xff}, 160)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Send(frame); err != nil {
			b.Fatal(err)
		}
		if len(s.sendq) > cap(s.sendq)/2 { // let the writer catch up; keeps the queue from filling
			for len(s.sendq) > 0 {
				select {
				case <-s.quit:
					b.Fatalf("stream ended: %v", s.err)
				case <-time.After(time.Millisecond):
				}
			}
		}
	}
	b.StopTimer()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		b.Fatal(err)
	}
}
