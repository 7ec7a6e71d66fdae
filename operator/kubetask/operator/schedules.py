"""The scheduler, leader only: TaskSchedules make Tasks, each tick once.

A pass reads the database's clock, LISTs the TaskSchedules and the Tasks they created (label
``kubetask.io/schedule``, owned by the schedule's uid), and for each schedule:

1. checks what the API server could not (``model.TaskScheduleSpec``: a schedule that never fires,
   a zone the IANA database lacks) and refuses a bad one visibly: Scheduled=False naming the field,
   and a Warning Event when that changes. Nothing is created for it.
2. finishes a tick claimed by a pass that died before creating its Task (a restart, a failover),
   unless it is now later than startingDeadlineSeconds (then it is missed).
3. asks the planner (``kubetask.cron.plan``) what the latest tick since the last recorded one is
   and what to do with it, and records that in PostgreSQL (``db.ticks.record``). A run is claimed
   first: only the pass whose insert wins creates the Task, named from the tick
   (``<schedule>-<unix minutes>``), owned by the schedule and labelled with it. A 409 means a pass
   before this one created it: nothing to do. ``Replace`` deletes the unfinished runs first (the
   deletion cancels them, as any deleted Task).
4. deletes its finished Tasks beyond successfulHistoryLimit / failedHistoryLimit, oldest first
   (the history stays in PostgreSQL), and patches its status when it changed.

Each tick a pass records (or settles) is counted in ``kubetask_schedule_ticks_total`` by outcome,
by that pass only, so a sum over replicas counts it once; ticks passed over count as missed (as
suspended during a suspension). A schedule no longer listed leaves the metric.

The next pass starts at the earliest next tick of all schedules, or after
``schedule_interval_seconds`` (a new or edited schedule is seen then). Everything a pass needs is
in the rows and the objects, so a restarted or new leader goes on where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Sequence
from typing import Any

import pydantic

from kubetask import cron, db, kube, logs, model
from kubetask.operator.runtime import Runtime, ours
from kubetask.states import TickOutcome

log = logging.getLogger("kubetask.operator")

UTC = datetime.timezone.utc
SCHEDULED = "Scheduled"
"""The condition type of a TaskSchedule's status."""
PRUNE_MARGIN = datetime.timedelta(minutes=5)
"""Tick rows of a schedule the LIST did not see are forgotten only if older than the LIST by this much."""
OUTCOME_OF = {cron.Action.SKIP: TickOutcome.SKIPPED, cron.Action.MISS: TickOutcome.MISSED,
              cron.Action.SUSPEND: TickOutcome.SUSPENDED}
FAILED_PHASES = (model.Phase.DEAD_LETTER.value, model.Phase.CANCELLED.value)


def rfc3339(at: datetime.datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclasses.dataclass
class Run:
    """A Task a schedule created, as listed."""

    name: str
    uid: str
    phase: str | None
    created: str
    finished_at: datetime.datetime | None
    tick: datetime.datetime | None
    """The tick it was created for (its ``kubetask.io/scheduled-at`` annotation)."""

    @property
    def finished(self) -> bool:
        return self.phase is not None and model.Phase(self.phase).finished

    @classmethod
    def of(cls, body: dict[str, Any]) -> "Run":
        meta, status = body["metadata"], body.get("status") or {}
        return cls(meta["name"], meta["uid"], status.get("phase"), meta.get("creationTimestamp") or "",
                   parse_time(status.get("finishedAt")),
                   parse_time((meta.get("annotations") or {}).get(model.TICK_ANNOTATION)))


async def run_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    await schedule_pass(rt, conn, now=await db.upkeep.clock(conn))
    return False


def interval(rt: Runtime) -> float:
    """Until the earliest next tick (a little after, so it is due), at most ``schedule_interval_seconds``."""
    return max(0.0, min(rt.config.schedule_interval_seconds, rt.next_tick_at - time.monotonic() + 0.05))


async def schedule_pass(rt: Runtime, conn: db.connection.Conn, now: datetime.datetime) -> None:
    """One pass over every TaskSchedule, on the clock ``now`` (the database's, in production)."""
    namespaces = rt.config.namespaces
    try:
        listed = await rt.kube.schedules(namespaces)
    except kube.NotFound:
        if rt.schedules_served is not False:
            log.warning("the TaskSchedule CRD is not installed (crds/taskschedule.yaml, or the chart's crds.install): "
                        "no schedule is served until it is")
        rt.schedules_served = False
        rt.next_tick_at = float("inf")
        rt.meters.forget_schedules(())
        return
    rt.schedules_served = True
    schedules = [body for body in listed
                 if ours(rt.config, {"spec": (body.get("spec") or {}).get("template") or {}})]
    rt.meters.forget_schedules({(body["metadata"]["namespace"], body["metadata"]["name"]) for body in schedules})
    runs: dict[str, list[Run]] = {}
    for task in await rt.kube.scheduled_tasks(namespaces):
        for owner in task["metadata"].get("ownerReferences") or ():
            if owner.get("kind") == model.SCHEDULE_KIND and owner.get("controller"):
                runs.setdefault(owner["uid"], []).append(Run.of(task))
    uids = [body["metadata"]["uid"] for body in schedules]
    latest = await db.ticks.latest(conn, uids)
    soonest: datetime.datetime | None = None
    for body in schedules:
        uid = body["metadata"]["uid"]
        next_at = await _schedule(rt, conn, body, runs.get(uid, []), latest.get(uid), now)
        if next_at is not None and (soonest is None or next_at < soonest):
            soonest = next_at
    rt.next_tick_at = (float("inf") if soonest is None
                       else time.monotonic() + (soonest - now).total_seconds())
    await db.ticks.prune(conn, uids, listed_before=now - PRUNE_MARGIN)


async def _schedule(rt: Runtime, conn: db.connection.Conn, body: dict[str, Any], runs: list[Run],
                    last: db.ticks.Tick | None, now: datetime.datetime) -> datetime.datetime | None:
    """One schedule's share of a pass; its next tick."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    status: dict[str, Any] = dict(body.get("status") or {})
    try:
        spec = model.TaskScheduleSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as err:
        await _refuse(rt, body, _refusal(err))
        return None
    created: Run | None = None
    missed = 0
    if last is not None and last.outcome == TickOutcome.CLAIMED:
        created, missed = await _finish_claim(rt, conn, body, spec, last, now)
    since = last.at if last is not None else parse_time(meta.get("creationTimestamp")) or now
    unfinished = [run for run in runs if not run.finished]
    if created is not None and created.uid not in {run.uid for run in unfinished}:
        unfinished.append(created)  # just created for a claimed tick: Forbid waits for it too
    replaced = False
    planned = cron.plan(spec, since=since, now=now, unfinished=bool(unfinished))
    if planned.action == cron.Action.RUN and planned.tick is not None:
        task_name = cron.task_name(name, planned.tick)
        if await db.ticks.record(conn, uid=uid, at=planned.tick, namespace=namespace, schedule=name,
                                 outcome=TickOutcome.CLAIMED, task_name=task_name, passed_over=planned.passed_over):
            missed += planned.passed_over
            _count(rt, body, TickOutcome.MISSED, planned.passed_over)
            if spec.concurrency_policy == model.ConcurrencyPolicy.REPLACE:
                await _replace(rt, body, unfinished, task_name)
                replaced = True
            created = await _create(rt, conn, body, spec, planned.tick, now) or created
    elif planned.action is not None and planned.tick is not None:
        if await db.ticks.record(conn, uid=uid, at=planned.tick, namespace=namespace, schedule=name,
                                 outcome=OUTCOME_OF[planned.action], passed_over=planned.passed_over):
            _count(rt, body, OUTCOME_OF[planned.action])
            if planned.action != cron.Action.SUSPEND:  # a suspension's ticks are not missed: none was to run
                missed += planned.passed_over + (1 if planned.action == cron.Action.MISS else 0)
                _count(rt, body, TickOutcome.MISSED, planned.passed_over)
            else:
                _count(rt, body, TickOutcome.SUSPENDED, planned.passed_over)
            if planned.action == cron.Action.SKIP:
                log.info("TaskSchedule %s/%s: tick %s skipped, %s still running (concurrencyPolicy Forbid)",
                         namespace, name, rfc3339(planned.tick), ", ".join(r.name for r in unfinished),
                         extra=logs.about(namespace, name, uid))
    if missed:
        message = (f"{missed} tick(s) up to {rfc3339(planned.tick or now)} did not run: the operator could not create "
                   "them in time (it was down, or the API server away); ticks missed in a row make one run at most, "
                   "within spec.startingDeadlineSeconds")
        log.warning("TaskSchedule %s/%s: %s", namespace, name, message, extra=logs.about(namespace, name, uid))
        rt.in_background(rt.kube.post_event(namespace, name, uid, "Missed", message, warning=True,
                                            kind=model.SCHEDULE_KIND))
    kept = await _trim_history(rt, body, spec, runs)
    active = [] if replaced else unfinished
    if created is not None and created.uid not in {run.uid for run in active}:
        active.append(created)
    await _patch_status(rt, body, spec, status, planned, kept, active, created, missed)
    return None if spec.suspend else planned.next_at


def _count(rt: Runtime, body: dict[str, Any], outcome: TickOutcome, count: int = 1) -> None:
    """Count ticks this pass recorded (``kubetask_schedule_ticks_total``); passed-over ticks count as their kind."""
    rt.meters.schedule_ticks(body["metadata"]["namespace"], body["metadata"]["name"], outcome.value, count)


async def _settle(rt: Runtime, conn: db.connection.Conn, body: dict[str, Any], tick: datetime.datetime,
                  outcome: TickOutcome) -> None:
    """End a claimed tick, counted by the pass that ended it only (another may have settled it meanwhile)."""
    if await db.ticks.settle(conn, body["metadata"]["uid"], tick, outcome):
        _count(rt, body, outcome)


def _refusal(err: pydantic.ValidationError) -> tuple[str, str]:
    """(reason, message naming the field) of a spec the operator refuses."""
    first = err.errors()[0]
    message = str(first.get("msg", "")).removeprefix("Value error, ")
    if not message.startswith("spec."):
        message = f"spec.{'.'.join(str(part) for part in first.get('loc', ()))}: {message}"
    reason = ("InvalidSchedule" if message.startswith("spec.schedule")
              else "InvalidTimeZone" if message.startswith("spec.timeZone") else "InvalidSpec")
    return reason, message


async def _refuse(rt: Runtime, body: dict[str, Any], refusal: tuple[str, str]) -> None:
    meta = body["metadata"]
    reason, field_message = refusal
    message = f"{field_message}; no Task is created until it is fixed"
    status = body.get("status") or {}
    before = _condition(status)
    if before is not None and before.get("reason") == reason and before.get("message") == message:
        return
    log.warning("TaskSchedule %s/%s refused: %s", meta["namespace"], meta["name"], field_message,
                extra=logs.about(meta["namespace"], meta["name"], meta["uid"]))
    rt.in_background(rt.kube.post_event(meta["namespace"], meta["name"], meta["uid"], reason, message,
                                        warning=True, kind=model.SCHEDULE_KIND))
    await rt.kube.patch_schedule_status(meta["namespace"], meta["name"], meta["uid"], {
        "nextScheduleTime": None,
        "conditions": [_new_condition(before, "False", reason, message)],
        "observedGeneration": meta.get("generation"),
    })


def _condition(status: dict[str, Any]) -> dict[str, Any] | None:
    for condition in status.get("conditions") or ():
        if condition.get("type") == SCHEDULED:
            return dict(condition)
    return None


def _new_condition(before: dict[str, Any] | None, state: str, reason: str, message: str) -> dict[str, Any]:
    transition = (before.get("lastTransitionTime") if before is not None and before.get("status") == state
                  else None) or rfc3339(datetime.datetime.now(UTC))
    return {"type": SCHEDULED, "status": state, "reason": reason, "message": message,
            "lastTransitionTime": transition}


async def _finish_claim(rt: Runtime, conn: db.connection.Conn, body: dict[str, Any], spec: model.TaskScheduleSpec,
                        last: db.ticks.Tick, now: datetime.datetime) -> tuple[Run | None, int]:
    """A tick claimed by a pass that did not get to create its Task: create it now, or miss it if too late."""
    deadline = spec.starting_deadline_seconds
    if deadline is not None and (now - last.at).total_seconds() > deadline:
        await _settle(rt, conn, body, last.at, TickOutcome.MISSED)
        return None, 1
    return await _create(rt, conn, body, spec, last.at, now), 0


async def _create(rt: Runtime, conn: db.connection.Conn, body: dict[str, Any], spec: model.TaskScheduleSpec,
                  tick: datetime.datetime, now: datetime.datetime) -> Run | None:
    """Create the claimed tick's Task (a 409: it exists already) and settle the tick; the Task's reference."""
    meta = body["metadata"]
    namespace, schedule, uid = meta["namespace"], meta["name"], meta["uid"]
    name = cron.task_name(schedule, tick)
    task = cron.task_body(body, name, {model.TICK_ANNOTATION: rfc3339(tick)})
    about = logs.about(namespace, schedule, uid)
    try:
        stored = await rt.kube.create_task(namespace, task)
    except kube.Conflict:
        existing = await rt.kube.task(namespace, name)
        stored = existing if existing is not None else {"metadata": {"name": name, "uid": ""}}
        log.info("TaskSchedule %s/%s: the Task %s of the tick %s existed already (created by an earlier pass)",
                 namespace, schedule, name, rfc3339(tick), extra=about)
        await _settle(rt, conn, body, tick, TickOutcome.CREATED)
        return dataclasses.replace(Run.of(stored), tick=tick)
    except kube.ApiError as err:
        if not 400 <= err.status < 500 or err.status == 429:
            raise  # the API server is away or busy: the claim stays, the next pass creates it
        message = f"the Task {name} for the tick {rfc3339(tick)} was refused by the API server: {err}"
        log.warning("TaskSchedule %s/%s: %s", namespace, schedule, message, extra=about)
        rt.in_background(rt.kube.post_event(namespace, schedule, uid, "CreateRefused", message, warning=True,
                                            kind=model.SCHEDULE_KIND))
        await _settle(rt, conn, body, tick, TickOutcome.MISSED)
        return None
    await _settle(rt, conn, body, tick, TickOutcome.CREATED)
    log.info("TaskSchedule %s/%s: created Task %s for the tick %s (%.0f s after it)", namespace, schedule, name,
             rfc3339(tick), (now - tick).total_seconds(), extra=about)
    return dataclasses.replace(Run.of(stored), tick=tick)


async def _replace(rt: Runtime, body: dict[str, Any], unfinished: Sequence[Run], successor: str) -> None:
    meta = body["metadata"]
    for run in unfinished:
        try:
            await rt.kube.delete_task(meta["namespace"], run.name, run.uid)
        except (kube.NotFound, kube.Conflict):
            continue
        message = f"deleted the unfinished Task {run.name} (cancelled) for {successor} (concurrencyPolicy Replace)"
        log.info("TaskSchedule %s/%s: %s", meta["namespace"], meta["name"], message,
                 extra=logs.about(meta["namespace"], meta["name"], meta["uid"]))
        rt.in_background(rt.kube.post_event(meta["namespace"], meta["name"], meta["uid"], "Replaced", message,
                                            kind=model.SCHEDULE_KIND))


async def _trim_history(rt: Runtime, body: dict[str, Any], spec: model.TaskScheduleSpec,
                        runs: list[Run]) -> list[Run]:
    """Delete finished runs beyond the history limits, oldest first; the runs kept."""
    meta = body["metadata"]
    gone: set[str] = set()
    for phases, limit in (((model.Phase.SUCCEEDED.value,), spec.successful_history_limit),
                          (FAILED_PHASES, spec.failed_history_limit)):
        finished = sorted((run for run in runs if run.phase in phases), key=lambda run: (run.created, run.name))
        for run in finished[:max(len(finished) - limit, 0)]:
            try:
                await rt.kube.delete_task(meta["namespace"], run.name, run.uid)
            except (kube.NotFound, kube.Conflict):
                pass
            gone.add(run.uid)
    return [run for run in runs if run.uid not in gone]


async def _patch_status(rt: Runtime, body: dict[str, Any], spec: model.TaskScheduleSpec, status: dict[str, Any],
                        planned: cron.Plan, runs: list[Run], active: list[Run], created: Run | None,
                        missed: int) -> None:
    meta = body["metadata"]
    last_schedule = max([t for t in [parse_time(status.get("lastScheduleTime")),
                                     created.tick if created is not None else None] if t is not None], default=None)
    succeeded = [run.finished_at for run in runs if run.phase == model.Phase.SUCCEEDED.value and run.finished_at]
    last_success = max([t for t in [parse_time(status.get("lastSuccessfulTime")), *succeeded] if t is not None],
                       default=None)
    before = _condition(status)
    condition = (_new_condition(before, "False", "Suspended",
                                "spec.suspend is true: no Task is created, and ticks that pass never run")
                 if spec.suspend else
                 _new_condition(before, "True", "OnSchedule", f"ticks of {spec.schedule!r} in {spec.time_zone}"))
    new: dict[str, Any] = {
        "lastScheduleTime": rfc3339(last_schedule) if last_schedule else None,
        "lastSuccessfulTime": rfc3339(last_success) if last_success else None,
        "nextScheduleTime": rfc3339(planned.next_at) if planned.next_at and not spec.suspend else None,
        "active": [{"name": run.name, "uid": run.uid} for run in active],
        "activeCount": len(active),
        "missed": int(status.get("missed") or 0) + missed,
        "conditions": [condition],
        "observedGeneration": meta.get("generation"),
    }
    current = {key: status.get(key) for key in new}
    current["active"] = current["active"] or []
    current["activeCount"] = current["activeCount"] or 0
    current["missed"] = current["missed"] or 0
    if new != current:
        await rt.kube.patch_schedule_status(meta["namespace"], meta["name"], meta["uid"], new)
