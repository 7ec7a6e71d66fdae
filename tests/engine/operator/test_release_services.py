"""Releases side by side (issue 20): who owns a Task, who owns a database, and how much the operator holds.

Real PostgreSQL and a real API server, one ``run_once`` at a time. Tasks here carry a ``spec.managedBy``
that the e2e stack's operator (the default name, on the same control plane) does not own, so it never
touches them: the tests see only what the operator under test does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from conftest import create_task, get_task

from kubetask import db, model, settings
from kubetask.operator import admission, mirror, upkeep, watch
from kubetask.operator.runtime import Runtime, ours

OURS = "test.kubetask.io/release-under-test"
"""The operator under test's name: the e2e operator ignores its Tasks."""
OTHERS = "example.com/someone-else"


def _as(runtime: Runtime, namespace: str, managed_by: str = OURS, **extra: object) -> Runtime:
    runtime.config = runtime.config.model_copy(update={"namespaces": [namespace], "managed_by": managed_by, **extra})
    return runtime


async def _sweep_until(runtime: Runtime, conn: db.connection.Conn, done: Callable[[], Awaitable[bool]],
                       what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        await upkeep.orphans_once(runtime, conn)
        if await done():
            return
        assert time.monotonic() < deadline, f"timed out after {timeout}s of sweeps waiting for {what}"
        await asyncio.sleep(0.2)  # the sweep's own interval, shortened: not a synchronisation


# -- 1. spec.managedBy ------------------------------------------------------------------------------

def test_ours_is_the_operators_name_and_no_field_is_the_default_operators() -> None:
    default = settings.OperatorSettings.from_env({"DATABASE_URL": "postgresql://x@h/d"})
    named = default.model_copy(update={"managed_by": OURS})
    unset = {"metadata": {}, "spec": {"type": "echo"}}
    theirs = {"metadata": {}, "spec": {"type": "echo", "managedBy": OTHERS}}
    mine = {"metadata": {}, "spec": {"type": "echo", "managedBy": OURS}}
    assert default.managed_by == model.DEFAULT_MANAGED_BY
    assert ours(default, unset) and not ours(default, theirs) and not ours(default, mine)
    assert ours(named, mine) and not ours(named, unset) and not ours(named, theirs)
    assert ours(default, {"metadata": {}, "spec": {"type": "echo", "managedBy": model.DEFAULT_MANAGED_BY}})


def test_a_bad_managed_by_setting_is_refused_naming_the_variable() -> None:
    try:
        settings.OperatorSettings.from_env({"DATABASE_URL": "postgresql://x@h/d", "KUBETASK_MANAGED_BY": "operator"})
    except settings.SettingsError as err:
        assert "KUBETASK_MANAGED_BY='operator'" in str(err)
    else:
        raise AssertionError("a name without a domain prefix was accepted")


async def test_a_task_managed_by_another_controller_is_not_admitted_cancelled_or_retried(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    rt = _as(runtime, namespace)
    body = await create_task(rt, namespace, "theirs", managedBy=OTHERS)
    await watch.on_task_event(rt, "ADDED", body)
    assert rt.admissions.empty()
    body["status"] = {"phase": "DeadLetter"}
    body["metadata"].setdefault("annotations", {})[model.RETRY_ANNOTATION] = "1"
    await watch.on_task_event(rt, "MODIFIED", body)
    await watch.on_task_event(rt, "DELETED", body)
    assert await db.reads.get_task(conn, body["metadata"]["uid"]) is None, "no tombstone for another's Task"


async def test_the_sweep_leaves_a_pending_task_of_another_controller_alone_and_admits_its_own(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """Neither watch event arrives (both went missing): the sweep admits only its own, and fetches the
    other's body once, then never again."""
    rt = _as(runtime, namespace)
    theirs = await create_task(rt, namespace, "theirs", managedBy=OTHERS)
    mine = await create_task(rt, namespace, "mine", managedBy=OURS)

    async def settled() -> bool:
        while not rt.admissions.empty():
            await admission.run_once(rt, conn)
        return (await db.reads.get_task(conn, mine["metadata"]["uid"]) is not None
                and theirs["metadata"]["uid"] in rt.unrowed.settled)

    await _sweep_until(rt, conn, settled, "the sweep to admit its own Task and settle the other's")
    assert await db.reads.get_task(conn, theirs["metadata"]["uid"]) is None
    assert (await get_task(rt, namespace, "theirs") or {}).get("status") is None, "not refused, not touched"


# -- 3. the operator's default ttlSecondsAfterFinished ---------------------------------------------

async def test_a_finished_task_without_a_ttl_is_deleted_after_the_default_one_with_its_own_keeps_it(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    rt = _as(runtime, namespace, default_ttl_seconds_after_finished=1)
    plain = await create_task(rt, namespace, "plain", managedBy=OURS)
    own = await create_task(rt, namespace, "own", managedBy=OURS, ttlSecondsAfterFinished=3600)
    for body in (plain, own):
        await watch.on_task_event(rt, "ADDED", body)
    await admission.run_once(rt, conn)
    ttls = {}
    for body in (plain, own):
        row = await db.reads.get_task(conn, body["metadata"]["uid"])
        assert row is not None
        cursor = await conn.execute("SELECT ttl_seconds_after_finished FROM kubetask_tasks WHERE id = %s", [row.id])
        ttls[body["metadata"]["name"]] = (await cursor.fetchone() or (None,))[0]
    assert ttls == {"plain": 1, "own": 3600}
    for claimed in await db.queue.claim(conn, "default", "pod-1/aaaa", "pod-1", 10, 30):
        assert await db.queue.complete(conn, claimed.id, "pod-1/aaaa", claimed.attempt, {"ok": True})
    await mirror.run_once(rt, conn)
    deadline = time.monotonic() + 15
    while await get_task(rt, namespace, "plain") is not None:
        assert time.monotonic() < deadline, "the default TTL (1 s) did not delete the finished Task within 15 s"
        await upkeep.ttl_once(rt, conn)
        await asyncio.sleep(0.2)  # the cleaner's interval, shortened: not a synchronisation
    assert await get_task(rt, namespace, "own") is not None, "its own ttlSecondsAfterFinished (an hour) wins"
    assert (await db.reads.get_task(conn, plain["metadata"]["uid"])) is not None, "the history stays"


def test_a_default_ttl_of_0_keeps_finished_tasks_as_before() -> None:
    config = settings.OperatorSettings.from_env({"DATABASE_URL": "postgresql://x@h/d",
                                                 "KUBETASK_DEFAULT_TTL_SECONDS_AFTER_FINISHED": "0"})
    body = {"metadata": {"uid": "00000000-0000-0000-0000-000000000001", "namespace": "n", "name": "t"},
            "spec": {"type": "echo"}}
    task = admission.admissible(body, default_ttl=config.default_ttl)
    assert isinstance(task, db.queue.NewTask) and task.ttl_seconds_after_finished is None
    default = settings.OperatorSettings.from_env({"DATABASE_URL": "postgresql://x@h/d"})
    assert default.default_ttl_seconds_after_finished == 7 * 86400
    task = admission.admissible(body, default_ttl=default.default_ttl)
    assert isinstance(task, db.queue.NewTask) and task.ttl_seconds_after_finished == 7 * 86400
