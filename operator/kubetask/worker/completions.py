"""The group commit of successes: one write records every success waiting for it.

See the package docstring for why; this class is the mechanism.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from kubetask import db

_Success = tuple[db.queue.ClaimedTask, Any, "asyncio.Future[bool]"]


class Completions:
    """Successes waiting to be written; every write takes all of them (group commit).

    Two writers take from here, each when the connection is its turn: the
    claim loop, whose claim statement carries them while the worker is busy
    (one round trip records a batch and claims the next), and a writer task of
    their own, which writes them at once when the worker is not about to claim
    (no added latency when idle). ``record`` returns once the result is written
    (True) or found to be no longer ours (False), and raises what the write
    raised after ``patience`` seconds of retries.
    """

    CARRY_SECONDS = 0.05
    """How long the writer task leaves the successes to a claim that is about to run."""

    def __init__(self, database: db.connection.Shared, lease_owner: str, patience: float, carried: Callable[[], bool]) -> None:
        self._db = database
        self._lease_owner = lease_owner
        self._patience = patience
        self._carried = carried
        self._waiting: list[_Success] = []
        self._emptied = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def record(self, task: db.queue.ClaimedTask, value: Any) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((task, value, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="kubetask-completions")
        return await future

    def take(self) -> list[_Success]:
        batch, self._waiting = self._waiting, []
        self._emptied.set()
        return batch

    def put_back(self, batch: list[_Success]) -> None:
        """A write failed: the next one retries these."""
        self._waiting[:0] = [entry for entry in batch if not entry[2].done()]

    @staticmethod
    def rows(batch: list[_Success]) -> list[tuple[int, int, Any]]:
        return [(task.id, task.attempt, value) for task, value, _ in batch]

    @staticmethod
    def settle(batch: list[_Success], recorded: set[int]) -> None:
        for task, _, future in batch:
            if not future.done():
                future.set_result(task.id in recorded)

    async def _write_once(self, conn: db.connection.Conn) -> None:
        batch = self.take()
        if not batch:
            return
        try:
            recorded = await db.queue.complete_many(conn, self._lease_owner, self.rows(batch))
        except BaseException:
            self.put_back(batch)
            raise
        self.settle(batch, recorded)

    async def _write(self) -> None:
        try:
            while self._waiting:
                if self._carried():
                    self._emptied.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.CARRY_SECONDS):
                            await self._emptied.wait()
                    # Whatever the claim did not take by then is written here.
                await self._db.run(self._write_once, "recording results", patience=self._patience)
        except Exception as error:
            for _, _, future in self.take():
                if not future.done():
                    future.set_exception(error)

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        for _, _, future in self.take():
            future.cancel()
