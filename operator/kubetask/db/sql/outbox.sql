-- kubetask.db.outbox: see kubetask/db/sql.py for the conventions every file follows.

-- name: pending_status
-- The outbox: statuses behind their rows, oldest version first, each with its
-- latest attempts (oldest of them first) fetched in the same round trip; a
-- container attempt's exit code and reason come along (its log tail does not:
-- 64 KiB per attempt is for `kubetask logs`, not for the status).
SELECT t.id, t.uid::text AS uid, t.namespace, t.name, t.type, t.queue, t.state,
       t.attempts, t.attempts - t.budget_base AS attempts_in_budget, t.max_retries,
       t.run_at, t.worker_pod, t.created_at, t.started_at, t.finished_at, t.result, t.last_error,
       t.version, t.mirrored_state, coalesce(h.history, '[]'::json) AS history
FROM kubetask_tasks AS t
LEFT JOIN LATERAL (
    SELECT json_agg(json_build_object(
               'number', a.number, 'worker_pod', a.worker_pod, 'started_at', a.started_at,
               'finished_at', a.finished_at, 'outcome', a.outcome,
               'error_type', a.error_type, 'error_message', a.error_message,
               'exit_code', a.exit_code, 'reason', a.reason)
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
