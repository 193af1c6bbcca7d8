-- Control planes serving this database (PostgreSQL). Keep in step with
-- ../sqlite/0010_replicas.sql.

-- Each running control plane writes its row every few seconds; the rows seen recently are the
-- live control planes, and each enforces its share of every rate limit. A row not seen for a
-- while is a control plane that stopped without saying so, and is deleted.
CREATE TABLE replicas (
    id       TEXT PRIMARY KEY,
    seen_at  BIGINT NOT NULL
);
