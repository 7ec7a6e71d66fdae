"""Misbehaving handlers for the fault tests, loaded by worker pools through KUBETASK_HANDLERS."""

from __future__ import annotations

import os
import time
from typing import Any

from kubetask import handlers

_hoard: list[bytes] = []


@handlers.register("exit-process")
def exit_process(payload: dict[str, Any], ctx: handlers.Context) -> None:
    """Kill the whole worker process, as a segfaulting C extension would."""
    os._exit(int(payload.get("code", 3)))


@handlers.register("not-json")
def not_json(payload: dict[str, Any], ctx: handlers.Context) -> object:
    return {"when": object()}


@handlers.register("hang")
def hang(payload: dict[str, Any], ctx: handlers.Context) -> None:
    """A sync handler that ignores everything: only the timeout ends the attempt."""
    deadline = time.monotonic() + float(payload.get("seconds", 3600))
    while time.monotonic() < deadline and not ctx.cancelled.is_set():
        time.sleep(0.05)


@handlers.register("leak")
def leak(payload: dict[str, Any], ctx: handlers.Context) -> dict[str, int]:
    """Keep memory across attempts, like a cache that never evicts."""
    _hoard.append(b"x" * int(payload.get("bytes", 10_000_000)))
    return {"held_mb": sum(len(b) for b in _hoard) // 1_000_000}
