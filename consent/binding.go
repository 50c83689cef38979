package consent

import (
	"context"
	"fmt"
	"strings"
)

// Binding names the one place a sealed value belongs: its table (or, for
// relay events, its purpose), its row and its field. internal/pii writes it
// into the value's JWE protected header, which AES-GCM authenticates, and
// refuses to open the value for any other place. So someone with write
// access to the database but not the key cannot swap a record's from and to,
// or move a transcript into another call's record, without the value failing
// to open — the ciphertext alone would not notice.
//
// Which members are set depends on the table: a consent record is keyed by
// (CallSID, ScriptID), a started call by CallSID, a secret by its name (ID),
// a relay event by its id (ID) and call. Table and Field are always set.
type Binding struct {
	// Table is the table the value is stored in (TableConsentRecords, …) or,
	// for relay events, "relay_event". JWE header "ctx".
	Table string
	// ID is the row's own id where the row is not keyed by call: a secret's
	// name, a relay event's id. JWE header "rid".
	ID string
	// CallSID is the Twilio call the row belongs to. JWE header "sid".
	CallSID string
	// ScriptID is the disclosure script of a consent record (a call has one
	// record per script). JWE header "scr".
	ScriptID string
	// Field is the column or event member: FieldFrom, FieldTo,
	// FieldTranscript, or FieldSecretValue. JWE header "fld".
	Field string
}

// The tables that hold sealed values, and their sealed fields.
const (
	TableConsentRecords = "consent_records"
	TableStartedCalls   = "started_calls"
	TableSecrets        = "secrets"

	FieldFrom        = "from"
	FieldTo          = "to"
	FieldTranscript  = "transcript"
	FieldSecretValue = "value"
)

// RecordBinding is where a consent record's from, to or transcript belongs.
// A record is bound by its natural key (call, script) rather than its id:
// that is what the unique constraint guarantees, and what a relay event
// carries in clear.
func RecordBinding(callSID, scriptID, field string) Binding {
	return Binding{Table: TableConsentRecords, CallSID: callSID, ScriptID: scriptID, Field: field}
}

// StartedCallBinding is where a started call's from or to belongs. The script
// is left out: it changes when the caller chooses another language, the
// numbers do not.
func StartedCallBinding(callSID, field string) Binding {
	return Binding{Table: TableStartedCalls, CallSID: callSID, Field: field}
}

// SecretBinding is where the secret stored under name belongs.
func SecretBinding(name string) Binding {
	return Binding{Table: TableSecrets, ID: name, Field: FieldSecretValue}
}

// IsZero reports whether b names no place at all (a value sealed before
// bindings existed).
func (b Binding) IsZero() bool { return b == Binding{} }

// String describes the place for errors and the CLI, e.g.
// `consent_records call CA… script hipaa field "from"`. It holds ids only,
// never a value.
func (b Binding) String() string {
	if b.IsZero() {
		return "no place (sealed before values were bound)"
	}
	var parts []string
	add := func(name, v string) {
		if v != "" {
			parts = append(parts, name+" "+v)
		}
	}
	parts = append(parts, orDash(b.Table))
	add("id", b.ID)
	add("call", b.CallSID)
	add("script", b.ScriptID)
	parts = append(parts, fmt.Sprintf("field %q", b.Field))
	return strings.Join(parts, " ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// SealedRow is one stored row's sealed values, as key rotation reads them.
type SealedRow struct {
	// Key is the row's primary key in its table (a record's id, a started
	// call's SID, a secret's name): the cursor of SealedRows and the row
	// Reseal updates.
	Key string
	// Place is the binding of the row's values with Field left empty; the
	// binding of one value is Place with Field set (At).
	Place Binding
	// Values maps each sealed field of the row (FieldFrom, …) to its stored
	// value, "" when absent.
	Values map[string]Sealed
}

// At is the binding of the row's value in field.
func (r SealedRow) At(field string) Binding {
	b := r.Place
	b.Field = field
	return b
}

// SealedUpdate replaces one stored value, but only while it is still Old.
type SealedUpdate struct {
	Key   string
	Field string
	Old   Sealed
	New   Sealed
}

// SealedTables lists the tables whose sealed values key rotation rewrites,
// in the order it rewrites them. relay_audit is not among them: it is
// append-only and hash-chained, so its events keep the keys they were
// sealed under.
var SealedTables = []string{TableConsentRecords, TableStartedCalls, TableSecrets, TableStreamMeasurements}

// Resealer is what key rotation needs from a store; both stores implement
// it (checked by consent/storetest).
type Resealer interface {
	// SealedRows returns up to limit rows of table (one of SealedTables)
	// whose key is greater than after, in key order, so a walk can resume
	// from the last key it saw.
	SealedRows(ctx context.Context, table, after string, limit int) ([]SealedRow, error)
	// Reseal applies updates to table in one transaction. Each value is
	// replaced only where the stored value still equals Old (compare and
	// set), so a concurrent writer's newer value wins over rotation's. It
	// returns how many values were replaced. New must be sealed and not
	// empty.
	Reseal(ctx context.Context, table string, updates []SealedUpdate) (replaced int, err error)
}

// CheckReseal validates updates for table before a store writes them: known
// fields only (a store maps them to columns, never interpolating anything
// else) and sealed, non-empty new values.
func CheckReseal(table string, updates []SealedUpdate) error {
	fields, ok := sealedFields[table]
	if !ok {
		return fmt.Errorf("reseal: unknown table %q", table)
	}
	for _, u := range updates {
		if !fields[u.Field] {
			return fmt.Errorf("reseal %s: unknown field %q", table, u.Field)
		}
		if u.Key == "" || u.New == "" {
			return fmt.Errorf("reseal %s: an update without key or new value", table)
		}
		if err := u.New.Check(table + " " + u.Field); err != nil {
			return fmt.Errorf("reseal: %w", err)
		}
	}
	return nil
}

var sealedFields = map[string]map[string]bool{}

func init() {
	for table, l := range sealedLayouts {
		sealedFields[table] = map[string]bool{}
		for _, f := range l.Fields {
			sealedFields[table][f] = true
		}
	}
}

// SealedLayout is how both stores' schemas hold one table's sealed values:
// the key column, the columns naming the row's place, and each sealed
// field's column. Stores build rotation's SQL from these constant names
// only.
type SealedLayout struct {
	Key     string
	Place   []string
	Fields  []string
	Columns map[string]string
}

var sealedLayouts = map[string]SealedLayout{
	TableConsentRecords: {Key: "id", Place: []string{"call_sid", "script_id"},
		Fields:  []string{FieldFrom, FieldTo, FieldTranscript},
		Columns: map[string]string{FieldFrom: "from_sealed", FieldTo: "to_sealed", FieldTranscript: "transcript_sealed"}},
	TableStartedCalls: {Key: "call_sid",
		Fields:  []string{FieldFrom, FieldTo},
		Columns: map[string]string{FieldFrom: "from_sealed", FieldTo: "to_sealed"}},
	TableStreamMeasurements: {Key: "id", Place: []string{"call_sid", "script_id"},
		Fields:  []string{FieldAnswerAudio},
		Columns: map[string]string{FieldAnswerAudio: "answer_audio_sealed"}},
	TableSecrets: {Key: "name",
		Fields:  []string{FieldSecretValue},
		Columns: map[string]string{FieldSecretValue: "value"}},
}

// LayoutOf returns table's SealedLayout; ok is false for a table that holds
// no sealed values.
func LayoutOf(table string) (l SealedLayout, ok bool) {
	l, ok = sealedLayouts[table]
	return l, ok
}

// SelectColumns lists the columns a store selects for SealedRows, in the
// order Row takes them: key, place, sealed fields.
func (l SealedLayout) SelectColumns() []string {
	cols := append([]string{l.Key}, l.Place...)
	for _, f := range l.Fields {
		cols = append(cols, l.Columns[f])
	}
	return cols
}

// Row builds the SealedRow of table from the values of SelectColumns.
func (l SealedLayout) Row(table string, vals []string) SealedRow {
	r := SealedRow{Key: vals[0], Values: make(map[string]Sealed, len(l.Fields))}
	switch table {
	case TableConsentRecords:
		r.Place = RecordBinding(vals[1], vals[2], "")
	case TableStartedCalls:
		r.Place = StartedCallBinding(vals[0], "")
	case TableStreamMeasurements:
		r.Place = StreamBinding(vals[1], vals[2])
		r.Place.Field = ""
	case TableSecrets:
		r.Place = SecretBinding(vals[0])
		r.Place.Field = ""
	}
	for i, f := range l.Fields {
		r.Values[f] = Sealed(vals[1+len(l.Place)+i])
	}
	return r
}
