"""Hardening (issue 20) of the operator's services: each test failed on the code before its fix.

Real PostgreSQL and a real API server, one ``run_once`` at a time, so a race
the loops would make rare is made certain here.
"""

from __future__ import annotations

import asyncio
import datetime
import pathlib
import time
from collections.abc import Awaitable, Callable

import pytest
from conftest import create_task, events_of, get_task
from kubetask_dev import controlplane

from kubetask import db, kube, model, states, status
from kubetask.operator import admission, mirror, upkeep, watch
from kubetask.operator.runtime import Runtime


async def test_a_task_deleted_before_its_batch_was_admitted_never_runs(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """The watch queued it for admission, then saw it deleted: the delete must win, whichever lands first."""
    body = await create_task(runtime, namespace, "gone-early")
    await watch.on_task_event(runtime, "ADDED", body)
    await watch.on_task_event(runtime, "DELETED", body)  # before the admission service took the batch
    await admission.run_once(runtime, conn)
    row = await db.reads.get_task(conn, body["metadata"]["uid"])
    assert row is not None and row.state == states.TaskState.CANCELLED
    assert row.last_error is not None and "deleted before it was admitted" in row.last_error["message"]
    assert await db.queue.claim(conn, "default", "pod-1/aaaa", "pod-1", 10, 30) == []
    # Nothing to mirror: the object is gone, so the outbox holds no patch for it.
    assert [r for r in await db.outbox.pending_status(conn, 100) if r.uid == body["metadata"]["uid"]] == []


async def test_deleting_a_task_refused_at_admission_leaves_no_row(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """Only a Task that could still be admitted (no phase, or Pending) needs a tombstone."""
    body = await create_task(runtime, namespace, "refused", timeoutSeconds=5)
    body["status"] = {"phase": "DeadLetter", "reason": "InvalidSpec"}
    await watch.on_task_event(runtime, "DELETED", body)
    assert await db.reads.get_task(conn, body["metadata"]["uid"]) is None


OWNER = "kubetask.io/engine-tests"
"""These Tasks' ``spec.managedBy``: the e2e stack's operator shares the session's control plane and would
otherwise admit them into its own database and write their status over the test's."""


def _served(runtime: Runtime, namespace: str) -> Runtime:
    runtime.config = runtime.config.model_copy(update={"namespaces": [namespace], "managed_by": OWNER})
    return runtime


async def _sweep_until(runtime: Runtime, conn: db.connection.Conn, done: Callable[[], Awaitable[bool]],
                       what: str, timeout: float = 20.0) -> None:
    """Sweep until ``done``: an object without a row is acted on only when the sweep before saw it so
    too, and the metadata LIST is served from the API server's watch cache, which may lag a create."""
    deadline = time.monotonic() + timeout
    while True:
        await upkeep.orphans_once(runtime, conn)
        if await done():
            return
        assert time.monotonic() < deadline, f"timed out after {timeout}s of sweeps waiting for {what}"
        await asyncio.sleep(0.2)  # the sweep's own interval, shortened: not a synchronisation


async def test_a_task_whose_row_the_database_lost_is_admitted_again_visibly(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """A bundled PostgreSQL restarted on an emptyDir: the Task said Queued for ever, and never ran."""
    rt = _served(runtime, namespace)
    body = await create_task(rt, namespace, "lost-row", managedBy=OWNER)
    uid = body["metadata"]["uid"]
    await rt.kube.patch_task_status(namespace, "lost-row", uid, {"phase": "Queued", "attempts": 0})
    await upkeep.orphans_once(rt, conn)
    assert rt.admissions.empty(), "one sweep is not enough: admission may be about to insert it"

    async def queued() -> bool:
        return not rt.admissions.empty()

    await _sweep_until(rt, conn, queued, "the Task to go to admission again")
    await admission.run_once(rt, conn)
    row = await db.reads.get_task(conn, uid)
    assert row is not None and row.state == states.TaskState.QUEUED
    await asyncio.gather(*rt.background)
    [event] = [e for e in await events_of(rt, namespace, "lost-row") if e["reason"] == "Readmitted"]
    assert "lost its data" in event["message"] and event["type"] == "Warning"


async def test_a_refused_task_is_deleted_after_the_refused_ttl_and_a_recent_one_kept(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """A refused object (up to ~1.5 MiB in etcd) used to stay for ever: 1,400 of them fill etcd's quota."""
    rt = _served(runtime, namespace)
    now = datetime.datetime.now(datetime.timezone.utc)
    for name, age in (("refused-old", 2 * rt.config.refused_ttl_seconds), ("refused-new", 1.0)):
        body = await create_task(rt, namespace, name, managedBy=OWNER)
        await rt.kube.patch_task_status(namespace, name, body["metadata"]["uid"], status.rejected(
            status.REFUSED, "spec.payload is too large", now - datetime.timedelta(seconds=age)))

    async def deleted() -> bool:
        return await get_task(rt, namespace, "refused-old") is None

    await _sweep_until(rt, conn, deleted, "the old refused Task to be deleted")
    assert await get_task(rt, namespace, "refused-new") is not None
    assert await db.reads.get_task(conn, body["metadata"]["uid"]) is None  # refusing never wrote a row


async def test_a_finished_task_whose_history_was_deleted_is_left_alone_and_fetched_once(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    rt = _served(runtime, namespace)
    body = await create_task(rt, namespace, "done", managedBy=OWNER)
    await rt.kube.patch_task_status(namespace, "done", body["metadata"]["uid"], {"phase": "Succeeded"})

    async def settled() -> bool:
        return body["metadata"]["uid"] in rt.unrowed.settled

    await _sweep_until(rt, conn, settled, "the finished Task to be settled")
    assert rt.admissions.empty() and await db.reads.get_task(conn, body["metadata"]["uid"]) is None
    assert body["metadata"]["uid"] in rt.unrowed.settled  # the next sweeps do not fetch it again
    assert await get_task(rt, namespace, "done") is not None


async def test_a_status_the_api_server_refuses_for_good_is_given_up_counted_and_does_not_stall_the_mirror(
        runtime: Runtime, conn: db.connection.Conn, namespace: str, crd_plane: controlplane.ControlPlane,
        tmp_path: pathlib.Path) -> None:
    """A 403 (RBAC) or 422 (schema) was retried every second for ever, and blocked TTL and retention."""
    body = await create_task(runtime, namespace, "forbidden")
    task = admission.admissible(body)
    assert isinstance(task, db.queue.NewTask)
    await db.queue.admit(conn, [task])
    crd_plane.kubectl("create", "serviceaccount", "no-status", "-n", namespace)
    token = crd_plane.kubectl("create", "token", "no-status", "-n", namespace).stdout.strip()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(controlplane.kubeconfig_text(crd_plane.server, crd_plane.ca_file, token))
    forbidden = Runtime(config=runtime.config, kube=kube.Kube(kubeconfig=str(kubeconfig)))
    try:
        assert not await mirror.run_once(forbidden, conn)
        assert await db.outbox.pending_status(conn, 10) == [], "given up: the next pass does not retry it"
        assert forbidden.meters.status_refused.labels("403")._value.get() == 1
    finally:
        await forbidden.close()


async def test_retries_from_the_dead_letter_stop_at_the_attempt_cap(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    """The retry annotation set in a loop ran a failing Task without end, 101 attempts per retry."""
    body = await create_task(runtime, namespace, "hopeless", maxRetries=0)
    task = admission.admissible(body)
    assert isinstance(task, db.queue.NewTask)
    await db.queue.admit(conn, [task])
    [claimed] = await db.queue.claim(conn, task.queue, "pod-1/aaaa", "pod-1", 1, 30)
    await db.queue.fail(conn, claimed.id, "pod-1/aaaa", claimed.attempt, error_type="E", message="m",
                        traceback=None, retry_at=None)
    await conn.execute("UPDATE kubetask_tasks SET attempts = %s, budget_base = %s WHERE uid = %s",
                       [db.queue.MAX_ATTEMPTS, db.queue.MAX_ATTEMPTS, task.uid])
    body["metadata"]["annotations"] = {model.RETRY_ANNOTATION: "again"}
    body["status"] = {"phase": "DeadLetter"}
    await watch.on_task_event(runtime, "MODIFIED", body)
    row = await db.reads.get_task(conn, task.uid)
    assert row is not None and row.state == states.TaskState.DEAD_LETTER
    await asyncio.gather(*runtime.background)
    [event] = [e for e in await events_of(runtime, namespace, "hopeless") if e["reason"] == "RetryRefused"]
    assert f"the cap of {db.queue.MAX_ATTEMPTS}" in event["message"]
