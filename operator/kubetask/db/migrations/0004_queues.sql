-- kubetask schema, version 4: Queues, the admin's limits on a queue, and concurrency keys.
--
-- A row here mirrors a Queue object (cluster-scoped, written by the operator
-- from its watch); a queue with no row is unlimited and open to every
-- namespace, as every queue was before. The claim reads the row in the same
-- transaction as it claims (kubetask.db.queue), so the limits hold across
-- every worker:
--   paused                  nothing is claimed;
--   max_running             at most this many of the queue's tasks running;
--   rate_tasks / rate_period_seconds
--                           a token bucket of rate_tasks tokens refilled evenly
--                           over rate_period_seconds; tokens/tokens_at are its
--                           state, on the database's clock (NULL: full);
--   concurrency_key_limit   at most this many running tasks per concurrency_key;
--   namespace_selector      the Queue's spec.namespaceSelector, as written;
--   allowed_namespaces      the namespaces it matched when the operator last
--                           looked (NULL: every namespace). A task from any
--                           other namespace is never claimed, and is refused.
--
-- No new index: the limited claim counts the queue's running tasks (and
-- those of a key) through kubetask_tasks_lease_expiry, whose rows are the
-- running tasks of every queue, bounded by the workers' concurrency.

CREATE TABLE IF NOT EXISTS kubetask_queues (
    name text PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false,
    max_running integer,
    rate_tasks integer,
    rate_period_seconds integer,
    concurrency_key_limit integer,
    tokens float8,
    tokens_at timestamptz,
    namespace_selector jsonb NOT NULL DEFAULT '{}',
    allowed_namespaces text[],
    generation bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT kubetask_queues_max_running_positive CHECK (max_running IS NULL OR max_running >= 1),
    CONSTRAINT kubetask_queues_rate_whole
        CHECK ((rate_tasks IS NULL) = (rate_period_seconds IS NULL)
               AND (rate_tasks IS NULL OR (rate_tasks >= 1 AND rate_period_seconds >= 1))),
    CONSTRAINT kubetask_queues_key_limit_positive CHECK (concurrency_key_limit IS NULL OR concurrency_key_limit >= 1),
    CONSTRAINT kubetask_queues_bucket_whole CHECK ((tokens IS NULL) = (tokens_at IS NULL))
);

-- spec.concurrencyKey of the Task; NULL: no key (no per-key limit applies).
ALTER TABLE kubetask_tasks ADD COLUMN IF NOT EXISTS concurrency_key text;

