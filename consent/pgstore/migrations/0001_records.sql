-- Consent records: exactly one per (call_sid, script_id).
--
-- The *_sealed columns hold JWE compact strings, never plaintext; '' means
-- absent.
CREATE TABLE consent_records (
    id                  text             NOT NULL PRIMARY KEY,
    call_sid            text             NOT NULL,
    script_id           text             NOT NULL,
    script_version      text             NOT NULL,
    script_language     text             NOT NULL,
    script_sha256       text             NOT NULL,
    decision            text             NOT NULL CHECK (decision IN ('granted', 'declined', 'no_response')),
    source              text             NOT NULL,
    confidence          double precision CHECK (confidence IS NULL OR (confidence >= 0 AND confidence <= 1)),
    barge_in            boolean          NOT NULL,
    disclosure_heard_ms bigint           NOT NULL CHECK (disclosure_heard_ms >= 0),
    patient_ref         text             NOT NULL,
    from_sealed         text             NOT NULL DEFAULT '',
    to_sealed           text             NOT NULL DEFAULT '',
    transcript_sealed   text             NOT NULL DEFAULT '',
    decided_at          timestamptz      NOT NULL,
    created_at          timestamptz      NOT NULL DEFAULT now(),
    -- The last guard of exactly-once: whatever the locks upstream did, a
    -- second decision for the same call and script cannot be stored.
    CONSTRAINT consent_records_call_script UNIQUE (call_sid, script_id)
);

-- Instance-shared secrets (e.g. the patient_ref pseudonym key), sealed.
CREATE TABLE secrets (
    name       text        NOT NULL PRIMARY KEY,
    value      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
