package testdb

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

func TestPostgresFreshAndDropped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var dbURL string
	t.Run("use", func(t *testing.T) {
		dbURL = Postgres(t)
		other := Postgres(t)
		if dbURL == other {
			t.Fatalf("two calls returned the same database %s", dbURL)
		}
		// Never closed: dropping WITH (FORCE) must not wait for it.
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("fresh database has %d tables", n)
		}
		if _, err := conn.Exec(ctx, `CREATE TABLE t (x int)`); err != nil {
			t.Fatal(err)
		}
	})
	if t.Skipped() || dbURL == "" {
		return
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err == nil {
		conn.Close(ctx)
		t.Fatalf("database %s still exists after its test finished", dbURL)
	}
	if !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("connecting to the dropped database: want 'does not exist', got %v", err)
	}
}

func TestRedisPrefixCleaned(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var (
		redisURL, prefix string
	)
	t.Run("use", func(t *testing.T) {
		redisURL, prefix = Redis(t)
		_, other := Redis(t)
		if prefix == other {
			t.Fatalf("two calls returned the same prefix %s", prefix)
		}
		opts, _ := redis.ParseURL(redisURL)
		c := redis.NewClient(opts)
		defer c.Close()
		// More than one SCAN page and one UNLINK batch.
		for i := range 1200 {
			if err := c.Set(ctx, fmt.Sprintf("%sk%d", prefix, i), "v", time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
		}
	})
	if prefix == "" {
		return
	}
	opts, _ := redis.ParseURL(redisURL)
	c := redis.NewClient(opts)
	defer c.Close()
	keys, _, err := c.Scan(ctx, 0, prefix+"*", 10000).Result()
	if err != nil {
		t.Fatal(err)
	}
	// One SCAN call may not cover the keyspace; iterate to be sure.
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if len(keys) != 0 {
		t.Fatalf("%d keys under %s left after the test", len(keys), prefix)
	}
}

// fakeTB records how a helper stopped the test; Fatalf and Skipf end the
// goroutine like the real ones do.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	fatal    string
	skip     string
	cleanups []func()
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.mu.Lock()
	f.skip = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }

func run(t *testing.T, fn func(testing.TB)) *fakeTB {
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	for _, c := range f.cleanups {
		c()
	}
	return f
}

func TestUnreachable(t *testing.T) {
	// Port 1 on loopback: nothing listens, the connection is refused at once.
	t.Setenv("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=2")
	t.Setenv("TEST_REDIS_URL", "redis://127.0.0.1:1/0")
	helpers := map[string]func(testing.TB){
		"postgres": func(tb testing.TB) { Postgres(tb) },
		"redis":    func(tb testing.TB) { Redis(tb) },
	}
	for name, h := range helpers {
		t.Run(name+"/local", func(t *testing.T) {
			t.Setenv("CI", "")
			f := run(t, h)
			if f.fatal != "" || f.skip == "" {
				t.Fatalf("want a skip, got fatal=%q skip=%q", f.fatal, f.skip)
			}
			if strings.Contains(f.skip, "\n") || !strings.Contains(f.skip, "to run this test") {
				t.Fatalf("skip message must be one line saying how to run: %q", f.skip)
			}
		})
		t.Run(name+"/ci", func(t *testing.T) {
			t.Setenv("CI", "true")
			f := run(t, h)
			if f.fatal == "" || f.skip != "" {
				t.Fatalf("under CI want a failure, got fatal=%q skip=%q", f.fatal, f.skip)
			}
		})
	}
}

func TestCreatedAt(t *testing.T) {
	now := time.Unix(1700000000, 0)
	if got, ok := createdAt("ct_1700000000_0123456789ab"); !ok || !got.Equal(now) {
		t.Fatalf("createdAt = %v, %v", got, ok)
	}
	for _, name := range []string{"test", "ct_x_0123456789ab", "ct_1700000000_short", "ct_1700000000_0123456789AB", "ct_1700000000"} {
		if _, ok := createdAt(name); ok {
			t.Errorf("createdAt(%q) accepted a name it did not make", name)
		}
	}
}
