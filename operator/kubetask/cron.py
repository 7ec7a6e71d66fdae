"""The scheduler's decisions, pure: which tick of a TaskSchedule is due, what to do with it, and the Task it makes.

Given the schedule's spec, where it last got to (its newest recorded tick, or its creation), the
database's clock and whether an earlier run is unfinished, ``plan`` says what one pass does. The
operator's scheduler (``kubetask.operator.schedules``) fetches those facts and applies the plan;
nothing here reads a clock, so the tests move time by passing ``now``.

CronJob's traps, decided here:

* Many ticks missed in a row (the operator was down, the API server away) make one run at most:
  the latest of them, if it is still within ``startingDeadlineSeconds`` (else it is recorded
  missed); the ones before it are counted as passed over, never run.
* A suspended schedule records each tick that passes as suspended, so resuming never runs a tick
  from the suspension.
* Ticks are computed in the schedule's zone by cronsim, as Debian cron does it: a fixed time
  (``30 2 * * *``) that a spring-forward jump skips runs when the clock jumps (03:00), one that a
  fall-back repeats runs once (the first); an interval schedule (``*/30 * * * *``) keeps firing in
  real time through both. Each tick is an instant (UTC) and the recorded key.
* An edited schedule takes effect from its newest recorded tick: no tick of the old schedule is run
  again, and none of the new one before that tick.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import zoneinfo
from collections.abc import Iterator, Mapping
from typing import Any

import cronsim

from kubetask import model

SCAN = 100
"""Ticks walked one by one from the schedule's last tick; past that many (a long outage of a
frequent schedule) the walk restarts a day before the latest tick (CronJob also stops counting at 100)."""
_DAY = datetime.timedelta(days=1)


class Action(enum.StrEnum):
    """What a pass does with the due tick."""

    RUN = "run"
    """Create its Task (concurrencyPolicy Replace: after deleting the unfinished runs)."""
    SKIP = "skip"
    """Record it skipped: concurrencyPolicy Forbid and an earlier run is unfinished."""
    MISS = "miss"
    """Record it missed: later than startingDeadlineSeconds."""
    SUSPEND = "suspend"
    """Record it suspended: it passed while spec.suspend was true."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """One pass's decision for one schedule."""

    tick: datetime.datetime | None
    """The due tick (UTC), the latest one at or before now; None when no tick passed since the last."""
    action: Action | None
    """What to do with it (None with no tick)."""
    passed_over: int
    """Ticks before it, since the last, that are never run (missed while the operator was away);
    SCAN or more is reported as SCAN."""
    next_at: datetime.datetime | None
    """The first tick after now (UTC), for the status and the scheduler's next wake-up."""


def ticks_after(expression: str, zone: zoneinfo.ZoneInfo, after: datetime.datetime) -> Iterator[datetime.datetime]:
    """The ticks strictly after ``after``, in order, as UTC instants."""
    for tick in cronsim.CronSim(expression, after.astimezone(zone)):
        at = tick.astimezone(datetime.timezone.utc)
        if at > after:  # a fall-back's repeated hour can yield a first occurrence already behind us
            yield at


def due(expression: str, zone: zoneinfo.ZoneInfo, after: datetime.datetime,
        now: datetime.datetime) -> tuple[datetime.datetime | None, int, datetime.datetime]:
    """(the latest tick in (after, now], how many ticks before it in that span, the first tick after now)."""
    latest: datetime.datetime | None = None
    count = 0
    for at in ticks_after(expression, zone, after):
        if at > now:
            return latest, max(count - 1, 0), at
        latest, count = at, count + 1
        if count > SCAN:
            break
    # More than SCAN ticks passed: find the latest from a day before it (cronsim's reverse walk finds
    # one near it, but may skip the repeated hour of a fall-back, so the forward walk decides).
    behind = next(cronsim.CronSim(expression, now.astimezone(zone), reverse=True))
    start = max(after, behind.astimezone(datetime.timezone.utc) - _DAY)
    for at in ticks_after(expression, zone, start):
        if at > now:
            return latest, SCAN, at
        latest = at
    raise AssertionError("a cron iteration ends")  # pragma: no cover


def plan(spec: model.TaskScheduleSpec, *, since: datetime.datetime, now: datetime.datetime,
         unfinished: bool) -> Plan:
    """What one pass does: ``since`` is the newest recorded tick (or the schedule's creation), ``now``
    the database's clock, ``unfinished`` whether a run of an earlier tick has not finished.

    ``spec`` is validated (``model.TaskScheduleSpec``): its schedule and zone parse.
    """
    expression = model.cron_expression(spec.schedule)
    zone = model.time_zone(spec.time_zone)
    tick, passed_over, next_at = due(expression, zone, since, now)
    if tick is None:
        return Plan(None, None, 0, next_at)
    if spec.suspend:
        return Plan(tick, Action.SUSPEND, passed_over, next_at)
    deadline = spec.starting_deadline_seconds
    if deadline is not None and (now - tick).total_seconds() > deadline:
        return Plan(tick, Action.MISS, passed_over, next_at)
    if unfinished and spec.concurrency_policy == model.ConcurrencyPolicy.FORBID:
        return Plan(tick, Action.SKIP, passed_over, next_at)
    return Plan(tick, Action.RUN, passed_over, next_at)


def task_name(schedule: str, tick: datetime.datetime) -> str:
    """The Task of a tick: ``<schedule>-<unix minutes>``, the same on every replica and every pass."""
    return f"{schedule}-{int(tick.timestamp()) // 60}"


def manual_task_name(schedule: str, at: datetime.datetime) -> str:
    """A run made by hand (``kubetask schedule trigger``): ``<schedule>-manual-<unix seconds>``, never a tick's name."""
    return f"{schedule}-manual-{int(at.timestamp())}"


def task_body(schedule: Mapping[str, Any], name: str, annotations: Mapping[str, str]) -> dict[str, Any]:
    """The Task ``name`` a TaskSchedule (its object, as listed) creates: the template as its spec, labelled with
    the schedule and owned by it (controller), so the scheduler counts it among the schedule's runs (Forbid waits
    for it, Replace deletes it, the history limits prune it) and deleting the schedule deletes it.

    One body for the scheduler's ticks and for ``kubetask schedule trigger``: only the name and annotations differ.
    """
    meta = schedule["metadata"]
    return {
        "apiVersion": model.API_VERSION, "kind": model.KIND,
        "metadata": {
            "name": name, "namespace": meta["namespace"],
            "labels": {model.SCHEDULE_LABEL: meta["name"]},
            "annotations": dict(annotations),
            "ownerReferences": [{"apiVersion": model.API_VERSION, "kind": model.SCHEDULE_KIND, "name": meta["name"],
                                 "uid": meta["uid"], "controller": True}],
        },
        "spec": (schedule.get("spec") or {}).get("template") or {},
    }
