"""Retrying what failed: one backoff and one supervising loop for every process.

The worker's listener and database operations, the operator's services and
the CLI all meet the same failures (PostgreSQL restarting, a connection cut,
the API server away for a moment) and answer them the same way: try again
after a delay that doubles from ``Delays.first`` up to ``Delays.cap``, and
start from the short delay again once the thing ran well for a while, so a
new problem after a healthy hour is not treated as the old one continuing.
The numbers live here once, instead of in each loop.

``supervise`` runs a body for ever with that policy; ``Delays`` is the policy
itself, for loops that must decide for themselves what to retry (a bounded
wait at start-up, an operation that gives up after its patience).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable


@dataclasses.dataclass
class Delays:
    """Capped exponential delays between tries, reset after a healthy run."""

    first: float = 0.2
    """Seconds before the first retry: short, since most failures are a connection that just dropped."""
    cap: float = 5.0
    """Longest delay, in seconds: an outage of minutes is still noticed within seconds of its end."""
    healthy_after: float = 30.0
    """Seconds of running without failing after which the next failure starts from ``first`` again."""
    current: float = dataclasses.field(default=0.0, init=False)

    def next(self) -> float:
        """The delay before the next try (and double it for the one after)."""
        self.current = self.first if self.current == 0 else min(self.current * 2, self.cap)
        return self.current

    def reset(self) -> None:
        self.current = 0.0

    def ran_for(self, seconds: float) -> None:
        """The thing ran ``seconds`` before failing: a long run means the next failure is a new one."""
        if seconds >= self.healthy_after:
            self.reset()


async def supervise(name: str, body: Callable[[], Awaitable[None]], log: logging.Logger,
                    delays: Delays | None = None) -> None:
    """Run ``body`` for ever: when it raises or returns, log why and run it again after a delay.

    Cancellation ends the loop. A body that returns is restarted too (after
    the shortest delay): a service that means to stop is cancelled instead.
    """
    delays = delays or Delays()
    while True:
        started = time.monotonic()
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            delays.ran_for(time.monotonic() - started)
            delay = delays.next()
            log.warning("%s: %s: %s; retrying in %.1fs", name, type(error).__name__,
                        " ".join(str(error).split()), delay)
            await asyncio.sleep(delay)
        else:
            delays.reset()
            await asyncio.sleep(delays.first)
