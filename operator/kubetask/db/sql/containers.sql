-- kubetask.db.containers: see kubetask/db/sql.py for the conventions every file follows.
--
-- What only container tasks need (migrations 0007, 0008): the queues with
-- due container tasks, each attempt's pod name, the exit code, reason and
-- log tail of an attempt, and adopting running attempts after a change of
-- leader. Their claims, heartbeats, successes and failures are the queue's
-- own statements (kubetask.db.queue).

-- name: due_queues
-- The queues with due container tasks: one probe of the container claim index per queue
-- (a loose index scan), so the cost follows how many queues wait, not how many tasks.
WITH RECURSIVE q AS (
    (SELECT queue FROM kubetask_tasks
     WHERE container IS NOT NULL AND state IN ('queued', 'retrying') AND run_at <= now()
     ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT t.queue FROM kubetask_tasks AS t
            WHERE t.container IS NOT NULL AND t.state IN ('queued', 'retrying') AND t.run_at <= now()
              AND t.queue > q.queue
            ORDER BY t.queue LIMIT 1)
    FROM q WHERE q.queue IS NOT NULL
)
SELECT queue FROM q WHERE queue IS NOT NULL;

-- name: set_pods
-- The pod each just-claimed attempt runs in (the task's worker_pod, status.worker), guarded by the lease.
WITH pod AS (
    SELECT * FROM unnest(%(task_id)s::bigint[], %(attempt)s::integer[], %(pod)s::text[]) AS p (task_id, attempt, pod)
), task AS (
    UPDATE kubetask_tasks AS t
    SET worker_pod = p.pod
    FROM pod AS p
    WHERE t.id = p.task_id AND t.attempts = p.attempt AND t.lease_owner = %(lease_owner)s
    RETURNING t.id, t.attempts, p.pod
)
UPDATE kubetask_attempts AS a
SET worker_pod = task.pod
FROM task
WHERE a.task_id = task.id AND a.number = task.attempts;

-- name: record_exit
-- How attempts' containers ended, written just before the attempts' outcomes (same transaction), for the
-- attempts this leader still holds the lease of.
WITH ended AS (
    SELECT * FROM unnest(%(task_id)s::bigint[], %(attempt)s::integer[], %(exit_code)s::integer[],
                         %(reason)s::text[], %(log_tail)s::text[]) AS e (task_id, attempt, exit_code, reason, log_tail)
)
UPDATE kubetask_attempts AS a
SET exit_code = e.exit_code, reason = e.reason, log_tail = e.log_tail
FROM ended AS e, kubetask_tasks AS t
WHERE t.id = e.task_id AND t.attempts = e.attempt AND t.lease_owner = %(lease_owner)s AND t.state = 'running'
  AND a.task_id = t.id AND a.number = t.attempts;

-- name: adopt
-- A new leader takes over the leases of the attempts whose pods run (found by their labels): only
-- an attempt still running under the same number moves, whoever held it. Returns what the claim does.
WITH pod AS (
    SELECT * FROM unnest(%(uid)s::uuid[], %(attempt)s::integer[]) AS p (uid, attempt)
), adopted AS (
    UPDATE kubetask_tasks AS t
    SET lease_owner = %(lease_owner)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        version = t.version + 1
    FROM pod AS p
    WHERE t.uid = p.uid AND t.attempts = p.attempt AND t.state = 'running' AND t.container IS NOT NULL
    RETURNING t.id, t.uid, t.namespace, t.name, t.queue, t.type, t.payload, t.attempts, t.budget_base,
              t.timeout_seconds, t.max_retries, t.backoff_initial_seconds, t.backoff_factor,
              t.backoff_max_seconds, t.backoff_jitter, t.lease_owner, t.worker_pod, t.started_at,
              t.run_at, t.container, t.permanent_exit_codes
), attempt AS (
    UPDATE kubetask_attempts AS a
    SET lease_owner = %(lease_owner)s
    FROM adopted
    WHERE a.task_id = adopted.id AND a.number = adopted.attempts AND a.outcome = 'running'
)
SELECT c.id, c.uid::text AS uid, c.namespace, c.name, c.queue, c.type, c.payload,
       c.attempts AS attempt, c.attempts - c.budget_base AS attempt_in_budget,
       c.timeout_seconds, c.max_retries, c.backoff_initial_seconds, c.backoff_factor,
       c.backoff_max_seconds, c.backoff_jitter, c.lease_owner, c.worker_pod,
       extract(epoch FROM c.started_at - c.run_at)::float8 AS waited_seconds,
       c.container, c.permanent_exit_codes
FROM adopted AS c;

-- name: running_attempts
-- Of these (uid, attempt) pairs, the ones whose task still runs that attempt (a pod of any other is stale).
SELECT t.uid::text, t.attempts
FROM kubetask_tasks AS t
JOIN unnest(%(uid)s::uuid[], %(attempt)s::integer[]) AS p (uid, attempt) ON t.uid = p.uid AND t.attempts = p.attempt
WHERE t.state = 'running';
