"""The scheduler's passes against the real API server and PostgreSQL, on a clock the test moves.

``schedules.schedule_pass(rt, conn, now)`` is what the service runs each pass with the database's
clock (``run_once``); here ``now`` is set to just after a tick, so a minutely schedule ticks as
often as the test likes. The last test runs the service itself, on the database's clock.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable
from typing import Any

import prometheus_client
import pytest
from conftest import events_of, get_task
from prometheus_client.parser import text_string_to_metric_families
from kubetask_dev import controlplane

from kubetask import cron, db, kube, model, settings
from kubetask.operator import schedules, services
from kubetask.operator.runtime import Runtime
from kubetask.states import TickOutcome

OWNER = "kubetask.io/engine-tests"
"""The schedules' (their templates') ``managedBy``: the e2e stack's operator shares the session's control plane
and would otherwise run these schedules on the real clock, next to the passes the tests drive."""
MINUTE = datetime.timedelta(minutes=1)
SECOND = datetime.timedelta(seconds=1)


async def create_schedule(rt: Runtime, namespace: str, name: str = "every-minute", **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": model.API_VERSION, "kind": model.SCHEDULE_KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"schedule": "* * * * *",
                     "template": {"type": "echo", "payload": {"from": name}, "managedBy": OWNER}, **spec}}
    created: dict[str, Any] = await asyncio.to_thread(
        rt.kube.custom.create_namespaced_custom_object, model.GROUP, model.VERSION, namespace,
        model.SCHEDULE_PLURAL, body)
    return created


async def get_schedule(rt: Runtime, namespace: str, name: str = "every-minute") -> dict[str, Any]:
    found: dict[str, Any] = await asyncio.to_thread(
        rt.kube.custom.get_namespaced_custom_object, model.GROUP, model.VERSION, namespace, model.SCHEDULE_PLURAL,
        name)
    return found


async def patch_spec(rt: Runtime, namespace: str, name: str, **spec: Any) -> None:
    await asyncio.to_thread(rt.kube.custom.patch_namespaced_custom_object, model.GROUP, model.VERSION, namespace,
                            model.SCHEDULE_PLURAL, name, {"spec": spec})


async def tasks_of(rt: Runtime, namespace: str, schedule: str = "every-minute") -> dict[str, dict[str, Any]]:
    listed = await asyncio.to_thread(rt.kube.custom.list_namespaced_custom_object, model.GROUP, model.VERSION,
                                     namespace, model.PLURAL, label_selector=f"{model.SCHEDULE_LABEL}={schedule}")
    return {item["metadata"]["name"]: item for item in listed["items"]}


async def finish(rt: Runtime, namespace: str, task: dict[str, Any], phase: str, at: datetime.datetime) -> None:
    """What the mirror writes when a run ends."""
    await rt.kube.patch_task_status(namespace, task["metadata"]["name"], task["metadata"]["uid"],
                                    {"phase": phase, "finishedAt": schedules.rfc3339(at)})


def first_tick(schedule: dict[str, Any], expression: str = "* * * * *") -> datetime.datetime:
    created = schedules.parse_time(schedule["metadata"]["creationTimestamp"])
    assert created is not None
    return next(cron.ticks_after(expression, model.time_zone("UTC"), created))


async def ticks(conn: db.connection.Conn) -> list[tuple[datetime.datetime, str, str | None, int]]:
    cursor = await conn.execute("SELECT tick_at, outcome, task_name, passed_over FROM kubetask_schedule_ticks "
                                "ORDER BY tick_at")
    return list(await cursor.fetchall())


def counted(rt: Runtime, namespace: str, schedule: str = "every-minute") -> dict[str, float]:
    """``kubetask_schedule_ticks_total`` of one schedule on this replica's metrics endpoint, by outcome."""
    text = prometheus_client.generate_latest(rt.meters.registry).decode()
    return {sample.labels["outcome"]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "kubetask_schedule_ticks_total"
            and (sample.labels["namespace"], sample.labels["schedule"]) == (namespace, schedule)}


async def _runtime(dsn: str, plane: controlplane.ControlPlane, namespace: str) -> Runtime:
    """An operator's runtime serving this test's namespace only: the other tests' schedules, in namespaces
    still terminating, are not its business."""
    config = settings.OperatorSettings.from_env({"DATABASE_URL": dsn, "KUBETASK_NAMESPACES": namespace,
                                                 "KUBETASK_MANAGED_BY": OWNER})
    return Runtime(config=config, kube=kube.Kube(kubeconfig=str(plane.kubeconfig)))


@pytest.fixture
async def runtime(dsn: str, crd_plane: controlplane.ControlPlane, namespace: str) -> AsyncIterator[Runtime]:
    rt = await _runtime(dsn, crd_plane, namespace)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def second_runtime(dsn: str, crd_plane: controlplane.ControlPlane, namespace: str) -> AsyncIterator[Runtime]:
    """Another operator replica's runtime (its own API client), as during a failover."""
    rt = await _runtime(dsn, crd_plane, namespace)
    try:
        yield rt
    finally:
        await rt.close()


async def test_a_minutely_schedule_creates_one_task_per_tick_named_owned_and_labelled(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    schedule = await create_schedule(runtime, namespace)
    tick = first_tick(schedule)
    await schedules.schedule_pass(runtime, conn, tick - SECOND)
    assert await tasks_of(runtime, namespace) == {}, "nothing before the first tick"

    for n in range(3):
        at = tick + n * MINUTE
        for _ in range(2):  # a second pass in the same minute creates nothing more
            await schedules.schedule_pass(runtime, conn, at + 2 * SECOND)
        assert len(await tasks_of(runtime, namespace)) == n + 1
    runs = await tasks_of(runtime, namespace)
    name = cron.task_name("every-minute", tick)
    assert sorted(runs) == [cron.task_name("every-minute", tick + n * MINUTE) for n in range(3)]
    first = runs[name]
    assert first["spec"]["type"] == "echo" and first["spec"]["payload"] == {"from": "every-minute"}
    assert first["spec"]["queue"] == "default", "the template, with the Task schema's defaults"
    assert first["metadata"]["labels"] == {model.SCHEDULE_LABEL: "every-minute"}
    assert first["metadata"]["annotations"][model.TICK_ANNOTATION] == schedules.rfc3339(tick)
    [owner] = first["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "TaskSchedule", "every-minute", schedule["metadata"]["uid"], True)
    status = (await get_schedule(runtime, namespace))["status"]
    assert status["lastScheduleTime"] == schedules.rfc3339(tick + 2 * MINUTE)
    assert status["nextScheduleTime"] == schedules.rfc3339(tick + 3 * MINUTE)
    assert sorted(a["name"] for a in status["active"]) == sorted(runs), "none finished yet"
    assert status["activeCount"] == 3
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Scheduled": "True"}
    assert [(at, outcome) for at, outcome, _, _ in await ticks(conn)] == [
        (tick + n * MINUTE, TickOutcome.CREATED) for n in range(3)]
    assert counted(runtime, namespace) == {"created": 3}


async def test_two_replicas_passing_at_once_create_each_tick_once(
        runtime: Runtime, second_runtime: Runtime, conn: db.connection.Conn, connect, namespace: str) -> None:
    schedule = await create_schedule(runtime, namespace)
    tick = first_tick(schedule)
    other = await connect()
    for n in range(3):
        await asyncio.gather(schedules.schedule_pass(runtime, conn, tick + n * MINUTE + SECOND),
                             schedules.schedule_pass(second_runtime, other, tick + n * MINUTE + SECOND))
    assert sorted(await tasks_of(runtime, namespace)) == [
        cron.task_name("every-minute", tick + n * MINUTE) for n in range(3)]
    assert [outcome for _, outcome, _, _ in await ticks(conn)] == [TickOutcome.CREATED] * 3
    mine, theirs = counted(runtime, namespace), counted(second_runtime, namespace)
    assert mine.get("created", 0) + theirs.get("created", 0) == 3, "a sum over replicas counts each tick once"


async def test_a_leader_killed_between_claim_and_create_has_its_tick_created_once_by_the_next(
        runtime: Runtime, second_runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    schedule = await create_schedule(runtime, namespace)
    tick = first_tick(schedule)
    # What a leader that died right after its claim leaves behind: the row, and no Task.
    assert await db.ticks.record(conn, uid=schedule["metadata"]["uid"], at=tick, namespace=namespace,
                                 schedule="every-minute", outcome=TickOutcome.CLAIMED,
                                 task_name=cron.task_name("every-minute", tick))
    await schedules.schedule_pass(second_runtime, conn, tick + 20 * SECOND)  # the new leader, restarted
    await schedules.schedule_pass(runtime, conn, tick + 30 * SECOND)
    assert sorted(await tasks_of(runtime, namespace)) == [cron.task_name("every-minute", tick)]
    assert [outcome for _, outcome, _, _ in await ticks(conn)] == [TickOutcome.CREATED]


async def test_a_claimed_tick_finished_late_counts_as_the_run_forbid_waits_for(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """A leader died after claiming a tick; the next pass, a minute later, creates it and skips the new tick."""
    schedule = await create_schedule(runtime, namespace, concurrencyPolicy="Forbid")
    tick = first_tick(schedule)
    await db.ticks.record(conn, uid=schedule["metadata"]["uid"], at=tick, namespace=namespace,
                          schedule="every-minute", outcome=TickOutcome.CLAIMED,
                          task_name=cron.task_name("every-minute", tick))
    await schedules.schedule_pass(runtime, conn, tick + MINUTE + SECOND)
    assert list(await tasks_of(runtime, namespace)) == [cron.task_name("every-minute", tick)]
    assert [outcome for _, outcome, _, _ in await ticks(conn)] == [TickOutcome.CREATED, TickOutcome.SKIPPED]


async def test_a_leader_killed_between_create_and_settle_does_not_duplicate(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """The Task exists but the row still says claimed: the next pass's create gets a 409, and settles."""
    schedule = await create_schedule(runtime, namespace)
    tick = first_tick(schedule)
    await schedules.schedule_pass(runtime, conn, tick + SECOND)
    await conn.execute("UPDATE kubetask_schedule_ticks SET outcome = 'claimed'")
    await schedules.schedule_pass(runtime, conn, tick + 5 * SECOND)
    assert len(await tasks_of(runtime, namespace)) == 1
    assert [outcome for _, outcome, _, _ in await ticks(conn)] == [TickOutcome.CREATED]


async def test_ten_minutes_of_downtime_make_exactly_one_catch_up_run(
        runtime: Runtime, conn: db.connection.Conn, namespace: str, wait_until: Callable[..., Any]) -> None:
    schedule = await create_schedule(runtime, namespace)
    tick = first_tick(schedule)
    await schedules.schedule_pass(runtime, conn, tick + SECOND)
    # The operator is away for ten minutes (ten ticks), then comes back: a fresh runtime, as after a restart.
    back = tick + 10 * MINUTE + 7 * SECOND
    await schedules.schedule_pass(runtime, conn, back)
    await schedules.schedule_pass(runtime, conn, back + SECOND)
    assert sorted(await tasks_of(runtime, namespace)) == [cron.task_name("every-minute", tick),
                                                         cron.task_name("every-minute", tick + 10 * MINUTE)]
    assert [(at, outcome, over) for at, outcome, _, over in await ticks(conn)] == [
        (tick, TickOutcome.CREATED, 0), (tick + 10 * MINUTE, TickOutcome.CREATED, 9)]
    assert (await get_schedule(runtime, namespace))["status"]["missed"] == 9
    assert counted(runtime, namespace) == {"created": 2, "missed": 9}

    async def missed_event() -> Any:
        return [e for e in await events_of(runtime, namespace, "every-minute") if e["reason"] == "Missed"]

    [event] = await wait_until(missed_event, what="the Missed Event")
    assert event["type"] == "Warning" and event["message"].startswith("9 tick(s)")


async def test_a_tick_later_than_the_starting_deadline_is_recorded_missed(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    schedule = await create_schedule(runtime, namespace, startingDeadlineSeconds=30)
    tick = first_tick(schedule)
    await schedules.schedule_pass(runtime, conn, tick + 45 * SECOND)
    assert await tasks_of(runtime, namespace) == {}
    assert [(at, outcome) for at, outcome, _, _ in await ticks(conn)] == [(tick, TickOutcome.MISSED)]
    status = (await get_schedule(runtime, namespace))["status"]
    assert status["missed"] == 1 and "lastScheduleTime" not in status
    await schedules.schedule_pass(runtime, conn, tick + MINUTE + 29 * SECOND)
    assert list(await tasks_of(runtime, namespace)) == [cron.task_name("every-minute", tick + MINUTE)]
    assert counted(runtime, namespace) == {"missed": 1, "created": 1}


async def test_forbid_skips_while_the_previous_run_is_unfinished(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    schedule = await create_schedule(runtime, namespace, concurrencyPolicy="Forbid")
    tick = first_tick(schedule)
    await schedules.schedule_pass(runtime, conn, tick + SECOND)
    [first] = (await tasks_of(runtime, namespace)).values()
    await schedules.schedule_pass(runtime, conn, tick + MINUTE + SECOND)  # the first has not finished
    assert list(await tasks_of(runtime, namespace)) == [first["metadata"]["name"]]
    await finish(runtime, namespace, first, "Succeeded", tick + 90 * SECOND)
    await schedules.schedule_pass(runtime, conn, tick + 2 * MINUTE + SECOND)
    assert sorted(await tasks_of(runtime, namespace)) == [cron.task_name("every-minute", tick),
                                                         cron.task_name("every-minute", tick + 2 * MINUTE)]
    assert [outcome for _, outcome, _, _ in await ticks(conn)] == [
        TickOutcome.CREATED, TickOutcome.SKIPPED, TickOutcome.CREATED]
    assert counted(runtime, namespace) == {"created": 2, "skipped": 1}
    status = (await get_schedule(runtime, namespace))["status"]
    assert status["lastSuccessfulTime"] == schedules.rfc3339(tick + 90 * SECOND)
    assert [a["name"] for a in status["active"]] == [cron.task_name("every-minute", tick + 2 * MINUTE)]


async def test_replace_deletes_the_unfinished_run_and_creates_the_new_one(
        runtime: Runtime, conn: db.connection.Conn, namespace: str, wait_until: Callable[..., Any]) -> None:
    schedule = await create_schedule(runtime, namespace, concurrencyPolicy="Replace")
    tick = first_tick(schedule)
    await schedules.schedule_pass(runtime, conn, tick + SECOND)
    first = cron.task_name("every-minute", tick)
    await schedules.schedule_pass(runtime, conn, tick + MINUTE + SECOND)
    second = cron.task_name("every-minute", tick + MINUTE)

    async def replaced() -> Any:
        return await get_task(runtime, namespace, first) is None

    await wait_until(replaced, what=f"{first} to be deleted (the watch then cancels it)")
    assert list(await tasks_of(runtime, namespace)) == [second]
    status = (await get_schedule(runtime, namespace))["status"]
    assert [a["name"] for a in status["active"]] == [second]

    async def told() -> Any:
        return [e for e in await events_of(runtime, namespace, "every-minute") if e["reason"] == "Replaced"]

    [event] = await wait_until(told, what="the Replaced Event")
    assert first in event["message"] and second in event["message"]


async def test_suspended_ticks_never_run_even_after_resuming(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    schedule = await create_schedule(runtime, namespace, suspend=True)
    tick = first_tick(schedule)
    await schedules.schedule_pass(runtime, conn, tick + 3 * MINUTE + SECOND)
    assert await tasks_of(runtime, namespace) == {}
    status = (await get_schedule(runtime, namespace))["status"]
    assert {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]} == {"Scheduled": ("False",
                                                                                                   "Suspended")}
    assert "nextScheduleTime" not in status and status["missed"] == 0, "suspended ticks are not missed"
    await patch_spec(runtime, namespace, "every-minute", suspend=False)
    await schedules.schedule_pass(runtime, conn, tick + 3 * MINUTE + 5 * SECOND)
    assert await tasks_of(runtime, namespace) == {}, "the tick of the suspension does not run on resume"
    await schedules.schedule_pass(runtime, conn, tick + 4 * MINUTE + SECOND)
    assert list(await tasks_of(runtime, namespace)) == [cron.task_name("every-minute", tick + 4 * MINUTE)]
    assert counted(runtime, namespace) == {"suspended": 4, "created": 1}, "four ticks passed while suspended"


async def test_suspending_leaves_the_active_run_alone(runtime: Runtime, conn: db.connection.Conn,
                                                      namespace: str) -> None:
    schedule = await create_schedule(runtime, namespace)
    tick = first_tick(schedule)
    await schedules.schedule_pass(runtime, conn, tick + SECOND)
    await patch_spec(runtime, namespace, "every-minute", suspend=True)
    await schedules.schedule_pass(runtime, conn, tick + MINUTE + SECOND)
    assert list(await tasks_of(runtime, namespace)) == [cron.task_name("every-minute", tick)]
    status = (await get_schedule(runtime, namespace))["status"]
    assert [a["name"] for a in status["active"]] == [cron.task_name("every-minute", tick)]


async def test_history_limits_delete_the_oldest_finished_runs(runtime: Runtime, conn: db.connection.Conn,
                                                              namespace: str) -> None:
    schedule = await create_schedule(runtime, namespace, successfulHistoryLimit=1, failedHistoryLimit=1)
    tick = first_tick(schedule)
    phases = ["Succeeded", "DeadLetter", "Succeeded", "Cancelled", "Succeeded"]
    for n, phase in enumerate(phases):
        await schedules.schedule_pass(runtime, conn, tick + n * MINUTE + SECOND)
        run = (await tasks_of(runtime, namespace))[cron.task_name("every-minute", tick + n * MINUTE)]
        await finish(runtime, namespace, run, phase, tick + n * MINUTE + 30 * SECOND)
    await schedules.schedule_pass(runtime, conn, tick + (len(phases) - 1) * MINUTE + 40 * SECOND)
    kept = await tasks_of(runtime, namespace)
    assert sorted(kept) == [cron.task_name("every-minute", tick + 3 * MINUTE),
                            cron.task_name("every-minute", tick + 4 * MINUTE)], "the newest of each kind"
    assert (await get_schedule(runtime, namespace))["status"]["active"] == []


@pytest.mark.parametrize(("spec", "reason", "field"), [
    ({"schedule": "0 0 30 2 *"}, "InvalidSchedule", "spec.schedule"),
    ({"timeZone": "Mars/Olympus"}, "InvalidTimeZone", "spec.timeZone"),
])
async def test_what_only_the_operator_can_check_is_refused_visibly(
        runtime: Runtime, conn: db.connection.Conn, namespace: str, wait_until: Callable[..., Any],
        spec: dict[str, str], reason: str, field: str) -> None:
    schedule = await create_schedule(runtime, namespace, **spec)
    created = schedules.parse_time(schedule["metadata"]["creationTimestamp"])
    assert created is not None
    for day in range(2):
        await schedules.schedule_pass(runtime, conn, created + datetime.timedelta(days=400 * day, minutes=5))
    assert await tasks_of(runtime, namespace) == {}
    [condition] = (await get_schedule(runtime, namespace))["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", reason)
    assert condition["message"].startswith(field), condition["message"]

    async def refused() -> Any:
        return [e for e in await events_of(runtime, namespace, "every-minute") if e["reason"] == reason]

    [event] = await wait_until(refused, what=f"the {reason} Event")
    assert event["type"] == "Warning" and field in event["message"]
    assert len(await refused()) == 1, "told once, not on every pass"
    # Fixed, it schedules.
    await patch_spec(runtime, namespace, "every-minute", schedule="* * * * *", timeZone="UTC")
    await schedules.schedule_pass(runtime, conn, created + datetime.timedelta(days=800, minutes=5))
    assert len(await tasks_of(runtime, namespace)) == 1
    [condition] = (await get_schedule(runtime, namespace))["status"]["conditions"]
    assert condition["status"] == "True"


async def test_the_scheduler_service_creates_the_next_tick_on_the_database_clock(
        runtime: Runtime, namespace: str, wait_until: Callable[..., Any]) -> None:
    """The service as the leader runs it (``services.LEADER``), waking for the tick: within a minute."""
    await create_schedule(runtime, namespace)
    [service] = [s for s in services.LEADER if s.name == "scheduler"]
    running = service.start(runtime)
    try:
        async def created() -> Any:
            return await tasks_of(runtime, namespace)

        [name] = await wait_until(created, timeout=75, interval=0.5, what="the first tick's Task")
        status = (await get_schedule(runtime, namespace))["status"]
        assert status["lastScheduleTime"] and status["nextScheduleTime"] > status["lastScheduleTime"]
        assert name == f"every-minute-{int(schedules.parse_time(status['lastScheduleTime']).timestamp()) // 60}"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_an_edited_schedule_runs_on_its_new_ticks_from_the_last_one(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """Edited while a run is active: the run stays, the old schedule's ticks stop, the new one's follow."""
    schedule = await create_schedule(runtime, namespace)
    tick = first_tick(schedule)
    await schedules.schedule_pass(runtime, conn, tick + SECOND)
    await patch_spec(runtime, namespace, "every-minute", schedule="*/5 * * * *")
    fifth = next(cron.ticks_after("*/5 * * * *", model.time_zone("UTC"), tick))
    minute = tick + MINUTE
    while minute < fifth:
        await schedules.schedule_pass(runtime, conn, minute + SECOND)
        minute += MINUTE
    assert list(await tasks_of(runtime, namespace)) == [cron.task_name("every-minute", tick)]
    assert (await get_schedule(runtime, namespace))["status"]["nextScheduleTime"] == schedules.rfc3339(fifth)
    await schedules.schedule_pass(runtime, conn, fifth + SECOND)
    assert sorted(await tasks_of(runtime, namespace)) == [cron.task_name("every-minute", tick),
                                                         cron.task_name("every-minute", fifth)]


async def test_deleting_the_schedule_deletes_its_tasks(runtime: Runtime, conn: db.connection.Conn, namespace: str,
                                                       wait_until: Callable[..., Any]) -> None:
    """Its Tasks are owned by it: Kubernetes' garbage collector deletes them (and deletion cancels them)."""
    schedule = await create_schedule(runtime, namespace)
    await schedules.schedule_pass(runtime, conn, first_tick(schedule) + SECOND)
    assert len(await tasks_of(runtime, namespace)) == 1
    assert counted(runtime, namespace) == {"created": 1}
    await asyncio.to_thread(runtime.kube.custom.delete_namespaced_custom_object, model.GROUP, model.VERSION,
                            namespace, model.SCHEDULE_PLURAL, "every-minute")
    await schedules.schedule_pass(runtime, conn, first_tick(schedule) + 2 * SECOND)
    assert counted(runtime, namespace) == {}, "a deleted schedule's series leave the next scrape"

    async def collected() -> bool:
        return await tasks_of(runtime, namespace) == {}

    # The garbage collector notices a new CRD's objects at its next discovery (every 30 s).
    await wait_until(collected, timeout=90, interval=0.5, what="the schedule's Tasks to be garbage-collected")
