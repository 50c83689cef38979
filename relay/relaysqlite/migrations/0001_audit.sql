-- Shipped first as consent/sqlitestore/migrations/0002_relay_audit.sql; a
-- database that ran it has this table and adopts it as this version
-- (relaysqlite.Migrate, relaydriver.Adoptable).
--
-- Relay audit log: one row per relay event, append-only and hash-chained.
--
-- The log is AuditChains (16) independent chains (relay/audit.go): a call's
-- events all go to chain hash(call_sid) mod 16 and seq counts 1, 2, ...
-- within the chain. SQLite has one writer, so the chains do not make it any
-- faster; they keep the schema, the hashes and verification the same as on
-- PostgreSQL, where they let commits overlap. Each row stores its chain, so
-- verification walks the chains present whatever the code's count; the
-- CHECK records that count.
--
-- hash = SHA-256(prev_hash || chain, seq, event_id, type, occurred_at,
-- event), see relay/audit.go for the exact bytes. event is the relay event
-- JSON exactly as hashed (PII fields sealed as JWE), kept as TEXT so it is
-- never re-encoded. Every column is covered by the hash, so relay audit
-- verify detects any edit; the triggers below refuse the edit in the first
-- place.
CREATE TABLE relay_audit (
    chain       INTEGER NOT NULL CHECK (chain >= 0 AND chain < 16),
    seq         INTEGER NOT NULL CHECK (seq >= 1),
    event_id    TEXT    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    occurred_at TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    PRIMARY KEY (chain, seq)
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
