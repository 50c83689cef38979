package ivr

// The backends /readyz may name.
const (
	BackendPostgres = "postgres"
	BackendRedis    = "redis"
	BackendRelay    = "relay"
	BackendSQLite   = "sqlite"
)

// NotReady is the error Config.Ready returns when a backend does not
// answer. /readyz answers 503 naming only Backend: the body is public (no
// Twilio signature guards it), and Err can carry host names, user names and
// driver internals, which go to the log instead.
type NotReady struct {
	Backend string // one of the Backend constants
	Err     error
}

func (e NotReady) Error() string { return e.Backend + " unreachable: " + e.Err.Error() }

func (e NotReady) Unwrap() error { return e.Err }
