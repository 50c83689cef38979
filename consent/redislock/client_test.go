package redislock

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/internal/testdb"
)

func TestNewClientSettings(t *testing.T) {
	c, err := NewClient("redis://default:s3cret@redis.internal:6380/2")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o := c.Options()
	if !o.ContextTimeoutEnabled {
		t.Error("ContextTimeoutEnabled is off: go-redis would ignore webhook deadlines on reads")
	}
	if o.Addr != "redis.internal:6380" || o.DB != 2 || o.Username != "default" || o.Password != "s3cret" {
		t.Errorf("URL not applied: addr %q db %d user %q", o.Addr, o.DB, o.Username)
	}
	for name, got := range map[string]time.Duration{"DialTimeout": o.DialTimeout, "ReadTimeout": o.ReadTimeout, "WriteTimeout": o.WriteTimeout} {
		if got != 500*time.Millisecond {
			t.Errorf("%s = %v, want 500ms", name, got)
		}
	}
	if o.MaxRetries != 1 || o.PoolSize < ClientMinPoolSize || o.MinIdleConns != ClientMinIdleConns || o.PoolTimeout > time.Second {
		t.Errorf("MaxRetries %d PoolSize %d MinIdleConns %d PoolTimeout %v", o.MaxRetries, o.PoolSize, o.MinIdleConns, o.PoolTimeout)
	}
}

func TestNewClientURLOverrides(t *testing.T) {
	c, err := NewClient("redis://127.0.0.1:6379/0?dial_timeout=2s&pool_size=7&max_retries=-1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o := c.Options()
	// go-redis normalizes max_retries=-1 (no retries) to 0.
	if o.DialTimeout != 2*time.Second || o.PoolSize != 7 || o.MaxRetries > 0 || !o.ContextTimeoutEnabled {
		t.Errorf("URL settings not kept: DialTimeout %v PoolSize %d MaxRetries %d", o.DialTimeout, o.PoolSize, o.MaxRetries)
	}
}

func TestNewClientErrorHidesPassword(t *testing.T) {
	for _, u := range []string{"redis://user:hunter2@host:notaport/0", "http://user:hunter2@host:6379", "redis://user:hunter2@host:6379/x"} {
		_, err := NewClient(u)
		if err == nil {
			t.Errorf("%q: no error", u)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: error shows the password: %v", u, err)
		}
	}
}

// A server that accepts and never answers: a read must end at the caller's
// deadline, not at ReadTimeout.
func TestNewClientHonoursContextDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // hold it open, say nothing
		}
	}()
	c, err := NewClient("redis://" + ln.Addr().String() + "/0?read_timeout=10s&write_timeout=10s&dial_timeout=10s")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Ping(ctx).Err()
	if took := time.Since(start); err == nil || took > time.Second {
		t.Fatalf("Ping against a silent server: %v after %v; want an error at the 100ms deadline", err, took)
	}
}

func TestNewClientRefusedFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, err := NewClient("redis://" + addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	err = c.Ping(context.Background()).Err()
	if took := time.Since(start); err == nil || took > 300*time.Millisecond {
		t.Fatalf("Ping against a closed port: %v after %v; want a prompt error", err, took)
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Errorf("error = %v, want connection refused", err)
	}
}

func TestNewClientTalksToRedis(t *testing.T) {
	url, prefix := testdb.Redis(t)
	c, err := NewClient(url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := New(c, Options{Prefix: prefix})
	_, release, err := l.Acquire(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	release()
}
