-- Identity verifiers and API tokens (SQLite). Keep in step with ../postgres/0002_identity_api_tokens.sql.

-- Who a user is at each identity verifier: `verifier` is `oidc:NAME` or `app-session`,
-- `subject` the verifier's stable id for them (e.g. the ID token's `sub`). Users seen for the
-- first time through a verifier are created with a row here (just-in-time).
CREATE TABLE user_identities (
    verifier    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    email       TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (verifier, subject)
);
CREATE INDEX user_identities_by_user ON user_identities(user_id);

-- Long-lived API tokens `pg_<id>_<secret>` for CLIs and automation. Only a SHA-256 of the
-- whole token is stored; `revoked_at` set means refused from the next use on.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    token_hash    TEXT NOT NULL,
    prefix        TEXT,
    created_via   TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT
);
CREATE INDEX api_tokens_by_user ON api_tokens(user_id, created_at);
