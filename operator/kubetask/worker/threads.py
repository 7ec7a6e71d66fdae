"""Plain-function handlers in threads: the timeout counts from when a thread starts the handler.

A thread cannot be stopped in Python. A plain-function handler past its
timeout keeps running in its thread (its ``ctx.cancelled`` asks it to return)
while its attempt is recorded as a timeout: the thread is *abandoned*. The
pool has room for as many abandoned threads as there are slots, and the
worker recycles itself once that room is used up (``runner``), so a slot
always finds a thread.

Still, a handler waits for a thread whenever the pool is busy, and that wait
is not the handler's time: counting it would record an innocent task as
``Timeout`` without ever running it. ``run`` therefore starts the clock when
the thread picks the handler up, and a handler given up while it still
waits (shutdown, the Task deleted) is taken off the pool's queue and never
runs at all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import Any


class TimedOut(Exception):
    """The handler ran in its thread longer than the timeout; the thread is abandoned."""


def _resolve(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_result(None)


class HandlerThreads:
    """The worker's handler threads, and how many of them are abandoned."""

    def __init__(self, slots: int) -> None:
        # Room for every slot's handler and as many abandoned threads again (the worker recycles then).
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2 * slots,
                                                               thread_name_prefix="kubetask-handler")
        self._lock = threading.Lock()
        self._abandoned: set[concurrent.futures.Future[Any]] = set()

    @property
    def abandoned(self) -> int:
        """Threads still running a handler whose attempt was given up (timeout, shutdown, lost lease)."""
        with self._lock:
            return len(self._abandoned)

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._abandoned.discard(future)

    async def run(self, function: Callable[..., Any], *args: Any, timeout: float | None) -> Any:
        """``function(*args)`` in a thread, in a copy of this context; ``TimedOut`` after ``timeout``
        seconds counted from when a thread starts it (None: no limit)."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        context = contextvars.copy_context()

        def call() -> Any:
            loop.call_soon_threadsafe(_resolve, started)
            return context.run(function, *args)

        future = self._executor.submit(call)
        result = asyncio.wrap_future(future, loop=loop)
        try:
            # Waiting for a thread: no clock yet. A cancellation here (shutdown, lost lease) also
            # cancels ``result``, which takes the call off the pool's queue before it runs.
            await asyncio.wait([started, result], return_when=asyncio.FIRST_COMPLETED)
            deadline = asyncio.timeout(timeout)
            try:
                async with deadline:
                    return await result
            except TimeoutError:
                if deadline.expired():
                    raise TimedOut() from None
                raise
        except BaseException:
            result.cancel()
            if not future.done():
                with self._lock:
                    self._abandoned.add(future)
                future.add_done_callback(self._forget)  # runs at once if it is done meanwhile
            raise
        finally:
            started.cancel()

    def shutdown(self) -> None:
        """Stop taking handlers; those not started are dropped, abandoned ones keep their threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
