package relay

import (
	"errors"
	"fmt"
	"testing"
)

func chain(t *testing.T, n int) []AuditEntry {
	t.Helper()
	var out []AuditEntry
	prevSeq, prevHash := int64(0), GenesisHash
	for i := range n {
		ev := Event{ID: fmt.Sprintf("ev_%d", i+1), Type: TypeConsentGranted, OccurredAt: "2026-03-01T12:00:00.000Z", CallSID: "CA1", Source: "dtmf"}
		e, err := newEntry(prevSeq, prevHash, ev)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
		prevSeq, prevHash = e.Seq, e.Hash
	}
	return out
}

func TestVerifyEntries(t *testing.T) {
	entries := chain(t, 5)
	res, err := VerifyEntries(entries)
	if err != nil || res.Entries != 5 || res.Head != entries[4].Hash {
		t.Fatalf("intact chain: %+v %v", res, err)
	}
	tamper := []struct {
		name string
		mod  func([]AuditEntry) []AuditEntry
		seq  int64
	}{
		{"event body edited", func(es []AuditEntry) []AuditEntry {
			es[2].Event = []byte(`{"id":"ev_3","type":"consent.declined","occurred_at":"2026-03-01T12:00:00.000Z"}`)
			return es
		}, 3},
		{"type column edited", func(es []AuditEntry) []AuditEntry { es[1].Type = TypeConsentDeclined; return es }, 2},
		{"entry removed", func(es []AuditEntry) []AuditEntry { return append(es[:2], es[3:]...) }, 4},
		{"entry rehashed in place", func(es []AuditEntry) []AuditEntry {
			es[1].Event = []byte(`{"id":"ev_2","type":"consent.granted","occurred_at":"2026-03-01T12:00:00.000Z","x":1}`)
			es[1].Hash, _ = ChainHash(es[1].PrevHash, es[1].Seq, es[1].EventID, es[1].Type, es[1].OccurredAt, es[1].Event)
			return es
		}, 3}, // the next entry's prev_hash no longer matches
		{"columns disagree with JSON", func(es []AuditEntry) []AuditEntry {
			es[0].EventID = "ev_X"
			es[0].Hash, _ = ChainHash(es[0].PrevHash, 1, "ev_X", es[0].Type, es[0].OccurredAt, es[0].Event)
			es[1].PrevHash = es[0].Hash
			es[1].Hash, _ = ChainHash(es[1].PrevHash, 2, es[1].EventID, es[1].Type, es[1].OccurredAt, es[1].Event)
			return es[:2]
		}, 1},
	}
	for _, tc := range tamper {
		es := tc.mod(append([]AuditEntry(nil), chain(t, 5)...))
		_, err := VerifyEntries(es)
		var ce *ChainError
		if !errors.As(err, &ce) || ce.Seq != tc.seq {
			t.Errorf("%s: got %v, want break at seq %d", tc.name, err, tc.seq)
		}
	}
}

func TestChainHashUnambiguous(t *testing.T) {
	a, _ := ChainHash(GenesisHash, 1, "ab", "c", "t", []byte("{}"))
	b, _ := ChainHash(GenesisHash, 1, "a", "bc", "t", []byte("{}"))
	if a == b {
		t.Fatal("field boundaries are not part of the hash")
	}
}
