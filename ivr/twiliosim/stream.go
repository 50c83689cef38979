package twiliosim

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// frameBytes is 20 ms of 8 kHz μ-law, what Twilio sends per media message.
const frameBytes = 160

// StreamPlay is one Media Stream as Twilio plays it: the call's audio on
// both tracks, 20 ms per media message.
type StreamPlay struct {
	CallSID   string
	StreamSID string // generated when empty
	// CustomParameters are the <Parameter>s of the <Stream>.
	CustomParameters map[string]string
	// Tracks announced in start; default both. A track with no audio is
	// announced but sends nothing (a valid stream).
	Tracks []string
	// Inbound is what the caller's line sends, Outbound what the caller
	// hears; raw μ-law, cut into 160-byte frames (a short last frame is
	// padded with μ-law silence).
	Inbound, Outbound []byte
	// Realtime paces one slot (a frame of each track) every 20 ms, as
	// Twilio does; otherwise everything is sent at once.
	Realtime bool
	// OutboundLead sends the outbound track this many slots ahead of the
	// inbound one (Twilio's tracks do not arrive in lockstep).
	OutboundLead int

	// Fault injection. StopAfter > 0 sends stop after that many slots
	// (the call hung up early). AbortAfter > 0 drops the TCP connection
	// after that many slots, with no stop and no close frame, halfway
	// through a frame. NoStop ends the stream with a close frame but no
	// stop message.
	StopAfter, AbortAfter int
	NoStop                bool
	// Rewrite, when set, may replace each message before it is sent (i is
	// its index from 0, connected included); returning nil skips it.
	Rewrite func(i int, msg []byte) []byte
}

// StreamResult is how the server ended the stream.
type StreamResult struct {
	StreamSID string
	Sent      int // messages sent
	// Upgrade is how long the websocket upgrade took, dial included.
	Upgrade time.Duration
	// CloseCode and CloseText are the server's close frame (0 and "" when
	// it sent none).
	CloseCode int
	CloseText string
}

// Stream plays s to wssURL (a public URL as the TwiML's <Stream url>
// writes it), signing the upgrade over it as Twilio does; with Target set
// it really connects to Target's host. It sends connected, start, the media
// of both tracks interleaved (each track with its own chunk and timestamp,
// one sequenceNumber across all messages), then stop and a close frame,
// and waits for the server's close. An HTTP refusal of the upgrade is an
// error naming its status.
func (t *Twilio) Stream(ctx context.Context, wssURL string, s StreamPlay) (*StreamResult, error) {
	dialURL, err := t.wsTarget(wssURL)
	if err != nil {
		return nil, err
	}
	if s.StreamSID == "" {
		s.StreamSID = "MZ" + randomHex(16)
	}
	if len(s.Tracks) == 0 {
		s.Tracks = []string{"inbound", "outbound"}
	}
	hdr := http.Header{"X-Twilio-Signature": {Sign(t.AuthToken, wssURL, nil)}}
	dialed := time.Now()
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, dialURL, hdr)
	upgrade := time.Since(dialed)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("twiliosim: stream upgrade refused: status %d", resp.StatusCode)
		}
		return nil, fmt.Errorf("twiliosim: stream dial: %w", err)
	}
	defer conn.Close()
	res := &StreamResult{StreamSID: s.StreamSID, Upgrade: upgrade}

	// The server's close frame is read concurrently, as Twilio would see it
	// while still sending.
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					res.CloseCode, res.CloseText = ce.Code, ce.Text
				}
				return
			}
		}
	}()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	sendErr := t.play(ctx, conn, &s, res)
	if errors.Is(sendErr, errAborted) {
		<-closed
		return res, nil
	}
	if sendErr == nil {
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		conn.Close()
		<-closed
	}
	if sendErr != nil && res.CloseCode == 0 {
		return res, sendErr
	}
	return res, nil
}

var errAborted = errors.New("aborted")

func (t *Twilio) play(ctx context.Context, conn *websocket.Conn, s *StreamPlay, res *StreamResult) error {
	i := 0
	seq := 0
	write := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if s.Rewrite != nil {
			if b = s.Rewrite(i, b); b == nil {
				i++
				return nil
			}
		}
		i++
		if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
			return err
		}
		res.Sent++
		return nil
	}
	next := func() string { seq++; return strconv.Itoa(seq) }

	if err := write(map[string]string{"event": "connected", "protocol": "Call", "version": "1.0.0"}); err != nil {
		return err
	}
	params := s.CustomParameters
	if params == nil {
		params = map[string]string{}
	}
	err := write(map[string]any{
		"event": "start", "sequenceNumber": next(), "streamSid": s.StreamSID,
		"start": map[string]any{
			"accountSid": t.AccountSID, "streamSid": s.StreamSID, "callSid": s.CallSID,
			"tracks": s.Tracks, "customParameters": params,
			"mediaFormat": map[string]any{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
		},
	})
	if err != nil {
		return err
	}
	tracks := []struct {
		name  string
		audio []byte
	}{{"inbound", s.Inbound}, {"outbound", s.Outbound}}
	frames := func(audio []byte) int { return (len(audio) + frameBytes - 1) / frameBytes }
	slots := max(frames(s.Inbound)+s.OutboundLead, frames(s.Outbound))
	media := func(track string, audio []byte, k int) error {
		frame := make([]byte, frameBytes)
		for j := range frame {
			frame[j] = 0xFF // μ-law silence
		}
		copy(frame, audio[k*frameBytes:min(len(audio), (k+1)*frameBytes)])
		return write(map[string]any{
			"event": "media", "sequenceNumber": next(), "streamSid": s.StreamSID,
			"media": map[string]string{
				"track": track, "chunk": strconv.Itoa(k + 1), "timestamp": strconv.Itoa(k * 20),
				"payload": base64.StdEncoding.EncodeToString(frame),
			},
		})
	}
	start := time.Now()
	for slot := 0; slot < slots; slot++ {
		if s.AbortAfter > 0 && slot == s.AbortAfter {
			// Half a frame header, then the line goes dead.
			_, _ = conn.NetConn().Write([]byte{0x81})
			conn.NetConn().Close()
			return errAborted
		}
		if s.StopAfter > 0 && slot == s.StopAfter {
			break
		}
		for _, tr := range tracks {
			// At slot i the outbound track sends its frame i and the
			// inbound track, OutboundLead slots behind, its frame
			// i-OutboundLead.
			k := slot
			if tr.name == "inbound" {
				k = slot - s.OutboundLead
			}
			if k < 0 || k*frameBytes >= len(tr.audio) {
				continue
			}
			if err := media(tr.name, tr.audio, k); err != nil {
				return err
			}
		}
		if s.Realtime {
			wait := time.Until(start.Add(time.Duration(slot+1) * 20 * time.Millisecond))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
	}
	if s.NoStop {
		return nil
	}
	return write(map[string]any{
		"event": "stop", "sequenceNumber": next(), "streamSid": s.StreamSID,
		"stop": map[string]string{"accountSid": t.AccountSID, "callSid": s.CallSID},
	})
}

// wsTarget maps a public wss:// URL to where the connection really goes:
// Target's host, with ws for http and wss for https.
func (t *Twilio) wsTarget(wssURL string) (string, error) {
	pub, err := url.Parse(wssURL)
	if err != nil || (pub.Scheme != "wss" && pub.Scheme != "ws") {
		return "", fmt.Errorf("twiliosim: stream URL %q is not ws(s)://", wssURL)
	}
	if t.Target == "" {
		return wssURL, nil
	}
	target, err := url.Parse(strings.TrimRight(t.Target, "/"))
	if err != nil {
		return "", fmt.Errorf("twiliosim: Target: %w", err)
	}
	out := *pub
	out.Host = target.Host
	out.Scheme = "ws"
	if target.Scheme == "https" {
		out.Scheme = "wss"
	}
	return out.String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
