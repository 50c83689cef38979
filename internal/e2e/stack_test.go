package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/pgstore"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/testdb"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/relay"
	"github.com/consentline/consentline/relay/relaypg"
	"github.com/consentline/consentline/relay/relaysqlite"
	"github.com/consentline/consentline/twiml"
)

// The PHI every simulated call carries. Tests assert none of it shows up in
// logs, command output or anything sent in the clear.
const (
	callerPrefix = "+1415555" // + 4 digits per call
	calledNumber = "+18005550199"
	transcript   = "yes I agree to the recording"
)

// phi lists the strings that must never appear in logs or operator output.
var phi = []string{callerPrefix, "8005550199", "agree to the recording"}

// nationalCaller matches a caller's number written without +1 (4155550001):
// ten digits standing alone, so the digits of a timestamp's nanoseconds
// (…T23:55:54.041555505Z) are not taken for one.
var nationalCaller = regexp.MustCompile(`(^|[^0-9])415555[0-9]{4}([^0-9]|$)`)

// findPHI returns the PHI text contains, or "".
func findPHI(text string) string {
	for _, p := range phi {
		if strings.Contains(text, p) {
			return p
		}
	}
	if m := nationalCaller.FindString(text); m != "" {
		return m
	}
	return ""
}

// assertNoPHI fails the test if text (named where) contains PHI.
func assertNoPHI(t testing.TB, where, text string) {
	t.Helper()
	if p := findPHI(text); p != "" {
		t.Errorf("%s contains PHI %q", where, p)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// secrets are one deployment's credentials, made fresh per test.
type secrets struct {
	accountSID, authToken string
	keyHex                string // ENCRYPTION_KEY
	signingSecret         string // RELAY_SIGNING_SECRET
	keys                  *pii.Keyring
	signer                *relay.Signer
}

func newSecrets(t testing.TB) secrets {
	t.Helper()
	s := secrets{accountSID: "AC" + randomHex(16), authToken: randomHex(16), keyHex: randomHex(32)}
	var err error
	if s.signingSecret, err = relay.NewSigningSecret(); err != nil {
		t.Fatal(err)
	}
	if s.signer, err = relay.ParseSigningSecret(s.signingSecret); err != nil {
		t.Fatal(err)
	}
	if s.keys, err = pii.ParseKeyring(s.keyHex, ""); err != nil {
		t.Fatal(err)
	}
	return s
}

// stack is one ConsentLine instance in the test process, wired as
// `consentline serve` wires it (cmd/consentline/serve.go): the store with the
// relay's outbox writer as its Outbox, the relay on the same database,
// consent.Service, and the ivr router behind an httptest server.
type stack struct {
	secrets
	backend string // "postgres" or "sqlite"
	dbURL   string // postgres only
	pool    *pgxpool.Pool
	store   consent.Store
	relay   *relay.Relay
	svc     *consent.Service
	lib     *twiml.Library
	srv     *httptest.Server
	twilio  *twiliosim.Twilio
	logs    *lockedBuffer
}

type stackOptions struct {
	backend string // "postgres" (default) or "sqlite"
	hookURL string // ZAPIER_WEBHOOK_URL; empty: audit only
	// configure adjusts the relay's configuration after it is set up as
	// serve sets it up (tests inject a clock there).
	configure func(*relay.Config)
}

func newStack(t testing.TB, o stackOptions) *stack {
	t.Helper()
	ctx := context.Background()
	st := &stack{secrets: newSecrets(t), backend: o.backend, lib: twiml.Builtin(), logs: &lockedBuffer{}}
	if st.backend == "" {
		st.backend = "postgres"
	}
	log := slog.New(slog.NewTextHandler(st.logs, nil))
	deliver := o.hookURL != ""
	cfg := relay.Config{Keyring: st.keys, PII: relay.PIIEncrypted, Logger: log}
	if o.hookURL != "" {
		cfg.WebhookURL, cfg.Signer = o.hookURL, st.signer
	}
	switch st.backend {
	case "postgres":
		st.dbURL = testdb.Postgres(t)
		outbox, err := relay.NewOutbox(relaypg.New(nil), st.keys, deliver)
		if err != nil {
			t.Fatal(err)
		}
		ps, err := pgstore.Open(ctx, st.dbURL, pgstore.Options{Migrate: true, Outbox: outbox})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ps.Close() })
		if err := relaypg.Migrate(ctx, ps.Pool()); err != nil {
			t.Fatal(err)
		}
		st.store, st.pool = ps, ps.Pool()
		if cfg.Pseudonymizer, err = pii.LoadPseudonymizer(ctx, ps, st.keys); err != nil {
			t.Fatal(err)
		}
		if o.configure != nil {
			o.configure(&cfg)
		}
		if st.relay, err = relay.New(relaypg.New(ps.Pool()), cfg); err != nil {
			t.Fatal(err)
		}
	case "sqlite":
		outbox, err := relay.NewOutbox(relaysqlite.New(nil), st.keys, deliver)
		if err != nil {
			t.Fatal(err)
		}
		ss, err := sqlitestore.Open(ctx, t.TempDir(), sqlitestore.Options{Migrate: true, Outbox: outbox})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ss.Close() })
		if err := relaysqlite.Migrate(ctx, ss.DB()); err != nil {
			t.Fatal(err)
		}
		st.store = ss
		if cfg.Pseudonymizer, err = pii.LoadPseudonymizer(ctx, ss, st.keys); err != nil {
			t.Fatal(err)
		}
		if o.configure != nil {
			o.configure(&cfg)
		}
		if st.relay, err = relay.New(relaysqlite.New(ss.DB()), cfg); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unknown backend %q", st.backend)
	}
	pseudonyms := cfg.Pseudonymizer
	st.svc = consent.NewService(consent.Config{
		Store: st.store, Locker: memlock.New(), Threshold: consent.DefaultThreshold,
		Seal: st.keys.SealFor,
		Open: st.keys.OpenFor, PatientRef: pseudonyms.Ref,
	})
	rel := st.relay
	st.srv = httptest.NewServer(ivr.New(ivr.Config{
		PublicBaseURL: "https://consent.example.com", AuthToken: st.authToken, AccountSID: st.accountSID, Scripts: st.lib,
		Consent: st.svc, Ready: st.store.Ping, Logger: log,
		CallCompleted: func(ctx context.Context, c ivr.CallStatus) error {
			_, _, err := rel.RecordCallCompleted(ctx, relay.CallCompleted{CallSID: c.CallSID, From: c.From, To: c.To, At: time.Now()})
			return err
		},
	}))
	t.Cleanup(st.srv.Close)
	st.twilio = &twiliosim.Twilio{PublicBaseURL: "https://consent.example.com", Target: st.srv.URL,
		AuthToken: st.authToken, AccountSID: st.accountSID, HTTP: st.srv.Client()}
	return st
}

// start starts the relay's workers until the test ends.
func (st *stack) start(t testing.TB) {
	t.Helper()
	if err := st.relay.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := st.relay.Stop(ctx); err != nil {
			t.Errorf("relay stop: %v", err)
		}
	})
}

// decide records one decision through consent.Service, as the Gather
// handler would: speech for even i, a key for odd i; granted or declined by
// i%4. It returns the record.
func (st *stack) decide(ctx context.Context, sid string, i int) (consent.Record, error) {
	script := st.lib.Default()
	a := consent.Answer{
		Call:  consent.Call{CallSID: sid, From: callerNumber(i), To: calledNumber, Script: script.Ref()},
		Heard: consent.Heard{MS: 4200, MustHearComplete: true, Timing: consent.TimingEstimated},
	}
	if i%2 == 0 {
		conf := 0.93
		a.Source, a.Transcript, a.Confidence = consent.SourceSpeech, transcript, &conf
		if i%4 == 2 {
			a.Transcript = "no I do not agree to the recording"
		}
	} else {
		a.Source, a.Intent = consent.SourceDTMF, script.IntentForDigits("1")
		if i%4 == 3 {
			a.Intent = script.IntentForDigits("2")
		}
	}
	out, err := st.svc.Decide(ctx, a)
	if err != nil {
		return consent.Record{}, err
	}
	if !out.Recorded || !out.Created {
		return consent.Record{}, fmt.Errorf("call %s: decision not recorded (%+v)", sid, out.Intent)
	}
	return out.Record, nil
}

func callerNumber(i int) string { return fmt.Sprintf("%s%04d", callerPrefix, i%10000) }

// gatherAction plays one incoming call and returns the URL of its speech
// Gather's action: where Twilio posts the caller's answer.
func gatherAction(ctx context.Context, tw *twiliosim.Twilio, sid string) (string, error) {
	c := &twiliosim.Call{Twilio: tw, SID: sid, From: callerNumber(0), To: calledNumber}
	resp, err := c.Start(ctx, ivr.PathIncoming)
	if err != nil {
		return "", err
	}
	g, ok := resp.SpeechGather()
	if !ok || g.Attr("action") == "" {
		return "", fmt.Errorf("incoming TwiML has no speech Gather with an action:\n%s", resp.Raw)
	}
	return g.Attr("action"), nil
}

// answerKey posts a key press to a Gather action and checks the read-back
// ends the call.
func answerKey(ctx context.Context, c *twiliosim.Call, action, digits string) error {
	resp, err := c.TwiML(ctx, action, c.Params(url.Values{"Digits": {digits}}))
	if err != nil {
		return err
	}
	if !resp.HangsUp() {
		return fmt.Errorf("call %s: answer %s got no read-back:\n%s", c.SID, digits, resp.Raw)
	}
	return nil
}

// callSID makes the i-th call's Twilio SID (CA + 32 hex) under a per-test tag.
func callSID(tag string, i int) string {
	s := fmt.Sprintf("CA%s%08x", tag, i)
	for len(s) < 34 {
		s += "0"
	}
	return s[:34]
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers (loggers,
// subprocess output).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The PHI check finds a caller's number in any form, and not in the digits
// of a timestamp.
func TestFindPHI(t *testing.T) {
	for text, want := range map[string]bool{
		`"time":"2026-11-29T23:55:54.041555505Z"`: false,
		`"from":"+14155550001"`:                   true,
		`caller 4155550001 hung up`:               true,
		`"n":"(415) 555-0001"`:                    false, // not a form anything here writes
		`ref 94155550001`:                         false,
	} {
		if got := findPHI(text) != ""; got != want {
			t.Errorf("findPHI(%s) found %v, want %v", text, got, want)
		}
	}
}
