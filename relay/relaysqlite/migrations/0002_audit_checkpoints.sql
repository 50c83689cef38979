-- Shipped first as consent/sqlitestore/migrations/0004_relay_audit_checkpoints.sql;
-- a database that ran it has this table and adopts it as this version
-- (relaysqlite.Migrate, relaydriver.Adoptable).
--
-- Signed checkpoints of the audit log (relay/checkpoint.go): every so often
-- (100 new entries, or a minute with anything new) the head of each chain of
-- relay_audit is signed with the audit signing key (Ed25519), and the
-- signature kept here. Whoever edits the file can rewrite history and
-- recompute every hash, but cannot sign the new heads without the key, which
-- is not in the database in the clear (AUDIT_SIGNING_KEY, or the secrets row
-- sealed under ENCRYPTION_KEY). `consentline audit verify` checks every
-- signature and that each checkpoint's (chain, seq, hash) is still the entry
-- the log holds.
--
-- The primary key makes a second checkpoint of the same head a no-op
-- (INSERT ... ON CONFLICT DO NOTHING). signed_at is RFC 3339 UTC with
-- milliseconds; the signature covers its Unix milliseconds (see
-- relay.CheckpointMessage for the exact bytes). public_key and signature are
-- standard base64; key_id is the first 16 hex characters of SHA-256(public
-- key). No foreign key to relay_audit: a checkpoint whose entry is gone is
-- exactly what verify must be able to see.
CREATE TABLE relay_audit_checkpoints (
    chain      INTEGER NOT NULL CHECK (chain >= 0 AND chain < 16),
    seq        INTEGER NOT NULL CHECK (seq >= 1),
    hash       TEXT    NOT NULL,
    signed_at  TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    public_key TEXT    NOT NULL,
    signature  TEXT    NOT NULL,
    PRIMARY KEY (chain, seq)
) STRICT;

CREATE TRIGGER relay_audit_checkpoints_no_update BEFORE UPDATE ON relay_audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'relay_audit_checkpoints is append-only: UPDATE refused');
END;

CREATE TRIGGER relay_audit_checkpoints_no_delete BEFORE DELETE ON relay_audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'relay_audit_checkpoints is append-only: DELETE refused');
END;
