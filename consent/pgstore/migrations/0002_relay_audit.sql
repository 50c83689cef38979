-- Relay audit log: one row per relay event, append-only and hash-chained.
--
-- hash = SHA-256(prev_hash || seq, event_id, type, occurred_at, event), see
-- relay/audit.go for the exact bytes. event is text, not jsonb: jsonb
-- re-orders keys and would break the hash. Every column is covered by the
-- hash, so relay audit verify detects any edit; the triggers below refuse
-- the edit in the first place (only a superuser dropping them gets past).
CREATE TABLE relay_audit (
    seq         bigint NOT NULL PRIMARY KEY,
    event_id    text   NOT NULL UNIQUE,
    type        text   NOT NULL,
    occurred_at text   NOT NULL,
    event       text   NOT NULL,
    prev_hash   text   NOT NULL,
    hash        text   NOT NULL
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
