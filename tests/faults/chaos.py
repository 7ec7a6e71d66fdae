"""``make chaos``: a soak of N mixed tasks while every part of the system is knocked over.

    python -m tests.faults.chaos [--tasks N] [--quick] [--seed S] [--keep]

Starts its own control plane, PostgreSQL, operator and worker pool (the same
pieces as the end-to-end tests: tests/stack.py, devstack), submits N Tasks
(default 10,000; ``--quick`` 1,000) of mixed handlers — ``echo``, a short
``sleep``, ``fail`` once then succeed, ``fail`` permanently — and, while they
are created and run, injects:

* SIGKILL of a random worker process throughout (the harness restarts it, as a kubelet would),
* one operator SIGKILL and restart (while Tasks are being created),
* one PostgreSQL restart (with 40 % of the tasks finished),
* one kube-apiserver restart (with 70 % of the tasks finished).

Then it waits, bounded, for every task to finish and every status to be
mirrored, and audits the Tasks against PostgreSQL (tests/faults/audit.py).
The last line of its output is always

    chaos: submitted=N succeeded=N dead_letter=N lost=0 duplicated=0 mismatched=0 faults=N

``lost``: Tasks that never finished or are missing (object or row);
``duplicated``: Tasks with more than one successful attempt; ``mismatched``:
Task status phase or attempts disagreeing with PostgreSQL; ``faults``: faults
injected. The exit status is 1 when any of the first three is not 0, or when
a Task ended in another phase than its handler dictates, or an attempt record
breaks the rules (the line before the last says which).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

import psycopg
from kubetask_dev import controlplane, devstack, postgres

from tests.faults import audit
from tests.stack import Stack, task

QUEUE = "chaos"
NAMESPACE = "chaos"
MAX_CHUNK = 250


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Submitter(threading.Thread):
    """Creates the Tasks in chunks with ``kubectl create``, retrying a chunk until every item exists
    (the API server may be restarting): an AlreadyExists on a retry means an earlier try got through."""

    def __init__(self, plane: controlplane.ControlPlane, manifests: list[dict[str, Any]], deadline: float) -> None:
        super().__init__(name="submitter", daemon=True)
        self.plane, self.manifests, self.deadline = plane, manifests, deadline
        self.created = 0
        self.retries = 0
        self.failed: list[str] = []

    def run(self) -> None:
        # Ten chunks at least, so the operator restart lands in the middle of the creations.
        size = max(5, min(MAX_CHUNK, len(self.manifests) // 10))
        for start in range(0, len(self.manifests), size):
            chunk = self.manifests[start:start + size]
            body = json.dumps({"apiVersion": "v1", "kind": "List", "items": chunk})
            while True:
                try:
                    result = self.plane.kubectl("create", "-f", "-", input=body, check=False)
                    errors = [line for line in result.stderr.splitlines()
                              if line.strip() and "AlreadyExists" not in line and "already exists" not in line]
                    if result.returncode == 0 or not errors:
                        break
                    last = errors[-1]
                except subprocess.TimeoutExpired as err:
                    last = f"timeout: {err}"
                if time.monotonic() > self.deadline:
                    self.failed.append(f"chunk at {start}: {last}")
                    break
                self.retries += 1
                time.sleep(1)  # the API server is down or restarting: try the chunk again shortly
            self.created = min(len(self.manifests), start + size)


def finished_count(dsn: str) -> int:
    try:
        return int(audit.sql(dsn, "SELECT count(*) AS n FROM kubetask_tasks WHERE namespace = %s"
                                  " AND state IN ('succeeded', 'dead_letter', 'cancelled')", NAMESPACE)[0]["n"])
    except psycopg.Error:
        return -1


def run(count: int, seed: int, state: pathlib.Path) -> audit.Report:
    rng = random.Random(seed)
    say(f"{count} tasks, seed {seed}, state in {state}")
    plane = controlplane.ControlPlane.start(state / "cluster")
    pg: postgres.PostgresServer | None = None
    stack: Stack | None = None
    killer: audit.WorkerKiller | None = None
    try:
        pg = postgres.PostgresServer.start(state / "postgres" / "data")
        dsn = pg.create_database("kubetask_chaos")
        devstack.DevStack.install(plane, dsn)
        stack = Stack(plane, dsn, state / "operator")
        stack.start_operator()
        stack.add_pool(QUEUE, max_replicas=4, concurrency=8, scale_down_delay=10)
        plane.kubectl("create", "namespace", NAMESPACE)

        specs = audit.mixed_specs(count, rng, QUEUE)
        manifests = [task(NAMESPACE, s["type"], f"c{i:05d}", **{k: v for k, v in s.items() if k != "type"})
                     for i, s in enumerate(specs)]
        expected = {m["metadata"]["name"]: audit.expected_phase(m["spec"]) for m in manifests}
        budget = 300 + 0.15 * count
        deadline = time.monotonic() + budget
        faults = 0
        started = time.monotonic()

        submitter = Submitter(plane, manifests, deadline)
        killer = audit.WorkerKiller(plane, dsn, QUEUE, interval=1.5, seed=seed, min_age=1.0)
        submitter.start()
        killer.__enter__()

        def wait_until(what: str, predicate: Any) -> None:
            devstack.wait_for(predicate, max(1.0, deadline - time.monotonic()), what, interval=0.2)

        # One operator restart while Tasks are being created.
        wait_until("a third of the Tasks created", lambda: submitter.created >= count // 3 or not submitter.is_alive())
        say(f"SIGKILL the operator ({submitter.created} Tasks created)")
        stack.stop_operator(kill=True)
        stack.start_operator()
        faults += 1

        wait_until("40 % finished", lambda: finished_count(dsn) >= count * 4 // 10)
        say(f"restart PostgreSQL ({finished_count(dsn)} finished)")
        killer.pause(True)
        pg.restart()
        killer.pause(False)
        faults += 1

        wait_until("70 % finished", lambda: finished_count(dsn) >= count * 7 // 10)
        say(f"restart kube-apiserver ({finished_count(dsn)} finished)")
        plane.restart_component("kube-apiserver", down_seconds=2)
        faults += 1

        last_report = [0.0]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last_report[0] >= 15:
                last_report[0] = time.monotonic()
                say(f"{done}/{total} finished, {submitter.created} created, {len(killer.kills) if killer else 0} kills")

        done = audit.wait_finished(dsn, NAMESPACE, count, timeout=max(1.0, deadline - time.monotonic()),
                                   progress=progress)
        killer.stop()
        submitter.join(timeout=5)
        faults += len(killer.kills)
        say(f"{done}/{count} finished in {time.monotonic() - started:.0f}s; {len(killer.kills)} worker kills, "
            f"{submitter.retries} chunk retries")
        if done < count:
            for row in audit.unfinished(dsn, NAMESPACE, limit=10):
                say(f"unfinished: {row}")
        behind = audit.wait_mirrored(dsn, NAMESPACE, 60 + 0.02 * count)
        if behind:
            say(f"{behind} statuses still behind their rows")
        for problem in submitter.failed + killer.errors:
            say(f"problem: {problem}")
        report = audit.audit(plane, dsn, NAMESPACE, expected, killer.kills, faults=faults)
        for line in report.examples:
            say(f"  {line}")
        return report
    finally:
        if killer is not None:
            killer.stop()
        if stack is not None:
            stack.stop_operator()
        plane.stop()
        if pg is not None:
            pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, help="how many Tasks (default 10000; 1000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="1,000 Tasks (< 10 min)")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--keep", action="store_true", help="keep the state directory (logs) even on success")
    args = parser.parse_args(argv)
    count = args.tasks if args.tasks is not None else (1000 if args.quick else 10000)
    if count < 4:
        parser.error("--tasks must be at least 4 (one of each handler)")
    state = pathlib.Path(tempfile.mkdtemp(prefix="kubetask-chaos-"))
    report = audit.Report(submitted=count)
    crashed = False
    try:
        report = run(count, args.seed, state)
    except Exception:
        traceback.print_exc(file=sys.stdout)
        crashed = True
        report.lost = report.submitted - report.succeeded - report.dead_letter
    ok = report.clean and not crashed
    if ok and not args.keep:
        shutil.rmtree(state, ignore_errors=True)
    else:
        say(f"logs kept in {state}")
    say(("passed: " if ok else "FAILED: ") + report.details())
    print(f"chaos: {report.figures()}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
