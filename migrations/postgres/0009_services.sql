-- Services (PostgreSQL). Keep in step with ../sqlite/0009_services.sql.

-- Published upstream APIs (services): each is reached at its own public host (the service
-- host template with `{name}`), forwarded to `upstream_url` with its credential set by Envoy.
-- Who may reach it follows the pod rules: the owner, the team, or everyone signed in or
-- everyone, by `sharing`.
--
-- The credential (a header name and a secret value) is stored sealed under the operator's
-- key-encryption key: `credential_kek_id` names that key and `credential_value` is its
-- ciphertext; without a key (dev mode only) `credential_kek_id` is NULL and the value is
-- plaintext. `credential_fingerprint` is what admins see of it.
CREATE TABLE services (
    name                    TEXT PRIMARY KEY,
    owner_id                TEXT NOT NULL REFERENCES users(id) ON DELETE RESTRICT,
    team_id                 TEXT REFERENCES teams(id) ON DELETE SET NULL,
    sharing                 TEXT NOT NULL CHECK (sharing IN ('owner', 'team', 'signed_in', 'public')),
    upstream_url            TEXT NOT NULL,
    ca_pem                  TEXT,
    credential_header       TEXT,
    credential_kek_id       TEXT,
    credential_value        TEXT,
    credential_fingerprint  TEXT,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL
);
CREATE INDEX services_by_owner ON services(owner_id);
CREATE INDEX services_by_team ON services(team_id);
