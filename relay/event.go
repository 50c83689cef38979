// Package relay turns consent decisions and call completions into the relay
// event of CONTRACT.md §3, appends each to a hash-chained audit log and
// delivers it, signed Standard Webhooks style, to the clinic's Zapier Catch
// Hook with retries spanning more than a day.
//
// Nothing is lost between the decision and the delivery: the audit entry and
// the River delivery job are written in the same database transaction as the
// consent record (a transactional outbox), so either all three exist or none.
// The consent store calls the relay's Outbox writer (a consent.Outbox) in
// that transaction.
//
// The relay works on either database through a driver (relay/relaydriver):
// relay/relaypg on PostgreSQL, relay/relaysqlite on the embedded SQLite,
// each with its migrations:
//
//	ob, _ := relay.NewOutbox(relaypg.New(nil), keys, deliver) // pgstore.Options{Outbox: ob}
//	_ = relaypg.Migrate(ctx, pool)
//	rel, _ := relay.New(relaypg.New(pool), cfg)
//
// PHI never appears in clear in an event, a log line or an error: from, to and
// transcript travel as JWE values made by internal/pii, and errors carry at
// most an HTTP status line.
package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
)

// Event types (CONTRACT.md §3).
const (
	TypeConsentGranted    = "consent.granted"
	TypeConsentDeclined   = "consent.declined"
	TypeConsentNoResponse = "consent.no_response"
	TypeConsentRevoked    = "consent.revoked"
	TypeCallCompleted     = "call.completed"
)

// TimeFormat is occurred_at's layout: RFC 3339 in UTC with milliseconds,
// fixed width so that events sort as strings too.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// Event is the relay event, field for field as CONTRACT.md §3 names them.
// Optional members are pointers or omitempty so that an absent value is
// absent from the JSON rather than a misleading zero.
type Event struct {
	ID         string         `json:"id"`
	Type       string         `json:"type"`
	OccurredAt string         `json:"occurred_at"`
	CallSID    string         `json:"call_sid"`
	Source     consent.Source `json:"source"`
	// Confidence is absent for DTMF and for decisions not taken from an
	// answer.
	Confidence *float64 `json:"confidence,omitempty"`
	// Disclosure, DisclosureHeardMS, BargeIn, MustHearComplete and Timing
	// are present on consent events and absent on call.completed, which is
	// about no disclosure. Timing says whether the three timings before it
	// were measured on the media stream or estimated.
	Disclosure        *consent.ScriptRef `json:"disclosure,omitempty"`
	DisclosureHeardMS *int64             `json:"disclosure_heard_ms,omitempty"`
	BargeIn           *bool              `json:"barge_in,omitempty"`
	MustHearComplete  *bool              `json:"must_hear_complete,omitempty"`
	Timing            consent.Timing     `json:"timing,omitempty"`
	PatientRef        string             `json:"patient_ref,omitempty"`
	// From, To and Transcript are JWE compact strings (never plaintext);
	// absent when unknown or when RELAY_PII=omit.
	From       consent.Sealed `json:"from,omitempty"`
	To         consent.Sealed `json:"to,omitempty"`
	Transcript consent.Sealed `json:"transcript,omitempty"`
}

// PIIMode is the RELAY_PII setting.
type PIIMode string

const (
	// PIIEncrypted sends from, to and transcript as JWE values.
	PIIEncrypted PIIMode = "encrypted"
	// PIIOmit sends no PII fields at all.
	PIIOmit PIIMode = "omit"
)

// ParsePIIMode reads RELAY_PII; empty means the default, encrypted. It is
// the one check of the setting, used by the settings loader and by the
// relay's Config alike.
func ParsePIIMode(s string) (PIIMode, error) {
	switch PIIMode(strings.TrimSpace(s)) {
	case "", PIIEncrypted:
		return PIIEncrypted, nil
	case PIIOmit:
		return PIIOmit, nil
	}
	return "", errors.New("RELAY_PII must be encrypted (PII fields sent as JWE), omit (no PII fields at all), or empty for encrypted")
}

// TypeForDecision maps a consent decision to its event type.
func TypeForDecision(d consent.Decision) (string, error) {
	switch d {
	case consent.Granted:
		return TypeConsentGranted, nil
	case consent.Declined:
		return TypeConsentDeclined, nil
	case consent.NoResponse:
		return TypeConsentNoResponse, nil
	}
	return "", fmt.Errorf("relay: no event type for decision %q", d)
}

// NewConsentEvent builds the event for a stored consent record. Its id is
// the record's id, so it is stable however often it is built.
//
// A consent event is its record, so its values keep the record's binding
// (consent_records, call, script, field: all clear in the event as call_sid,
// disclosure.id and the member; see ValueBinding), and a value already under
// the active key and bound is passed on as it is. Re-sealing every value for
// the event would buy nothing the record's binding does not give — a record
// is exactly one event — and would cost an AES-GCM open and seal per value
// inside the transaction that records the decision (the outbox's Append), where a
// batch of 128 decisions holds SQLite's one writer. A value under a retired
// key, or sealed before bindings existed, is opened and re-sealed under the
// active key, bound, so a receiver only ever needs the current key. A value
// the keyring cannot open, or one bound to another place (moved in the
// database), is an error naming the kid and places, never a silent omission.
func NewConsentEvent(rec consent.Record, k *pii.Keyring) (Event, error) {
	typ, err := TypeForDecision(rec.Decision)
	if err != nil {
		return Event{}, err
	}
	if rec.ID == "" || rec.CallSID == "" {
		return Event{}, errors.New("relay: consent record without id or call sid")
	}
	script := rec.Script
	heard, bargeIn, mustHear := rec.DisclosureHeardMS, rec.BargeIn, rec.MustHearComplete
	ev := Event{
		ID:                rec.ID,
		Type:              typ,
		OccurredAt:        formatTime(rec.DecidedAt),
		CallSID:           rec.CallSID,
		Source:            rec.Source,
		Disclosure:        &script,
		DisclosureHeardMS: &heard,
		BargeIn:           &bargeIn,
		MustHearComplete:  &mustHear,
		Timing:            rec.Timing,
		PatientRef:        rec.PatientRef,
	}
	if rec.Confidence != nil { // copied: the event must not alias the record
		c := *rec.Confidence
		ev.Confidence = &c
	}
	for _, f := range []struct {
		dst  *consent.Sealed
		src  consent.Sealed
		name string
	}{{&ev.From, rec.From, consent.FieldFrom}, {&ev.To, rec.To, consent.FieldTo}, {&ev.Transcript, rec.Transcript, consent.FieldTranscript}} {
		if *f.dst, err = forEvent(k, ValueBinding(ev, f.name), f.src); err != nil {
			return Event{}, fmt.Errorf("relay: event %s field %s: %w", rec.ID, f.name, err)
		}
	}
	return ev, nil
}

// CallCompleted is what the call status callback knows about a finished
// call. From and To are the plaintext numbers from Twilio's parameters; they
// are sealed before they leave NewCallCompletedEvent.
type CallCompleted struct {
	CallSID string
	From    string
	To      string
	At      time.Time
}

// CallCompletedEventID is the id of a call's call.completed event. It is
// derived from the call SID so that Twilio re-sending the status callback
// maps to the same event, which the audit log then stores only once.
func CallCompletedEventID(callSID string) string { return "cc_" + callSID }

// NewCallCompletedEvent builds the call.completed event (source
// status_callback) for the status callback.
func NewCallCompletedEvent(c CallCompleted, k *pii.Keyring, p *pii.Pseudonymizer) (Event, error) {
	ev, err := callCompletedEvent(c.CallSID, c.At, p.Ref(c.From))
	if err != nil {
		return Event{}, err
	}
	if ev.From, err = k.SealFor(ValueBinding(ev, consent.FieldFrom), c.From); err != nil {
		return Event{}, err
	}
	if ev.To, err = k.SealFor(ValueBinding(ev, consent.FieldTo), c.To); err != nil {
		return Event{}, err
	}
	return ev, nil
}

// EndsCall reports whether rec closes its call: a no_response recorded
// from the call's status callback (or the sweep that stands in for a lost
// one). Its transaction then also carries the call's call.completed event
// (Outbox.Append), instead of a transaction of its own after it.
func EndsCall(rec consent.Record) bool {
	return rec.Decision == consent.NoResponse && rec.Source == consent.SourceStatusCallback
}

// NewCallEndedEvent builds the call.completed event of a call that rec
// closes (EndsCall): the event RecordCallCompleted would write for it, at
// the record's time, with its numbers re-sealed from the record's binding
// to the event's.
func NewCallEndedEvent(rec consent.Record, k *pii.Keyring) (Event, error) {
	ev, err := callCompletedEvent(rec.CallSID, rec.DecidedAt, rec.PatientRef)
	if err != nil {
		return Event{}, err
	}
	for _, f := range []struct {
		dst  *consent.Sealed
		src  consent.Sealed
		name string
	}{{&ev.From, rec.From, consent.FieldFrom}, {&ev.To, rec.To, consent.FieldTo}} {
		pt, err := k.OpenFor(consent.RecordBinding(rec.CallSID, rec.Script.ID, f.name), f.src)
		if err != nil {
			return Event{}, fmt.Errorf("relay: call.completed of %s, field %s: %w", rec.CallSID, f.name, err)
		}
		if *f.dst, err = k.SealFor(ValueBinding(ev, f.name), pt); err != nil {
			return Event{}, err
		}
	}
	return ev, nil
}

// callCompletedEvent is a call.completed event without its numbers.
func callCompletedEvent(callSID string, at time.Time, patientRef string) (Event, error) {
	if callSID == "" {
		return Event{}, errors.New("relay: call.completed without call sid")
	}
	return Event{
		ID:         CallCompletedEventID(callSID),
		Type:       TypeCallCompleted,
		OccurredAt: formatTime(at),
		CallSID:    callSID,
		Source:     consent.SourceStatusCallback,
		PatientRef: patientRef,
	}, nil
}

func formatTime(t time.Time) string { return t.UTC().Format(TimeFormat) }

// EventContext is the "ctx" of values sealed for an event that has no
// record (call.completed): they are bound to the event itself.
const EventContext = "relay_event"

// ValueBinding is where the value in an event's member field (from, to,
// transcript) must be bound, checkable from the event's clear fields alone:
// a consent event's values are its record's (consent_records, call_sid,
// disclosure.id, field), a call.completed event's are the event's own
// (relay_event, id, call_sid, field).
func ValueBinding(ev Event, field string) consent.Binding {
	if ev.Disclosure != nil && ev.Type != TypeCallCompleted {
		return consent.RecordBinding(ev.CallSID, ev.Disclosure.ID, field)
	}
	return consent.Binding{Table: EventContext, ID: ev.ID, CallSID: ev.CallSID, Field: field}
}

// forEvent returns a record's value for its event, bound to place: as it is
// when already under the active key and bound there (no PHI decrypted for
// nothing), else opened for place and re-sealed under the active key.
func forEvent(k *pii.Keyring, place consent.Binding, s consent.Sealed) (consent.Sealed, error) {
	if s == "" {
		return "", nil
	}
	if h, err := pii.ReadHeader(s); err == nil && h.KID == k.KID() && h.Binding == place {
		return s, nil
	}
	pt, err := k.OpenFor(place, s) // names the kid if it is unknown, the places if moved
	if err != nil {
		return "", err
	}
	return k.SealFor(place, pt)
}

// WithoutPII returns a copy of e with from, to and transcript removed.
func (e Event) WithoutPII() Event {
	e.From, e.To, e.Transcript = "", "", ""
	return e
}

// Body is the JSON body to send for e under mode.
func (e Event) Body(mode PIIMode) ([]byte, error) {
	if mode == PIIOmit {
		e = e.WithoutPII()
	}
	return json.Marshal(e)
}

// deliveryBody turns the audit log's stored event JSON into the body to POST.
// With encrypted PII the stored bytes are sent verbatim (what Zapier gets is
// byte for byte what the audit chain hashed); with RELAY_PII=omit they are
// re-encoded without the PII fields. The mode is applied at delivery time so
// that switching to omit also covers events still waiting for a retry.
func deliveryBody(stored []byte, mode PIIMode) ([]byte, error) {
	if mode != PIIOmit {
		return stored, nil
	}
	var e Event
	if err := json.Unmarshal(stored, &e); err != nil {
		return nil, errors.New("relay: stored event is not valid JSON")
	}
	return e.Body(PIIOmit)
}
