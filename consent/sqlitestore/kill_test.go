package sqlitestore_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/consent/storetest"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/relay"
	"github.com/consentline/consentline/relay/relaysqlite"
)

// killChildEnv, when set, makes TestKilledMidStreamKeepsAcknowledged the
// child process: it records into the directory named, forever.
const killChildEnv = "CONSENTLINE_KILL_TEST_DIR"

var killTestKey = []byte("0123456789abcdef0123456789abcdef")

// openWired opens dir the way serve does: the relay's outbox (audit entry
// and delivery job) in each batch's transaction, River's tables migrated.
func openWired(ctx context.Context, dir string) (*sqlitestore.Store, *relay.Relay, *pii.Keyring, error) {
	k, err := pii.NewKeyring(killTestKey)
	if err != nil {
		return nil, nil, nil, err
	}
	ob, err := relay.NewOutbox(relaysqlite.New(nil), k, true)
	if err != nil {
		return nil, nil, nil, err
	}
	st, err := sqlitestore.Open(ctx, dir, sqlitestore.Options{Migrate: true, Outbox: ob})
	if err != nil {
		return nil, nil, nil, err
	}
	if err := relaysqlite.Migrate(ctx, st.DB()); err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	rel, err := relay.New(relaysqlite.New(st.DB()), relay.Config{Keyring: k})
	if err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	return st, rel, k, nil
}

// TestKilledMidStreamKeepsAcknowledged: a child process records decisions
// from many goroutines at once and prints each call SID only after Record
// returned it stored; the parent SIGKILLs it mid-stream, three times over on
// the same file, and checks that every SID ever printed is in the database,
// with its audit entry and its delivery job, and that the audit chains
// verify.
//
// What this proves is that an acknowledged decision survives the process
// dying at any moment (WAL recovery, group commit's callers answered only
// after COMMIT). It cannot prove survival of a power cut: the kernel's page
// cache outlives a killed process, so synchronous=NORMAL would pass it too.
// That part rests on synchronous=FULL (TestPragmas checks it is set), which
// fsyncs the WAL before COMMIT returns; testing it for real takes a machine
// or a block device that drops unsynced writes.
func TestKilledMidStreamKeepsAcknowledged(t *testing.T) {
	if dir := os.Getenv(killChildEnv); dir != "" {
		recordForever(dir)
		return
	}
	if testing.Short() {
		t.Skip("starts and kills child processes")
	}
	dir := t.TempDir()
	acked := map[string]bool{}
	for round := range 3 {
		for sid := range runAndKill(t, dir, 150+100*round) {
			acked[sid] = true
		}
	}

	ctx := context.Background()
	st, rel, _, err := openWired(ctx, dir)
	if err != nil {
		t.Fatalf("reopen after the kills: %v", err)
	}
	defer st.Close()
	for sid := range acked {
		if _, err := st.Get(ctx, sid, "hipaa-consent"); err != nil {
			t.Errorf("acknowledged %s: %v", sid, err)
		}
	}
	res, err := rel.VerifyAudit(ctx)
	if err != nil {
		t.Fatalf("audit verify after the kills: %v", err)
	}
	var records, jobs int64
	if err := st.DB().QueryRowContext(ctx, `SELECT count(*) FROM consent_records`).Scan(&records); err != nil {
		t.Fatal(err)
	}
	if err := st.DB().QueryRowContext(ctx, `SELECT count(*) FROM river_job`).Scan(&jobs); err != nil {
		t.Fatal(err)
	}
	// Records committed but not yet printed when the child died are there
	// too; each has its entry and job, as they share the transaction.
	if res.Entries != records || jobs != records || records < int64(len(acked)) {
		t.Fatalf("%d records, %d audit entries, %d jobs, %d acknowledged", records, res.Entries, jobs, len(acked))
	}
	t.Logf("%d acknowledged across 3 kills, %d stored, %d audit chains verified", len(acked), records, len(res.Chains))
}

// runAndKill starts the child on dir, SIGKILLs it once it has acknowledged
// at least after decisions, and returns every SID it printed.
func runAndKill(t *testing.T, dir string, after int) map[string]bool {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledMidStreamKeepsAcknowledged$", "-test.count=1")
	cmd.Env = append(os.Environ(), killChildEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	killed := false
	timeout := time.AfterFunc(60*time.Second, func() { _ = cmd.Process.Kill() })
	defer timeout.Stop()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		sid, ok := strings.CutPrefix(sc.Text(), "ACK ")
		if !ok {
			continue
		}
		acked[sid] = true
		if !killed && len(acked) >= after {
			// Lines already in the pipe still count: the child printed
			// them, so Record had returned.
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("child ended after %d decisions before being killed: %v\n%s", len(acked), err, stderr.String())
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v\n%s", err, stderr.String())
	}
	return acked
}

// recordForever is the child: 16 goroutines record new decisions until the
// process is killed, printing "ACK <sid>" for each one Record stored.
func recordForever(dir string) {
	ctx := context.Background()
	st, _, k, err := openWired(ctx, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	// Each record's values are sealed for that record: the outbox opens
	// them to build its event, and a value copied from another record
	// would not open there.
	seal := func(callSID, field, s string) consent.Sealed {
		v, err := k.SealFor(consent.RecordBinding(callSID, "hipaa-consent", field), s)
		if err != nil {
			panic(err)
		}
		return v
	}
	proto := storetest.NewRecord("CAprototype0000", "hipaa-consent")
	var (
		mu  sync.Mutex
		seq atomic.Int64
		w   = bufio.NewWriter(os.Stdout)
	)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				rec := proto
				rec.ID = ""
				rec.CallSID = fmt.Sprintf("CAkill%d_%d", os.Getpid(), seq.Add(1))
				rec.From = seal(rec.CallSID, consent.FieldFrom, "+14155550100")
				rec.To = seal(rec.CallSID, consent.FieldTo, "+18005550199")
				rec.Transcript = seal(rec.CallSID, consent.FieldTranscript, "yes I agree")
				stored, _, err := st.Record(ctx, rec)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child record:", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Fprintf(w, "ACK %s\n", stored.CallSID)
				w.Flush() // written before the next Record starts, never buffered across a kill
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}
