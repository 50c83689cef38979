package redislock

import (
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"time"

	"github.com/redis/go-redis/v9"
)

// Client settings for a webhook that must answer within 2 seconds whatever
// Redis is doing. Each applies unless the URL sets it (go-redis reads
// dial_timeout, read_timeout, write_timeout, pool_size, pool_timeout,
// min_idle_conns and max_retries from the query string).
const (
	// ClientDialTimeout bounds one TCP connect (and the handshake's
	// network I/O): a healthy Redis on a private network connects in well
	// under a millisecond.
	ClientDialTimeout = 500 * time.Millisecond
	// ClientIOTimeout bounds each socket read and write when the caller's
	// context has no earlier deadline.
	ClientIOTimeout = 500 * time.Millisecond
	// ClientPoolTimeout bounds the wait for a free connection when every
	// one is busy; the caller's deadline usually ends the wait sooner.
	ClientPoolTimeout = time.Second
	// ClientMinPoolSize is the least number of connections kept per
	// process: Twilio delivers a call's callbacks (partials, the final
	// result, retries) in bursts, and a burst that has to dial new
	// connections waits on the dials.
	ClientMinPoolSize = 64
	// ClientMinIdleConns stay open while idle, so the first webhook after a
	// quiet spell does not pay for a dial.
	ClientMinIdleConns = 4
)

// WebhookTTL is the lease for locks held only within one webhook's 2 s
// budget, what serve uses instead of DefaultTTL. Work under such a lock ends
// with the webhook's deadline, so the lease need not outlive it by much; and
// the lease is also how long a lock can be left behind by a SET NX whose
// reply was lost (Redis stalled, then caught up after Acquire gave up and
// its compensating delete had failed too): that call's retries find the lock
// busy until it lapses. Measured in internal/integration TestRedisStalled.
const WebhookTTL = 3 * time.Second

// NewClient returns a go-redis client for redisURL (redis:// or rediss://)
// set up for the per-call lock's time budget:
//
//   - ContextTimeoutEnabled: without it go-redis ignores the caller's context
//     deadline on socket reads and waits out ReadTimeout instead, so a
//     stalled Redis would hold a webhook past its deadline.
//   - Dial, read and write timeouts of 500 ms instead of go-redis's 5 s.
//   - At most one retry of a failed command, after a short back-off, and one
//     retry of a failed dial: a refused connection fails in milliseconds
//     rather than after go-redis's default five dial attempts with back-off.
//   - A pool of max(64, 10×GOMAXPROCS) connections with a few kept idle.
//
// The error never contains the URL (it may hold a password).
func NewClient(redisURL string) (*redis.Client, error) {
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // url.Error repeats the URL, password and all
		}
		return nil, fmt.Errorf("redislock: bad Redis URL: %w", err)
	}
	opts.ContextTimeoutEnabled = true
	setDefault(&opts.DialTimeout, ClientDialTimeout)
	setDefault(&opts.ReadTimeout, ClientIOTimeout)
	setDefault(&opts.WriteTimeout, ClientIOTimeout)
	setDefault(&opts.PoolTimeout, ClientPoolTimeout)
	setDefault(&opts.PoolSize, max(ClientMinPoolSize, 10*runtime.GOMAXPROCS(0)))
	setDefault(&opts.MinIdleConns, ClientMinIdleConns)
	// max_retries=0 in the URL means go-redis's default (3); -1 disables.
	setDefault(&opts.MaxRetries, 1)
	setDefault(&opts.MinRetryBackoff, 5*time.Millisecond)
	setDefault(&opts.MaxRetryBackoff, 50*time.Millisecond)
	setDefault(&opts.DialerRetries, 2)
	setDefault(&opts.DialerRetryTimeout, 20*time.Millisecond)
	return redis.NewClient(opts), nil
}

func setDefault[T comparable](field *T, v T) {
	var zero T
	if *field == zero {
		*field = v
	}
}
