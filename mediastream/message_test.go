package mediastream_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/consentline/consentline/mediastream"
)

func TestParseMessageAcceptsTwiliosMessages(t *testing.T) {
	m, err := mediastream.ParseMessage([]byte(connectedMsg))
	if err != nil || m.Event != mediastream.EventConnected {
		t.Fatalf("connected: %+v, %v", m, err)
	}
	m, err = mediastream.ParseMessage([]byte(startMsg(1, testStream, testCall, testAccount)))
	if err != nil {
		t.Fatal(err)
	}
	want := mediastream.Start{StreamSID: testStream, CallSID: testCall, AccountSID: testAccount,
		Tracks: []mediastream.Track{mediastream.Inbound, mediastream.Outbound}}
	if m.Event != mediastream.EventStart || m.SequenceNumber != 1 || m.Start.StreamSID != want.StreamSID ||
		m.Start.CallSID != want.CallSID || m.Start.AccountSID != want.AccountSID || len(m.Start.Tracks) != 2 ||
		m.Start.Tracks[1] != mediastream.Outbound || m.Start.CustomParameters["lang"] != "en-US" {
		t.Fatalf("start: %+v", m)
	}
	m, err = mediastream.ParseMessage([]byte(mediaMsg(3, testStream, "outbound", 2, 40, frameOf(7))))
	if err != nil {
		t.Fatal(err)
	}
	if m.Event != mediastream.EventMedia || m.Media.Track != mediastream.Outbound || m.Media.Chunk != 2 ||
		m.Media.Timestamp != 40 || !bytes.Equal(m.Media.Payload, frameOf(7)) {
		t.Fatalf("media: %+v", m)
	}
	m, err = mediastream.ParseMessage([]byte(stopMsg(9, testStream, testCall, testAccount)))
	if err != nil || m.Event != mediastream.EventStop || m.Stop.CallSID != testCall {
		t.Fatalf("stop: %+v, %v", m, err)
	}
	for _, s := range []string{
		`{"event":"mark","sequenceNumber":"4","streamSid":"` + testStream + `","mark":{"name":"x"}}`,
		`{"event":"dtmf","sequenceNumber":"5","streamSid":"` + testStream + `","dtmf":{"track":"inbound_track","digit":"1"}}`,
	} {
		if _, err := mediastream.ParseMessage([]byte(s)); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
}

func TestParseMessageRefusesWrongShapes(t *testing.T) {
	media := mediaMsg(3, testStream, "inbound", 2, 40, frameOf(1))
	start := startMsg(1, testStream, testCall, testAccount)
	cases := map[string]string{
		"empty":                 ``,
		"not json":              `{"event":"media"`,
		"array":                 `[1,2]`,
		"deep nesting":          strings.Repeat("[", 1<<20),
		"no event":              `{"sequenceNumber":"1"}`,
		"unknown event":         strings.Replace(media, `"media","seq`, `"clear","seq`, 1),
		"seq not digits":        strings.Replace(media, `"sequenceNumber":"3"`, `"sequenceNumber":"-3"`, 1),
		"seq a number":          strings.Replace(media, `"sequenceNumber":"3"`, `"sequenceNumber":3`, 1),
		"seq too long":          strings.Replace(media, `"sequenceNumber":"3"`, `"sequenceNumber":"12345678901234567890"`, 1),
		"stream sid short":      strings.Replace(media, testStream, testStream[:33], 1),
		"stream sid prefix":     strings.Replace(media, testStream, "CA"+testStream[2:], 1),
		"stream sid upper hex":  strings.Replace(media, testStream, strings.ToUpper(testStream), 1),
		"track":                 strings.Replace(media, `"inbound"`, `"both"`, 1),
		"chunk":                 strings.Replace(media, `"chunk":"2"`, `"chunk":"2x"`, 1),
		"timestamp":             strings.Replace(media, `"timestamp":"40"`, `"timestamp":""`, 1),
		"payload not base64":    strings.Replace(media, `"payload":"`, `"payload":"*`, 1),
		"payload odd size":      mediaMsg(3, testStream, "inbound", 2, 40, make([]byte, 100)),
		"payload too big":       mediaMsg(3, testStream, "inbound", 2, 40, make([]byte, 9*160)),
		"payload escaped nl":    strings.Replace(media, `"payload":"`, `"payload":"\n`, 1),
		"duplicate key":         strings.Replace(media, `"event":"media",`, `"event":"media","event":"media",`, 1),
		"media not object":      `{"event":"media","sequenceNumber":"3","media":"x","streamSid":"` + testStream + `"}`,
		"call sid":              strings.Replace(start, testCall, "CA123", 1),
		"account sid":           strings.Replace(start, testAccount, "AB"+testAccount[2:], 1),
		"start stream differs":  strings.Replace(start, `"streamSid":"`+testStream+`","callSid"`, `"streamSid":"MZ`+strings.Repeat("1", 32)+`","callSid"`, 1),
		"tracks empty":          startMsg(1, testStream, testCall, testAccount, ""),
		"tracks unknown":        startMsg(1, testStream, testCall, testAccount, "inbound", "both_tracks"),
		"tracks repeated":       startMsg(1, testStream, testCall, testAccount, "inbound", "inbound"),
		"encoding":              strings.Replace(start, "audio/x-mulaw", "audio/l16", 1),
		"rate":                  strings.Replace(start, `"sampleRate":8000`, `"sampleRate":16000`, 1),
		"channels":              strings.Replace(start, `"channels":1`, `"channels":2`, 1),
		"custom param not text": strings.Replace(start, `"attempt":"0"`, `"attempt":0`, 1),
		"stop call sid":         strings.Replace(stopMsg(9, testStream, testCall, testAccount), testCall, "CAxyz", 1),
		"connected with sid":    `{"event":"connected","protocol":"Call","version":"1.0.0","streamSid":"` + testStream + `"}`,
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := mediastream.ParseMessage([]byte(msg))
			var pe *mediastream.ProtocolError
			if !errors.As(err, &pe) || pe.Reason == "" {
				t.Fatalf("accepted or unclear: %v", err)
			}
			// The refusal names the fault, never the value.
			if strings.Contains(err.Error(), "0123456789abcdef") {
				t.Errorf("error carries data: %v", err)
			}
		})
	}
}

func TestParserChecksOrder(t *testing.T) {
	start := startMsg(1, testStream, testCall, testAccount)
	in := func(seq, chunk, ts int) string { return mediaMsg(seq, testStream, "inbound", chunk, ts, frameOf(1)) }
	out := func(seq, chunk, ts int) string { return mediaMsg(seq, testStream, "outbound", chunk, ts, frameOf(2)) }
	stop := stopMsg(9, testStream, testCall, testAccount)
	other := "MZ" + strings.Repeat("a", 32)
	cases := []struct {
		name string
		msgs []string
		want string // refusal of the last message; "" when all pass
	}{
		{"twilio's order", []string{connectedMsg, start, in(2, 1, 0), out(3, 1, 0), in(4, 2, 20), out(5, 2, 20), stop}, ""},
		{"without connected", []string{start, in(2, 1, 0)}, ""},
		{"media before start", []string{connectedMsg, in(2, 1, 0)}, "media before start"},
		{"stop before start", []string{stop}, "stop before start"},
		{"second start", []string{start, in(2, 1, 0), strings.Replace(start, `"1"`, `"3"`, 1)}, "second start"},
		{"second connected", []string{connectedMsg, connectedMsg}, "connected not first"},
		{"other account", []string{startMsg(1, testStream, testCall, "AC"+strings.Repeat("9", 32))}, "start for another account"},
		{"stream sid changes", []string{start, mediaMsg(2, other, "inbound", 1, 0, frameOf(1))}, "streamSid changed"},
		{"sequence backwards", []string{start, in(3, 1, 0), out(2, 1, 0)}, "sequenceNumber not increasing"},
		{"sequence repeated", []string{start, in(2, 1, 0), out(2, 1, 0)}, "sequenceNumber not increasing"},
		{"chunk repeated", []string{start, in(2, 1, 0), in(3, 1, 20)}, "chunk not increasing"},
		{"timestamp backwards", []string{start, in(2, 1, 40), in(3, 2, 20)}, "timestamp going backwards"},
		{"track not started", []string{startMsg(1, testStream, testCall, testAccount, "inbound"), out(2, 1, 0)}, "media on a track not started"},
		{"after stop", []string{start, in(2, 1, 0), stop, in(10, 2, 20)}, "message after stop"},
		{"stop for other call", []string{start, stopMsg(9, testStream, "CA"+strings.Repeat("b", 32), testAccount)}, "stop for another call"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := mediastream.NewParser(testAccount)
			var err error
			for i, m := range c.msgs {
				_, err = p.Parse([]byte(m))
				if err != nil && i != len(c.msgs)-1 {
					t.Fatalf("message %d refused: %v", i, err)
				}
			}
			got := ""
			if err != nil {
				got = err.(*mediastream.ProtocolError).Reason
			}
			if got != c.want {
				t.Fatalf("refusal %q, want %q", got, c.want)
			}
			if err != nil {
				// A refused stream stays refused.
				if _, again := p.Parse([]byte(in(99, 99, 9999))); again == nil {
					t.Fatal("parser accepted a message after refusing one")
				}
			}
		})
	}
}

// A media message's payload is decoded into the Parser's own buffer: the
// caller's bytes are not written.
func TestParserDoesNotWriteItsInput(t *testing.T) {
	p := mediastream.NewParser(testAccount)
	if _, err := p.Parse([]byte(startMsg(1, testStream, testCall, testAccount))); err != nil {
		t.Fatal(err)
	}
	msg := []byte(mediaMsg(2, testStream, "inbound", 1, 0, frameOf(0xAB)))
	orig := append([]byte(nil), msg...)
	m, err := p.Parse(msg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(msg, orig) || !bytes.Equal(m.Media.Payload, frameOf(0xAB)) {
		t.Fatal("input changed or payload wrong")
	}
}

// FuzzParseMessage feeds arbitrary bytes to ParseMessage, and the same bytes
// split at newlines to one Parser as a stream, and the accepted media to an
// Aligner: nothing may panic, accepted media must be whole frames within the
// bound, and frames must come out in order.
func FuzzParseMessage(f *testing.F) {
	f.Add([]byte(connectedMsg))
	f.Add([]byte(startMsg(1, testStream, testCall, testAccount)))
	f.Add([]byte(mediaMsg(2, testStream, "inbound", 1, 0, frameOf(3))))
	f.Add([]byte(stopMsg(3, testStream, testCall, testAccount)))
	f.Add([]byte(connectedMsg + "\n" + startMsg(1, testStream, testCall, testAccount) + "\n" +
		mediaMsg(2, testStream, "inbound", 1, 0, frameOf(3)) + "\n" + mediaMsg(3, testStream, "outbound", 1, 0, frameOf(4)) + "\n" +
		mediaMsg(4, testStream, "inbound", 2, 400, frameOf(5)) + "\n" + stopMsg(5, testStream, testCall, testAccount)))
	f.Add([]byte(`{"event":"media","media":{"payload":"` + base64.StdEncoding.EncodeToString(make([]byte, 320)) + `"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if m, err := mediastream.ParseMessage(data); err == nil {
			if p := m.Payload(); p != nil && (len(p)%mediastream.FrameBytes != 0 || len(p) > mediastream.MaxPayloadFrames*mediastream.FrameBytes) {
				t.Fatalf("payload of %d bytes accepted", len(p))
			}
		}
		p := mediastream.NewParser(testAccount)
		var a *mediastream.Aligner
		lastMS := int64(-1)
		emit := func(fr mediastream.Frame) {
			if fr.MS <= lastMS {
				t.Fatalf("frame %d after %d", fr.MS, lastMS)
			}
			if (fr.Inbound == nil && fr.Outbound == nil) ||
				(fr.Inbound != nil && len(fr.Inbound) != mediastream.FrameBytes) ||
				(fr.Outbound != nil && len(fr.Outbound) != mediastream.FrameBytes) {
				t.Fatalf("bad frame %+v", fr)
			}
			lastMS = fr.MS
		}
		for _, line := range bytes.Split(data, []byte("\n")) {
			m, err := p.Parse(line)
			if err != nil {
				break
			}
			switch m.Event {
			case mediastream.EventStart:
				a = mediastream.NewAligner(m.Start.Tracks, 0, emit)
			case mediastream.EventMedia:
				a.Push(m.Media.Track, m.Media.Timestamp, m.Media.Payload)
			}
		}
		if a != nil {
			a.Flush()
		}
	})
}
