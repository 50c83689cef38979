package democall

import (
	"bytes"
	"testing"

	"github.com/consentline/consentline/mediastream/vad"
)

func TestGenerateIsDeterministic(t *testing.T) {
	a, b := Generate(), Generate()
	if !bytes.Equal(a.Outbound, b.Outbound) || !bytes.Equal(a.Inbound, b.Inbound) {
		t.Fatal("Generate is not deterministic")
	}
	if len(a.Outbound) != len(a.Inbound) || len(a.Outbound)%vad.FrameBytes != 0 {
		t.Fatalf("tracks %d and %d bytes, want equal whole frames", len(a.Outbound), len(a.Inbound))
	}
	if a.CallerOnsetMS >= a.DisclosureEndMS {
		t.Fatalf("caller onset %d not inside the disclosure (ends %d): not a barge-in", a.CallerOnsetMS, a.DisclosureEndMS)
	}
}

// The detector hears the generated call as the product will: the prompt
// at its onset, nothing in the echo-only stretch, the answer at its onset.
func TestDetectorOnDemoCall(t *testing.T) {
	c := Generate()
	d := vad.New()
	var onsets []int64
	var prompt int64 = -1
	for i := 0; i < len(c.Inbound); i += vad.FrameBytes {
		ch := d.Push(c.Inbound[i:i+vad.FrameBytes], c.Outbound[i:i+vad.FrameBytes])
		if ch.CallerOnset {
			onsets = append(onsets, ch.CallerOnsetMS)
		}
		if ch.PromptOnset && prompt < 0 {
			prompt = ch.PromptOnsetMS
		}
	}
	for range 50 { // a second of silence confirms the last ends
		d.Push(nil, nil)
	}
	t.Logf("prompt onset %d (true %d), caller onsets %v (true %d), last prompt end %d (true %d)",
		prompt, c.PromptOnsetMS, onsets, c.CallerOnsetMS, d.LastPromptEndMS(), c.DisclosureEndMS)
	if e := prompt - c.PromptOnsetMS; prompt < 0 || e < -60 || e > 60 {
		t.Errorf("prompt onset %d, want %d ± 60", prompt, c.PromptOnsetMS)
	}
	if len(onsets) == 0 {
		t.Fatal("no caller onset")
	}
	if e := onsets[0] - c.CallerOnsetMS; e < -60 || e > 60 {
		t.Errorf("caller onset %d, want %d ± 60 (an earlier one is the echo taken for the caller)", onsets[0], c.CallerOnsetMS)
	}
	if onsets[0] >= d.LastPromptEndMS() {
		t.Errorf("caller onset %d not before the prompt's end %d: barge-in missed", onsets[0], d.LastPromptEndMS())
	}
}
