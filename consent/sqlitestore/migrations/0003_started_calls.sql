-- Calls that reached /voice/incoming, so that a call whose status callback
-- was lost (the database down when Twilio sent it; Twilio does not retry)
-- can still be found and closed as no_response by the sweep
-- (ivr.Server.SweepEnded). A call is "unsettled" while it has no consent
-- record. Times as in consent_records.
CREATE TABLE started_calls (
    call_sid        TEXT NOT NULL PRIMARY KEY,
    script_id       TEXT NOT NULL,
    script_version  TEXT NOT NULL,
    script_language TEXT NOT NULL,
    script_sha256   TEXT NOT NULL,
    from_sealed     TEXT NOT NULL DEFAULT '',
    to_sealed       TEXT NOT NULL DEFAULT '',
    started_at      TEXT NOT NULL
) STRICT;
CREATE INDEX started_calls_started_at ON started_calls (started_at);
