// Package groupcommit turns many concurrent single-item writes into few
// transactions. Callers hand their item to a Committer and wait; one
// goroutine takes everything waiting (up to a maximum batch), commits it in
// one transaction through the caller-supplied function, and hands each caller
// its own result.
//
// The point is the commit: a transaction's fixed costs (BEGIN/COMMIT round
// trips, per-chain locks, and above all the WAL flush or fsync that makes it
// durable) are paid once per batch instead of once per item. Under light load
// a batch is a single item and nothing is gained or lost; under a burst the
// batch grows with the queue, so throughput rises with load instead of
// latency.
//
// Contexts stay per caller:
//   - a caller whose context ends while it is still queued leaves the queue
//     and gets its context's error; its item is never written;
//   - a caller whose context has ended by the time its batch starts is left
//     out of the batch, with its context's error;
//   - a batch runs under a context of its own that ends when every caller in
//     it has given up, so a batch nobody waits for any more is abandoned (its
//     transaction rolled back) rather than finished;
//   - a caller whose context ends while its batch is committing waits for the
//     batch's outcome for Options.Grace more and then gives up with an error
//     wrapping its context's error and ErrInFlight: its item may still be
//     committed by the others' batch.
//
// One bad item must not sink the others: when the batch function fails as a
// whole (its transaction rolled back), every item is committed again on its
// own, under its own caller's context, and only the failing ones report the
// error.
package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Result is one item's outcome.
type Result[Out any] struct {
	Val Out
	Err error
}

// Func commits batch (at least one item) in one transaction and returns one
// Result per item, in order. It returns a non-nil error when the transaction
// as a whole failed and nothing was written; the committer then tries each
// item alone. A per-item Result.Err must likewise mean that item was not
// written.
type Func[In, Out any] func(ctx context.Context, batch []In) ([]Result[Out], error)

// Options configure New.
type Options struct {
	// MaxBatch is the most items one transaction takes (default 128).
	MaxBatch int
	// Concurrent is how many batches may commit at once (default 1). More
	// than one suits a server that commits transactions on several
	// connections in parallel (PostgreSQL): under light load each item then
	// commits at once instead of waiting for the batch ahead of it, and
	// under heavy load one batch's COMMIT overlaps the next one's work.
	Concurrent int
	// Grace is how long a caller whose context ended while its batch was
	// committing still waits for that batch's outcome (default 0: until the
	// outcome).
	Grace time.Duration
	// Observe, when set, is told of every transaction fn ran: how many
	// items it took, how long it took and its error (a batch retried item
	// by item is one call per try). It runs on the committing goroutine,
	// so it must be quick (a metrics update).
	Observe func(items int, took time.Duration, err error)
}

// DefaultMaxBatch is Options.MaxBatch's default.
const DefaultMaxBatch = 128

var (
	// ErrClosed is returned by Do after Close.
	ErrClosed = errors.New("groupcommit: committer closed")
	// ErrInFlight is wrapped, with the caller's context error, in the error
	// of a caller that stopped waiting while its batch was committing: the
	// item may still be stored.
	ErrInFlight = errors.New("gave up while its batch was committing; it may still be stored")
)

// Committer queues items for fn. Its methods are safe for concurrent use.
//
// It runs goroutines only while there is work: an item queued while fewer
// than Options.Concurrent are running starts one, and each ends when it
// finds the queue empty, so an idle Committer holds nothing and needs no
// Close to be collected.
type Committer[In, Out any] struct {
	fn      Func[In, Out]
	opts    Options
	mu      sync.Mutex
	queue   []*call[In, Out]
	running int // loop goroutines taking batches
	shut    bool
	loops   sync.WaitGroup
}

// States of a call: queued until the committer takes it or its caller
// leaves, whichever happens first (one compare-and-swap decides).
const (
	queued int32 = iota
	taken
	abandoned
)

type call[In, Out any] struct {
	ctx   context.Context
	in    In
	state atomic.Int32
	res   chan Result[Out] // buffered: the committer never blocks on a caller that left
}

// New returns a committer calling fn.
func New[In, Out any](fn Func[In, Out], opts Options) *Committer[In, Out] {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	opts.Concurrent = max(opts.Concurrent, 1)
	return &Committer[In, Out]{fn: fn, opts: opts}
}

// Do queues in, waits for the batch it joins to commit, and returns its
// result.
func (c *Committer[In, Out]) Do(ctx context.Context, in In) (Out, error) {
	var zero Out
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	cl := &call[In, Out]{ctx: ctx, in: in, res: make(chan Result[Out], 1)}
	c.mu.Lock()
	if c.shut {
		c.mu.Unlock()
		return zero, ErrClosed
	}
	c.queue = append(c.queue, cl)
	if c.running < c.opts.Concurrent {
		c.running++
		c.loops.Add(1)
		go c.loop()
	}
	c.mu.Unlock()

	select {
	case r := <-cl.res:
		return r.unwrap()
	case <-ctx.Done():
	}
	if cl.state.CompareAndSwap(queued, abandoned) {
		// The committer will skip it: never written.
		return zero, ctx.Err()
	}
	// Taken: the batch may already have written it. Report the outcome if it
	// comes within the grace period.
	var expired <-chan time.Time
	if c.opts.Grace > 0 {
		t := time.NewTimer(c.opts.Grace)
		defer t.Stop()
		expired = t.C
	}
	select {
	case r := <-cl.res:
		return r.unwrap()
	case <-expired:
		return zero, fmt.Errorf("%w: %w", ctx.Err(), ErrInFlight)
	}
}

// panicked carries a panic in fn to the callers, which re-panic in their own
// goroutines (where, for an HTTP handler, net/http recovers it), instead of
// killing the process from the committer's.
type panicked struct{ v any }

func (p panicked) Error() string { return fmt.Sprintf("groupcommit: commit panicked: %v", p.v) }

func (r Result[Out]) unwrap() (Out, error) {
	if p, ok := r.Err.(panicked); ok {
		panic(p.v)
	}
	return r.Val, r.Err
}

// Close stops taking new items (Do returns ErrClosed), lets the queued ones
// commit, and returns once the last batch has. It is safe to call more than
// once.
func (c *Committer[In, Out]) Close() {
	c.mu.Lock()
	c.shut = true
	c.mu.Unlock()
	c.loops.Wait()
}

func (c *Committer[In, Out]) loop() {
	defer c.loops.Done()
	for {
		batch, more := c.take()
		if !more {
			return
		}
		if len(batch) > 0 {
			c.run(batch)
		}
	}
}

// take removes up to MaxBatch live calls from the queue (none when every
// call taken had left). more is false when the queue was empty: the loop
// then ends, and the next Do starts another.
func (c *Committer[In, Out]) take() (batch []*call[In, Out], more bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		c.running--
		return nil, false
	}
	n := 0
	for n < len(c.queue) && len(batch) < c.opts.MaxBatch {
		cl := c.queue[n]
		c.queue[n] = nil
		n++
		if !cl.state.CompareAndSwap(queued, taken) {
			continue // its caller left
		}
		if err := cl.ctx.Err(); err != nil {
			cl.res <- Result[Out]{Err: err}
			continue
		}
		batch = append(batch, cl)
	}
	c.queue = c.queue[n:]
	if len(c.queue) == 0 {
		c.queue = nil // let the backing array go
	}
	return batch, true
}

func (c *Committer[In, Out]) run(batch []*call[In, Out]) {
	// The batch's context ends once every caller in it has given up.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	left := atomic.Int64{}
	left.Store(int64(len(batch)))
	for _, cl := range batch {
		stop := context.AfterFunc(cl.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}

	ins := make([]In, len(batch))
	for i, cl := range batch {
		ins[i] = cl.in
	}
	res, err := c.commit(ctx, ins)
	if err == nil && len(res) != len(batch) {
		err = fmt.Errorf("groupcommit: %d results for %d items", len(res), len(batch))
	}
	if err == nil {
		for i, cl := range batch {
			cl.res <- res[i]
		}
		return
	}
	if len(batch) == 1 || ctx.Err() != nil {
		for _, cl := range batch {
			cl.res <- Result[Out]{Err: err}
		}
		return
	}
	// The transaction failed as a whole; maybe one item made it fail. Each
	// alone, under its own caller's context, so the others still commit.
	for _, cl := range batch {
		if err := cl.ctx.Err(); err != nil {
			cl.res <- Result[Out]{Err: err}
			continue
		}
		r, err := c.commit(cl.ctx, []In{cl.in})
		switch {
		case err != nil:
			cl.res <- Result[Out]{Err: err}
		case len(r) != 1:
			cl.res <- Result[Out]{Err: fmt.Errorf("groupcommit: %d results for 1 item", len(r))}
		default:
			cl.res <- r[0]
		}
	}
}

// commit calls fn, turning a panic into an error every caller re-panics on.
func (c *Committer[In, Out]) commit(ctx context.Context, ins []In) (res []Result[Out], err error) {
	start := time.Now()
	defer func() {
		if v := recover(); v != nil {
			res, err = nil, panicked{v}
		}
		if c.opts.Observe != nil {
			c.opts.Observe(len(ins), time.Since(start), err)
		}
	}()
	return c.fn(ctx, ins)
}
