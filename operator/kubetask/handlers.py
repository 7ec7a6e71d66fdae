"""Handlers: the user's code, found by the Task's ``spec.type``.

A handler is ``def f(payload: dict, ctx: Context) -> JSON`` or the same as
``async def``. Async handlers run on the worker's event loop; plain functions
run in a thread so a blocking handler does not stall the loop (and the lease
heartbeat). Register one with the ``register`` decorator::

    from kubetask import handlers

    @handlers.register("thumbnail")
    def thumbnail(payload, ctx):
        ...

A worker finds handlers in three places, in this order: the built-ins below,
the modules named in ``KUBETASK_HANDLERS`` (imported at start-up, which runs
their ``register`` decorators), and the ``kubetask.handlers`` entry-point
group of installed distributions (entry-point name = handler name, value = the
function). A later registration of a name already taken is an error, so two
packages cannot silently shadow each other.

Failure vocabulary: raising ``PermanentError`` sends the Task straight to dead
letter; any other exception is retried under the Task's retry policy.

The built-ins are small simulations used by the examples and the tests:
``echo``, ``sleep``, ``fail``, ``email``, ``image`` and ``report``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib
import importlib.metadata
import pathlib
import re
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from kubetask import settings

ENTRY_POINT_GROUP = "kubetask.handlers"
HANDLERS_ENV = "KUBETASK_HANDLERS"
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")


class PermanentError(Exception):
    """Raise from a handler for an error that retrying cannot fix: the Task goes to DeadLetter."""


class UnknownHandler(PermanentError):
    """No handler is registered under the Task's type."""


class HandlerModuleError(RuntimeError):
    """A module listed in KUBETASK_HANDLERS (or an entry point) could not be loaded."""


@dataclasses.dataclass(frozen=True)
class Context:
    """What a handler may know about the attempt it runs in."""

    uid: str
    namespace: str
    name: str
    type: str
    queue: str
    attempt: int
    """Number of this attempt, 1-based, ever increasing (a retry from dead letter continues it)."""
    attempt_in_budget: int
    """Number of this attempt within the current retry budget, 1-based."""
    max_retries: int
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event, compare=False)
    """Set when the attempt is abandoned (timeout, Task deleted, shutdown): a
    long-running plain-function handler should check it and return, since its
    thread cannot be stopped from outside."""
    secrets_dir: pathlib.Path = settings.DEFAULT_SECRETS_DIR
    """Where the pool's Secrets are mounted, one directory per Secret (``KUBETASK_SECRETS_DIR``)."""

    @property
    def task(self) -> str:
        return f"{self.namespace}/{self.name}"

    def secret(self, name: str, key: str) -> str:
        """The value of ``key`` in the Secret ``name`` mounted on this worker pool.

        The pattern for credentials: a payload is readable by anyone who can
        read Tasks, so it carries the *name* of a Secret, and the handler reads
        the value here. Workers have no Kubernetes credentials; the pool's
        ``secrets`` (chart values) mounts each listed Secret read-only at
        ``<secrets_dir>/<name>/<key>``, so the pool's owner decides which
        Secrets its Tasks may use. A name that is not mounted is a
        ``PermanentError`` (retrying cannot mount it).
        """
        if not _SECRET_NAME.fullmatch(name or ""):
            raise PermanentError(f"{name!r} is not a Secret name (lowercase letters, digits, '-' and '.')")
        if not _SECRET_KEY.fullmatch(key or "") or key in {".", ".."}:
            raise PermanentError(f"{key!r} is not a Secret key (letters, digits, '-', '_' and '.')")
        path = self.secrets_dir / name / key
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise PermanentError(
                f"Secret {name!r} (key {key!r}) is not mounted on the {self.queue!r} worker pool (no {path}); "
                f"add {name!r} to that pool's `secrets` in the chart values, or name a Secret it mounts"
            ) from None


Handler = Callable[[dict[str, Any], Context], Any] | Callable[[dict[str, Any], Context], Awaitable[Any]]
H = TypeVar("H", bound=Handler)


class Registry:
    """Handler name → function."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add(self, name: str, handler: Handler) -> None:
        existing = self._handlers.get(name)
        if existing is not None and existing is not handler:
            raise ValueError(
                f"handler {name!r} is registered twice: by {_where(existing)} and by {_where(handler)}"
            )
        self._handlers[name] = handler

    def register(self, name: str) -> Callable[[H], H]:
        """Decorator: register the function as the handler for Tasks of type ``name``."""
        def decorate(handler: H) -> H:
            self.add(name, handler)
            return handler
        return decorate

    def get(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            known = ", ".join(sorted(self._handlers)) or "(none)"
            raise UnknownHandler(
                f"no handler named {name!r} on this worker; known handlers: {known}. "
                f"Fix the Task's spec.type, or load the module that defines it with {HANDLERS_ENV}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def copy(self) -> Registry:
        clone = Registry()
        clone._handlers.update(self._handlers)
        return clone


def _where(handler: Handler) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"


registry = Registry()
"""The process-wide registry that ``register`` fills and the worker uses by default."""


def register(name: str) -> Callable[[H], H]:
    """Decorator: register the function as the handler for Tasks of type ``name``."""
    return registry.register(name)


def load(modules: Iterable[str], entry_points: bool = True) -> Registry:
    """Import the handler modules (running their ``register`` calls) and entry points; return the registry.

    Raises ``HandlerModuleError`` naming the module and ``KUBETASK_HANDLERS``
    when one cannot be imported.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise HandlerModuleError(
                f"{HANDLERS_ENV} lists module {module!r}, which cannot be imported ({error}); install "
                f"the package that provides it in the worker image, or fix {HANDLERS_ENV}"
            ) from error
    if entry_points:
        for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                handler = point.load()
            except ImportError as error:
                raise HandlerModuleError(
                    f"entry point {point.name!r} = {point.value!r} in group {ENTRY_POINT_GROUP!r} "
                    f"cannot be loaded ({error})"
                ) from error
            registry.add(point.name, handler)
    return registry


# ---------------------------------------------------------------------- built-ins

@register("echo")
def echo(payload: dict[str, Any], ctx: Context) -> Any:
    """Result = payload."""
    return payload


@register("sleep")
async def sleep(payload: dict[str, Any], ctx: Context) -> Any:
    """Sleep ``payload.seconds`` (default 1)."""
    seconds = _number(payload, "seconds", 1.0)
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@register("fail")
def fail(payload: dict[str, Any], ctx: Context) -> Any:
    """Fail the first ``payload.times`` attempts (default: every attempt), then succeed.

    ``payload.permanent: true`` fails permanently (straight to dead letter);
    ``payload.message`` is the error message.
    """
    message = str(payload.get("message", f"simulated failure of attempt {ctx.attempt}"))
    if payload.get("permanent"):
        raise PermanentError(message)
    times = payload.get("times")
    if times is None or ctx.attempt <= int(times):
        raise RuntimeError(message)
    return {"succeeded_on_attempt": ctx.attempt}


@register("email")
async def email(payload: dict[str, Any], ctx: Context) -> Any:
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
        raise PermanentError("payload.to must be an email address or a list of them")
    subject = payload.get("subject")
    if not isinstance(subject, str) or not subject:
        raise PermanentError("payload.subject must be a non-empty string")
    sent_as = None
    if "credentials" in payload:
        sent_as = ctx.secret(str(payload["credentials"]), "username")
        ctx.secret(str(payload["credentials"]), "password")  # a real sender logs in with it here
    await asyncio.sleep(_number(payload, "delay_seconds", 0.02))
    digest = hashlib.sha256(ctx.uid.encode()).hexdigest()[:20]
    result = {"message_id": f"<{digest}@kubetask.local>", "to": recipients, "subject": subject}
    if sent_as is not None:
        result["sent_as"] = sent_as
    return result


@register("image")
def image(payload: dict[str, Any], ctx: Context) -> Any:
    """Simulated resize of ``payload.url`` to ``payload.width`` × ``payload.height`` (a blocking handler)."""
    url = payload.get("url")
    if not isinstance(url, str) or not url:
        raise PermanentError("payload.url must be a non-empty string")
    size = []
    for field in ("width", "height"):
        value = payload.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10_000:
            raise PermanentError(f"payload.{field} must be an integer from 1 to 10000")
        size.append(value)
    width, height = size
    time.sleep(_number(payload, "delay_seconds", 0.03))
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


@register("report")
def report(payload: dict[str, Any], ctx: Context) -> Any:
    """Summarise ``payload.rows`` (numbers, or objects with a numeric ``value``); ``payload.kind`` names it."""
    rows = payload.get("rows", [])
    if not isinstance(rows, list):
        raise PermanentError("payload.rows must be a list")
    values: list[float] = []
    for index, row in enumerate(rows):
        value = row.get("value") if isinstance(row, dict) else row
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise PermanentError(f"payload.rows[{index}] must be a number or an object with a numeric value")
        values.append(float(value))
    summary: dict[str, Any] = {"kind": str(payload.get("kind", "summary")), "count": len(values)}
    if values:
        summary.update(sum=sum(values), min=min(values), max=max(values), mean=statistics.fmean(values))
    return summary


def _number(payload: dict[str, Any], field: str, default: float) -> float:
    value = payload.get(field, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise PermanentError(f"payload.{field} must be a non-negative number")
    return float(value)
