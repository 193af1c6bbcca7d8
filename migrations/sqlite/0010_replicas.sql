-- Control planes serving this database (SQLite). Keep in step with
-- ../postgres/0010_replicas.sql.

-- One process serves an SQLite database, so nothing writes here; the table keeps the schemas
-- the same. On PostgreSQL each running control plane writes its row every few seconds, and each
-- enforces its share of every rate limit.
CREATE TABLE replicas (
    id       TEXT PRIMARY KEY,
    seen_at  BIGINT NOT NULL
);
