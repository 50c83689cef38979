// Package faultproxy is a TCP proxy for tests that puts a real server (the
// test PostgreSQL or Redis) behind an address whose failures the test
// controls, without touching the server itself, which other tests share:
//
//   - pass (the start, and after Resume): bytes flow both ways;
//   - Refuse: the server is down: open connections are closed and new ones
//     are refused by the kernel (the listener is closed; Resume listens again
//     on the same port);
//   - Stall: the server hangs: connections are accepted and kept open, but
//     nothing is forwarded either way until Resume (bytes read meanwhile are
//     delivered then, as after a network partition heals);
//   - DropAll: the server restarted: every open connection is closed at
//     once, new ones pass.
package faultproxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Mode is what the proxy does with traffic.
type Mode int

const (
	Pass Mode = iota
	Refusing
	Stalled
)

func (m Mode) String() string {
	switch m {
	case Pass:
		return "pass"
	case Refusing:
		return "refusing"
	case Stalled:
		return "stalled"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Proxy forwards connections on 127.0.0.1 to a target address.
type Proxy struct {
	target string
	addr   string // host:port we listen on, kept across Refuse/Resume

	mu       sync.Mutex
	mode     Mode
	ln       net.Listener  // nil while refusing or closed
	flowing  chan struct{} // closed while not stalled
	links    map[*link]struct{}
	accepted int
	closed   bool
	wg       sync.WaitGroup
}

// link is one proxied connection: the client's side and ours to the target.
type link struct {
	client net.Conn
	done   chan struct{}
	once   sync.Once

	mu     sync.Mutex
	server net.Conn // nil until dialed
	closed bool
}

func (l *link) close() {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		server := l.server
		l.mu.Unlock()
		close(l.done)
		l.client.Close()
		if server != nil {
			server.Close()
		}
	})
}

// setServer attaches the dialed connection; false (and server closed) when
// the link was closed meanwhile.
func (l *link) setServer(server net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		server.Close()
		return false
	}
	l.server = server
	return true
}

// New listens on 127.0.0.1:0 and forwards every connection to target
// (host:port). Close it when done.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{
		target:  target,
		addr:    ln.Addr().String(),
		ln:      ln,
		flowing: make(chan struct{}),
		links:   map[*link]struct{}{},
	}
	close(p.flowing)
	p.wg.Add(1)
	go p.accept(ln)
	return p, nil
}

// Addr is the proxy's host:port, stable for its life.
func (p *Proxy) Addr() string { return p.addr }

// Mode reports the current mode.
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// Open reports how many proxied connections are open.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Accepted reports how many connections the proxy has accepted in all.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Refuse takes the "server" down: it stops listening, so new connections are
// refused, and closes every open one.
func (p *Proxy) Refuse() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.unstall()
	p.mode = Refusing
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	links := p.takeLinks()
	p.mu.Unlock()
	closeAll(links)
}

// Stall makes the "server" hang: connections, open and new, stay open but
// nothing is forwarded until Resume.
func (p *Proxy) Stall() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("faultproxy: closed")
	}
	if err := p.listen(); err != nil {
		return err
	}
	if p.mode != Stalled {
		p.flowing = make(chan struct{})
		p.mode = Stalled
	}
	return nil
}

// Resume returns to passing traffic: it listens again after Refuse (on the
// same port) and releases stalled bytes.
func (p *Proxy) Resume() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("faultproxy: closed")
	}
	if err := p.listen(); err != nil {
		return err
	}
	p.unstall()
	p.mode = Pass
	return nil
}

// DropAll closes every open connection, as a server restart does, and
// returns how many it closed; the mode is unchanged (in pass, new
// connections go through at once).
func (p *Proxy) DropAll() int {
	p.mu.Lock()
	links := p.takeLinks()
	p.mu.Unlock()
	closeAll(links)
	return len(links)
}

// Close stops listening, closes every connection and waits for the proxy's
// goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	links := p.takeLinks()
	p.mu.Unlock()
	// The links close before stalled bytes are released: released first,
	// a held chunk could still cross (and be answered) before its link
	// closed.
	closeAll(links)
	p.mu.Lock()
	p.unstall()
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// listen re-opens the listener after Refuse; p.mu held.
func (p *Proxy) listen() error {
	if p.ln != nil {
		return nil
	}
	var err error
	// The port was ours a moment ago; give the kernel a little while in
	// case it has not let go of it yet.
	for deadline := time.Now().Add(time.Second); ; {
		var ln net.Listener
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			p.ln = ln
			p.wg.Add(1)
			go p.accept(ln)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("faultproxy: listen again on %s: %w", p.addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// unstall lets stalled bytes flow; p.mu held.
func (p *Proxy) unstall() {
	select {
	case <-p.flowing:
	default:
		close(p.flowing)
	}
}

// takeLinks empties the set of open links and returns them; p.mu held.
func (p *Proxy) takeLinks() []*link {
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
		delete(p.links, l)
	}
	return links
}

func closeAll(links []*link) {
	for _, l := range links {
		l.close()
	}
}

func (p *Proxy) accept(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // listener closed by Refuse or Close
		}
		l := &link{client: c, done: make(chan struct{})}
		p.mu.Lock()
		if p.closed || p.ln != ln {
			// Accepted just as Refuse or Close closed the listener.
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.links[l] = struct{}{}
		p.accepted++
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(l)
	}
}

// serve dials the target for one link and copies both ways until either side
// closes or the proxy drops the link.
func (p *Proxy) serve(l *link) {
	defer p.wg.Done()
	defer p.forget(l)
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		l.close()
		return
	}
	if !l.setServer(server) { // dropped while dialing
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(l, server, l.client) }()
	go func() { defer wg.Done(); p.pipe(l, l.client, server) }()
	wg.Wait()
}

func (p *Proxy) forget(l *link) {
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// pipe copies src to dst, holding each chunk while the proxy is stalled. When
// either direction ends, the whole link is closed: half-open connections are
// not what a dead server leaves behind.
func (p *Proxy) pipe(l *link, dst, src net.Conn) {
	defer l.close()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.waitFlowing(l) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // EOF or the link closed
			return
		}
	}
}

// waitFlowing blocks while the proxy is stalled; false when the link was
// closed meanwhile.
func (p *Proxy) waitFlowing(l *link) bool {
	for {
		p.mu.Lock()
		flowing := p.flowing
		p.mu.Unlock()
		select {
		case <-l.done:
			return false
		case <-flowing:
			select {
			case <-l.done: // closed as the stall ended: nothing crosses
				return false
			default:
			}
			// Re-check: a Stall after this channel was read replaces it.
			p.mu.Lock()
			same := p.flowing == flowing
			p.mu.Unlock()
			if same {
				return true
			}
		}
	}
}
