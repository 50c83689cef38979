-- Relay audit log: one row per relay event, append-only and hash-chained.
--
-- hash = SHA-256(prev_hash || seq, event_id, type, occurred_at, event), see
-- relay/audit.go for the exact bytes. event is the relay event JSON exactly
-- as hashed (PII fields sealed as JWE), kept as TEXT so it is never
-- re-encoded. Every column is covered by the hash, so relay audit verify
-- detects any edit; the triggers below refuse the edit in the first place.
CREATE TABLE relay_audit (
    seq         INTEGER NOT NULL PRIMARY KEY,
    event_id    TEXT    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    occurred_at TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
) STRICT;

CREATE TRIGGER relay_audit_no_update BEFORE UPDATE ON relay_audit
BEGIN
    SELECT RAISE(ABORT, 'relay_audit is append-only: UPDATE refused');
END;

-- SQLite has no TRUNCATE; a DELETE without WHERE still fires this trigger
-- (the truncate optimization is off for tables with triggers).
CREATE TRIGGER relay_audit_no_delete BEFORE DELETE ON relay_audit
BEGIN
    SELECT RAISE(ABORT, 'relay_audit is append-only: DELETE refused');
END;
