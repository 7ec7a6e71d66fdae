-- kubetask.db.upkeep: see kubetask/db/sql.py for the conventions every file follows.

-- name: try_lead
-- Operator leadership: a session-level advisory lock. The replica whose
-- session holds it mirrors, scales, rescues and cleans; the lock goes with the
-- session, so a dead leader's lock is released the moment its connection drops.
SELECT pg_try_advisory_lock(7150418245603961602);

-- name: expired_leases
-- Running tasks whose lease expired, with what the retry decision needs (read
-- only: the decision is the operator's, and rescue re-checks every condition).
SELECT id, uid::text AS uid, namespace, name, queue, attempts AS attempt,
       attempts - budget_base AS attempt_in_budget, max_retries,
       backoff_initial_seconds, backoff_factor, backoff_max_seconds, backoff_jitter,
       worker_pod, lease_owner, lease_expires_at, now() AS now
FROM kubetask_tasks
WHERE state = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at, id
LIMIT %(limit)s;

-- name: rescue
-- Applies the decisions made for the rows expired_leases returned. retry_at
-- NULL: dead letter. Each row is guarded as it was read (running, same
-- attempt, lease still expired), so a worker that renewed its lease or
-- finished meanwhile, or a second rescuer, is left alone.
WITH decision AS (
    SELECT *
    FROM unnest(%(task_id)s::bigint[], %(attempt)s::integer[], %(retry_at)s::timestamptz[],
                %(message)s::text[])
        AS d (task_id, attempt, retry_at, message)
), rescued AS (
    UPDATE kubetask_tasks AS t
    SET state = CASE WHEN d.retry_at IS NULL THEN 'dead_letter' ELSE 'retrying' END,
        run_at = coalesce(d.retry_at, t.run_at),
        finished_at = CASE WHEN d.retry_at IS NULL THEN now() END,
        last_error = jsonb_build_object('type', 'LeaseExpired', 'message', d.message, 'attempt', t.attempts),
        lease_owner = NULL,
        lease_expires_at = NULL,
        version = t.version + 1
    FROM decision AS d
    WHERE t.id = d.task_id AND t.state = 'running' AND t.attempts = d.attempt
      AND t.lease_expires_at < now()
    RETURNING t.id, t.attempts, t.state, t.queue, t.run_at, d.message
), attempt AS (
    UPDATE kubetask_attempts AS a
    SET outcome = 'lost', finished_at = now(), error_type = 'LeaseExpired', error_message = r.message
    FROM rescued AS r
    WHERE a.task_id = r.id AND a.number = r.attempts AND a.outcome = 'running'
), notified_queue AS (
    SELECT pg_notify('kubetask_queue', queue)
    FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'retrying' AND run_at <= now()) AS q
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM rescued)
)
SELECT r.id, r.state, r.run_at,
       (SELECT count(*) FROM notified_queue) AS queues_notified,
       (SELECT count(*) FROM notified_status) AS status_notified
FROM rescued AS r;

-- name: missing_uids
-- Tasks whose object was deleted while the operator was not watching: every
-- unfinished row of the namespaces the list covered (an empty array: all)
-- admitted before the list of live uids was taken and absent from it
-- (queue.cancel then cancels them).
SELECT uid::text AS uid
FROM kubetask_tasks
WHERE state IN ('queued', 'running', 'retrying') AND created_at < %(admitted_before)s
  AND (cardinality(%(namespaces)s::text[]) = 0 OR namespace = ANY(%(namespaces)s::text[]))
  AND uid <> ALL(%(live)s::uuid[]);

-- name: unrowed_uids
-- The other direction: which of the listed Task uids have no row at all (not
-- yet admitted, refused, their history deleted by retention, or lost with the
-- database's data). The operator looks closer only at those.
SELECT u::text AS uid
FROM unnest(%(uids)s::uuid[]) AS u
WHERE NOT EXISTS (SELECT FROM kubetask_tasks WHERE uid = u);

-- name: clock
-- The database's clock: every time a sweep compares with row times is read
-- from it, so an operator whose clock is off judges nothing wrongly.
SELECT now();

-- name: expired_ttl
-- Finished rows whose Task object has outlived ttlSecondsAfterFinished, once
-- the final status has been mirrored (the user got to see it).
SELECT uid::text AS uid, namespace, name
FROM kubetask_tasks
WHERE ttl_seconds_after_finished IS NOT NULL AND object_deleted_at IS NULL
  AND state IN ('succeeded', 'dead_letter')
  AND finished_at + make_interval(secs => ttl_seconds_after_finished) <= now()
  AND mirrored_version = version
ORDER BY finished_at + make_interval(secs => ttl_seconds_after_finished)
LIMIT %(limit)s;

-- name: mark_object_deleted
-- Not a status change (the object is gone): no version bump.
UPDATE kubetask_tasks SET object_deleted_at = now()
WHERE uid = %(uid)s::uuid AND object_deleted_at IS NULL;

-- name: history_cutoff
-- History retention: finished rows that finished before the returned time may
-- go. It is the later of "retention_days ago" and the finished_at of the
-- keep_last-th most recently finished row; a NULL parameter switches its rule
-- off, and a NULL result means there is nothing to delete. The keep_last rule
-- reads keep_last entries of kubetask_tasks_finished backwards (an index-only
-- scan when the table is vacuumed), never the table.
SELECT greatest(
    now() - make_interval(secs => %(retention_days)s::float8 * 86400),
    (SELECT finished_at FROM kubetask_tasks
     WHERE finished_at IS NOT NULL AND %(keep_last)s::bigint IS NOT NULL
     ORDER BY finished_at DESC
     OFFSET %(keep_last)s::bigint - 1 LIMIT 1)
) AS cutoff;

-- name: delete_history
-- One bounded batch of retention: up to %(limit)s finished rows that finished
-- before %(cutoff)s, oldest first, found on kubetask_tasks_finished; their
-- attempts go with them (ON DELETE CASCADE). Kept whatever their age: a row
-- whose final status is not mirrored yet (its Task would never learn how it
-- ended), and a row whose Task object still waits for its
-- ttlSecondsAfterFinished deletion (the cleaner finds the object through the
-- row). FOR UPDATE re-checks the conditions on a row's latest version and SKIP
-- LOCKED passes over rows being changed, so a task retried from the dead letter
-- at this moment is never deleted; each batch is its own short transaction.
WITH doomed AS (
    SELECT id
    FROM kubetask_tasks
    WHERE finished_at < %(cutoff)s AND mirrored_version = version
      AND (ttl_seconds_after_finished IS NULL OR object_deleted_at IS NOT NULL)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM kubetask_tasks
WHERE id = ANY(ARRAY(SELECT id FROM doomed));
