-- Sign-ins under way with an OpenID provider, from `GET /auth/login` to `GET /auth/callback`
-- (PostgreSQL). Keep in step with ../sqlite/0005_sign_in_states.sql.
--
-- A row is taken (deleted) by the first callback that names its state, so a state works once;
-- rows are short-lived and pruned with expired sessions. The state itself and the browser's
-- binding cookie are stored as SHA-256 hashes; the PKCE verifier and the nonce never leave the
-- control plane (the provider sees only the challenge and, in the ID token, the nonce).
CREATE TABLE sign_in_states (
    state_hash    TEXT PRIMARY KEY,
    browser_hash  TEXT NOT NULL,
    provider      TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    next          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX sign_in_states_by_expiry ON sign_in_states(expires_at);
