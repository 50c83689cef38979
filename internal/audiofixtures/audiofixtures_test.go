package audiofixtures

import "testing"

func TestFixturesLoad(t *testing.T) {
	clips, err := Clips()
	if err != nil {
		t.Fatal(err)
	}
	if len(clips) != 11 {
		t.Errorf("%d clips, want 11", len(clips))
	}
	speech := 0
	for _, c := range clips {
		if len(c.Audio) == 0 || c.OnsetMS <= 0 {
			t.Errorf("%s: %d bytes, onset %d", c.File, len(c.Audio), c.OnsetMS)
		}
		if c.IsSpeech() {
			speech++
		}
	}
	if speech != 8 {
		t.Errorf("%d speech clips, want 8", speech)
	}
	calls, err := Calls()
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 4 {
		t.Fatalf("%d calls, want 4", len(calls))
	}
	for _, c := range calls {
		// The last frame may be short: a stream's last media message
		// can carry fewer than 160 bytes too.
		if len(c.Inbound) < 160*50 {
			t.Errorf("%s: inbound only %d bytes", c.Name, len(c.Inbound))
		}
		if (c.CallerOnsetMS < 0) != (c.Intent == "none") {
			t.Errorf("%s: onset %d with intent %q", c.Name, c.CallerOnsetMS, c.Intent)
		}
	}
}
