"""Handlers that misbehave are contained, and recorded with an error that says what happened."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from tests.stack import Stack, task

QUEUE = "unruly"


@pytest.fixture
def unruly(e2e: Stack) -> Iterator[Stack]:
    """A pool whose workers load tests/faults/handlers.py, and the demos for the `echo` that shows it still serves."""
    e2e.add_pool(QUEUE, min_replicas=1, max_replicas=1, concurrency=2,
                 extra_env={"KUBETASK_HANDLERS": "kubetask.demo,tests.faults.handlers", "PYTHONPATH": str(ROOT)})
    yield e2e
    e2e.remove_pool(QUEUE)


def test_handler_that_kills_its_process_is_rescued_then_dead_lettered(unruly: Stack, namespace: str) -> None:
    unruly.apply(task(namespace, "exit-process", "suicidal", queue=QUEUE, maxRetries=1,
                      backoff={"initialSeconds": 0.1, "jitter": 0}))
    status = unruly.wait_phase(namespace, "suicidal", "DeadLetter", timeout=90)["status"]
    assert [h["outcome"] for h in status["history"]] == ["lost", "lost"]
    assert status["lastError"]["type"] == "LeaseExpired"
    # The pool recovers: the next task on it runs normally.
    unruly.apply(task(namespace, "echo", "after", queue=QUEUE))
    unruly.wait_phase(namespace, "after", "Succeeded", timeout=60)


def test_non_json_result_is_a_clear_permanent_error(unruly: Stack, namespace: str) -> None:
    unruly.apply(task(namespace, "not-json", "odd", queue=QUEUE))
    status = unruly.wait_phase(namespace, "odd", "DeadLetter")["status"]
    assert status["attempts"] == 1
    assert status["lastError"]["type"] == "ResultNotSerializable"
    assert "JSON" in status["lastError"]["message"]


def test_hanging_handler_times_out_and_the_worker_keeps_serving(unruly: Stack, namespace: str) -> None:
    unruly.apply(task(namespace, "hang", "stuck", queue=QUEUE, timeoutSeconds=1, maxRetries=0))
    status = unruly.wait_phase(namespace, "stuck", "DeadLetter", timeout=60)["status"]
    assert [h["outcome"] for h in status["history"]] == ["timeout"]
    unruly.apply(task(namespace, "echo", "next", queue=QUEUE))
    unruly.wait_phase(namespace, "next", "Succeeded", timeout=60)


def test_leaking_handler_recycles_the_worker_and_nothing_is_lost(e2e: Stack, namespace: str) -> None:
    """Over KUBETASK_MAX_MEMORY_MB the worker finishes, exits 0 and is restarted with fresh memory."""
    queue = "leaky"
    e2e.add_pool(queue, min_replicas=1, max_replicas=1, concurrency=1,
                 extra_env={"KUBETASK_HANDLERS": "tests.faults.handlers", "PYTHONPATH": str(ROOT),
                            "KUBETASK_MAX_MEMORY_MB": "160"})
    try:
        e2e.apply(*[task(namespace, "leak", f"leak{i}", queue=queue, payload={"bytes": 60_000_000})
                    for i in range(4)])
        items = e2e.wait_all(namespace, ("Succeeded",), 4, timeout=120)
        owners = {e2e.attempts(t["metadata"]["uid"])[0]["lease_owner"] for t in items}
        assert len(owners) >= 2, "the worker never recycled"
        assert all(len(e2e.attempts(t["metadata"]["uid"])) == 1 for t in items), "a task ran twice"
        log = "".join(p.read_text(errors="replace")
                      for p in (e2e.plane.state_dir / "logs" / "pods").glob(f"kubetask-system_kubetask-worker-{queue}-*"))
        assert "recycling: resident memory" in log
    finally:
        e2e.remove_pool(queue)
