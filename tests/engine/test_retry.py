"""The retry decision, without a database."""

import datetime
import random

import pytest

from kubetask import retry

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
NO_JITTER = retry.Backoff(initial_seconds=2.0, factor=3.0, max_seconds=100.0, jitter=0.0)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 2.0), (2, 6.0), (3, 18.0), (4, 54.0), (5, 100.0), (50, 100.0)])
def test_exponential_backoff_capped_at_max(attempt: int, delay: float) -> None:
    decision = retry.decide(attempt, 100, NO_JITTER, permanent=False, now=NOW, rng=random.Random(0))
    assert decision == retry.Retry(at=NOW + datetime.timedelta(seconds=delay), delay_seconds=delay)


def test_jitter_stays_within_its_fraction_and_spreads() -> None:
    backoff = retry.Backoff(initial_seconds=10.0, factor=2.0, max_seconds=1000.0, jitter=0.2)
    rng = random.Random(42)
    delays = [backoff.delay(1, rng) for _ in range(500)]
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert max(delays) - min(delays) > 3.0


def test_jitter_never_exceeds_max() -> None:
    backoff = retry.Backoff(initial_seconds=10.0, factor=2.0, max_seconds=10.0, jitter=1.0)
    rng = random.Random(7)
    assert all(0.0 <= backoff.delay(3, rng) <= 10.0 for _ in range(200))


def test_huge_exponent_does_not_overflow() -> None:
    backoff = retry.Backoff(initial_seconds=1.0, factor=10.0, max_seconds=60.0, jitter=0.0)
    assert backoff.delay(10_000, random.Random()) == 60.0


def test_budget_allows_max_retries_plus_one_attempts() -> None:
    rng = random.Random(0)
    assert isinstance(retry.decide(3, 3, NO_JITTER, permanent=False, now=NOW, rng=rng), retry.Retry)
    decision = retry.decide(4, 3, NO_JITTER, permanent=False, now=NOW, rng=rng)
    assert decision == retry.GiveUp("retries exhausted: 4 attempts failed, maxRetries is 3")
    assert isinstance(retry.decide(1, 0, NO_JITTER, permanent=False, now=NOW, rng=rng), retry.GiveUp)


def test_permanent_errors_give_up_at_once() -> None:
    decision = retry.decide(1, 10, NO_JITTER, permanent=True, now=NOW, rng=random.Random(0))
    assert decision == retry.GiveUp("the error is permanent")
