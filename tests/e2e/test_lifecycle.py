"""Task lifecycle beyond running: cancel on delete, TTL, spec immutability, operator restarts."""

from __future__ import annotations

import json
import pathlib

from kubetask_dev import devstack

from tests.stack import FAST_OPERATOR_ENV, Stack, task


def test_deleting_a_running_task_cancels_it_and_keeps_history(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "sleep", "doomed", payload={"seconds": 30}))
    uid = e2e.wait_phase(namespace, "doomed", "Running")["metadata"]["uid"]
    e2e.plane.kubectl("delete", "task", "doomed", "-n", namespace)
    row = devstack.wait_for(
        lambda: (lambda r: r[0] if r and r[0]["state"] == "cancelled" else None)(
            e2e.sql("SELECT state FROM kubetask_tasks WHERE uid = %s", uid)),
        20, "the task to be cancelled in PostgreSQL")
    assert row["state"] == "cancelled"
    devstack.wait_for(lambda: e2e.attempts(uid)[-1]["outcome"] == "cancelled", 20, "the running attempt to stop")


def test_ttl_deletes_the_finished_task_but_not_its_history(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "echo", "short-lived", ttlSecondsAfterFinished=1))
    uid = e2e.wait_phase(namespace, "short-lived", "Succeeded")["metadata"]["uid"]
    devstack.wait_for(
        lambda: e2e.plane.kubectl("get", "task", "short-lived", "-n", namespace, check=False).returncode != 0,
        20, "the Task object to be deleted")
    assert [a["outcome"] for a in e2e.attempts(uid)] == ["succeeded"]
    assert e2e.sql("SELECT state FROM kubetask_tasks WHERE uid = %s", uid)[0]["state"] == "succeeded"


def test_spec_edits_after_creation_are_refused(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "echo", "fixed"))
    result = e2e.plane.kubectl("patch", "task", "fixed", "-n", namespace, "--type=merge",
                               "-p", json.dumps({"spec": {"priority": 9}}), check=False)
    assert result.returncode != 0
    assert "spec is immutable" in result.stderr


def test_oversized_payload_is_refused_visibly(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "echo", "huge", payload={"blob": "x" * 70_000}))
    status = e2e.wait_phase(namespace, "huge", "DeadLetter")["status"]
    assert status["attempts"] == 0
    assert "spec.payload" in status["lastError"]["message"]
    admitted = {c["type"]: c for c in status["conditions"]}["Admitted"]
    assert admitted["status"] == "False"


def test_operator_killed_during_a_burst_loses_nothing(e2e: Stack, namespace: str) -> None:
    e2e.apply(*[task(namespace, "echo", f"b{i:03d}", payload={"i": i}) for i in range(50)])
    e2e.stop_operator(kill=True)
    e2e.apply(*[task(namespace, "echo", f"c{i:03d}", payload={"i": i}) for i in range(50)])
    e2e.start_operator()
    items = e2e.wait_all(namespace, ("Succeeded",), 100, timeout=120)
    uids = [t["metadata"]["uid"] for t in items]
    rows = e2e.sql("SELECT uid::text AS uid, state, attempts FROM kubetask_tasks WHERE uid = ANY(%s::uuid[])", uids)
    assert len(rows) == 100, "every Task admitted exactly once"
    by_uid = {r["uid"]: r for r in rows}
    for item in items:
        row = by_uid[item["metadata"]["uid"]]
        assert row["state"] == "succeeded"
        assert item["status"]["attempts"] == row["attempts"] == 1
        assert item["status"]["result"] == item["spec"]["payload"]


def test_two_operators_one_leads_and_the_standby_takes_over(e2e: Stack, namespace: str,
                                                            tmp_path: pathlib.Path) -> None:
    leader = e2e.operator
    assert leader is not None
    standby = devstack.DevStack.start_operator(e2e.plane, e2e.dsn, tmp_path, FAST_OPERATOR_ENV)
    try:
        devstack.wait_for(lambda: "waiting for leadership" in (tmp_path / "operator.log").read_text(), 30,
                          "the standby to start")
        e2e.apply(task(namespace, "echo", "before"))
        e2e.wait_phase(namespace, "before", "Succeeded")
        assert "leading:" not in (tmp_path / "operator.log").read_text(), "two leaders at once"

        e2e.stop_operator(kill=True)
        e2e.apply(task(namespace, "echo", "after"))
        e2e.wait_phase(namespace, "after", "Succeeded", timeout=30)
        assert "leading:" in (tmp_path / "operator.log").read_text()
    finally:
        devstack.stop_process(standby)


def test_a_payload_postgresql_cannot_store_is_refused_without_blocking_others(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "echo", "poison", payload={"bytes": "a\u0000b"}),
              *[task(namespace, "echo", f"fine{i}") for i in range(5)])
    status = e2e.wait_phase(namespace, "poison", "DeadLetter")["status"]
    assert "spec.payload" in status["lastError"]["message"] and "NUL" in status["lastError"]["message"]
    for i in range(5):
        e2e.wait_phase(namespace, f"fine{i}", "Succeeded")


def test_a_queue_without_a_pool_waits_visibly(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "echo", "orphan", queue="nobody-serves-this"))
    queued = e2e.wait_phase(namespace, "orphan", "Queued")
    conditions = {c["type"]: c for c in queued["status"]["conditions"]}
    assert conditions["WorkerPool"]["status"] == "False"
    assert conditions["WorkerPool"]["reason"] == "NoWorkerPool"
    assert "nobody-serves-this" in conditions["WorkerPool"]["message"]
    e2e.add_pool("nobody-serves-this", max_replicas=1)
    try:
        done = e2e.wait_phase(namespace, "orphan", "Succeeded", timeout=60)
        assert "WorkerPool" not in {c["type"] for c in done["status"]["conditions"]}
    finally:
        e2e.remove_pool("nobody-serves-this")
