package ivr_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/ivr"
)

// answeredWithin plays fn (a webhook) and reports whether it was answered
// within d.
func answeredWithin(d time.Duration, fn func() error) (bool, error) {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return true, err
	case <-time.After(d):
		return false, nil
	}
}

// atCapacity is an instance with one admission slot and one intake slot,
// held at capacity: one call's decision waits in the store (its webhook
// unanswered) and two more calls' wait for admission, so webhooks take
// intake slots; the last of them came through the intake slot. release
// lets all three finish.
func atCapacity(t *testing.T) (h *harness, release func()) {
	t.Helper()
	ctx := context.Background()
	entered := make(chan struct{}, 1)
	svc, blocked := blockedService(t, "intake-deciding", entered)
	h = newHarness(t, t.TempDir(), func(c *ivr.Config) {
		c.Consent, c.IntakeSlots, c.MaxInFlight, c.MinInFlight = svc, 1, 1, 1
		c.DecisionTimeout, c.AnswerDeadline, c.AdmitWait = 10*time.Second, 10*time.Second, 10*time.Second
	})
	answered := make(chan error, 3)
	answer := func(name string) {
		c := h.call(name)
		g := h.start(c)
		go func() {
			_, err := c.TwiML(ctx, g.Attr("action"), c.Params(url.Values{"Digits": {"1"}}))
			answered <- err
		}()
	}
	answer("intake-deciding")
	<-entered // the one admission slot is taken
	answer("intake-waiting")
	time.Sleep(100 * time.Millisecond) // the second waits for admission
	// The third comes at capacity: it takes the intake slot, then waits
	// for admission too.
	answer("intake-waiting-too")
	time.Sleep(100 * time.Millisecond)
	return h, func() {
		close(blocked.release)
		for range 3 {
			if err := <-answered; err != nil {
				t.Error(err)
			}
		}
	}
}

// At capacity, a webhook holds its intake slot only while it uses the
// CPU: those waiting for admission or their decision have given theirs
// back, so with a single slot another call's webhook is still answered.
func TestIntakeSlotFreeWhileDeciding(t *testing.T) {
	h, release := atCapacity(t)
	other := h.call("intake-other")
	ok, err := answeredWithin(5*time.Second, func() error { _, err := other.Start(context.Background(), ivr.PathIncoming); return err })
	release()
	if !ok {
		t.Fatal("a webhook waited for the intake slot of webhooks waiting for their decision")
	}
	if err != nil {
		t.Fatal(err)
	}
}

// A webhook whose body is still arriving holds no intake slot: at
// capacity, a slow sender does not stop the others with a single slot.
func TestIntakeSlowBodyHoldsNoSlot(t *testing.T) {
	h, release := atCapacity(t)
	defer release()
	body, sending := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+ivr.PathIncoming, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	slow := make(chan int, 1)
	go func() {
		resp, err := h.srv.Client().Do(req)
		if err != nil {
			slow <- 0
			return
		}
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	if _, err := io.WriteString(sending, "CallSid=CA"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // its handler is reading the body

	c := h.call("intake-fast")
	ok, err := answeredWithin(5*time.Second, func() error {
		resp, err := c.Start(context.Background(), ivr.PathIncoming)
		if err == nil && !strings.Contains(string(resp.Raw), "<Gather") {
			t.Errorf("the fast call's answer: %s", resp.Raw)
		}
		return err
	})
	sending.Close()
	if code := <-slow; code != http.StatusForbidden {
		t.Errorf("the slow, unsigned webhook got %d, want 403", code)
	}
	if !ok {
		t.Fatal("a webhook waited for a slow sender's body to arrive")
	}
	if err != nil {
		t.Fatal(err)
	}
}
