-- Signed checkpoints of the audit log (relay/checkpoint.go): every so often
-- (100 new entries, or a minute with anything new) the head of each chain of
-- relay_audit is signed with the audit signing key (Ed25519), and the
-- signature kept here. Whoever drops relay_audit's triggers can rewrite
-- history and recompute every hash, but cannot sign the new heads without the
-- key, which is not in the database in the clear (AUDIT_SIGNING_KEY, or the
-- secrets row sealed under ENCRYPTION_KEY). `consentline audit verify`
-- checks every signature and that each checkpoint's (chain, seq, hash) is
-- still the entry the log holds.
--
-- The primary key makes a second checkpoint of the same head a no-op
-- (INSERT ... ON CONFLICT DO NOTHING), so any number of instances may run the
-- checkpoint loop at once. signed_at is RFC 3339 UTC with milliseconds; the
-- signature covers its Unix milliseconds (see relay.CheckpointMessage for the
-- exact bytes). public_key and signature are standard base64; key_id is the
-- first 16 hex characters of SHA-256(public key).
--
-- No foreign key to relay_audit: a checkpoint whose entry is gone is exactly
-- what verify must be able to see.
CREATE TABLE relay_audit_checkpoints (
    chain      integer NOT NULL CHECK (chain >= 0 AND chain < 16),
    seq        bigint  NOT NULL CHECK (seq >= 1),
    hash       text    NOT NULL,
    signed_at  text    NOT NULL,
    key_id     text    NOT NULL,
    public_key text    NOT NULL,
    signature  text    NOT NULL,
    PRIMARY KEY (chain, seq)
);

-- Append-only, like relay_audit.
CREATE FUNCTION relay_audit_checkpoints_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'relay_audit_checkpoints is append-only: % refused', TG_OP;
END;
$$;

CREATE TRIGGER relay_audit_checkpoints_no_update_delete
    BEFORE UPDATE OR DELETE ON relay_audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION relay_audit_checkpoints_append_only();

CREATE TRIGGER relay_audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON relay_audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION relay_audit_checkpoints_append_only();
