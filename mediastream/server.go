package mediastream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/twilio/twilio-go/client"

	"github.com/consentline/consentline/internal/telemetry"
)

// Defaults for Config's zero values.
const (
	// DefaultMaxStreams is what one instance on two cores was measured to
	// follow in real time with the product's consumer, under one core
	// (BenchmarkConcurrentStreams/measured): about 165 KB of memory each.
	DefaultMaxStreams      = 1000
	DefaultReadTimeout     = 10 * time.Second
	DefaultMaxMessageBytes = 16 << 10
)

// Config configures a Server.
type Config struct {
	// PublicURL is the stream URL exactly as the TwiML's <Stream url>
	// writes it (wss://host/path, no query). Twilio signs the upgrade
	// over it, and the Server only answers requests for its path.
	PublicURL  string
	AuthToken  string
	AccountSID string // the only account whose streams are accepted

	// MaxStreams caps concurrent streams; an upgrade above it gets 503.
	MaxStreams int
	// ReadTimeout ends a stream that sends nothing for this long. Twilio
	// sends a media message every 20 ms per track.
	ReadTimeout time.Duration
	// MaxMessageBytes bounds one websocket message (a media message is
	// about 400 bytes; start with its parameters a few KB); at most the
	// package's MaxMessageBytes.
	MaxMessageBytes int64
	// MaxLag is how many 20 ms slots one track may run ahead of the other
	// before a slot is emitted without the lagging track (DefaultMaxLag).
	MaxLag int

	Logger *slog.Logger
	// Metrics counts refused upgrades (nil: none).
	Metrics *telemetry.Metrics

	// Open is called once per stream, after its start message. It returns
	// the stream's consumer: onFrame gets every aligned 20 ms slot in
	// order, onEnd is called exactly once when the stream ends. Both run
	// on the stream's own goroutine, never concurrently. ctx ends with
	// the stream. If Open returns an error the stream is closed; onEnd,
	// if returned, is still called, with ReasonOpenRefused.
	Open func(ctx context.Context, start Start) (onFrame func(Frame), onEnd func(End), err error)
}

// Reason says why a stream ended.
type Reason string

// Why streams end.
const (
	ReasonStop         Reason = "stop"          // Twilio's stop message
	ReasonClientClosed Reason = "client_closed" // the peer closed or vanished without stop
	ReasonReadTimeout  Reason = "read_timeout"  // nothing received for ReadTimeout
	ReasonMalformed    Reason = "malformed"     // a message refused by shape, order or size
	ReasonShutdown     Reason = "shutdown"      // Server.Shutdown
	ReasonOpenRefused  Reason = "open_refused"  // Config.Open returned an error
)

var reasons = []Reason{ReasonStop, ReasonClientClosed, ReasonReadTimeout, ReasonMalformed, ReasonShutdown, ReasonOpenRefused}

// End reports a stream's end to its consumer.
type End struct {
	Reason Reason
	// Detail is the refusal for ReasonMalformed (fixed text, no data).
	Detail string
	// Frames is how many frames onFrame received; LateFrames how many
	// frames arrived after their slot was emitted without them.
	Frames, LateFrames int64
}

// Stats are the Server's counters since it was made.
type Stats struct {
	Active       int64             // streams open now
	Accepted     uint64            // upgrades accepted
	Refused      uint64            // upgrades refused at MaxStreams or while shutting down (503)
	Unauthorized uint64            // upgrades refused for a missing or wrong signature (403)
	Ended        map[Reason]uint64 // streams ended, by reason
	Malformed    map[string]uint64 // ReasonMalformed ends, by refusal
	LateFrames   uint64            // frames dropped for arriving after their slot
}

// Server accepts Twilio's Media Streams websockets. It is an http.Handler
// for the stream URL's path; each stream runs on its request's goroutine.
type Server struct {
	cfg       Config
	path      string
	validator client.RequestValidator
	upgrader  websocket.Upgrader
	log       *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	streams  map[*stream]struct{}
	closing  bool
	refusals map[string]uint64

	accepted, refused, unauthorized, late atomic.Uint64
	ended                                 [6]atomic.Uint64 // indexed like reasons
}

// NewServer checks cfg and returns a Server.
func NewServer(cfg Config) (*Server, error) {
	u, err := url.Parse(cfg.PublicURL)
	if err != nil || (u.Scheme != "wss" && u.Scheme != "ws") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("mediastream: PublicURL must be a ws(s):// URL without query")
	}
	if cfg.AuthToken == "" || cfg.AccountSID == "" || cfg.Open == nil {
		return nil, errors.New("mediastream: AuthToken, AccountSID and Open are required")
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = DefaultMaxMessageBytes
	}
	cfg.MaxMessageBytes = min(cfg.MaxMessageBytes, MaxMessageBytes)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	path := u.Path
	if path == "" {
		path = "/"
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg, path: path, validator: client.NewRequestValidator(cfg.AuthToken), log: cfg.Logger,
		ctx: ctx, cancel: cancel, streams: map[*stream]struct{}{}, refusals: map[string]uint64{},
	}
	s.upgrader = websocket.Upgrader{
		// Small read buffer, and no write buffer held per connection: the
		// server only ever writes a close frame (WriteControl, unbuffered).
		ReadBufferSize:  1024,
		WriteBufferPool: &sync.Pool{},
		// Twilio sends no Origin; the signature is the authentication.
		CheckOrigin: func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, _ *http.Request, status int, _ error) {
			http.Error(w, http.StatusText(status), status)
		},
	}
	return s, nil
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Accepted: s.accepted.Load(), Refused: s.refused.Load(), Unauthorized: s.unauthorized.Load(),
		LateFrames: s.late.Load(), Ended: map[Reason]uint64{}, Malformed: map[string]uint64{},
	}
	for i, r := range reasons {
		st.Ended[r] = s.ended[i].Load()
	}
	s.mu.Lock()
	st.Active = int64(len(s.streams))
	for k, v := range s.refusals {
		st.Malformed[k] = v
	}
	s.mu.Unlock()
	return st
}

// ServeHTTP authenticates and upgrades one stream and serves it until it
// ends.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != s.path {
		http.NotFound(w, r)
		return
	}
	sig := r.Header.Get("X-Twilio-Signature")
	// The URL Twilio signs has no query; one here was not sent by Twilio
	// from our TwiML, whatever it is signed with.
	if sig == "" || r.URL.RawQuery != "" || !s.validator.Validate(s.cfg.PublicURL, map[string]string{}, sig) {
		s.unauthorized.Add(1)
		s.cfg.Metrics.StreamRefused(telemetry.StreamRefusedSignature)
		s.log.Warn("media stream refused: no valid Twilio signature", "path", r.URL.Path, "signature_present", sig != "")
		http.Error(w, "invalid Twilio signature", http.StatusForbidden)
		return
	}
	st := &stream{srv: s}
	s.mu.Lock()
	if s.closing || len(s.streams) >= s.cfg.MaxStreams {
		closing := s.closing
		s.mu.Unlock()
		s.refused.Add(1)
		s.cfg.Metrics.StreamRefused(telemetry.StreamRefusedCapacity)
		s.log.Warn("media stream refused", "at_capacity", !closing, "shutting_down", closing, "max_streams", s.cfg.MaxStreams)
		http.Error(w, "too many media streams", http.StatusServiceUnavailable)
		return
	}
	s.streams[st] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer s.forget(st)

	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		// Upgrade has answered with an HTTP error already.
		return
	}
	s.accepted.Add(1)
	if !st.attach(conn) {
		// Shutdown began between admission and upgrade.
		closeWith(conn, websocket.CloseGoingAway, "server shutting down")
		conn.Close()
		st.end(ReasonShutdown, "")
		return
	}
	st.run()
}

func (s *Server) forget(st *stream) {
	s.mu.Lock()
	delete(s.streams, st)
	s.mu.Unlock()
}

// Shutdown refuses new streams, closes every open one with going-away and
// waits for their goroutines (and consumers' onEnd) until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	open := make([]*stream, 0, len(s.streams))
	for st := range s.streams {
		open = append(open, st)
	}
	s.mu.Unlock()
	s.cancel()
	for _, st := range open {
		st.shutdown()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mediastream: shutdown: %w", ctx.Err())
	}
}

// Close is Shutdown without a deadline.
func (s *Server) Close() error { return s.Shutdown(context.Background()) }

// stream is one websocket's state, owned by its goroutine except where
// marked.
type stream struct {
	srv *Server

	mu       sync.Mutex // guards conn and stopping against shutdown
	conn     *websocket.Conn
	stopping bool

	buf     []byte
	parser  Parser
	aligner *Aligner
	onFrame func(Frame)
	onEnd   func(End)
	cancel  context.CancelFunc
	sids    []any // stream_sid, call_sid for logs
}

// attach records the connection; false when shutdown already began.
func (st *stream) attach(conn *websocket.Conn) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.conn = conn
	return !st.stopping
}

// shutdown is called from Server.Shutdown: it says going-away and closes
// the socket, which ends the stream's blocked read.
func (st *stream) shutdown() {
	st.mu.Lock()
	st.stopping = true
	conn := st.conn
	st.mu.Unlock()
	if conn != nil {
		closeWith(conn, websocket.CloseGoingAway, "server shutting down")
		conn.NetConn().Close()
	}
}

func (st *stream) isStopping() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.stopping
}

// closeWith sends a close frame; WriteControl is safe alongside reads.
func closeWith(conn *websocket.Conn, code int, text string) {
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
}

func (st *stream) run() {
	s := st.srv
	defer st.conn.Close()
	st.conn.SetReadLimit(s.cfg.MaxMessageBytes)
	st.parser.AccountSID = s.cfg.AccountSID
	st.buf = make([]byte, 0, 1024)
	// The read deadline is moved on only every ReadTimeout/8 (a timer
	// update per message is a measurable cost at a thousand streams), by
	// 9/8 of ReadTimeout: a silent stream times out after between
	// ReadTimeout and 9/8 of it.
	refresh := s.cfg.ReadTimeout / 8
	var refreshed time.Time
	for {
		if now := time.Now(); now.Sub(refreshed) >= refresh {
			_ = st.conn.SetReadDeadline(now.Add(s.cfg.ReadTimeout + refresh))
			refreshed = now
		}
		data, err := st.read()
		if err != nil {
			st.readFailed(err)
			return
		}
		m, err := st.parser.Parse(data)
		if err != nil {
			st.refuse(err)
			return
		}
		switch m.Event {
		case EventStart:
			if !st.open(m.Start) {
				return
			}
		case EventMedia:
			st.aligner.Push(m.Media.Track, m.Media.Timestamp, m.Media.Payload)
		case EventStop:
			closeWith(st.conn, websocket.CloseNormalClosure, "")
			st.end(ReasonStop, "")
			return
		}
	}
}

// read reads one text message into the stream's buffer.
func (st *stream) read() ([]byte, error) {
	typ, r, err := st.conn.NextReader()
	if err != nil {
		return nil, err
	}
	if typ != websocket.TextMessage {
		return nil, refuse("binary message")
	}
	b := st.buf[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			st.buf = b
			return b, nil
		}
		if err != nil {
			st.buf = b
			return nil, err
		}
	}
}

func (st *stream) open(start Start) bool {
	s := st.srv
	st.sids = []any{"stream_sid", start.StreamSID, "call_sid", start.CallSID}
	ctx, cancel := context.WithCancel(s.ctx)
	st.cancel = cancel
	onFrame, onEnd, err := s.cfg.Open(ctx, start)
	st.onEnd = onEnd
	if err != nil {
		s.log.Warn("media stream refused by its consumer", append(st.sids, "error", err.Error())...)
		closeWith(st.conn, websocket.ClosePolicyViolation, "stream refused")
		st.end(ReasonOpenRefused, "")
		return false
	}
	if onFrame == nil {
		onFrame = func(Frame) {}
	}
	st.onFrame = onFrame
	st.aligner = NewAligner(start.Tracks, s.cfg.MaxLag, onFrame)
	s.log.Info("media stream started", append(st.sids, "tracks", len(start.Tracks))...)
	return true
}

// readFailed ends the stream after a failed read, naming why.
func (st *stream) readFailed(err error) {
	var pe *ProtocolError
	var ne net.Error
	switch {
	case st.isStopping():
		st.end(ReasonShutdown, "")
	case errors.As(err, &pe):
		st.refuse(err)
	case errors.Is(err, websocket.ErrReadLimit):
		// gorilla has already sent close 1009 (message too big).
		st.srv.noteRefusal("message too large")
		st.end(ReasonMalformed, "message too large")
	case errors.As(err, &ne) && ne.Timeout():
		closeWith(st.conn, websocket.ClosePolicyViolation, "read timeout")
		st.end(ReasonReadTimeout, "")
	default:
		// A close frame, or the connection gone without one.
		st.end(ReasonClientClosed, "")
	}
}

// refuse closes the stream for a message refused by the parser.
func (st *stream) refuse(err error) {
	reason := "malformed"
	var pe *ProtocolError
	if errors.As(err, &pe) {
		reason = pe.Reason
	}
	st.srv.noteRefusal(reason)
	closeWith(st.conn, websocket.ClosePolicyViolation, reason)
	st.end(ReasonMalformed, reason)
}

func (s *Server) noteRefusal(reason string) {
	s.mu.Lock()
	s.refusals[reason]++
	s.mu.Unlock()
}

// end flushes the aligner, tells the consumer and counts the end, once.
func (st *stream) end(reason Reason, detail string) {
	s := st.srv
	e := End{Reason: reason, Detail: detail}
	if st.aligner != nil {
		if reason != ReasonOpenRefused {
			st.aligner.Flush()
		}
		e.Frames, e.LateFrames = st.aligner.Emitted, st.aligner.Late
		s.late.Add(uint64(st.aligner.Late))
	}
	for i, r := range reasons {
		if r == reason {
			s.ended[i].Add(1)
		}
	}
	attrs := append(st.sids, "reason", string(reason), "frames", e.Frames)
	if detail != "" {
		attrs = append(attrs, "detail", detail)
	}
	if reason == ReasonMalformed {
		s.log.Warn("media stream closed", attrs...)
	} else {
		s.log.Info("media stream ended", attrs...)
	}
	if st.onEnd != nil {
		st.onEnd(e)
	}
	if st.cancel != nil {
		st.cancel()
	}
}
