package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/pgstore"
	"github.com/consentline/consentline/consent/redislock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/faultproxy"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/internal/testdb"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/mediastream"
	"github.com/consentline/consentline/relay"
	"github.com/consentline/consentline/relay/relaypg"
	"github.com/consentline/consentline/relay/relaysqlite"
	"github.com/consentline/consentline/twiml"
)

// The public URL every instance believes Twilio uses (as behind Railway's
// load balancer); each really listens on its own 127.0.0.1 port.
const (
	publicBase = "https://consent.example.com"
	authToken  = "0123456789abcdef0123456789abcdef" // Twilio's shape: twilio-go refuses other characters
	accountSID = "AC0123456789abcdef0123456789abcdef"
	// webhookBudget is the contract's bound on every webhook answer.
	webhookBudget = 2 * time.Second
	// answerDeadline is ivr's default AnswerDeadline; deadlineSlack allows
	// for rendering and writing the answer after it, and for the scheduler
	// of a loaded two-core machine.
	answerDeadline = 1500 * time.Millisecond
	deadlineSlack  = 100 * time.Millisecond
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func TestMain(m *testing.M) {
	// go-redis logs failed dials through its own logger; the fault tests
	// cause plenty of them on purpose.
	redis.SetLogger(discardRedisLog{})
	os.Exit(m.Run())
}

type discardRedisLog struct{}

func (discardRedisLog) Printf(context.Context, string, ...any) {}

// clusterOptions says how to build a cluster.
type clusterOptions struct {
	instances int
	// proxyPostgres and proxyRedis put a faultproxy between every instance
	// and that server (one proxy, shared: the server is one).
	proxyPostgres, proxyRedis bool
	// lockTTL overrides the lock's lease (default: serve's,
	// redislock.WebhookTTL).
	lockTTL time.Duration
	// noOutbox leaves out the relay's outbox hook (the audit entry written
	// in each record's transaction), which serve always installs.
	noOutbox bool
	// deliver turns the outbox's Zapier delivery jobs on (serve does with
	// ZAPIER_WEBHOOK_URL set); the jobs are queued, not worked.
	deliver bool
	// callCompleted relays status callbacks' call.completed events, as
	// serve does (a relay on the instance's pool; its workers not started).
	callCompleted bool
	// streams turns media streams on, as serve does by default: the TwiML
	// starts one, and each instance serves it at ivr.PathStream.
	streams bool
	// recognizer, with streams, recognizes each stream's answer (a local
	// Deepgram stand-in).
	recognizer mediastream.Recognizer
}

// cluster is several ConsentLine instances sharing one PostgreSQL database
// and one Redis, and nothing else.
type cluster struct {
	t         testing.TB
	lib       *twiml.Library
	admin     *pgxpool.Pool // straight to PostgreSQL, for counting rows
	pgProxy   *faultproxy.Proxy
	rdProxy   *faultproxy.Proxy
	instances []*instance
	rest      *twilioREST // Twilio's REST API, for the sweep
	logs      *lockedBuffer
	http      *http.Client
	calls     atomic.Int64

	// Server-side handling times (from the handler's start to its end),
	// which exclude time a request spent queued in the test's own client
	// and the listeners' accept queues.
	served       atomic.Int64
	overBudget   atomic.Int64
	overDeadline atomic.Int64
	slowest      atomic.Int64 // nanoseconds
}

// timed records how long each request took inside the server.
func (c *cluster) timed(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h.ServeHTTP(w, r)
		took := time.Since(start)
		c.served.Add(1)
		if took >= webhookBudget {
			c.overBudget.Add(1)
		}
		if took >= answerDeadline+deadlineSlack {
			c.overDeadline.Add(1)
		}
		for {
			old := c.slowest.Load()
			if int64(took) <= old || c.slowest.CompareAndSwap(old, int64(took)) {
				break
			}
		}
	})
}

// instance is one ConsentLine process: its own pgx pool, Redis client,
// lock, service and HTTP server.
type instance struct {
	idx    int
	app    *ivr.Server
	store  *pgstore.Store
	redis  *redis.Client
	srv    *httptest.Server
	twilio *twiliosim.Twilio
	svc    *consent.Service
	// streams serves the media streams (clusterOptions.streams).
	streams *mediastream.Server
}

func newCluster(t testing.TB, o clusterOptions) *cluster {
	t.Helper()
	if o.instances == 0 {
		o.instances = 3
	}
	if o.lockTTL == 0 {
		o.lockTTL = redislock.WebhookTTL
	}
	ctx := context.Background()
	dbURL := testdb.Postgres(t)
	redisURL, prefix := testdb.Redis(t)

	c := &cluster{t: t, lib: twiml.Builtin(), logs: &lockedBuffer{}}
	c.startTwilioREST()
	admin, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	c.admin = admin

	instDB, instRedis := dbURL, redisURL
	if o.proxyPostgres {
		c.pgProxy, instDB = proxied(t, dbURL)
	}
	if o.proxyRedis {
		c.rdProxy, instRedis = proxied(t, redisURL)
	}
	c.http = &http.Client{
		Timeout:   10 * time.Second, // far beyond the budget: a hang shows as a slow answer, not a stuck test
		Transport: &http.Transport{MaxIdleConns: 2000, MaxIdleConnsPerHost: 1000, IdleConnTimeout: 30 * time.Second},
	}
	t.Cleanup(c.http.CloseIdleConnections)

	keys, err := pii.NewKeyring(testKey)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	for i := range o.instances {
		in := &instance{idx: i}
		// As serve's openDatabase does: every instance migrates at start
		// (they take turns on an advisory lock), and each record's relay
		// event is written in the record's transaction.
		opts := pgstore.Options{Migrate: true}
		if !o.noOutbox {
			outbox, err := relay.NewOutbox(relaypg.New(nil), keys, o.deliver)
			if err != nil {
				t.Fatal(err)
			}
			opts.Outbox = outbox
		}
		if in.store, err = pgstore.Open(ctx, instDB, opts); err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
		if err := relaypg.Migrate(ctx, in.store.Pool()); err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
		if in.redis, err = redislock.NewClient(instRedis); err != nil {
			t.Fatal(err)
		}
		locker := redislock.New(in.redis, redislock.Options{Prefix: prefix + "consentline:lock:", TTL: o.lockTTL, Logger: log})
		cfg, err := newApp(ctx, in.store, locker, in.ready, keys, c.lib, log.With("instance", i))
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
		cfg.FetchCallStatus = ivr.TwilioCallStatus(c.twilioAPI())
		if o.callCompleted {
			rel, err := benchRelay(ctx, in.store, keys, o.deliver, func(c relay.Config) (*relay.Relay, error) {
				return relay.New(relaypg.New(in.store.Pool()), c)
			})
			if err != nil {
				t.Fatalf("instance %d: %v", i, err)
			}
			cfg.CallCompleted = callCompleted(rel)
		}
		in.svc = cfg.Consent
		if o.streams {
			cfg.MediaStreams = true
			cfg.UpdateCallURL = ivr.TwilioUpdateCallURL(c.twilioAPI())
		}
		metrics := telemetry.New()
		cfg.Metrics = metrics
		in.app = ivr.New(cfg)
		if o.streams {
			in.streams = mountStreams(t, in.app, cfg, c.lib, o.recognizer, log.With("instance", i))
		}
		// Served as serve serves it: request id, access log, metrics, recoverer.
		in.srv = httptest.NewServer(c.timed(telemetry.Serve(in.app.Router(), log.With("instance", i), metrics, "")))
		in.twilio = &twiliosim.Twilio{PublicBaseURL: publicBase, Target: in.srv.URL, AuthToken: authToken, AccountSID: accountSID, HTTP: c.http}
		c.instances = append(c.instances, in)
		t.Cleanup(func() {
			if in.streams != nil {
				_ = in.streams.Close() // before the store: streams save as they end
			}
			in.srv.Close()
			_ = locker.Close()
			_ = in.redis.Close()
			_ = in.store.Close()
		})
	}
	t.Cleanup(c.checkLogsHoldNoPHI)
	if !o.noOutbox {
		t.Cleanup(func() { c.checkAudit(keys) })
	}
	return c
}

// checkAudit checks the relay's audit log against the records: exactly one
// entry per record (written in the record's transaction, so a record never
// exists without its entry nor an entry without its record), and the hash
// chain intact.
func (c *cluster) checkAudit(keys *pii.Keyring) {
	ctx := context.Background()
	var records, entries, orphans int
	// call.completed entries (event id cc_<CallSid>) belong to no record.
	err := c.admin.QueryRow(ctx, `SELECT
	    (SELECT count(*) FROM consent_records),
	    (SELECT count(*) FROM relay_audit WHERE type LIKE 'consent.%'),
	    (SELECT count(*) FROM consent_records r FULL JOIN (SELECT * FROM relay_audit WHERE type LIKE 'consent.%') a ON a.event_id = r.id
	        WHERE (r.id IS NULL OR a.event_id IS NULL))`).Scan(&records, &entries, &orphans)
	if err != nil {
		c.t.Errorf("audit check: %v", err)
		return
	}
	if records != entries || orphans != 0 {
		c.t.Errorf("%d records, %d audit entries, %d without their counterpart; want one entry per record", records, entries, orphans)
	}
	rel, err := relay.New(relaypg.New(c.admin), relay.Config{Keyring: keys})
	if err != nil {
		c.t.Errorf("audit check: %v", err)
		return
	}
	var all int64
	if err := c.admin.QueryRow(ctx, `SELECT count(*) FROM relay_audit`).Scan(&all); err != nil {
		c.t.Errorf("audit check: %v", err)
		return
	}
	res, err := rel.VerifyAudit(ctx)
	if err != nil || res.Entries != all {
		c.t.Errorf("audit chain: %d entries verified of %d: %v", res.Entries, all, err)
	}
}

// newApp mirrors cmd/consentline's newApp (package main, so not
// importable): the same pieces, wired the same way.
func newApp(ctx context.Context, store consent.Store, locker consent.Locker, ready func(context.Context) error, keys *pii.Keyring, lib *twiml.Library, log *slog.Logger) (ivr.Config, error) {
	pseudonyms, err := pii.LoadPseudonymizer(ctx, store, keys)
	if err != nil {
		return ivr.Config{}, err
	}
	svc := consent.NewService(consent.Config{
		Store:      store,
		Locker:     locker,
		Threshold:  consent.DefaultThreshold,
		Seal:       keys.SealFor,
		Open:       keys.OpenFor,
		PatientRef: pseudonyms.Ref,
	})
	// The relay for call.completed, on whichever database the store is.
	var rel *relay.Relay
	relCfg := relay.Config{Keyring: keys, Pseudonymizer: pseudonyms}
	switch st := store.(type) {
	case *pgstore.Store:
		rel, err = relay.New(relaypg.New(st.Pool()), relCfg)
	case *sqlitestore.Store:
		rel, err = relay.New(relaysqlite.New(st.DB()), relCfg)
	default:
		err = fmt.Errorf("no relay for a %T", store)
	}
	if err != nil {
		return ivr.Config{}, err
	}
	return ivr.Config{
		PublicBaseURL: publicBase,
		AuthToken:     authToken,
		AccountSID:    accountSID,
		Scripts:       lib,
		Consent:       svc,
		Ready:         ready,
		CallCompleted: func(ctx context.Context, c ivr.CallStatus) error {
			_, _, err := rel.RecordCallCompleted(ctx, relay.CallCompleted{CallSID: c.CallSID, From: c.From, To: c.To, At: time.Now()})
			return err
		},
		Logger: log,
	}, nil
}

// benchRelay builds a relay as serve's newRelay does (Zapier delivery on
// when deliver, to an address never contacted: the workers are not
// started).
func benchRelay(ctx context.Context, store consent.Store, keys *pii.Keyring, deliver bool, open func(relay.Config) (*relay.Relay, error)) (*relay.Relay, error) {
	pseudonyms, err := pii.LoadPseudonymizer(ctx, store, keys)
	if err != nil {
		return nil, err
	}
	cfg := relay.Config{Keyring: keys, Pseudonymizer: pseudonyms}
	if deliver {
		if cfg.Signer, err = relay.ParseSigningSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"); err != nil {
			return nil, err
		}
		cfg.WebhookURL = "http://127.0.0.1:9/hooks/catch/never/"
	}
	return open(cfg)
}

// callCompleted mirrors cmd/consentline's ivr.Config.CallCompleted.
func callCompleted(rel *relay.Relay) func(context.Context, ivr.CallStatus) error {
	return func(ctx context.Context, c ivr.CallStatus) error {
		_, _, err := rel.RecordCallCompleted(ctx, relay.CallCompleted{CallSID: c.CallSID, From: c.From, To: c.To, At: time.Now()})
		return err
	}
}

// ready mirrors cmd/consentline's backends.ready.
func (in *instance) ready(ctx context.Context) error {
	if err := in.store.Ping(ctx); err != nil {
		return ivr.NotReady{Backend: ivr.BackendPostgres, Err: err}
	}
	if err := in.redis.Ping(ctx).Err(); err != nil {
		return ivr.NotReady{Backend: ivr.BackendRedis, Err: err}
	}
	return nil
}

// proxied starts a faultproxy to rawURL's host and returns it with rawURL
// pointed at the proxy.
func proxied(t testing.TB, rawURL string) (*faultproxy.Proxy, string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	host := u.Host
	if u.Port() == "" {
		t.Fatalf("URL %s names no port", u.Redacted())
	}
	if h := u.Hostname(); h == "localhost" {
		host = net.JoinHostPort("127.0.0.1", u.Port())
	}
	p, err := faultproxy.New(host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	u.Host = p.Addr()
	return p, u.String()
}

// call is one simulated call: its SID and caller, and the TwiML URLs its
// incoming webhook named.
type call struct {
	sid      string
	from, to string
	action   string // the speech Gather's action
	partial  string // its partialResultCallback
}

// newCall starts a call on instance 0 and reads its Gather's URLs.
func (c *cluster) newCall(ctx context.Context) *call {
	c.t.Helper()
	n := c.calls.Add(1)
	cl := &call{sid: fmt.Sprintf("CA%032d", n), from: fmt.Sprintf("+1415555%04d", n%10000), to: "+18005550199"}
	tc := c.simCall(0, cl)
	resp, err := tc.Start(ctx, ivr.PathIncoming)
	if err != nil {
		c.t.Fatalf("incoming: %v", err)
	}
	g, ok := resp.SpeechGather()
	if !ok {
		c.t.Fatalf("incoming TwiML has no speech Gather:\n%s", resp.Raw)
	}
	cl.action, cl.partial = g.Attr("action"), g.Attr("partialResultCallback")
	if cl.action == "" || cl.partial == "" {
		c.t.Fatalf("Gather without action or partialResultCallback:\n%s", resp.Raw)
	}
	return cl
}

func (c *cluster) simCall(inst int, cl *call) *twiliosim.Call {
	return &twiliosim.Call{Twilio: c.instances[inst].twilio, SID: cl.sid, From: cl.from, To: cl.to}
}

// Answers Twilio posts.
var (
	speechYes  = url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.93"}}
	partialYes = url.Values{"UnstableSpeechResult": {"yes I agree"}, "Stability": {"0.9"}}
	keyYes     = url.Values{"Digits": {"1"}}
	keyNo      = url.Values{"Digits": {"2"}}
)

// delivery is one webhook delivery and what came of it.
type delivery struct {
	inst   int
	url    string
	status int
	body   []byte
	took   time.Duration
	err    error
}

// post delivers one signed webhook for cl to instance inst and times it.
func (c *cluster) post(ctx context.Context, inst int, cl *call, fullURL string, answer url.Values) delivery {
	tc := c.simCall(inst, cl)
	start := time.Now()
	status, body, err := tc.Twilio.Post(ctx, fullURL, tc.Params(answer))
	return delivery{inst: inst, url: fullURL, status: status, body: body, took: time.Since(start), err: err}
}

// kind classifies a Gather answer: a read-back of a decision (and which), a
// hold, or anything else (an error message).
func (c *cluster) readBack(d delivery) (consent.Decision, bool) {
	resp, err := twiliosim.ParseResponse(d.body)
	if err != nil || !resp.HangsUp() {
		return "", false
	}
	said := resp.Spoken()
	if len(said) == 0 {
		return "", false
	}
	script := c.lib.Default()
	for dec, text := range script.ReadBack {
		if said[0].Text == strings.TrimSpace(text) {
			return dec, true
		}
	}
	if said[0].Text == strings.TrimSpace(script.NoResponse) {
		return consent.NoResponse, true
	}
	return "", false
}

// checkTimely fails the test for a delivery that errored, was not 200 (or
// wantStatus), or took the contract's budget or more.
func checkTimely(t testing.TB, d delivery, wantStatus int) bool {
	t.Helper()
	switch {
	case d.err != nil:
		t.Errorf("instance %d %s: %v after %v", d.inst, path(d.url), d.err, d.took)
	case d.took >= webhookBudget:
		t.Errorf("instance %d %s answered after %v, want < %v", d.inst, path(d.url), d.took, webhookBudget)
	case d.status != wantStatus:
		t.Errorf("instance %d %s: status %d, want %d: %s", d.inst, path(d.url), d.status, wantStatus, d.body)
	default:
		return true
	}
	return false
}

// isHold reports whether body is the hold TwiML that keeps a call alive: it
// parses, redirects to /voice/resume and does not hang up.
func isHold(body []byte) bool {
	resp, err := twiliosim.ParseResponse(body)
	if err != nil || resp.HangsUp() || !bytes.Contains(body, []byte("<Redirect")) {
		return false
	}
	r, ok := resp.Find("Redirect")
	return ok && strings.HasPrefix(r.Text, publicBase+ivr.PathResume)
}

// checkHold fails the test unless d is a timely hold.
func checkHold(t testing.TB, d delivery) {
	t.Helper()
	if checkTimely(t, d, http.StatusOK) && !isHold(d.body) {
		t.Errorf("instance %d %s: want hold TwiML (Redirect to %s, no Hangup), got:\n%s", d.inst, path(d.url), ivr.PathResume, d.body)
	}
}

// followHold does what Twilio does after a hold: follows the Redirect to
// /voice/resume, and the caller answers the re-prompt's Gather.
func (c *cluster) followHold(ctx context.Context, inst int, cl *call, hold []byte, answer url.Values, timed bool) (resume, answered delivery) {
	c.t.Helper()
	resp, err := twiliosim.ParseResponse(hold)
	if err != nil {
		c.t.Fatalf("hold: %v", err)
	}
	r, _ := resp.Find("Redirect")
	resume = c.post(ctx, inst, cl, r.Text, nil)
	if timed {
		checkTimely(c.t, resume, http.StatusOK)
	}
	if resume.err == nil && resume.status != http.StatusOK {
		resume.err = fmt.Errorf("status %d", resume.status)
	}
	if resume.err != nil {
		return resume, delivery{err: fmt.Errorf("resume failed: %w", resume.err)}
	}
	rp, err := twiliosim.ParseResponse(resume.body)
	if err != nil {
		c.t.Fatalf("resume TwiML: %v", err)
	}
	g, ok := rp.SpeechGather()
	if !ok || g.Attr("action") == "" {
		c.t.Fatalf("resume TwiML has no Gather:\n%s", resume.body)
	}
	return resume, c.post(ctx, inst, cl, g.Attr("action"), answer)
}

// records counts a call's rows in consent_records, straight from the table.
func (c *cluster) records(sid string) int {
	c.t.Helper()
	var n int
	if err := c.admin.QueryRow(context.Background(), `SELECT count(*) FROM consent_records WHERE call_sid = $1`, sid).Scan(&n); err != nil {
		c.t.Fatalf("count records: %v", err)
	}
	return n
}

// recordCount counts every row in consent_records.
func (c *cluster) recordCount() int {
	c.t.Helper()
	var n int
	if err := c.admin.QueryRow(context.Background(), `SELECT count(*) FROM consent_records`).Scan(&n); err != nil {
		c.t.Fatalf("count records: %v", err)
	}
	return n
}

// stored returns a call's one record's decision.
func (c *cluster) stored(sid string) consent.Decision {
	c.t.Helper()
	var d string
	if err := c.admin.QueryRow(context.Background(), `SELECT decision FROM consent_records WHERE call_sid = $1`, sid).Scan(&d); err != nil {
		c.t.Fatalf("read record of %s: %v", sid, err)
	}
	return consent.Decision(d)
}

func (c *cluster) get(ctx context.Context, inst int, p string) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.instances[inst].srv.URL+p, nil)
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("GET %s: %v", p, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// checkLogsHoldNoPHI fails the test if any instance logged a caller's
// number or words: logs leave the HIPAA boundary (Railway's log drain).
func (c *cluster) checkLogsHoldNoPHI() {
	logs := c.logs.String()
	if f := os.Getenv("DUMP_LOGS"); f != "" {
		_ = os.WriteFile(f, []byte(logs), 0o600)
	}
	for _, phi := range []string{"+1415555", "I agree", "8005550199"} {
		if i := strings.Index(logs, phi); i >= 0 {
			c.t.Errorf("logs contain PHI %q: …%s…", phi, logs[max(0, i-200):min(len(logs), i+100)])
		}
	}
	if loc := nationalCaller.FindStringIndex(logs); loc != nil {
		i := loc[0]
		c.t.Errorf("logs contain a caller's number: …%s…", logs[max(0, i-200):min(len(logs), i+100)])
	}
}

// nationalCaller matches a caller's number written without +1 (4155550123):
// ten digits standing alone, so the digits of a timestamp's nanoseconds
// (…T23:55:54.041555505Z) are not taken for one, as "4155550" was.
var nationalCaller = regexp.MustCompile(`(^|[^0-9])415555[0-9]{4}([^0-9]|$)`)

func path(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Path
	}
	return u
}

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

// fire runs every function at once (released together) and waits.
func fire(fns ...func()) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, f := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			f()
		}()
	}
	close(start)
	wg.Wait()
}
