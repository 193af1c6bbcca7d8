-- When the start hook was last called for a pod (PostgreSQL). Keep in step with
-- ../sqlite/0012_pod_wakes.sql.

-- A control plane claims a pod's start here before it calls the operator's start hook, so the
-- hook is called at most once per pod per interval however many control planes share the
-- database. Rows older than the interval are deleted by the next claim.
CREATE TABLE pod_wakes (
    pod        TEXT PRIMARY KEY,
    called_at  BIGINT NOT NULL
);
