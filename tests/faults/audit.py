"""What the fault tests and ``make chaos`` share: injecting worker SIGKILLs, and auditing the outcome.

``WorkerKiller`` SIGKILLs a random live worker process of one pool at random
intervals (the harness restarts it, as a kubelet would) and notes, right after
each kill, the attempts the dead process held: each of those must later be
recorded ``lost`` with error type ``LeaseExpired``.

``audit`` compares the Tasks of a namespace with PostgreSQL after a run and
returns every figure the tests assert on and the chaos soak prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import psycopg
import psycopg.rows
from kubetask_dev import controlplane, devstack, podrunner

from kubetask import model

FINAL_STATES = ("succeeded", "dead_letter", "cancelled")
FINAL_PHASES = ("Succeeded", "DeadLetter", "Cancelled")
#: A kill races with a statement the worker had already sent: PostgreSQL may still commit it.
IN_FLIGHT_GRACE_SECONDS = 1.0


def sql(dsn: str, query: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row, connect_timeout=10) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def pool_processes(plane: controlplane.ControlPlane, queue: str) -> dict[str, int]:
    """Pod name → pid of the live worker processes of the pool serving ``queue``."""
    prefix = f"kubetask-worker-{queue}-"
    return {pod: pid for pod, pid in podrunner.running_processes(plane.state_dir, devstack.NAMESPACE).items()
            if pod.startswith(prefix)}


@dataclasses.dataclass
class Kill:
    pod: str
    pid: int
    at: Any
    """PostgreSQL's clock right after the kill."""
    held: list[tuple[int, int, str]]
    """(task id, attempt number, lease owner) of the rows running on the pod right after the kill."""


def process_age(pid: int) -> float:
    """Seconds since ``pid`` started (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            started_ticks = int(stat.read().rsplit(") ", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class WorkerKiller:
    """SIGKILL a random live worker process of ``queue`` every ``interval`` seconds (± 30 %), in a thread.

    Only processes up for ``min_age`` seconds are candidates: the harness, like a kubelet, restarts a
    killed process with a growing back-off (up to 10 s), and a process killed while still importing
    would do no work at all. Victims are thus processes in the middle of their work. ``max_kills``
    bounds the run time: once the harness's back-off is at its 10 s cap, every kill costs a pod 10 s.
    """

    def __init__(self, plane: controlplane.ControlPlane, dsn: str, queue: str, interval: float = 1.0,
                 seed: int | None = None, log: Callable[[str], None] | None = None, min_age: float = 2.0,
                 max_kills: int | None = None) -> None:
        self.plane, self.dsn, self.queue, self.interval, self.min_age = plane, dsn, queue, interval, min_age
        self.max_kills = max_kills
        self.kills: list[Kill] = []
        self.errors: list[str] = []
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kill-{queue}", daemon=True)
        self._log = log

    def __enter__(self) -> "WorkerKiller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def pause(self, paused: bool) -> None:
        """While paused no kill happens (e.g. while PostgreSQL, needed to note the victims, is down)."""
        if paused:
            self._paused.set()
        else:
            self._paused.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval * self._rng.uniform(0.7, 1.3)):  # fault-injection pace
            if self.max_kills is not None and len(self.kills) >= self.max_kills:
                return
            if self._paused.is_set():
                continue
            try:
                self.kill_one()
            except Exception as err:  # a fault injector must not die quietly: the test reports these
                self.errors.append(f"{type(err).__name__}: {err}")

    def kill_one(self) -> Kill | None:
        live = {pod: pid for pod, pid in pool_processes(self.plane, self.queue).items()
                if process_age(pid) >= self.min_age}
        if not live:
            return None
        pod = self._rng.choice(sorted(live))
        pid = live[pod]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        # The harness restarts the process no sooner than a second later: every row still running on the
        # pod now belongs to a dead process.
        try:
            rows = sql(self.dsn, "SELECT id, attempts, lease_owner, clock_timestamp() AS now FROM kubetask_tasks"
                                 " WHERE state = 'running' AND worker_pod = %s", pod)
        except psycopg.errors.UndefinedTable:
            rows = []  # the operator has not created the schema yet: nothing can be held
        at = rows[0]["now"] if rows else sql(self.dsn, "SELECT clock_timestamp() AS now")[0]["now"]
        # (A row seen at an earlier kill of the same pod and not rescued yet is seen again: count it once.)
        kill = Kill(pod, pid, at, [(r["id"], r["attempts"], r["lease_owner"]) for r in rows])
        self.kills.append(kill)
        if self._log is not None:
            self._log(f"SIGKILL {pod} (pid {pid}) holding {len(kill.held)} task(s)")
        return kill


def wait_finished(dsn: str, namespace: str, count: int, timeout: float,
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Wait until ``count`` rows of ``namespace`` are final in PostgreSQL; returns how many are."""
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        try:
            row = sql(dsn, "SELECT count(*) FILTER (WHERE state IN ('succeeded', 'dead_letter', 'cancelled')) AS done"
                           " FROM kubetask_tasks WHERE namespace = %s", namespace)[0]
        except psycopg.OperationalError:
            row = {"done": done}
        done = int(row["done"])
        if progress is not None:
            progress(done, count)
        if done >= count:
            return done
        time.sleep(0.5)
    return done


def wait_mirrored(dsn: str, namespace: str, timeout: float) -> int:
    """Wait until every row of ``namespace`` has its latest version mirrored; returns how many still lag."""
    deadline = time.monotonic() + timeout
    behind = -1
    while time.monotonic() < deadline:
        behind = int(sql(dsn, "SELECT count(*) AS n FROM kubetask_tasks WHERE namespace = %s"
                              " AND version > mirrored_version", namespace)[0]["n"])
        if behind == 0:
            return 0
        time.sleep(0.5)
    return behind


def unfinished(dsn: str, namespace: str, limit: int = 20) -> list[dict[str, Any]]:
    """Rows of ``namespace`` not final yet, with their attempts: what a timeout message should show."""
    return sql(dsn, "SELECT t.name, t.state, t.attempts, t.worker_pod, t.lease_owner, t.lease_expires_at,"
                    " t.run_at, now() AS now, (SELECT json_agg(json_build_object('n', a.number, 'outcome', a.outcome,"
                    " 'pod', a.worker_pod, 'owner', a.lease_owner, 'error', a.error_type) ORDER BY a.number)"
                    " FROM kubetask_attempts a WHERE a.task_id = t.id) AS history"
                    " FROM kubetask_tasks t WHERE t.namespace = %s AND t.state NOT IN ('succeeded', 'dead_letter',"
                    " 'cancelled') ORDER BY t.id LIMIT %s", namespace, limit)


def list_tasks(plane: controlplane.ControlPlane, namespace: str) -> list[dict[str, Any]]:
    """Every Task of ``namespace`` (kubectl pages through the list)."""
    out = plane.kubectl("get", "tasks", "-n", namespace, "-o", "json", "--chunk-size=1000").stdout
    return list(json.loads(out)["items"])


@dataclasses.dataclass
class Report:
    submitted: int = 0
    succeeded: int = 0
    dead_letter: int = 0
    lost: int = 0
    """Tasks never finished, or missing (no Task object, or no row)."""
    duplicated: int = 0
    """Tasks with more than one successful attempt."""
    mismatched: int = 0
    """Tasks whose status phase or attempts disagree with PostgreSQL."""
    unexpected: int = 0
    """Finished Tasks in another phase than their handler dictates."""
    lost_attempts: int = 0
    bad_attempts: int = 0
    """Attempt records that break the rules: gaps, left running, lost without LeaseExpired."""
    kills_unrecorded: int = 0
    """Attempts held by a killed process that did not end as lost/LeaseExpired."""
    faults: int = 0
    held_by_killed: int = 0
    """Distinct attempts held by processes at the moment they were killed."""
    examples: list[str] = dataclasses.field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)

    def figures(self) -> str:
        return (f"submitted={self.submitted} succeeded={self.succeeded} dead_letter={self.dead_letter} "
                f"lost={self.lost} duplicated={self.duplicated} mismatched={self.mismatched} faults={self.faults}")

    def details(self) -> str:
        return (f"unexpected={self.unexpected} lost_attempts={self.lost_attempts} bad_attempts={self.bad_attempts} "
                f"kills_unrecorded={self.kills_unrecorded} held_by_killed={self.held_by_killed}")

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.mismatched or self.unexpected or self.bad_attempts
                    or self.kills_unrecorded)


def audit(plane: controlplane.ControlPlane, dsn: str, namespace: str, expected: dict[str, str],
          kills: Iterable[Kill] = (), faults: int = 0) -> Report:
    """Compare the Tasks named in ``expected`` (name → the phase their handler dictates) with PostgreSQL."""
    report = Report(submitted=len(expected), faults=faults)
    items = {t["metadata"]["name"]: t for t in list_tasks(plane, namespace)}
    rows = {r["uid"]: r for r in sql(
        dsn, "SELECT id, uid::text AS uid, name, state, attempts FROM kubetask_tasks WHERE namespace = %s", namespace)}
    rows_per_name: dict[str, int] = {}
    for row in rows.values():
        rows_per_name[row["name"]] = rows_per_name.get(row["name"], 0) + 1
    attempts: dict[int, list[dict[str, Any]]] = {}
    for a in sql(dsn, "SELECT a.task_id, a.number, a.outcome, a.error_type, a.lease_owner, a.finished_at"
                      " FROM kubetask_attempts a JOIN kubetask_tasks t ON t.id = a.task_id"
                      " WHERE t.namespace = %s ORDER BY a.task_id, a.number", namespace):
        attempts.setdefault(a["task_id"], []).append(a)

    for name, want in sorted(expected.items()):
        item = items.get(name)
        row = rows.get(item["metadata"]["uid"]) if item is not None else None
        if item is None or row is None or rows_per_name.get(name, 0) != 1:
            report.lost += 1
            report.note(f"{name}: object {'present' if item else 'missing'}, rows {rows_per_name.get(name, 0)}")
            continue
        if row["state"] not in FINAL_STATES:
            report.lost += 1
            report.note(f"{name}: never finished (state {row['state']})")
            continue
        report.succeeded += row["state"] == "succeeded"
        report.dead_letter += row["state"] == "dead_letter"
        phase = model.PHASE_BY_STATE[row["state"]].value
        status = item.get("status") or {}
        if status.get("phase") != phase or status.get("attempts") != row["attempts"]:
            report.mismatched += 1
            report.note(f"{name}: status {status.get('phase')}/{status.get('attempts')} "
                        f"but PostgreSQL {row['state']}/{row['attempts']}")
        if phase != want:
            report.unexpected += 1
            report.note(f"{name}: {phase}, its handler dictates {want}")
        history = attempts.get(row["id"], [])
        if sum(a["outcome"] == "succeeded" for a in history) > 1:
            report.duplicated += 1
            report.note(f"{name}: {sum(a['outcome'] == 'succeeded' for a in history)} successful attempts")
        if [a["number"] for a in history] != list(range(1, row["attempts"] + 1)):
            report.bad_attempts += 1
            report.note(f"{name}: attempts {row['attempts']} but records {[a['number'] for a in history]}")
        for a in history:
            report.lost_attempts += a["outcome"] == "lost"
            if a["outcome"] == "running" or (a["outcome"] == "lost") != (a["error_type"] == "LeaseExpired"):
                report.bad_attempts += 1
                report.note(f"{name}: attempt {a['number']} {a['outcome']} / {a['error_type']}")

    by_key = {(a["task_id"], a["number"]): a for history in attempts.values() for a in history}
    judged: set[tuple[int, int]] = set()
    for kill in kills:
        for task_id, number, owner in kill.held:
            a = by_key.get((task_id, number))
            if a is None or (task_id, number) in judged:
                continue  # another namespace's task, or seen at an earlier kill of the same pod
            judged.add((task_id, number))
            report.held_by_killed += 1
            ok = (a["outcome"] == "lost" and a["error_type"] == "LeaseExpired") or (
                a["outcome"] in ("succeeded", "failed", "timeout") and a["finished_at"] is not None
                and (a["finished_at"] - kill.at).total_seconds() <= IN_FLIGHT_GRACE_SECONDS)
            if not ok:
                report.kills_unrecorded += 1
                report.note(f"task id {task_id} attempt {number} held by killed {kill.pod} ({owner}) at {kill.at}: "
                            f"{a['outcome']}/{a['error_type']} finished {a['finished_at']}")
    return report


def expected_phase(spec: dict[str, Any]) -> str:
    """The phase a Task's demo handler dictates, given a retry budget no fault can exhaust."""
    payload = spec.get("payload") or {}
    if spec["type"] == "fail" and (payload.get("permanent") or payload.get("times") is None):
        return "DeadLetter"
    return "Succeeded"


def mixed_specs(count: int, rng: random.Random, queue: str, kinds: Collection[str] = ("echo", "sleep", "fail1", "permanent"),
                weights: Collection[float] = (0.4, 0.4, 0.12, 0.08)) -> list[dict[str, Any]]:
    """``count`` Task specs of mixed handlers, with a retry budget SIGKILLs cannot exhaust."""
    backoff = {"initialSeconds": 0.2, "factor": 1.5, "maxSeconds": 2, "jitter": 0.2}
    specs = []
    for i in range(count):
        kind = rng.choices(list(kinds), weights=list(weights))[0] if i >= len(kinds) else list(kinds)[i]
        if kind == "echo":
            spec: dict[str, Any] = {"type": "echo", "payload": {"i": i}}
        elif kind == "sleep":
            spec = {"type": "sleep", "payload": {"seconds": round(rng.uniform(0.05, 0.2), 3)}}
        elif kind == "fail1":
            spec = {"type": "fail", "payload": {"times": 1}}
        else:
            spec = {"type": "fail", "payload": {"permanent": True}}
        specs.append({**spec, "queue": queue, "maxRetries": 10, "backoff": backoff})
    return specs
