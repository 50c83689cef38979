package mediastream_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/mediastream"
)

func sid(prefix string, n int) string { return fmt.Sprintf("%s%032x", prefix, n) }

// playHealthy sends a whole stream of n slots on both tracks, then stop.
func playHealthy(t *testing.T, c *websocket.Conn, streamSID, callSID string, n int, pace time.Duration) {
	t.Helper()
	send(t, c, connectedMsg, startMsg(1, streamSID, callSID, testAccount))
	seq := 2
	for i := 0; i < n; i++ {
		send(t, c, mediaMsg(seq, streamSID, "inbound", i+1, i*20, frameOf(byte(i))),
			mediaMsg(seq+1, streamSID, "outbound", i+1, i*20, frameOf(byte(100+i))))
		seq += 2
		if pace > 0 {
			time.Sleep(pace)
		}
	}
	send(t, c, stopMsg(seq, streamSID, callSID, testAccount))
}

func TestServerDeliversASignedStream(t *testing.T) {
	var logs bytes.Buffer
	var logMu sync.Mutex
	h := newHarness(t, func(c *mediastream.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil))
	})
	c := h.dial(t)
	playHealthy(t, c, testStream, testCall, 10, 0)
	if ce := closeOf(t, c); ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("close %d %q, want normal", ce.Code, ce.Text)
	}
	e := h.rec.waitEnd(t, testStream)
	if e.Reason != mediastream.ReasonStop || e.Frames != 10 {
		t.Fatalf("end %+v", e)
	}
	frames := h.rec.framesOf(testStream)
	for i, f := range frames {
		if f.MS != int64(i*20) || !f.HasIn || !f.HasOut || f.Inbound != byte(i) || f.Outbound != byte(100+i) {
			t.Fatalf("frame %d: %+v", i, f)
		}
	}
	h.rec.mu.Lock()
	st := h.rec.starts[0]
	h.rec.mu.Unlock()
	if st.CallSID != testCall || st.CustomParameters["lang"] != "en-US" || len(st.Tracks) != 2 {
		t.Fatalf("start %+v", st)
	}
	waitFor(t, func() bool { return h.srv.Stats().Active == 0 })
	s := h.srv.Stats()
	if s.Accepted != 1 || s.Ended[mediastream.ReasonStop] != 1 {
		t.Fatalf("stats %+v", s)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logs.String(), testCall) || !strings.Contains(logs.String(), "reason=stop") {
		t.Fatalf("log lacks the call SID or the end: %s", logs.String())
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestServerRefusesUnsignedUpgradesBeforeUpgrading(t *testing.T) {
	h := newHarness(t, nil)
	withQuery := "wss://consent.example/voice/stream?CallSid=" + testCall
	cases := []struct {
		name, sig, query string
		status           int
	}{
		{"unsigned", "", "", http.StatusForbidden},
		{"wrong token", twiliosim.Sign("another-token", publicURL, nil), "", http.StatusForbidden},
		{"signed over the local URL", twiliosim.Sign(testToken, h.ws, nil), "", http.StatusForbidden},
		{"signed over a URL with a query", twiliosim.Sign(testToken, withQuery, nil), "CallSid=" + testCall, http.StatusForbidden},
		{"good signature, query added", twiliosim.Sign(testToken, publicURL, nil), "x=1", http.StatusForbidden},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, resp, err := h.dialWith(c.sig, c.query)
			if err == nil {
				conn.Close()
				t.Fatal("upgraded")
			}
			if resp == nil || resp.StatusCode != c.status {
				t.Fatalf("response %v, want %d", resp, c.status)
			}
		})
	}
	if s := h.srv.Stats(); s.Unauthorized != uint64(len(cases)) || s.Accepted != 0 {
		t.Fatalf("stats %+v", s)
	}
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	if len(h.rec.starts) != 0 {
		t.Fatal("consumer opened for a refused upgrade")
	}
}

func TestServerRefusesStreamsOverTheCap(t *testing.T) {
	h := newHarness(t, func(c *mediastream.Config) { c.MaxStreams = 2 })
	a, b := h.dial(t), h.dial(t)
	send(t, a, connectedMsg)
	send(t, b, connectedMsg)
	conn, resp, err := h.dialWith(twiliosim.Sign(testToken, publicURL, nil), "")
	if err == nil {
		conn.Close()
		t.Fatal("third stream upgraded")
	}
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", resp.StatusCode)
	}
	if s := h.srv.Stats(); s.Refused != 1 || s.Active != 2 {
		t.Fatalf("stats %+v", s)
	}
	// A freed place is taken again.
	a.Close()
	waitFor(t, func() bool { return h.srv.Stats().Active == 1 })
	h.dial(t)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Each malformed stream is closed with policy-violation and its reason,
// while a healthy stream beside it carries on to its stop.
func TestServerClosesAMalformedStreamAloneWithAReason(t *testing.T) {
	bad := sid("MZ", 0xbad)
	call := sid("CA", 0xbad)
	start := startMsg(1, bad, call, testAccount)
	media := func(seq, chunk, ts int) string { return mediaMsg(seq, bad, "inbound", chunk, ts, frameOf(1)) }
	cases := []struct {
		name   string
		msgs   []string
		reason string
	}{
		{"bad json", []string{start, `{"event":"media",`}, "not a JSON object"},
		{"wrong call sid", []string{startMsg(1, bad, "CA1234", testAccount)}, "callSid malformed"},
		{"wrong stream sid", []string{start, mediaMsg(2, "MZ12", "inbound", 1, 0, frameOf(1))}, "streamSid malformed"},
		{"wrong account", []string{startMsg(1, bad, call, sid("AC", 7))}, "start for another account"},
		{"media before start", []string{connectedMsg, media(2, 1, 0)}, "media before start"},
		{"second start", []string{start, media(2, 1, 0), strings.Replace(start, `"sequenceNumber":"1"`, `"sequenceNumber":"3"`, 1)}, "second start"},
		{"oversize message", []string{start, `{"event":"media","pad":"` + strings.Repeat("x", 20<<10) + `"}`}, "message too large"},
		{"bad base64", []string{start, strings.Replace(media(2, 1, 0), `"payload":"`, `"payload":"%%%%`, 1)}, "payload not base64"},
		{"sequence backwards", []string{start, media(5, 1, 0), media(4, 2, 20)}, "sequenceNumber not increasing"},
		{"wrong media format", []string{strings.Replace(start, `"sampleRate":8000`, `"sampleRate":16000`, 1)}, "mediaFormat not mulaw/8000/1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, nil)
			good := h.dial(t)
			done := make(chan struct{})
			go func() {
				defer close(done)
				playHealthy(t, good, testStream, testCall, 25, 2*time.Millisecond)
			}()
			defer func() { <-done }()
			conn := h.dial(t)
			for _, m := range c.msgs {
				if conn.WriteMessage(websocket.TextMessage, []byte(m)) != nil {
					break // the server may close before the last one lands
				}
			}
			ce := closeOf(t, conn)
			if c.reason == "message too large" {
				if ce.Code != websocket.CloseMessageTooBig {
					t.Fatalf("close %d %q, want 1009", ce.Code, ce.Text)
				}
			} else if ce.Code != websocket.ClosePolicyViolation || ce.Text != c.reason {
				t.Fatalf("close %d %q, want 1008 %q", ce.Code, ce.Text, c.reason)
			}
			<-done
			if ce := closeOf(t, good); ce.Code != websocket.CloseNormalClosure {
				t.Fatalf("healthy stream closed with %d %q", ce.Code, ce.Text)
			}
			if e := h.rec.waitEnd(t, testStream); e.Reason != mediastream.ReasonStop || e.Frames != 25 {
				t.Fatalf("healthy stream ended %+v", e)
			}
			// The bad stream's consumer, if it was opened, hears why.
			if h.rec.opened(bad) {
				if e := h.rec.waitEnd(t, bad); e.Reason != mediastream.ReasonMalformed || e.Detail != c.reason {
					t.Fatalf("bad stream ended %+v", e)
				}
			}
			waitFor(t, func() bool { return h.srv.Stats().Ended[mediastream.ReasonMalformed] == 1 })
			if s := h.srv.Stats(); s.Malformed[c.reason] != 1 {
				t.Fatalf("malformed counts %v", s.Malformed)
			}
		})
	}
}

// A peer that vanishes mid-frame (TCP closed, no close frame) frees the
// stream: onEnd once, no goroutine left (goleak checks at the end).
func TestServerFreesAStreamWhoseClientVanishes(t *testing.T) {
	h := newHarness(t, nil)
	c := h.dial(t)
	send(t, c, connectedMsg, startMsg(1, testStream, testCall, testAccount),
		mediaMsg(2, testStream, "inbound", 1, 0, frameOf(1)))
	waitFor(t, func() bool {
		h.rec.mu.Lock()
		defer h.rec.mu.Unlock()
		return len(h.rec.starts) == 1
	})
	// Half a websocket frame header, then the connection dies.
	if _, err := c.NetConn().Write([]byte{0x81, 0xFE}); err != nil {
		t.Fatal(err)
	}
	c.NetConn().Close()
	e := h.rec.waitEnd(t, testStream)
	if e.Reason != mediastream.ReasonClientClosed || e.Frames != 1 {
		t.Fatalf("end %+v", e)
	}
	waitFor(t, func() bool { return h.srv.Stats().Active == 0 })
	time.Sleep(20 * time.Millisecond)
	if n := len(h.rec.endsOf(testStream)); n != 1 {
		t.Fatalf("onEnd called %d times", n)
	}
}

func TestServerEndsAnIdleStream(t *testing.T) {
	h := newHarness(t, func(c *mediastream.Config) { c.ReadTimeout = 150 * time.Millisecond })
	c := h.dial(t)
	send(t, c, connectedMsg, startMsg(1, testStream, testCall, testAccount))
	if ce := closeOf(t, c); ce.Code != websocket.ClosePolicyViolation || ce.Text != "read timeout" {
		t.Fatalf("close %d %q", ce.Code, ce.Text)
	}
	if e := h.rec.waitEnd(t, testStream); e.Reason != mediastream.ReasonReadTimeout {
		t.Fatalf("end %+v", e)
	}
	// One that never even starts is ended the same way, without a consumer.
	c2 := h.dial(t)
	if ce := closeOf(t, c2); ce.Text != "read timeout" {
		t.Fatalf("close %d %q", ce.Code, ce.Text)
	}
	waitFor(t, func() bool { return h.srv.Stats().Ended[mediastream.ReasonReadTimeout] == 2 })
}

func TestServerTellsTheConsumerItRefused(t *testing.T) {
	h := newHarness(t, nil)
	h.rec.refuse = true
	c := h.dial(t)
	send(t, c, connectedMsg, startMsg(1, testStream, testCall, testAccount))
	if ce := closeOf(t, c); ce.Code != websocket.ClosePolicyViolation || ce.Text != "stream refused" {
		t.Fatalf("close %d %q", ce.Code, ce.Text)
	}
	if e := h.rec.waitEnd(t, testStream); e.Reason != mediastream.ReasonOpenRefused {
		t.Fatalf("end %+v", e)
	}
}

func TestServerShutdownClosesEveryStream(t *testing.T) {
	h := newHarness(t, nil)
	var conns []*websocket.Conn
	for i := 0; i < 3; i++ {
		c := h.dial(t)
		send(t, c, connectedMsg, startMsg(1, sid("MZ", i), sid("CA", i), testAccount),
			mediaMsg(2, sid("MZ", i), "outbound", 1, 0, frameOf(1)))
		conns = append(conns, c)
	}
	waitFor(t, func() bool {
		h.rec.mu.Lock()
		defer h.rec.mu.Unlock()
		return len(h.rec.starts) == 3
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		if ce := closeOf(t, c); ce.Code != websocket.CloseGoingAway {
			t.Fatalf("stream %d closed with %d", i, ce.Code)
		}
		// Shutdown waited for onEnd: it has happened already.
		if e := h.rec.endsOf(sid("MZ", i)); len(e) != 1 || e[0].Reason != mediastream.ReasonShutdown || e[0].Frames != 1 {
			t.Fatalf("stream %d ends %+v", i, e)
		}
	}
	if _, resp, err := h.dialWith(twiliosim.Sign(testToken, publicURL, nil), ""); err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("upgrade after shutdown: %v", err)
	}
}
