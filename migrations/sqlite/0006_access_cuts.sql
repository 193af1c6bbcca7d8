-- Capabilities cut off before their expiry by a sign-out or a loss of access (SQLite). Keep in
-- step with ../postgres/0005_access_cuts.sql.

-- One row per cut, pushed to Envoy in the filter's `cutoffs` until `expires_at`, when no
-- capability it can refuse is valid any more. Either a session cut (`sid`: every capability
-- minted for that browser session) or a user cut (`user_id`, optionally one pod or one port of
-- it: capabilities issued at or before `cut_at`). Not foreign keys: a cut outlives the user or
-- pod it names for as long as their capabilities could.
CREATE TABLE access_cuts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sid         TEXT,
    user_id     TEXT,
    pod_slug    TEXT,
    port        BIGINT,
    cut_at      BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    CHECK ((sid IS NULL) <> (user_id IS NULL)),
    CHECK (port IS NULL OR pod_slug IS NOT NULL)
);
CREATE INDEX access_cuts_by_expiry ON access_cuts(expires_at);
CREATE INDEX access_cuts_by_sid ON access_cuts(sid) WHERE sid IS NOT NULL;

-- Who holds unexpired capabilities on a pod (the cuts re-check their access after a change).
CREATE INDEX token_audit_by_pod ON token_audit(pod_slug, expires_at);
