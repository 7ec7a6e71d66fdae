"""The queues service's pass on a real API server: each Queue object's row, and the refusal of Tasks
from namespaces its selector does not match, in whichever order Tasks, Queues and labels change.

Queues are cluster-wide, and the control plane is shared by the session: each test names its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import create_task, events_of, get_task, put_queue

from kubetask import db, model
from kubetask.operator import admission, mirror, queues
from kubetask.operator.runtime import Runtime

LABEL = "kubetask.io/test-tenant"


async def label(rt: Runtime, namespace: str, value: str | None) -> None:
    await asyncio.to_thread(rt.kube.core.patch_namespace, namespace, {"metadata": {"labels": {LABEL: value}}})


def selecting(value: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {LABEL: value}}}


class Scene:
    """A Task of ``queue`` in ``namespace``, and the moves a story makes around it."""

    def __init__(self, rt: Runtime, conn: db.connection.Conn, namespace: str, queue: str) -> None:
        self.rt, self.conn, self.namespace, self.queue = rt, conn, namespace, queue
        self.task: db.queue.NewTask | None = None

    async def submit(self) -> None:
        body = await create_task(self.rt, self.namespace, "submitted", queue=self.queue)
        task = admission.admissible(body)
        assert isinstance(task, db.queue.NewTask)
        self.task = task
        await db.queue.admit(self.conn, [task])

    async def queue_for(self, value: str) -> None:
        await put_queue(self.rt, self.queue, **selecting(value))

    async def label(self, value: str) -> None:
        await label(self.rt, self.namespace, value)

    async def sync(self) -> None:
        assert not await queues.run_once(self.rt, self.conn)

    async def claim(self) -> list[db.queue.ClaimedTask]:
        return await db.queue.claim(self.conn, self.queue, "pod/1", "pod", 5, 30)


#: (story, steps). Every story ends with the Task outside its Queue's selector.
STORIES: list[tuple[str, list[tuple[str, str | None]]]] = [
    ("created before the Queue", [("label", "a"), ("submit", None), ("queue_for", "b"), ("sync", None)]),
    ("admitted after the Queue", [("label", "a"), ("queue_for", "b"), ("sync", None), ("submit", None)]),
    ("selector changed while it waits",
     [("label", "a"), ("queue_for", "a"), ("sync", None), ("submit", None), ("queue_for", "b"), ("sync", None)]),
    ("namespace relabelled while it waits",
     [("label", "a"), ("queue_for", "a"), ("sync", None), ("submit", None), ("label", "b-not-a"), ("sync", None)]),
    ("namespace relabelled before the operator looked",
     [("label", "a"), ("queue_for", "a"), ("submit", None), ("label", "b-not-a"), ("sync", None)]),
]


@pytest.mark.parametrize("steps", [s[1] for s in STORIES], ids=[s[0] for s in STORIES])
async def test_a_task_outside_the_selector_is_refused_visibly_and_never_claimed(
        runtime: Runtime, conn: db.connection.Conn, namespace: str, queue_name: str,
        steps: list[tuple[str, str | None]]) -> None:
    scene = Scene(runtime, conn, namespace, queue_name)
    for step, argument in steps:
        move: Callable[..., Awaitable[Any]] = getattr(scene, step)
        await (move(argument) if argument is not None else move())
        if scene.task is not None and step != "sync":
            # Between the operator's passes too: whatever the row says, nothing outside it is claimed.
            row = await db.queues.get(conn, queue_name)
            outside = row is not None and row.allowed_namespaces is not None and namespace not in row.allowed_namespaces
            if outside:
                assert await scene.claim() == []
    assert await scene.claim() == []
    await mirror.run_once(runtime, conn)
    status = (await get_task(runtime, namespace, "submitted") or {})["status"]
    assert status["phase"] == "DeadLetter", status
    assert status["lastError"]["type"] == model.QUEUE_REFUSED
    [condition] = [c for c in status["conditions"] if c["type"] == "QueueAdmitted"]
    assert (condition["status"], condition["reason"]) == ("False", model.QUEUE_REFUSED)
    message = condition["message"]
    for words in (f"Queue {queue_name} does not admit Tasks from namespace {namespace}", LABEL,
                  f"label namespace {namespace}", f"kubectl edit queue {queue_name}"):
        assert words in message, message
    refused = [e for e in await events_of(runtime, namespace, "submitted") if e["reason"] == "Refused"]
    assert refused and refused[0]["type"] == "Warning" and queue_name in refused[0]["message"]


async def test_a_task_inside_the_selector_runs(runtime: Runtime, conn: db.connection.Conn, namespace: str,
                                               queue_name: str) -> None:
    scene = Scene(runtime, conn, namespace, queue_name)
    await scene.label("a")
    await scene.queue_for("a")
    await scene.sync()
    await scene.submit()
    [claimed] = await scene.claim()
    assert scene.task is not None and claimed.uid == scene.task.uid


async def test_a_queue_objects_row_follows_it_and_goes_with_it(runtime: Runtime, conn: db.connection.Conn,
                                                                queue_name: str) -> None:
    await put_queue(runtime, queue_name, paused=True, maxRunning=3, concurrencyKeyLimit=2,
                    rateLimit={"tasks": 20, "periodSeconds": 1})
    await queues.run_once(runtime, conn)
    row = await db.queues.get(conn, queue_name)
    assert row is not None
    assert (row.paused, row.max_running, row.concurrency_key_limit, row.rate_tasks, row.rate_period_seconds,
            row.allowed_namespaces) == (True, 3, 2, 20, 1, None)
    await put_queue(runtime, queue_name, paused=False, maxRunning=None)
    await queues.run_once(runtime, conn)
    row = await db.queues.get(conn, queue_name)
    assert row is not None and (row.paused, row.max_running, row.generation) == (False, None, 2)
    await asyncio.to_thread(runtime.kube.custom.delete_cluster_custom_object, model.GROUP, model.VERSION,
                            model.QUEUE_PLURAL, queue_name)
    await queues.run_once(runtime, conn)
    assert await db.queues.get(conn, queue_name) is None


def test_desired_rows_matches_selectors_against_namespace_labels() -> None:
    labels = {"team-a": {"team": "a"}, "team-b": {"team": "b"}, "bare": {}}
    bodies = [
        {"metadata": {"name": "open", "generation": 1}, "spec": {"namespaceSelector": {}}},
        {"metadata": {"name": "a-only", "generation": 4}, "spec": {"namespaceSelector": {"matchLabels": {"team": "a"}}}},
        {"metadata": {"name": "teams"}, "spec": {"namespaceSelector": {
            "matchExpressions": [{"key": "team", "operator": "Exists"}]}}},
        {"metadata": {"name": "broken"}, "spec": {"maxRunning": 0}},
    ]
    rows = queues.desired_rows(bodies, labels)
    assert {name: row.allowed_namespaces for name, row in rows.items()} == {
        "open": None, "a-only": ("team-a",), "teams": ("team-a", "team-b")}
    assert rows["a-only"].generation == 4
    assert queues.invalid_names(bodies, rows) == {"broken"}, "an unreadable Queue keeps its old row"
