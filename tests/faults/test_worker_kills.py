"""Workers die while tasks flow: SIGKILL again and again, and SIGTERM at scale-in.

Nothing is lost, nothing succeeds twice, every attempt a dead process held is
recorded as ``lost``/``LeaseExpired``, a pod that shuts down gracefully leaves
no task behind it, and every Task's status ends equal to its row.
"""

from __future__ import annotations

import random
import time

import pytest
from kubetask_dev import devstack, podrunner

from tests.faults import audit
from tests.stack import Stack, task


def test_workers_sigkilled_every_second_lose_nothing_and_run_nothing_twice(e2e: Stack, namespace: str) -> None:
    queue = "killed"
    rng = random.Random(6)
    specs = audit.mixed_specs(300, rng, queue, kinds=("sleep", "fail1", "permanent"), weights=(0.85, 0.1, 0.05))
    manifests = [task(namespace, s["type"], f"k{i:03d}", **{k: v for k, v in s.items() if k != "type"})
                 for i, s in enumerate(specs)]
    expected = {m["metadata"]["name"]: audit.expected_phase(m["spec"]) for m in manifests}
    e2e.add_pool(queue, min_replicas=3, max_replicas=3, concurrency=4, scale_down_delay=5)
    try:
        devstack.wait_for(lambda: len(audit.pool_processes(e2e.plane, queue)) == 3, 60, "3 worker processes")
        started = time.monotonic()
        with audit.WorkerKiller(e2e.plane, e2e.dsn, queue, interval=1.0, seed=6, min_age=1.0,
                                 max_kills=15) as killer:
            e2e.apply(*manifests)
            done = audit.wait_finished(e2e.dsn, namespace, len(manifests), timeout=150)
        elapsed = time.monotonic() - started
        assert done == len(manifests), (f"{done}/{len(manifests)} finished; unfinished:\n"
                                        + "\n".join(map(str, audit.unfinished(e2e.dsn, namespace))))
        assert not killer.errors, killer.errors
        assert audit.wait_mirrored(e2e.dsn, namespace, 60) == 0, "statuses still behind their rows"
        report = audit.audit(e2e.plane, e2e.dsn, namespace, expected, killer.kills, faults=len(killer.kills))
        held = report.held_by_killed
        print(f"\nworker SIGKILL: {report.figures()} {report.details()} elapsed={elapsed:.1f}s")
        for line in report.examples:
            print("  ", line)
        assert report.faults >= 8, "too few kills to mean anything"
        assert held > 0, "no kill caught a process holding work"
        assert report.clean, report.examples
        assert report.succeeded + report.dead_letter == len(manifests)
        assert report.lost_attempts >= held - 3  # a statement sent just before the kill may still commit
    finally:
        e2e.remove_pool(queue)


@pytest.mark.parametrize(("grace", "seconds", "must_hand_back"), [
    # The pool defaults: grace 20 s, so KUBETASK_SHUTDOWN_TIMEOUT_SECONDS=15 and a 3 s task finishes in place.
    (20, 3, False),
    # A grace shorter than the task (shutdown timeout 2 s, a 6 s task): it must be handed back.
    (7, 6, True),
], ids=["default-grace", "task-outlives-grace"])
def test_sigterm_at_scale_in_finishes_or_hands_back_and_leaves_nothing_running(
        e2e: Stack, namespace: str, grace: int, seconds: float, must_hand_back: bool) -> None:
    queue = f"shrinking-{grace}"
    e2e.add_pool(queue, max_replicas=3, concurrency=1, scale_down_delay=1, grace=grace)
    try:
        long_tasks = [task(namespace, "sleep", f"long{i}", queue=queue, payload={"seconds": seconds})
                      for i in range(3)]
        burst = [task(namespace, "sleep", f"burst{i}", queue=queue, payload={"seconds": 0.3}) for i in range(6)]
        e2e.apply(*long_tasks, *burst)
        devstack.wait_for(lambda: e2e.replicas(queue) == 3, 30, "the burst to scale the pool to 3")

        def a_long_one_running() -> dict | None:
            for item in e2e.tasks(namespace):
                status = item.get("status") or {}
                if item["metadata"]["name"].startswith("long") and status.get("phase") == "Running":
                    return item
            return None

        victim = devstack.wait_for(a_long_one_running, 60, "a long task to run", interval=0.2)
        pod = victim["status"]["worker"]
        pid = podrunner.running_processes(e2e.plane.state_dir, devstack.NAMESPACE)[pod]
        e2e.plane.kubectl("delete", "pod", pod, "-n", devstack.NAMESPACE, "--wait=false")
        # The process exits once its running task is done (or handed back): the harness forgets it.
        devstack.wait_for(lambda: podrunner.running_processes(e2e.plane.state_dir, devstack.NAMESPACE).get(pod) != pid,
                          30, f"{pod} to shut down")
        left = e2e.sql("SELECT name, lease_owner FROM kubetask_tasks WHERE state = 'running' AND worker_pod = %s", pod)
        assert left == [], f"rows still running on {pod}, whose process is gone: {left}"

        items = e2e.wait_all(namespace, ("Succeeded",), len(long_tasks) + len(burst), timeout=60)
        by_name = {i["metadata"]["name"]: i for i in items}
        outcomes = [(a["worker_pod"], a["outcome"]) for a in e2e.attempts(by_name[victim["metadata"]["name"]]["metadata"]["uid"])]
        finished_there = outcomes == [(pod, "succeeded")]
        handed_back = (outcomes[0] == (pod, "handed_back") and outcomes[-1][1] == "succeeded"
                       and outcomes[-1][0] != pod and len(outcomes) == 2)
        assert (handed_back if must_hand_back else finished_there or handed_back), outcomes
        # Scale-in after the burst sent SIGTERM to the other pods too: no attempt anywhere was lost.
        devstack.wait_for(lambda: e2e.replicas(queue) == 0, 30, "scale-in to 0")
        devstack.wait_for(lambda: not audit.pool_processes(e2e.plane, queue), 40, "every worker process to exit")
        assert e2e.sql("SELECT count(*) AS n FROM kubetask_tasks WHERE queue = %s AND state = 'running'", queue)[0]["n"] == 0
        bad = e2e.sql("SELECT t.name, a.number, a.outcome FROM kubetask_attempts a JOIN kubetask_tasks t ON t.id = a.task_id"
                      " WHERE t.namespace = %s AND a.outcome NOT IN ('succeeded', 'handed_back')", namespace)
        assert bad == [], f"graceful shutdowns lost or failed attempts: {bad}"
        print(f"\nSIGTERM at scale-in (grace {grace}s, {seconds}s tasks): victim {victim['metadata']['name']} on {pod}: {outcomes}")
    finally:
        e2e.remove_pool(queue)
