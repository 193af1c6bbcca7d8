-- OAuth credentials of services (SQLite). Keep in step with ../postgres/0011_service_oauth.sql.

-- A service whose credential is an OAuth 2.0 access token the control plane obtains and renews
-- (`service_oauth.rs`): `oauth_config` is the JSON of its token endpoint, grant, client and
-- secrets (client secret or private key), sealed whole under the key-encryption key
-- `oauth_kek_id` names (plaintext when NULL, dev mode only). The tokens themselves are held in
-- memory only. The static `credential_*` columns, when set beside it, are the fallback used
-- while no valid token can be had.
ALTER TABLE services ADD COLUMN oauth_kek_id TEXT;
ALTER TABLE services ADD COLUMN oauth_config TEXT;
