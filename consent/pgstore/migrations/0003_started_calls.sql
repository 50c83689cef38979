-- Calls that reached /voice/incoming, so that a call whose status callback
-- was lost (PostgreSQL or Redis down when Twilio sent it; Twilio does not
-- retry) can still be found and closed as no_response by the sweep
-- (ivr.Server.SweepEnded). Rows stay as the call's history: a call is
-- "unsettled" while it has no consent record.
CREATE TABLE started_calls (
    call_sid        text        NOT NULL PRIMARY KEY,
    script_id       text        NOT NULL,
    script_version  text        NOT NULL,
    script_language text        NOT NULL,
    script_sha256   text        NOT NULL,
    from_sealed     text        NOT NULL DEFAULT '',
    to_sealed       text        NOT NULL DEFAULT '',
    started_at      timestamptz NOT NULL
);
CREATE INDEX started_calls_started_at ON started_calls (started_at);
