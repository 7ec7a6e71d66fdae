-- kubetask.db.schema: see kubetask/db/sql.py for the conventions every file follows.

-- name: migrate_try_lock
-- Takes the migration lock for this session if free (two operators starting at
-- once); the key is the one earlier releases took per transaction.
SELECT pg_try_advisory_lock(7150418245603961601);

-- name: migrate_unlock
-- Releases the migration lock taken by migrate_try_lock.
SELECT pg_advisory_unlock(7150418245603961601);

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

-- name: index_is_valid
-- Whether the index of that name (on the search path) is usable; no row if absent.
-- An interrupted CREATE INDEX CONCURRENTLY leaves it behind with indisvalid false.
SELECT i.indisvalid
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = %(name)s AND pg_catalog.pg_table_is_visible(c.oid);
