// Package deepgram is a thin client for Deepgram's live speech-to-text API
// (wss://api.deepgram.com/v1/listen): it streams a call's inbound 8 kHz μ-law
// audio and turns Deepgram's messages into typed events.
//
// Deepgram's Go SDK is not used: its live options have no mip_opt_out, the flag
// that keeps a call's audio out of Deepgram's Model Improvement Program
// (opted-out requests are not retained:
// https://developers.deepgram.com/trust-security/your-data), and it pins its own
// fork of the websocket library (github.com/dvonthenen/websocket, as the go.mod
// of Deepgram's Go live-transcription starter shows). The protocol is small
// enough to speak directly over github.com/gorilla/websocket.
//
// The protocol as documented by Deepgram and relied on here:
//   - Audio goes as binary messages; an empty one makes Deepgram close the stream
//     (https://developers.deepgram.com/docs/stt-troubleshooting-websocket-data-and-net-errors).
//   - {"type":"KeepAlive"} as a text message every 3–5 s keeps an idle stream
//     open; with neither audio nor KeepAlive for 10 s Deepgram closes with 1011
//     NET-0001. The server does not answer it
//     (https://developers.deepgram.com/docs/audio-keep-alive).
//   - {"type":"Finalize"} flushes: Deepgram transcribes the audio it holds and
//     answers with final results, marked from_finalize=true when there was audio to
//     flush (https://developers.deepgram.com/docs/finalize).
//   - {"type":"CloseStream"} makes Deepgram finish the audio it holds, send the
//     final results and a Metadata message, then close the socket
//     (https://developers.deepgram.com/docs/close-stream).
//   - Results carry is_final (this span will not change) and speech_final
//     (endpointing saw a pause of endpointing ms); SpeechStarted comes with
//     vad_events=true, UtteranceEnd with utterance_end_ms, which needs
//     interim_results=true (https://developers.deepgram.com/docs/interim-results,
//     https://developers.deepgram.com/docs/speech-started,
//     https://developers.deepgram.com/docs/utterance-end).
//   - Errors end the stream with a close frame: 1008 DATA-0000 (not decodable as
//     audio), 1011 NET-0000 / NET-0001 (timeouts); a refused upgrade is an HTTP
//     4xx/5xx with dg-error and dg-request-id headers (troubleshooting page above).
//
// A Stream never logs its API key, its audio or a transcript.
package deepgram

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// DefaultURL is Deepgram's live transcription endpoint.
const DefaultURL = "wss://api.deepgram.com/v1/listen"

// Defaults for the zero values of Config.
const (
	DefaultEndpointingMS  = 300 // Deepgram suggests 300–500 ms where speakers pause mid-thought
	DefaultUtteranceEndMS = 1000
	DefaultKeepAliveEvery = 4 * time.Second // Deepgram: every 3–5 s, against its 10 s timeout
	DefaultDialTimeout    = 5 * time.Second
	// DefaultStallTimeout: while audio flows Deepgram sends Results about every
	// second, empty ones during silence included (interim results "are typically
	// sent every second": https://developers.deepgram.com/docs/utterance-end;
	// empty finals during silence: github.com/jambonz/jambonz-feature-server/issues/1368).
	// 10 s leaves room for a slow stretch.
	DefaultStallTimeout = 10 * time.Second
	DefaultSendQueue    = 50 // frames: 1 s of 20 ms Twilio frames
)

// eventBuffer is the capacity of the Events channel. The last slot is kept for
// the terminal Closed event, so delivering it never blocks.
const eventBuffer = 256

// readLimit bounds one server message; Deepgram's messages are a few kilobytes.
const readLimit = 1 << 20

// writeErrGrace is how long the writer, after a failed write, waits for the
// reader to see why (a close frame may be in flight) before calling it a drop.
const writeErrGrace = time.Second

// Config configures Dial. Only APIKey is required.
type Config struct {
	APIKey string // sent as "Authorization: Token <key>"; never logged
	URL    string // default DefaultURL; tests point it at a deepgramtest.Server. No query string.

	Model       string // e.g. "nova-3"; empty: Deepgram's default
	Language    string // e.g. "en-US"; empty: Deepgram's default
	Punctuate   bool   // add punctuate=true
	SmartFormat bool   // add smart_format=true

	EndpointingMS  int // silence (ms) that makes Deepgram mark speech_final; default DefaultEndpointingMS
	UtteranceEndMS int // word gap (ms) for UtteranceEnd; default DefaultUtteranceEndMS

	// KeepAliveEvery: a KeepAlive is sent whenever no audio (and no KeepAlive)
	// was sent for this long. Default DefaultKeepAliveEvery.
	KeepAliveEvery time.Duration
	// DialTimeout bounds the connection and handshake. Default DefaultDialTimeout.
	DialTimeout time.Duration
	// StallTimeout: audio was sent and nothing at all came back for this long
	// means Deepgram is stuck, and the stream fails with ErrStalled. It also
	// bounds each socket write. Default DefaultStallTimeout.
	StallTimeout time.Duration
	// SendQueue is how many outgoing messages may wait for the socket before
	// Send fails the stream with ErrSendQueueFull. Default DefaultSendQueue.
	SendQueue int

	Logger *slog.Logger // default: discard

	// beforeWrite, when set (by this package's tests), runs before each socket
	// write, on the writer goroutine.
	beforeWrite func()
}

func (c Config) withDefaults() (Config, error) {
	if c.APIKey == "" {
		return c, errors.New("deepgram: Config.APIKey is empty")
	}
	if strings.ContainsAny(c.APIKey, " \t\r\n") {
		return c, errors.New("deepgram: Config.APIKey contains whitespace")
	}
	if c.URL == "" {
		c.URL = DefaultURL
	}
	if c.EndpointingMS == 0 {
		c.EndpointingMS = DefaultEndpointingMS
	}
	if c.UtteranceEndMS == 0 {
		c.UtteranceEndMS = DefaultUtteranceEndMS
	}
	if c.KeepAliveEvery == 0 {
		c.KeepAliveEvery = DefaultKeepAliveEvery
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.SendQueue == 0 {
		c.SendQueue = DefaultSendQueue
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.EndpointingMS < 0, c.UtteranceEndMS < 0:
		return c, errors.New("deepgram: Config.EndpointingMS and UtteranceEndMS must not be negative")
	case c.KeepAliveEvery < 0, c.DialTimeout < 0, c.StallTimeout < 0:
		return c, errors.New("deepgram: Config durations must not be negative")
	case c.SendQueue < 0:
		return c, errors.New("deepgram: Config.SendQueue must not be negative")
	}
	return c, nil
}

// listenURL is cfg.URL with the stream's query: the audio format Twilio Media
// Streams deliver (8 kHz mono μ-law), the events the stream relies on, and
// mip_opt_out=true.
func listenURL(cfg Config) (string, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return "", fmt.Errorf("deepgram: Config.URL: %w", err)
	}
	if u.Scheme != "wss" && u.Scheme != "ws" {
		return "", fmt.Errorf("deepgram: Config.URL scheme %q is not ws or wss", u.Scheme)
	}
	if u.RawQuery != "" || u.User != nil {
		return "", errors.New("deepgram: Config.URL must carry no query and no user info")
	}
	q := "encoding=mulaw&sample_rate=8000&channels=1&interim_results=true" +
		"&endpointing=" + strconv.Itoa(cfg.EndpointingMS) +
		"&utterance_end_ms=" + strconv.Itoa(cfg.UtteranceEndMS) +
		"&vad_events=true&mip_opt_out=true"
	if cfg.Model != "" {
		q += "&model=" + url.QueryEscape(cfg.Model)
	}
	if cfg.Language != "" {
		q += "&language=" + url.QueryEscape(cfg.Language)
	}
	if cfg.Punctuate {
		q += "&punctuate=true"
	}
	if cfg.SmartFormat {
		q += "&smart_format=true"
	}
	u.RawQuery = q
	return u.String(), nil
}

// The text messages the client sends.
var (
	msgKeepAlive   = []byte(`{"type":"KeepAlive"}`)
	msgFinalize    = []byte(`{"type":"Finalize"}`)
	msgCloseStream = []byte(`{"type":"CloseStream"}`)
)

type outKind uint8

const (
	outAudio outKind = iota
	outFinalize
	outCloseStream
)

type outgoing struct {
	kind  outKind
	audio []byte
}

// Stream is one live recognition session. Send, Finalize and Close may be called
// from any goroutine; one writer goroutine owns the socket's writes and one
// reader goroutine its reads. Both end when the stream ends, whether by Close or
// by a failure.
type Stream struct {
	conn  *websocket.Conn
	cfg   Config
	log   *slog.Logger
	start time.Time
	tick  time.Duration

	events     chan Event
	sendq      chan outgoing
	quit       chan struct{} // closed by fail: both goroutines stop
	writerDone chan struct{}
	done       chan struct{} // closed once Closed is on the events channel

	lastRecv       atomic.Int64 // time.Since(start) of the last message received, ns; -1 none yet
	closeRequested atomic.Bool
	gotMetadata    atomic.Bool

	mu      sync.Mutex // orders enqueues against Close
	closing bool

	failOnce sync.Once
	err      error // the terminal error; read only after quit is closed
}

// Dial opens a stream to Deepgram. ctx (and Config.DialTimeout) bound only the
// dial; the stream lives until Close or a failure. It fails with a
// *HandshakeError (errors.Is ErrUnauthorized for a 401) when Deepgram refuses
// the upgrade.
func Dial(ctx context.Context, cfg Config) (*Stream, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	target, err := listenURL(cfg)
	if err != nil {
		return nil, err
	}
	dialer := websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		HandshakeTimeout: cfg.DialTimeout,
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	header := http.Header{"Authorization": {"Token " + cfg.APIKey}}
	conn, resp, err := dialer.DialContext(dctx, target, header)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
			herr := &HandshakeError{
				Status:    resp.StatusCode,
				DGError:   resp.Header.Get("dg-error"),
				RequestID: resp.Header.Get("dg-request-id"),
			}
			cfg.Logger.Warn("deepgram handshake refused", slog.Int("status", herr.Status), slog.String("request_id", herr.RequestID))
			return nil, herr
		}
		return nil, fmt.Errorf("deepgram: dial: %w", err)
	}
	conn.SetReadLimit(readLimit)

	tick := min(cfg.KeepAliveEvery, cfg.StallTimeout) / 4
	tick = max(tick, 5*time.Millisecond)
	s := &Stream{
		conn:       conn,
		cfg:        cfg,
		log:        cfg.Logger,
		start:      time.Now(),
		tick:       tick,
		events:     make(chan Event, eventBuffer),
		sendq:      make(chan outgoing, cfg.SendQueue),
		quit:       make(chan struct{}),
		writerDone: make(chan struct{}),
		done:       make(chan struct{}),
	}
	s.lastRecv.Store(-1)
	if resp != nil {
		s.log = s.log.With(slog.String("request_id", resp.Header.Get("dg-request-id")))
	}
	go s.writeLoop()
	go s.readLoop()
	return s, nil
}

// Events returns the stream's events in the order Deepgram sent them. The last
// is a *Closed, after which the channel is closed. The channel holds 256 events;
// a caller that lets it fill fails the stream with ErrEventsOverflow rather than
// lose a result.
func (s *Stream) Events() <-chan Event { return s.events }

// Send queues one frame of audio (8 kHz μ-law; Twilio sends 160 bytes per 20 ms)
// and returns at once: it copies frame and never waits for the network. If the
// queue is full the connection has fallen more than SendQueue frames behind real
// time, and the stream fails with ErrSendQueueFull: waiting would stall the
// caller's media loop (and Twilio's socket behind it), and audio delivered late
// to a recognizer is worth less than a clear failure the caller can fall back
// from. After Close it returns ErrClosed; after a failure, the failure.
func (s *Stream) Send(frame []byte) error {
	if len(frame) == 0 {
		return ErrEmptyFrame
	}
	return s.enqueue(outgoing{kind: outAudio, audio: bytes.Clone(frame)})
}

// Finalize asks Deepgram to transcribe the audio it holds now, as when the
// caller stopped speaking; the answer comes as Final events (FromFinalize set
// when there was audio to flush). It queues like Send and fails like it.
func (s *Stream) Finalize() error {
	return s.enqueue(outgoing{kind: outFinalize})
}

func (s *Stream) enqueue(m outgoing) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return ErrClosed
	}
	select {
	case <-s.quit:
		return s.terminal()
	default:
	}
	select {
	case s.sendq <- m:
		return nil
	default:
		s.fail(ErrSendQueueFull)
		return ErrSendQueueFull
	}
}

// terminal is the error that ended the stream, for a caller after the end.
func (s *Stream) terminal() error {
	if s.err == nil {
		return ErrClosed
	}
	return s.err
}

// Close sends CloseStream after the audio already queued, waits for Deepgram's
// last results, its Metadata and its close, then frees the connection and both
// goroutines. If ctx ends first the connection is dropped and Close returns an
// error wrapping ctx.Err(). It returns nil after an orderly close, else the error
// that ended the stream (also delivered as Closed.Err). Calling it again returns
// the same result.
func (s *Stream) Close(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		s.closeRequested.Store(true)
		select {
		case <-s.quit:
		case s.sendq <- outgoing{kind: outCloseStream}:
		default:
			s.fail(ErrSendQueueFull)
		}
	}
	s.mu.Unlock()
	select {
	case <-s.done:
	case <-ctx.Done():
		s.fail(fmt.Errorf("deepgram: no end to CloseStream: %w", ctx.Err()))
		<-s.done
	}
	return s.err
}

// fail ends the stream with err (nil: orderly) unless it has ended already:
// closing the socket unblocks the reader, closing quit stops the writer.
func (s *Stream) fail(err error) {
	s.failOnce.Do(func() {
		s.err = err
		close(s.quit)
		s.conn.Close()
	})
}

func (s *Stream) writeLoop() {
	defer close(s.writerDone)
	ticker := time.NewTicker(s.tick)
	defer ticker.Stop()
	var (
		lastSent   = time.Now()  // audio or KeepAlive
		unanswered time.Duration // since start: the first audio written after the last message received; 0 none
		closeSent  bool
	)
	for {
		select {
		case <-s.quit:
			return
		case m := <-s.sendq:
			var err error
			switch m.kind {
			case outAudio:
				err = s.write(websocket.BinaryMessage, m.audio)
				lastSent = time.Now()
				if unanswered == 0 {
					unanswered = max(time.Since(s.start), 1)
				}
			case outFinalize:
				err = s.write(websocket.TextMessage, msgFinalize)
			case outCloseStream:
				err = s.write(websocket.TextMessage, msgCloseStream)
				closeSent = true
			}
			if err != nil {
				s.writeFailed(err)
				return
			}
		case now := <-ticker.C:
			if unanswered != 0 {
				if time.Duration(s.lastRecv.Load()) >= unanswered {
					unanswered = 0
				} else if now.Sub(s.start)-unanswered >= s.cfg.StallTimeout {
					s.log.Warn("deepgram stream stalled", slog.Duration("stall_timeout", s.cfg.StallTimeout))
					s.fail(ErrStalled)
					return
				}
			}
			if !closeSent && now.Sub(lastSent) >= s.cfg.KeepAliveEvery {
				if err := s.write(websocket.TextMessage, msgKeepAlive); err != nil {
					s.writeFailed(err)
					return
				}
				lastSent = now
			}
		}
	}
}

func (s *Stream) write(typ int, data []byte) error {
	if s.cfg.beforeWrite != nil {
		s.cfg.beforeWrite()
	}
	if err := s.conn.SetWriteDeadline(time.Now().Add(s.cfg.StallTimeout)); err != nil {
		return err
	}
	return s.conn.WriteMessage(typ, data)
}

// writeFailed leaves the verdict to the reader for a moment: when Deepgram
// closes with a code and then resets, a write can fail before the reader has
// read the close frame, and the code is the better answer.
func (s *Stream) writeFailed(err error) {
	t := time.NewTimer(writeErrGrace)
	defer t.Stop()
	select {
	case <-s.quit:
	case <-t.C:
		s.log.Warn("deepgram write failed", slog.String("error", err.Error()))
		s.fail(fmt.Errorf("%w: write: %v", ErrDropped, err))
	}
}

func (s *Stream) readLoop() {
	defer close(s.done)
	s.fail(s.readMessages())
	<-s.writerDone
	if s.err != nil && !errors.Is(s.err, ErrStalled) {
		s.log.Warn("deepgram stream failed", slog.String("error", s.err.Error()))
	}
	s.events <- &Closed{Err: s.err} // never blocks: emit keeps a slot free
	close(s.events)
}

// readMessages reads until the stream ends and returns why (nil: orderly).
func (s *Stream) readMessages() error {
	for {
		typ, data, err := s.conn.ReadMessage()
		if err != nil {
			return s.readEnded(err)
		}
		s.lastRecv.Store(int64(max(time.Since(s.start), 1)))
		if typ != websocket.TextMessage {
			s.log.Error("deepgram sent a binary message", slog.Int("bytes", len(data)))
			return fmt.Errorf("%w: %d-byte binary message", ErrMalformed, len(data))
		}
		ev, err := decode(data)
		if err != nil {
			s.log.Error("deepgram sent a malformed message", slog.String("error", err.Error()))
			return err
		}
		if ev == nil {
			continue
		}
		if _, ok := ev.(*Metadata); ok {
			s.gotMetadata.Store(true)
		}
		select {
		case <-s.quit:
			return nil // already ended; fail keeps the first verdict
		default:
		}
		// Only this goroutine sends, so the buffer can only drain between this
		// check and the send: a slot stays free for Closed.
		if len(s.events) >= cap(s.events)-1 {
			s.log.Error("deepgram events not read", slog.Int("buffer", cap(s.events)))
			return ErrEventsOverflow
		}
		s.events <- ev
	}
}

// readEnded classifies the error that ended the reads.
func (s *Stream) readEnded(err error) error {
	asked := s.closeRequested.Load()
	finished := asked && s.gotMetadata.Load()
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		switch {
		case ce.Code == websocket.CloseAbnormalClosure: // gorilla's code for EOF without a close frame
			if finished {
				return nil
			}
			return fmt.Errorf("%w: %v", ErrDropped, err)
		case asked && (ce.Code == websocket.CloseNormalClosure || ce.Code == websocket.CloseNoStatusReceived):
			return nil
		default:
			return &ServerCloseError{Code: ce.Code, Reason: ce.Text}
		}
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		return fmt.Errorf("%w: message over %d bytes", ErrMalformed, readLimit)
	}
	if finished {
		return nil
	}
	return fmt.Errorf("%w: %v", ErrDropped, err)
}
