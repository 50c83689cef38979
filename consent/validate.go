package consent

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
)

// TimePrecision is what every store keeps of DecidedAt: PostgreSQL's
// timestamptz holds microseconds, so SQLite keeps no more, and a record reads
// back the same from either.
const TimePrecision = time.Microsecond

// Normalized checks a record before it is stored and returns it as stored:
// an id assigned when it has none, DecidedAt in UTC at TimePrecision,
// Confidence copied so the caller's pointer is not shared. Every Store uses
// it, so all accept and refuse exactly the same records.
func (rec Record) Normalized() (Record, error) {
	switch {
	case rec.CallSID == "":
		return rec, errors.New("record has no call SID")
	case rec.Script.ID == "":
		return rec, errors.New("record has no script id")
	case rec.DecidedAt.IsZero():
		return rec, errors.New("record has no decision time")
	case rec.DisclosureHeardMS < 0:
		return rec, fmt.Errorf("disclosure heard ms %d is negative", rec.DisclosureHeardMS)
	}
	switch rec.Timing {
	case TimingMeasured, TimingEstimated:
	default:
		// Never guessed: a timing nobody labelled is not evidence.
		return rec, fmt.Errorf("unknown timing %q: want measured or estimated", rec.Timing)
	}
	switch rec.Decision {
	case Granted, Declined, NoResponse:
	default:
		return rec, fmt.Errorf("unknown decision %q", rec.Decision)
	}
	if rec.Confidence != nil {
		c := *rec.Confidence
		if !(c >= 0 && c <= 1) { // also false for NaN
			return rec, fmt.Errorf("confidence %v is outside [0,1]", c)
		}
		rec.Confidence = &c
	}
	for _, f := range []struct {
		name string
		v    Sealed
	}{{"from", rec.From}, {"to", rec.To}, {"transcript", rec.Transcript}} {
		if err := f.v.Check(f.name); err != nil {
			return rec, err
		}
	}
	if rec.ID == "" {
		rec.ID = uuid.NewString()
	}
	rec.DecidedAt = rec.DecidedAt.UTC().Truncate(TimePrecision)
	return rec, nil
}

// Check refuses a value that is not shaped like a JWE compact serialization
// (five base64url parts). It cannot prove a value is encrypted, but it does
// stop the likely mistakes, a phone number or a transcript in plaintext,
// from ever reaching the disk. The empty value (absent) passes.
func (s Sealed) Check(field string) error {
	if s == "" {
		return nil
	}
	parts := strings.Split(string(s), ".")
	ok := len(parts) == 5 && parts[0] != ""
	for _, p := range parts {
		ok = ok && strings.Trim(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == ""
	}
	if !ok {
		// The value itself stays out of the error: it may be PHI.
		return fmt.Errorf("%s is not sealed: want a JWE compact string (got %d characters that are not one)", field, len(s))
	}
	return nil
}
