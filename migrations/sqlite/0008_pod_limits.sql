-- Per-pod limits at the edge (SQLite). Keep in step with ../postgres/0008_pod_limits.sql.

-- A pod's own limits, set through the admin API (`limits` on /v1/pods) and sent to every Envoy
-- in the filter's configuration, where they win over the global ones: a request rate (both
-- columns or neither) and the most streams open at once. A pod without a row has only the
-- global limits; the row goes with the pod.
CREATE TABLE pod_limits (
    pod_slug         TEXT PRIMARY KEY REFERENCES pods(slug) ON DELETE CASCADE,
    rate_per_second  BIGINT CHECK (rate_per_second BETWEEN 1 AND 4294967295),
    rate_burst       BIGINT CHECK (rate_burst BETWEEN 1 AND 4294967295),
    concurrent       BIGINT CHECK (concurrent BETWEEN 1 AND 4294967295),
    CHECK ((rate_per_second IS NULL) = (rate_burst IS NULL))
);
