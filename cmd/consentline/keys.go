package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
)

const keysUsage = "usage: consentline keys rotate [--batch N] | keys status"

// auditNotRewritten is said by every keys command, because it is the one
// thing rotation cannot do and an operator must know before dropping a key.
const auditNotRewritten = `relay_audit: not rewritten. The audit log is append-only and hash-chained, so the events it
  stores keep the keys they were sealed under: once a key leaves ENCRYPTION_KEYS_RETIRED,
  consentline decrypt can no longer open the audit copies sealed with it (their hashes and
  signed checkpoints still verify). The authoritative records above are rotated and stay readable.`

// keysCommand: `keys rotate` re-seals every stored PII value and sealed
// secret under ENCRYPTION_KEY; `keys status` only counts.
func keysCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return badSettings{errors.New(keysUsage)}
	}
	fs := flag.NewFlagSet("keys "+args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	batch := fs.Int("batch", pii.DefaultRotateBatch, "rows per read and per transaction")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 || *batch < 1 {
		return badSettings{errors.New(keysUsage)}
	}
	switch args[0] {
	case "rotate", "status":
	default:
		return badSettings{fmt.Errorf("unknown keys command %q (rotate, status)", args[0])}
	}
	keys, err := keyringFromEnv(getenv)
	if err != nil {
		return err
	}
	db, err := openConfiguredDatabase(ctx, getenv)
	if err != nil {
		return err
	}
	defer db.store.Close()
	r, ok := db.store.(consent.Resealer)
	if !ok { // both stores are; a new one must be too
		return fmt.Errorf("the %s store cannot rotate keys", db.kind)
	}
	fmt.Fprintf(stdout, "active key: kid %s (ENCRYPTION_KEY)\n", keys.KID())
	if retired := keys.KIDs()[1:]; len(retired) > 0 {
		fmt.Fprintf(stdout, "retired keys: kid %s (ENCRYPTION_KEYS_RETIRED)\n", strings.Join(retired, ", kid "))
	}

	var rep pii.RotateReport
	if args[0] == "rotate" {
		rep, err = pii.Rotate(ctx, r, keys, pii.RotateOptions{Batch: *batch, AfterBatch: func(table string, n int) error {
			// Progress on stderr: a large table takes a while, and a run
			// stopped part-way (Ctrl-C, a crash) resumes where it stopped.
			fmt.Fprintf(stderr, "%s: re-sealed %d values\n", table, n)
			return nil
		}})
		if err != nil {
			return fmt.Errorf("rotation stopped (run it again: it resumes, skipping what is done): %w", err)
		}
	}
	// Counted afresh rather than from the rotation: whatever else wrote
	// meanwhile (an instance still running with the old ENCRYPTION_KEY) shows
	// up here.
	census, err := pii.TakeCensus(ctx, r, keys, *batch)
	if err != nil {
		return err
	}
	if args[0] == "rotate" {
		fmt.Fprintf(stdout, "rotated %d values; %s\n", rep.Rotated, retiredSummary(census, keys))
		fmt.Fprintf(stdout, "  %d already under kid %s and bound to their place (skipped)", rep.Current, keys.KID())
		if rep.Changed > 0 {
			fmt.Fprintf(stdout, "; %d changed by another writer meanwhile (its value kept)", rep.Changed)
		}
		fmt.Fprintln(stdout)
	} else {
		fmt.Fprintf(stdout, "%d stored values; %s\n", census.Values, retiredSummary(census, keys))
	}
	if census.Unbound > 0 {
		fmt.Fprintf(stdout, "  %d sealed before values were bound to their place (consentline keys rotate binds them)\n", census.Unbound)
	}
	if census.Unreadable > 0 {
		fmt.Fprintf(stdout, "  %d are not JWE values at all\n", census.Unreadable)
	}
	switch {
	case census.Retired == 0 && census.Unreadable == 0 && len(keys.KIDs()) > 1:
		fmt.Fprintln(stdout, "no stored record or secret needs a retired key: it can go from ENCRYPTION_KEYS_RETIRED (first make sure every instance runs with the new ENCRYPTION_KEY)")
	case census.Retired > 0 && args[0] == "status":
		fmt.Fprintln(stdout, "run consentline keys rotate to re-seal them under the active key")
	}
	fmt.Fprintln(stdout, auditNotRewritten)
	if rep.Failed > 0 {
		// Errors name table, row key, field and kid; never a value.
		for _, e := range rep.Errors {
			fmt.Fprintf(stderr, "  %v\n", e)
		}
		return fmt.Errorf("%d stored values could not be opened and were left as they are (the first %d are listed above)", rep.Failed, len(rep.Errors))
	}
	return nil
}

// retiredSummary is "0 still under retired keys (kid a)" or "12 still
// under retired keys (kid a: 10, kid b: 2)".
func retiredSummary(c pii.Census, keys *pii.Keyring) string {
	if c.Retired == 0 {
		if retired := keys.KIDs()[1:]; len(retired) > 0 {
			return "0 still under retired keys (kid " + strings.Join(retired, ", kid ") + ")"
		}
		return "0 still under retired keys"
	}
	var parts []string
	for _, kid := range c.RetiredKIDs(keys.KID()) {
		parts = append(parts, fmt.Sprintf("kid %s: %d", kid, c.ByKID[kid]))
	}
	return fmt.Sprintf("%d still under retired keys (%s)", c.Retired, strings.Join(parts, ", "))
}
