"""The lease heartbeat: the attempts this process holds, renewed from the side loop's thread.

``Leases`` is the one structure both threads touch: the handlers' loop adds
an attempt when it claims it and removes it when its slot ends; the
heartbeat (on the ``SideLoop``, with its own connection) reads a snapshot
every ``heartbeat_interval_seconds`` and renews those leases in one
statement. The attempts whose lease is no longer ours (Task deleted, or
rescued after this process stalled) are handed back to the handlers' loop
as (task id, attempt) pairs: a task this worker claimed again meanwhile is a
new attempt, and a stale report must not stop it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import psycopg

from kubetask import db

logger = logging.getLogger("kubetask.worker")


def label(task: db.queue.ClaimedTask) -> str:
    """How a log line names an attempt."""
    return f"task {task.namespace}/{task.name} (uid {task.uid}) attempt {task.attempt}"


@dataclasses.dataclass(frozen=True)
class Held:
    task: db.queue.ClaimedTask
    on_loop: bool
    """Its handler is async, so it runs on the handlers' event loop (and could block it)."""


class Leases:
    """The attempts this process runs, shared by the handlers' loop and the heartbeat's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, Held] = {}

    def hold(self, task: db.queue.ClaimedTask, on_loop: bool) -> None:
        with self._lock:
            self._held[task.id] = Held(task, on_loop)

    def release(self, task: db.queue.ClaimedTask) -> None:
        with self._lock:
            held = self._held.get(task.id)
            if held is not None and held.task.attempt == task.attempt:
                del self._held[task.id]

    def snapshot(self) -> dict[int, Held]:
        with self._lock:
            return dict(self._held)


class Heartbeat:
    """Renews the leases in ``Leases``; ``beat_at`` is when it last came round (``time.monotonic``)."""

    def __init__(self, dsn: str, lease_owner: str, lease_seconds: float, interval: float, leases: Leases,
                 on_lost: Callable[[list[tuple[int, int]]], None]) -> None:
        self._dsn = dsn
        self._lease_owner = lease_owner
        self._lease_seconds = lease_seconds
        self._interval = interval
        self._leases = leases
        self._on_lost = on_lost
        self.beat_at = time.monotonic()

    async def run(self) -> None:
        database = db.connection.Shared(self._dsn, f"kubetask-heartbeat {self._lease_owner}"[:63])
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self._beat(database)
                self.beat_at = time.monotonic()
        finally:
            await database.close()

    async def _beat(self, database: db.connection.Shared) -> None:
        held = self._leases.snapshot()
        if not held:
            return
        try:
            lost = await database.run(
                lambda conn: db.queue.heartbeat(conn, self._lease_owner, self._lease_seconds, list(held)),
                "heartbeat", patience=0)
        except psycopg.Error as error:
            logger.warning("heartbeat failed (%s); leases of %d tasks not renewed", str(error).strip(), len(held))
            return
        if lost:
            self._on_lost([(task_id, held[task_id].task.attempt) for task_id in lost])
