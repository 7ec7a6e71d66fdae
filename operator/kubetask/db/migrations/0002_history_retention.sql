-- kubetask schema, version 2: history retention.
--
-- Finished rows (succeeded, dead_letter, cancelled) are the history. The
-- operator's retention (KUBETASK_HISTORY_RETENTION_DAYS,
-- KUBETASK_HISTORY_KEEP_LAST) deletes the oldest of them in bounded batches,
-- oldest finished_at first; "kubetask stats" counts those finished within a
-- window. Both read finished rows by finished_at, and only finished rows, so
-- one partial index serves both and costs nothing for queued and running
-- rows. The predicate is "finished_at IS NOT NULL" rather than the list of
-- final states: CHECK kubetask_tasks_finished_iff_final makes the two the
-- same rows, and the planner can prove this one from any range condition on
-- finished_at.
--
-- Attempts go with their task through the existing foreign key
-- (kubetask_attempts.task_id … ON DELETE CASCADE), found by the leading
-- column of kubetask_attempts_pkey.
--
-- Migrations run in one transaction, so this is a plain CREATE INDEX: it
-- blocks writes to kubetask_tasks while it builds (about a second per million
-- rows on a small machine).

CREATE INDEX kubetask_tasks_finished
    ON kubetask_tasks (finished_at)
    WHERE finished_at IS NOT NULL;
