package relay

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strings"

	"github.com/consentline/consentline/relay/relaydriver"
)

// AuditChains is how many independent hash chains the audit log is spread
// over. One chain means one lock held from the append to COMMIT, so on
// PostgreSQL every decision's WAL flush waited for the previous one; with
// independent chains, commits in different chains overlap and share flushes
// (group commit).
//
// It only decides where new entries go. Every row stores its chain and
// verification walks the chains the table holds, so changing it never
// invalidates existing entries; it does need a migration widening the
// schema's CHECK on relay_audit.chain, and a call whose events straddle the
// change would have them in two chains, no longer ordered against each
// other.
const AuditChains = 16

// ChainOf is the chain a call's events are appended to: FNV-1a (32 bit) of
// the call SID, mod AuditChains. Keying on the call keeps its consent and
// call.completed events in one chain, in the order they happened, and sends
// an event re-sent for the same call to the same chain lock, which is what
// makes the "already in the log" check race-free.
func ChainOf(callSID string) int {
	h := fnv.New32a()
	h.Write([]byte(callSID))
	return int(h.Sum32() % AuditChains)
}

// AuditEntry is one row of the append-only, hash-chained audit log.
//
// Hash = SHA-256(PrevHash (32 raw bytes) || canonical content), where the
// canonical content is, in order, chain as a 4-byte big-endian integer, seq
// as an 8-byte big-endian integer and then event_id, type, occurred_at and
// the event JSON, each as a 4-byte big-endian length followed by its bytes.
// Length prefixes make the encoding unambiguous (no two different entries
// hash the same bytes), and hashing the event JSON exactly as stored — a
// string column, never re-encoded — keeps the chain independent of any JSON
// library's key order. Hashing the chain number gives each chain its own
// history from the first entry on (every chain starts from GenesisHash), so
// an entry moved to another chain no longer matches its hash.
type AuditEntry = relaydriver.AuditEntry

// GenesisHash is the PrevHash of each chain's first entry.
var GenesisHash = strings.Repeat("0", 64)

// ChainHash computes the hash of an entry of chain following prevHash.
func ChainHash(prevHash string, chain int, seq int64, eventID, typ, occurredAt string, event []byte) (string, error) {
	prev, err := hex.DecodeString(prevHash)
	if err != nil || len(prev) != sha256.Size {
		return "", fmt.Errorf("relay: audit: previous hash is not 32 bytes of hex")
	}
	if chain < 0 || chain > math.MaxInt32 {
		return "", fmt.Errorf("relay: audit: chain %d out of range", chain)
	}
	h := sha256.New()
	h.Write(prev)
	var n [8]byte
	binary.BigEndian.PutUint32(n[:4], uint32(chain))
	h.Write(n[:4])
	binary.BigEndian.PutUint64(n[:], uint64(seq))
	h.Write(n[:])
	for _, f := range [][]byte{[]byte(eventID), []byte(typ), []byte(occurredAt), event} {
		binary.BigEndian.PutUint32(n[:4], uint32(len(f)))
		h.Write(n[:4])
		h.Write(f)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// newEntry builds the entry for ev following the entry (seq, hash) prev of
// chain.
func newEntry(chain int, prevSeq int64, prevHash string, ev Event) (AuditEntry, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return AuditEntry{}, err
	}
	e := AuditEntry{Chain: chain, Seq: prevSeq + 1, EventID: ev.ID, Type: ev.Type, OccurredAt: ev.OccurredAt, Event: body, PrevHash: prevHash}
	e.Hash, err = ChainHash(prevHash, chain, e.Seq, e.EventID, e.Type, e.OccurredAt, e.Event)
	return e, err
}

// ChainError names the first entry where a chain is broken.
type ChainError struct {
	Chain   int
	Seq     int64
	EventID string
	Reason  string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit chain %d broken at seq %d (event %s): %s", e.Chain, e.Seq, e.EventID, e.Reason)
}

// ChainHead is the last verified entry of one chain; Seq is also the
// chain's number of entries.
type ChainHead struct {
	Chain int
	Seq   int64
	Hash  string
}

// VerifyResult summarizes a verified audit log.
type VerifyResult struct {
	Entries int64       // across all chains
	Chains  []ChainHead // every chain holding entries, by chain number
	// Head is CombinedHead(Chains): one hash standing for every chain's
	// head. Recording the chain heads elsewhere (a ticket, a log) lets a
	// later Verify also prove that nothing was cut off the end of any
	// chain, which a hash chain alone cannot show; Head shows at a glance
	// whether anything changed since.
	Head string
}

// CombinedHead is SHA-256 over the chain heads in chain order, each as
// chain (4-byte big-endian), seq (8-byte big-endian) and hash (32 raw
// bytes); GenesisHash when there are none. A chain cut short, or gone
// altogether, changes it.
func CombinedHead(heads []ChainHead) string {
	if len(heads) == 0 {
		return GenesisHash
	}
	heads = slices.SortedFunc(slices.Values(heads), func(a, b ChainHead) int { return cmp.Compare(a.Chain, b.Chain) })
	h := sha256.New()
	var n [8]byte
	for _, c := range heads {
		binary.BigEndian.PutUint32(n[:4], uint32(c.Chain))
		h.Write(n[:4])
		binary.BigEndian.PutUint64(n[:], uint64(c.Seq))
		h.Write(n[:])
		raw, _ := hex.DecodeString(c.Hash) // verified entries' hashes are 32 bytes of hex
		h.Write(raw)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// auditVerifier checks entries one at a time, each chain in seq order (the
// chains themselves may come in any order or interleaved). It knows nothing
// of AuditChains: the chains are whatever the entries say.
type auditVerifier struct {
	heads   map[int]*ChainHead
	entries int64
}

func newAuditVerifier() *auditVerifier { return &auditVerifier{heads: map[int]*ChainHead{}} }

func (v *auditVerifier) check(e AuditEntry) error {
	fail := func(format string, a ...any) error {
		return &ChainError{Chain: e.Chain, Seq: e.Seq, EventID: e.EventID, Reason: fmt.Sprintf(format, a...)}
	}
	prev := v.heads[e.Chain]
	if prev == nil {
		prev = &ChainHead{Chain: e.Chain, Hash: GenesisHash}
	}
	if e.Seq != prev.Seq+1 {
		return fail("expected seq %d (an entry is missing)", prev.Seq+1)
	}
	if e.PrevHash != prev.Hash {
		return fail("prev_hash does not match the previous entry's hash")
	}
	want, err := ChainHash(e.PrevHash, e.Chain, e.Seq, e.EventID, e.Type, e.OccurredAt, e.Event)
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
	v.heads[e.Chain] = &ChainHead{Chain: e.Chain, Seq: e.Seq, Hash: e.Hash}
	v.entries++
	return nil
}

// result is what has been verified so far.
func (v *auditVerifier) result() VerifyResult {
	heads := make([]ChainHead, 0, len(v.heads))
	for _, h := range v.heads {
		heads = append(heads, *h)
	}
	slices.SortFunc(heads, func(a, b ChainHead) int { return cmp.Compare(a.Chain, b.Chain) })
	return VerifyResult{Entries: v.entries, Chains: heads, Head: CombinedHead(heads)}
}

// VerifyEntries verifies an audit log held in memory: each chain's entries
// in seq order (as walked, ordered by chain and seq).
func VerifyEntries(entries []AuditEntry) (VerifyResult, error) {
	v := newAuditVerifier()
	for _, e := range entries {
		if err := v.check(e); err != nil {
			return v.result(), err
		}
	}
	return v.result(), nil
}
