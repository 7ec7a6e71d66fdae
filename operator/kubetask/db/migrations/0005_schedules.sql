-- kubetask schema, version 5: the ticks of TaskSchedules, each claimed once.
--
-- (0004 belongs to another change; the ledger records names, so the two apply
-- in either order.) A row is a tick of one schedule that the operator's leader
-- decided on: created (or being created) as a Task, or recorded as not run.
-- The primary key is the guarantee the issue asks for: two replicas during a
-- failover, a restart between the claim and the create, or a pass re-run
-- after an apiserver outage all insert the same (schedule uid, tick) and only
-- one insert wins (INSERT … ON CONFLICT DO NOTHING). The newest row of a
-- schedule is where its next pass starts from, so ticks that passed while the
-- operator was down are seen, and decided on once.
--
-- outcome (kubetask.states.TickOutcome):
--   claimed    the leader won the tick and is creating its Task; a pass that
--              finds one (the leader died in between) creates it again (the
--              Task's name comes from the tick, so a 409 means it exists).
--   created    the Task exists (or existed): task_name.
--   skipped    concurrencyPolicy Forbid, and an earlier run had not finished.
--   missed     later than startingDeadlineSeconds when the operator got to it.
--   suspended  passed while spec.suspend was true: never run, even on resume.
-- passed_over counts the ticks before this one, since the schedule's previous
-- row, that were never run: missed in a row while the operator was away.
--
-- Only the owner touches this table (kubetask.db.roles.OWNER_ONLY). Rows are
-- pruned by the leader (kubetask.db.ticks.prune): the newest few of each
-- schedule are kept, and none of a schedule that is gone.

CREATE TABLE kubetask_schedule_ticks (
    schedule_uid uuid NOT NULL,
    tick_at timestamptz NOT NULL,
    namespace text NOT NULL,
    schedule text NOT NULL,
    outcome text NOT NULL,
    task_name text,
    passed_over integer NOT NULL DEFAULT 0,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT kubetask_schedule_ticks_pkey PRIMARY KEY (schedule_uid, tick_at),
    CONSTRAINT kubetask_schedule_ticks_outcome_valid
        CHECK (outcome IN ('claimed', 'created', 'skipped', 'missed', 'suspended')),
    CONSTRAINT kubetask_schedule_ticks_run_has_task
        CHECK ((outcome IN ('claimed', 'created')) = (task_name IS NOT NULL)),
    CONSTRAINT kubetask_schedule_ticks_passed_over_not_negative CHECK (passed_over >= 0)
);
