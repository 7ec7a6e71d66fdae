"""Prometheus metrics, scraped over HTTP from a real worker pod and the real operator.

The pool is pinned to one pod with a port of its own: the harness runs every
pod as a process on this machine, so pods of a pool cannot share a fixed port
as they do in a cluster. The operator's port is the stack's (``Stack.metrics_port``).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable

from kubetask_dev import devstack, postgres
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import Stack, task

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_when(port: int, check: Callable[[Samples], bool], what: str, timeout: float = 30) -> Samples:
    """Scrape until ``check(samples)`` holds (the operator refreshes its database figures every 5 s)."""

    def attempt() -> Samples | None:
        try:
            samples = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            return None
        return samples if check(samples) else None

    result: Samples = devstack.wait_for(attempt, timeout, what, interval=0.5)
    return result


def test_worker_and_operator_metrics_follow_a_queue_from_waiting_to_drained(e2e: Stack, namespace: str) -> None:
    queue = "metered"
    pool = f"kubetask-worker-{queue}"
    port = postgres.free_port()
    # Held at zero pods at first, so the work waits and the queue figures have something to show.
    e2e.add_pool(queue, min_replicas=0, max_replicas=0, concurrency=4, scale_down_delay=60,
                 extra_env={"KUBETASK_METRICS_PORT": str(port)})
    operator = e2e.metrics_port
    try:
        scrape_when(operator, lambda s: value(s, "kubetask_pool_desired_replicas", namespace="kubetask-system",
                                              pool=pool, queue=queue) == 0, "the operator to report the pool")
        e2e.apply(*[task(namespace, "echo", f"ok{i}", queue=queue, payload={"i": i}) for i in range(6)],
                  *[task(namespace, "fail", f"doomed{i}", queue=queue, payload={"permanent": True})
                    for i in range(2)],
                  task(namespace, "fail", "flaky", queue=queue, payload={"times": 1},
                       backoff={"initialSeconds": 0.2, "jitter": 0}))

        waiting = scrape_when(operator, lambda s: value(s, "kubetask_queue_depth", queue=queue) == 9,
                              "the queue depth to reach 9")
        assert value(waiting, "kubetask_tasks", queue=queue, phase="Queued") == 9
        assert value(waiting, "kubetask_tasks", queue=queue, phase="Running") == 0
        assert (value(waiting, "kubetask_queue_oldest_due_seconds", queue=queue) or 0) > 0
        assert value(waiting, "kubetask_operator_leader") == 1
        assert (value(waiting, "kubetask_tasks_admitted_total") or 0) >= 9

        e2e.plane.kubectl("annotate", "deployment", pool, "-n", devstack.NAMESPACE, "--overwrite",
                          "kubetask.io/min-replicas=1", "kubetask.io/max-replicas=1")
        e2e.wait_all(namespace, ("Succeeded", "DeadLetter"), 9, timeout=90)

        worker = scrape_when(port, lambda s: value(s, "kubetask_attempts_total", queue=queue, type="echo",
                                                   outcome="succeeded") == 6, "the worker to count 6 echo successes")
        assert value(worker, "kubetask_attempts_total", queue=queue, type="fail", outcome="failed") == 3
        assert value(worker, "kubetask_attempts_total", queue=queue, type="fail", outcome="succeeded") == 1
        assert value(worker, "kubetask_dead_letters_total", queue=queue, type="fail") == 2
        # Histograms: every attempt that ran is in the +Inf bucket, and in some finite one.
        echo = {"queue": queue, "type": "echo", "outcome": "succeeded"}
        assert value(worker, "kubetask_task_duration_seconds_count", **echo) == 6
        assert value(worker, "kubetask_task_duration_seconds_bucket", **echo, le="+Inf") == 6
        assert value(worker, "kubetask_task_duration_seconds_bucket", **echo, le="10.0") == 6
        assert value(worker, "kubetask_pickup_latency_seconds_count", queue=queue) == 10
        # The first nine waited for the pool to be allowed a pod: seconds, not milliseconds.
        assert (value(worker, "kubetask_pickup_latency_seconds_sum", queue=queue) or 0) > 1
        assert (value(worker, "kubetask_pickup_latency_seconds_bucket", queue=queue, le="0.001") or 0) < 10
        assert value(worker, "kubetask_worker_slots", queue=queue) == 4
        assert value(worker, "kubetask_worker_busy_slots", queue=queue) == 0
        assert (value(worker, "process_resident_memory_bytes") or 0) > 0

        drained = scrape_when(
            operator, lambda s: value(s, "kubetask_queue_depth", queue=queue) == 0
            and value(s, "kubetask_status_mirror_backlog") == 0, "the queue depth to return to 0")
        for phase in ("Queued", "Running", "Retrying"):
            assert value(drained, "kubetask_tasks", queue=queue, phase=phase) == 0
        assert value(drained, "kubetask_queue_oldest_due_seconds", queue=queue) == 0
        assert value(drained, "kubetask_status_mirror_lag_seconds") == 0
        labels = {"namespace": "kubetask-system", "pool": pool, "queue": queue}
        assert value(drained, "kubetask_pool_desired_replicas", **labels) == 1
        assert value(drained, "kubetask_pool_replicas", **labels) == 1
        assert (value(drained, "kubetask_kubernetes_writes_total", kind="task_status") or 0) >= 9
        assert (value(drained, "kubetask_kubernetes_writes_total", kind="scale") or 0) >= 1
    finally:
        e2e.remove_pool(queue)
