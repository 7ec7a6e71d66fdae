-- kubetask.db.queues: see kubetask/db/sql.py for the conventions every file follows.

-- name: upsert_queue
-- A Queue object as the operator last saw it. A changed rate refills its bucket; work the change makes
-- claimable (resumed, a limit raised, a namespace let in) wakes the queue's workers.
WITH written AS (
    INSERT INTO kubetask_queues AS q (
        name, paused, max_running, rate_tasks, rate_period_seconds, concurrency_key_limit,
        namespace_selector, allowed_namespaces, generation, pod_policy, updated_at)
    VALUES (%(name)s, %(paused)s, %(max_running)s, %(rate_tasks)s, %(rate_period_seconds)s,
            %(concurrency_key_limit)s, %(namespace_selector)s, %(allowed_namespaces)s::text[], %(generation)s,
            %(pod_policy)s, now())
    ON CONFLICT (name) DO UPDATE
    SET paused = excluded.paused,
        max_running = excluded.max_running,
        rate_tasks = excluded.rate_tasks,
        rate_period_seconds = excluded.rate_period_seconds,
        concurrency_key_limit = excluded.concurrency_key_limit,
        namespace_selector = excluded.namespace_selector,
        allowed_namespaces = excluded.allowed_namespaces,
        generation = excluded.generation,
        pod_policy = excluded.pod_policy,
        updated_at = now(),
        tokens = CASE WHEN (q.rate_tasks, q.rate_period_seconds)
                           IS NOT DISTINCT FROM (excluded.rate_tasks, excluded.rate_period_seconds)
                      THEN q.tokens END,
        tokens_at = CASE WHEN (q.rate_tasks, q.rate_period_seconds)
                              IS NOT DISTINCT FROM (excluded.rate_tasks, excluded.rate_period_seconds)
                         THEN q.tokens_at END
    RETURNING name
), notified_queue AS (
    SELECT pg_notify('kubetask_queue', name) FROM written
)
SELECT (SELECT count(*) FROM written) AS written,
       (SELECT count(*) FROM notified_queue) AS queues_notified;

-- name: delete_queue
-- The Queue object is gone: its queue is open and unlimited again, and its workers are woken.
WITH deleted AS (
    DELETE FROM kubetask_queues WHERE name = %(name)s RETURNING name
), notified_queue AS (
    SELECT pg_notify('kubetask_queue', name) FROM deleted
)
SELECT (SELECT count(*) FROM deleted) AS deleted,
       (SELECT count(*) FROM notified_queue) AS queues_notified;

-- name: get_queue
-- One queue's row, for the operator and the tests.
SELECT name, paused, max_running, rate_tasks, rate_period_seconds, concurrency_key_limit,
       namespace_selector, allowed_namespaces, generation, pod_policy
FROM kubetask_queues
WHERE name = %(name)s;

-- name: list_queues
-- Every queue's row, for the operator to compare with the Queue objects.
SELECT name, paused, max_running, rate_tasks, rate_period_seconds, concurrency_key_limit,
       namespace_selector, allowed_namespaces, generation, pod_policy
FROM kubetask_queues
ORDER BY name;

-- name: refuse_outside_namespaces
-- Waiting tasks (queued or retrying) of a queue whose row no longer admits their namespace (the Queue was
-- created after them, its selector changed, the namespace was relabelled): refused for good, as at
-- admission, with the message from %(refusal)s. Running tasks finish.
WITH refused AS (
    UPDATE kubetask_tasks AS t
    SET state = 'dead_letter',
        finished_at = now(),
        last_error = jsonb_build_object(
            'type', 'QueueRefused', 'attempt', t.attempts,
            'message', format(%(refusal)s::text, t.namespace, t.queue, q.namespace_selector::text, t.name)),
        version = t.version + 1
    FROM kubetask_queues AS q
    WHERE t.queue = q.name AND q.allowed_namespaces IS NOT NULL
      AND t.state IN ('queued', 'retrying') AND NOT (t.namespace = ANY(q.allowed_namespaces))
    RETURNING t.namespace, t.name, t.queue
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM refused)
)
SELECT r.namespace, r.name, r.queue, (SELECT count(*) FROM notified_status) AS notified
FROM refused AS r
ORDER BY r.queue, r.namespace, r.name;

-- name: refuse_without_queue
-- When the operator requires a Queue object for every queue: waiting tasks (queued or retrying) of a queue
-- not in %(known)s (the Queue objects that exist) are refused for good, with the message from %(refusal)s
-- (the Queue was deleted while they waited, or they were admitted before the operator required one).
-- Read through the claim index (every waiting task); running tasks finish.
WITH refused AS (
    UPDATE kubetask_tasks AS t
    SET state = 'dead_letter',
        finished_at = now(),
        last_error = jsonb_build_object(
            'type', 'QueueRefused', 'attempt', t.attempts,
            'message', format(%(refusal)s::text, t.namespace, t.queue, '', t.name)),
        version = t.version + 1
    WHERE t.state IN ('queued', 'retrying') AND NOT (t.queue = ANY(%(known)s::text[]))
    RETURNING t.namespace, t.name, t.queue
), notified_status AS (
    SELECT pg_notify('kubetask_status', '') WHERE EXISTS (SELECT FROM refused)
)
SELECT r.namespace, r.name, r.queue, (SELECT count(*) FROM notified_status) AS notified
FROM refused AS r
ORDER BY r.queue, r.namespace, r.name;
