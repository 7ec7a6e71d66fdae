-- kubetask.db.ticks: see kubetask/db/sql.py for the conventions every file follows.
--
-- The ticks of TaskSchedules (migration 0005). No statement here bumps a
-- task's version or notifies: a tick is not a task; its Task is admitted as
-- any other, through the API server.

-- name: latest
-- The newest tick row of each of these schedules: where each one's next pass starts.
SELECT DISTINCT ON (schedule_uid) schedule_uid::text, tick_at, outcome, task_name
FROM kubetask_schedule_ticks
WHERE schedule_uid = ANY(%(uids)s::uuid[])
ORDER BY schedule_uid, tick_at DESC;

-- name: record
-- Claims a tick (outcome claimed) or records it not run (skipped, missed,
-- suspended): one row per (schedule, tick) ever, so of two passes that decide
-- on the same tick only the first inserts. Returns a row only when it did.
INSERT INTO kubetask_schedule_ticks (schedule_uid, tick_at, namespace, schedule, outcome, task_name, passed_over)
VALUES (%(uid)s::uuid, %(tick_at)s, %(namespace)s, %(schedule)s, %(outcome)s, %(task_name)s, %(passed_over)s)
ON CONFLICT (schedule_uid, tick_at) DO NOTHING
RETURNING true;

-- name: settle
-- A claimed tick's end: created once its Task exists, or missed when the Task
-- could not be created before startingDeadlineSeconds ran out.
UPDATE kubetask_schedule_ticks
SET outcome = %(outcome)s::text, task_name = CASE WHEN %(outcome)s::text = 'created' THEN task_name END
WHERE schedule_uid = %(uid)s::uuid AND tick_at = %(tick_at)s AND outcome = 'claimed';

-- name: prune
-- Forgets ticks no pass can reach again: all but the newest %(keep)s of each
-- schedule (a pass starts from the newest), and every row of a schedule the
-- leader's LIST did not see, when written before that LIST began (a schedule
-- created meanwhile is not judged by it). Claimed rows wait for their Task.
DELETE FROM kubetask_schedule_ticks t
WHERE t.outcome <> 'claimed'
  AND (
    (NOT t.schedule_uid = ANY(%(live)s::uuid[]) AND t.recorded_at < %(listed_before)s)
    OR t.tick_at < (SELECT k.tick_at FROM kubetask_schedule_ticks k WHERE k.schedule_uid = t.schedule_uid
                    ORDER BY k.tick_at DESC OFFSET %(keep)s - 1 LIMIT 1)
  );
