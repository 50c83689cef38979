package deepgram

import (
	"errors"
	"fmt"

	"github.com/gorilla/websocket"
)

// The classes of failure a Stream reports, in Closed.Err and from Close, Send and
// Finalize. Test them with errors.Is; a *ServerCloseError unwraps to one of the
// first three.
var (
	// ErrBadData: Deepgram closed the stream with 1008 (policy violation). Its
	// troubleshooting page lists code 1008 with payload DATA-0000, "the payload
	// cannot be decoded as audio"; the 2021 error-handling page listed the same
	// payload under 1002, so 1002 is classed here too
	// (https://developers.deepgram.com/docs/stt-troubleshooting-websocket-data-and-net-errors,
	// https://enterprise-docs.deepgram.com/guides/streaming/error-handling).
	// Sending the same audio again will fail again.
	ErrBadData = errors.New("deepgram: server closed the stream: bad data or policy (1008)")

	// ErrServerTimeout: Deepgram closed the stream with 1011: NET-0000 (it sent no
	// text frame within its timeout window, an internal fault) or NET-0001 (it
	// received no audio or KeepAlive for 10 s). Same pages as ErrBadData. A new
	// stream may succeed.
	ErrServerTimeout = errors.New("deepgram: server closed the stream: timed out or internal error (1011)")

	// ErrServerClosed: Deepgram sent any other close frame, including a normal one
	// the client had not asked for with CloseStream.
	ErrServerClosed = errors.New("deepgram: server closed the stream unasked")

	// ErrDropped: the connection ended without a close frame (reset, EOF, a failed
	// write).
	ErrDropped = errors.New("deepgram: connection dropped")

	// ErrStalled: audio was flowing but nothing came back from Deepgram for
	// Config.StallTimeout.
	ErrStalled = errors.New("deepgram: no message from the server within the stall timeout while audio flowed")

	// ErrMalformed: Deepgram sent a message this client cannot decode (bad JSON,
	// a binary frame, a message over the read limit).
	ErrMalformed = errors.New("deepgram: malformed message from the server")

	// ErrSendQueueFull: Send or Finalize found the outgoing queue full, so the
	// socket is not keeping up with real-time audio; the stream was failed rather
	// than block the caller.
	ErrSendQueueFull = errors.New("deepgram: send queue full: the connection is not keeping up")

	// ErrEventsOverflow: the Events channel was full, so the caller had stopped
	// reading events; the stream was failed rather than drop a result silently.
	ErrEventsOverflow = errors.New("deepgram: events channel full: the caller is not reading events")

	// ErrClosed: Send, Finalize or Close after Close was called.
	ErrClosed = errors.New("deepgram: stream closed")

	// ErrUnauthorized: the handshake was refused with 401 (wrong or revoked key).
	ErrUnauthorized = errors.New("deepgram: API key refused (401)")

	// ErrEmptyFrame: Send was given no bytes. Deepgram's troubleshooting page
	// warns that an empty binary message causes an unexpected close.
	ErrEmptyFrame = errors.New("deepgram: empty audio frame")
)

// ServerCloseError is a close frame from Deepgram that ended the stream other than
// in answer to CloseStream. Code is the WebSocket close code and Reason Deepgram's
// payload (DATA-0000, NET-0000, NET-0001, …), which carries no caller data.
type ServerCloseError struct {
	Code   int
	Reason string
}

func (e *ServerCloseError) Error() string {
	return fmt.Sprintf("%v: code %d %q", e.Unwrap(), e.Code, e.Reason)
}

// Unwrap returns the class of the close: ErrBadData, ErrServerTimeout or
// ErrServerClosed.
func (e *ServerCloseError) Unwrap() error {
	switch e.Code {
	case websocket.ClosePolicyViolation, websocket.CloseProtocolError:
		return ErrBadData
	case websocket.CloseInternalServerErr:
		return ErrServerTimeout
	default:
		return ErrServerClosed
	}
}

// HandshakeError is a refused WebSocket upgrade. Status is the HTTP status,
// DGError Deepgram's dg-error header (why it refused) and RequestID its
// dg-request-id header, both documented on the troubleshooting page. A 401
// unwraps to ErrUnauthorized.
type HandshakeError struct {
	Status    int
	DGError   string
	RequestID string
}

func (e *HandshakeError) Error() string {
	msg := fmt.Sprintf("deepgram: handshake refused with HTTP %d", e.Status)
	if e.DGError != "" {
		msg += ": " + e.DGError
	}
	if e.RequestID != "" {
		msg += " (request " + e.RequestID + ")"
	}
	return msg
}

// Unwrap returns ErrUnauthorized for a 401, else nil.
func (e *HandshakeError) Unwrap() error {
	if e.Status == 401 {
		return ErrUnauthorized
	}
	return nil
}
