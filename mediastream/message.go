// Package mediastream receives Twilio Media Streams: the websocket Twilio
// opens for <Start><Stream>, its JSON messages checked by shape and order,
// and the two audio tracks paired into aligned 20 ms frames for a consumer
// (the VAD that times the caller's answer against the disclosure).
//
// Nothing here logs, returns or counts audio or phone numbers: errors carry
// short fixed reasons, and only stream and call SIDs appear in logs.
package mediastream

import (
	"encoding/base64"
	"strings"
	"unsafe"

	"github.com/tidwall/gjson"
)

// FrameBytes is one 20 ms frame of 8 kHz μ-law: what Twilio sends per media
// message.
const FrameBytes = 160

// FrameMS is the length of one frame.
const FrameMS = 20

// MaxPayloadFrames bounds one media message's payload. Twilio sends one
// frame per message; a few are tolerated, anything larger is not Twilio.
const MaxPayloadFrames = 8

// maxPayloadBase64 is the longest base64 payload accepted.
var maxPayloadBase64 = base64.StdEncoding.EncodedLen(MaxPayloadFrames * FrameBytes)

// maxDigits bounds sequenceNumber, chunk and timestamp: 15 digits is over
// 30,000 years of milliseconds and far from uint64 overflow.
const maxDigits = 15

// MaxMessageBytes bounds a message the Parser reads at all: a start with
// its parameters is a few KB, and the JSON validator recurses per nesting
// level, so an unbounded input could exhaust the stack.
const MaxMessageBytes = 64 << 10

// Bounds on customParameters: Twilio's <Parameter>s are few and short.
const (
	maxCustomParameters = 32
	maxCustomKeyLen     = 64
	maxCustomValueLen   = 512
)

// Event is a Media Streams message type.
type Event uint8

// The message types Twilio sends.
const (
	EventConnected Event = iota + 1
	EventStart
	EventMedia
	EventStop
	EventMark
	EventDTMF
)

func (e Event) String() string {
	switch e {
	case EventConnected:
		return "connected"
	case EventStart:
		return "start"
	case EventMedia:
		return "media"
	case EventStop:
		return "stop"
	case EventMark:
		return "mark"
	case EventDTMF:
		return "dtmf"
	}
	return "unknown"
}

// Track is one direction of the call's audio.
type Track uint8

// Inbound is what the caller's line sends (the caller's voice); Outbound is
// what the caller hears (the disclosure).
const (
	Inbound Track = iota
	Outbound
)

func (t Track) String() string {
	if t == Outbound {
		return "outbound"
	}
	return "inbound"
}

// Message is one parsed Media Streams message. Only the part named by Event
// is filled.
type Message struct {
	Event Event
	// SequenceNumber counts every message of the stream from 1; 0 on
	// connected, which has none.
	SequenceNumber uint64
	StreamSID      string // "" on connected
	Start          Start
	Media          Media
	Stop           Stop
}

// Start is the stream's metadata, from its start message.
type Start struct {
	StreamSID        string
	CallSID          string
	AccountSID       string
	Tracks           []Track // the tracks media will arrive on, each once
	CustomParameters map[string]string
}

// Media is one media message: Payload is decoded μ-law, a whole number of
// 160-byte frames.
type Media struct {
	Track     Track
	Chunk     uint64
	Timestamp uint64 // ms from the stream's start
	Payload   []byte
}

// Stop is the stop message's body.
type Stop struct {
	AccountSID string
	CallSID    string
}

// ProtocolError is a message refused by shape or order. Reason is short,
// fixed text naming what was wrong, never the offending value: it goes into
// logs, close frames and metric labels.
type ProtocolError struct{ Reason string }

func (e *ProtocolError) Error() string { return "mediastream: " + e.Reason }

func refuse(reason string) error { return &ProtocolError{Reason: reason} }

// Refusals that tests and callers may compare against.
var (
	errBadJSON = refuse("not a JSON object")
)

// ParseMessage checks one message by shape alone (no stream state, any
// account) and returns it with its strings and payload copied. The server
// uses a Parser, which also checks order and allocates nothing per media
// message.
func ParseMessage(data []byte) (Message, error) {
	var p Parser
	var m Message
	if err := p.shape(data, &m); err != nil {
		return Message{}, err
	}
	m.StreamSID = strings.Clone(m.StreamSID)
	m.Stop.AccountSID = strings.Clone(m.Stop.AccountSID)
	m.Stop.CallSID = strings.Clone(m.Stop.CallSID)
	if m.Event == EventStart {
		m.Start = p.cloneStart(m.StreamSID)
	}
	if m.Payload() != nil {
		m.Media.Payload = append([]byte(nil), m.Media.Payload...)
	}
	return m, nil
}

// Payload returns the media payload, nil for other events.
func (m *Message) Payload() []byte {
	if m.Event != EventMedia {
		return nil
	}
	return m.Media.Payload
}

// Parser checks the messages of one stream, in the order they arrive: each
// by shape, and together by order (start once and before any media, one
// streamSid, sequenceNumber strictly increasing, chunk increasing and
// timestamp non-decreasing per track, the configured account, nothing after
// stop). After the first refusal every later message is refused the same
// way. A Message it returns, with its payload, is valid until the next call.
type Parser struct {
	// AccountSID, when set, is the only account whose start is accepted.
	AccountSID string

	payload []byte

	// Raw fields of the message being parsed (substrings of its bytes).
	event, seq, streamSID       string
	startRaw, mediaRaw, stopRaw gjson.Result

	// Stream state.
	connectedSeen, started, stopped bool
	start                           Start
	lastSeq                         uint64
	tracks                          [2]bool
	seen                            [2]bool
	lastChunk                       [2]uint64
	lastTS                          [2]uint64
	err                             error
}

// NewParser returns a Parser that accepts only accountSID's streams.
func NewParser(accountSID string) *Parser { return &Parser{AccountSID: accountSID} }

// Started returns the stream's start, once its start message was accepted.
func (p *Parser) Started() (Start, bool) { return p.start, p.started }

// Parse checks data as the stream's next message.
func (p *Parser) Parse(data []byte) (Message, error) {
	if p.err != nil {
		return Message{}, p.err
	}
	var m Message
	if err := p.shape(data, &m); err != nil {
		p.err = err
		return Message{}, err
	}
	if err := p.order(&m); err != nil {
		p.err = err
		return Message{}, err
	}
	return m, nil
}

func (p *Parser) order(m *Message) error {
	if p.stopped {
		return refuse("message after stop")
	}
	if m.Event == EventConnected {
		if p.connectedSeen || p.started {
			return refuse("connected not first")
		}
		p.connectedSeen = true
		return nil
	}
	if m.Event == EventStart {
		if p.started {
			return refuse("second start")
		}
		if p.AccountSID != "" && p.startAccount() != p.AccountSID {
			return refuse("start for another account")
		}
		p.start = p.cloneStart(m.StreamSID)
		m.Start = p.start
		m.StreamSID = p.start.StreamSID
		p.started = true
		p.lastSeq = m.SequenceNumber
		for _, t := range p.start.Tracks {
			p.tracks[t] = true
		}
		return nil
	}
	if !p.started {
		return refuse(m.Event.String() + " before start")
	}
	if m.StreamSID != p.start.StreamSID {
		return refuse("streamSid changed")
	}
	m.StreamSID = p.start.StreamSID // the stored copy, not the read buffer
	if m.SequenceNumber <= p.lastSeq {
		return refuse("sequenceNumber not increasing")
	}
	p.lastSeq = m.SequenceNumber
	switch m.Event {
	case EventMedia:
		t := m.Media.Track
		if !p.tracks[t] {
			return refuse("media on a track not started")
		}
		if p.seen[t] && m.Media.Chunk <= p.lastChunk[t] {
			return refuse("chunk not increasing")
		}
		if p.seen[t] && m.Media.Timestamp < p.lastTS[t] {
			return refuse("timestamp going backwards")
		}
		p.seen[t], p.lastChunk[t], p.lastTS[t] = true, m.Media.Chunk, m.Media.Timestamp
	case EventStop:
		if m.Stop.AccountSID != p.start.AccountSID || m.Stop.CallSID != p.start.CallSID {
			return refuse("stop for another call")
		}
		m.Stop = Stop{AccountSID: p.start.AccountSID, CallSID: p.start.CallSID}
		p.stopped = true
	}
	return nil
}

// startAccount reads the accountSid of the start being parsed.
func (p *Parser) startAccount() string { return p.startRaw.Get("accountSid").Str }

// shape checks one message on its own and fills m; strings alias data.
func (p *Parser) shape(data []byte, m *Message) error {
	if len(data) > MaxMessageBytes {
		return refuse("message too large")
	}
	if len(data) == 0 {
		return errBadJSON
	}
	if ok, err := p.canonicalMedia(data, m); ok {
		return err
	}
	return p.shapeJSON(data, m)
}

// shapeJSON is shape for any message: the document validated, then walked.
func (p *Parser) shapeJSON(data []byte, m *Message) error {
	if !gjson.ValidBytes(data) {
		return errBadJSON
	}
	// The bytes are only read while data is unchanged: gjson returns
	// substrings of this string, and the caller copies what it keeps.
	doc := gjson.Parse(unsafe.String(&data[0], len(data)))
	if !doc.IsObject() {
		return errBadJSON
	}
	p.event, p.seq, p.streamSID = "", "", ""
	p.startRaw, p.mediaRaw, p.stopRaw = gjson.Result{}, gjson.Result{}, gjson.Result{}
	var seenEvent, seenSeq, seenSID, seenSection bool
	var err error
	doc.ForEach(func(k, v gjson.Result) bool {
		dup := false
		switch k.Str {
		case "event":
			dup, seenEvent = seenEvent, true
			if p.event, err = plainString(v, "event"); err != nil {
				return false
			}
		case "sequenceNumber":
			dup, seenSeq = seenSeq, true
			if p.seq, err = plainString(v, "sequenceNumber"); err != nil {
				return false
			}
		case "streamSid":
			dup, seenSID = seenSID, true
			if p.streamSID, err = plainString(v, "streamSid"); err != nil {
				return false
			}
		case "start", "media", "stop", "mark", "dtmf":
			dup, seenSection = seenSection, true
			if !v.IsObject() {
				err = refuse(k.Str + " is not an object")
				return false
			}
			switch k.Str {
			case "start":
				p.startRaw = v
			case "media":
				p.mediaRaw = v
			case "stop":
				p.stopRaw = v
			}
		}
		if dup {
			err = refuse("duplicate key")
			return false
		}
		return true
	})
	if err != nil {
		return err
	}
	switch p.event {
	case "connected":
		m.Event = EventConnected
		if seenSeq || seenSID || seenSection {
			return refuse("connected with stream fields")
		}
		for _, f := range []string{"protocol", "version"} {
			if v := doc.Get(f); v.Exists() && (v.Type != gjson.String || len(v.Str) > 32) {
				return refuse("connected " + f + " malformed")
			}
		}
		return nil
	case "start":
		m.Event = EventStart
	case "media":
		m.Event = EventMedia
	case "stop":
		m.Event = EventStop
	case "mark":
		m.Event = EventMark
	case "dtmf":
		m.Event = EventDTMF
	case "":
		return refuse("no event")
	default:
		return refuse("unknown event")
	}
	if m.SequenceNumber, err = digits(p.seq, "sequenceNumber"); err != nil {
		return err
	}
	if !isSID(p.streamSID, "MZ") {
		return refuse("streamSid malformed")
	}
	m.StreamSID = p.streamSID
	switch m.Event {
	case EventStart:
		return p.shapeStart()
	case EventMedia:
		return p.shapeMedia(m)
	case EventStop:
		if !p.stopRaw.Exists() {
			return refuse("stop without stop")
		}
		m.Stop.AccountSID = p.stopRaw.Get("accountSid").Str
		m.Stop.CallSID = p.stopRaw.Get("callSid").Str
		if !isSID(m.Stop.AccountSID, "AC") || !isSID(m.Stop.CallSID, "CA") {
			return refuse("stop SIDs malformed")
		}
	}
	// mark and dtmf: tolerated, their bodies ignored (a dtmf digit is the
	// caller's input and is not kept).
	return nil
}

func (p *Parser) shapeStart() error {
	s := p.startRaw
	if !s.Exists() {
		return refuse("start without start")
	}
	if v := s.Get("streamSid"); v.Exists() && v.Str != p.streamSID {
		return refuse("start streamSid differs")
	}
	if !isSID(s.Get("accountSid").Str, "AC") {
		return refuse("accountSid malformed")
	}
	if !isSID(s.Get("callSid").Str, "CA") {
		return refuse("callSid malformed")
	}
	tracks := s.Get("tracks")
	if !tracks.IsArray() {
		return refuse("tracks malformed")
	}
	var seen [2]bool
	n := 0
	var err error
	tracks.ForEach(func(_, v gjson.Result) bool {
		t, ok := parseTrack(v)
		if !ok || seen[t] {
			err = refuse("tracks malformed")
			return false
		}
		seen[t] = true
		n++
		return true
	})
	if err != nil {
		return err
	}
	if n == 0 {
		return refuse("tracks empty")
	}
	f := s.Get("mediaFormat")
	if !f.IsObject() || f.Get("encoding").Str != "audio/x-mulaw" ||
		f.Get("sampleRate").Raw != "8000" || f.Get("channels").Raw != "1" {
		return refuse("mediaFormat not mulaw/8000/1")
	}
	if c := s.Get("customParameters"); c.Exists() {
		if !c.IsObject() {
			return refuse("customParameters malformed")
		}
		count := 0
		c.ForEach(func(k, v gjson.Result) bool {
			count++
			if count > maxCustomParameters || k.Str == "" || len(k.Str) > maxCustomKeyLen ||
				v.Type != gjson.String || len(v.Str) > maxCustomValueLen {
				err = refuse("customParameters malformed")
				return false
			}
			return true
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// cloneStart copies the start being parsed out of the read buffer.
func (p *Parser) cloneStart(streamSID string) Start {
	s := p.startRaw
	st := Start{
		StreamSID:  strings.Clone(streamSID),
		AccountSID: strings.Clone(s.Get("accountSid").Str),
		CallSID:    strings.Clone(s.Get("callSid").Str),
	}
	s.Get("tracks").ForEach(func(_, v gjson.Result) bool {
		t, _ := parseTrack(v)
		st.Tracks = append(st.Tracks, t)
		return true
	})
	if c := s.Get("customParameters"); c.Exists() {
		st.CustomParameters = map[string]string{}
		c.ForEach(func(k, v gjson.Result) bool {
			st.CustomParameters[strings.Clone(k.Str)] = strings.Clone(v.Str)
			return true
		})
	}
	return st
}

func (p *Parser) shapeMedia(m *Message) error {
	md := p.mediaRaw
	if !md.Exists() {
		return refuse("media without media")
	}
	var err error
	var track, chunk, ts, payload string
	var seen [4]bool
	md.ForEach(func(k, v gjson.Result) bool {
		i := -1
		switch k.Str {
		case "track":
			i = 0
			track, err = plainString(v, "track")
		case "chunk":
			i = 1
			chunk, err = plainString(v, "chunk")
		case "timestamp":
			i = 2
			ts, err = plainString(v, "timestamp")
		case "payload":
			i = 3
			payload, err = plainString(v, "payload")
		}
		if i >= 0 {
			if seen[i] {
				err = refuse("duplicate key")
			}
			seen[i] = true
		}
		return err == nil
	})
	if err != nil {
		return err
	}
	return p.checkMedia(m, track, chunk, ts, payload)
}

// checkMedia checks a media body's fields and decodes its payload into m.
func (p *Parser) checkMedia(m *Message, track, chunk, ts, payload string) error {
	var err error
	switch track {
	case "inbound":
		m.Media.Track = Inbound
	case "outbound":
		m.Media.Track = Outbound
	default:
		return refuse("media track malformed")
	}
	if m.Media.Chunk, err = digits(chunk, "chunk"); err != nil {
		return err
	}
	if m.Media.Timestamp, err = digits(ts, "timestamp"); err != nil {
		return err
	}
	if payload == "" || len(payload) > maxPayloadBase64 || len(payload)%4 != 0 {
		return refuse("payload size")
	}
	if cap(p.payload) < MaxPayloadFrames*FrameBytes {
		p.payload = make([]byte, MaxPayloadFrames*FrameBytes)
	}
	// Decode reads the string's bytes in place; it never writes them.
	src := unsafe.Slice(unsafe.StringData(payload), len(payload))
	n, derr := base64.StdEncoding.Strict().Decode(p.payload[:cap(p.payload)], src)
	if derr != nil || strings.ContainsAny(payload, "\r\n") {
		return refuse("payload not base64")
	}
	if n == 0 || n%FrameBytes != 0 {
		return refuse("payload not whole 20 ms frames")
	}
	m.Media.Payload = p.payload[:n]
	return nil
}

// Twilio's media message, exactly as it sends it: these keys in this
// order, no whitespace. Media messages are nearly all of a stream's
// traffic, so they are recognised in one pass over the bytes instead of a
// validation pass and two walks of the document.
var canonicalMediaKeys = [...]string{
	`{"event":"`, `","sequenceNumber":"`, `","media":{"track":"`, `","chunk":"`,
	`","timestamp":"`, `","payload":"`, `"},"streamSid":"`, `"}`,
}

// canonicalMedia parses data when it has the exact shape of Twilio's media
// message (canonicalMediaKeys, each value a string of printable ASCII
// without quote or backslash: valid JSON, with nothing to unescape). Such
// a message is checked exactly as shape would check it, in the same order
// and with the same refusals (FuzzCanonicalMedia holds the two equal);
// anything else is left to shape (false).
func (p *Parser) canonicalMedia(data []byte, m *Message) (bool, error) {
	var v [len(canonicalMediaKeys) - 1]string // event, seq, track, chunk, timestamp, payload, streamSid
	at := 0
	for i, k := range canonicalMediaKeys {
		if len(data)-at < len(k) || string(data[at:at+len(k)]) != k {
			return false, nil
		}
		at += len(k)
		if i == len(v) {
			break
		}
		start := at
		for at < len(data) && data[at] != '"' {
			if c := data[at]; c < 0x20 || c > 0x7e || c == '\\' {
				return false, nil
			}
			at++
		}
		v[i] = unsafe.String(unsafe.SliceData(data[start:]), at-start)
	}
	if at != len(data) || v[0] != "media" {
		return false, nil
	}
	m.Event = EventMedia
	var err error
	if m.SequenceNumber, err = digits(v[1], "sequenceNumber"); err != nil {
		return true, err
	}
	if !isSID(v[6], "MZ") {
		return true, refuse("streamSid malformed")
	}
	m.StreamSID = v[6]
	return true, p.checkMedia(m, v[2], v[3], v[4], v[5])
}

// plainString returns a JSON string's value. Twilio's values are plain
// ASCII; an escaped one is unescaped (a copy), anything not a string is
// refused.
func plainString(v gjson.Result, name string) (string, error) {
	if v.Type != gjson.String {
		return "", refuse(name + " not a string")
	}
	return v.Str, nil
}

func parseTrack(v gjson.Result) (Track, bool) {
	if v.Type != gjson.String {
		return 0, false
	}
	switch v.Str {
	case "inbound":
		return Inbound, true
	case "outbound":
		return Outbound, true
	}
	return 0, false
}

// digits parses Twilio's numbers-as-strings: 1 to 15 ASCII digits.
func digits(s, name string) (uint64, error) {
	if len(s) == 0 || len(s) > maxDigits {
		return 0, refuse(name + " malformed")
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, refuse(name + " malformed")
		}
		n = n*10 + uint64(c-'0')
	}
	return n, nil
}

// isSID reports whether s is prefix followed by 32 lowercase hex digits,
// the shape of every Twilio SID (an account SID may be written in upper
// case in settings, as ivr accepts).
func isSID(s, prefix string) bool {
	if len(s) != 34 || s[:2] != prefix {
		return false
	}
	for i := 2; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') && (prefix != "AC" || c < 'A' || c > 'F') {
			return false
		}
	}
	return true
}
