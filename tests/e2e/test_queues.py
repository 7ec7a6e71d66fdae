"""Queue objects through the running operator: kubectl apply a Queue, and the workers obey it.

Each test uses a queue name of its own (Queues are cluster-wide and the stack is shared), so no other
test's Tasks meet these Queues.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubetask_dev import devstack

from tests.stack import Stack, task

LABEL = "kubetask.io/e2e-tenant"


@pytest.fixture
def queue(e2e: Stack) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    yield name
    e2e.plane.kubectl("delete", "queue", name, "--ignore-not-found", "--wait=false", check=False)


def apply_queue(e2e: Stack, name: str, **spec: Any) -> None:
    e2e.plane.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "kubetask.io/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": spec}))


def wait_row(e2e: Stack, name: str, **columns: Any) -> None:
    """Until the operator has written the Queue's row with these values."""
    def check() -> bool:
        if not e2e.sql("SELECT to_regclass('kubetask_queues') AS t")[0]["t"]:
            return False  # the operator (just started) has not migrated yet
        rows = e2e.sql("SELECT * FROM kubetask_queues WHERE name = %s", name)
        return bool(rows) and all(rows[0][key] == value for key, value in columns.items())

    devstack.wait_for(check, 20, f"the row of Queue {name} with {columns}", interval=0.1)


def test_a_paused_queue_holds_its_tasks_until_resumed(e2e: Stack, namespace: str, queue: str) -> None:
    apply_queue(e2e, queue, paused=True)
    wait_row(e2e, queue, paused=True)
    e2e.add_pool(queue, min_replicas=1, max_replicas=1)
    try:
        e2e.apply(task(namespace, "echo", "held", queue=queue))
        uid = e2e.wait_phase(namespace, "held", "Queued")["metadata"]["uid"]
        table = e2e.plane.kubectl("get", "queue", queue, "--no-headers").stdout.split()
        assert table[:2] == [queue, "true"], table
        # A worker of the queue is up and polling: the pause, not a missing worker, holds the Task.
        devstack.wait_for(lambda: e2e.replicas(queue) == 1, 30, "the pool's worker")
        assert e2e.attempts(uid) == []
        e2e.plane.kubectl("patch", "queue", queue, "--type=merge", "-p", json.dumps({"spec": {"paused": False}}))
        e2e.wait_phase(namespace, "held", "Succeeded", timeout=60)
    finally:
        e2e.remove_pool(queue)


def _refused(e2e: Stack, namespace: str, name: str, queue: str) -> None:
    status = e2e.wait_phase(namespace, name, "DeadLetter", timeout=30)["status"]
    assert status["lastError"]["type"] == "QueueRefused"
    assert f"Queue {queue} does not admit Tasks from namespace {namespace}" in status["lastError"]["message"]
    [condition] = [c for c in status["conditions"] if c["type"] == "QueueAdmitted"]
    assert condition["status"] == "False" and f"kubectl edit queue {queue}" in condition["message"]

    def refused_event() -> list[dict[str, Any]]:
        events = json.loads(e2e.plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
        return [e for e in events if e["reason"] == "Refused" and e["involvedObject"]["name"] == name]

    [event] = devstack.wait_for(refused_event, 20, "a Refused Event", interval=0.2)
    assert event["type"] == "Warning" and queue in event["message"]
    assert e2e.attempts(status.get("uid") or e2e.get(namespace, name)["metadata"]["uid"]) == []


def test_a_task_from_a_namespace_the_queue_does_not_select_is_refused(e2e: Stack, namespace: str,
                                                                       queue: str) -> None:
    apply_queue(e2e, queue, namespaceSelector={"matchLabels": {LABEL: "someone-else"}})
    wait_row(e2e, queue, allowed_namespaces=[])
    e2e.apply(task(namespace, "echo", "outsider", queue=queue))
    _refused(e2e, namespace, "outsider", queue)


def test_a_waiting_task_is_refused_when_a_queue_that_excludes_it_appears(e2e: Stack, namespace: str,
                                                                         queue: str) -> None:
    """The Queue's watch event wakes the operator: well within its once-a-minute resync."""
    e2e.apply(task(namespace, "echo", "early", queue=queue))
    e2e.wait_phase(namespace, "early", "Queued")
    apply_queue(e2e, queue, namespaceSelector={"matchExpressions": [{"key": LABEL, "operator": "Exists"}]})
    _refused(e2e, namespace, "early", queue)


def test_a_namespace_labelled_in_is_admitted(e2e: Stack, namespace: str, queue: str) -> None:
    e2e.plane.kubectl("label", "namespace", namespace, f"{LABEL}=tenant-a")
    apply_queue(e2e, queue, namespaceSelector={"matchLabels": {LABEL: "tenant-a"}})
    wait_row(e2e, queue, allowed_namespaces=[namespace])
    e2e.add_pool(queue, max_replicas=1)
    try:
        e2e.apply(task(namespace, "echo", "insider", queue=queue))
        e2e.wait_phase(namespace, "insider", "Succeeded", timeout=60)
    finally:
        e2e.remove_pool(queue)
