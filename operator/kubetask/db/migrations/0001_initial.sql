-- kubetask schema, version 1.
--
-- PostgreSQL is the source of truth for execution; a Task's status is a mirror
-- of one row of kubetask_tasks. The "outbox" the operator mirrors from is not a
-- separate table: it is the rows whose version is ahead of mirrored_version.
-- Every statement that changes a row's state bumps version and sends
-- NOTIFY kubetask_status in the same transaction, so a missed notification
-- costs latency, never a status.

CREATE TABLE kubetask_tasks (
    id bigserial PRIMARY KEY,
    -- The Task's metadata.uid: admission is idempotent on it.
    uid uuid NOT NULL CONSTRAINT kubetask_tasks_uid_key UNIQUE,
    namespace text NOT NULL,
    name text NOT NULL,
    -- Handler name.
    type text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    queue text NOT NULL DEFAULT 'default',
    -- Higher runs first.
    priority integer NOT NULL DEFAULT 0,

    -- Retry policy, copied from the Task spec at admission.
    max_retries integer NOT NULL DEFAULT 3,
    backoff_initial_seconds double precision NOT NULL DEFAULT 1,
    backoff_factor double precision NOT NULL DEFAULT 2,
    backoff_max_seconds double precision NOT NULL DEFAULT 300,
    -- Fraction (0..1) of the delay added or removed at random.
    backoff_jitter double precision NOT NULL DEFAULT 0.1,
    -- NULL: an attempt may run for as long as it likes.
    timeout_seconds integer,

    -- The state vocabulary:
    --   queued      waiting to be claimed (new, handed back, or retried from dead letter)
    --   running     claimed by a worker that holds a lease on it
    --   retrying    an attempt failed; waits until run_at for the next one
    --   succeeded   an attempt succeeded; result holds what it returned (final)
    --   dead_letter failed permanently or ran out of retries; last_error says why (final
    --               until someone asks for a retry)
    --   cancelled   the Task was deleted before it finished (final)
    state text NOT NULL DEFAULT 'queued',
    -- Attempts started, ever: the number of the latest attempt.
    attempts integer NOT NULL DEFAULT 0,
    -- The value of attempts when the current retry budget began. attempts -
    -- budget_base is how many attempts the budget has spent; a retry from dead
    -- letter sets it to attempts, a handed-back attempt adds one to it.
    budget_base integer NOT NULL DEFAULT 0,
    -- When the task is due (first run, next retry).
    run_at timestamptz NOT NULL DEFAULT now(),
    -- Worker instance ("{pod}/{random hex}") holding the lease: unique per
    -- process start, so a restarted pod with the same name cannot extend a dead
    -- predecessor's leases.
    lease_owner text,
    -- The pod that ran (or runs) the latest attempt.
    worker_pod text,
    lease_expires_at timestamptz,
    result jsonb,
    -- {type, message, attempt} of the latest failure.
    last_error jsonb,
    -- Delete the finished Task object this many seconds after finished_at
    -- (spec.ttlSecondsAfterFinished); the row and its history stay.
    ttl_seconds_after_finished integer,
    -- When the operator deleted the Task object for its TTL.
    object_deleted_at timestamptz,
    -- Value of the retry annotation last acted on: the same value never
    -- requeues twice (a watch event delivered again is harmless).
    retry_token text,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Start of the latest attempt.
    started_at timestamptz,
    finished_at timestamptz,

    -- Mirroring: version is bumped by every state-changing statement; the
    -- operator records the version (and state) it has written to the Task.
    version bigint NOT NULL DEFAULT 1,
    mirrored_version bigint NOT NULL DEFAULT 0,
    mirrored_state text,

    CONSTRAINT kubetask_tasks_state_valid
        CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'dead_letter', 'cancelled')),
    CONSTRAINT kubetask_tasks_finished_iff_final
        CHECK ((state IN ('succeeded', 'dead_letter', 'cancelled')) = (finished_at IS NOT NULL)),
    CONSTRAINT kubetask_tasks_running_has_lease
        CHECK (state <> 'running'
               OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL
                   AND worker_pod IS NOT NULL AND started_at IS NOT NULL)),
    CONSTRAINT kubetask_tasks_lease_only_while_running
        CHECK (state = 'running' OR (lease_owner IS NULL AND lease_expires_at IS NULL)),
    CONSTRAINT kubetask_tasks_budget_within_attempts
        CHECK (0 <= budget_base AND budget_base <= attempts),
    CONSTRAINT kubetask_tasks_retry_policy_valid
        CHECK (max_retries >= 0 AND backoff_initial_seconds >= 0 AND backoff_factor >= 1
               AND backoff_max_seconds >= 0 AND backoff_jitter BETWEEN 0 AND 1),
    CONSTRAINT kubetask_tasks_timeout_positive
        CHECK (timeout_seconds IS NULL OR timeout_seconds > 0),
    CONSTRAINT kubetask_tasks_ttl_not_negative
        CHECK (ttl_seconds_after_finished IS NULL OR ttl_seconds_after_finished >= 0),
    CONSTRAINT kubetask_tasks_payload_is_object
        CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT kubetask_tasks_mirror_not_ahead
        CHECK (mirrored_version <= version)
);

-- Shaped for the claim: equality on queue, then exactly its ORDER BY, over
-- exactly its state filter.
CREATE INDEX kubetask_tasks_claim
    ON kubetask_tasks (queue, priority DESC, run_at, id)
    WHERE state IN ('queued', 'retrying');

-- The mirror reads only rows whose status is behind, in version order.
CREATE INDEX kubetask_tasks_unmirrored
    ON kubetask_tasks (version, id)
    WHERE version > mirrored_version;

-- The rescuer looks for expired leases.
CREATE INDEX kubetask_tasks_lease_expiry
    ON kubetask_tasks (lease_expires_at)
    WHERE state = 'running';

-- The cleaner looks for finished rows whose Task object outlived its TTL.
CREATE INDEX kubetask_tasks_ttl
    ON kubetask_tasks (finished_at)
    WHERE ttl_seconds_after_finished IS NOT NULL AND object_deleted_at IS NULL
          AND state IN ('succeeded', 'dead_letter');

CREATE TABLE kubetask_attempts (
    task_id bigint NOT NULL REFERENCES kubetask_tasks (id) ON DELETE CASCADE,
    -- 1-based, increases forever (a retry from dead letter continues it).
    number integer NOT NULL,
    worker_pod text NOT NULL,
    lease_owner text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- The outcome vocabulary:
    --   running     in progress
    --   succeeded   the handler returned a result
    --   failed      the handler raised
    --   timeout     the handler ran past timeout_seconds
    --   lost        the worker's lease expired (pod died, or lost the database)
    --   cancelled   the Task was deleted while the attempt ran
    --   handed_back the worker shut down before the handler finished and
    --               returned the task to the queue
    outcome text NOT NULL DEFAULT 'running',
    error_type text,
    error_message text,
    traceback text,
    result jsonb,
    CONSTRAINT kubetask_attempts_pkey PRIMARY KEY (task_id, number),
    CONSTRAINT kubetask_attempts_number_positive CHECK (number >= 1),
    CONSTRAINT kubetask_attempts_outcome_valid
        CHECK (outcome IN ('running', 'succeeded', 'failed', 'timeout', 'lost', 'cancelled', 'handed_back')),
    CONSTRAINT kubetask_attempts_finished_iff_not_running
        CHECK ((outcome = 'running') = (finished_at IS NULL)),
    CONSTRAINT kubetask_attempts_result_only_on_success
        CHECK (result IS NULL OR outcome = 'succeeded')
);

-- A task never runs twice at once.
CREATE UNIQUE INDEX kubetask_attempts_one_running
    ON kubetask_attempts (task_id)
    WHERE outcome = 'running';
