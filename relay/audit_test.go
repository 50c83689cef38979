package relay

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// testLog builds an audit log of perChain entries in each of chains, the
// chains' entries interleaved as concurrent appends would commit them. Event
// ids are ev_<chain>_<seq>.
func testLog(t *testing.T, chains []int, perChain int) []AuditEntry {
	t.Helper()
	heads := map[int]AuditEntry{}
	var out []AuditEntry
	for i := range perChain {
		for _, c := range chains {
			ev := Event{ID: fmt.Sprintf("ev_%d_%d", c, i+1), Type: TypeConsentGranted, OccurredAt: "2026-03-01T12:00:00.000Z", CallSID: "CA1", Source: "dtmf"}
			prev, ok := heads[c]
			if !ok {
				prev.Hash = GenesisHash
			}
			e, err := newEntry(c, prev.Seq, prev.Hash, ev)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
			heads[c] = e
		}
	}
	return out
}

// find returns the index of the entry of chain at seq.
func find(es []AuditEntry, chain int, seq int64) int {
	for i, e := range es {
		if e.Chain == chain && e.Seq == seq {
			return i
		}
	}
	panic(fmt.Sprintf("no entry %d/%d", chain, seq))
}

func rehash(e *AuditEntry) {
	e.Hash, _ = ChainHash(e.PrevHash, e.Chain, e.Seq, e.EventID, e.Type, e.OccurredAt, e.Event)
}

func TestVerifyEntries(t *testing.T) {
	chains := []int{7, 0, 3}
	entries := testLog(t, chains, 5)
	res, err := VerifyEntries(entries)
	if err != nil || res.Entries != 15 || len(res.Chains) != 3 {
		t.Fatalf("intact log: %+v %v", res, err)
	}
	for i, c := range []int{0, 3, 7} {
		if h := res.Chains[i]; h.Chain != c || h.Seq != 5 || h.Hash != entries[find(entries, c, 5)].Hash {
			t.Fatalf("chain head %d: %+v", i, h)
		}
	}
	if res.Head != CombinedHead(res.Chains) || len(res.Head) != 64 {
		t.Fatalf("combined head %q", res.Head)
	}

	tamper := []struct {
		name  string
		mod   func([]AuditEntry) []AuditEntry
		chain int
		seq   int64
	}{
		{"event body edited", func(es []AuditEntry) []AuditEntry {
			es[find(es, 3, 3)].Event = []byte(`{"id":"ev_3_3","type":"consent.declined","occurred_at":"2026-03-01T12:00:00.000Z"}`)
			return es
		}, 3, 3},
		{"type column edited", func(es []AuditEntry) []AuditEntry { es[find(es, 0, 2)].Type = TypeConsentDeclined; return es }, 0, 2},
		{"entry removed", func(es []AuditEntry) []AuditEntry {
			i := find(es, 7, 3)
			return append(es[:i], es[i+1:]...)
		}, 7, 4},
		{"entry rehashed in place", func(es []AuditEntry) []AuditEntry {
			e := &es[find(es, 3, 2)]
			e.Event = []byte(`{"id":"ev_3_2","type":"consent.granted","occurred_at":"2026-03-01T12:00:00.000Z","x":1}`)
			rehash(e)
			return es
		}, 3, 3}, // the next entry's prev_hash no longer matches
		{"columns disagree with JSON", func(es []AuditEntry) []AuditEntry {
			e1, e2 := &es[find(es, 0, 1)], &es[find(es, 0, 2)]
			e1.EventID = "ev_X"
			rehash(e1)
			e2.PrevHash = e1.Hash
			rehash(e2)
			return es
		}, 0, 1},
		// Every chain starts from the same genesis, so without the chain
		// number in the hash two chains could trade places whole.
		{"chains relabelled", func(es []AuditEntry) []AuditEntry {
			for i := range es {
				switch es[i].Chain {
				case 3:
					es[i].Chain = 7
				case 7:
					es[i].Chain = 3
				}
			}
			return es
		}, 3, 1},
		{"entry moved to another chain", func(es []AuditEntry) []AuditEntry {
			e := es[find(es, 3, 5)]
			e.Chain, e.Seq, e.PrevHash = 0, 6, es[find(es, 0, 5)].Hash
			i := find(es, 3, 5)
			return append(append(es[:i], es[i+1:]...), e)
		}, 0, 6},
	}
	for _, tc := range tamper {
		es := tc.mod(testLog(t, chains, 5))
		_, err := VerifyEntries(es)
		var ce *ChainError
		if !errors.As(err, &ce) || ce.Chain != tc.chain || ce.Seq != tc.seq {
			t.Errorf("%s: got %v, want break at chain %d seq %d", tc.name, err, tc.chain, tc.seq)
			continue
		}
		if want := es[find(es, tc.chain, tc.seq)].EventID; ce.EventID != want ||
			!strings.Contains(err.Error(), fmt.Sprintf("chain %d broken at seq %d (event %s)", tc.chain, tc.seq, want)) {
			t.Errorf("%s: %q does not name chain %d seq %d event %s", tc.name, err, tc.chain, tc.seq, want)
		}
	}

	// Cutting entries off the end of a chain, or a whole chain, leaves
	// intact chains: only the head recorded elsewhere shows it.
	for name, cut := range map[string]func([]AuditEntry) []AuditEntry{
		"last entry of a chain": func(es []AuditEntry) []AuditEntry { i := find(es, 3, 5); return append(es[:i], es[i+1:]...) },
		"whole chain": func(es []AuditEntry) []AuditEntry {
			out := es[:0]
			for _, e := range es {
				if e.Chain != 7 {
					out = append(out, e)
				}
			}
			return out
		},
	} {
		got, err := VerifyEntries(cut(testLog(t, chains, 5)))
		if err != nil || got.Head == res.Head {
			t.Errorf("%s cut off: %v, head %s unchanged", name, err, got.Head)
		}
	}
}

func TestVerifyEmpty(t *testing.T) {
	res, err := VerifyEntries(nil)
	if err != nil || res.Entries != 0 || len(res.Chains) != 0 || res.Head != GenesisHash {
		t.Fatalf("empty log: %+v %v", res, err)
	}
}

func TestChainHashUnambiguous(t *testing.T) {
	a, _ := ChainHash(GenesisHash, 0, 1, "ab", "c", "t", []byte("{}"))
	b, _ := ChainHash(GenesisHash, 0, 1, "a", "bc", "t", []byte("{}"))
	if a == b {
		t.Fatal("field boundaries are not part of the hash")
	}
	c, _ := ChainHash(GenesisHash, 1, 1, "ab", "c", "t", []byte("{}"))
	if a == c {
		t.Fatal("the chain number is not part of the hash")
	}
	if _, err := ChainHash(GenesisHash, -1, 1, "ab", "c", "t", nil); err == nil {
		t.Fatal("negative chain hashed")
	}
}

// The hash's exact bytes and the chain a call goes to are part of the
// stored format: a change here would fail every existing log's verify, or
// split calls in flight across chains. (Values computed independently of
// this code, from the format described at AuditEntry.)
func TestAuditFormatPinned(t *testing.T) {
	h, err := ChainHash(GenesisHash, 5, 1, "ev_1", TypeConsentGranted, "2026-03-01T12:00:00.000Z", []byte(`{"id":"ev_1"}`))
	if err != nil || h != "93ab2ed145189444adfe140bb97e5033fdff6617c4933dde801279eb2db9122a" {
		t.Errorf("ChainHash = %s, %v", h, err)
	}
	if c := ChainOf("CA0123456789abcdef0123456789abcdef"); c != 9 {
		t.Errorf("ChainOf = %d", c)
	}
}

func TestChainOfSpreads(t *testing.T) {
	seen := make([]int, AuditChains)
	for i := range 1600 {
		c := ChainOf(fmt.Sprintf("CA%032x", i))
		if c < 0 || c >= AuditChains {
			t.Fatalf("chain %d out of range", c)
		}
		seen[c]++
	}
	for c, n := range seen {
		// 100 expected per chain; a binomial spread stays well inside this.
		if n < 50 || n > 150 {
			t.Errorf("chain %d got %d of 1600 calls: %v", c, n, seen)
		}
	}
}

// The schema's CHECK on relay_audit.chain must admit every chain the code
// appends to (and records the count for anyone reading the schema).
func TestMigrationsRecordAuditChains(t *testing.T) {
	want := fmt.Sprintf("CHECK (chain >= 0 AND chain < %d)", AuditChains)
	for _, f := range []string{"relaypg/migrations/0001_audit.sql", "relaysqlite/migrations/0001_audit.sql"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %q", f, want)
		}
	}
}
