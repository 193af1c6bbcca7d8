-- The resource a capability was minted for (SQLite). Keep in step with ../postgres/0014_audit_resource.sql.

-- On a service reached per resource every capability names one resource (its `res` claim, a
-- path such as `/sessions/abc`); the mint audit records it beside the service and port, so an
-- operator can tell which of the service's resources a user was let into. NULL for everything
-- else: pods and services reached as a whole. A login ticket for a resource records it too.
ALTER TABLE token_audit ADD COLUMN resource TEXT;
