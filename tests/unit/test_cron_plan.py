"""The scheduler's pure decisions: which tick is due and what a pass does with it (no clock, no I/O)."""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Any

import pytest

from kubetask import cron, model

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
MINUTE = datetime.timedelta(minutes=1)


def spec(**fields: Any) -> model.TaskScheduleSpec:
    return model.TaskScheduleSpec.model_validate({"schedule": "* * * * *", "template": {"type": "echo"}, **fields})


def test_nothing_is_due_before_the_first_tick() -> None:
    planned = cron.plan(spec(), since=T0 + datetime.timedelta(seconds=5), now=T0 + datetime.timedelta(seconds=50),
                        unfinished=False)
    assert planned == cron.Plan(None, None, 0, T0 + MINUTE)


def test_the_tick_just_passed_runs_and_the_next_is_the_one_after() -> None:
    planned = cron.plan(spec(), since=T0, now=T0 + MINUTE + datetime.timedelta(seconds=1), unfinished=False)
    assert planned == cron.Plan(T0 + MINUTE, cron.Action.RUN, 0, T0 + 2 * MINUTE)


def test_a_tick_exactly_now_is_due() -> None:
    assert cron.plan(spec(), since=T0, now=T0 + MINUTE, unfinished=False).tick == T0 + MINUTE


def test_ten_minutes_of_downtime_make_one_run_for_the_latest_tick() -> None:
    planned = cron.plan(spec(), since=T0, now=T0 + 10 * MINUTE + datetime.timedelta(seconds=3), unfinished=False)
    assert (planned.tick, planned.action, planned.passed_over) == (T0 + 10 * MINUTE, cron.Action.RUN, 9)


def test_a_year_of_downtime_makes_one_run_and_stops_counting() -> None:
    now = T0 + datetime.timedelta(days=365, seconds=30)
    planned = cron.plan(spec(), since=T0, now=now, unfinished=False)
    assert (planned.tick, planned.action, planned.passed_over) == (now.replace(second=0), cron.Action.RUN, cron.SCAN)
    assert planned.next_at == now.replace(second=0) + MINUTE


def test_a_tick_later_than_the_starting_deadline_is_missed() -> None:
    late = cron.plan(spec(startingDeadlineSeconds=30), since=T0, now=T0 + MINUTE + datetime.timedelta(seconds=31),
                     unfinished=False)
    assert late.action == cron.Action.MISS and late.tick == T0 + MINUTE
    in_time = cron.plan(spec(startingDeadlineSeconds=30), since=T0, now=T0 + MINUTE + datetime.timedelta(seconds=30),
                        unfinished=False)
    assert in_time.action == cron.Action.RUN


def test_downtime_with_a_deadline_runs_the_latest_tick_if_still_in_time() -> None:
    planned = cron.plan(spec(startingDeadlineSeconds=120, schedule="*/5 * * * *"), since=T0,
                        now=T0 + 61 * MINUTE, unfinished=False)
    assert (planned.tick, planned.action, planned.passed_over) == (T0 + 60 * MINUTE, cron.Action.RUN, 11)


@pytest.mark.parametrize(("policy", "action"), [("Allow", cron.Action.RUN), ("Forbid", cron.Action.SKIP),
                                                ("Replace", cron.Action.RUN)])
def test_an_unfinished_run_skips_the_tick_only_under_forbid(policy: str, action: cron.Action) -> None:
    planned = cron.plan(spec(concurrencyPolicy=policy), since=T0, now=T0 + MINUTE, unfinished=True)
    assert planned.action == action
    assert cron.plan(spec(concurrencyPolicy=policy), since=T0, now=T0 + MINUTE, unfinished=False).action == "run"


def test_a_suspended_schedule_records_the_tick_as_suspended_and_still_knows_the_next() -> None:
    planned = cron.plan(spec(suspend=True), since=T0, now=T0 + 3 * MINUTE, unfinished=False)
    assert (planned.tick, planned.action, planned.next_at) == (T0 + 3 * MINUTE, cron.Action.SUSPEND, T0 + 4 * MINUTE)


def test_an_edited_schedule_starts_after_the_last_recorded_tick() -> None:
    """From */5 to hourly after the 12:05 tick: the next due is 13:00, not any of the old ticks."""
    planned = cron.plan(spec(schedule="@hourly"), since=T0 + 5 * MINUTE, now=T0 + 59 * MINUTE, unfinished=False)
    assert planned.tick is None and planned.next_at == T0 + 60 * MINUTE


def _local_ticks(schedule: str, zone: str, start: datetime.datetime, count: int) -> list[str]:
    tz = zoneinfo.ZoneInfo(zone)
    ticks = []
    for at in cron.ticks_after(model.cron_expression(schedule), tz, start):
        ticks.append(at.astimezone(tz).isoformat())
        if len(ticks) == count:
            return ticks
    raise AssertionError("unreachable")


def test_spring_forward_runs_a_skipped_time_once_when_the_clock_jumps() -> None:
    """Paris, 29 March 2026: 02:00 jumps to 03:00; the 02:30 tick runs at 03:00, once."""
    start = datetime.datetime(2026, 3, 28, 12, tzinfo=UTC)
    assert _local_ticks("30 2 * * *", "Europe/Paris", start, 3) == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00"]


def test_fall_back_runs_a_repeated_time_once() -> None:
    """Paris, 25 October 2026: 03:00 goes back to 02:00; the 02:30 tick runs once (the first 02:30)."""
    start = datetime.datetime(2026, 10, 24, 12, tzinfo=UTC)
    assert _local_ticks("30 2 * * *", "Europe/Paris", start, 2) == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    # Starting inside the repeated hour (after the first 02:30) the next is the next day's.
    inside = datetime.datetime(2026, 10, 25, 1, 10, tzinfo=UTC)  # 02:10+01:00
    assert _local_ticks("30 2 * * *", "Europe/Paris", inside, 1) == ["2026-10-26T02:30:00+01:00"]


def test_an_interval_schedule_keeps_real_time_through_fall_back() -> None:
    start = datetime.datetime(2026, 10, 24, 23, 50, tzinfo=UTC)
    assert _local_ticks("*/30 * * * *", "Europe/Paris", start, 4) == [
        "2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00"]


def test_a_long_outage_across_fall_back_finds_the_true_latest_tick() -> None:
    """cronsim's reverse walk skips the repeated hour; the planner's forward walk does not."""
    since = datetime.datetime(2026, 10, 20, 12, tzinfo=UTC)  # over SCAN ticks before: the reverse walk's path
    now = datetime.datetime(2026, 10, 25, 1, 45, tzinfo=UTC)  # 02:45+01:00, the second time round
    planned = cron.plan(spec(schedule="*/30 * * * *", timeZone="Europe/Paris"), since=since, now=now,
                        unfinished=False)
    assert planned.tick == datetime.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert planned.passed_over == cron.SCAN and planned.next_at == datetime.datetime(2026, 10, 25, 2, tzinfo=UTC)


def test_the_zone_moves_the_tick() -> None:
    planned = cron.plan(spec(schedule="0 9 * * *", timeZone="America/New_York"),
                        since=datetime.datetime(2026, 7, 1, 0, tzinfo=UTC),
                        now=datetime.datetime(2026, 7, 1, 13, 0, 5, tzinfo=UTC), unfinished=False)
    assert planned.tick == datetime.datetime(2026, 7, 1, 13, 0, tzinfo=UTC), "09:00 EDT is 13:00 UTC"


def test_task_names_come_from_the_tick() -> None:
    assert cron.task_name("nightly", datetime.datetime(2026, 1, 1, tzinfo=UTC)) == "nightly-29453760"
    assert cron.task_name("nightly", datetime.datetime(2026, 1, 1, 0, 1, tzinfo=UTC)) == "nightly-29453761"
