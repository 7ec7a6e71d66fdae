"""Issue 5, API-server half: kubetask end to end on a real control plane, against Kubernetes Jobs.

Starts its own control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok, the pod
harness) and PostgreSQL, installs kubetask as ``tests/e2e`` does, runs the operator as a real
``kubetask operator`` process, measures, and stops everything it started.

Figures (``measure`` returns the numbers; ``bench/run.py`` prints them):

2. End to end through the API server. N Tasks (``echo``) created by a pool of concurrent API
   clients, on a warm worker pool, until every one is Succeeded; then N Kubernetes Jobs (one no-op
   pod each, completed by kwok's ``job-pod-complete`` stage) by the *same* creator on the *same*
   control plane until every one is Complete. Throughput runs from the first create sent to the
   last Succeeded/Complete seen; latencies from the moment a create was sent to the moment the
   watch (client side, this process) delivered the phase. A Task that went Queued → Succeeded
   in one status patch (the mirror coalesces) never shows Running: for those, "Running" is the
   first attempt's ``started_at`` from PostgreSQL (same host clock), and the note says how many.
   API writes come from the API server's own ``apiserver_request_total`` (every mutating verb,
   every client: the operator for Tasks, controller-manager, scheduler and kwok for Jobs,
   plus the creates themselves), before/after, minus the idle background rate.
3. Container Tasks against Jobs, pod for pod. N container Tasks (``spec.container``: busybox,
   ``true``), each attempt a pod the operator's leader creates, follows and deletes, then N Jobs whose
   pod runs the same container, by the same creators on the same control plane. Both pods get a real
   local process from the pod harness, which writes their exit (the Jobs' pods carry the task-pod
   labels the harness runs, which also keeps kwok's ``job-pod-complete`` stage off them), so neither
   side has a fake completion the other lacks. Measured as figure 2 is; a pod watch times each unit's
   pod (created, ended, deleted) to show where a unit's time goes.
4. Scale from zero: a pool at 0 replicas, one Task created → Deployment ``spec.replicas`` ≥ 1
   (watched), and → Succeeded (which includes starting a worker process).
6. Operator footprint: RSS and CPU time (psutil) of the operator process while M Tasks are
   created, run and then exist.

``python -m bench.e2e [--quick]`` runs it alone and prints the figures and the numbers as JSON.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import math
import pathlib
import re
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterable

import psutil
import psycopg
import urllib3

from kubetask_dev import controlplane, devstack, podrunner, postgres

from bench.common import Figure, median, percentile


POOL = "default"
WORKERS = 2
"""Warm pool: replicas kept up (min = max), so no scaling happens during figure 2."""
CONCURRENCY = 16
"""Tasks per worker pod."""
CREATORS = 16
"""Concurrent API clients creating Tasks or Jobs (the same for both)."""
CONTAINER_MAX_PODS = 200
"""``KUBETASK_CONTAINER_MAX_PODS`` of the operator: the product's default, set explicitly so the
figure names what it ran with. Jobs have no such bound (the Job controller makes every pod at once)."""
PODS_PER_NODE = 250
"""The kwok nodes' pod capacity (``kwok-stages.yaml``); finished Job pods stay and count against it."""
TASK_POD_LABELS = {"app.kubernetes.io/part-of": "kubetask", "app.kubernetes.io/component": "task"}
"""What makes the pod harness run a pod's command once and write its exit (``podrunner.TASK_COMPONENT``)."""
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"}
JOBS_PEER = "Kubernetes Jobs"


@dataclasses.dataclass(frozen=True)
class Sizes:
    tasks: int
    jobs: int
    footprint: int
    scale_reps: int
    containers: int
    """N of figure 3: container Tasks, and as many Jobs."""

    @classmethod
    def of(cls, quick: bool) -> "Sizes":
        return cls(tasks=200, jobs=200, footprint=2000, scale_reps=1, containers=150) if quick else \
            cls(tasks=1000, jobs=1000, footprint=10_000, scale_reps=3, containers=1000)


def _log(message: str) -> None:
    print(f"[bench e2e] {message}", file=sys.stderr, flush=True)


# -- a thin API client ---------------------------------------------------------------------


class Api:
    """urllib3 with keep-alive and the admin token: cheaper per request than the generated client,
    so the creator is not the bottleneck of either side."""

    def __init__(self, plane: controlplane.ControlPlane, maxsize: int = CREATORS + 8) -> None:
        self.base = plane.server
        self.http = urllib3.PoolManager(
            num_pools=2, maxsize=maxsize, block=True, ca_certs=str(plane.ca_file), cert_reqs="CERT_REQUIRED",
            retries=False, timeout=urllib3.Timeout(connect=10, read=60))
        self.headers = {"Authorization": f"Bearer {plane.token}", "Content-Type": "application/json",
                        "Accept": "application/json"}

    def request(self, method: str, path: str, body: Any = None, ok: Iterable[int] = (200, 201)) -> Any:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        for attempt in range(8):
            resp = self.http.request(method, self.base + path, body=data, headers=self.headers)
            if resp.status in (429, 500, 503, 504) and attempt < 7:
                time.sleep(0.05 * 2**attempt)
                continue
            if resp.status not in tuple(ok):
                raise RuntimeError(f"{method} {path}: {resp.status} {resp.data[:500]!r}")
            if path.startswith("/metrics"):
                return resp.data.decode()
            return json.loads(resp.data) if resp.data else None
        raise AssertionError("unreachable")

    def create_many(self, path: str, bodies: list[bytes], threads: int = CREATORS,
                    acked: list[float] | None = None) -> list[float]:
        """POST every body from ``threads`` concurrent clients; the wall-clock time each was *sent*.

        ``acked``, if given, is filled with the time each create's response arrived.
        """
        sent = [0.0] * len(bodies)
        if acked is not None:
            acked[:] = [0.0] * len(bodies)
        index = iter(range(len(bodies)))
        lock = threading.Lock()

        def run() -> None:
            while True:
                with lock:
                    i = next(index, None)
                if i is None:
                    return
                sent[i] = time.time()
                self.request("POST", path, bodies[i], ok=(201,))
                if acked is not None:
                    acked[i] = time.time()

        with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="creator") as pool:
            for future in [pool.submit(run) for _ in range(threads)]:
                future.result()
        return sent

    def write_counts(self, refused: bool = False) -> collections.Counter[tuple[str, str]]:
        """(resource[/subresource], verb) → mutating requests served so far, from ``/metrics``.

        ``refused``: only those answered with a 4xx or 5xx (a 404 on a pod already gone, say)."""
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        for line in self.request("GET", "/metrics").splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, _, value = line.rpartition("} ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
            if labels.get("verb") not in WRITE_VERBS:
                continue
            if refused and not labels.get("code", "").startswith(("4", "5")):
                continue
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            counts[(resource, labels["verb"])] += int(float(value))
        return counts


    def request_seconds(self) -> dict[tuple[str, str], tuple[int, float]]:
        """(resource[/subresource], verb) → (requests, seconds the API server spent on them) so far.

        Long-running requests (watches, ``pods/log``) are not in this histogram."""
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        seconds: dict[tuple[str, str], float] = collections.defaultdict(float)
        for line in self.request("GET", "/metrics").splitlines():
            name, _, rest = line.partition("{")
            if name not in ("apiserver_request_duration_seconds_sum", "apiserver_request_duration_seconds_count"):
                continue
            labels_text, _, value = rest.rpartition("} ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
            resource = labels.get("resource", "") + ("/" + labels["subresource"] if labels.get("subresource") else "")
            key = (resource, labels.get("verb", ""))
            if name.endswith("_sum"):
                seconds[key] += float(value)
            else:
                counts[key] += int(float(value))
        return {key: (counts[key], seconds[key]) for key in counts}


class Watch(threading.Thread):
    """A watch from a fresh list's resourceVersion; ``on_event(type, object, wall time received)``.

    Runs until ``stop()``; reconnects from the last resourceVersion when the stream ends."""

    def __init__(self, api: Api, path: str, on_event: Callable[[str, dict[str, Any], float], None],
                 params: str = "") -> None:
        super().__init__(daemon=True, name=f"watch {path}")
        self.api, self.path, self.on_event, self.params = api, path, on_event, params
        self._stopping = threading.Event()
        listing = api.request("GET", f"{path}?limit=1{'&' + params if params else ''}")
        self.resource_version = listing["metadata"]["resourceVersion"]
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)  # the stream read times out within 2 s

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                url = (f"{self.api.base}{self.path}?watch=1&allowWatchBookmarks=true&timeoutSeconds=600"
                       f"&resourceVersion={self.resource_version}{'&' + self.params if self.params else ''}")
                resp = self.api.http.request("GET", url, headers=self.api.headers, preload_content=False,
                                             timeout=urllib3.Timeout(connect=10, read=2))
                if resp.status != 200:
                    raise RuntimeError(f"watch {self.path}: {resp.status} {resp.data[:300]!r}")
                buffer = b""
                try:
                    for chunk in resp.stream(1 << 16):
                        received = time.time()
                        buffer += chunk
                        *lines, buffer = buffer.split(b"\n")
                        for line in lines:
                            if not line.strip():
                                continue
                            event = json.loads(line)
                            obj = event["object"]
                            if event["type"] == "ERROR":
                                raise RuntimeError(f"watch {self.path}: {obj}")
                            self.resource_version = obj["metadata"]["resourceVersion"]
                            if event["type"] != "BOOKMARK":
                                self.on_event(event["type"], obj, received)
                        if self._stopping.is_set():
                            break
                except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError):
                    pass  # idle for a while, or the stream ended: resume from the last resourceVersion
                finally:
                    resp.release_conn()
        except BaseException as err:  # surfaced by the waiter
            self.error = err


class Tracker:
    """First time each object was seen in each phase (Tasks) or Complete (Jobs)."""

    def __init__(self, phase_of: Callable[[dict[str, Any]], str | None]) -> None:
        self.phase_of = phase_of
        self.seen: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self.count: collections.Counter[str] = collections.Counter()
        self.cond = threading.Condition()

    def __call__(self, kind: str, obj: dict[str, Any], received: float) -> None:
        phase = self.phase_of(obj)
        if phase is None:
            return
        name = obj["metadata"]["name"]
        with self.cond:
            if phase not in self.seen[name]:
                self.seen[name][phase] = received
                self.count[phase] += 1
                self.cond.notify_all()

    def wait(self, phase: str, count: int, timeout: float, watch: Watch) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.count[phase] < count:
                if watch.error is not None:
                    raise RuntimeError(f"watch failed: {watch.error}") from watch.error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.count[phase]}/{count} reached {phase} after {timeout}s")
                self.cond.wait(min(left, 1.0))


def task_phase(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def job_phase(obj: dict[str, Any]) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return None


# -- the stack ---------------------------------------------------------------------------


@dataclasses.dataclass
class Bench:
    plane: controlplane.ControlPlane
    pg: postgres.PostgresServer
    dsn: str
    operator: Any
    api: Api
    work: pathlib.Path

    @classmethod
    def start(cls, work: pathlib.Path, nodes: int, before_operator: Callable[[controlplane.ControlPlane], None] | None = None,
              operator_env: dict[str, str] | None = None) -> "Bench":
        """Everything up; ``before_operator`` runs once the CRD is installed, before the operator starts."""
        plane = controlplane.ControlPlane.start(work / "cluster", nodes=nodes)
        pg: postgres.PostgresServer | None = None
        try:
            pg = postgres.PostgresServer.start(work / "postgres" / "data")
            dsn = pg.create_database("kubetask_bench")
            devstack.DevStack.install(plane, dsn)
            if before_operator is not None:
                before_operator(plane)
            warm = devstack.worker_deployment(POOL, min_replicas=WORKERS, max_replicas=WORKERS,
                                              concurrency=CONCURRENCY)
            plane.kubectl("apply", "-f", "-", input=json.dumps(warm))
            operator = devstack.DevStack.start_operator(plane, dsn, work / "operator", operator_env)
            return cls(plane, pg, dsn, operator, Api(plane), work)
        except BaseException:
            if pg is not None:
                pg.stop()
            plane.stop()
            raise

    def stop(self) -> None:
        try:
            self.api.http.clear()
            devstack.stop_process(self.operator)
        finally:
            try:
                self.plane.stop()
            finally:
                self.pg.stop()

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def namespace(self, name: str) -> str:
        self.api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": name}}, ok=(201, 409))
        self.plane.wait_default_serviceaccount(name)
        return name

    def operator_log(self) -> str:
        return (self.work / "operator" / "operator.log").read_text(errors="replace")

    def wait_warm(self, timeout: float = 120) -> None:
        """Both worker processes listening on PostgreSQL, the operator leading, one Task round trip."""
        def listening() -> bool:
            rows = self.sql("SELECT count(DISTINCT application_name) FROM pg_stat_activity"
                            " WHERE application_name LIKE 'kubetask-worker %%' AND query ILIKE 'LISTEN%%'")
            return rows[0][0] >= WORKERS

        devstack.wait_for(listening, timeout, f"{WORKERS} worker processes listening", interval=0.2)
        devstack.wait_for(lambda: "leading:" in self.operator_log(), timeout, "the operator to lead", interval=0.2)
        ns = self.namespace("bench-warmup")
        tracker = Tracker(task_phase)
        watch = Watch(self.api, f"/apis/kubetask.io/v1alpha1/namespaces/{ns}/tasks", tracker)
        watch.start()
        self.api.create_many(f"/apis/kubetask.io/v1alpha1/namespaces/{ns}/tasks",
                             [task_body(f"w{i}") for i in range(20)])
        tracker.wait("Succeeded", 20, timeout, watch)
        watch.stop()

    def outbox_empty(self) -> bool:
        return self.sql("SELECT count(*) FROM kubetask_tasks WHERE version > mirrored_version")[0][0] == 0


def task_body(name: str, queue: str = POOL) -> bytes:
    return json.dumps({"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": name},
                       "spec": {"type": "echo", "queue": queue, "payload": {"n": name}}}).encode()


def job_body(name: str) -> bytes:
    return json.dumps({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "noop", "image": "busybox:1.36", "command": ["true"]}]}}},
    }).encode()


CONTAINER = {"image": "busybox:1.36", "command": ["true"]}
"""What both sides of figure 3 run."""


def container_task_body(name: str) -> bytes:
    return json.dumps({"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": name},
                       "spec": {"queue": POOL, "container": CONTAINER}}).encode()


def harness_job_body(name: str) -> bytes:
    """A Job whose pod is run as a task pod is: the harness's labels, no token, no Service links."""
    return json.dumps({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": TASK_POD_LABELS},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "enableServiceLinks": False,
                     "containers": [{"name": "task", **CONTAINER}]}}},
    }).encode()


def _delta(after: collections.Counter[tuple[str, str]], before: collections.Counter[tuple[str, str]]
           ) -> collections.Counter[tuple[str, str]]:
    out = collections.Counter(after)
    out.subtract(before)
    return +out


def _breakdown(counts: collections.Counter[tuple[str, str]], per: int) -> str:
    parts = [f"{verb} {resource} {n / per:.2f}" for (resource, verb), n in counts.most_common() if n / per >= 0.01]
    return ", ".join(parts)


def cpu_by_component() -> collections.Counter[str]:
    """CPU seconds (user + system) so far of every process on the machine, by component."""
    out: collections.Counter[str] = collections.Counter()
    me = psutil.Process().pid
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        info = proc.info
        times = info.get("cpu_times")
        if times is None:
            continue
        cmd = " ".join(info.get("cmdline") or [])
        name = info.get("name") or ""
        if info["pid"] == me:
            key = "bench client"
        elif "kubetask_dev.podrunner" in cmd:
            key = "pod harness"
        elif "kubetask operator" in cmd:
            key = "operator"
        elif "kubetask worker" in cmd:
            key = "workers"
        elif name in ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok"):
            key = name
        elif name.startswith("postgres"):
            key = "postgres"
        else:
            key = "other"
        out[key] += times.user + times.system
    return out


def _cpu_note(before: collections.Counter[str], after: collections.Counter[str], wall: float) -> str:
    delta = _delta(after, before)  # type: ignore[arg-type]
    return ", ".join(f"{k} {v:.1f}" for k, v in delta.most_common()) + f" CPU s over {wall:.1f} s wall"


def _background_rate(api: Api, seconds: float = 4.0) -> float:
    """Mutating requests per second while nothing is being benchmarked (node leases, heartbeats)."""
    before = api.write_counts()
    time.sleep(seconds)
    return sum(_delta(api.write_counts(), before).values()) / seconds


# -- figure 2: end to end ----------------------------------------------------------------


def run_create_ceiling(plane: controlplane.ControlPlane, n: int) -> float:
    """Task creates alone, before the operator runs: the API server's ceiling for the e2e throughput.

    The same creators and bodies as ``run_tasks``, with nothing else on the
    machine reacting to them, so no operator can finish Tasks faster than
    this. The namespace is deleted (and gone) before the operator starts,
    so these Tasks are never admitted.
    """
    ns = "bench-ceiling"
    api = Api(plane)
    api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": ns}}, ok=(201,))
    plane.wait_default_serviceaccount(ns)
    path = f"/apis/kubetask.io/v1alpha1/namespaces/{ns}/tasks"
    api.create_many(path, [task_body(f"warm{i}") for i in range(50)])  # connections, caches
    t0 = time.monotonic()
    api.create_many(path, [task_body(f"c{i:05d}") for i in range(n)])
    rate = n / (time.monotonic() - t0)
    api.http.clear()
    plane.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=300s")
    return rate


def run_tasks(b: Bench, n: int, background: float) -> dict[str, Any]:
    ns = b.namespace("bench-tasks")
    path = f"/apis/kubetask.io/v1alpha1/namespaces/{ns}/tasks"
    names = [f"t{i:05d}" for i in range(n)]
    bodies = [task_body(name) for name in names]
    tracker = Tracker(task_phase)
    watch = Watch(b.api, path, tracker)
    watch.start()
    before = b.api.write_counts()
    cpu_before = cpu_by_component()
    t0 = time.monotonic()
    acked: list[float] = []
    sent = b.api.create_many(path, bodies, acked=acked)
    create_s = time.monotonic() - t0
    tracker.wait("Succeeded", n, 600, watch)
    cpu = _cpu_note(cpu_before, cpu_by_component(), time.monotonic() - t0)
    succeeded_at = [tracker.seen[name]["Succeeded"] for name in names]
    wall = max(succeeded_at) - min(sent)
    devstack.wait_for(b.outbox_empty, 60, "the status outbox to drain")
    time.sleep(2)  # trailing Events
    window = time.monotonic() - t0
    writes = _delta(b.api.write_counts(), before)
    watch.stop()

    started = dict(b.sql(
        "SELECT t.name, extract(epoch FROM a.started_at)::float8 FROM kubetask_attempts a"
        " JOIN kubetask_tasks t ON t.id = a.task_id WHERE t.namespace = %s AND a.number = 1", ns))
    running, from_db = [], 0
    for name, t_sent in zip(names, sent):
        seen = tracker.seen[name].get("Running")
        if seen is None:
            seen, from_db = started[name], from_db + 1
        running.append((seen - t_sent) * 1000)
    done = [(s - t) * 1000 for s, t in zip(succeeded_at, sent)]
    total_writes = sum(writes.values()) - background * window
    return {
        "n": n, "tasks_per_s": n / wall, "wall_s": wall, "create_s": create_s,
        "running_p50": percentile(running, 50), "running_p99": percentile(running, 99),
        "create_p50": percentile([(a - t) * 1000 for a, t in zip(acked, sent)], 50),
        "succeeded_p50": percentile(done, 50), "succeeded_p99": percentile(done, 99),
        "running_from_db": from_db, "writes_per_unit": total_writes / n,
        "breakdown": _breakdown(writes, n), "phases": dict(tracker.count), "cpu": cpu,
    }


def run_paced(b: Bench, n: int = 40, interval: float = 0.1) -> dict[str, float]:
    """Tasks created one at a time, ``interval`` apart: the latency without a burst's queueing."""
    ns = b.namespace("bench-paced")
    path = f"/apis/kubetask.io/v1alpha1/namespaces/{ns}/tasks"
    names = [f"p{i:03d}" for i in range(n)]
    tracker = Tracker(task_phase)
    watch = Watch(b.api, path, tracker)
    watch.start()
    sent = []
    for name in names:
        sent.append(b.api.create_many(path, [task_body(name)], threads=1)[0])
        time.sleep(interval)
    tracker.wait("Succeeded", n, 120, watch)
    watch.stop()
    started = dict(b.sql(
        "SELECT t.name, extract(epoch FROM a.started_at)::float8 FROM kubetask_attempts a"
        " JOIN kubetask_tasks t ON t.id = a.task_id WHERE t.namespace = %s AND a.number = 1", ns))
    running = [((tracker.seen[name].get("Running") or started[name]) - t) * 1000 for name, t in zip(names, sent)]
    claimed = [(started[name] - t) * 1000 for name, t in zip(names, sent)]
    done = [(tracker.seen[name]["Succeeded"] - t) * 1000 for name, t in zip(names, sent)]
    return {"n": n, "running_p50": percentile(running, 50), "claimed_p50": percentile(claimed, 50),
            "succeeded_p50": percentile(done, 50), "shown_running": tracker.count["Running"]}


def run_jobs(b: Bench, n: int, background: float) -> dict[str, Any]:
    ns = b.namespace("bench-jobs")
    path = f"/apis/batch/v1/namespaces/{ns}/jobs"
    names = [f"j{i:05d}" for i in range(n)]
    tracker = Tracker(job_phase)
    watch = Watch(b.api, path, tracker)
    watch.start()
    before = b.api.write_counts()
    cpu_before = cpu_by_component()
    t0 = time.monotonic()
    sent = b.api.create_many(path, [job_body(name) for name in names])
    create_s = time.monotonic() - t0
    tracker.wait("Complete", n, 900, watch)
    cpu = _cpu_note(cpu_before, cpu_by_component(), time.monotonic() - t0)
    complete_at = [tracker.seen[name]["Complete"] for name in names]
    wall = max(complete_at) - min(sent)
    time.sleep(3)  # trailing Events, pod finalizer removals
    window = time.monotonic() - t0
    writes = _delta(b.api.write_counts(), before)
    watch.stop()
    done = [(c - s) * 1000 for c, s in zip(complete_at, sent)]
    return {
        "n": n, "jobs_per_s": n / wall, "wall_s": wall, "create_s": create_s,
        "complete_p50": percentile(done, 50), "complete_p99": percentile(done, 99),
        "writes_per_unit": (sum(writes.values()) - background * window) / n,
        "breakdown": _breakdown(writes, n), "failed": tracker.count["Failed"], "cpu": cpu,
    }


# -- figure 3: container Tasks against Jobs, both pods run by the harness ----------------------


class PodTracker:
    """Per unit (the Task or Job a pod is for): when its pod was first seen, seen ended, seen deleted.

    Also the most pods seen at once between creation and their end, and the units whose pod ended with
    the harness's container id (a real process ran it, not a kwok stage)."""

    def __init__(self, unit_of: Callable[[dict[str, Any]], str | None]) -> None:
        self.unit_of = unit_of
        self.seen: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self.live: set[str] = set()
        self.in_flight_max = 0
        self.harness_run: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, kind: str, obj: dict[str, Any], received: float) -> None:
        unit = self.unit_of(obj)
        if unit is None:
            return
        uid = obj["metadata"]["uid"]
        status = obj.get("status") or {}
        with self.lock:
            times = self.seen[unit]
            if "created" not in times:
                times["created"] = received
                self.live.add(uid)
            if status.get("phase") in ("Succeeded", "Failed") and "ended" not in times:
                times["ended"] = received
                self.live.discard(uid)
                for container in status.get("containerStatuses") or []:
                    terminated = (container.get("state") or {}).get("terminated") or {}
                    if str(terminated.get("containerID", "")).startswith("harness://"):
                        self.harness_run.add(unit)
            if kind == "DELETED":
                times.setdefault("deleted", received)
                self.live.discard(uid)
            self.in_flight_max = max(self.in_flight_max, len(self.live))

    def count(self, what: str) -> int:
        with self.lock:
            return sum(1 for times in self.seen.values() if what in times)


def _stages(names: list[str], sent: list[float], pods: PodTracker, done: list[float]) -> dict[str, float]:
    """p50 (ms) of each stage of a unit's life: create sent → pod seen → pod ended → unit done."""
    created = [pods.seen[n]["created"] for n in names]
    ended = [pods.seen[n]["ended"] for n in names]
    return {
        "to_pod_p50": percentile([(c - s) * 1000 for c, s in zip(created, sent)], 50),
        "pod_run_p50": percentile([(e - c) * 1000 for e, c in zip(ended, created)], 50),
        "to_done_p50": percentile([(d - e) * 1000 for d, e in zip(done, ended)], 50),
        "to_done_p99": percentile([(d - e) * 1000 for d, e in zip(done, ended)], 99),
    }


def _server_seconds(after: dict[tuple[str, str], tuple[int, float]], before: dict[tuple[str, str], tuple[int, float]],
                    keys: Iterable[tuple[str, str]]) -> str:
    """Mean server-side milliseconds of the given requests between two ``request_seconds`` readings."""
    parts = []
    for key in keys:
        count = after.get(key, (0, 0.0))[0] - before.get(key, (0, 0.0))[0]
        seconds = after.get(key, (0, 0.0))[1] - before.get(key, (0, 0.0))[1]
        if count:
            parts.append(f"{key[1]} {key[0]} {seconds / count * 1000:.1f} ms × {count}")
    return ", ".join(parts)


OPERATOR_REQUESTS = [("pods", "POST"), ("pods", "DELETE"), ("tasks/status", "PATCH"), ("pods/status", "PATCH"),
                     ("pods/binding", "POST"), ("jobs/status", "PUT"), ("pods", "PATCH")]
"""The requests whose server-side time the notes of figure 3 give."""


def _run_pod_units(b: Bench, n: int, background: float, *, path: str, names: list[str],
                   bodies: list[bytes], tracker: Tracker, done_phase: str, pod_unit: Callable[[dict[str, Any]], str | None],
                   settle: Callable[[PodTracker], None]) -> dict[str, Any]:
    """Create ``bodies`` at ``path``, follow them to ``done_phase`` and their pods (named by ``pod_unit``), and
    measure what figure 3 gives for both kinds: rate, create → done, writes per unit and by request, CPU,
    per-stage times. ``settle`` waits for what trails the last unit (statuses, deletions, Events)."""
    ns = path.split("/namespaces/")[1].split("/")[0]
    watch = Watch(b.api, path, tracker)
    pods = PodTracker(pod_unit)
    pod_watch = Watch(b.api, f"/api/v1/namespaces/{ns}/pods", pods)
    watch.start()
    pod_watch.start()
    before, seconds_before = b.api.write_counts(), b.api.request_seconds()
    refused_before = b.api.write_counts(refused=True)
    cpu_before = cpu_by_component()
    t0 = time.monotonic()
    sent = b.api.create_many(path, bodies)
    create_s = time.monotonic() - t0
    tracker.wait(done_phase, n, 900, watch)
    cpu = _cpu_note(cpu_before, cpu_by_component(), time.monotonic() - t0)
    done_at = [tracker.seen[name][done_phase] for name in names]
    wall = max(done_at) - min(sent)
    settle(pods)
    window = time.monotonic() - t0
    writes = _delta(b.api.write_counts(), before)
    refused = _delta(b.api.write_counts(refused=True), refused_before)
    server = _server_seconds(b.api.request_seconds(), seconds_before, OPERATOR_REQUESTS)
    watch.stop()
    pod_watch.stop()
    done = [(d - s) * 1000 for d, s in zip(done_at, sent)]
    return {
        "n": n, "per_s": n / wall, "wall_s": wall, "create_s": create_s,
        "done_p50": percentile(done, 50), "done_p99": percentile(done, 99),
        "writes_per_unit": (sum(writes.values()) - background * window) / n,
        "breakdown": _breakdown(writes, n), "cpu": cpu, "server": server,
        "refused_per_unit": sum(refused.values()) / n, "refused": _breakdown(refused, n),
        "stages": _stages(names, sent, pods, done_at), "in_flight_max": pods.in_flight_max,
        "harness_run": len(pods.harness_run),
    }


def run_container_tasks(b: Bench, n: int, background: float) -> dict[str, Any]:
    ns = b.namespace("bench-containers")
    names = [f"c{i:05d}" for i in range(n)]

    def settle(pods: PodTracker) -> None:
        devstack.wait_for(b.outbox_empty, 60, "the status outbox to drain")
        devstack.wait_for(lambda: pods.count("deleted") >= n, 120, "every task pod to be deleted")
        time.sleep(2)  # trailing Events

    result = _run_pod_units(
        b, n, background, path=f"/apis/kubetask.io/v1alpha1/namespaces/{ns}/tasks",
        names=names, bodies=[container_task_body(name) for name in names], tracker=Tracker(task_phase),
        done_phase="Succeeded", pod_unit=lambda pod: (pod["metadata"].get("annotations") or {}).get("kubetask.io/task"),
        settle=settle)
    [(attempts, exited_0)] = b.sql(
        "SELECT count(*), count(*) FILTER (WHERE a.exit_code = 0) FROM kubetask_attempts a"
        " JOIN kubetask_tasks t ON t.id = a.task_id WHERE t.namespace = %s", ns)
    return {**result, "attempts": attempts, "exited_0": exited_0}


def run_harness_jobs(b: Bench, n: int, background: float) -> dict[str, Any]:
    """``run_jobs``, with each Job's pod run by the harness as a task pod is (``harness_job_body``)."""
    ns = b.namespace("bench-jobs-harness")
    names = [f"h{i:05d}" for i in range(n)]
    tracker = Tracker(job_phase)
    result = _run_pod_units(
        b, n, background, path=f"/apis/batch/v1/namespaces/{ns}/jobs", names=names,
        bodies=[harness_job_body(name) for name in names], tracker=tracker, done_phase="Complete",
        pod_unit=lambda pod: (pod["metadata"].get("labels") or {}).get("job-name"),
        settle=lambda pods: time.sleep(3))  # trailing Events, pod finalizer removals
    return {**result, "failed": tracker.count["Failed"]}


# -- figure 4: scale from zero ------------------------------------------------------------


def run_scale_from_zero(b: Bench, reps: int) -> dict[str, list[float]]:
    queue = "zero"
    deployment = f"kubetask-worker-{queue}"
    manifest = devstack.worker_deployment(queue, min_replicas=0, max_replicas=1, concurrency=4,
                                          scale_down_delay=1, grace=5)
    b.plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    devstack.wait_for(lambda: f"{devstack.NAMESPACE}/{deployment} serves queue" in b.operator_log(), 60,
                      "the operator to see the zero pool", interval=0.2)
    ns = b.namespace("bench-zero")
    scaled: list[float] = []
    succeeded: list[float] = []
    replicas: dict[str, float] = {}
    cond = threading.Condition()

    def on_deployment(kind: str, obj: dict[str, Any], received: float) -> None:
        with cond:
            replicas["value"] = int((obj.get("spec") or {}).get("replicas") or 0)
            replicas["at"] = received
            cond.notify_all()

    dep_watch = Watch(b.api, f"/apis/apps/v1/namespaces/{devstack.NAMESPACE}/deployments", on_deployment,
                      params=f"fieldSelector=metadata.name%3D{deployment}")
    dep_watch.start()
    try:
        for rep in range(reps):
            def idle() -> bool:
                pods = [p for p in podrunner.running_processes(b.plane.state_dir, devstack.NAMESPACE)
                        if p.startswith(deployment + "-")]
                listing = b.api.request("GET", f"/apis/apps/v1/namespaces/{devstack.NAMESPACE}/deployments/{deployment}")
                return not pods and int(listing["spec"].get("replicas") or 0) == 0 \
                    and int((listing.get("status") or {}).get("replicas") or 0) == 0

            devstack.wait_for(idle, 120, "the zero pool at 0 replicas with no pods", interval=0.2)
            time.sleep(1)
            tracker = Tracker(task_phase)
            watch = Watch(b.api, f"/apis/kubetask.io/v1alpha1/namespaces/{ns}/tasks", tracker)
            watch.start()
            with cond:
                replicas["value"] = 0
            sent = b.api.create_many(f"/apis/kubetask.io/v1alpha1/namespaces/{ns}/tasks",
                                     [task_body(f"z{rep}", queue=queue)], threads=1)[0]
            deadline = time.monotonic() + 60
            with cond:
                while replicas["value"] < 1:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the zero pool was not scaled up within 60 s")
                    cond.wait(0.5)
                scaled.append(replicas["at"] - sent)
            tracker.wait("Succeeded", 1, 120, watch)
            succeeded.append(tracker.seen[f"z{rep}"]["Succeeded"] - sent)
            watch.stop()
            _log(f"scale from zero #{rep + 1}: replicas ≥ 1 after {scaled[-1]:.3f}s, "
                 f"Succeeded after {succeeded[-1]:.2f}s")
    finally:
        dep_watch.stop()
    return {"scaled": scaled, "succeeded": succeeded}


# -- figure 6: operator footprint ---------------------------------------------------------


def run_footprint(b: Bench, n: int) -> dict[str, float]:
    ns = b.namespace("bench-footprint")
    path = f"/apis/kubetask.io/v1alpha1/namespaces/{ns}/tasks"
    proc = psutil.Process(b.operator.pid)
    samples: list[tuple[float, float]] = []  # (monotonic, rss MB)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append((time.monotonic(), proc.memory_info().rss / 2**20))
            except psutil.Error:
                return
            stop.wait(0.2)

    rss_before = proc.memory_info().rss / 2**20
    cpu_before = sum(proc.cpu_times()[:2])
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracker = Tracker(task_phase)
    watch = Watch(b.api, path, tracker)
    watch.start()
    t0 = time.monotonic()
    b.api.create_many(path, [task_body(f"f{i:05d}") for i in range(n)])
    tracker.wait("Succeeded", n, 1800, watch)
    devstack.wait_for(b.outbox_empty, 120, "the status outbox to drain")
    busy_s = time.monotonic() - t0
    cpu_busy = sum(proc.cpu_times()[:2]) - cpu_before
    watch.stop()
    time.sleep(10)  # settle: every Task exists, finished
    stop.set()
    sampler.join()
    rss_after = proc.memory_info().rss / 2**20
    cpu_idle_10s = sum(proc.cpu_times()[:2]) - cpu_before - cpu_busy
    return {
        "n": n, "rss_before": rss_before, "rss_peak": max(s for _, s in samples), "rss_after": rss_after,
        "cpu_s": cpu_busy, "busy_s": busy_s, "cpu_idle_10s": cpu_idle_10s,
    }


# -- entry points ---------------------------------------------------------------------------


PHASES = ("e2e", "containers", "zero", "footprint")


def measure(quick: bool, report: Callable[[Figure], None], sizes: Sizes | None = None,
            phases: Iterable[str] = PHASES) -> dict[str, float]:
    sizes = sizes or Sizes.of(quick)
    phases = set(phases)
    command = "python -m bench.e2e" + (" --quick" if quick else "") + (
        f" --phases {','.join(p for p in PHASES if p in phases)}" if phases != set(PHASES) else "")
    # Job pods count against the fake nodes' pod capacity until they are gone, and up to
    # CONTAINER_MAX_PODS task pods are in flight: enough nodes for all, and one to spare.
    pods = (sizes.jobs if "e2e" in phases else 0) + \
        (sizes.containers + CONTAINER_MAX_PODS if "containers" in phases else 0)
    nodes = max(2, math.ceil(pods / PODS_PER_NODE) + 1)
    keys: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kubetask-bench-e2e-") as tmp:
        work = pathlib.Path(tmp)
        _log(f"starting the control plane ({nodes} kwok nodes), PostgreSQL and the operator in {work}")
        ceiling: list[float] = []
        b = Bench.start(work, nodes, before_operator=(
            (lambda plane: ceiling.append(run_create_ceiling(plane, sizes.tasks)))
            if "e2e" in phases else None),
            operator_env={"KUBETASK_CONTAINER_MAX_PODS": str(CONTAINER_MAX_PODS)})
        try:
            b.wait_warm()
            background = _background_rate(b.api)
            _log(f"warm: {WORKERS} workers × {CONCURRENCY} slots; background {background:.1f} API writes/s")
            earlier = 20
            if "e2e" in phases:
                paced = run_paced(b)
                _log(f"paced: {paced}")
                earlier += paced["n"]
                tasks = run_tasks(b, sizes.tasks, background)
                tasks["paced"] = paced
                _log(f"tasks: {tasks}")
                earlier += sizes.tasks
                if sizes.jobs:
                    jobs = run_jobs(b, sizes.jobs, background)
                    _log(f"jobs: {jobs}")
                    keys.update(_report_e2e(report, command, tasks, jobs, background, ceiling[0]))
            if "containers" in phases and sizes.containers:
                began = time.monotonic()
                containers = run_container_tasks(b, sizes.containers, background)
                _log(f"container tasks: {containers}")
                earlier += sizes.containers
                harness_jobs = run_harness_jobs(b, sizes.containers, background)
                _log(f"jobs, pods run by the harness: {harness_jobs}")
                took = time.monotonic() - began
                _log(f"container Tasks vs Jobs took {took:.0f} s")
                keys.update(_report_containers(report, command, containers, harness_jobs, background, nodes, took))
            if "zero" in phases:
                zero = run_scale_from_zero(b, sizes.scale_reps)
                keys.update(_report_zero(report, command, zero))
                earlier += sizes.scale_reps
            if "footprint" in phases:
                foot = run_footprint(b, sizes.footprint)
                _log(f"footprint: {foot}")
                keys.update(_report_footprint(report, command, foot, earlier))
        except BaseException:
            _log("operator log tail:\n" + b.operator_log()[-4000:])
            raise
        finally:
            b.stop()
    return keys


def _report_e2e(report: Callable[[Figure], None], command: str, tasks: dict[str, Any], jobs: dict[str, Any],
                background: float, ceiling: float) -> dict[str, float]:
    setup = (f"{WORKERS} warm worker pods × {CONCURRENCY} slots; {CREATORS} concurrent API creators for both; "
             f"{tasks['n']} Tasks (echo), then {jobs['n']} Jobs (one no-op pod each, completed by kwok) on the "
             "same control plane; times are client-side: create sent → phase delivered by a watch")
    ratio = tasks["tasks_per_s"] / jobs["jobs_per_s"]
    report(Figure(
        "e2e through the API server: throughput", "tasks/s", tasks["tasks_per_s"], {JOBS_PEER: jobs["jobs_per_s"]},
        f"{setup}; first create sent → last Succeeded/Complete; the creates alone took {tasks['create_s']:.2f} s "
        f"(Tasks) and {jobs['create_s']:.2f} s (Jobs). CPU by process, Tasks: {tasks['cpu']}; Jobs: {jobs['cpu']}",
        command=command, target=">= 20x Kubernetes Jobs", met=ratio >= 20))
    report(Figure(
        "e2e: the API server's ceiling, Task creates alone", "tasks/s", ceiling, {},
        f"{tasks['n']} Tasks created by the same {CREATORS} creators before the operator started (nothing "
        f"reacting to them, namespace deleted before it did): no operator can finish Tasks faster. "
        f"kubetask end to end reaches {tasks['tasks_per_s'] / ceiling:.0%} of it; 20x the Jobs would need "
        f"{20 * jobs['jobs_per_s']:,.0f} Tasks/s, {20 * jobs['jobs_per_s'] / ceiling:.1f}x the ceiling",
        command=command))
    coalesced = (f"{tasks['running_from_db']}/{tasks['n']} Tasks never showed Running on the watch (the mirror "
                 "coalesced it away): for those, Running = the first attempt's started_at in PostgreSQL")
    report(Figure(
        "e2e: apply → Running p50 (warm pool, in the burst)", "ms", tasks["running_p50"], {},
        f"p99 {tasks['running_p99']:.0f} ms, of which the create request itself (sent → 201 received) "
        f"took p50 {tasks['create_p50']:.0f} ms in the burst; {coalesced}. Without a burst ({tasks['paced']['n']} Tasks created "
        f"one every 100 ms): apply → Running p50 {tasks['paced']['running_p50']:.0f} ms "
        f"({tasks['paced']['shown_running']} showed Running on the watch), apply → claimed by a worker "
        f"(started_at) p50 {tasks['paced']['claimed_p50']:.0f} ms, apply → Succeeded p50 "
        f"{tasks['paced']['succeeded_p50']:.0f} ms",
        command=command, target="<= 50 ms", met=tasks["running_p50"] <= 50, higher_is_better=False))
    report(Figure(
        "e2e: apply → Succeeded p50 (Jobs: create → Complete)", "ms", tasks["succeeded_p50"],
        {JOBS_PEER: jobs["complete_p50"]},
        f"p99 {tasks['succeeded_p99']:.0f} ms, Jobs p99 {jobs['complete_p99']:.0f} ms; {setup}",
        command=command, higher_is_better=False))
    report(Figure(
        "e2e: API writes per unit of work", "writes", tasks["writes_per_unit"], {JOBS_PEER: jobs["writes_per_unit"]},
        "apiserver_request_total before/after, every mutating verb from every client (the create included), "
        f"minus the idle background ({background:.1f}/s). Per Task: {tasks['breakdown']}. "
        f"Per Job: {jobs['breakdown']}",
        command=command, higher_is_better=False))
    return {
        "e2e_tasks_per_s": tasks["tasks_per_s"],
        "e2e_jobs_per_s": jobs["jobs_per_s"],
        "e2e_vs_jobs": ratio,
        "e2e_create_ceiling_tasks_per_s": ceiling,
        "e2e_vs_create_ceiling": tasks["tasks_per_s"] / ceiling,
        "apply_to_running_p50_ms": tasks["running_p50"],
        "apply_to_running_p99_ms": tasks["running_p99"],
        "create_request_p50_ms_in_burst": tasks["create_p50"],
        "apply_to_succeeded_p50_ms": tasks["succeeded_p50"],
        "paced_apply_to_running_p50_ms": tasks["paced"]["running_p50"],
        "paced_apply_to_succeeded_p50_ms": tasks["paced"]["succeeded_p50"],
        "apply_to_succeeded_p99_ms": tasks["succeeded_p99"],
        "job_create_to_complete_p50_ms": jobs["complete_p50"],
        "job_create_to_complete_p99_ms": jobs["complete_p99"],
        "api_writes_per_task": tasks["writes_per_unit"],
        "api_writes_per_job": jobs["writes_per_unit"],
    }


def _report_containers(report: Callable[[Figure], None], command: str, tasks: dict[str, Any], jobs: dict[str, Any],
                       background: float, nodes: int, took: float) -> dict[str, float]:
    n = tasks["n"]
    for side, numbers in (("container Task", tasks), ("Job", jobs)):
        if numbers["harness_run"] < n:
            raise RuntimeError(f"only {numbers['harness_run']}/{n} {side} pods ended with the harness's container id: "
                               "something else completed them, and the figure would not compare like with like")
    if tasks["exited_0"] < n:
        raise RuntimeError(f"{tasks['exited_0']}/{n} container Tasks recorded exit code 0 ({tasks['attempts']} attempts)")
    ratio = tasks["per_s"] / jobs["per_s"]
    setup = (f"{n} container Tasks (busybox:1.36, command true), then {jobs['n']} Jobs whose pod runs the same, from "
             f"{CREATORS} concurrent API creators on the same control plane ({nodes} kwok nodes × {PODS_PER_NODE} pods); "
             "both kinds of pod get a real local process from the pod harness, which writes the exit code into the "
             f"pod's status (checked: {tasks['harness_run']}/{n} Task pods and {jobs['harness_run']}/{n} Job pods ended "
             "with the harness's container id): the Jobs' pod template carries the task-pod labels "
             "(app.kubernetes.io/part-of=kubetask, component=task) the harness runs and kwok's job-pod-complete stage "
             "skips, no token and no Service links, as a task pod has. The operator runs with "
             f"KUBETASK_CONTAINER_MAX_PODS={CONTAINER_MAX_PODS} (most pods seen in flight: {tasks['in_flight_max']}); "
             f"the Job controller has no such bound (most seen: {jobs['in_flight_max']}). A container Task's pod is "
             "deleted once its attempt is recorded (those writes are counted); a Job's pod stays until its Job is "
             "deleted (not counted)")
    stages = (f"p50 by stage, create sent → pod seen → pod ended → done: container Tasks "
              f"{tasks['stages']['to_pod_p50']:.0f} / {tasks['stages']['pod_run_p50']:.0f} / "
              f"{tasks['stages']['to_done_p50']:.0f} ms (pod ended → Succeeded p99 {tasks['stages']['to_done_p99']:.0f}); "
              f"Jobs {jobs['stages']['to_pod_p50']:.0f} / {jobs['stages']['pod_run_p50']:.0f} / "
              f"{jobs['stages']['to_done_p50']:.0f} ms (pod ended → Complete p99 {jobs['stages']['to_done_p99']:.0f})")
    report(Figure(
        "container Tasks vs Jobs, pods run by the harness: throughput", "tasks/s", tasks["per_s"],
        {JOBS_PEER: jobs["per_s"]},
        f"{setup}; first create sent → last Succeeded/Complete seen on a watch; the creates alone took "
        f"{tasks['create_s']:.2f} s (Tasks) and {jobs['create_s']:.2f} s (Jobs). CPU by process, container Tasks: "
        f"{tasks['cpu']}; Jobs: {jobs['cpu']}",
        command=command, target=">= 2x Kubernetes Jobs", met=ratio >= 2))
    report(Figure(
        "container Tasks: create → Succeeded p50 (Jobs: create → Complete)", "ms", tasks["done_p50"],
        {JOBS_PEER: jobs["done_p50"]},
        f"p99 {tasks['done_p99']:.0f} ms, Jobs p99 {jobs['done_p99']:.0f} ms; {stages}; in a burst of {n} each",
        command=command, higher_is_better=False))
    report(Figure(
        "container Tasks: API writes per unit of work", "writes", tasks["writes_per_unit"],
        {JOBS_PEER: jobs["writes_per_unit"]},
        "apiserver_request_total before/after, every mutating verb from every client (the create, the operator's "
        "pod create and delete and Task status patches, the scheduler's bindings, the harness's pod status, the Job "
        f"controller), minus the idle background ({background:.1f}/s). Per container Task: {tasks['breakdown']}. "
        f"Per Job: {jobs['breakdown']}. Of these, answered 4xx/5xx: per container Task {tasks['refused_per_unit']:.2f} "
        f"({tasks['refused'] or 'none'}), per Job {jobs['refused_per_unit']:.2f} ({jobs['refused'] or 'none'}). "
        f"Mean time in the API server, container Tasks: {tasks['server']}; "
        f"Jobs: {jobs['server']}",
        command=command, target="< Kubernetes Jobs", met=tasks["writes_per_unit"] < jobs["writes_per_unit"],
        higher_is_better=False))
    return {
        "container_tasks_per_s": tasks["per_s"],
        "container_vs_jobs": ratio,
        "api_writes_per_container_task": tasks["writes_per_unit"],
        "container_create_to_done_p50_ms": tasks["done_p50"],
        "container_create_to_done_p99_ms": tasks["done_p99"],
        "container_jobs_per_s": jobs["per_s"],
        "container_job_create_to_complete_p50_ms": jobs["done_p50"],
        "container_job_create_to_complete_p99_ms": jobs["done_p99"],
        "api_writes_per_container_job": jobs["writes_per_unit"],
        "api_refused_writes_per_container_task": tasks["refused_per_unit"],
        "container_max_pods": float(CONTAINER_MAX_PODS),
        "container_pods_in_flight_max": float(tasks["in_flight_max"]),
        "container_vs_jobs_seconds": took,
    }


def _report_zero(report: Callable[[Figure], None], command: str, zero: dict[str, list[float]]) -> dict[str, float]:
    scaled, succeeded = median(zero["scaled"]), median(zero["succeeded"])
    report(Figure(
        "scale from zero: first Task created → Deployment spec.replicas ≥ 1", "s", scaled, {},
        f"median of {len(zero['scaled'])} ({', '.join(f'{v:.3f}' for v in zero['scaled'])}), watched on the "
        f"Deployment; first Task created → Succeeded from zero: median {succeeded:.2f} s "
        f"({', '.join(f'{v:.2f}' for v in zero['succeeded'])}), which includes kwok running the pod and the "
        "harness starting a real Python worker process",
        command=command, target="<= 1 s", met=scaled <= 1, higher_is_better=False))
    return {"scale_from_zero_s": scaled, "scale_from_zero_to_succeeded_s": succeeded}


def _report_footprint(report: Callable[[Figure], None], command: str, foot: dict[str, float],
                      earlier: int) -> dict[str, float]:
    n = int(foot["n"])
    report(Figure(
        f"operator RSS, peak while {n:,} Tasks are created, run and exist", "MB", foot["rss_peak"], {},
        f"psutil every 0.2 s; {foot['rss_before']:.0f} MB before, {foot['rss_after']:.0f} MB 10 s after the "
        f"last status; the {earlier} Tasks of the earlier figures also exist",
        command=command, higher_is_better=False))
    report(Figure(
        f"operator CPU to admit, mirror and scale {n:,} Tasks", "CPU s", foot["cpu_s"], {},
        f"user+system, first create → empty outbox ({foot['busy_s']:.1f} s wall, "
        f"{foot['cpu_s'] / n * 1000:.2f} ms per Task); {foot['cpu_idle_10s']:.2f} CPU s in the 10 idle s after",
        command=command, higher_is_better=False))
    return {"operator_rss_mb_10k": foot["rss_peak"], "operator_rss_mb_10k_after": foot["rss_after"],
            "operator_cpu_s_10k": foot["cpu_s"], "operator_cpu_ms_per_task": foot["cpu_s"] / n * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 Tasks/Jobs, 150 container Tasks/Jobs, 2,000 for the footprint")
    parser.add_argument("--tasks", type=int, help="override N for figure 2 (Tasks)")
    parser.add_argument("--jobs", type=int, help="override N for figure 2 (Jobs)")
    parser.add_argument("--footprint", type=int, help="override the Task count of figure 6")
    parser.add_argument("--scale-reps", type=int, help="override the repetitions of figure 4")
    parser.add_argument("--containers", type=int, help="override N for figure 3 (container Tasks, and as many Jobs)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)} (with --jobs 0: Tasks only, for A/B runs)")
    args = parser.parse_args(argv)
    base = Sizes.of(args.quick)
    sizes = Sizes(tasks=args.tasks or base.tasks, jobs=base.jobs if args.jobs is None else args.jobs,
                  footprint=args.footprint or base.footprint, scale_reps=args.scale_reps or base.scale_reps,
                  containers=base.containers if args.containers is None else args.containers)

    def report(figure: Figure) -> None:
        peers = ", ".join(f"{k} {v:.4g}" for k, v in figure.peers.items())
        target = f" [target {figure.target}: {'met' if figure.met else 'MISSED'}]" if figure.target else ""
        print(f"{figure.name}: {figure.ours:.4g} {figure.unit}" + (f" (vs {peers})" if peers else "") + target,
              flush=True)
        if figure.note:
            print(f"    {figure.note}")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through measure(), which stops everything

    signal.signal(signal.SIGTERM, on_term)
    numbers = measure(args.quick, report, sizes, args.phases.split(","))
    print(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
