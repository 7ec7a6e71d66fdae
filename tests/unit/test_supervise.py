"""The one backoff and supervising loop: doubling delays, a reset after a healthy run, restarts."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kubetask import supervise


def test_delays_double_up_to_the_cap_and_reset_after_a_healthy_run() -> None:
    delays = supervise.Delays(first=0.2, cap=1.0, healthy_after=30)
    assert [delays.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    delays.ran_for(5)
    assert delays.next() == 1.0, "a short run is the same problem continuing"
    delays.ran_for(31)
    assert delays.next() == 0.2, "after a healthy run a failure is a new problem"


async def test_supervise_restarts_a_failing_body_and_stops_when_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    done = asyncio.Event()

    async def body() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise ConnectionError("database went away")
        done.set()
        await asyncio.Event().wait()

    loop = asyncio.create_task(supervise.supervise("svc", body, logging.getLogger("test"),
                                                   supervise.Delays(first=0.01, cap=0.02)))
    await asyncio.wait_for(done.wait(), 5)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert len(runs) == 3
    assert "svc: ConnectionError: database went away; retrying in" in caplog.text
