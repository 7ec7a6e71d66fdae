-- kubetask schema, version 7: container Tasks, and the Queue's pod policy.
--
-- A Task with spec.container is run by the operator's leader as one pod per
-- attempt, never by a worker; its row says so:
--   kubetask_tasks.container            spec.container as written (camelCase
--                                       JSON); NULL for a handler Task. Every
--                                       worker claim says "container IS NULL",
--                                       the leader's "IS NOT NULL" (db.queue).
--   kubetask_tasks.permanent_exit_codes spec.permanentExitCodes: an attempt
--                                       ending with one is not retried.
--   kubetask_attempts.exit_code         the container's exit code (NULL: it
--                                       never ran, or a handler attempt);
--   kubetask_attempts.reason            why it ended, as the kubelet says it
--                                       (Completed, Error, OOMKilled,
--                                       DeadlineExceeded, Evicted, ErrImagePull…);
--   kubetask_attempts.log_tail          the last 64 KiB of the pod's log, read
--                                       before the pod is deleted.
--   kubetask_queues.pod_policy          the Queue's spec.podPolicy (JSON): what
--                                       the admin decides for every pod of the
--                                       queue (service account, placement,
--                                       security context, resources, images).
-- Adding nullable columns rewrites nothing. The index that finds due container
-- tasks is built concurrently by the next migration.

ALTER TABLE kubetask_tasks ADD COLUMN IF NOT EXISTS container jsonb;
ALTER TABLE kubetask_tasks ADD COLUMN IF NOT EXISTS permanent_exit_codes integer[] NOT NULL DEFAULT '{}';
ALTER TABLE kubetask_attempts ADD COLUMN IF NOT EXISTS exit_code integer;
ALTER TABLE kubetask_attempts ADD COLUMN IF NOT EXISTS reason text;
ALTER TABLE kubetask_attempts ADD COLUMN IF NOT EXISTS log_tail text;
ALTER TABLE kubetask_queues ADD COLUMN IF NOT EXISTS pod_policy jsonb NOT NULL DEFAULT '{}';
