// Command consentline runs the ConsentLine service and its operator tools.
//
//	consentline serve     the production server (settings from the environment)
//	consentline demo      a whole simulated call against a throwaway server
//	consentline migrate   apply database migrations and exit
//	consentline relay     list failed deliveries, replay one
//	consentline audit     verify the audit log (hash chains and signed checkpoints), sign and export its heads
//	consentline keys      re-seal stored PII under ENCRYPTION_KEY (rotate), or count it by key (status)
//	consentline decrypt   decrypt a JWE field or a whole relay event
//	consentline evidence  write a call's answer audio (kept by its media stream) as a WAV
//	consentline loadtest  drive many simulated calls against a running instance and report what it did
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: consentline <command>

commands:
  serve     run the server (configured by environment variables; see README.md)
  demo      start a throwaway server on the embedded database and play a whole call against it
  migrate   apply database migrations (DATABASE_URL, or the embedded database in DATA_DIR) and exit
  relay list --failed [--limit N]
            deliveries to Zapier that are dead-lettered, exhausted or failing (no PHI)
  relay replay EVENT_ID
            queue one event for delivery again
  audit verify [--heads FILE] [--pubkey KEY]...
            walk the audit log's hash chains and check every signed checkpoint (and the
            heads kept in FILE); names the first broken entry or checkpoint
  audit checkpoint
            sign every chain head now and print the signed heads as JSON (keep it elsewhere)
  audit pubkey
            print the public key that verifies the audit log's checkpoints
  keys rotate [--batch N]
            re-seal every stored PII value and sealed secret under ENCRYPTION_KEY, bound to
            its place; resumable, safe while serve runs; says how many still need a retired key
  keys status
            count stored values by key, changing nothing
  decrypt VALUE
            decrypt a JWE field or a whole relay event with ENCRYPTION_KEY(S_RETIRED);
            "-" reads VALUE from stdin. The output is PHI: keep it on your terminal.
  evidence CALLSID --out answer.wav [--script ID]
            write the caller's answer as the call's media stream kept it (8 kHz μ-law WAV,
            from 300 ms before its onset to 300 ms after its end); PHI, written to the file only
  loadtest --target URL [--calls N] [--concurrency N] [--rate R] [--streams] [--duplicates F]
            drive simulated calls (signed webhooks, media streams at real time) against a
            running instance; prints latency per route, holds, errors and the decisions
            recorded vs expected; exits non-zero on any error or mismatch (-h for all flags)
`

// exitUsage is the exit status for a bad command line or setting.
const exitUsage = 2

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command and returns the process exit status. Errors are
// printed as one line on stderr.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, getenv, stdout)
	case "demo":
		err = demo(ctx, stdout, stderr)
	case "migrate":
		err = migrate(ctx, getenv, stdout)
	case "relay":
		err = relayCommand(ctx, args[1:], getenv, stdout)
	case "audit":
		err = auditCommand(ctx, args[1:], getenv, stdout, stderr)
	case "keys":
		err = keysCommand(ctx, args[1:], getenv, stdout, stderr)
	case "decrypt":
		err = decryptCommand(args[1:], getenv, stdout)
	case "evidence":
		err = evidenceCommand(ctx, args[1:], getenv, stdout)
	case "loadtest":
		err = loadtestCommand(ctx, args[1:], getenv, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "consentline: unknown command %q\n%s", args[0], usage)
		return exitUsage
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "consentline %s: %v\n", args[0], err)
	var bad badSettings
	if errors.As(err, &bad) {
		return exitUsage
	}
	return 1
}
