"""KUBETASK_REQUIRE_QUEUE on a real API server and PostgreSQL: a Task whose queue has no Queue object is
refused visibly, on the path of a namespace its Queue does not admit, whichever comes first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import create_task, events_of, get_task, put_queue

from kubetask import db, model, settings, states
from kubetask.operator import admission, mirror, queues, watch
from kubetask.operator.runtime import Runtime


@pytest.fixture
def requiring(runtime: Runtime) -> Runtime:
    runtime.config = runtime.config.model_copy(update={"require_queue": True})
    return runtime


async def admit(rt: Runtime, conn: db.connection.Conn, body: dict[str, Any]) -> db.reads.TaskRow:
    rt.admissions.offer(body)
    await admission.run_once(rt, conn)
    row = await db.reads.get_task(conn, body["metadata"]["uid"])
    assert row is not None
    return row


async def assert_refused_visibly(rt: Runtime, conn: db.connection.Conn, namespace: str, name: str,
                                 queue: str) -> None:
    await mirror.run_once(rt, conn)
    status = (await get_task(rt, namespace, name) or {})["status"]
    assert status["phase"] == "DeadLetter", status
    assert status["lastError"]["type"] == model.QUEUE_REFUSED
    [condition] = [c for c in status["conditions"] if c["type"] == "QueueAdmitted"]
    assert (condition["status"], condition["reason"]) == ("False", model.QUEUE_REFUSED)
    for words in (f"Queue {queue} does not exist", "KUBETASK_REQUIRE_QUEUE", "operator.requireQueue",
                  f"create Queue {queue}", f"admitting namespace {namespace}", f"kubectl annotate task {name}"):
        assert words in condition["message"], condition["message"]
    refused = [e for e in await events_of(rt, namespace, name) if e["reason"] == "Refused"]
    assert refused and refused[0]["type"] == "Warning" and queue in refused[0]["message"]


def test_the_setting_defaults_to_off_and_reads_its_variable() -> None:
    env = {"DATABASE_URL": "postgresql://x@y/z"}
    assert settings.OperatorSettings.from_env(env).require_queue is False
    assert settings.OperatorSettings.from_env({**env, "KUBETASK_REQUIRE_QUEUE": "true"}).require_queue is True


async def test_off_a_queue_without_a_queue_object_is_open(runtime: Runtime, conn: db.connection.Conn,
                                                          namespace: str, queue_name: str) -> None:
    row = await admit(runtime, conn, await create_task(runtime, namespace, "open", queue=queue_name))
    assert row.state == states.TaskState.QUEUED


async def test_on_a_task_of_a_queue_without_a_queue_object_is_refused_at_admission(
        requiring: Runtime, conn: db.connection.Conn, namespace: str, queue_name: str,
        wait_until: Callable[..., Awaitable[Any]]) -> None:
    body = await create_task(requiring, namespace, "nowhere", queue=queue_name)
    row = await admit(requiring, conn, body)
    assert row.state == states.TaskState.DEAD_LETTER and row.attempts == 0
    assert await db.queue.claim(conn, queue_name, "pod/1", "pod", 5, 30) == []
    await assert_refused_visibly(requiring, conn, namespace, "nowhere", queue_name)

    # Retried while the Queue is still missing: not re-queued, and told why.
    body = {**body, "metadata": {**body["metadata"], "annotations": {model.RETRY_ANNOTATION: "1"}},
            "status": {"phase": "DeadLetter"}}
    await watch.on_task_event(requiring, "MODIFIED", body)
    assert (await db.reads.get_task(conn, row.uid)).state == states.TaskState.DEAD_LETTER  # type: ignore[union-attr]

    async def retry_refused() -> bool:
        return any(e["reason"] == "RetryRefused" and queue_name in e["message"]
                   for e in await events_of(requiring, namespace, "nowhere"))

    await wait_until(retry_refused, timeout=10, what="a RetryRefused Event naming the missing Queue")
    # The same annotation seen again (any later event of the Task): not refused twice.
    await watch.on_task_event(requiring, "MODIFIED", body)
    assert not await db.queue.refuse_retry(conn, row.uid, "1"), "the token is recorded as acted on"
    refusals = [e for e in await events_of(requiring, namespace, "nowhere") if e["reason"] == "RetryRefused"]
    assert len(refusals) == 1, refusals
    # Once the Queue exists, a new token runs it.
    await put_queue(requiring, queue_name)
    await queues.run_once(requiring, conn)
    body["metadata"]["annotations"] = {model.RETRY_ANNOTATION: "2"}
    await watch.on_task_event(requiring, "MODIFIED", body)
    assert (await db.reads.get_task(conn, row.uid)).state == states.TaskState.QUEUED  # type: ignore[union-attr]


async def test_on_a_queue_object_whose_row_is_not_written_yet_is_not_taken_for_missing(
        requiring: Runtime, conn: db.connection.Conn, namespace: str, queue_name: str) -> None:
    await put_queue(requiring, queue_name)  # the queues service has not run: no row
    assert await db.queues.get(conn, queue_name) is None
    row = await admit(requiring, conn, await create_task(requiring, namespace, "fresh", queue=queue_name))
    assert row.state == states.TaskState.QUEUED


@pytest.mark.parametrize("story", ["queue deleted while it waits", "setting turned on after admission"])
async def test_on_a_waiting_task_whose_queue_object_is_gone_is_refused_by_the_leaders_pass(
        runtime: Runtime, conn: db.connection.Conn, namespace: str, queue_name: str, story: str) -> None:
    other = f"{queue_name}-kept"
    await put_queue(runtime, other)
    try:
        if story == "queue deleted while it waits":
            runtime.config = runtime.config.model_copy(update={"require_queue": True})
            await put_queue(runtime, queue_name)
            await queues.run_once(runtime, conn)
        body = await create_task(runtime, namespace, "waiting", queue=queue_name)
        kept = await create_task(runtime, namespace, "kept", queue=other)
        assert (await admit(runtime, conn, body)).state == states.TaskState.QUEUED
        assert (await admit(runtime, conn, kept)).state == states.TaskState.QUEUED
        if story == "queue deleted while it waits":
            await asyncio.to_thread(runtime.kube.custom.delete_cluster_custom_object, model.GROUP, model.VERSION,
                                    model.QUEUE_PLURAL, queue_name)
        else:
            runtime.config = runtime.config.model_copy(update={"require_queue": True})
        await queues.run_once(runtime, conn)
        assert await db.queue.claim(conn, queue_name, "pod/1", "pod", 5, 30) == []
        await assert_refused_visibly(runtime, conn, namespace, "waiting", queue_name)
        kept_row = await db.reads.get_task(conn, kept["metadata"]["uid"])
        assert kept_row is not None and kept_row.state == states.TaskState.QUEUED, "its Queue exists"
    finally:
        await asyncio.to_thread(runtime.kube.custom.delete_cluster_custom_object, model.GROUP, model.VERSION,
                                model.QUEUE_PLURAL, other)
