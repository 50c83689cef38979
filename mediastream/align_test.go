package mediastream_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/consentline/consentline/mediastream"
)

// push is one media message for the aligner: track, timestamp, frame tag.
type push struct {
	track mediastream.Track
	ts    uint64
	tag   byte
}

// alignAll runs pushes through an Aligner and renders each frame as
// "ms:in/out" with "-" for a missing track.
func alignAll(tracks []mediastream.Track, pushes []push) (string, *mediastream.Aligner) {
	var out []string
	a := mediastream.NewAligner(tracks, 0, func(f mediastream.Frame) {
		in, ob := "-", "-"
		if f.Inbound != nil {
			in = fmt.Sprint(f.Inbound[0])
		}
		if f.Outbound != nil {
			ob = fmt.Sprint(f.Outbound[0])
		}
		out = append(out, fmt.Sprintf("%d:%s/%s", f.MS, in, ob))
	})
	for _, p := range pushes {
		a.Push(p.track, p.ts, frameOf(p.tag))
	}
	a.Flush()
	return strings.Join(out, " "), a
}

var both = []mediastream.Track{mediastream.Inbound, mediastream.Outbound}

const (
	in  = mediastream.Inbound
	out = mediastream.Outbound
)

func TestAlignerPairsInterleavedTracks(t *testing.T) {
	got, a := alignAll(both, []push{{in, 0, 1}, {out, 0, 2}, {out, 20, 4}, {in, 20, 3}, {in, 40, 5}, {out, 40, 6}})
	if want := "0:1/2 20:3/4 40:5/6"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	if a.Emitted != 3 || a.Late != 0 {
		t.Fatalf("emitted %d late %d", a.Emitted, a.Late)
	}
}

// A slot is held while the other track may still fill it, so a track that
// runs a few slots ahead is still paired.
func TestAlignerWaitsForATrackRunningAhead(t *testing.T) {
	var pushes []push
	for i := uint64(0); i < 4; i++ {
		pushes = append(pushes, push{out, i * 20, byte(10 + i)})
	}
	for i := uint64(0); i < 4; i++ {
		pushes = append(pushes, push{in, i * 20, byte(20 + i)})
	}
	var emittedBeforeInbound int
	a := mediastream.NewAligner(both, 0, func(mediastream.Frame) { emittedBeforeInbound++ })
	for _, p := range pushes[:4] {
		a.Push(p.track, p.ts, frameOf(p.tag))
	}
	if emittedBeforeInbound != 0 {
		t.Fatalf("%d frames emitted before the lagging track could fill them", emittedBeforeInbound)
	}
	got, _ := alignAll(both, pushes)
	if want := "0:20/10 20:21/11 40:22/12 60:23/13"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// A track more than MaxLag slots behind loses the slot: it is emitted
// without it, and its frame, when it comes, is counted late.
func TestAlignerGivesUpOnATrackTooFarBehind(t *testing.T) {
	var pushes []push
	for i := uint64(0); i <= mediastream.DefaultMaxLag; i++ {
		pushes = append(pushes, push{out, i * 20, byte(10 + i)})
	}
	pushes = append(pushes, push{in, 0, 99}, push{in, 20 * mediastream.DefaultMaxLag, 98})
	got, a := alignAll(both, pushes)
	if want := "0:-/10 20:-/11 40:-/12 60:-/13 80:-/14 100:98/15"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	if a.Late != 1 {
		t.Fatalf("late %d, want 1", a.Late)
	}
}

// A started track that never sends delays each slot by MaxLag, and a
// stream started with one track emits at once.
func TestAlignerOneTrack(t *testing.T) {
	pushes := []push{{in, 0, 1}, {in, 20, 2}, {in, 40, 3}}
	got, _ := alignAll(both, pushes)
	if want := "0:1/- 20:2/- 40:3/-"; got != want {
		t.Fatalf("both started, one sends: got %s, want %s", got, want)
	}
	var n int
	a := mediastream.NewAligner([]mediastream.Track{in}, 0, func(mediastream.Frame) { n++ })
	for _, p := range pushes {
		a.Push(p.track, p.ts, frameOf(p.tag))
	}
	if n != 3 {
		t.Fatalf("inbound-only stream emitted %d of 3 frames before the end", n)
	}
}

// Gaps: a slot neither track filled is skipped, not emitted empty; a
// track's gap alone leaves it nil in the slots it skipped; a jump longer
// than the ring emits what was buffered and starts afresh.
func TestAlignerGaps(t *testing.T) {
	got, _ := alignAll(both, []push{{in, 0, 1}, {out, 0, 2}, {out, 20, 4}, {in, 60, 5}, {out, 40, 6}, {out, 60, 7}, {in, 100_000, 8}, {out, 100_000, 9}})
	if want := "0:1/2 20:-/4 40:-/6 60:5/7 100000:8/9"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// Timestamps that jitter around the 20 ms grid still give each frame its
// own slot, rounded to the nearest.
func TestAlignerJitter(t *testing.T) {
	got, _ := alignAll(both, []push{{in, 1, 1}, {out, 0, 2}, {in, 18, 3}, {out, 22, 4}, {in, 38, 5}, {in, 41, 6}, {out, 60, 7}})
	if want := "0:1/2 20:3/4 40:5/- 60:6/7"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// A payload of several frames fills consecutive slots.
func TestAlignerMultiFramePayload(t *testing.T) {
	var got []int64
	a := mediastream.NewAligner([]mediastream.Track{in}, 0, func(f mediastream.Frame) { got = append(got, f.MS) })
	a.Push(in, 40, append(frameOf(1), frameOf(2)...))
	a.Flush()
	if fmt.Sprint(got) != "[40 60]" {
		t.Fatalf("got %v", got)
	}
}
