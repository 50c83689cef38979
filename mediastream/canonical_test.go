package mediastream

import (
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
)

const canonicalSample = `{"event":"media","sequenceNumber":"3","media":{"track":"outbound","chunk":"1","timestamp":"5","payload":"%s"},"streamSid":"MZ0123456789abcdef0123456789abcdef"}`

func canonicalMsg() string {
	return strings.Replace(canonicalSample, "%s", base64.StdEncoding.EncodeToString(make([]byte, FrameBytes)), 1)
}

// TestCanonicalMediaTaken checks that Twilio's media message takes the
// one-pass path, and that a message off its exact shape does not.
func TestCanonicalMediaTaken(t *testing.T) {
	var p Parser
	var m Message
	if ok, err := p.canonicalMedia([]byte(canonicalMsg()), &m); !ok || err != nil {
		t.Fatalf("canonical media: taken %v, %v", ok, err)
	}
	if m.Event != EventMedia || m.SequenceNumber != 3 || m.Media.Track != Outbound || m.Media.Chunk != 1 ||
		m.Media.Timestamp != 5 || len(m.Media.Payload) != FrameBytes || m.StreamSID != "MZ0123456789abcdef0123456789abcdef" {
		t.Fatalf("parsed %+v", m)
	}
	for _, off := range []string{
		strings.Replace(canonicalMsg(), `"event":"media",`, `"event": "media",`, 1),
		strings.Replace(canonicalMsg(), `"track":"outbound"`, `"track":"out\u0062ound"`, 1),
		canonicalMsg() + " ",
		strings.Replace(canonicalMsg(), `"chunk":"1"`, `"chunk":1`, 1),
	} {
		if ok, _ := p.canonicalMedia([]byte(off), &m); ok {
			t.Errorf("off-shape message taken: %s", off)
		}
	}
}

// FuzzCanonicalMedia holds the one-pass media path to the general one:
// whatever it takes, shapeJSON parses to the same message or refuses
// with the same reason.
func FuzzCanonicalMedia(f *testing.F) {
	f.Add([]byte(canonicalMsg()))
	f.Add([]byte(strings.Replace(canonicalMsg(), `"sequenceNumber":"3"`, `"sequenceNumber":"x3"`, 1)))
	f.Add([]byte(strings.Replace(canonicalMsg(), `"track":"outbound"`, `"track":"both"`, 1)))
	f.Add([]byte(strings.Replace(canonicalMsg(), `"event":"media"`, `"event":"mark"`, 1)))
	f.Add([]byte(strings.Replace(canonicalSample, "%s", "AAAA", 1)))
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast, slow Parser
		var mf, ms Message
		ok, errFast := fast.canonicalMedia(data, &mf)
		if !ok {
			return
		}
		errSlow := slow.shapeJSON(data, &ms)
		if !reflect.DeepEqual(errFast, errSlow) {
			t.Fatalf("one-pass %v, general %v", errFast, errSlow)
		}
		if errFast == nil && !reflect.DeepEqual(mf, ms) {
			t.Fatalf("one-pass %+v, general %+v", mf, ms)
		}
	})
}
