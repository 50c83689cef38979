package relay

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// AuditEntry is one row of the append-only, hash-chained audit log.
//
// Hash = SHA-256(PrevHash (32 raw bytes) || canonical content), where the
// canonical content is, in order, seq as an 8-byte big-endian integer and
// then event_id, type, occurred_at and the event JSON, each as a 4-byte
// big-endian length followed by its bytes. Length prefixes make the encoding
// unambiguous (no two different entries hash the same bytes), and hashing
// the event JSON exactly as stored — a string column, never re-encoded —
// keeps the chain independent of any JSON library's key order. The first
// entry's PrevHash is GenesisHash.
type AuditEntry struct {
	Seq        int64
	EventID    string
	Type       string
	OccurredAt string
	Event      []byte // the relay event JSON, PII sealed
	PrevHash   string // hex
	Hash       string // hex
}

// GenesisHash is the PrevHash of the first entry.
var GenesisHash = strings.Repeat("0", 64)

// ChainHash computes the hash of an entry following prevHash.
func ChainHash(prevHash string, seq int64, eventID, typ, occurredAt string, event []byte) (string, error) {
	prev, err := hex.DecodeString(prevHash)
	if err != nil || len(prev) != sha256.Size {
		return "", fmt.Errorf("relay: audit: previous hash is not 32 bytes of hex")
	}
	h := sha256.New()
	h.Write(prev)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(seq))
	h.Write(n[:])
	for _, f := range [][]byte{[]byte(eventID), []byte(typ), []byte(occurredAt), event} {
		binary.BigEndian.PutUint32(n[:4], uint32(len(f)))
		h.Write(n[:4])
		h.Write(f)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// newEntry builds the entry for ev following the entry (seq, hash) prev.
func newEntry(prevSeq int64, prevHash string, ev Event) (AuditEntry, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return AuditEntry{}, err
	}
	e := AuditEntry{Seq: prevSeq + 1, EventID: ev.ID, Type: ev.Type, OccurredAt: ev.OccurredAt, Event: body, PrevHash: prevHash}
	e.Hash, err = ChainHash(prevHash, e.Seq, e.EventID, e.Type, e.OccurredAt, e.Event)
	return e, err
}

// ChainError names the first entry where the chain is broken.
type ChainError struct {
	Seq     int64
	EventID string
	Reason  string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit chain broken at seq %d (event %s): %s", e.Seq, e.EventID, e.Reason)
}

// VerifyResult summarizes a verified chain.
type VerifyResult struct {
	Entries int64
	// Head is the last entry's hash. Recording it elsewhere (a ticket, a
	// log) lets a later Verify also prove that nothing was cut off the end,
	// which a hash chain alone cannot show.
	Head string
}

// chainVerifier checks entries one at a time, in seq order.
type chainVerifier struct {
	prevSeq  int64
	prevHash string
}

func newChainVerifier() *chainVerifier { return &chainVerifier{prevHash: GenesisHash} }

func (v *chainVerifier) check(e AuditEntry) error {
	fail := func(format string, a ...any) error {
		return &ChainError{Seq: e.Seq, EventID: e.EventID, Reason: fmt.Sprintf(format, a...)}
	}
	if e.Seq != v.prevSeq+1 {
		return fail("expected seq %d (an entry is missing)", v.prevSeq+1)
	}
	if e.PrevHash != v.prevHash {
		return fail("prev_hash does not match the previous entry's hash")
	}
	want, err := ChainHash(e.PrevHash, e.Seq, e.EventID, e.Type, e.OccurredAt, e.Event)
	if err != nil {
		return fail("%v", err)
	}
	if want != e.Hash {
		return fail("content does not match its hash (entry altered)")
	}
	// The columns are hashed, but so is the JSON; make sure they agree, so
	// that a row cannot be hashed "correctly" around an event that says
	// something else.
	var ev struct {
		ID         string `json:"id"`
		Type       string `json:"type"`
		OccurredAt string `json:"occurred_at"`
	}
	if err := json.Unmarshal(e.Event, &ev); err != nil {
		return fail("event is not valid JSON")
	}
	if ev.ID != e.EventID || ev.Type != e.Type || ev.OccurredAt != e.OccurredAt {
		return fail("columns disagree with the event JSON")
	}
	v.prevSeq, v.prevHash = e.Seq, e.Hash
	return nil
}

// VerifyEntries verifies a whole chain held in memory (in seq order).
func VerifyEntries(entries []AuditEntry) (VerifyResult, error) {
	v := newChainVerifier()
	for _, e := range entries {
		if err := v.check(e); err != nil {
			return VerifyResult{Entries: v.prevSeq, Head: v.prevHash}, err
		}
	}
	return VerifyResult{Entries: v.prevSeq, Head: v.prevHash}, nil
}
