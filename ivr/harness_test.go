package ivr_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/twiml"
)

// publicBase is the URL the server believes Twilio uses; the test server
// really listens on 127.0.0.1:<random>, as behind Railway's proxy.
const (
	publicBase = "https://consent.example.com"
	authToken  = "test-auth-token-0123456789abcdef"
	accountSID = "AC0123456789abcdef0123456789abcdef"
)

// harness is one ConsentLine server on the embedded database, and a
// simulated Twilio pointed at it.
type harness struct {
	t      testing.TB
	dir    string
	store  *sqlitestore.Store
	svc    *consent.Service
	ivr    *ivr.Server
	keys   *pii.Keyring
	clock  *clock
	srv    *httptest.Server
	twilio *twiliosim.Twilio
	lib    *twiml.Library
	// logs is everything the server logged, for tests that check what a
	// log line names (and that it holds no PHI).
	logs *syncBuffer
}

var testKey = []byte("0123456789abcdef0123456789abcdef")

// newHarness starts the server; configure adjusts its ivr.Config.
func newHarness(t testing.TB, dir string, configure ...func(*ivr.Config)) *harness {
	t.Helper()
	ctx := context.Background()
	store, err := sqlitestore.Open(ctx, dir, sqlitestore.Options{Migrate: true})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	keys, err := pii.NewKeyring(testKey)
	if err != nil {
		t.Fatal(err)
	}
	pseudonyms, err := pii.LoadPseudonymizer(ctx, store, keys)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, dir: dir, store: store, keys: keys, clock: &clock{now: time.Unix(1_800_000_000, 0)}, lib: twiml.Builtin(), logs: &syncBuffer{}}
	svc := consent.NewService(consent.Config{
		Store: store, Locker: memlock.New(), Threshold: consent.DefaultThreshold,
		Seal: keys.SealFor,
		Open: keys.OpenFor, PatientRef: pseudonyms.Ref, Now: h.clock.Now,
	})
	h.svc = svc
	cfg := ivr.Config{
		PublicBaseURL: publicBase, AuthToken: authToken, AccountSID: accountSID, Scripts: h.lib, Consent: svc,
		Ready: store.Ping, Logger: slog.New(slog.NewTextHandler(h.logs, nil)), Now: h.clock.Now,
	}
	for _, c := range configure {
		c(&cfg)
	}
	h.ivr = ivr.New(cfg)
	h.srv = httptest.NewServer(h.ivr)
	h.twilio = &twiliosim.Twilio{PublicBaseURL: publicBase, Target: h.srv.URL, AuthToken: authToken, AccountSID: accountSID, HTTP: h.srv.Client()}
	t.Cleanup(h.close)
	return h
}

func (h *harness) close() {
	h.srv.Close()
	_ = h.store.Close()
}

// call is a new simulated call. Tests name calls for readability; the
// server refuses any CallSid but Twilio's shape (CA + 32 hex), so the SID is
// derived from the name: the same name, the same call.
func (h *harness) call(name string) *twiliosim.Call {
	return &twiliosim.Call{Twilio: h.twilio, SID: callSID(name), From: "+14155550123", To: "+18005550199"}
}

// callSID is a Twilio-shaped call SID standing for name.
func callSID(name string) string {
	sum := sha256.Sum256([]byte(name))
	return "CA" + hex.EncodeToString(sum[:16])
}

// start posts the incoming webhook and returns the speech Gather.
func (h *harness) start(c *twiliosim.Call) twiliosim.Verb {
	h.t.Helper()
	resp, err := c.Start(context.Background(), ivr.PathIncoming)
	if err != nil {
		h.t.Fatalf("incoming: %v", err)
	}
	g, ok := resp.SpeechGather()
	if !ok {
		h.t.Fatalf("incoming TwiML has no speech Gather:\n%s", resp.Raw)
	}
	return g
}

// answer posts a final Gather result to the Gather's action.
func (h *harness) answer(c *twiliosim.Call, g twiliosim.Verb, params url.Values) *twiliosim.Response {
	h.t.Helper()
	resp, err := c.TwiML(context.Background(), g.Attr("action"), c.Params(params))
	if err != nil {
		h.t.Fatalf("gather action: %v", err)
	}
	return resp
}

// records counts the stored records of a call, straight from the table.
func (h *harness) records(callSID string) int {
	h.t.Helper()
	var n int
	if err := h.store.DB().QueryRow(`SELECT count(*) FROM consent_records WHERE call_sid = ?`, callSID).Scan(&n); err != nil {
		h.t.Fatalf("count records: %v", err)
	}
	return n
}

func (h *harness) record(callSID string) consent.Record {
	h.t.Helper()
	rec, err := h.store.Get(context.Background(), callSID, h.lib.Default().ID)
	if err != nil {
		h.t.Fatalf("get record %s: %v", callSID, err)
	}
	return rec
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
