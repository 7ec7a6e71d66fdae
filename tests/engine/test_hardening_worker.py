"""Hardening (issue 20), the worker's items: a handler that hangs, blocks or asks for for ever.

Each test failed on the code before its fix. Real worker processes against
the real PostgreSQL; the misbehaving handlers are in ``hardening_handlers``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import threading
import time
from typing import Any

import aiohttp

from kubetask import db
from kubetask.operator import upkeep
from kubetask.worker import recycle, threads

HERE = pathlib.Path(__file__).resolve().parent
FINAL = ("succeeded", "dead_letter", "cancelled")


def worker_env(dsn: str, **settings: str) -> dict[str, str]:
    return {"DATABASE_URL": dsn, "POD_NAME": "worker-hard-1", "KUBETASK_POLL_INTERVAL_SECONDS": "0.2",
            "KUBETASK_HANDLERS": "kubetask.demo,hardening_handlers", "KUBETASK_LOG_FORMAT": "text",
            "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **settings}


async def final(conn: db.connection.Conn, *tasks: db.queue.NewTask) -> bool:
    rows = [await db.reads.get_task(conn, task.uid) for task in tasks]
    return all(row is not None and row.state in FINAL for row in rows)


async def only_attempt(conn: db.connection.Conn, task: db.queue.NewTask) -> db.reads.AttemptRow:
    [attempt] = await db.reads.task_history(conn, task.uid)
    return attempt


async def test_a_demo_sleep_of_1e9_seconds_is_refused_as_the_tasks_error(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, sigterm_when) -> None:
    """``sleep`` with ``seconds: 1e9`` held its slot for ever; now the Task dead-letters saying the bound."""
    greedy, after = new_task(type="sleep", payload={"seconds": 1e9}), new_task(type="echo", payload={"n": 1})
    await db.queue.admit(conn, [greedy, after])
    process = await start_worker_process(worker_env(dsn, KUBETASK_CONCURRENCY="1"))
    code, output = await sigterm_when(process, lambda: final(conn, greedy, after), "both tasks to finish")
    assert code == 0, output.decode()
    row = await db.reads.get_task(conn, greedy.uid)
    assert row is not None and (row.state, row.attempts) == ("dead_letter", 1)
    assert row.last_error is not None and row.last_error["type"] == "PermanentError"
    assert "payload.seconds is 1e+09, more than the 3600 seconds a demo handler runs at most" in row.last_error["message"]
    assert (await db.reads.get_task(conn, after.uid)).state == "succeeded"  # type: ignore[union-attr]


async def test_the_pools_max_timeout_ends_every_attempt_and_the_error_names_it(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, sigterm_when) -> None:
    """A Task without timeoutSeconds (or with a longer one) could hold a slot for ever."""
    unbounded = new_task(type="sleep", payload={"seconds": 60}, max_retries=0)
    too_long = new_task(type="hang-thread", payload={"seconds": 60}, timeout_seconds=100, max_retries=0)
    within = new_task(type="sleep", payload={"seconds": 0.1}, timeout_seconds=1, max_retries=0)
    await db.queue.admit(conn, [unbounded, too_long, within])
    process = await start_worker_process(worker_env(dsn, KUBETASK_MAX_TIMEOUT_SECONDS="1.5",
                                                    KUBETASK_CONCURRENCY="4"))
    started = time.monotonic()
    code, output = await sigterm_when(process, lambda: final(conn, unbounded, too_long, within),
                                      "the capped tasks to time out")
    assert time.monotonic() - started < 20
    assert code == 0, output.decode()
    for task, asked in ((unbounded, "the Task sets no timeoutSeconds"),
                        (too_long, "the Task asks for timeoutSeconds=100")):
        attempt = await only_attempt(conn, task)
        assert (attempt.outcome, attempt.error_type) == ("timeout", "AttemptTimeout")
        assert attempt.error_message is not None
        assert attempt.error_message.startswith(
            "the attempt ran longer than KUBETASK_MAX_TIMEOUT_SECONDS=1.5, the longest the 'default' worker pool "
            f"lets an attempt run ({asked}; give it a timeoutSeconds within that, "), attempt.error_message
    assert (await only_attempt(conn, within)).outcome == "succeeded"


async def test_a_sync_task_waiting_for_a_thread_is_not_timed_out_before_it_runs() -> None:
    """The same executor calls as before the fix: both threads held by abandoned handlers, then an innocent
    handler with a 0.3 s timeout waits longer than that for a thread; it must run, not time out."""
    pool = threads.HandlerThreads(slots=1)  # two threads
    release = threading.Event()
    ran = threading.Event()
    try:
        for _ in range(2):
            try:
                await pool.run(release.wait, 30, timeout=0.1)
                raise AssertionError("the hanging function returned")
            except threads.TimedOut:
                pass
        assert pool.abandoned == 2
        innocent = asyncio.create_task(pool.run(lambda: ran.set() or "ran", timeout=0.3))
        done, _ = await asyncio.wait([innocent], timeout=1.0)  # the wait for a thread outlasts its timeout
        assert not done and not ran.is_set(), "no thread was free, yet the innocent handler ended"
        release.set()
        assert await asyncio.wait_for(innocent, 10) == "ran"
        assert ran.is_set()
    finally:
        release.set()
        pool.shutdown()


async def test_abandoned_threads_filling_the_pool_recycle_the_worker_and_the_innocent_task_runs(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, sigterm_when, wait_until) -> None:
    """Before: with both threads of a one-slot worker held by timed-out handlers, the next sync Task was
    recorded Timeout without ever running. Now a worker whose abandoned threads reach its concurrency
    stops claiming and exits 3, and the next process runs the innocent task."""
    hanging = [new_task(type="hang-thread", payload={"seconds": 60}, timeout_seconds=1, max_retries=0,
                        priority=10 - n) for n in range(2)]
    innocent = new_task(type="innocent", timeout_seconds=1, max_retries=0)
    await db.queue.admit(conn, [*hanging, innocent])
    env = worker_env(dsn, KUBETASK_CONCURRENCY="1")
    exits: list[tuple[int, str]] = []
    for _ in range(len(hanging)):
        process = await start_worker_process(env)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        exits.append((process.returncode, output.decode()))
        row = await db.reads.get_task(conn, innocent.uid)
        assert row is not None and row.state == "queued", f"the innocent task: {row}\n{output.decode()}"
    for code, output in exits:
        assert code == recycle.EXIT_CODE, output
        assert "recycling: 1 handler threads are abandoned (timed out, still running), as many as " \
               "KUBETASK_CONCURRENCY=1" in output
        assert "Make the handler of type 'hang-thread' return when ctx.cancelled is set" in output
    code, output = await sigterm_when(await start_worker_process(env), lambda: final(conn, innocent),
                                      "the innocent task to finish")
    assert code == 0, output.decode()
    attempt = await only_attempt(conn, innocent)
    assert (attempt.outcome, attempt.result) == ("succeeded", {"ran": True})
    for task in hanging:
        assert (await only_attempt(conn, task)).outcome == "timeout"


async def test_an_async_handler_blocking_the_loop_past_its_lease_keeps_it_and_runs_once(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, sigterm_when) -> None:
    """Before: time.sleep in an async handler stopped the heartbeat on the same loop; the lease lapsed, the
    rescuer retried the task and it ran twice. Now leases are renewed from a thread of their own, and the
    watchdog names the handler while it blocks the loop."""
    blocker = new_task(type="block-loop", payload={"seconds": 5}, name="blocker")
    await db.queue.admit(conn, [blocker])
    process = await start_worker_process(worker_env(
        dsn, KUBETASK_LEASE_SECONDS="2", KUBETASK_HEARTBEAT_INTERVAL_SECONDS="0.4",
        KUBETASK_LOOP_LAG_WARNING_SECONDS="0.5"))
    rescued: list[upkeep.db.upkeep.Rescued] = []

    async def rescue_then_check() -> bool:  # the operator's rescuer, run as often as a test can
        rescued.extend(await upkeep.rescue(conn))
        return await final(conn, blocker)

    code, output = await sigterm_when(process, rescue_then_check, "the blocking task to finish", timeout=30)
    text = output.decode()
    assert code == 0, text
    assert rescued == [], "the lease lapsed while the handler blocked the loop"
    attempt = await only_attempt(conn, blocker)
    assert (attempt.outcome, attempt.result) == ("succeeded", {"blocked_for": 5})
    warning = next(line for line in text.splitlines() if "the event loop has not run for" in line)
    assert "the async handler of task default/blocker" in warning
    assert "hardening_handlers.py" in warning and "in block_loop" in warning
    assert "the event loop runs again after" in text


async def test_the_liveness_endpoint_answers_503_naming_a_blocked_loop_or_a_stuck_heartbeat(
        dsn: str, conn: db.connection.Conn, connect, new_task, start_worker_process, sigterm_when,
        wait_until) -> None:
    """Served from the heartbeat's thread, so it answers while a handler blocks the event loop."""
    process = await start_worker_process(worker_env(
        dsn, KUBETASK_HEALTH_PORT="0", KUBETASK_LIVENESS_STALL_SECONDS="1.5", KUBETASK_LEASE_SECONDS="30",
        KUBETASK_HEARTBEAT_INTERVAL_SECONDS="0.3", KUBETASK_SHUTDOWN_TIMEOUT_SECONDS="0.5"))
    seen: list[str] = []
    try:
        assert process.stdout is not None
        while not (found := re.search(r"liveness at http://127\.0\.0\.1:(\d+)/healthz", seen[-1] if seen else "")):
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, "the worker exited before serving /healthz:\n" + "".join(seen)
            seen.append(line.decode())
        url = f"http://127.0.0.1:{found.group(1)}/healthz"
    except BaseException:
        process.kill()
        await process.wait()
        raise

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        async def probe() -> tuple[int, dict[str, Any]]:
            async with http.get(url) as response:
                return response.status, json.loads(await response.text())

        async def answers(status: int, problem: str = "") -> tuple[int, dict[str, Any]] | None:
            got = await probe()
            return got if got[0] == status and problem in " ".join(got[1]["problems"]) else None

        assert await probe() == (200, {"healthy": True, "problems": [], "claim_loop_exempt": None})

        blocker = new_task(type="block-loop", payload={"seconds": 4})
        await db.queue.admit(conn, [blocker])
        await wait_until(lambda: answers(503, "the event loop has not run for"),
                         what="/healthz to report the blocked loop")
        await wait_until(lambda: answers(503, "the claim loop has not come round"),
                         what="/healthz to report the claim loop stopped by the blocked loop")
        await wait_until(lambda: answers(200), what="/healthz to recover once the handler returned")

        # A heartbeat whose statement hangs (here on a row lock held by another session) is stuck too.
        sleeper = new_task(type="sleep", payload={"seconds": 60})
        await db.queue.admit(conn, [sleeper])
        locker = await connect()

        async def running() -> bool:
            row = await db.reads.get_task(conn, sleeper.uid)
            return row is not None and row.state == "running"

        await wait_until(running, what="the sleep task to run")
        async with locker.transaction():
            await locker.execute("SELECT id FROM kubetask_tasks WHERE uid = %s FOR UPDATE", [sleeper.uid])
            await wait_until(lambda: answers(503, "the lease heartbeat has not come round"),
                             what="/healthz to report the stuck heartbeat")
        await wait_until(lambda: answers(200), what="/healthz to recover once the lock was released")

    code, output = await sigterm_when(process, lambda: final(conn, blocker), "the blocker to be recorded")
    text = "".join(seen) + output.decode()
    assert code == 0, text
    assert "liveness: unhealthy, the event loop has not run for" in text
    assert "liveness: healthy again" in text
