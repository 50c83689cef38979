package mediastream_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/mediastream"
)

const (
	testToken   = "test-auth-token"
	testAccount = "AC0123456789abcdef0123456789abcdef"
	testCall    = "CA0123456789abcdef0123456789abcdef"
	testStream  = "MZ0123456789abcdef0123456789abcdef"
	publicURL   = "wss://consent.example/voice/stream"
)

func startMsg(seq int, streamSID, callSID, account string, tracks ...string) string {
	if len(tracks) == 0 {
		tracks = []string{"inbound", "outbound"}
	}
	return fmt.Sprintf(`{"event":"start","sequenceNumber":"%d","start":{"accountSid":"%s","streamSid":"%s","callSid":"%s","tracks":["%s"],"customParameters":{"attempt":"0","lang":"en-US","script":"hipaa-consent"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"%s"}`,
		seq, account, streamSID, callSID, strings.Join(tracks, `","`), streamSID)
}

func mediaMsg(seq int, streamSID, track string, chunk, ts int, frame []byte) string {
	return fmt.Sprintf(`{"event":"media","sequenceNumber":"%d","media":{"track":"%s","chunk":"%d","timestamp":"%d","payload":"%s"},"streamSid":"%s"}`,
		seq, track, chunk, ts, base64.StdEncoding.EncodeToString(frame), streamSID)
}

func stopMsg(seq int, streamSID, callSID, account string) string {
	return fmt.Sprintf(`{"event":"stop","sequenceNumber":"%d","stop":{"accountSid":"%s","callSid":"%s"},"streamSid":"%s"}`,
		seq, account, callSID, streamSID)
}

const connectedMsg = `{"event":"connected","protocol":"Call","version":"1.0.0"}`

// frameOf returns a 160-byte frame filled with b, so tests can tell frames
// apart.
func frameOf(b byte) []byte { return bytes.Repeat([]byte{b}, mediastream.FrameBytes) }

// recorder is a consumer that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	starts []mediastream.Start
	frames map[string][]gotFrame // by stream SID
	ends   map[string][]mediastream.End
	ended  chan string
	refuse bool
}

type gotFrame struct {
	MS                int64
	Inbound, Outbound byte // first byte, 0 when nil
	HasIn, HasOut     bool
}

func newRecorder() *recorder {
	return &recorder{frames: map[string][]gotFrame{}, ends: map[string][]mediastream.End{}, ended: make(chan string, 64)}
}

func (r *recorder) open(_ context.Context, s mediastream.Start) (func(mediastream.Frame), func(mediastream.End), error) {
	r.mu.Lock()
	r.starts = append(r.starts, s)
	refuse := r.refuse
	r.mu.Unlock()
	sid := s.StreamSID
	onEnd := func(e mediastream.End) {
		r.mu.Lock()
		r.ends[sid] = append(r.ends[sid], e)
		r.mu.Unlock()
		r.ended <- sid
	}
	if refuse {
		return nil, onEnd, fmt.Errorf("no such call")
	}
	onFrame := func(f mediastream.Frame) {
		g := gotFrame{MS: f.MS, HasIn: f.Inbound != nil, HasOut: f.Outbound != nil}
		if f.Inbound != nil {
			g.Inbound = f.Inbound[0]
		}
		if f.Outbound != nil {
			g.Outbound = f.Outbound[0]
		}
		r.mu.Lock()
		r.frames[sid] = append(r.frames[sid], g)
		r.mu.Unlock()
	}
	return onFrame, onEnd, nil
}

// waitEnd waits for the stream's onEnd and returns it.
func (r *recorder) waitEnd(t *testing.T, sid string) mediastream.End {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		e := r.ends[sid]
		r.mu.Unlock()
		if len(e) > 0 {
			return e[0]
		}
		select {
		case <-r.ended:
		case <-deadline:
			t.Fatalf("stream %s: no onEnd", sid)
		}
	}
}

func (r *recorder) opened(sid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.starts {
		if s.StreamSID == sid {
			return true
		}
	}
	return false
}

func (r *recorder) endsOf(sid string) []mediastream.End {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]mediastream.End(nil), r.ends[sid]...)
}

func (r *recorder) framesOf(sid string) []gotFrame {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]gotFrame(nil), r.frames[sid]...)
}

type harness struct {
	srv  *mediastream.Server
	http *httptest.Server
	rec  *recorder
	ws   string // ws:// URL of the local listener
}

func newHarness(t *testing.T, tweak func(*mediastream.Config)) *harness {
	t.Helper()
	rec := newRecorder()
	cfg := mediastream.Config{
		PublicURL: publicURL, AuthToken: testToken, AccountSID: testAccount,
		MaxStreams: 10, ReadTimeout: 5 * time.Second, Open: rec.open,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := mediastream.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	h := &harness{srv: srv, http: ts, rec: rec, ws: "ws" + strings.TrimPrefix(ts.URL, "http") + "/voice/stream"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		ts.Close()
	})
	return h
}

// dial opens a stream signed as Twilio signs it.
func (h *harness) dial(t *testing.T) *websocket.Conn {
	t.Helper()
	c, resp, err := h.dialWith(twiliosim.Sign(testToken, publicURL, nil), "")
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial: %v (status %d)", err, status)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (h *harness) dialWith(sig, query string) (*websocket.Conn, *http.Response, error) {
	hdr := http.Header{}
	if sig != "" {
		hdr.Set("X-Twilio-Signature", sig)
	}
	u := h.ws
	if query != "" {
		u += "?" + query
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.DefaultDialer.DialContext(ctx, u, hdr)
	if resp != nil {
		resp.Body.Close()
	}
	return c, resp, err
}

func send(t *testing.T, c *websocket.Conn, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		if err := c.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
}

// closeOf reads until the server closes and returns its close frame.
func closeOf(t *testing.T, c *websocket.Conn) *websocket.CloseError {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			ce, ok := err.(*websocket.CloseError)
			if !ok {
				t.Fatalf("read: %v, want a close frame", err)
			}
			return ce
		}
	}
}
