"""The worker's liveness endpoint, ``/healthz``, served from the side loop's thread.

A worker is alive while its three loops come round: the claim loop (every
poll interval at the latest), the handlers' event loop (the watchdog's tick)
and the lease heartbeat (every heartbeat interval). ``/healthz`` answers 200
while each has come round within ``liveness_stall_seconds``, and 503 naming
the one that has not, so the kubelet restarts a worker that is stuck. It is
served from the ``SideLoop``, so it answers while a handler blocks the
handlers' loop: the probe then fails on the answer, not on a timeout, and
the answer says why.

A claim loop waiting for an unreachable PostgreSQL is not stuck: a restart
cannot bring the database back (the logs say it is unavailable). A claim
statement that hangs without an error is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable

import aiohttp.web

from kubetask import metrics

logger = logging.getLogger("kubetask.worker")


@dataclasses.dataclass(frozen=True)
class Signs:
    """Where the worker's liveness is read from; each a callable, read on the side loop's thread."""

    claim_loop_at: Callable[[], float]
    """``time.monotonic()`` when the claim loop last came round."""
    claim_loop_exempt: Callable[[], str | None]
    """Why the claim loop may not come round without being stuck (stopping, PostgreSQL unreachable)."""
    event_loop_at: Callable[[], float]
    heartbeat_at: Callable[[], float]


def problems(signs: Signs, stall_seconds: float, now: float | None = None) -> list[str]:
    """What is stuck, each as a sentence; empty when the worker is alive."""
    now = time.monotonic() if now is None else now
    found = []
    event_loop = now - signs.event_loop_at()
    if event_loop > stall_seconds:
        found.append(f"the event loop has not run for {event_loop:.1f}s (a handler blocks it: see the "
                     "warnings that name it)")
    claim_loop = now - signs.claim_loop_at()
    if claim_loop > stall_seconds and signs.claim_loop_exempt() is None:
        found.append(f"the claim loop has not come round for {claim_loop:.1f}s")
    heartbeat = now - signs.heartbeat_at()
    if heartbeat > stall_seconds:
        found.append(f"the lease heartbeat has not come round for {heartbeat:.1f}s (its statement hangs)")
    return found


class Liveness:
    def __init__(self, signs: Signs, stall_seconds: float) -> None:
        self._signs = signs
        self._stall_seconds = stall_seconds
        self._failing = False

    async def _healthz(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        found = problems(self._signs, self._stall_seconds)
        if found and not self._failing:
            # Logged once per failing spell, so `kubectl logs --previous` says why the pod was restarted.
            logger.error("liveness: unhealthy, %s (KUBETASK_LIVENESS_STALL_SECONDS=%g)", "; ".join(found),
                         self._stall_seconds)
        elif not found and self._failing:
            logger.info("liveness: healthy again")
        self._failing = bool(found)
        body = {"healthy": not found, "problems": found,
                "claim_loop_exempt": self._signs.claim_loop_exempt()}
        return aiohttp.web.json_response(body, status=503 if found else 200)

    async def serve(self, port: int, host: str) -> metrics.Endpoint:
        """Serve ``/healthz`` on ``host:port`` (0: any free port, logged) on the running loop."""
        app = aiohttp.web.Application()
        app.router.add_get("/healthz", self._healthz)
        runner = aiohttp.web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await aiohttp.web.TCPSite(runner, host, port).start()
        except OSError as error:
            await runner.cleanup()
            raise metrics.EndpointError(
                f"cannot serve the liveness endpoint on {host}:{port} ({error.strerror or error}): set "
                "KUBETASK_HEALTH_PORT to a free port (not KUBETASK_METRICS_PORT's), 0 for any free port, or "
                "unset it to serve none") from None
        bound = int(runner.addresses[0][1])
        logger.info("liveness at http://%s:%d/healthz", host, bound)
        return metrics.Endpoint(runner, bound)
