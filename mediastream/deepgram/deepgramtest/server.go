// Package deepgramtest is a local fake of Deepgram's live transcription endpoint
// for tests: an httptest server that checks the handshake the way ConsentLine's
// client must make it, counts what it receives, and answers with a scripted
// recognition in Deepgram's documented message shapes (Results, SpeechStarted,
// UtteranceEnd, Metadata; see package deepgram for the pages). Fault steps drop
// the connection, stall, close with 1008 or 1011, or send malformed JSON.
//
// Time in a script is audio time: AtAudioMS counts the μ-law bytes received at
// 8 bytes per millisecond, so a test controls when each message comes by how
// much audio it sends, not by sleeping.
package deepgramtest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
)

// BytesPerMS is how much 8 kHz μ-law audio makes one millisecond.
const BytesPerMS = 8

// Close codes and payloads Deepgram documents for streaming errors.
const (
	CodeBadData   = websocket.ClosePolicyViolation   // 1008
	ReasonBadData = "DATA-0000"                      // payload cannot be decoded as audio
	CodeTimeout   = websocket.CloseInternalServerErr // 1011
	ReasonNoAudio = "NET-0001"                       // no audio or KeepAlive within the timeout window
)

// Kind is what a Step does.
type Kind int

// The step kinds: four recognition messages, then four faults.
const (
	SpeechStarted Kind = iota + 1 // send SpeechStarted with the audio time
	Interim                       // send an interim Results (is_final=false)
	Final                         // send a final Results (is_final=true)
	UtteranceEnd                  // send UtteranceEnd with the last final's end
	Drop                          // close the TCP connection without a close frame
	Stall                         // from now on read and count, but send nothing and answer nothing
	CloseWith                     // send a close frame with Code and Reason, then end
	Malformed                     // send a text message that is not JSON
)

// Step is one scripted action, taken once AtAudioMS of audio has arrived and
// every earlier step has been taken.
type Step struct {
	AtAudioMS   int
	Kind        Kind
	Transcript  string  // Interim, Final
	Confidence  float64 // Interim, Final
	SpeechFinal bool    // Final
	Code        int     // CloseWith
	Reason      string  // CloseWith
}

// SpeechStartedAt sends SpeechStarted once ms of audio have arrived.
func SpeechStartedAt(ms int) Step { return Step{AtAudioMS: ms, Kind: SpeechStarted} }

// InterimAt sends an interim result once ms of audio have arrived. Finalize or
// CloseStream before the next Final flushes it as a final result.
func InterimAt(ms int, transcript string, confidence float64) Step {
	return Step{AtAudioMS: ms, Kind: Interim, Transcript: transcript, Confidence: confidence}
}

// FinalAt sends a final result once ms of audio have arrived.
func FinalAt(ms int, transcript string, confidence float64, speechFinal bool) Step {
	return Step{AtAudioMS: ms, Kind: Final, Transcript: transcript, Confidence: confidence, SpeechFinal: speechFinal}
}

// UtteranceEndAt sends UtteranceEnd once ms of audio have arrived.
func UtteranceEndAt(ms int) Step { return Step{AtAudioMS: ms, Kind: UtteranceEnd} }

// DropAt closes the TCP connection, with no close frame, once ms of audio have arrived.
func DropAt(ms int) Step { return Step{AtAudioMS: ms, Kind: Drop} }

// StallAt stops all answers once ms of audio have arrived.
func StallAt(ms int) Step { return Step{AtAudioMS: ms, Kind: Stall} }

// CloseAt closes with code and reason once ms of audio have arrived.
func CloseAt(ms, code int, reason string) Step {
	return Step{AtAudioMS: ms, Kind: CloseWith, Code: code, Reason: reason}
}

// MalformedAt sends a truncated JSON message once ms of audio have arrived.
func MalformedAt(ms int) Step { return Step{AtAudioMS: ms, Kind: Malformed} }

// Config configures a Server.
type Config struct {
	// APIKey is the only key accepted; any other Authorization gets 401 before
	// the upgrade. Default "test-key".
	APIKey string
	// Script is played in order on every session.
	Script []Step
	// IdleTimeout: with neither audio nor KeepAlive for this long the server
	// closes with 1011 NET-0001, as Deepgram does after 10 s (the default).
	// Negative: never.
	IdleTimeout time.Duration
	// HeartbeatMS: after this much audio with nothing sent, the server sends an
	// empty interim result, as Deepgram keeps sending results while audio flows.
	// Default 1000; negative: never.
	HeartbeatMS int
}

// Refusal is a handshake the server refused.
type Refusal struct {
	Status int
	Reason string
}

// SessionStats is what one accepted connection received.
type SessionStats struct {
	RawQuery     string // the query exactly as the client sent it
	Query        url.Values
	AudioBytes   int64
	KeepAlives   int
	Finalizes    int
	CloseStreams int
	OtherText    int // text messages of any other type
}

// Server is a running fake. Its URL goes in deepgram.Config.URL.
type Server struct {
	URL    string // ws://127.0.0.1:port/v1/listen
	APIKey string

	cfg Config
	hs  *httptest.Server
	wg  sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	conns    map[*websocket.Conn]struct{}
	sessions []*SessionStats
	refused  []Refusal
}

// NewServer starts a fake on a loopback port. Close it when done.
func NewServer(cfg Config) *Server {
	if cfg.APIKey == "" {
		cfg.APIKey = "test-key"
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 10 * time.Second
	}
	if cfg.HeartbeatMS == 0 {
		cfg.HeartbeatMS = 1000
	}
	s := &Server{cfg: cfg, APIKey: cfg.APIKey, conns: map[*websocket.Conn]struct{}{}}
	s.hs = httptest.NewServer(http.HandlerFunc(s.handle))
	s.URL = "ws" + s.hs.URL[len("http"):] + "/v1/listen"
	return s
}

// Close ends every session and waits for their goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.NetConn().Close()
	}
	s.mu.Unlock()
	s.hs.Close()
	s.wg.Wait()
}

// Sessions returns a snapshot of every accepted session, oldest first.
func (s *Server) Sessions() []SessionStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SessionStats, len(s.sessions))
	for i, ss := range s.sessions {
		out[i] = *ss
	}
	return out
}

// Last returns a snapshot of the newest session (zero if none).
func (s *Server) Last() SessionStats {
	all := s.Sessions()
	if len(all) == 0 {
		return SessionStats{}
	}
	return all[len(all)-1]
}

// Refusals returns the handshakes refused so far.
func (s *Server) Refusals() []Refusal {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Refusal(nil), s.refused...)
}

func (s *Server) refuse(w http.ResponseWriter, status int, reason string) {
	s.mu.Lock()
	s.refused = append(s.refused, Refusal{Status: status, Reason: reason})
	s.mu.Unlock()
	// Deepgram explains a refused upgrade in dg-error and the body.
	w.Header().Set("dg-error", reason)
	w.Header().Set("dg-request-id", uuid.NewString())
	http.Error(w, reason, status)
}

// checkQuery returns why q is not the query ConsentLine's client must send, or "".
func checkQuery(q url.Values) string {
	for _, kv := range [][2]string{
		{"encoding", "mulaw"}, {"sample_rate", "8000"}, {"channels", "1"},
		{"interim_results", "true"}, {"vad_events", "true"}, {"mip_opt_out", "true"},
	} {
		if got := q.Get(kv[0]); got != kv[1] {
			return "query parameter " + kv[0] + " must be " + kv[1] + ", got " + strconv.Quote(got)
		}
	}
	if e := q.Get("endpointing"); e != "false" {
		if n, err := strconv.Atoi(e); err != nil || n < 0 {
			return "query parameter endpointing must be milliseconds or false"
		}
	}
	if n, err := strconv.Atoi(q.Get("utterance_end_ms")); err != nil || n <= 0 {
		return "query parameter utterance_end_ms must be positive milliseconds"
	}
	return ""
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/listen" {
		s.refuse(w, http.StatusNotFound, "no such path")
		return
	}
	if r.Header.Get("Authorization") != "Token "+s.cfg.APIKey {
		s.refuse(w, http.StatusUnauthorized, "INVALID_AUTH: invalid credentials")
		return
	}
	if reason := checkQuery(r.URL.Query()); reason != "" {
		s.refuse(w, http.StatusBadRequest, reason)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "closing", http.StatusServiceUnavailable)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	requestID := uuid.NewString()
	conn, err := (&websocket.Upgrader{}).Upgrade(w, r, http.Header{"dg-request-id": {requestID}})
	if err != nil {
		return // the upgrader has answered
	}
	defer conn.Close()
	stats := &SessionStats{RawQuery: r.URL.RawQuery, Query: r.URL.Query()}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.conns[conn] = struct{}{}
	s.sessions = append(s.sessions, stats)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()
	ss := &session{srv: s, conn: conn, stats: stats, requestID: requestID, audioHash: sha256.New()}
	ss.run()
}

// session plays the script on one connection. Its one goroutine does every
// read and write.
type session struct {
	srv       *Server
	conn      *websocket.Conn
	stats     *SessionStats
	requestID string
	audioHash hash.Hash

	audioBytes int64
	next       int   // next script step
	stalled    bool  // a Stall step was taken
	cursorMS   int   // end of the last final result
	lastSentMS int   // audio time of the last message sent
	pending    *Step // the interim since the last final, flushed by Finalize or CloseStream
}

func (ss *session) audioMS() int { return int(ss.audioBytes / BytesPerMS) }

func (ss *session) count(f func(*SessionStats)) {
	ss.srv.mu.Lock()
	f(ss.stats)
	ss.srv.mu.Unlock()
}

func (ss *session) run() {
	idle := ss.srv.cfg.IdleTimeout
	for {
		if idle > 0 && !ss.stalled {
			ss.conn.SetReadDeadline(time.Now().Add(idle))
		} else {
			ss.conn.SetReadDeadline(time.Time{})
		}
		typ, data, err := ss.conn.ReadMessage()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				ss.closeWith(CodeTimeout, ReasonNoAudio)
			}
			return
		}
		switch typ {
		case websocket.BinaryMessage:
			if len(data) == 0 {
				ss.closeWith(CodeBadData, ReasonBadData)
				return
			}
			ss.audioBytes += int64(len(data))
			ss.audioHash.Write(data)
			ss.count(func(st *SessionStats) { st.AudioBytes += int64(len(data)) })
			if !ss.stalled && ss.advance() {
				return
			}
		case websocket.TextMessage:
			var m struct {
				Type string `json:"type"`
			}
			_ = json.Unmarshal(data, &m)
			switch m.Type {
			case "KeepAlive":
				ss.count(func(st *SessionStats) { st.KeepAlives++ })
			case "Finalize":
				ss.count(func(st *SessionStats) { st.Finalizes++ })
				if !ss.stalled {
					ss.flush(true)
				}
			case "CloseStream":
				ss.count(func(st *SessionStats) { st.CloseStreams++ })
				if ss.stalled {
					continue
				}
				if ss.pending != nil {
					ss.flush(false)
				}
				ss.sendMetadata()
				ss.closeWith(websocket.CloseNormalClosure, "")
				return
			default:
				ss.count(func(st *SessionStats) { st.OtherText++ })
			}
		}
	}
}

// advance takes every step the audio has reached; true means the session ended.
func (ss *session) advance() bool {
	script := ss.srv.cfg.Script
	for ss.next < len(script) && script[ss.next].AtAudioMS <= ss.audioMS() {
		st := script[ss.next]
		ss.next++
		switch st.Kind {
		case SpeechStarted:
			ss.send(map[string]any{"type": "SpeechStarted", "channel": []int{0, 1}, "timestamp": seconds(ss.audioMS())})
		case Interim:
			ss.sendResult(st.Transcript, st.Confidence, false, false, false)
			ss.pending = &st
		case Final:
			ss.sendResult(st.Transcript, st.Confidence, true, st.SpeechFinal, false)
		case UtteranceEnd:
			ss.send(map[string]any{"type": "UtteranceEnd", "channel": []int{0, 1}, "last_word_end": seconds(ss.cursorMS)})
		case Drop:
			ss.conn.NetConn().Close()
			return true
		case Stall:
			ss.stalled = true
			return false
		case CloseWith:
			ss.closeWith(st.Code, st.Reason)
			return true
		case Malformed:
			ss.write([]byte(`{"type":"Results","channel":{"alternatives":[`))
		}
	}
	if hb := ss.srv.cfg.HeartbeatMS; hb > 0 && ss.audioMS()-ss.lastSentMS >= hb {
		ss.sendResult("", 0, false, false, false)
	}
	return false
}

// flush answers Finalize (fromFinalize) or CloseStream: the pending interim, or
// an empty transcript, as a final result.
func (ss *session) flush(fromFinalize bool) {
	text, conf := "", 0.0
	if ss.pending != nil {
		text, conf = ss.pending.Transcript, ss.pending.Confidence
	}
	ss.sendResult(text, conf, true, false, fromFinalize)
}

type alternative struct {
	Transcript string  `json:"transcript"`
	Confidence float64 `json:"confidence"`
	Words      []any   `json:"words"`
}

// results is Deepgram's Results message.
type results struct {
	Type         string  `json:"type"`
	ChannelIndex []int   `json:"channel_index"`
	Duration     float64 `json:"duration"`
	Start        float64 `json:"start"`
	IsFinal      bool    `json:"is_final"`
	SpeechFinal  bool    `json:"speech_final"`
	FromFinalize bool    `json:"from_finalize,omitempty"`
	Channel      struct {
		Alternatives []alternative `json:"alternatives"`
	} `json:"channel"`
	Metadata struct {
		RequestID string `json:"request_id"`
	} `json:"metadata"`
}

func (ss *session) sendResult(text string, conf float64, isFinal, speechFinal, fromFinalize bool) {
	now := ss.audioMS()
	r := results{
		Type: "Results", ChannelIndex: []int{0, 1},
		Start: seconds(ss.cursorMS), Duration: seconds(now - ss.cursorMS),
		IsFinal: isFinal, SpeechFinal: speechFinal, FromFinalize: fromFinalize,
	}
	r.Channel.Alternatives = []alternative{{Transcript: text, Confidence: conf, Words: []any{}}}
	r.Metadata.RequestID = ss.requestID
	if isFinal {
		ss.cursorMS = now
		ss.pending = nil
	}
	ss.send(r)
}

func (ss *session) sendMetadata() {
	ss.send(map[string]any{
		"type":            "Metadata",
		"transaction_key": "deprecated",
		"request_id":      ss.requestID,
		"sha256":          hex.EncodeToString(ss.audioHash.Sum(nil)),
		"created":         time.Now().UTC().Format(time.RFC3339Nano),
		"duration":        seconds(ss.audioMS()),
		"channels":        1,
	})
}

func (ss *session) send(v any) {
	data, err := json.Marshal(v)
	if err != nil {
		return // the fake's own types always marshal
	}
	ss.write(data)
}

func (ss *session) write(data []byte) {
	ss.lastSentMS = ss.audioMS()
	ss.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = ss.conn.WriteMessage(websocket.TextMessage, data)
}

// closeWith sends a close frame and waits briefly for the client's answer, so
// the frame is read before the TCP connection goes (RFC 6455 §7.1.1).
func (ss *session) closeWith(code int, reason string) {
	deadline := time.Now().Add(time.Second)
	_ = ss.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), deadline)
	ss.conn.SetReadDeadline(deadline)
	for {
		if _, _, err := ss.conn.ReadMessage(); err != nil {
			return
		}
	}
}

func seconds(ms int) float64 { return float64(ms) / 1000 }
