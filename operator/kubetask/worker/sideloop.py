"""A second event loop in a thread of its own, for what must go on while a handler blocks the first.

Async handlers run on the worker's event loop. One that blocks it
(``time.sleep``, blocking I/O, a long computation without ``await``) stops
everything else on that loop; were the lease heartbeat there too, the lease
would lapse, the rescuer would retry the task elsewhere and it would run
twice. So the heartbeat, the loop watchdog's observer and the liveness
endpoint run here instead, with a database connection of their own: a
thread keeps running while the handlers' loop is blocked (``time.sleep`` and
I/O release the GIL, and pure Python computation yields it every few
milliseconds).

``submit`` starts a coroutine on this loop from the handlers' loop; ``stop``
cancels whatever still runs here and joins the thread, bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class SideLoop:
    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the {self._thread.name} thread did not start its event loop within {timeout:g}s")

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        # asyncio.run cancels what is still running here, and waits for it, when this returns.

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the side loop is not started")
        return self._loop

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coroutine`` on this loop; await it from another loop with ``asyncio.wrap_future``."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())

    def stop(self, timeout: float) -> None:
        """Cancel what runs here and end the thread, waiting at most ``timeout`` seconds for it."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
