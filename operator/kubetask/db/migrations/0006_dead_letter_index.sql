-- kubetask: no-transaction
-- kubetask schema, version 6: the dead letter, counted per queue without reading the history.
--
-- The Queue status (status.deadLetter, mirrored by the leader every
-- queue_status_interval_seconds) and `kubetask stats` count the tasks in the
-- dead letter of each queue (kubetask.db.reads.finished_counts). Without an
-- index that is a scan of every row ever finished, on every pass; this partial
-- index holds only the dead letter, so the count costs what the dead letter
-- holds (an index-only scan). Built concurrently: writes go on meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS kubetask_tasks_dead_letter
    ON kubetask_tasks (queue)
    WHERE state = 'dead_letter';
