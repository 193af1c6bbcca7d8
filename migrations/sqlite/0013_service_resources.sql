-- Services reached per resource (SQLite). Keep in step with ../postgres/0013_service_resources.sql.

-- A service with a `resource_path` (a pattern such as `/sessions/{id}`) is reached one
-- resource at a time: a capability for it names one resource, minted only for a user the
-- authorization rule (`authz::may_use_resource`) lets use it, by default its owner.
-- `service_resources` records each resource's owner; a resource with no row has none, so
-- nobody may use it. Rows go with their service and with their owner.
ALTER TABLE services ADD COLUMN resource_path TEXT;
CREATE TABLE service_resources (
    service      TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    resource_id  TEXT NOT NULL,
    owner_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (service, resource_id)
);
CREATE INDEX service_resources_by_owner ON service_resources(owner_id);
