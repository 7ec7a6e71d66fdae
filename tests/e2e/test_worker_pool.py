"""The worker pool: scaled to the work, each task run once, busy pods spared, dead pods rescued."""

from __future__ import annotations

import os
import signal
import threading
import time

from kubetask_dev import devstack, podrunner

from tests.stack import Stack, task


def _watch_max_replicas(e2e: Stack, queue: str, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        try:
            seen.append(e2e.replicas(queue))
        except Exception:
            pass
        stop.wait(0.2)


def test_200_tasks_across_3_pods_each_run_once_then_scale_back_down(e2e: Stack, namespace: str) -> None:
    queue = "burst"
    e2e.add_pool(queue, max_replicas=3, concurrency=4, scale_down_delay=5)
    try:
        seen: list[int] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_max_replicas, args=(e2e, queue, stop, seen), daemon=True)
        watcher.start()
        e2e.apply(*[task(namespace, "sleep", f"t{i:03d}", queue=queue, payload={"seconds": 0.2})
                    for i in range(200)])
        items = e2e.wait_all(namespace, ("Succeeded",), 200, timeout=180)
        uids = [t["metadata"]["uid"] for t in items]
        rows = e2e.sql(
            "SELECT t.uid::text AS uid, count(*) FILTER (WHERE a.outcome = 'succeeded') AS ok, count(*) AS n,"
            " array_agg(DISTINCT a.worker_pod) AS pods"
            " FROM kubetask_tasks t JOIN kubetask_attempts a ON a.task_id = t.id WHERE t.uid = ANY(%s::uuid[])"
            " GROUP BY t.uid", uids)
        assert len(rows) == 200
        assert all(r["ok"] == 1 for r in rows), "a task succeeded twice"
        pods = {p for r in rows for p in r["pods"]}
        assert len(pods) >= 3, f"work was spread over {pods} only"
        # Back to the minimum (0) once the cooldown has passed.
        devstack.wait_for(lambda: e2e.replicas(queue) == 0, 30, "the pool to scale back to 0")
        devstack.wait_for(lambda: not [p for p in podrunner.running_processes(e2e.plane.state_dir, "kubetask-system")
                                       if p.startswith(f"kubetask-worker-{queue}-")], 30, "worker processes to stop")
        stop.set()
        assert max(seen) == 3
    finally:
        e2e.remove_pool(queue)


def test_scale_from_zero_within_a_second_of_the_first_task(e2e: Stack, namespace: str) -> None:
    queue = "cold"
    e2e.add_pool(queue, max_replicas=2, scale_down_delay=2)
    try:
        devstack.wait_for(lambda: e2e.replicas(queue) == 0, 30, "the pool at zero")
        started = time.monotonic()
        e2e.apply(task(namespace, "echo", "first", queue=queue))
        devstack.wait_for(lambda: e2e.replicas(queue) >= 1, 5, "scale-up", interval=0.05)
        elapsed = time.monotonic() - started
        e2e.wait_phase(namespace, "first", "Succeeded")
        # kubectl itself takes a few hundred ms here; the bound is loose on purpose, the benchmark measures it.
        assert elapsed < 3, f"scale-up took {elapsed:.2f}s"
    finally:
        e2e.remove_pool(queue)


def test_killed_worker_task_is_rescued_and_completes(e2e: Stack, namespace: str) -> None:
    queue = "fragile"
    e2e.add_pool(queue, min_replicas=1, max_replicas=1, concurrency=1)
    try:
        e2e.apply(task(namespace, "sleep", "victim", queue=queue, payload={"seconds": 4},
                       backoff={"initialSeconds": 0.1, "jitter": 0}))
        running = e2e.wait_phase(namespace, "victim", "Running")
        pod = running["status"]["worker"]
        pid = podrunner.running_processes(e2e.plane.state_dir, "kubetask-system")[pod]
        os.kill(pid, signal.SIGKILL)  # the pod stays; the harness restarts its process, as a kubelet would
        done = e2e.wait_phase(namespace, "victim", "Succeeded", timeout=60)
        outcomes = [h["outcome"] for h in done["status"]["history"]]
        assert outcomes == ["lost", "succeeded"]
        rows = e2e.attempts(done["metadata"]["uid"])
        assert rows[0]["outcome"] == "lost" and "LeaseExpired" == rows[0]["error_type"]
    finally:
        e2e.remove_pool(queue)


def test_busy_pods_are_spared_at_scale_in(e2e: Stack, namespace: str) -> None:
    """With one long task left, scale-in removes the idle pods and keeps the one running it."""
    queue = "spare"
    e2e.add_pool(queue, max_replicas=3, concurrency=1, scale_down_delay=1)
    try:
        e2e.apply(*[task(namespace, "sleep", f"short{i}", queue=queue, payload={"seconds": 0.5}) for i in range(3)],
                  task(namespace, "sleep", "long", queue=queue, payload={"seconds": 8}))
        long_task = e2e.wait_phase(namespace, "long", "Running", timeout=60)
        busy_pod = long_task["status"]["worker"]
        e2e.wait_all(namespace, ("Succeeded", "Running"), 4)
        devstack.wait_for(lambda: e2e.replicas(queue) == 1, 30, "scale-in to the one busy pod")
        done = e2e.wait_phase(namespace, "long", "Succeeded", timeout=30)
        assert [h["outcome"] for h in done["status"]["history"]] == ["succeeded"]
        assert done["status"]["worker"] == busy_pod
    finally:
        e2e.remove_pool(queue)


def test_a_bad_pool_annotation_keeps_the_last_good_policy_and_says_why(e2e: Stack, namespace: str) -> None:
    queue = "typo"
    e2e.add_pool(queue, max_replicas=2, scale_down_delay=1)
    deployment = f"kubetask-worker-{queue}"
    try:
        e2e.apply(task(namespace, "echo", "served", queue=queue))
        e2e.wait_phase(namespace, "served", "Succeeded", timeout=60)  # the operator knows the good policy
        e2e.plane.kubectl("annotate", "deployment", deployment, "-n", "kubetask-system",
                          "kubetask.io/max-replicas=ten", "--overwrite")

        def reasons() -> str | None:
            out = e2e.plane.kubectl("get", "events", "-n", "kubetask-system", "--field-selector",
                                    f"involvedObject.name={deployment}", "-o",
                                    "jsonpath={range .items[*]}{.reason}: {.message}{'\\n'}{end}").stdout
            return out if "BadPoolPolicy" in out else None

        message = devstack.wait_for(reasons, 20, "a BadPoolPolicy Event on the Deployment")
        assert "kubetask.io/max-replicas='ten' is not an integer" in message
        assert "keeping the previous policy" in message
        # The pool still scales with its previous policy: work on its queue gets done.
        e2e.apply(task(namespace, "echo", "still-served", queue=queue))
        e2e.wait_phase(namespace, "still-served", "Succeeded", timeout=60)
    finally:
        e2e.remove_pool(queue)
