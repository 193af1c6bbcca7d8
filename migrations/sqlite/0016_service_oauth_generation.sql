-- Where a service's OAuth tokens stand in its admins' refreshes and clears (SQLite). Keep in step with ../postgres/0016_service_oauth_generation.sql.

-- Tokens are held in each control plane's memory, never here; these two counters are what every
-- control plane on the database agrees on. `oauth_generation` goes up by one at each
-- `POST /v1/services/{name}/credential/refresh` or `…/clear`: a token a control plane obtained
-- in an earlier generation is renewed at once. `oauth_cleared` is the generation of the last
-- clear: a token obtained before it is never used again. The control plane starts both at the
-- creation time in milliseconds, so that no token held for an earlier service of the same name
-- counts. A control plane still running an older binary works on this schema (a service it
-- creates starts at 0) but ignores both: until it is replaced, refreshes and clears do not reach
-- the Envoys it feeds.
ALTER TABLE services ADD COLUMN oauth_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE services ADD COLUMN oauth_cleared BIGINT NOT NULL DEFAULT 0;
