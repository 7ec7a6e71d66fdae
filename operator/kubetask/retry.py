"""The retry decision: given an attempt's place in the budget and the error, retry at T or give up.

Pure (no I/O, the clock and the randomness are arguments) so that it is tested
without a database and shared by the worker (a handler failed) and the
rescuer (a lease expired).

Budget: ``max_retries`` is the number of retries after the first attempt, so
a budget allows ``max_retries + 1`` attempts. ``attempt_in_budget`` is the
1-based number of the attempt that just ended within the current budget.

Backoff: the n-th retry waits ``min(max, initial * factor ** (n - 1))``, then a
random ±``jitter`` fraction of that is added (spreading a burst of failures),
and the result is clamped to ``[0, max]`` so ``max`` is a true maximum.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import random


@dataclasses.dataclass(frozen=True)
class Backoff:
    initial_seconds: float
    factor: float
    max_seconds: float
    jitter: float
    """Fraction 0..1 of the delay added or removed at random."""

    def delay(self, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before the ``retry_number``-th retry (1-based)."""
        exponent = max(retry_number - 1, 0)
        try:
            base = self.initial_seconds * self.factor ** exponent
        except OverflowError:
            base = math.inf
        base = min(self.max_seconds, base)
        jittered = base * (1.0 + self.jitter * rng.uniform(-1.0, 1.0))
        return min(self.max_seconds, max(0.0, jittered))


@dataclasses.dataclass(frozen=True)
class Retry:
    at: datetime.datetime
    delay_seconds: float


@dataclasses.dataclass(frozen=True)
class GiveUp:
    reason: str


Decision = Retry | GiveUp


def decide(attempt_in_budget: int, max_retries: int, backoff: Backoff, permanent: bool,
           now: datetime.datetime, rng: random.Random) -> Decision:
    """Retry (when and after how long) or give up (why), after attempt ``attempt_in_budget`` failed."""
    if permanent:
        return GiveUp("the error is permanent")
    if attempt_in_budget > max_retries:
        attempts = "attempt" if attempt_in_budget == 1 else "attempts"
        return GiveUp(f"retries exhausted: {attempt_in_budget} {attempts} failed, maxRetries is {max_retries}")
    delay = backoff.delay(attempt_in_budget, rng)
    return Retry(at=now + datetime.timedelta(seconds=delay), delay_seconds=delay)
