-- kubetask.db.reads: see kubetask/db/sql.py for the conventions every file follows.

-- name: queue_depths
-- The one definition of "waiting", for the scaler, the metrics and `kubetask
-- stats`: per queue with unfinished rows, queued and retrying counts, how many
-- of them are due now and how long the oldest due one has waited, the
-- scheduled (future) ones, and the running ones per worker pod; of the due and
-- the running, how many are container tasks (run as pods of their own, not by
-- the pool's workers, so the scaler leaves them out). Unfinished
-- rows only, each state set read through its partial index (claim, lease
-- expiry), so the cost follows the live queue and not the history.
WITH waiting AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'queued') AS queued,
           count(*) FILTER (WHERE state = 'retrying') AS retrying,
           count(*) FILTER (WHERE run_at <= now()) AS due,
           count(*) FILTER (WHERE run_at > now()) AS scheduled,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8 AS oldest_due_seconds,
           count(*) FILTER (WHERE run_at <= now() AND container IS NOT NULL) AS containers_due
    FROM kubetask_tasks
    WHERE state IN ('queued', 'retrying')
    GROUP BY queue
), per_pod AS (
    SELECT queue, worker_pod, container IS NOT NULL AS is_container, count(*) AS running
    FROM kubetask_tasks
    WHERE state = 'running'
    GROUP BY queue, worker_pod, is_container
), busy AS (
    -- busy_pods: worker pods only (a container task's pod is its own, not a pool's).
    SELECT queue, sum(running)::bigint AS running,
           coalesce(jsonb_object_agg(worker_pod, running) FILTER (WHERE NOT is_container), '{}') AS busy_pods,
           coalesce(sum(running) FILTER (WHERE is_container), 0)::bigint AS containers_running
    FROM per_pod
    GROUP BY queue
)
SELECT coalesce(w.queue, b.queue) AS queue, coalesce(w.queued, 0) AS queued,
       coalesce(w.retrying, 0) AS retrying, coalesce(w.due, 0) AS due,
       coalesce(w.scheduled, 0) AS scheduled, coalesce(b.running, 0) AS running,
       coalesce(w.oldest_due_seconds, 0) AS oldest_due_seconds,
       coalesce(b.busy_pods, '{}'::jsonb) AS busy_pods,
       coalesce(w.containers_due, 0) AS containers_due, coalesce(b.containers_running, 0) AS containers_running
FROM waiting AS w FULL JOIN busy AS b ON w.queue = b.queue
ORDER BY 1;

-- name: get_task
-- One task row by its Task's uid.
SELECT id, uid::text AS uid, namespace, name, type, payload, queue, priority, max_retries,
       backoff_initial_seconds, backoff_factor, backoff_max_seconds, backoff_jitter,
       timeout_seconds, state, attempts, budget_base, run_at, lease_owner, worker_pod,
       lease_expires_at, result, last_error, created_at, started_at, finished_at,
       version, mirrored_version, mirrored_state
FROM kubetask_tasks
WHERE uid = %(uid)s::uuid;

-- name: task_history
-- Every attempt of a task, oldest first; a container attempt's exit code,
-- reason and stored log tail too (NULL for a handler attempt).
SELECT a.number, a.worker_pod, a.lease_owner, a.started_at, a.finished_at, a.outcome,
       a.error_type, a.error_message, a.traceback, a.result, a.exit_code, a.reason, a.log_tail
FROM kubetask_attempts AS a
JOIN kubetask_tasks AS t ON t.id = a.task_id
WHERE t.uid = %(uid)s::uuid
ORDER BY a.number;

-- name: attempt_log
-- One attempt of a task, for `kubetask logs`: attempt %(attempt)s, or the
-- latest when it is NULL (through the attempts' primary key, newest first).
SELECT a.number, a.worker_pod, a.outcome, a.exit_code, a.reason, a.log_tail
FROM kubetask_attempts AS a
JOIN kubetask_tasks AS t ON t.id = a.task_id
WHERE t.uid = %(uid)s::uuid AND (%(attempt)s::integer IS NULL OR a.number = %(attempt)s::integer)
ORDER BY a.number DESC
LIMIT 1;

-- name: find_tasks
-- Uids of the Tasks named so in a namespace, newest first: a name may have been
-- re-used after the object was deleted, and its history outlives the object.
SELECT uid::text AS uid
FROM kubetask_tasks
WHERE namespace = %(namespace)s AND name = %(name)s
ORDER BY created_at DESC, id DESC;

-- name: finished_counts
-- Per queue: what finished within the window (through finished_at), and what
-- is in the dead letter now whenever it got there; `kubetask stats` adds the
-- unfinished counts of queue_depths.
WITH done AS (
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
SELECT coalesce(d.queue, x.queue) AS queue,
       coalesce(d.succeeded, 0) AS succeeded, coalesce(d.dead_letter, 0) AS dead_letter,
       coalesce(d.cancelled, 0) AS cancelled, coalesce(x.dead_letter_total, 0) AS dead_letter_total
FROM done AS d
FULL JOIN dead AS x ON x.queue = d.queue
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

-- name: claims_since
-- Per queue, the claims (attempts started) within the last %(window_seconds)s seconds, for the Queue
-- status. The tasks are found through their latest claim (started_at) in three disjoint sets, each read
-- through its own index: waiting (claim index), running (lease-expiry index) and finished within the
-- window (finished index); their attempts in the window are counted through the attempts' primary key.
-- So the cost follows the live queue and the window, never the history.
WITH recent AS (
    SELECT id, queue FROM kubetask_tasks
    WHERE state IN ('queued', 'retrying') AND started_at > now() - make_interval(secs => %(window_seconds)s)
    UNION ALL
    SELECT id, queue FROM kubetask_tasks
    WHERE state = 'running' AND started_at > now() - make_interval(secs => %(window_seconds)s)
    UNION ALL
    SELECT id, queue FROM kubetask_tasks
    WHERE finished_at > now() - make_interval(secs => %(window_seconds)s)
      AND started_at > now() - make_interval(secs => %(window_seconds)s)
), counted AS (
    SELECT r.queue, (SELECT count(*) FROM kubetask_attempts AS a
                     WHERE a.task_id = r.id
                       AND a.started_at > now() - make_interval(secs => %(window_seconds)s)) AS claims
    FROM recent AS r
)
SELECT queue, sum(claims)::bigint AS claims
FROM counted
GROUP BY queue
HAVING sum(claims) > 0
ORDER BY 1;
