"""Connections to PostgreSQL: opening them, waiting for the server, and one that reconnects.

Connections are in autocommit mode: LISTEN needs it, and a statement then
commits by itself (every state change here is one statement). A caller that
wants several calls in one transaction wraps them in ``conn.transaction()``.

``Shared`` is the one connection holder of a process that issues short
statements from many places (the worker's slots, claim loop and heartbeat;
the operator's watch handlers and metrics; the CLI): it reconnects with the
backoff of ``kubetask.supervise`` and runs operations in order. psycopg
serialises operations on a connection anyway, and queueing them here instead
means an operation's arguments are computed when the connection is free for
it (the worker's claim counts its idle slots at that moment, not when it
began to wait).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
from psycopg.rows import TupleRow

from kubetask import supervise

Conn = psycopg.AsyncConnection[TupleRow]
"""Connections used here: autocommit, tuple rows (functions choose their own row factory)."""

QUEUE_CHANNEL = "kubetask_queue"
"""NOTIFY channel woken when work becomes due; the payload is the queue name."""

STATUS_CHANNEL = "kubetask_status"
"""NOTIFY channel woken when a row's status changed (empty payload)."""

CHANNELS = (QUEUE_CHANNEL, STATUS_CHANNEL)

T = TypeVar("T")
log = logging.getLogger("kubetask.db")


async def connect(dsn: str, application_name: str = "kubetask") -> Conn:
    """An autocommit connection: LISTEN works and each statement commits by itself."""
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name=application_name)


async def listen(conn: Conn, *channels: str) -> None:
    """Subscribe ``conn`` to the named channels (``QUEUE_CHANNEL``, ``STATUS_CHANNEL``)."""
    for channel in channels:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        await conn.execute(f"LISTEN {channel}")  # one of the constants above, never user input


class DatabaseUnreachable(Exception):
    """PostgreSQL did not accept a connection within the start-up wait; the message says what to check."""


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` of a connection URL, never its password."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    host = str(parts.get("host") or "localhost")
    port = str(parts.get("port") or "5432")
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"{user}{host}:{port}/{parts.get('dbname') or ''}"


async def wait_until_reachable(dsn: str, timeout: float,
                               on_retry: Callable[[str, float], None] | None = None) -> None:
    """Return once PostgreSQL accepts a connection; raise ``DatabaseUnreachable`` after ``timeout`` s.

    A pod that starts before its database (a fresh install, a database being
    restarted) waits instead of crash-looping at once; one that can never
    reach it (a wrong host, port or password) exits after the wait, so
    Kubernetes shows CrashLoopBackOff and the logs say what to fix.
    ``on_retry(error, delay)`` is told each failure.
    """
    deadline = time.monotonic() + timeout
    delays = supervise.Delays()
    while True:
        attempt_timeout = max(1, min(10, int(deadline - time.monotonic()) + 1))
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=attempt_timeout,
                                                         application_name="kubetask-probe")
        except psycopg.OperationalError as error:
            # psycopg's message names host, port and user and never the password.
            reason = " ".join(str(error).split()) or type(error).__name__
            delay = delays.next()
            if time.monotonic() + delay > deadline:
                raise DatabaseUnreachable(
                    f"cannot reach PostgreSQL at {describe_dsn(dsn)} after {timeout:g} s: {reason}. "
                    "Check DATABASE_URL (host, port, database, user and password) and that the server "
                    "is up and accepts connections from this pod; KUBETASK_DATABASE_WAIT_SECONDS sets "
                    "how long to wait at start."
                ) from None
            if on_retry is not None:
                on_retry(reason, delay)
            await asyncio.sleep(delay)
        else:
            await conn.close()
            return


class Stopped(Exception):
    """The process was asked to stop while an operation waited for the database."""


class Shared:
    """One connection for many short operations, reconnected with backoff when it fails."""

    def __init__(self, dsn: str, application_name: str, stop: asyncio.Event | None = None) -> None:
        self._dsn = dsn
        self.application_name = application_name
        self._stop = stop
        self._conn: Conn | None = None
        self._lock = asyncio.Lock()
        self._turn = asyncio.Lock()
        self.unavailable_since: float | None = None
        """``time.monotonic()`` of the first failure of the outage ``run`` is riding out now; None when the
        last operation reached the server (the worker's liveness does not blame a restartable loop for it)."""

    async def _connection(self) -> Conn:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await connect(self._dsn, self.application_name)
            return self._conn

    async def _discard(self, broken: Conn | None) -> None:
        async with self._lock:
            if broken is not None and self._conn is broken:
                self._conn = None
                await broken.close()

    async def run(self, operation: Callable[[Conn], Awaitable[T]], what: str, patience: float | None) -> T:
        """Run ``operation``, reconnecting with backoff on connection failures.

        ``patience``: seconds to keep trying (0: one try), after which the
        last error is raised; None: until ``stop`` is set (then ``Stopped``).
        """
        deadline = None if patience is None else time.monotonic() + patience
        delays = supervise.Delays(first=0.1)
        while True:
            conn: Conn | None = None
            try:
                async with self._turn:
                    conn = await self._connection()
                    result = await operation(conn)
                self.unavailable_since = None
                return result
            except psycopg.OperationalError as error:
                if self.unavailable_since is None:
                    self.unavailable_since = time.monotonic()
                await self._discard(conn)
                delay = delays.next()
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                if deadline is None and self._stop is not None and self._stop.is_set():
                    raise Stopped() from error
                log.warning("database unavailable during %s (%s); retrying in %.1fs", what,
                            str(error).strip(), delay)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._discard(self._conn)


async def one(conn: Conn, query: Any, params: Any) -> tuple[Any, ...]:
    """Run a statement that always returns exactly one row; return it."""
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    assert row is not None, "the statement always returns one row"
    return row
