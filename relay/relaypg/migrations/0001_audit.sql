-- Shipped first as consent/pgstore/migrations/0002_relay_audit.sql; a
-- database that ran it has this table and adopts it as this version
-- (relaypg.Migrate, relaydriver.Adoptable).
--
-- Relay audit log: one row per relay event, append-only and hash-chained.
--
-- The log is AuditChains (16) independent chains (relay/audit.go): a call's
-- events all go to chain hash(call_sid) mod 16, seq counts 1, 2, ... within
-- the chain, and each chain is appended under its own advisory lock, so
-- commits in different chains do not wait for each other's WAL flush. Each
-- row stores its chain, so verification walks the chains present whatever
-- the code's count; the CHECK records that count (raising it takes a
-- migration widening the CHECK).
--
-- hash = SHA-256(prev_hash || chain, seq, event_id, type, occurred_at,
-- event), see relay/audit.go for the exact bytes. event is text, not jsonb:
-- jsonb re-orders keys and would break the hash. Every column is covered by
-- the hash, so relay audit verify detects any edit; the triggers below refuse
-- the edit in the first place (only a superuser dropping them gets past).
CREATE TABLE relay_audit (
    chain       integer NOT NULL CHECK (chain >= 0 AND chain < 16),
    seq         bigint  NOT NULL CHECK (seq >= 1),
    event_id    text    NOT NULL UNIQUE,
    type        text    NOT NULL,
    occurred_at text    NOT NULL,
    event       text    NOT NULL,
    prev_hash   text    NOT NULL,
    hash        text    NOT NULL,
    -- Also the index the append reads its chain's head from (ORDER BY seq
    -- DESC LIMIT 1) and verify walks (ORDER BY chain, seq).
    PRIMARY KEY (chain, seq)
);

CREATE FUNCTION relay_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'relay_audit is append-only: % refused', TG_OP;
END;
$$;

CREATE TRIGGER relay_audit_no_update_delete
    BEFORE UPDATE OR DELETE ON relay_audit
    FOR EACH ROW EXECUTE FUNCTION relay_audit_append_only();

CREATE TRIGGER relay_audit_no_truncate
    BEFORE TRUNCATE ON relay_audit
    FOR EACH STATEMENT EXECUTE FUNCTION relay_audit_append_only();
