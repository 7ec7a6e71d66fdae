"""The Queue's status on a real API server: its counts mirrored from PostgreSQL, its Paused condition and
observedGeneration from the row the claim enforces, patched only when they change."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from typing import Any

import prometheus_client
from conftest import put_queue

from kubetask import db, model
from kubetask.operator import queues, scrape
from kubetask.operator.runtime import Runtime


async def get_queue(rt: Runtime, name: str) -> dict[str, Any]:
    found: dict[str, Any] = await asyncio.to_thread(rt.kube.custom.get_cluster_custom_object, model.GROUP,
                                                    model.VERSION, model.QUEUE_PLURAL, name)
    return found


def paused(status: dict[str, Any]) -> dict[str, Any]:
    [condition] = [c for c in status["conditions"] if c["type"] == queues.PAUSED]
    return condition


async def test_a_queues_status_mirrors_its_counts_and_pause_and_is_patched_only_on_change(
        runtime: Runtime, conn: db.connection.Conn, queue_name: str,
        new_task: Callable[..., db.queue.NewTask]) -> None:
    await put_queue(runtime, queue_name, maxRunning=5)
    # Before the queues service wrote its row, the status says the spec is not enforced yet.
    await queues.status_once(runtime, conn)
    status = (await get_queue(runtime, queue_name))["status"]
    assert (paused(status)["status"], paused(status)["reason"]) == ("Unknown", "NotEnforced")
    assert "observedGeneration" not in status

    await queues.run_once(runtime, conn)
    now = datetime.datetime.now(datetime.timezone.utc)
    forty_seconds_ago = now - datetime.timedelta(seconds=40)
    await db.queue.admit(conn, [new_task(queue=queue_name, run_at=forty_seconds_ago) for _ in range(5)])
    await db.queue.admit(conn, [new_task(queue=queue_name, run_at=now + datetime.timedelta(hours=1))])
    claimed = await db.queue.claim(conn, queue_name, "owner/1", "pod-1", 3, 30)
    assert len(claimed) == 3
    await db.queue.fail(conn, claimed[0].id, "owner/1", claimed[0].attempt, error_type="E", message="m",
                        traceback=None, retry_at=now + datetime.timedelta(hours=1))
    await db.queue.fail(conn, claimed[1].id, "owner/1", claimed[1].attempt, error_type="E", message="m",
                        traceback=None)
    await queues.status_once(runtime, conn)
    queue = await get_queue(runtime, queue_name)
    status = queue["status"]
    assert {key: status[key] for key in ("pending", "running", "retrying", "deadLetter", "claimedLastMinute")} == {
        "pending": 2, "running": 1, "retrying": 1, "deadLetter": 1, "claimedLastMinute": 3}
    assert 39 <= status["oldestWaitingSeconds"] < 120
    assert (paused(status)["status"], paused(status)["reason"]) == ("False", "Claiming")
    assert status["observedGeneration"] == queue["metadata"]["generation"]
    model.QueueStatus.model_validate(status)

    # Nothing waits due any more (its age would tick): one patch for the change, then none.
    assert len(await db.queue.claim(conn, queue_name, "owner/1", "pod-1", 5, 30)) == 2
    await queues.status_once(runtime, conn)
    writes = runtime.kube.writes_by_kind["queue_status"]
    status = (await get_queue(runtime, queue_name))["status"]
    assert (status["pending"], status["running"], status["oldestWaitingSeconds"]) == (0, 3, 0)
    await queues.status_once(runtime, conn)
    assert runtime.kube.writes_by_kind["queue_status"] == writes, "an unchanged status is not written"

    # Paused: the condition turns once the row says so (the claim's view), with the new generation.
    since = paused(status)["lastTransitionTime"]
    await put_queue(runtime, queue_name, paused=True)
    await queues.status_once(runtime, conn)
    status = (await get_queue(runtime, queue_name))["status"]
    assert paused(status)["status"] == "False", "the row is not paused yet: claims go on"
    await queues.run_once(runtime, conn)
    await queues.status_once(runtime, conn)
    queue = await get_queue(runtime, queue_name)
    status = queue["status"]
    assert (paused(status)["status"], paused(status)["reason"]) == ("True", "Paused")
    assert f"kubetask queue resume {queue_name}" in paused(status)["message"]
    assert paused(status)["lastTransitionTime"] >= since
    assert status["observedGeneration"] == queue["metadata"]["generation"] == 2


def test_a_conditions_transition_time_is_kept_while_its_status_stays() -> None:
    row = db.queues.QueueRow("q", paused=True, generation=3)
    then = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    first = queues.paused_condition("q", row, None, then)
    later = queues.paused_condition("q", row, first, then + datetime.timedelta(hours=1))
    assert later == first
    resumed = queues.paused_condition("q", db.queues.QueueRow("q"), first, then + datetime.timedelta(hours=1))
    assert (resumed["status"], resumed["lastTransitionTime"]) == ("False", "2026-01-01T01:00:00Z")


async def test_the_leaders_scrape_reports_each_queues_limit_saturation(
        runtime: Runtime, conn: db.connection.Conn, new_task: Callable[..., db.queue.NewTask]) -> None:
    await db.queues.upsert(conn, db.queues.QueueRow("limited", max_running=4))
    await db.queues.upsert(conn, db.queues.QueueRow("held", paused=True))
    await db.queue.admit(conn, [new_task(queue="limited") for _ in range(3)])
    assert len(await db.queue.claim(conn, "limited", "owner/1", "pod-1", 3, 30)) == 3
    runtime.leading = True
    await scrape.refresh(runtime)
    text = prometheus_client.generate_latest(runtime.meters.registry).decode()
    assert 'kubetask_queue_running_saturation{queue="limited"} 0.75' in text
    assert 'kubetask_queue_max_running{queue="limited"} 4.0' in text
    assert 'kubetask_queue_paused{queue="held"} 1.0' in text and 'kubetask_queue_paused{queue="limited"} 0.0' in text
