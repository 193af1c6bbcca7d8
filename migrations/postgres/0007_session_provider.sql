-- The identity provider a browser session signed in with (PostgreSQL). Keep in step with
-- ../sqlite/0007_session_provider.sql.

-- The provider's configured name, for a session started by signing in with it (NULL for the dev
-- login): signing out sends the browser on to that provider's end-session endpoint.
ALTER TABLE sessions ADD COLUMN provider TEXT;
