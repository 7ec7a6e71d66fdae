-- Every SQL statement kubetask runs, one per "-- name:" header.
--
-- Loaded once by kubetask.store. Parameters are named (%(name)s). Each
-- state-changing statement bumps version and notifies kubetask_status in the
-- same statement, and a statement that makes work due notifies kubetask_queue
-- with the queue's name. PostgreSQL delivers notifications only at commit and
-- folds identical ones within a transaction, so a listener never sees work
-- that is not yet visible. A SELECT in WITH runs only when the main query
-- reads it, hence the "(SELECT count(*) FROM notified_…)" columns.

-- name: migrate_lock
-- Serialises concurrent migrate() calls (two operators starting at once).
SELECT pg_advisory_xact_lock(7150418245603961601);

-- name: try_lead
-- Operator leadership: a session-level advisory lock. The replica whose
-- session holds it mirrors, scales, rescues and cleans; the lock goes with the
-- session, so a dead leader's lock is released the moment its connection drops.
SELECT pg_try_advisory_lock(7150418245603961602);

-- name: create_schema_version
CREATE TABLE IF NOT EXISTS kubetask_schema_version (
    name text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT name FROM kubetask_schema_version ORDER BY name;

-- name: record_migration
INSERT INTO kubetask_schema_version (name) VALUES (%(name)s);

-- name: listen_queue
LISTEN kubetask_queue;

-- name: listen_status
LISTEN kubetask_status;

-- name: admit
WITH incoming AS (
    SELECT *
    FROM unnest(
        %(uid)s::uuid[], %(namespace)s::text[], %(name)s::text[], %(type)s::text[],
        %(payload)s::jsonb[], %(queue)s::text[], %(priority)s::integer[],
        %(max_retries)s::integer[], %(backoff_initial_seconds)s::float8[],
        %(backoff_factor)s::float8[], %(backoff_max_seconds)s::float8[],
        %(backoff_jitter)s::float8[], %(timeout_seconds)s::integer[],
        %(run_at)s::timestamptz[], %(ttl_seconds_after_finished)s::integer[]
    ) AS i (uid, namespace, name, type, payload, queue, priority, max_retries,
            backoff_initial_seconds, backoff_factor, backoff_max_seconds,
            backoff_jitter, timeout_seconds, run_at, ttl_seconds_after_finished)
), inserted AS (
    INSERT INTO kubetask_tasks (
        uid, namespace, name, type, payload, queue, priority, max_retries,
        backoff_initial_seconds, backoff_factor, backoff_max_seconds,
        backoff_jitter, timeout_seconds, run_at, ttl_seconds_after_finished)
    SELECT uid, namespace, name, type, payload, queue, priority, max_retries,
           backoff_initial_seconds, backoff_factor, backoff_max_seconds,
           backoff_jitter, timeout_seconds, coalesce(run_at, now()), ttl_seconds_after_finished
    FROM incoming
    ON CONFLICT (uid) DO NOTHING
    RETURNING queue, run_at
), notified_queue AS (
    SELECT pg_notify('kubetask_queue', queue)
    FROM (SELECT DISTINCT queue FROM inserted WHERE run_at <= now()) AS due
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM inserted)
)
SELECT (SELECT count(*) FROM inserted) AS admitted,
       (SELECT count(*) FROM notified_queue) AS queues_notified,
       (SELECT count(*) FROM notified_status) AS status_notified;

-- name: heartbeat
-- Extends only the leases of tasks the worker says it runs; returns those it
-- thinks it runs but no longer holds (cancelled, or rescued after a stall).
-- A lease is not part of a Task's status: no version bump.
WITH extended AS (
    UPDATE kubetask_tasks
    SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
    WHERE id = ANY(%(held)s::bigint[]) AND lease_owner = %(lease_owner)s AND state = 'running'
    RETURNING id
)
SELECT held.id
FROM unnest(%(held)s::bigint[]) AS held (id)
WHERE held.id NOT IN (SELECT id FROM extended)
ORDER BY held.id;

-- name: claim
-- The worker's one statement per round trip: record the successes it holds
-- (possibly none) and claim up to %(limit)s due tasks (possibly 0), so a busy
-- worker writes the results of one batch and takes the next in one go.
--
-- Successes: each row is guarded by lease owner, state and attempt number,
-- so a late result of an attempt that was rescued, cancelled or superseded
-- changes nothing; "recorded" lists the ids that were written.
-- Claims: FOR UPDATE SKIP LOCKED on the partial index shaped for it; the
-- task becomes running with a lease, and its attempt row is inserted. The
-- two halves touch disjoint rows (running vs queued/retrying).
-- Always returns at least one row; the claim columns are NULL when nothing
-- was claimed. %(limit)s is written into the text as a literal by
-- store._claim_with_limit, not bound, so the plan cache keeps one cheap
-- generic plan per limit instead of replanning every call on a big table.
WITH incoming AS (
    -- done_results is one JSON array (one encoding for the whole batch), zipped with the ids.
    SELECT *
    FROM unnest(%(done_id)s::bigint[], %(done_attempt)s::integer[],
                ARRAY(SELECT r.value FROM jsonb_array_elements(%(done_results)s::jsonb) WITH ORDINALITY AS r
                      ORDER BY r.ordinality))
        AS i (task_id, attempt, result)
), done AS (
    UPDATE kubetask_tasks AS t
    SET state = 'succeeded',
        result = i.result,
        finished_at = now(),
        lease_owner = NULL,
        lease_expires_at = NULL,
        version = t.version + 1
    FROM incoming AS i
    -- Found by primary key ("id = ANY"). The lease owner is the state guard: a row has one only
    -- while running (CHECK kubetask_tasks_lease_only_while_running). Spelling out state = 'running'
    -- as well would let the planner pick the lease-expiry index, whose dead entries (every task
    -- that ever ran, until a vacuum) it would then scan on every call.
    WHERE t.id = ANY(%(done_id)s::bigint[]) AND t.id = i.task_id AND t.lease_owner = %(lease_owner)s
      AND t.attempts = i.attempt
    RETURNING t.id, t.attempts, i.result
), done_attempt AS (
    UPDATE kubetask_attempts AS a
    SET outcome = 'succeeded', finished_at = now(), result = done.result
    FROM done
    WHERE a.task_id = ANY(%(done_id)s::bigint[]) AND a.task_id = done.id AND a.number = done.attempts
      AND a.outcome = 'running'
), picked AS (
    SELECT id
    FROM kubetask_tasks
    WHERE queue = %(queue)s AND state IN ('queued', 'retrying') AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE kubetask_tasks AS t
    SET state = 'running',
        attempts = t.attempts + 1,
        lease_owner = %(lease_owner)s,
        worker_pod = %(worker_pod)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        started_at = now(),
        version = t.version + 1
    -- "id = ANY(ARRAY(…))" rather than a join: found by primary key even by a plan that cannot
    -- know how small LIMIT is (a generic plan assumes a tenth of the table, and hash-joins it).
    WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING t.id, t.uid, t.namespace, t.name, t.queue, t.type, t.payload, t.attempts, t.budget_base,
              t.timeout_seconds, t.max_retries, t.backoff_initial_seconds, t.backoff_factor,
              t.backoff_max_seconds, t.backoff_jitter, t.lease_owner, t.worker_pod, t.started_at,
              t.priority, t.run_at
), attempt AS (
    INSERT INTO kubetask_attempts (task_id, number, worker_pod, lease_owner, started_at)
    SELECT id, attempts, worker_pod, lease_owner, started_at FROM claimed
), notified_status AS (
    SELECT pg_notify('kubetask_status', '')
    WHERE EXISTS (SELECT FROM done) OR EXISTS (SELECT FROM claimed)
)
SELECT (SELECT coalesce(array_agg(id), '{}') FROM done) AS recorded,
       (SELECT count(*) FROM notified_status) AS notified,
       c.id, c.uid::text AS uid, c.namespace, c.name, c.queue, c.type, c.payload,
       c.attempts AS attempt, c.attempts - c.budget_base AS attempt_in_budget,
       c.timeout_seconds, c.max_retries, c.backoff_initial_seconds, c.backoff_factor,
       c.backoff_max_seconds, c.backoff_jitter, c.lease_owner, c.worker_pod,
       extract(epoch FROM c.started_at - c.run_at)::float8 AS waited_seconds
FROM (VALUES (1)) AS one (always) LEFT JOIN claimed AS c ON true
ORDER BY c.priority DESC, c.run_at, c.id;

-- name: fail
-- retry_at NULL: dead letter. Otherwise retrying until retry_at; when that is
-- already due the queue is notified at once.
WITH failed AS (
    UPDATE kubetask_tasks
    SET state = CASE WHEN %(retry_at)s::timestamptz IS NULL THEN 'dead_letter' ELSE 'retrying' END,
        run_at = coalesce(%(retry_at)s::timestamptz, run_at),
        finished_at = CASE WHEN %(retry_at)s::timestamptz IS NULL THEN now() END,
        last_error = jsonb_build_object(
            'type', %(error_type)s::text, 'message', %(message)s::text, 'attempt', attempts),
        lease_owner = NULL,
        lease_expires_at = NULL,
        version = version + 1
    WHERE id = %(task_id)s AND lease_owner = %(lease_owner)s AND state = 'running'
      AND attempts = %(attempt)s
    RETURNING id, attempts, state, queue, run_at
), attempt AS (
    UPDATE kubetask_attempts AS a
    SET outcome = %(outcome)s, finished_at = now(), error_type = %(error_type)s,
        error_message = %(message)s, traceback = %(traceback)s
    FROM failed
    WHERE a.task_id = failed.id AND a.number = failed.attempts AND a.outcome = 'running'
    RETURNING a.number
), notified_queue AS (
    SELECT pg_notify('kubetask_queue', queue) FROM failed
    WHERE state = 'retrying' AND run_at <= now()
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM failed)
)
SELECT (SELECT count(*) FROM failed) AS tasks,
       (SELECT count(*) FROM attempt) AS attempts,
       (SELECT count(*) FROM notified_queue) AS queues_notified,
       (SELECT count(*) FROM notified_status) AS status_notified;

-- name: hand_back
-- Graceful shutdown. The task keeps its run_at (it was due, so it goes back
-- to the front of its priority), and budget_base moves with attempts so the
-- handed-back attempt does not spend the retry budget.
WITH back AS (
    UPDATE kubetask_tasks
    SET state = 'queued',
        budget_base = budget_base + 1,
        lease_owner = NULL,
        lease_expires_at = NULL,
        version = version + 1
    WHERE id = ANY(%(task_ids)s::bigint[]) AND lease_owner = %(lease_owner)s AND state = 'running'
    RETURNING id, attempts, queue, worker_pod
), attempt AS (
    UPDATE kubetask_attempts AS a
    SET outcome = 'handed_back', finished_at = now(), error_type = 'HandedBack',
        error_message = 'worker pod ' || back.worker_pod
            || ' shut down before the attempt finished and returned the task to the queue'
    FROM back
    WHERE a.task_id = back.id AND a.number = back.attempts AND a.outcome = 'running'
), notified_queue AS (
    SELECT pg_notify('kubetask_queue', queue) FROM (SELECT DISTINCT queue FROM back) AS q
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM back)
)
SELECT (SELECT count(*) FROM back) AS tasks,
       (SELECT count(*) FROM notified_queue) AS queues_notified,
       (SELECT count(*) FROM notified_status) AS status_notified;

-- name: lock_expired
-- SKIP LOCKED: two rescuers never take the same row, and a row that a worker
-- is completing right now is left for the next round.
SELECT id, uid::text AS uid, namespace, name, queue, attempts AS attempt,
       attempts - budget_base AS attempt_in_budget, max_retries,
       backoff_initial_seconds, backoff_factor, backoff_max_seconds, backoff_jitter,
       worker_pod, lease_owner, lease_expires_at, now() AS now
FROM kubetask_tasks
WHERE state = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: rescue
-- Applies the decisions made for the rows lock_expired returned (same
-- transaction). retry_at NULL: dead letter.
WITH decision AS (
    SELECT *
    FROM unnest(%(task_id)s::bigint[], %(retry_at)s::timestamptz[], %(message)s::text[])
        AS d (task_id, retry_at, message)
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
    WHERE t.id = d.task_id AND t.state = 'running'
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

-- name: cancel
WITH cancelled AS (
    UPDATE kubetask_tasks
    SET state = 'cancelled',
        finished_at = now(),
        lease_owner = NULL,
        lease_expires_at = NULL,
        version = version + 1
    WHERE uid = %(uid)s::uuid AND state IN ('queued', 'running', 'retrying')
    RETURNING id, attempts
), attempt AS (
    UPDATE kubetask_attempts AS a
    SET outcome = 'cancelled', finished_at = now(), error_type = 'Cancelled',
        error_message = 'the Task was deleted while this attempt was running'
    FROM cancelled AS c
    WHERE a.task_id = c.id AND a.number = c.attempts AND a.outcome = 'running'
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM cancelled)
)
SELECT (SELECT count(*) FROM cancelled) AS tasks,
       (SELECT count(*) FROM notified_status) AS notified;

-- name: retry_dead
-- A fresh retry budget (budget_base = attempts); attempt numbers and history
-- continue. The old result goes (it would contradict the new phase); the last
-- error stays as the reason for the retry until a new attempt replaces it.
-- A token already acted on changes nothing.
WITH requeued AS (
    UPDATE kubetask_tasks
    SET state = 'queued',
        run_at = now(),
        budget_base = attempts,
        finished_at = NULL,
        result = NULL,
        retry_token = coalesce(%(token)s::text, retry_token),
        version = version + 1
    WHERE uid = %(uid)s::uuid AND state IN ('dead_letter', 'succeeded')
      AND (%(token)s::text IS NULL OR retry_token IS DISTINCT FROM %(token)s::text)
      AND object_deleted_at IS NULL
    RETURNING queue
), notified_queue AS (
    SELECT pg_notify('kubetask_queue', queue) FROM requeued
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM requeued)
)
SELECT (SELECT count(*) FROM requeued) AS tasks,
       (SELECT count(*) FROM notified_queue) AS queues_notified,
       (SELECT count(*) FROM notified_status) AS status_notified;

-- name: cancel_missing
-- Tasks whose object was deleted while the operator was not watching: every
-- unfinished row admitted before the list of live uids was taken and absent
-- from it.
WITH cancelled AS (
    UPDATE kubetask_tasks
    SET state = 'cancelled',
        finished_at = now(),
        lease_owner = NULL,
        lease_expires_at = NULL,
        version = version + 1
    WHERE state IN ('queued', 'running', 'retrying') AND created_at < %(admitted_before)s
      AND uid <> ALL(%(live)s::uuid[])
    RETURNING id, attempts
), attempt AS (
    UPDATE kubetask_attempts AS a
    SET outcome = 'cancelled', finished_at = now(), error_type = 'Cancelled',
        error_message = 'the Task was deleted while this attempt was running'
    FROM cancelled AS c
    WHERE a.task_id = c.id AND a.number = c.attempts AND a.outcome = 'running'
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM cancelled)
)
SELECT (SELECT count(*) FROM cancelled) AS tasks,
       (SELECT count(*) FROM notified_status) AS notified;

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

-- name: pending_status
-- The outbox: statuses behind their rows, oldest version first, each with its
-- latest attempts (oldest of them first) fetched in the same round trip.
SELECT t.id, t.uid::text AS uid, t.namespace, t.name, t.type, t.queue, t.state,
       t.attempts, t.attempts - t.budget_base AS attempts_in_budget, t.max_retries,
       t.run_at, t.worker_pod, t.created_at, t.started_at, t.finished_at, t.result, t.last_error,
       t.version, t.mirrored_state, coalesce(h.history, '[]'::json) AS history
FROM kubetask_tasks AS t
LEFT JOIN LATERAL (
    SELECT json_agg(json_build_object(
               'number', a.number, 'worker_pod', a.worker_pod, 'started_at', a.started_at,
               'finished_at', a.finished_at, 'outcome', a.outcome,
               'error_type', a.error_type, 'error_message', a.error_message)
           ORDER BY a.number) AS history
    FROM (SELECT * FROM kubetask_attempts AS a
          WHERE a.task_id = t.id ORDER BY a.number DESC LIMIT %(history)s) AS a
) AS h ON true
WHERE t.version > t.mirrored_version
ORDER BY t.version, t.id
LIMIT %(limit)s;

-- name: mark_mirrored
-- Coalescing: an older version never overwrites a newer mark.
UPDATE kubetask_tasks AS t
SET mirrored_version = m.version, mirrored_state = m.state
FROM unnest(%(task_id)s::bigint[], %(version)s::bigint[], %(state)s::text[]) AS m (id, version, state)
WHERE t.id = m.id AND m.version > t.mirrored_version AND m.version <= t.version;

-- name: queue_depths
WITH waiting AS (
    SELECT queue,
           count(*) FILTER (WHERE run_at <= now()) AS ready,
           count(*) FILTER (WHERE run_at > now()) AS scheduled
    FROM kubetask_tasks
    WHERE state IN ('queued', 'retrying')
    GROUP BY queue
), per_pod AS (
    SELECT queue, worker_pod, count(*) AS running
    FROM kubetask_tasks
    WHERE state = 'running'
    GROUP BY queue, worker_pod
), busy AS (
    SELECT queue, sum(running)::bigint AS running, jsonb_object_agg(worker_pod, running) AS busy_pods
    FROM per_pod
    GROUP BY queue
)
SELECT coalesce(w.queue, b.queue) AS queue, coalesce(w.ready, 0) AS ready,
       coalesce(b.running, 0) AS running, coalesce(w.scheduled, 0) AS scheduled,
       coalesce(b.busy_pods, '{}'::jsonb) AS busy_pods
FROM waiting AS w FULL JOIN busy AS b ON w.queue = b.queue
ORDER BY 1;

-- name: get_task
SELECT id, uid::text AS uid, namespace, name, type, payload, queue, priority, max_retries,
       backoff_initial_seconds, backoff_factor, backoff_max_seconds, backoff_jitter,
       timeout_seconds, state, attempts, budget_base, run_at, lease_owner, worker_pod,
       lease_expires_at, result, last_error, created_at, started_at, finished_at,
       version, mirrored_version, mirrored_state
FROM kubetask_tasks
WHERE uid = %(uid)s::uuid;

-- name: task_history
SELECT a.number, a.worker_pod, a.lease_owner, a.started_at, a.finished_at, a.outcome,
       a.error_type, a.error_message, a.traceback, a.result
FROM kubetask_attempts AS a
JOIN kubetask_tasks AS t ON t.id = a.task_id
WHERE t.uid = %(uid)s::uuid
ORDER BY a.number;

-- name: find_tasks
-- Rows of Tasks named so in a namespace, newest first: a name may have been
-- re-used after the object was deleted, and its history outlives the object.
SELECT id, uid::text AS uid, namespace, name, type, payload, queue, priority, max_retries,
       backoff_initial_seconds, backoff_factor, backoff_max_seconds, backoff_jitter,
       timeout_seconds, state, attempts, budget_base, run_at, lease_owner, worker_pod,
       lease_expires_at, result, last_error, created_at, started_at, finished_at,
       version, mirrored_version, mirrored_state
FROM kubetask_tasks
WHERE namespace = %(namespace)s AND name = %(name)s
ORDER BY created_at DESC, id DESC;

-- name: queue_stats
-- Per queue: rows by state, what finished within the window, and the age of
-- the oldest task that is due and waiting. The unfinished states use the claim
-- index; the finished counts scan only the window through finished_at.
WITH open AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS queued,
           count(*) FILTER (WHERE state IN ('queued', 'retrying') AND run_at > now()) AS scheduled,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'retrying' AND run_at <= now()) AS retrying,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE state IN ('queued', 'retrying')
                                                          AND run_at <= now()))::float8 AS oldest_waiting_seconds
    FROM kubetask_tasks
    WHERE state IN ('queued', 'running', 'retrying')
    GROUP BY queue
), done AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'dead_letter') AS dead_letter,
           count(*) FILTER (WHERE state = 'cancelled') AS cancelled
    FROM kubetask_tasks
    WHERE finished_at > now() - make_interval(secs => %(window_seconds)s)
    GROUP BY queue
), dead AS (
    SELECT queue, count(*) AS dead_letter_total
    FROM kubetask_tasks WHERE state = 'dead_letter'
    GROUP BY queue
)
SELECT coalesce(o.queue, d.queue, x.queue) AS queue,
       coalesce(o.queued, 0) AS queued, coalesce(o.scheduled, 0) AS scheduled,
       coalesce(o.running, 0) AS running, coalesce(o.retrying, 0) AS retrying,
       coalesce(d.succeeded, 0) AS succeeded, coalesce(d.dead_letter, 0) AS dead_letter,
       coalesce(d.cancelled, 0) AS cancelled, coalesce(x.dead_letter_total, 0) AS dead_letter_total,
       o.oldest_waiting_seconds
FROM open AS o
FULL JOIN done AS d ON d.queue = o.queue
FULL JOIN dead AS x ON x.queue = coalesce(o.queue, d.queue)
ORDER BY 1;

-- name: queue_gauges
-- The operator's /metrics, when scraped: unfinished rows only, each state set
-- read through its partial index (claim, lease expiry), so the cost follows the
-- live queue and not the history.
WITH waiting AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'queued') AS queued,
           count(*) FILTER (WHERE state = 'retrying') AS retrying,
           count(*) FILTER (WHERE run_at <= now()) AS due,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8 AS oldest_due_seconds
    FROM kubetask_tasks
    WHERE state IN ('queued', 'retrying')
    GROUP BY queue
), running AS (
    SELECT queue, count(*) AS running
    FROM kubetask_tasks
    WHERE state = 'running'
    GROUP BY queue
)
SELECT coalesce(w.queue, r.queue) AS queue, coalesce(w.queued, 0) AS queued,
       coalesce(r.running, 0) AS running, coalesce(w.retrying, 0) AS retrying,
       coalesce(w.due, 0) AS due, coalesce(w.oldest_due_seconds, 0) AS oldest_due_seconds
FROM waiting AS w FULL JOIN running AS r ON r.queue = w.queue
ORDER BY 1;

-- name: mirror_lag
-- The outbox (through its partial index): how many statuses are behind their
-- row, and how long ago the oldest of those changes happened, taken as the
-- row's latest timestamp (admission, claim, end of its last attempt, finish).
-- A retry from the dead letter sets none of these, so its change looks as old
-- as the attempt before it until it is mirrored, milliseconds later.
SELECT count(*) AS backlog,
       coalesce(extract(epoch FROM now() - min(greatest(t.created_at, t.started_at, t.finished_at,
                                                        a.finished_at)))::float8, 0) AS lag_seconds
FROM kubetask_tasks AS t
LEFT JOIN LATERAL (
    SELECT max(finished_at) AS finished_at FROM kubetask_attempts WHERE task_id = t.id
) AS a ON true
WHERE t.version > t.mirrored_version;
