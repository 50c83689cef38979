package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/relay"
)

// The operator commands read the same settings as serve, but only those
// they need: the database and, for the relay and decrypt, the keys.

func keyringFromEnv(getenv func(string) string) (*pii.Keyring, error) {
	k, err := pii.ParseKeyring(getenv("ENCRYPTION_KEY"), getenv("ENCRYPTION_KEYS_RETIRED"))
	if err != nil {
		return nil, badSettings{err}
	}
	return k, nil
}

// openConfiguredDatabase opens (and migrates) the database the settings
// name, DATABASE_URL or the embedded one in DATA_DIR, for an operator
// command: no outbox and no metrics, since it records nothing.
func openConfiguredDatabase(ctx context.Context, getenv func(string) string) (*database, error) {
	return openDatabase(ctx, getenv("DATABASE_URL"), orDefault(getenv("DATA_DIR"), "./data"), nil, nil)
}

// openRelay opens the configured database and the relay on it, configured
// like serve's but not started: queued work is delivered by the servers.
func openRelay(ctx context.Context, getenv func(string) string) (*relay.Relay, func(), error) {
	keys, err := keyringFromEnv(getenv)
	if err != nil {
		return nil, nil, err
	}
	s := &settings{Keys: keys}
	if err := s.loadRelay(getenv); err != nil {
		return nil, nil, badSettings{err}
	}
	db, err := openConfiguredDatabase(ctx, getenv)
	if err != nil {
		return nil, nil, err
	}
	rel, err := newRelay(s, db, nil, nil)
	if err != nil {
		_ = db.store.Close()
		return nil, nil, err
	}
	return rel, func() { _ = db.store.Close() }, nil
}

// relayCommand: `relay list --failed` and `relay replay EVENT_ID`.
func relayCommand(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) == 0 {
		return badSettings{errors.New("usage: consentline relay list --failed [--limit N] | relay replay EVENT_ID")}
	}
	switch args[0] {
	case "list":
		fs := flag.NewFlagSet("relay list", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		failed := fs.Bool("failed", false, "list dead-lettered, exhausted and failing deliveries")
		limit := fs.Int("limit", 100, "at most this many")
		if err := fs.Parse(args[1:]); err != nil || !*failed {
			return badSettings{errors.New("usage: consentline relay list --failed [--limit N]")}
		}
		rel, done, err := openRelay(ctx, getenv)
		if err != nil {
			return err
		}
		defer done()
		ds, err := rel.ListFailed(ctx, *limit)
		if err != nil {
			return err
		}
		if len(ds) == 0 {
			fmt.Fprintln(stdout, "no failed deliveries")
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "EVENT ID\tSTATE\tATTEMPTS\tLAST ERROR\tLAST AT\tNEXT AT")
		for _, d := range ds {
			next := "-"
			if d.State == "retryable" {
				next = d.NextAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\n", d.EventID, stateName(d.State), d.Attempt, d.MaxAttempts,
				d.LastError, d.LastAt.UTC().Format(time.RFC3339), next)
		}
		return tw.Flush()
	case "replay":
		if len(args) != 2 {
			return badSettings{errors.New("usage: consentline relay replay EVENT_ID")}
		}
		rel, done, err := openRelay(ctx, getenv)
		if err != nil {
			return err
		}
		defer done()
		jobID, err := rel.Replay(ctx, args[1])
		if errors.Is(err, relay.ErrAlreadyQueued) {
			fmt.Fprintf(stdout, "event %s is already queued for delivery (job %d)\n", args[1], jobID)
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "event %s queued for delivery again (job %d); a running server delivers it\n", args[1], jobID)
		return nil
	}
	return badSettings{fmt.Errorf("unknown relay command %q (list --failed, replay EVENT_ID)", args[0])}
}

// stateName says what River's job state means to an operator.
func stateName(s string) string {
	switch s {
	case "cancelled":
		return "dead-letter"
	case "discarded":
		return "retries-exhausted"
	}
	return s
}

// decryptCommand: `decrypt VALUE` (or `decrypt -` to read it from stdin, so
// the value stays out of the shell history). The output is PHI.
func decryptCommand(args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) != 1 {
		return badSettings{errors.New("usage: consentline decrypt VALUE   (a JWE field or a whole relay event; - reads it from stdin)")}
	}
	keys, err := keyringFromEnv(getenv)
	if err != nil {
		return err
	}
	value := args[0]
	if value == "-" {
		b, err := io.ReadAll(bufio.NewReader(stdin))
		if err != nil {
			return err
		}
		value = string(b)
	}
	plain, err := relay.Decrypt(keys, strings.TrimSpace(value))
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, plain)
	return nil
}

// stdin is where `decrypt -` reads from; a variable so tests can feed it.
var stdin io.Reader = os.Stdin
