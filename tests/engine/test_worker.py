"""The worker end to end, in-process, against a real database."""

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kubetask import db, handlers, settings, worker
from kubetask.operator import upkeep

FINAL = ("succeeded", "dead_letter", "cancelled")

registry = handlers.load(["kubetask.demo"], entry_points=False).copy()


@registry.register("test-unserializable")
def unserializable(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    return {"a set": {1, 2}}


@registry.register("test-big")
def big(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    return "x" * 1000


@registry.register("test-nul")
def nul(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    return {"bytes": "a\x00b"}


def _inner_helper(value: int) -> int:
    raise ValueError(f"bad value {value}")


@registry.register("test-raise")
def raise_(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    return _inner_helper(payload["value"])


@registry.register("test-blocking")
def blocking(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    # A cooperative blocking handler: its thread returns once the attempt is given up.
    ctx.cancelled.wait(payload["seconds"])
    return {"done": True}


@dataclasses.dataclass
class RunningWorker:
    config: settings.WorkerSettings
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def shutdown(self, timeout: float = 30.0) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout)


StartWorker = Callable[..., Awaitable[RunningWorker]]


@pytest.fixture
async def start_worker(dsn: str) -> AsyncIterator[StartWorker]:
    started: list[RunningWorker] = []

    async def start(**overrides: Any) -> RunningWorker:
        fields: dict[str, Any] = {
            "concurrency": 4, "poll_interval_seconds": 0.5, "lease_seconds": 5.0,
            "heartbeat_interval_seconds": 0.2, "shutdown_timeout_seconds": 5.0,
            "pod_name": f"worker-{len(started)}", **overrides,
        }
        config = settings.WorkerSettings(**fields)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(config, settings.DatabaseSettings(url=dsn), stop, registry=registry))
        running = RunningWorker(config, stop, task)
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.shutdown()
        running.task.result()  # a worker that crashed fails the test


async def wait_final(conn: db.connection.Conn, wait_until, uids: list[str], timeout: float = 20.0) -> dict[str, db.reads.TaskRow]:
    async def all_final() -> dict[str, db.reads.TaskRow] | None:
        rows = {uid: await db.reads.get_task(conn, uid) for uid in uids}
        if all(row is not None and row.state in FINAL for row in rows.values()):
            return rows  # type: ignore[return-value]
        return None

    return await wait_until(all_final, timeout=timeout, what=f"{len(uids)} tasks to finish")


async def wait_state(conn: db.connection.Conn, wait_until, uid: str, state: str) -> db.reads.TaskRow:
    async def reached() -> db.reads.TaskRow | None:
        row = await db.reads.get_task(conn, uid)
        return row if row is not None and row.state == state else None

    return await wait_until(reached, what=f"task {uid} to be {state}")


async def test_demo_handlers_end_to_end(conn: db.connection.Conn, start_worker: StartWorker, new_task, wait_until) -> None:
    tasks = {
        "echo": new_task(type="echo", payload={"hello": "wörld"}),
        "sleep": new_task(type="sleep", payload={"seconds": 0.05}),
        "flaky": new_task(type="fail", payload={"times": 2, "message": "flaky"}, max_retries=3),
        "permanent": new_task(type="fail", payload={"permanent": True, "message": "no way"}),
        "exhausted": new_task(type="fail", payload={"message": "always"}, max_retries=1),
        "email": new_task(type="email", payload={"to": "a@example.com", "subject": "Hi"}),
        "image": new_task(type="image", payload={"url": "https://x.test/a.png", "width": 10, "height": 20}),
        "report": new_task(type="report", payload={"rows": [1, 2, 3], "kind": "daily"}),
        "unknown": new_task(type="no-such-handler"),
    }
    await start_worker()
    await db.queue.admit(conn, list(tasks.values()))
    rows = await wait_final(conn, wait_until, [t.uid for t in tasks.values()])
    got = {key: rows[task.uid] for key, task in tasks.items()}

    assert got["echo"].state == "succeeded" and got["echo"].result == {"hello": "wörld"}
    assert got["sleep"].result == {"slept": 0.05}
    assert (got["flaky"].state, got["flaky"].attempts, got["flaky"].result) == (
        "succeeded", 3, {"succeeded_on_attempt": 3})
    assert got["email"].result["message_id"].endswith("@kubetask.local>")
    assert got["image"].result["output"] == "https://x.test/a_10x20.png"
    assert got["report"].result["sum"] == 6.0
    assert (got["permanent"].state, got["permanent"].attempts) == ("dead_letter", 1)
    assert got["permanent"].last_error == {"type": "PermanentError", "message": "no way", "attempt": 1}
    assert (got["exhausted"].state, got["exhausted"].attempts) == ("dead_letter", 2)
    unknown = got["unknown"]
    assert (unknown.state, unknown.attempts) == ("dead_letter", 1)
    assert unknown.last_error is not None and unknown.last_error["type"] == "UnknownHandler"
    assert "known handlers: echo, email, fail, image, report, sleep" in unknown.last_error["message"]

    flaky = await db.reads.task_history(conn, tasks["flaky"].uid)
    assert [a.outcome for a in flaky] == ["failed", "failed", "succeeded"]
    assert all(a.worker_pod == "worker-0" for a in flaky)


async def test_result_errors_and_tracebacks(conn: db.connection.Conn, start_worker: StartWorker, new_task, wait_until) -> None:
    tasks = [new_task(type=t, max_retries=0) for t in ("test-unserializable", "test-big", "test-nul", "test-raise")]
    tasks[-1] = dataclasses.replace(tasks[-1], payload={"value": 7})
    await start_worker(max_result_bytes=100)
    await db.queue.admit(conn, tasks)
    await wait_final(conn, wait_until, [t.uid for t in tasks])
    attempts = [(await db.reads.task_history(conn, t.uid))[0] for t in tasks]
    assert [(a.outcome, a.error_type) for a in attempts] == [
        ("failed", "ResultNotSerializable"), ("failed", "ResultTooLarge"),
        ("failed", "ResultNotSerializable"), ("failed", "ValueError")]
    assert "not JSON" in (attempts[0].error_message or "")
    assert "KUBETASK_MAX_RESULT_BYTES=100" in (attempts[1].error_message or "")
    assert "result.bytes contains a NUL" in (attempts[2].error_message or "")
    assert attempts[3].error_message == "bad value 7"
    assert attempts[3].traceback is not None and "_inner_helper" in attempts[3].traceback
    assert attempts[0].traceback is None, "the worker's own errors carry no traceback"


async def test_timeouts_async_and_blocking(conn: db.connection.Conn, start_worker: StartWorker, new_task, wait_until) -> None:
    slow_async = new_task(type="sleep", payload={"seconds": 30}, timeout_seconds=1, max_retries=0)
    slow_thread = new_task(type="test-blocking", payload={"seconds": 30}, timeout_seconds=1, max_retries=0)
    await start_worker()
    started = time.monotonic()
    await db.queue.admit(conn, [slow_async, slow_thread])
    await wait_final(conn, wait_until, [slow_async.uid, slow_thread.uid], timeout=10)
    assert time.monotonic() - started < 5
    for task in (slow_async, slow_thread):
        [attempt] = await db.reads.task_history(conn, task.uid)
        assert (attempt.outcome, attempt.error_type) == ("timeout", "AttemptTimeout")
        assert "timeoutSeconds=1" in (attempt.error_message or "")
    [attempt] = await db.reads.task_history(conn, slow_thread.uid)
    assert "thread cannot be stopped" in (attempt.error_message or "")


async def test_graceful_stop_hands_back_what_does_not_finish(conn: db.connection.Conn, start_worker: StartWorker, new_task,
                                                             wait_until) -> None:
    long, short = new_task(type="sleep", payload={"seconds": 60}), new_task(type="sleep", payload={"seconds": 0.5})
    running = await start_worker(shutdown_timeout_seconds=1.0)
    await db.queue.admit(conn, [long, short])
    await wait_state(conn, wait_until, long.uid, "running")
    await wait_state(conn, wait_until, short.uid, "running")
    await running.shutdown(timeout=10)

    assert (await db.reads.get_task(conn, short.uid)).state == "succeeded"  # type: ignore[union-attr]
    row = await db.reads.get_task(conn, long.uid)
    assert row is not None
    assert (row.state, row.attempts, row.budget_base, row.lease_owner) == ("queued", 1, 1, None)
    [attempt] = await db.reads.task_history(conn, long.uid)
    assert (attempt.outcome, attempt.error_type) == ("handed_back", "HandedBack")
    assert await db.queue.claim(conn, "other", "x/1", "x", 10, 30) == []
    [again] = await db.queue.claim(conn, "default", "next/1", "next", 10, 30)
    assert (again.uid, again.attempt_in_budget) == (long.uid, 1)


async def test_cancelled_task_frees_its_slot(conn: db.connection.Conn, start_worker: StartWorker, new_task, wait_until) -> None:
    long, after = new_task(type="sleep", payload={"seconds": 60}), new_task(type="echo")
    await start_worker(concurrency=1)
    await db.queue.admit(conn, [long])
    await wait_state(conn, wait_until, long.uid, "running")
    assert await db.queue.cancel(conn, long.uid)
    await db.queue.admit(conn, [after])
    await wait_state(conn, wait_until, after.uid, "succeeded")
    assert [a.outcome for a in await db.reads.task_history(conn, long.uid)] == ["cancelled"]


async def test_two_workers_run_each_of_200_tasks_exactly_once(conn: db.connection.Conn, start_worker: StartWorker, new_task,
                                                              wait_until) -> None:
    tasks = [new_task(type="echo", payload={"i": i}) for i in range(200)]
    await start_worker(concurrency=4)
    await start_worker(concurrency=4)
    await db.queue.admit(conn, tasks)

    async def all_done() -> bool:
        cursor = await conn.execute("SELECT count(*) FROM kubetask_tasks WHERE state = 'succeeded'")
        row = await cursor.fetchone()
        return row is not None and row[0] == 200

    await wait_until(all_done, timeout=60, what="200 tasks to succeed")
    cursor = await conn.execute(
        "SELECT count(*), count(DISTINCT task_id), count(*) FILTER (WHERE outcome = 'succeeded') FROM kubetask_attempts")
    assert await cursor.fetchone() == (200, 200, 200)
    cursor = await conn.execute("SELECT count(*) FROM kubetask_tasks WHERE result = payload")
    assert await cursor.fetchone() == (200,)


async def test_leases_are_renewed_while_a_task_runs(conn: db.connection.Conn, start_worker: StartWorker, new_task,
                                                    wait_until) -> None:
    task = new_task(type="sleep", payload={"seconds": 1.5})
    await start_worker(lease_seconds=0.6, heartbeat_interval_seconds=0.1)
    await db.queue.admit(conn, [task])
    await wait_state(conn, wait_until, task.uid, "running")

    async def finished_without_rescue() -> bool:
        assert await upkeep.rescue(conn) == []
        row = await db.reads.get_task(conn, task.uid)
        return row is not None and row.state == "succeeded"

    await wait_until(finished_without_rescue, interval=0.1, what="the task to finish")
    assert [a.outcome for a in await db.reads.task_history(conn, task.uid)] == ["succeeded"]


async def test_worker_reconnects_after_its_connections_are_killed(conn: db.connection.Conn, start_worker: StartWorker,
                                                                  new_task, wait_until) -> None:
    first, second = new_task(), new_task()
    await start_worker(poll_interval_seconds=0.2)
    await db.queue.admit(conn, [first])
    await wait_state(conn, wait_until, first.uid, "succeeded")

    cursor = await conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name LIKE 'kubetask-worker %%' AND datname = current_database()")
    row = await cursor.fetchone()
    assert row is not None and row[0] == 2, "the listener and the work connection"
    await db.queue.admit(conn, [second])
    await wait_state(conn, wait_until, second.uid, "succeeded")


async def test_a_handler_reads_a_secret_named_by_the_payload_never_storing_it(
        conn: db.connection.Conn, start_worker: StartWorker, new_task, wait_until, tmp_path) -> None:
    # What the chart does for a pool with `secrets: [smtp-credentials]`: one directory per Secret.
    mounted = tmp_path / "secrets" / "smtp-credentials"
    mounted.mkdir(parents=True)
    (mounted / "username").write_text("mailer@example.com\n")
    (mounted / "password").write_text("hunter2-not-in-postgres")
    tasks = {
        "mounted": new_task(type="email", payload={"to": "a@example.com", "subject": "Hi",
                                                   "credentials": "smtp-credentials"}),
        "not mounted": new_task(type="email", payload={"to": "a@example.com", "subject": "Hi",
                                                       "credentials": "other-team-smtp"}, max_retries=3),
        "traversal": new_task(type="email", payload={"to": "a@example.com", "subject": "Hi",
                                                     "credentials": "../../etc"}, max_retries=3),
    }
    await start_worker(secrets_dir=tmp_path / "secrets")
    await db.queue.admit(conn, list(tasks.values()))
    rows = await wait_final(conn, wait_until, [t.uid for t in tasks.values()])
    got = {key: rows[task.uid] for key, task in tasks.items()}

    assert got["mounted"].state == "succeeded" and got["mounted"].result["sent_as"] == "mailer@example.com"
    missing = got["not mounted"]
    assert (missing.state, missing.attempts) == ("dead_letter", 1), "retrying cannot mount a Secret"
    assert missing.last_error is not None
    assert "Secret 'other-team-smtp' (key 'username') is not mounted on the 'default' worker pool" in \
        missing.last_error["message"] and "pool's `secrets`" in missing.last_error["message"]
    assert got["traversal"].state == "dead_letter"
    assert "is not a Secret name" in got["traversal"].last_error["message"]
    everything = await (await conn.execute("SELECT t::text FROM kubetask_tasks t")).fetchall()
    everything += await (await conn.execute("SELECT a::text FROM kubetask_attempts a")).fetchall()
    assert not any("hunter2" in row[0] for row in everything), "the secret value reached PostgreSQL"
