-- A cut of one resource of a service reached per resource (SQLite). Keep in step with ../postgres/0015_cut_resource.sql.

-- When a resource changes owner or is forgotten, its former owner's capabilities for that
-- resource alone are cut (their `res` claim, a path such as `/sessions/abc`), not their
-- capabilities for the service's other resources. NULL for every other cut. Only set with
-- `pod_slug` naming the service and `port` 0; the control plane writes nothing else.
ALTER TABLE access_cuts ADD COLUMN resource TEXT;
