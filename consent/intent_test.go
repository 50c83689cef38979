package consent

import (
	"testing"

	"github.com/consentline/consentline/consent/answer"
)

// Every meaning the classifier can return has its intent; a new one would
// be Unclear (never a decision) until mapped here.
func TestIntentOf(t *testing.T) {
	for m, want := range map[answer.Meaning]Intent{
		answer.None: NoIntent, answer.Agree: Agree, answer.Decline: Decline, answer.Unclear: Unclear, answer.Meaning(99): Unclear,
	} {
		if got := intentOf(m); got != want {
			t.Errorf("intentOf(%v) = %q, want %q", m, got, want)
		}
	}
}
