"""Engine figures: kubetask's PostgreSQL queue and worker against PGQueuer and procrastinate.

No Kubernetes here. One PostgreSQL server (``kubetask_dev.postgres``, the
same one the tests use) serves every system, each run in a fresh database of
its own. Workers are real processes (``python -m bench.worker``) running each
system's own worker with a no-op handler; the parent only enqueues and
watches.

* Burn-down: the workers start on an empty queue and say READY; the backlog
  then arrives in one transaction, so every worker wakes at once. Tasks/s =
  backlog / (first handler start → the parent sees no unfinished task).
* Steady: a producer in the parent enqueues through each system's normal
  enqueue call, in batches every 10 ms at a fixed rate above what any of them
  sustains on this machine, while the workers run; sustained tasks/s is the
  completions counted over the second half of the run.
* Pickup latency: one idle worker process; a task is enqueued (kubetask:
  ``db.queue.admit``, which is the INSERT + NOTIFY the operator does), and its
  handler prints the wall-clock time it started; spaced 20–40 ms apart.
* Cost of history: the p50 of one ``db.queue.claim(limit=1)`` round trip and a
  burn-down, on an empty table and again after 1,000,000 finished tasks with
  their attempts were added with ``INSERT … SELECT generate_series``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import itertools
import json
import os
import pathlib
import random
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

import psycopg

from bench import common

ROOT = pathlib.Path(__file__).resolve().parents[1]
KUBETASK_CONCURRENCY = 32
"""KUBETASK_CONCURRENCY of the burn-down and steady workers: what one would set for I/O-bound handlers.
The default (4) is measured too, as a figure of its own."""
PEERS = ("pgqueuer", "procrastinate")
DEFAULT_CONCURRENCY = 4
"""WorkerSettings.concurrency's default."""
ADAPTERS = {
    "kubetask": "bench.kubetask_adapter",
    "pgqueuer": "bench.peers.pgqueuer_peer",
    "procrastinate": "bench.peers.procrastinate_peer",
    "polling-1s": "bench.peers.polling_peer",
}


def adapter(system: str) -> ModuleType:
    return importlib.import_module(ADAPTERS[system])


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much work each figure does; ``quick`` and full differ only in counts."""

    backlog: int
    backlog_procrastinate: int
    backlog_default_concurrency: int
    processes: tuple[int, ...]
    concurrency: dict[str, int]
    """Per system, the concurrency (PGQueuer: batch size) of its burn-down workers."""
    peer_alternatives: dict[str, tuple[int, ...]]
    """Other settings tried for a peer in the burn-down; the peer's best result counts."""
    steady_rate: int
    steady_seconds: float
    pickup_samples: int
    pickup_samples_polling: int
    history_rows: int
    history_backlog: int
    claim_samples: int
    limit_pairs: int

    @classmethod
    def make(cls, quick: bool, tiny: bool = False) -> Plan:
        concurrency = {"kubetask": KUBETASK_CONCURRENCY, "pgqueuer": 10, "procrastinate": 10, "polling-1s": 1}
        if tiny:
            return cls(backlog=300, backlog_procrastinate=100, backlog_default_concurrency=100, processes=(1,),
                       concurrency=concurrency, peer_alternatives={}, steady_rate=500, steady_seconds=1.5,
                       pickup_samples=5, pickup_samples_polling=2, history_rows=2_000, history_backlog=200,
                       claim_samples=20, limit_pairs=1)
        if quick:
            return cls(backlog=10_000, backlog_procrastinate=600, backlog_default_concurrency=3_000,
                       processes=(1, 2), concurrency={**concurrency, "pgqueuer": KUBETASK_CONCURRENCY},
                       peer_alternatives={}, steady_rate=12_000, steady_seconds=4, pickup_samples=50,
                       pickup_samples_polling=10, history_rows=100_000, history_backlog=5_000, claim_samples=200,
                       limit_pairs=2)
        return cls(backlog=100_000, backlog_procrastinate=5_000, backlog_default_concurrency=20_000,
                   processes=(1, 2, 4), concurrency={**concurrency, "pgqueuer": KUBETASK_CONCURRENCY},
                   peer_alternatives={},
                   steady_rate=12_000, steady_seconds=12, pickup_samples=200, pickup_samples_polling=40,
                   history_rows=1_000_000, history_backlog=50_000, claim_samples=500, limit_pairs=3)


# ------------------------------------------------------------------- databases

class Databases:
    """Fresh databases on one server."""

    def __init__(self, admin_dsn: str, dsn_for: Callable[[str], str]) -> None:
        self._admin_dsn = admin_dsn
        self._dsn_for = dsn_for
        self._numbers = itertools.count()

    def fresh(self, label: str) -> str:
        name = f"bench_{label.replace('-', '_')}_{next(self._numbers)}"
        with psycopg.connect(self._admin_dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name}")
            admin.execute(f"CREATE DATABASE {name}")
        return self._dsn_for(name)

    def server_version(self) -> str:
        with psycopg.connect(self._admin_dsn, autocommit=True) as admin:
            row = admin.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


@contextlib.asynccontextmanager
async def opened(system: str, dsn: str, install: bool = True) -> AsyncIterator[Any]:
    client = await adapter(system).Client.open(dsn)
    try:
        if install:
            await client.install()
        yield client
    finally:
        await client.close()


async def vacuum(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE")


# --------------------------------------------------------------------- workers

class Workers:
    """Worker processes of one system; collects their STAMP and SUMMARY lines."""

    def __init__(self, system: str, dsn: str, processes: int, concurrency: int) -> None:
        self.system, self.dsn, self.count, self.concurrency = system, dsn, processes, concurrency
        self.procs: list[asyncio.subprocess.Process] = []
        self.stamps: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        self.summaries: list[dict[str, Any]] = []
        self._ready = 0
        self._ready_event = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self.errors: list[str] = []

    async def __aenter__(self) -> Workers:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "PYTHONUNBUFFERED": "1"}
        for _ in range(self.count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.worker", self.system, self.dsn, str(self.concurrency),
                cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            self.procs.append(proc)
            self._readers.append(asyncio.create_task(self._read(proc)))
            self._readers.append(asyncio.create_task(self._errors(proc)))
        return self

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode().strip()
            if line.startswith("STAMP "):
                _, ident, at = line.split()
                self.stamps.put_nowait((int(ident), float(at)))
            elif line.startswith("SUMMARY "):
                self.summaries.append(json.loads(line.removeprefix("SUMMARY ")))
            elif line == "READY":
                self._ready += 1
                if self._ready == self.count:
                    self._ready_event.set()

    async def _errors(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line and len(self.errors) < 200:
                self.errors.append(line)

    async def ready(self, settle: float = 0.5, timeout: float = 60) -> None:
        """All processes imported their libraries; ``settle`` more seconds to connect and LISTEN."""
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.system} workers did not start: " + "\n".join(self.errors[-20:])) from None
        await asyncio.sleep(settle)

    def alive(self) -> None:
        for proc in self.procs:
            if proc.returncode is not None:
                raise RuntimeError(f"a {self.system} worker exited with {proc.returncode}:\n"
                                   + "\n".join(self.errors[-30:]))

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def _wait_drained(client: Any, workers: Workers, timeout: float) -> float:
    """Poll until nothing is unfinished; the wall-clock time it was first seen so."""
    deadline = time.monotonic() + timeout
    while True:
        if not await client.unfinished():
            return time.time()
        workers.alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{workers.system}: the backlog was not drained within {timeout:.0f}s")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ burn-down

@dataclasses.dataclass
class BurnDown:
    tasks_per_s: float
    seconds: float
    backlog: int
    check: str
    worker_cpu_us_per_task: float
    postgres_cpu_us_per_task: float


def _postgres_cpu(dsn: str) -> float:
    """CPU seconds used so far by the server's processes, ended backends included."""
    import psutil

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time(), setting FROM pg_settings "
                           "WHERE name = 'data_directory'").fetchone()
    assert row is not None
    pid = int((pathlib.Path(row[1]) / "postmaster.pid").read_text().split()[0])
    main = psutil.Process(pid)
    total = 0.0
    for proc in [main, *main.children()]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system if proc is main else 0)
    return total


QUEUE_LIMITS = {"max_running": 100_000, "rate_tasks": 1_000_000, "rate_period_seconds": 1,
                "concurrency_key_limit": 10_000}
"""A Queue whose limits cannot bind a burn-down (each more than its backlog can reach): what a limited
queue's claim costs over an unlimited one's, alone."""


async def burn_down(dbs: Databases, system: str, backlog: int, processes: int, concurrency: int,
                    dsn: str | None = None, queue_limits: dict[str, int] | None = None) -> BurnDown:
    dsn = dsn or dbs.fresh(system)
    # No VACUUM ANALYZE of the fresh, empty tables: statistics saying "empty" make PostgreSQL cache
    # plans (foreign-key checks among them) that scan whole tables once they have grown.
    async with opened(system, dsn) as client:
        if queue_limits is not None:  # the row the operator writes for a Queue object of the queue
            await client.set_queue_limits(queue_limits)
        async with Workers(system, dsn, processes, concurrency) as workers:
            await workers.ready()
            await client.enqueue_backlog(backlog)
            pg_before = _postgres_cpu(dsn)
            end = await _wait_drained(client, workers, timeout=max(120.0, backlog / 100))
            pg_used = _postgres_cpu(dsn) - pg_before
        firsts = [s["first"] for s in workers.summaries if s["first"] is not None]
        counted = sum(s["count"] for s in workers.summaries)
        if len(workers.summaries) != processes or not firsts:
            raise RuntimeError(f"{system}: missing worker summaries:\n" + "\n".join(workers.errors[-30:]))
        if counted < backlog:
            raise RuntimeError(f"{system}: handlers ran {counted} times for {backlog} tasks")
        check = f"handlers ran {counted} times"
        if hasattr(client, "check_exactly_once"):
            check = await client.check_exactly_once(backlog)
    seconds = end - min(firsts)
    worker_cpu = sum(s["cpu_seconds"] for s in workers.summaries)
    return BurnDown(tasks_per_s=backlog / seconds, seconds=seconds, backlog=backlog, check=check,
                    worker_cpu_us_per_task=worker_cpu / backlog * 1e6,
                    postgres_cpu_us_per_task=pg_used / backlog * 1e6)


# --------------------------------------------------------------------- steady

async def steady(dbs: Databases, system: str, rate: int, seconds: float, processes: int,
                 concurrency: int) -> tuple[float, int]:
    """Sustained completions/s while a producer enqueues ``rate`` tasks/s; and the backlog left at the end."""
    dsn = dbs.fresh(system)
    async with opened(system, dsn) as client, opened(system, dsn, install=False) as watcher:
        async with Workers(system, dsn, processes, concurrency) as workers:
            await workers.ready()
            tick = 0.01
            produced = 0
            start = time.monotonic()
            halfway: tuple[float, int] | None = None
            while (elapsed := time.monotonic() - start) < seconds:
                # At most 100 ms of work per call, so a slow enqueue cannot swallow the run.
                due = min(int(rate * elapsed) - produced, rate // 10)
                if due > 0:
                    await client.produce(due, produced)
                    produced += due
                if halfway is None and elapsed >= seconds / 2:
                    halfway = (time.monotonic(), await watcher.succeeded())
                workers.alive()
                await asyncio.sleep(tick)
            done = await watcher.succeeded()
            end = time.monotonic()
    if halfway is None or end - halfway[0] < 0.2:
        raise RuntimeError(f"{system}: the steady run's second half was too short to measure")
    return (done - halfway[1]) / (end - halfway[0]), produced - done


# ------------------------------------------------------------- pickup latency

async def pickup(dbs: Databases, system: str, samples: int, concurrency: int) -> list[float]:
    """Milliseconds from just before the enqueue call to the handler's start, per task."""
    dsn = dbs.fresh(system)
    latencies: list[float] = []
    rng = random.Random(5)
    async with opened(system, dsn) as client:
        async with Workers(system, dsn, 1, concurrency) as workers:
            await workers.ready(settle=1.0)
            for ident in range(samples):
                await asyncio.sleep(rng.uniform(0.02, 0.04))
                sent = time.time()
                await client.enqueue_stamp(ident)
                while True:
                    try:
                        got, at = await asyncio.wait_for(workers.stamps.get(), 10)
                    except TimeoutError:
                        workers.alive()
                        raise RuntimeError(f"{system}: task {ident} was not picked up within 10s") from None
                    if got == ident:
                        latencies.append((at - sent) * 1000)
                        break
    return latencies


# ------------------------------------------------------------ cost of history

HISTORY_SQL = """
INSERT INTO kubetask_tasks (uid, namespace, name, type, payload, state, attempts, run_at, worker_pod,
                            result, created_at, started_at, finished_at, version, mirrored_version,
                            mirrored_state)
SELECT gen_random_uuid(), 'history', 'old-' || i, 'noop', '{}', 'succeeded', 1,
       now() - interval '2 days', 'old-worker', 'null', now() - interval '2 days',
       now() - interval '2 days', now() - interval '2 days', 3, 3, 'succeeded'
FROM generate_series(1, %(rows)s) AS i;
INSERT INTO kubetask_attempts (task_id, number, worker_pod, lease_owner, started_at, finished_at, outcome,
                               result)
SELECT id, 1, 'old-worker', 'old-worker/0', started_at, finished_at, 'succeeded', 'null'
FROM kubetask_tasks WHERE namespace = 'history';
"""


async def claim_p50_ms(dsns: list[str], samples: int) -> list[float]:
    """Per database, the p50 of one single-row ``db.queue.claim`` round trip.

    The databases take turns, claim by claim, so that a noisy machine slows
    them alike. Each claimed task is then completed (untimed).
    """
    from kubetask import db

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(opened("kubetask", dsn, install=False)) for dsn in dsns]
        for client in clients:
            await client.enqueue_backlog(samples, start=10_000_000)
        for dsn in dsns:
            await vacuum(dsn)
        timings: list[list[float]] = [[] for _ in dsns]
        for _ in range(samples):
            for client, times in zip(clients, timings):
                began = time.perf_counter()
                [task] = await db.queue.claim(client.conn, "default", "bench/claim", "bench-claim", 1, 30)
                times.append((time.perf_counter() - began) * 1000)
                assert await db.queue.complete(client.conn, task.id, task.lease_owner, task.attempt, None)
    return [common.median(times) for times in timings]


# --------------------------------------------------------------------- measure

CMD = "python -m bench.run"


async def measure_async(quick: bool, report: common.Report, *, tiny: bool = False,
                        server: Any = None) -> dict[str, float]:
    """The engine figures; ``tiny`` counts for the smoke test; ``server``: a running PostgresServer to use."""
    from kubetask_dev.postgres import PostgresServer

    plan = Plan.make(quick, tiny)
    command = CMD + (" --quick" if quick else "")
    keys: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kubetask-bench-") as tmp:
        own = server is None
        if own:
            server = await asyncio.to_thread(PostgresServer.start, pathlib.Path(tmp) / "data")
        try:
            dbs = Databases(server.dsn("postgres"), server.dsn)
            keys["postgresql_major"] = float(dbs.server_version().split(".")[0])
            await _burn_downs(dbs, plan, command, report, keys)
            await _steady(dbs, plan, command, report, keys)
            await _pickup(dbs, plan, command, report, keys)
            await _history(dbs, plan, command, report, keys)
        finally:
            if own:
                await asyncio.to_thread(server.stop)
    return keys


def measure(quick: bool, report: common.Report) -> dict[str, float]:
    """Engine figures (see the module docstring); returns the keys for latest.json."""
    return asyncio.run(measure_async(quick, report))


async def _burn_downs(dbs: Databases, plan: Plan, command: str, report: common.Report,
                      keys: dict[str, float]) -> None:
    best: dict[str, float] = {}
    for processes in plan.processes:
        results: dict[str, BurnDown] = {}
        chosen: dict[str, int] = {}
        for system in ("kubetask", *PEERS):
            backlog = plan.backlog_procrastinate if system == "procrastinate" else plan.backlog
            for setting in (plan.concurrency[system], *plan.peer_alternatives.get(system, ())):
                result = await burn_down(dbs, system, backlog, processes, setting)
                if system not in results or result.tasks_per_s > results[system].tasks_per_s:
                    results[system], chosen[system] = result, setting
            keys[f"burn_down_{system}_{processes}p_tasks_per_s"] = results[system].tasks_per_s
            best[system] = max(best.get(system, 0.0), results[system].tasks_per_s)
        ours = results["kubetask"]
        for peer in PEERS:
            keys[f"engine_vs_{peer}_{processes}p"] = ours.tasks_per_s / results[peer].tasks_per_s
        cpu = "; ".join(f"{s} {r.worker_cpu_us_per_task:.0f} + {r.postgres_cpu_us_per_task:.0f}"
                        for s, r in results.items())
        note = (f"backlog {ours.backlog:,} no-op tasks (procrastinate {results['procrastinate'].backlog:,}), "
                f"{processes} worker process(es) each; CPU per task, worker + PostgreSQL, in µs: {cpu}; "
                f"kubetask: {ours.check}; "
                + "; ".join(module_settings(s, chosen[s]) for s in ("kubetask", *PEERS))
                + "".join(f" (best of {', '.join(str(x) for x in (plan.concurrency[s], *alt))})"
                          for s, alt in plan.peer_alternatives.items()))
        report(common.Figure(
            name=f"burn-down, {processes} process{'es' if processes > 1 else ''}", unit="tasks/s",
            ours=ours.tasks_per_s, peers={s: results[s].tasks_per_s for s in PEERS}, note=note,
            command=command, target=">= 5000; >= 1.5x pgqueuer; >= 10x procrastinate",
            met=(ours.tasks_per_s >= 5000 and ours.tasks_per_s >= 1.5 * results["pgqueuer"].tasks_per_s
                 and ours.tasks_per_s >= 10 * results["procrastinate"].tasks_per_s)))
    # The ratios compare the same configuration: the process count where kubetask did best.
    best_processes = max(plan.processes, key=lambda p: keys[f"burn_down_kubetask_{p}p_tasks_per_s"])
    keys["engine_tasks_per_s"] = best["kubetask"]
    keys["engine_best_processes"] = float(best_processes)
    for peer in PEERS:
        keys[f"engine_vs_{peer}"] = (keys[f"burn_down_kubetask_{best_processes}p_tasks_per_s"]
                                     / keys[f"burn_down_{peer}_{best_processes}p_tasks_per_s"])
        keys[f"{peer}_best_tasks_per_s"] = best[peer]
    default = await burn_down(dbs, "kubetask", plan.backlog_default_concurrency, 2, DEFAULT_CONCURRENCY)
    keys["burn_down_kubetask_default_concurrency_2p_tasks_per_s"] = default.tasks_per_s
    report(common.Figure(
        name=f"burn-down, 2 processes, default KUBETASK_CONCURRENCY={DEFAULT_CONCURRENCY}", unit="tasks/s",
        ours=default.tasks_per_s, peers={},
        note=(f"backlog {default.backlog:,}; CPU per task {default.worker_cpu_us_per_task:.0f} + "
              f"{default.postgres_cpu_us_per_task:.0f} µs; {default.check}; at most {DEFAULT_CONCURRENCY} tasks "
              "per claim and per completion batch, so the round trips dominate"),
        command=command))
    await _queue_limits(dbs, plan, command, report, keys)


async def _queue_limits(dbs: Databases, plan: Plan, command: str, report: common.Report,
                        keys: dict[str, float]) -> None:
    """The same burn-down with and without a Queue (maxRunning, rate limit, key limit set high), alternated."""
    plain: list[BurnDown] = []
    limited: list[BurnDown] = []
    for _ in range(plan.limit_pairs):
        plain.append(await burn_down(dbs, "kubetask", plan.backlog, 2, KUBETASK_CONCURRENCY))
        limited.append(await burn_down(dbs, "kubetask", plan.backlog, 2, KUBETASK_CONCURRENCY,
                                       queue_limits=QUEUE_LIMITS))
    best_plain = max(r.tasks_per_s for r in plain)
    best_limited = max(r.tasks_per_s for r in limited)
    ratio = best_limited / best_plain
    keys["burn_down_queue_limits_tasks_per_s"] = best_limited
    keys["burn_down_queue_limits_ratio"] = ratio
    report(common.Figure(
        name="burn-down, 2 processes, a Queue with limits that do not bind", unit="tasks/s", ours=best_limited,
        peers={"no Queue": best_plain},
        note=(f"backlog {plan.backlog:,}, KUBETASK_CONCURRENCY={KUBETASK_CONCURRENCY}, best of {plan.limit_pairs} "
              f"alternated runs each; the Queue sets maxRunning {QUEUE_LIMITS['max_running']:,}, a rate limit of "
              f"{QUEUE_LIMITS['rate_tasks']:,}/s and concurrencyKeyLimit {QUEUE_LIMITS['concurrency_key_limit']:,}: "
              "a limited queue's claim takes the queue row's lock and counts its running tasks, in the round "
              "trip that records the last batch; "
              f"CPU per task {limited[-1].worker_cpu_us_per_task:.0f} + {limited[-1].postgres_cpu_us_per_task:.0f} µs "
              f"vs {plain[-1].worker_cpu_us_per_task:.0f} + {plain[-1].postgres_cpu_us_per_task:.0f}"),
        command=command, target=">= 0.85x no Queue", met=ratio >= 0.85))


def module_settings(system: str, concurrency: int) -> str:
    return str(adapter(system).SETTINGS.format(concurrency=concurrency))


async def _steady(dbs: Databases, plan: Plan, command: str, report: common.Report,
                  keys: dict[str, float]) -> None:
    processes = 2
    results: dict[str, tuple[float, int]] = {}
    for system in ("kubetask", *PEERS):
        results[system] = await steady(dbs, system, plan.steady_rate, plan.steady_seconds, processes,
                                       plan.concurrency[system])
    keys["engine_steady_tasks_per_s"] = results["kubetask"][0]
    for peer in PEERS:
        keys[f"steady_{peer}_tasks_per_s"] = results[peer][0]
    left = ", ".join(f"{s} {results[s][1]:,}" for s in results)
    report(common.Figure(
        name=f"steady, producer at {plan.steady_rate:,}/s, {processes} processes", unit="tasks/s",
        ours=results["kubetask"][0], peers={p: results[p][0] for p in PEERS},
        note=(f"{plan.steady_seconds:g}s run, completions counted over its second half; producer in the "
              f"benchmark process, each system's own enqueue call every 10 ms (kubetask: db.queue.admit, the "
              f"operator's batched INSERT + NOTIFY); backlog left at the end: {left}; "
              + "; ".join(module_settings(s, plan.concurrency[s]) for s in ("kubetask", *PEERS))),
        command=command))


async def _pickup(dbs: Databases, plan: Plan, command: str, report: common.Report,
                  keys: dict[str, float]) -> None:
    samples: dict[str, list[float]] = {}
    for system in ("kubetask", *PEERS, "polling-1s"):
        count = plan.pickup_samples_polling if system == "polling-1s" else plan.pickup_samples
        samples[system] = await pickup(dbs, system, count, plan.concurrency[system])
    ours = samples["kubetask"]
    keys["pickup_p50_ms"] = common.percentile(ours, 50)
    keys["pickup_p99_ms"] = common.percentile(ours, 99)
    others = [s for s in samples if s != "kubetask"]
    for system in others:
        keys[f"pickup_{system.replace('-', '_')}_p50_ms"] = common.percentile(samples[system], 50)
    counts = ", ".join(f"{s} {len(v)}" for s, v in samples.items())
    report(common.Figure(
        name="pickup latency p50 (idle worker)", unit="ms", ours=keys["pickup_p50_ms"],
        peers={s: common.percentile(samples[s], 50) for s in others}, higher_is_better=False,
        note=f"enqueue call → handler start, samples: {counts}; 1 idle worker process each",
        command=command, target="<= 10 ms", met=keys["pickup_p50_ms"] <= 10))
    report(common.Figure(
        name="pickup latency p99 (idle worker)", unit="ms", ours=keys["pickup_p99_ms"],
        peers={s: common.percentile(samples[s], 99) for s in others}, higher_is_better=False,
        note="same samples as the p50", command=command))


async def _history(dbs: Databases, plan: Plan, command: str, report: common.Report,
                   keys: dict[str, float]) -> None:
    empty_dsn, full_dsn = dbs.fresh("history_empty"), dbs.fresh("history_full")
    for dsn in (empty_dsn, full_dsn):
        async with opened("kubetask", dsn):
            pass
    async with await psycopg.AsyncConnection.connect(full_dsn, autocommit=True) as conn:
        began = time.monotonic()
        await conn.execute(HISTORY_SQL.replace("%(rows)s", str(int(plan.history_rows))))
        inserted_in = time.monotonic() - began
    empty_claim, full_claim = await claim_p50_ms([empty_dsn, full_dsn], plan.claim_samples)
    empty_burn = await burn_down(dbs, "kubetask", plan.history_backlog, 2, plan.concurrency["kubetask"],
                                 dsn=empty_dsn)
    full_burn = await burn_down(dbs, "kubetask", plan.history_backlog, 2, plan.concurrency["kubetask"],
                                dsn=full_dsn)
    rows = f"{plan.history_rows:,}"
    keys["claim_p50_ms_empty"] = empty_claim
    keys["claim_p50_ms_history"] = full_claim
    keys["claim_latency_ratio_1m_vs_empty"] = full_claim / empty_claim
    keys["history_rows"] = float(plan.history_rows)
    keys["burn_down_tasks_per_s_empty"] = empty_burn.tasks_per_s
    keys["burn_down_tasks_per_s_history"] = full_burn.tasks_per_s
    keys["burn_down_ratio_1m_vs_empty"] = full_burn.tasks_per_s / empty_burn.tasks_per_s
    report(common.Figure(
        name=f"claim round trip p50 with {rows} finished tasks", unit="ms", ours=full_claim,
        peers={}, higher_is_better=False,
        note=(f"empty table: {empty_claim:.2f} ms; db.queue.claim(limit=1), {plan.claim_samples} samples per "
              f"database, the two databases taking turns; ratio {keys['claim_latency_ratio_1m_vs_empty']:.2f} "
              f"(target <= 1.2); history of {rows} succeeded tasks + {rows} attempts inserted in "
              f"{inserted_in:.1f}s with INSERT … SELECT generate_series, then VACUUM ANALYZE"),
        command=command, target="<= 1.2x empty",
        met=keys["claim_latency_ratio_1m_vs_empty"] <= 1.2))
    report(common.Figure(
        name=f"burn-down with {rows} finished tasks", unit="tasks/s", ours=full_burn.tasks_per_s, peers={},
        note=(f"empty table: {empty_burn.tasks_per_s:,.0f} tasks/s (ratio {keys['burn_down_ratio_1m_vs_empty']:.2f}); "
              f"{plan.history_backlog:,} no-op tasks, 2 processes; {full_burn.check}"), command=command))
