-- kubetask.db.queue: see kubetask/db/sql.py for the conventions every file follows.

-- name: admit
-- New Tasks in one round trip; a uid already admitted is skipped (relists after a restart). A Task whose
-- queue's row does not admit its namespace is inserted refused (dead letter, QueueRefused, the message
-- from %(refusal)s), so it is never claimed. A Task of a queue in %(missing_queues)s (queues with no Queue
-- object, when the operator requires one) is inserted refused with the message from %(missing_refusal)s.
WITH incoming AS (
    SELECT *
    FROM unnest(
        %(uid)s::uuid[], %(namespace)s::text[], %(name)s::text[], %(type)s::text[],
        %(payload)s::jsonb[], %(queue)s::text[], %(priority)s::integer[],
        %(max_retries)s::integer[], %(backoff_initial_seconds)s::float8[],
        %(backoff_factor)s::float8[], %(backoff_max_seconds)s::float8[],
        %(backoff_jitter)s::float8[], %(timeout_seconds)s::integer[],
        %(run_at)s::timestamptz[], %(ttl_seconds_after_finished)s::integer[],
        %(concurrency_key)s::text[], %(container)s::jsonb[], %(permanent_exit_codes)s::jsonb[]
    ) AS i (uid, namespace, name, type, payload, queue, priority, max_retries,
            backoff_initial_seconds, backoff_factor, backoff_max_seconds,
            backoff_jitter, timeout_seconds, run_at, ttl_seconds_after_finished, concurrency_key,
            container, permanent_exit_codes)
), gated AS (
    -- A scalar subquery, not a join: the rows keep the order they came in, so ids follow it.
    SELECT i.*,
           CASE WHEN i.queue = ANY(%(missing_queues)s::text[])
                THEN format(%(missing_refusal)s::text, i.namespace, i.queue, '', i.name)
                ELSE (SELECT format(%(refusal)s::text, i.namespace, i.queue, q.namespace_selector::text, i.name)
                      FROM kubetask_queues AS q
                      WHERE q.name = i.queue AND q.allowed_namespaces IS NOT NULL
                        AND NOT (i.namespace = ANY(q.allowed_namespaces)))
           END AS refused_by
    FROM incoming AS i
), inserted AS (
    INSERT INTO kubetask_tasks (
        uid, namespace, name, type, payload, queue, priority, max_retries,
        backoff_initial_seconds, backoff_factor, backoff_max_seconds,
        backoff_jitter, timeout_seconds, run_at, ttl_seconds_after_finished, concurrency_key,
        container, permanent_exit_codes, state, finished_at, last_error)
    SELECT uid, namespace, name, type, payload, queue, priority, max_retries,
           backoff_initial_seconds, backoff_factor, backoff_max_seconds,
           backoff_jitter, timeout_seconds, coalesce(run_at, now()), ttl_seconds_after_finished, concurrency_key,
           container, ARRAY(SELECT jsonb_array_elements_text(permanent_exit_codes)::integer),
           CASE WHEN refused_by IS NULL THEN 'queued' ELSE 'dead_letter' END,
           CASE WHEN refused_by IS NOT NULL THEN now() END,
           CASE WHEN refused_by IS NOT NULL THEN jsonb_build_object(
               'type', 'QueueRefused', 'attempt', 0,
               'message', refused_by) END
    FROM gated
    ON CONFLICT (uid) DO NOTHING
    RETURNING queue, run_at, state
), notified_queue AS (
    SELECT pg_notify('kubetask_queue', queue)
    FROM (SELECT DISTINCT queue FROM inserted WHERE run_at <= now() AND state = 'queued') AS due
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM inserted)
)
SELECT (SELECT count(*) FROM inserted) AS admitted,
       (SELECT count(*) FROM notified_queue) AS queues_notified,
       (SELECT count(*) FROM notified_status) AS status_notified;

-- name: complete_and_claim
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
-- db.queue._with_limit, not bound, so the plan cache keeps one cheap
-- generic plan per limit instead of replanning every call on a big table.
-- %(runner)s is a literal too: "t.container IS NULL" for a worker (handler
-- tasks), "t.container IS NOT NULL" for the leader's pods (container tasks),
-- so that each finds its partial index (kubetask_tasks_claim, or
-- kubetask_tasks_container_claim).
--
-- The queue's row (kubetask_queues, a Queue object's mirror) gates the claim:
-- a paused queue claims nothing, and allowed_namespaces keeps out tasks of
-- other namespaces. A queue with no row is open and unlimited, at the cost
-- of one primary-key probe of a small table. A queue whose row sets a limit
-- (max_running, rate, concurrency_key_limit) is not claimed from here: the
-- statement says "limited" and the caller claims with claim_limited.
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
), queue_row AS (
    SELECT paused, allowed_namespaces,
           (max_running IS NOT NULL OR rate_tasks IS NOT NULL OR concurrency_key_limit IS NOT NULL) AS limited
    FROM kubetask_queues
    WHERE name = %(queue)s
), picked AS (
    SELECT id
    FROM kubetask_tasks AS t
    WHERE queue = %(queue)s AND state IN ('queued', 'retrying') AND run_at <= now() AND %(runner)s
      AND NOT EXISTS (SELECT FROM queue_row WHERE paused OR limited)
      AND (NOT EXISTS (SELECT FROM queue_row WHERE allowed_namespaces IS NOT NULL)
           OR t.namespace = ANY((SELECT allowed_namespaces FROM queue_row)::text[]))
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
              t.priority, t.run_at, t.container, t.permanent_exit_codes
), attempt AS (
    INSERT INTO kubetask_attempts (task_id, number, worker_pod, lease_owner, started_at)
    SELECT id, attempts, worker_pod, lease_owner, started_at FROM claimed
), notified_status AS (
    SELECT pg_notify('kubetask_status', '')
    WHERE EXISTS (SELECT FROM done) OR EXISTS (SELECT FROM claimed)
)
SELECT (SELECT coalesce(array_agg(id), '{}') FROM done) AS recorded,
       (SELECT count(*) FROM notified_status) AS notified,
       (SELECT coalesce(bool_or(limited AND NOT paused), false) FROM queue_row) AS limited,
       c.id, c.uid::text AS uid, c.namespace, c.name, c.queue, c.type, c.payload,
       c.attempts AS attempt, c.attempts - c.budget_base AS attempt_in_budget,
       c.timeout_seconds, c.max_retries, c.backoff_initial_seconds, c.backoff_factor,
       c.backoff_max_seconds, c.backoff_jitter, c.lease_owner, c.worker_pod,
       extract(epoch FROM c.started_at - c.run_at)::float8 AS waited_seconds,
       c.container, c.permanent_exit_codes
FROM (VALUES (1)) AS one (always) LEFT JOIN claimed AS c ON true
ORDER BY c.priority DESC, c.run_at, c.id;

-- name: lock_queue
-- The lock a limited queue's claimers take in turn, in the transaction of their claim_limited; and, for
-- that transaction only, no bitmap scans: claim_limited's counts of running tasks then walk
-- kubetask_tasks_lease_expiry with a plain index scan, which marks the entries of tasks no longer running
-- dead as it meets them, so the next claims skip them. A bitmap scan marks nothing: every task the queue
-- ran since the table's last vacuum was visited again on every claim, under the lock (measured: 19,200
-- entries for 32 running tasks, 1.3 ms of the claim's 1.9 ms; 0.04 ms and 32 entries so).
SELECT name, set_config('enable_bitmapscan', 'off', true) FROM kubetask_queues WHERE name = %(queue)s FOR UPDATE;

-- name: claim_limited
-- Claim up to %(limit)s due tasks of a queue whose row sets limits, within them: at most max_running
-- running, at most concurrency_key_limit running per concurrency key (a key at its limit waits where it
-- is: no attempt, no retry spent), and no more than the rate limit's token bucket holds.
-- Each count of running tasks stops at the limit it is compared with, walking kubetask_tasks_lease_expiry
-- in its order (no bitmap scan in this transaction: see lock_queue).
-- The caller holds the row's lock (lock_queue) in this transaction: the lock serialises the queue's
-- claimers, and because this statement started after the lock was granted its snapshot counts every
-- claim committed before it. The counts of running tasks go through kubetask_tasks_lease_expiry (every
-- running task, bounded by the workers' concurrency). %(limit)s and %(runner)s are literals, as in
-- complete_and_claim; the limits count the running tasks of both runners.
-- Always returns at least one row; throttled_seconds is set when the bucket holds less than a token.
WITH queue_row AS (
    SELECT paused, allowed_namespaces, max_running, rate_tasks, rate_period_seconds, concurrency_key_limit,
           tokens, tokens_at
    FROM kubetask_queues
    WHERE name = %(queue)s
), bucket AS (
    -- The rate limit's tokens now: refilled evenly since tokens_at (statement_timestamp(): after the
    -- lock was granted, so the bucket's clock never runs backwards), at most rate_tasks; NULL state: full.
    SELECT least(rate_tasks::float8,
                 coalesce(tokens + greatest(0, extract(epoch FROM statement_timestamp() - tokens_at))
                                   * rate_tasks / rate_period_seconds,
                          rate_tasks)) AS available
    FROM queue_row
    WHERE rate_tasks IS NOT NULL
), budget AS (
    -- How many may be claimed now (no row any more: the Queue went, nothing limits it).
    SELECT CASE
        WHEN coalesce(q.paused, false) THEN 0
        ELSE greatest(0, least(
            %(limit)s,
            coalesce(q.max_running - (SELECT count(*) FROM (
                                          SELECT FROM kubetask_tasks AS r
                                          WHERE r.queue = %(queue)s AND r.state = 'running'
                                          ORDER BY r.lease_expires_at LIMIT q.max_running) AS running),
                     %(limit)s),
            coalesce(floor((SELECT available FROM bucket))::bigint, %(limit)s)))
        END AS n
    FROM (VALUES (1)) AS one (always) LEFT JOIN queue_row AS q ON true
), picked AS (
    SELECT id, concurrency_key, priority, run_at
    FROM kubetask_tasks AS t
    WHERE queue = %(queue)s AND state IN ('queued', 'retrying') AND run_at <= now() AND %(runner)s
      AND (SELECT n FROM budget) > 0
      AND (NOT EXISTS (SELECT FROM queue_row WHERE allowed_namespaces IS NOT NULL)
           OR t.namespace = ANY((SELECT allowed_namespaces FROM queue_row)::text[]))
      AND (t.concurrency_key IS NULL
           OR NOT EXISTS (SELECT FROM queue_row WHERE concurrency_key_limit IS NOT NULL)
           OR (SELECT count(*) FROM (
                   SELECT FROM kubetask_tasks AS r
                   WHERE r.queue = %(queue)s AND r.state = 'running' AND r.concurrency_key = t.concurrency_key
                   ORDER BY r.lease_expires_at LIMIT (SELECT concurrency_key_limit FROM queue_row)) AS running)
              < (SELECT concurrency_key_limit FROM queue_row))
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), chosen AS (
    -- Of the picked, the budget's worth, and no more of one key than its limit leaves room for. Picked rows
    -- not chosen stay locked only until this transaction ends; a later claim takes them.
    SELECT c.id
    FROM (SELECT p.*, row_number() OVER (PARTITION BY p.concurrency_key
                                         ORDER BY p.priority DESC, p.run_at, p.id) AS nth_of_key
          FROM picked AS p) AS c
    WHERE c.concurrency_key IS NULL
       OR NOT EXISTS (SELECT FROM queue_row WHERE concurrency_key_limit IS NOT NULL)
       OR c.nth_of_key + (SELECT count(*) FROM (
                              SELECT FROM kubetask_tasks AS r
                              WHERE r.queue = %(queue)s AND r.state = 'running'
                                AND r.concurrency_key = c.concurrency_key
                              ORDER BY r.lease_expires_at LIMIT (SELECT concurrency_key_limit FROM queue_row)) AS running)
          <= (SELECT concurrency_key_limit FROM queue_row)
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT (SELECT n FROM budget)
), claimed AS (
    UPDATE kubetask_tasks AS t
    SET state = 'running',
        attempts = t.attempts + 1,
        lease_owner = %(lease_owner)s,
        worker_pod = %(worker_pod)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        started_at = now(),
        version = t.version + 1
    WHERE t.id = ANY(ARRAY(SELECT id FROM chosen))
    RETURNING t.id, t.uid, t.namespace, t.name, t.queue, t.type, t.payload, t.attempts, t.budget_base,
              t.timeout_seconds, t.max_retries, t.backoff_initial_seconds, t.backoff_factor,
              t.backoff_max_seconds, t.backoff_jitter, t.lease_owner, t.worker_pod, t.started_at,
              t.priority, t.run_at, t.container, t.permanent_exit_codes
), attempt AS (
    INSERT INTO kubetask_attempts (task_id, number, worker_pod, lease_owner, started_at)
    SELECT id, attempts, worker_pod, lease_owner, started_at FROM claimed
), spent AS (
    -- The tokens this claim took (the bucket's state moves to now even when it took none).
    UPDATE kubetask_queues AS q
    SET tokens = b.available - (SELECT count(*) FROM claimed), tokens_at = statement_timestamp()
    FROM bucket AS b
    WHERE q.name = %(queue)s
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM claimed)
)
SELECT (SELECT count(*) FROM notified_status) AS notified,
       -- Seconds until the bucket holds a whole token again, when this claim left it less than one:
       -- the worker looks again then, rather than at its next poll (which would waste the refill).
       (SELECT (1 - (b.available - (SELECT count(*) FROM claimed))) * q.rate_period_seconds / q.rate_tasks
        FROM bucket AS b, queue_row AS q
        WHERE b.available - (SELECT count(*) FROM claimed) < 1)::float8 AS throttled_seconds,
       c.id, c.uid::text AS uid, c.namespace, c.name, c.queue, c.type, c.payload,
       c.attempts AS attempt, c.attempts - c.budget_base AS attempt_in_budget,
       c.timeout_seconds, c.max_retries, c.backoff_initial_seconds, c.backoff_factor,
       c.backoff_max_seconds, c.backoff_jitter, c.lease_owner, c.worker_pod,
       extract(epoch FROM c.started_at - c.run_at)::float8 AS waited_seconds,
       c.container, c.permanent_exit_codes
FROM (VALUES (1)) AS one (always) LEFT JOIN claimed AS c ON true
ORDER BY c.priority DESC, c.run_at, c.id;

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

-- name: fail
-- A failed attempt (the handler raised or timed out). Retrying after
-- retry_in seconds on the database's clock (so a worker whose clock is off
-- cannot shorten or stretch a backoff), or at retry_at; both NULL: dead
-- letter. When the retry is already due the queue is notified at once.
WITH decision AS (
    SELECT coalesce(now() + make_interval(secs => %(retry_in)s::float8), %(retry_at)s::timestamptz) AS retry_at
), failed AS (
    UPDATE kubetask_tasks
    SET state = CASE WHEN d.retry_at IS NULL THEN 'dead_letter' ELSE 'retrying' END,
        run_at = coalesce(d.retry_at, run_at),
        finished_at = CASE WHEN d.retry_at IS NULL THEN now() END,
        last_error = jsonb_build_object(
            'type', %(error_type)s::text, 'message', %(message)s::text, 'attempt', attempts),
        lease_owner = NULL,
        lease_expires_at = NULL,
        version = version + 1
    FROM decision AS d
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

-- name: cancel
-- Tasks whose object was deleted: unfinished ones become cancelled, their running attempt
-- too; the history stays.
WITH cancelled AS (
    UPDATE kubetask_tasks
    SET state = 'cancelled',
        finished_at = now(),
        lease_owner = NULL,
        lease_expires_at = NULL,
        version = version + 1
    WHERE uid = ANY(%(uids)s::uuid[]) AND state IN ('queued', 'running', 'retrying')
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

-- name: cancel_or_tombstone
-- A Task deleted while it could still be waiting for admission (the watch saw
-- it with no phase, or Pending): cancel its row, or, when admission has not
-- inserted one yet, insert it cancelled in its place. The uid's unique key
-- orders the two statements, whichever comes first: the INSERT of admission
-- then finds the tombstone and skips the uid (ON CONFLICT DO NOTHING), or this
-- one finds the admitted row and cancels it. A tombstone needs no status
-- patch (its object is gone), so it is born mirrored.
WITH cancelled AS (
    INSERT INTO kubetask_tasks AS t (
        uid, namespace, name, type, state, finished_at, object_deleted_at, last_error,
        mirrored_version, mirrored_state)
    VALUES (%(uid)s::uuid, %(namespace)s, %(name)s, %(type)s, 'cancelled', now(), now(),
            jsonb_build_object('type', 'Cancelled', 'attempt', 0,
                               'message', 'the Task was deleted before it was admitted'),
            1, 'cancelled')
    ON CONFLICT (uid) DO UPDATE
    SET state = 'cancelled',
        finished_at = now(),
        lease_owner = NULL,
        lease_expires_at = NULL,
        version = t.version + 1
    WHERE t.state IN ('queued', 'running', 'retrying')
    RETURNING t.id, t.attempts, (t.xmax = 0) AS tombstone
), attempt AS (
    UPDATE kubetask_attempts AS a
    SET outcome = 'cancelled', finished_at = now(), error_type = 'Cancelled',
        error_message = 'the Task was deleted while this attempt was running'
    FROM cancelled AS c
    WHERE a.task_id = c.id AND a.number = c.attempts AND a.outcome = 'running'
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM cancelled WHERE NOT tombstone)
)
SELECT (SELECT count(*) FROM cancelled) AS tasks,
       (SELECT count(*) FROM notified_status) AS notified;

-- name: refuse_retry
-- A retry the operator refuses (its queue has no Queue object, and one is required): the token is recorded
-- as acted on, the task stays where it is. 1 the first time a token is seen, so the refusal is said once.
-- Not a status change: no version bump.
WITH refused AS (
    UPDATE kubetask_tasks
    SET retry_token = %(token)s::text
    WHERE uid = %(uid)s::uuid AND state IN ('dead_letter', 'succeeded')
      AND retry_token IS DISTINCT FROM %(token)s::text
    RETURNING id
)
SELECT count(*) AS tasks FROM refused;

-- name: retry_dead
-- A fresh retry budget (budget_base = attempts); attempt numbers and history
-- continue. The old result goes (it would contradict the new phase); the last
-- error stays as the reason for the retry until a new attempt replaces it.
-- A token already acted on changes nothing; a task that has made
-- %(max_attempts)s attempts in all is not retried again.
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
      AND attempts < %(max_attempts)s
    RETURNING queue
), notified_queue AS (
    SELECT pg_notify('kubetask_queue', queue) FROM requeued
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM requeued)
)
SELECT (SELECT count(*) FROM requeued) AS tasks,
       (SELECT count(*) FROM notified_queue) AS queues_notified,
       (SELECT count(*) FROM notified_status) AS status_notified;
