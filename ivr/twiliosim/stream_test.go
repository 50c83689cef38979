package twiliosim_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/mediastream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	token     = "sim-token"
	account   = "AC00000000000000000000000000000001"
	callSID   = "CA00000000000000000000000000000001"
	streamURL = "https://consent.example"
	wssURL    = "wss://consent.example/voice/stream"
)

// collected is what the server's consumer saw of one stream.
type collected struct {
	mu       sync.Mutex
	start    mediastream.Start
	in, out  []byte // concatenated frames, silence where a track was nil
	frames   int
	lastMS   int64
	ordered  bool
	end      mediastream.End
	endCalls int
	done     chan struct{}
}

func serve(t *testing.T) (*twiliosim.Twilio, *collected, *mediastream.Server) {
	t.Helper()
	c := &collected{done: make(chan struct{}), ordered: true, lastMS: -1}
	srv, err := mediastream.NewServer(mediastream.Config{
		PublicURL: wssURL, AuthToken: token, AccountSID: account, ReadTimeout: 5 * time.Second,
		Open: func(_ context.Context, s mediastream.Start) (func(mediastream.Frame), func(mediastream.End), error) {
			c.mu.Lock()
			c.start = s
			c.mu.Unlock()
			return func(f mediastream.Frame) {
					c.mu.Lock()
					defer c.mu.Unlock()
					c.ordered = c.ordered && f.MS > c.lastMS
					c.lastMS = f.MS
					c.frames++
					c.in = appendFrame(c.in, f.Inbound)
					c.out = appendFrame(c.out, f.Outbound)
				}, func(e mediastream.End) {
					c.mu.Lock()
					c.end = e
					c.endCalls++
					c.mu.Unlock()
					close(c.done)
				}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		_ = srv.Close()
		ts.Close()
	})
	return &twiliosim.Twilio{PublicBaseURL: streamURL, Target: ts.URL, AuthToken: token, AccountSID: account}, c, srv
}

func appendFrame(b, f []byte) []byte {
	if f == nil {
		return append(b, bytes.Repeat([]byte{0xFF}, mediastream.FrameBytes)...)
	}
	return append(b, f...)
}

// ramp returns n frames whose bytes count up, so misplaced frames show.
func ramp(n int, base byte) []byte {
	b := make([]byte, n*mediastream.FrameBytes)
	for i := range b {
		b[i] = base + byte(i/mediastream.FrameBytes)
	}
	return b
}

func TestStreamPlaysBothTracksAligned(t *testing.T) {
	for _, lead := range []int{0, 3} {
		tw, got, _ := serve(t)
		in, out := ramp(20, 0), ramp(20, 100)
		res, err := tw.Stream(context.Background(), wssURL, twiliosim.StreamPlay{
			CallSID: callSID, CustomParameters: map[string]string{"lang": "en-US"},
			Inbound: in, Outbound: out, OutboundLead: lead,
		})
		if err != nil {
			t.Fatal(err)
		}
		<-got.done
		got.mu.Lock()
		if res.CloseCode != websocket.CloseNormalClosure || got.end.Reason != mediastream.ReasonStop || got.endCalls != 1 {
			t.Fatalf("lead %d: close %d, end %+v x%d", lead, res.CloseCode, got.end, got.endCalls)
		}
		if !got.ordered || got.frames != 20 || !bytes.Equal(got.in, in) || !bytes.Equal(got.out, out) {
			t.Fatalf("lead %d: %d frames, ordered %v, tracks equal %v %v", lead, got.frames, got.ordered, bytes.Equal(got.in, in), bytes.Equal(got.out, out))
		}
		if got.start.CallSID != callSID || got.start.StreamSID != res.StreamSID || got.start.CustomParameters["lang"] != "en-US" {
			t.Fatalf("start %+v", got.start)
		}
		got.mu.Unlock()
	}
}

func TestStreamRealtimeTakesTwentyMillisecondsASlot(t *testing.T) {
	tw, got, _ := serve(t)
	t0 := time.Now()
	if _, err := tw.Stream(context.Background(), wssURL, twiliosim.StreamPlay{CallSID: callSID, Inbound: ramp(10, 0), Realtime: true}); err != nil {
		t.Fatal(err)
	}
	<-got.done
	// A lower bound only: pacing must not be skipped.
	if el := time.Since(t0); el < 200*time.Millisecond {
		t.Fatalf("10 slots played in %v", el)
	}
	if got.end.Frames != 10 {
		t.Fatalf("end %+v", got.end)
	}
}

func TestStreamFaults(t *testing.T) {
	t.Run("stop early", func(t *testing.T) {
		tw, got, _ := serve(t)
		if _, err := tw.Stream(context.Background(), wssURL, twiliosim.StreamPlay{CallSID: callSID, Inbound: ramp(20, 0), Outbound: ramp(20, 50), StopAfter: 5}); err != nil {
			t.Fatal(err)
		}
		<-got.done
		if got.end.Reason != mediastream.ReasonStop || got.end.Frames != 5 {
			t.Fatalf("end %+v", got.end)
		}
	})
	t.Run("abort mid-stream", func(t *testing.T) {
		tw, got, srv := serve(t)
		res, err := tw.Stream(context.Background(), wssURL, twiliosim.StreamPlay{CallSID: callSID, Inbound: ramp(20, 0), AbortAfter: 7})
		if err != nil {
			t.Fatal(err)
		}
		<-got.done
		if res.CloseCode != 0 || got.end.Reason != mediastream.ReasonClientClosed || got.end.Frames != 7 {
			t.Fatalf("close %d, end %+v", res.CloseCode, got.end)
		}
		deadline := time.Now().Add(5 * time.Second)
		for srv.Stats().Active != 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if srv.Stats().Active != 0 {
			t.Fatal("aborted stream still active")
		}
	})
	t.Run("malformed message", func(t *testing.T) {
		tw, got, _ := serve(t)
		res, err := tw.Stream(context.Background(), wssURL, twiliosim.StreamPlay{
			CallSID: callSID, Inbound: ramp(20, 0),
			Rewrite: func(i int, msg []byte) []byte {
				if i == 5 {
					return []byte(strings.Replace(string(msg), `"track":"inbound"`, `"track":"sideways"`, 1))
				}
				return msg
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		<-got.done
		if res.CloseCode != websocket.ClosePolicyViolation || res.CloseText != "media track malformed" || got.end.Reason != mediastream.ReasonMalformed {
			t.Fatalf("close %d %q, end %+v", res.CloseCode, res.CloseText, got.end)
		}
	})
	t.Run("wrong token", func(t *testing.T) {
		tw, _, _ := serve(t)
		tw.AuthToken = "not-the-token"
		if _, err := tw.Stream(context.Background(), wssURL, twiliosim.StreamPlay{CallSID: callSID}); err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("err %v, want a 403 refusal", err)
		}
	})
}
