-- kubetask: no-transaction
-- kubetask schema, version 8: the due container tasks, found without reading the handlers' queue.
--
-- The leader claims container tasks of every queue (kubetask.db.queue, the
-- claim with "container IS NOT NULL"); this partial index holds only waiting
-- container tasks, in claim order, so finding and claiming them costs what is
-- waiting of them, however deep the handler queues are. Built concurrently:
-- writes go on meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS kubetask_tasks_container_claim
    ON kubetask_tasks (queue, priority DESC, run_at, id)
    WHERE container IS NOT NULL AND state IN ('queued', 'retrying');
