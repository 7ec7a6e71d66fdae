-- kubetask.db.roles: see kubetask/db/sql.py for the conventions every file follows.
--
-- The privileges of the two roles that are not the owner, granted by the
-- migrating operator after every migration (kubetask.db.roles), so a table a
-- later migration adds gets its grants here, in one place. Every table of the
-- schema is named in this file or in kubetask.db.roles.OWNER_ONLY, and a test
-- fails on a table that is neither (tests/engine/test_roles.py).

-- name: existing_roles
-- Which of the roles exist, and whether the current role may create the missing ones.
SELECT (SELECT coalesce(array_agg(rolname::text), '{}') FROM pg_roles WHERE rolname = ANY(%(names)s::text[])) AS existing,
       (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) AS may_create;

-- name: grant_worker
-- kubetask_worker: the statements of kubetask.db.queue a worker runs (claim and
-- complete, heartbeat, fail, hand back) and nothing else. It reads a task
-- (its payload is the handler's input) and changes only the columns of its
-- life: it cannot rewrite another task's type, payload, queue or namespace,
-- delete history, admit Tasks, or touch the release and migration tables.
GRANT SELECT ON kubetask_tasks, kubetask_attempts TO kubetask_worker;
GRANT UPDATE (state, attempts, budget_base, lease_owner, lease_expires_at, worker_pod, started_at,
              finished_at, run_at, result, last_error, version)
    ON kubetask_tasks TO kubetask_worker;
GRANT INSERT (task_id, number, worker_pod, lease_owner, started_at) ON kubetask_attempts TO kubetask_worker;
GRANT UPDATE (outcome, finished_at, result, error_type, error_message, traceback)
    ON kubetask_attempts TO kubetask_worker;
-- A limited queue's claim locks its Queue row (FOR UPDATE) and spends its rate-limit tokens;
-- the limits themselves (paused, maxRunning, the selector) are the operator's to write.
GRANT SELECT ON kubetask_queues TO kubetask_worker;
GRANT UPDATE (tokens, tokens_at) ON kubetask_queues TO kubetask_worker;

-- name: grant_reader
-- kubetask_reader: `kubetask history` and `kubetask stats`, dashboards: reads
-- the queue and its history, changes nothing.
GRANT SELECT ON kubetask_tasks, kubetask_attempts, kubetask_queues TO kubetask_reader;

-- name: tables
-- The tables of the schema kubetask lives in.
SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() AND starts_with(tablename, 'kubetask_')
ORDER BY 1;

-- name: whoami
-- The role connected, whether it is a superuser, and whether it owns the queue table.
SELECT current_user::text,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       coalesce((SELECT pg_has_role(current_user, tableowner, 'USAGE') FROM pg_tables
                 WHERE schemaname = current_schema() AND tablename = 'kubetask_tasks'), false);

-- name: may_work
-- Whether the schema exists and the connected role may run a worker's statements
-- (false before the operator's first migration, or for a role in no kubetask group).
SELECT CASE WHEN to_regclass('kubetask_attempts') IS NULL THEN false
            ELSE has_any_column_privilege(current_user, 'kubetask_tasks', 'UPDATE')
                 AND has_any_column_privilege(current_user, 'kubetask_attempts', 'INSERT') END;
