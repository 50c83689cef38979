-- Consent records: exactly one per (call_sid, script_id).
--
-- STRICT makes SQLite reject values of the wrong type instead of storing them
-- as whatever they happen to be. Times are TEXT in fixed-width RFC 3339 UTC
-- with microseconds (2006-01-02T15:04:05.000000Z), which sorts as time does.
-- The *_sealed columns hold JWE compact strings, never plaintext; '' means
-- absent.
CREATE TABLE consent_records (
    id                  TEXT    NOT NULL PRIMARY KEY,
    call_sid            TEXT    NOT NULL,
    script_id           TEXT    NOT NULL,
    script_version      TEXT    NOT NULL,
    script_language     TEXT    NOT NULL,
    script_sha256       TEXT    NOT NULL,
    decision            TEXT    NOT NULL CHECK (decision IN ('granted', 'declined', 'no_response')),
    source              TEXT    NOT NULL,
    confidence          REAL    CHECK (confidence IS NULL OR (confidence >= 0 AND confidence <= 1)),
    barge_in            INTEGER NOT NULL CHECK (barge_in IN (0, 1)),
    disclosure_heard_ms INTEGER NOT NULL CHECK (disclosure_heard_ms >= 0),
    patient_ref         TEXT    NOT NULL,
    from_sealed         TEXT    NOT NULL DEFAULT '',
    to_sealed           TEXT    NOT NULL DEFAULT '',
    transcript_sealed   TEXT    NOT NULL DEFAULT '',
    decided_at          TEXT    NOT NULL,
    created_at          TEXT    NOT NULL,
    -- The last guard of exactly-once: whatever the locks upstream did, a
    -- second decision for the same call and script cannot be stored.
    CONSTRAINT consent_records_call_script UNIQUE (call_sid, script_id)
) STRICT;

-- Instance-shared secrets (e.g. the patient_ref pseudonym key), sealed.
CREATE TABLE secrets (
    name       TEXT NOT NULL PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
