package pgstore

// This file is kept identical (but for the package name) in sqlitestore: both
// stores must accept and refuse exactly the same records.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/consentline/consentline/consent"
)

// timePrecision is what both stores keep of DecidedAt: PostgreSQL's
// timestamptz holds microseconds, so SQLite keeps no more, and a record reads
// back the same from either.
const timePrecision = time.Microsecond

// normalize checks rec and returns it as it will be stored: an id assigned
// when it has none, DecidedAt in UTC at timePrecision, Confidence copied so the
// caller's pointer is not shared with the stored record.
func normalize(rec consent.Record) (consent.Record, error) {
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
	switch rec.Decision {
	case consent.Granted, consent.Declined, consent.NoResponse:
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
		v    consent.Sealed
	}{{"from", rec.From}, {"to", rec.To}, {"transcript", rec.Transcript}} {
		if err := checkSealed(f.name, f.v); err != nil {
			return rec, err
		}
	}
	if rec.ID == "" {
		rec.ID = newID()
	}
	rec.DecidedAt = rec.DecidedAt.UTC().Truncate(timePrecision)
	return rec, nil
}

// checkSealed refuses a value that is not shaped like a JWE compact
// serialization (five base64url parts). It cannot prove a value is encrypted,
// but it does stop the likely mistakes, a phone number or a transcript in
// plaintext, from ever reaching the disk.
func checkSealed(field string, v consent.Sealed) error {
	if v == "" {
		return nil // absent
	}
	parts := strings.Split(string(v), ".")
	ok := len(parts) == 5 && parts[0] != ""
	for _, p := range parts {
		ok = ok && strings.Trim(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == ""
	}
	if !ok {
		// The value itself stays out of the error: it may be PHI.
		return fmt.Errorf("%s is not sealed: want a JWE compact string (got %d characters that are not one)", field, len(v))
	}
	return nil
}

// newID returns a random UUID (version 4) for a record that came without an
// id.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
