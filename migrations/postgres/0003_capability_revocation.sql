-- Capabilities cut off with the API token that minted them (PostgreSQL). Keep in step with
-- ../sqlite/0003_capability_revocation.sql.

-- The API token a capability was minted with (`POST /v1/capabilities` with `Bearer pg_…`); NULL
-- for every other mint. Not a foreign key: the audit trail outlives the tokens it names. While a
-- revoked token's capabilities are unexpired, their jtis are pushed to Envoy as `revoked_jti`.
ALTER TABLE token_audit ADD COLUMN api_token_id TEXT;

-- Partial indexes, so the browser flow's mints (most rows) and live tokens cost nothing here:
-- each filter configuration joins the recently revoked tokens to their unexpired capabilities.
CREATE INDEX token_audit_by_api_token ON token_audit(api_token_id, expires_at)
    WHERE api_token_id IS NOT NULL;
CREATE INDEX api_tokens_by_revocation ON api_tokens(revoked_at)
    WHERE revoked_at IS NOT NULL;
