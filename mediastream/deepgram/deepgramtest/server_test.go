package deepgramtest_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/consentline/consentline/mediastream/deepgram/deepgramtest"
)

const goodQuery = "?encoding=mulaw&sample_rate=8000&channels=1&interim_results=true" +
	"&endpointing=300&utterance_end_ms=1000&vad_events=true&mip_opt_out=true"

func start(t *testing.T, cfg deepgramtest.Config) *deepgramtest.Server {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	srv := deepgramtest.NewServer(cfg)
	t.Cleanup(srv.Close)
	return srv
}

func connect(t *testing.T, srv *deepgramtest.Server, query, auth string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial(srv.URL+query, http.Header{"Authorization": {auth}})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, resp, err
}

func TestRefusesBeforeTheUpgrade(t *testing.T) {
	srv := start(t, deepgramtest.Config{APIKey: "k1"})
	for _, tc := range []struct {
		name, query, auth string
		status            int
		reason            string
	}{
		{"wrong key", goodQuery, "Token k2", 401, "INVALID_AUTH"},
		{"bearer scheme", goodQuery, "Bearer k1", 401, "INVALID_AUTH"},
		{"no mip_opt_out", strings.Replace(goodQuery, "&mip_opt_out=true", "", 1), "Token k1", 400, "mip_opt_out"},
		{"mip_opt_out false", strings.Replace(goodQuery, "mip_opt_out=true", "mip_opt_out=false", 1), "Token k1", 400, "mip_opt_out"},
		{"linear16", strings.Replace(goodQuery, "mulaw", "linear16", 1), "Token k1", 400, "encoding"},
		{"no utterance_end_ms", strings.Replace(goodQuery, "&utterance_end_ms=1000", "", 1), "Token k1", 400, "utterance_end_ms"},
	} {
		_, resp, err := connect(t, srv, tc.query, tc.auth)
		if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil || resp.StatusCode != tc.status {
			t.Errorf("%s: err %v, want HTTP %d", tc.name, err, tc.status)
			continue
		}
		if got := resp.Header.Get("dg-error"); !strings.Contains(got, tc.reason) {
			t.Errorf("%s: dg-error %q, want it to name %q", tc.name, got, tc.reason)
		}
	}
	if n := len(srv.Refusals()); n != 6 {
		t.Errorf("%d refusals recorded, want 6", n)
	}
	if n := len(srv.Sessions()); n != 0 {
		t.Errorf("%d sessions opened by refused handshakes", n)
	}
}

func readJSON(t *testing.T, c *websocket.Conn) map[string]any {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, data, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("message type %d", typ)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("server sent bad JSON: %v", err)
	}
	return m
}

func TestCountsWhatItReceivesAndAnswersCloseStream(t *testing.T) {
	srv := start(t, deepgramtest.Config{Script: []deepgramtest.Step{
		deepgramtest.SpeechStartedAt(20),
	}})
	c, _, err := connect(t, srv, goodQuery, "Token "+srv.APIKey)
	if err != nil {
		t.Fatal(err)
	}
	audio := bytes.Repeat([]byte{0xff}, 160)
	c.WriteMessage(websocket.BinaryMessage, audio)
	if m := readJSON(t, c); m["type"] != "SpeechStarted" || m["timestamp"] != 0.02 {
		t.Fatalf("first message %v", m)
	}
	c.WriteMessage(websocket.TextMessage, []byte(`{"type":"KeepAlive"}`))
	c.WriteMessage(websocket.TextMessage, []byte(`{"type":"Finalize"}`))
	if m := readJSON(t, c); m["type"] != "Results" || m["is_final"] != true || m["from_finalize"] != true {
		t.Fatalf("Finalize answered with %v", m)
	}
	c.WriteMessage(websocket.TextMessage, []byte(`{"type":"CloseStream"}`))
	if m := readJSON(t, c); m["type"] != "Metadata" || m["duration"] != 0.02 || m["channels"] != 1.0 {
		t.Fatalf("CloseStream answered with %v", m)
	}
	_, _, err = c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("after Metadata: %v, want a normal close", err)
	}
	st := srv.Last()
	if st.AudioBytes != 160 || st.KeepAlives != 1 || st.Finalizes != 1 || st.CloseStreams != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestEmptyAudioIsClosedAsBadData(t *testing.T) {
	srv := start(t, deepgramtest.Config{})
	c, _, err := connect(t, srv, goodQuery, "Token "+srv.APIKey)
	if err != nil {
		t.Fatal(err)
	}
	c.WriteMessage(websocket.BinaryMessage, nil)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != deepgramtest.CodeBadData || ce.Text != deepgramtest.ReasonBadData {
		t.Fatalf("after an empty frame: %v, want 1008 DATA-0000", err)
	}
}

func TestHeartbeatWhileAudioFlows(t *testing.T) {
	srv := start(t, deepgramtest.Config{HeartbeatMS: 100})
	c, _, err := connect(t, srv, goodQuery, "Token "+srv.APIKey)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 { // 100 ms
		c.WriteMessage(websocket.BinaryMessage, bytes.Repeat([]byte{0xff}, 160))
	}
	m := readJSON(t, c)
	if m["type"] != "Results" || m["is_final"] != false {
		t.Fatalf("heartbeat %v, want an empty interim Results", m)
	}
}
