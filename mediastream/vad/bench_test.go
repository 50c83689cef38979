package vad

import (
	"testing"

	"github.com/consentline/consentline/internal/audiofixtures"
)

// BenchmarkPush measures one Push (decode + VAD of both tracks, one 20 ms
// frame each) over a real call: echo, caller speech and silence in their
// natural proportions. 1,000 streams at 50 frames/s take
// 50,000 × ns/op / 1e9 of one core.
func BenchmarkPush(b *testing.B) {
	calls, err := audiofixtures.Calls()
	if err != nil {
		b.Fatal(err)
	}
	c := calls[0] // dev_bargein: echo, barge-in, pauses
	frames := len(c.Inbound) / FrameBytes
	d := New()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		off := (i % frames) * FrameBytes
		d.Push(c.Inbound[off:off+FrameBytes], c.Outbound[off:off+FrameBytes])
	}
	nsPerOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(nsPerOp*50*1000/1e9, "cores/1000streams")
}

// TestPushDoesNotAllocate holds Push to zero allocations in steady state.
func TestPushDoesNotAllocate(t *testing.T) {
	calls, err := audiofixtures.Calls()
	if err != nil {
		t.Fatal(err)
	}
	c := calls[0]
	d := New()
	i := 0
	allocs := testing.AllocsPerRun(500, func() {
		off := (i % (len(c.Inbound) / FrameBytes)) * FrameBytes
		d.Push(c.Inbound[off:off+FrameBytes], c.Outbound[off:off+FrameBytes])
		i++
	})
	if allocs != 0 {
		t.Fatalf("Push allocates %.1f times per frame", allocs)
	}
	d.Push(nil, nil) // absent frames are silence, no panic
	d.Push([]byte{0xFF}, make([]byte, 400))
}

// BenchmarkPushCall is BenchmarkPush from a fresh Detector over a whole
// call with a loud echo, the canceller's learning included: ns/op is per
// frame on average over the call.
func BenchmarkPushCall(b *testing.B) {
	calls, err := audiofixtures.Calls()
	if err != nil {
		b.Fatal(err)
	}
	c := calls[1] // dev_loud_echo: echo at 0.30 for the whole disclosure
	frames := len(c.Inbound) / FrameBytes
	b.ReportAllocs()
	var d *Detector
	for i := 0; b.Loop(); i++ {
		f := i % frames
		if f == 0 {
			d = New()
		}
		d.Push(c.Inbound[f*FrameBytes:(f+1)*FrameBytes], c.Outbound[f*FrameBytes:(f+1)*FrameBytes])
	}
}
