"""PostgreSQL for the engine tests: one real server per session, a fresh database per test.

The migrations run once, into a template database; each test gets its own
database cloned from it with ``CREATE DATABASE … TEMPLATE`` (milliseconds),
so tests never see each other's rows and never pay for the migrations again.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from kubetask_dev.postgres import PostgresServer

from kubetask import db

TEMPLATE = "kubetask_template"
_numbers = itertools.count()
T = TypeVar("T")


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Awaitable[Any]]:
    return wait_until


async def _migrate(dsn: str) -> None:
    conn = await db.connection.connect(dsn)
    try:
        await db.schema.migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_dsn(pg_server: PostgresServer) -> str:
    dsn = pg_server.create_database(TEMPLATE)
    asyncio.run(_migrate(dsn))
    return dsn


def create_database(server: PostgresServer, template: str | None) -> str:
    return server.create_database(f"test_{next(_numbers)}", template)


@pytest.fixture
def dsn(pg_server: PostgresServer, template_dsn: str) -> str:
    """A fresh, migrated database for this test."""
    return create_database(pg_server, TEMPLATE)


@pytest.fixture
def empty_dsn(pg_server: PostgresServer) -> str:
    """A fresh database without the kubetask schema."""
    return create_database(pg_server, None)


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[db.connection.Conn]:
    connection = await db.connection.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def connect(dsn: str) -> AsyncIterator[Callable[[], Awaitable[db.connection.Conn]]]:
    """Open more connections to this test's database (closed at the end of the test)."""
    opened: list[db.connection.Conn] = []

    async def open_one() -> db.connection.Conn:
        connection = await db.connection.connect(dsn)
        opened.append(connection)
        return connection

    yield open_one
    for connection in opened:
        await connection.close()


def new_task(**fields: Any) -> db.queue.NewTask:
    """A task with a fresh uid and defaults that keep tests fast (no backoff, no jitter)."""
    defaults: dict[str, Any] = {
        "uid": str(uuid.uuid4()), "namespace": "default", "name": f"task-{next(_numbers)}",
        "type": "echo", "payload": {}, "backoff_initial_seconds": 0.0, "backoff_jitter": 0.0,
    }
    return db.queue.NewTask(**{**defaults, **fields})


@pytest.fixture(name="new_task")
def new_task_fixture() -> Callable[..., db.queue.NewTask]:
    return new_task


async def wait_until(check: Callable[[], Awaitable[T | None]], timeout: float = 15.0,
                     interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


WORKER_PROCESS = [sys.executable, "-c", "import sys\nfrom kubetask import worker\nsys.exit(worker.main())"]
"""``kubetask worker`` as a child process, with the test's interpreter and environment."""


async def start_worker_process(env: dict[str, str]) -> asyncio.subprocess.Process:
    """A real worker process with ``env`` on top of this one's; stdout and stderr together."""
    return await asyncio.create_subprocess_exec(
        *WORKER_PROCESS, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)


async def sigterm_when(process: asyncio.subprocess.Process, check: Callable[[], Awaitable[Any]],
                       what: str, timeout: float = 30) -> tuple[int, bytes]:
    """Wait (bounded) for ``check``, SIGTERM the worker, and return its exit code and output.

    The process is killed if anything fails on the way, so no test leaves one behind.
    """
    try:
        await wait_until(check, timeout=timeout, what=what)
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output


@pytest.fixture(name="start_worker_process")
def start_worker_process_fixture() -> Callable[[dict[str, str]], Awaitable[asyncio.subprocess.Process]]:
    return start_worker_process


@pytest.fixture(name="sigterm_when")
def sigterm_when_fixture() -> Callable[..., Awaitable[tuple[int, bytes]]]:
    return sigterm_when
