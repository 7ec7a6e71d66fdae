-- kubetask.db.schema: see kubetask/db/sql.py for the conventions every file follows.

-- name: migrate_lock
-- Serialises concurrent migrate() calls (two operators starting at once).
SELECT pg_advisory_xact_lock(7150418245603961601);

-- name: create_schema_version
-- The ledger of applied migrations (created before the first one runs).
CREATE TABLE IF NOT EXISTS kubetask_schema_version (
    name text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
-- Names of the migrations already applied.
SELECT name FROM kubetask_schema_version ORDER BY name;

-- name: record_migration
-- Marks one migration as applied (same transaction as the migration).
INSERT INTO kubetask_schema_version (name) VALUES (%(name)s);
