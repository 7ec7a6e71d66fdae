"""The demo handlers: small simulations for trying kubetask out, for the examples and for the tests.

``echo``, ``sleep``, ``fail``, ``email``, ``image`` and ``report`` let a new
user see a Task go Queued → Running → Succeeded (or Retrying, DeadLetter)
before writing any handler, and give the tests and benchmarks handlers whose
behaviour the payload controls. ``email`` is also the worked example of a
handler that reads a credential with ``ctx.secret``.

They are not part of the handler machinery (``kubetask.handlers``), and no
worker has them unless asked: this module is loaded like any user module,
through ``KUBETASK_HANDLERS=kubetask.demo``, and registers them with
``handlers.register`` on import. ``make dev``, the tests, the benchmarks and
the chart's default pool name it; a production pool that does not leaves every
name, ``email`` included, to its own handlers.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from typing import Any

from kubetask import handlers

MAX_SECONDS = 3600.0
"""Longest a demo handler sleeps or simulates work: a demo that held a slot for ever (``seconds: 1e9``)
would starve a pool that loads the demos next to real handlers."""


@handlers.register("echo")
def echo(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    """Result = payload."""
    return payload


@handlers.register("sleep")
async def sleep(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    """Sleep ``payload.seconds`` (default 1, at most ``MAX_SECONDS``)."""
    seconds = _seconds(payload, "seconds", 1.0)
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@handlers.register("fail")
def fail(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    """Fail the first ``payload.times`` attempts (default: every attempt), then succeed.

    ``payload.permanent: true`` fails permanently (straight to dead letter);
    ``payload.message`` is the error message.
    """
    message = str(payload.get("message", f"simulated failure of attempt {ctx.attempt}"))
    if payload.get("permanent"):
        raise handlers.PermanentError(message)
    times = payload.get("times")
    if times is None or ctx.attempt <= int(times):
        raise RuntimeError(message)
    return {"succeeded_on_attempt": ctx.attempt}


@handlers.register("email")
async def email(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    """Simulated send: ``payload.to`` (address or list), ``payload.subject``; returns a message id.

    The message id is derived from the Task's uid, as a real sender would use
    it as an idempotency key so that a retried send is not a second email.

    ``payload.credentials`` (optional) shows how a handler uses a secret: it is
    the *name* of a Secret with keys ``username`` and ``password``, mounted on
    the pool (``ctx.secret``); the result says which user sent, never the password.
    """
    recipients = payload.get("to")
    if isinstance(recipients, str):
        recipients = [recipients]
    if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
        raise handlers.PermanentError("payload.to must be an email address or a list of them")
    subject = payload.get("subject")
    if not isinstance(subject, str) or not subject:
        raise handlers.PermanentError("payload.subject must be a non-empty string")
    sent_as = None
    if "credentials" in payload:
        sent_as = ctx.secret(str(payload["credentials"]), "username")
        ctx.secret(str(payload["credentials"]), "password")  # a real sender logs in with it here
    await asyncio.sleep(_seconds(payload, "delay_seconds", 0.02))
    digest = hashlib.sha256(ctx.uid.encode()).hexdigest()[:20]
    result = {"message_id": f"<{digest}@kubetask.local>", "to": recipients, "subject": subject}
    if sent_as is not None:
        result["sent_as"] = sent_as
    return result


@handlers.register("image")
def image(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    """Simulated resize of ``payload.url`` to ``payload.width`` × ``payload.height`` (a blocking handler)."""
    url = payload.get("url")
    if not isinstance(url, str) or not url:
        raise handlers.PermanentError("payload.url must be a non-empty string")
    size = []
    for field in ("width", "height"):
        value = payload.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10_000:
            raise handlers.PermanentError(f"payload.{field} must be an integer from 1 to 10000")
        size.append(value)
    width, height = size
    time.sleep(_seconds(payload, "delay_seconds", 0.03))
    base = url.split("?", 1)[0]
    stem, dot, extension = base.rpartition(".")
    if not dot or "/" in extension:
        stem, extension = base, "png"
    return {
        "source": url,
        "output": f"{stem}_{width}x{height}.{extension}",
        "width": width,
        "height": height,
        "bytes": width * height * 3 // 10,
    }


@handlers.register("report")
def report(payload: dict[str, Any], ctx: handlers.Context) -> Any:
    """Summarise ``payload.rows`` (numbers, or objects with a numeric ``value``); ``payload.kind`` names it."""
    rows = payload.get("rows", [])
    if not isinstance(rows, list):
        raise handlers.PermanentError("payload.rows must be a list")
    values: list[float] = []
    for index, row in enumerate(rows):
        value = row.get("value") if isinstance(row, dict) else row
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise handlers.PermanentError(f"payload.rows[{index}] must be a number or an object with a numeric value")
        values.append(float(value))
    summary: dict[str, Any] = {"kind": str(payload.get("kind", "summary")), "count": len(values)}
    if values:
        summary.update(sum=sum(values), min=min(values), max=max(values), mean=statistics.fmean(values))
    return summary


def _seconds(payload: dict[str, Any], field: str, default: float) -> float:
    """A duration from the payload: a number from 0 to ``MAX_SECONDS``, or a permanent error saying so."""
    value = payload.get(field, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise handlers.PermanentError(f"payload.{field} must be a non-negative number of seconds")
    if value > MAX_SECONDS:
        raise handlers.PermanentError(
            f"payload.{field} is {value:g}, more than the {MAX_SECONDS:g} seconds a demo handler runs at most; "
            f"ask for {MAX_SECONDS:g} or less (the demos simulate work: they must not hold a worker's slot for ever)")
    return float(value)
