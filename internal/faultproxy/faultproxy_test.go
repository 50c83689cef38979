package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoServer is the "real server": it echoes every line back. It counts the
// connections it has open, to check the proxy closes its upstream side too.
type echoServer struct {
	ln   net.Listener
	mu   sync.Mutex
	open int
	wg   sync.WaitGroup
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.open++
			e.mu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer func() {
					e.mu.Lock()
					e.open--
					e.mu.Unlock()
				}()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); e.wg.Wait() })
	return e
}

func (e *echoServer) openConns() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.open
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

// roundTrip sends a line and waits up to wait for it to come back.
func (c *client) roundTrip(line string, wait time.Duration) (string, error) {
	if _, err := io.WriteString(c.c, line+"\n"); err != nil {
		return "", err
	}
	return c.readLine(wait)
}

func (c *client) readLine(wait time.Duration) (string, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(wait))
	s, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return s[:len(s)-1], nil
}

func (c *client) mustEcho(line string) {
	c.t.Helper()
	got, err := c.roundTrip(line, 2*time.Second)
	if err != nil || got != line {
		c.t.Fatalf("round trip %q: got %q, %v", line, got, err)
	}
}

// wantClosed checks the proxy closed the connection (EOF or reset, not a
// timeout).
func (c *client) wantClosed() {
	c.t.Helper()
	_, err := c.readLine(2 * time.Second)
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		c.t.Fatalf("connection still open: read returned %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPass(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.ln.Addr().String())
	if p.Mode() != Pass {
		t.Fatalf("mode = %v, want pass", p.Mode())
	}
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	a.mustEcho("hello")
	b.mustEcho("world")
	a.mustEcho("again")
	if n := p.Open(); n != 2 {
		t.Errorf("Open() = %d, want 2", n)
	}
	if n := p.Accepted(); n != 2 {
		t.Errorf("Accepted() = %d, want 2", n)
	}
	a.c.Close()
	eventually(t, "the closed link to be forgotten", func() bool { return p.Open() == 1 })
	eventually(t, "the upstream side to be closed", func() bool { return e.openConns() == 1 })
}

func TestRefuseAndResume(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.ln.Addr().String())
	c := dial(t, p.Addr())
	c.mustEcho("before")

	p.Refuse()
	if p.Mode() != Refusing {
		t.Fatalf("mode = %v, want refusing", p.Mode())
	}
	c.wantClosed()
	_, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial while refusing: %v, want connection refused", err)
	}
	eventually(t, "upstream connections to close", func() bool { return e.openConns() == 0 })

	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	dial(t, p.Addr()).mustEcho("after") // same address as before
	p.Refuse()
	p.Refuse() // idempotent
	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	dial(t, p.Addr()).mustEcho("twice")
}

func TestStallAndResume(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.ln.Addr().String())
	old := dial(t, p.Addr())
	old.mustEcho("warm")

	if err := p.Stall(); err != nil {
		t.Fatal(err)
	}
	// An open connection: the request goes nowhere, the connection stays.
	if got, err := old.roundTrip("lost in the stall", 150*time.Millisecond); !isTimeout(err) {
		t.Fatalf("round trip while stalled: %q, %v; want a read timeout", got, err)
	}
	// A new connection is accepted (a stalled server's kernel still
	// completes the handshake) but answers nothing either.
	fresh := dial(t, p.Addr())
	if got, err := fresh.roundTrip("hello?", 150*time.Millisecond); !isTimeout(err) {
		t.Fatalf("new connection while stalled: %q, %v; want a read timeout", got, err)
	}
	if p.Open() != 2 {
		t.Errorf("Open() = %d while stalled, want 2 (connections kept open)", p.Open())
	}

	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	// The stalled bytes are delivered once it resumes.
	if got, err := old.readLine(2 * time.Second); err != nil || got != "lost in the stall" {
		t.Fatalf("after resume, old connection read %q, %v", got, err)
	}
	if got, err := fresh.readLine(2 * time.Second); err != nil || got != "hello?" {
		t.Fatalf("after resume, new connection read %q, %v", got, err)
	}
	old.mustEcho("flowing again")
}

func TestStallThenRefuse(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.ln.Addr().String())
	c := dial(t, p.Addr())
	c.mustEcho("warm")
	if err := p.Stall(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.roundTrip("stuck", 100*time.Millisecond); !isTimeout(err) {
		t.Fatalf("want a timeout while stalled, got %v", err)
	}
	p.Refuse() // a stalled connection is closed, not left hanging
	c.wantClosed()
	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	dial(t, p.Addr()).mustEcho("back")
}

func TestDropAll(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.ln.Addr().String())
	conns := []*client{dial(t, p.Addr()), dial(t, p.Addr()), dial(t, p.Addr())}
	for _, c := range conns {
		c.mustEcho("up")
	}
	if n := p.DropAll(); n != 3 {
		t.Errorf("DropAll closed %d connections, want 3", n)
	}
	for _, c := range conns {
		c.wantClosed()
	}
	eventually(t, "upstream connections to close", func() bool { return e.openConns() == 0 })
	if p.Mode() != Pass {
		t.Errorf("mode after DropAll = %v, want pass", p.Mode())
	}
	// A "restarted" server takes new connections at once.
	dial(t, p.Addr()).mustEcho("reconnected")
	if n := p.Open(); n != 1 {
		t.Errorf("Open() = %d, want 1", n)
	}
}

func TestClose(t *testing.T) {
	e := startEcho(t)
	p, err := New(e.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p.Addr())
	c.mustEcho("x")
	if err := p.Stall(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.roundTrip("held", 50*time.Millisecond); !isTimeout(err) {
		t.Fatalf("want a timeout while stalled, got %v", err)
	}
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done: // Close waits for every goroutine, stalled ones included
	case <-time.After(2 * time.Second):
		t.Fatal("Close hung on a stalled connection")
	}
	c.wantClosed()
	if err := p.Resume(); err == nil {
		t.Error("Resume after Close succeeded")
	}
}

func TestUnreachableTarget(t *testing.T) {
	// A target that refuses: the proxy accepts, then closes the client's
	// connection, and forgets it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close()
	p := newProxy(t, target)
	c := dial(t, p.Addr())
	c.wantClosed()
	eventually(t, "the link to be forgotten", func() bool { return p.Open() == 0 })
}
