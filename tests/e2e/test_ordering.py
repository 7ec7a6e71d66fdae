"""Priority and scheduling decide the order in which a pool runs due work."""

from __future__ import annotations

import datetime

from tests.stack import Stack, task


def test_higher_priority_runs_first_and_runat_waits(e2e: Stack, namespace: str) -> None:
    queue = "ordered"  # no pool yet: everything queues up first
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    e2e.apply(task(namespace, "echo", "low", queue=queue, priority=-5),
              task(namespace, "echo", "mid", queue=queue),
              task(namespace, "echo", "high", queue=queue, priority=50),
              task(namespace, "echo", "scheduled", queue=queue, priority=100, runAt=later))
    e2e.wait_all(namespace, ("Queued",), 4)
    assert e2e.get(namespace, "scheduled")["status"]["nextAttemptAt"] == later

    e2e.add_pool(queue, min_replicas=1, max_replicas=1, concurrency=1)
    try:
        items = e2e.wait_all(namespace, ("Succeeded",), 4, timeout=60)
        started = sorted(items, key=lambda t: (e2e.attempts(t["metadata"]["uid"])[0]["started_at"]))
        # The scheduled task has the highest priority but was not due: it runs last, after its runAt.
        assert [t["metadata"]["name"] for t in started] == ["high", "mid", "low", "scheduled"]
        scheduled = e2e.attempts(started[-1]["metadata"]["uid"])[0]["started_at"]
        assert scheduled >= datetime.datetime.fromisoformat(later.replace("Z", "+00:00"))
    finally:
        e2e.remove_pool(queue)
