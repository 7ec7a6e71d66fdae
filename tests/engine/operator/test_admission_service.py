"""Admission: ``admissible`` decides once; ``run_once`` queues a batch and refuses, visibly, the rest."""

from __future__ import annotations

import datetime

from conftest import create_task, events_of, get_task
from kubetask_dev import controlplane

from kubetask import db, kube, model, settings
from kubetask.operator import admission
from kubetask.operator.runtime import Runtime


def raw(**spec: object) -> dict[str, object]:
    return {"metadata": {"uid": "6f0c0f5e-0000-4000-8000-000000000001", "namespace": "ns", "name": "t",
                         "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"type": "echo", **spec}}


def test_a_valid_task_becomes_its_row() -> None:
    task = admission.admissible(raw(queue="q", priority=5, maxRetries=1, payload={"a": 1}, delaySeconds=60))
    assert isinstance(task, db.queue.NewTask)
    assert (task.queue, task.priority, task.max_retries, task.payload) == ("q", 5, 1, {"a": 1})
    assert task.run_at == datetime.datetime(2026, 1, 2, 3, 5, 5, tzinfo=datetime.timezone.utc), \
        "a delay counts from the Task's creation, not from when the operator saw it"


def test_refusals_name_the_field_and_the_fix() -> None:
    nul = admission.admissible(raw(payload={"files": [{"data": "abc\x00def"}]}))
    assert isinstance(nul, admission.Refusal)
    assert "spec.payload.files[0].data" in nul.reason and "base64" in nul.reason
    big = admission.admissible(raw(payload={"blob": "x" * (model.MAX_PAYLOAD_BYTES + 1)}))
    assert isinstance(big, admission.Refusal) and "spec.payload is" in big.reason and "reference" in big.reason
    bad = admission.admissible(raw(priority=5000))
    assert isinstance(bad, admission.Refusal) and bad.reason.startswith("spec.priority:")


async def test_run_once_admits_the_good_and_refuses_the_bad_of_one_batch(
        runtime: Runtime, conn: db.connection.Conn, namespace: str) -> None:
    good = await create_task(runtime, namespace, "good")
    oversized = await create_task(runtime, namespace, "oversized",
                                  payload={"blob": "x" * (model.MAX_PAYLOAD_BYTES + 10)})
    runtime.admissions.offer(good)
    runtime.admissions.offer(oversized)
    assert await admission.run_once(runtime, conn)
    row = await db.reads.get_task(conn, good["metadata"]["uid"])
    assert row is not None and row.state == "queued"
    assert await db.reads.get_task(conn, oversized["metadata"]["uid"]) is None
    refused = await get_task(runtime, namespace, "oversized")
    assert refused is not None and refused["status"]["phase"] == "DeadLetter"
    assert "over the" in refused["status"]["lastError"]["message"]
    assert any(e["reason"] == "Refused" for e in await events_of(runtime, namespace, "oversized"))


async def test_a_burst_past_the_admission_queue_keeps_references_and_loses_nothing(
        dsn: str, crd_plane: controlplane.ControlPlane, conn: db.connection.Conn, namespace: str) -> None:
    config = settings.OperatorSettings.from_env({"DATABASE_URL": dsn, "KUBETASK_ADMISSION_QUEUE_SIZE": "2"})
    rt = Runtime(config=config, kube=kube.Kube(kubeconfig=str(crd_plane.kubeconfig)))
    try:
        bodies = [await create_task(rt, namespace, f"burst-{i}") for i in range(5)]
        for body in [*bodies, bodies[0], bodies[4]]:
            rt.admissions.offer(body)
        assert (rt.admissions.bodies_held(), rt.admissions.qsize()) == (2, 5), \
            "past its size the queue holds references, not bodies, and a Task offered twice waits once"
        gone = bodies[3]["metadata"]
        await rt.kube.delete_task(namespace, gone["name"], gone["uid"])
        while not rt.admissions.empty():
            assert await admission.run_once(rt, conn)
        for body in bodies:
            row = await db.reads.get_task(conn, body["metadata"]["uid"])
            if body["metadata"]["uid"] == gone["uid"]:
                assert row is None, "a Task deleted while only its reference waited is not admitted"
            else:
                assert row is not None and row.state == "queued", body["metadata"]["name"]
    finally:
        await rt.close()
