package ivr_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
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

// A webhook holds its intake slot only while it uses the CPU: one whose
// decision waits on the database has given its slot back, so with a
// single slot the other calls' webhooks are still answered meanwhile.
func TestIntakeSlotFreeWhileDeciding(t *testing.T) {
	ctx := context.Background()
	store, err := sqlitestore.Open(ctx, t.TempDir(), sqlitestore.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	keys, err := pii.NewKeyring(testKey)
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{}, 1)
	blocked := blockingStore{Store: store, callSID: callSID("intake-deciding"), release: make(chan struct{}), entered: entered}
	svc := consent.NewService(consent.Config{
		Store: blocked, Locker: memlock.New(), Threshold: consent.DefaultThreshold,
		Seal: keys.SealFor, Open: keys.OpenFor, PatientRef: func(string) string { return "pr_intake" },
	})
	h := newHarness(t, t.TempDir(), func(c *ivr.Config) {
		c.Consent, c.IntakeSlots = svc, 1
		c.DecisionTimeout, c.AnswerDeadline = 10*time.Second, 10*time.Second
	})
	deciding := h.call("intake-deciding")
	g := h.start(deciding)
	decided := make(chan error, 1)
	go func() {
		_, err := deciding.TwiML(ctx, g.Attr("action"), deciding.Params(url.Values{"Digits": {"1"}}))
		decided <- err
	}()
	<-entered // its decision waits in the store, its webhook unanswered

	other := h.call("intake-other")
	ok, err := answeredWithin(5*time.Second, func() error { _, err := other.Start(ctx, ivr.PathIncoming); return err })
	close(blocked.release)
	if err := <-decided; err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatal("another call's webhook waited for the intake slot of a webhook whose decision was waiting")
	}
	if err != nil {
		t.Fatal(err)
	}
}

// A webhook whose body is still arriving holds no intake slot: a slow
// sender does not stop the others with a single slot.
func TestIntakeSlowBodyHoldsNoSlot(t *testing.T) {
	h := newHarness(t, t.TempDir(), func(c *ivr.Config) { c.IntakeSlots = 1 })
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
