// Package testdb gives integration tests their own database on the real
// PostgreSQL and Redis servers, and removes it afterwards.
//
// Each call creates something fresh (a database, a key prefix) so tests can run
// in parallel, in several packages at once, without seeing each other's rows.
//
// When a server cannot be reached the test is skipped with one line saying how
// to run it, except under CI (CI=true), where an unreachable server is a
// failure: a CI run that silently skipped every integration test would look
// green while testing nothing.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
)

const (
	// DefaultPostgresURL is the admin database used to create test databases
	// when TEST_DATABASE_URL is not set.
	DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	// DefaultRedisURL is used when TEST_REDIS_URL is not set.
	DefaultRedisURL = "redis://127.0.0.1:6379/0"

	// dbPrefix names every database this package creates, so stale ones can
	// be recognised and swept.
	dbPrefix = "ct_"
	// staleAfter is how old a leftover test database (from a test binary
	// that was killed before its cleanup ran) must be before it is dropped.
	// Far longer than any test run, so a running test never loses its
	// database.
	staleAfter = 6 * time.Hour

	connectTimeout = 5 * time.Second
)

// unreachable stops the test: a failure under CI, a one-line skip elsewhere.
func unreachable(t testing.TB, what, how string, err error) {
	t.Helper()
	// Errors from drivers can span lines; the skip message must stay one line.
	msg := strings.Join(strings.Fields(err.Error()), " ")
	if os.Getenv("CI") == "true" {
		t.Fatalf("testdb: %s unreachable: %s", what, msg)
	}
	t.Skipf("testdb: %s unreachable (%s); to run this test, %s", what, msg, how)
}

// Postgres creates a fresh, empty database for this test and returns its URL.
// The database is dropped (WITH (FORCE), so connections left open by the test
// do not keep it alive) when the test and its subtests finish.
//
// The server is the one in TEST_DATABASE_URL (a postgres:// URL of a database
// the user may CREATE DATABASE from), by default DefaultPostgresURL.
func Postgres(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("TEST_DATABASE_URL")
	if admin == "" {
		admin = DefaultPostgresURL
	}
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		// A malformed URL is a mistake to fix, not a server to start.
		t.Fatalf("testdb: TEST_DATABASE_URL must be a postgres:// URL, got %q", redact(admin))
	}
	how := "start PostgreSQL (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set TEST_DATABASE_URL to a postgres:// URL"

	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		unreachable(t, "PostgreSQL at "+redact(admin), how, err)
	}
	defer conn.Close(context.Background())

	sweepOnce.Do(func() { sweepStale(ctx, conn) })

	// The creation time in the name lets sweepStale tell leftovers from
	// databases that another test process is still using.
	name := fmt.Sprintf("%s%d_%s", dbPrefix, time.Now().Unix(), randomHex(6))
	// name is made only of [a-z0-9_], so it needs no quoting.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testdb: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := dropDatabase(ctx, admin, name); err != nil {
			t.Errorf("testdb: drop database %s: %v", name, err)
		}
	})

	u.Path = "/" + name
	return u.String()
}

func dropDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	return err
}

var sweepOnce sync.Once

// sweepStale drops test databases left behind by test binaries that were
// killed before their cleanups ran. Best effort: errors are ignored, the
// worst outcome is a leftover database.
func sweepStale(ctx context.Context, conn *pgx.Conn) {
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 'ct\_%'`)
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	for _, name := range names {
		created, ok := createdAt(name)
		if !ok || time.Since(created) < staleAfter {
			continue
		}
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	}
}

// createdAt parses the creation time out of a name made by Postgres; ok is
// false for any other name (which is then never touched).
func createdAt(name string) (time.Time, bool) {
	rest, ok := strings.CutPrefix(name, dbPrefix)
	if !ok {
		return time.Time{}, false
	}
	secs, suffix, ok := strings.Cut(rest, "_")
	if !ok || len(suffix) != 12 || strings.Trim(suffix, "0123456789abcdef") != "" {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(secs, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(n, 0), true
}

// Redis returns the URL of the test Redis server and a key prefix unique to
// this test. The test must put every key it creates under prefix; they are
// deleted when the test and its subtests finish.
//
// The server is the one in TEST_REDIS_URL, by default DefaultRedisURL.
func Redis(t testing.TB) (redisURL string, prefix string) {
	t.Helper()
	redisURL = os.Getenv("TEST_REDIS_URL")
	if redisURL == "" {
		redisURL = DefaultRedisURL
	}
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatalf("testdb: TEST_REDIS_URL must be a redis:// URL, got %q: %v", redact(redisURL), err)
	}
	how := "start Redis (redis-server --daemonize yes) or set TEST_REDIS_URL to a redis:// URL"

	// No retries: an unreachable server should skip the test at once, not
	// after the client's back-off.
	opts.MaxRetries = -1
	client := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		unreachable(t, "Redis at "+redact(redisURL), how, err)
	}

	prefix = "ct:" + randomHex(8) + ":"
	t.Cleanup(func() {
		defer client.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := deletePrefix(ctx, client, prefix); err != nil {
			t.Errorf("testdb: delete redis keys %s*: %v", prefix, err)
		}
	})
	return redisURL, prefix
}

// deletePrefix removes every key under prefix. SCAN rather than KEYS so a
// shared development Redis is not blocked; prefix holds no glob characters.
func deletePrefix(ctx context.Context, client *redis.Client, prefix string) error {
	iter := client.Scan(ctx, 0, prefix+"*", 500).Iterator()
	var batch []string
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			if err := client.Unlink(ctx, batch...).Err(); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	if len(batch) > 0 {
		return client.Unlink(ctx, batch...).Err()
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}

// redact hides a password in a URL before it reaches test output.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// Querier is what SeqRowsRead runs its statements on: a *pgx.Conn, or a
// pool of one connection (*pgxpool.Pool with pool_max_conns=1).
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SeqRowsRead returns how many rows PostgreSQL has read from table by
// sequential scans, counting what q's own backend did up to now: its counts
// reach the shared statistics when its next transaction ends, which
// pg_stat_force_next_flush forces, and the view is then read in a
// transaction of its own. A test compares two readings to show that
// look-ups stayed index look-ups.
func SeqRowsRead(t testing.TB, q Querier, table string) int64 {
	t.Helper()
	ctx := context.Background()
	if _, err := q.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
		t.Fatalf("testdb: flushing statistics: %v", err)
	}
	var n int64
	if err := q.QueryRow(ctx, `SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables WHERE relname = $1`, table).Scan(&n); err != nil {
		t.Fatalf("testdb: reading %s's statistics: %v", table, err)
	}
	return n
}
