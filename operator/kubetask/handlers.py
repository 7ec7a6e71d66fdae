"""Handlers: the user's code, found by the Task's ``spec.type``.

A handler is ``def f(payload: dict, ctx: Context) -> JSON`` or the same as
``async def``. Async handlers run on the worker's event loop; plain functions
run in a thread so a blocking handler does not stall the loop (and the lease
heartbeat). Register one with the ``register`` decorator::

    from kubetask import handlers

    @handlers.register("thumbnail")
    def thumbnail(payload, ctx):
        ...

The registry starts empty: every handler name belongs to the user, and
kubetask itself takes none. A worker finds handlers in two places, in this
order: the modules named in ``KUBETASK_HANDLERS`` (imported at start-up, which
runs their ``register`` decorators), and the ``kubetask.handlers`` entry-point
group of installed distributions (entry-point name = handler name, value = the
function). A later registration of a name already taken is an error, so two
packages cannot silently shadow each other. The demo handlers of the examples
and the tests live in ``kubetask.demo`` and are loaded like any user module,
only where they are asked for (``KUBETASK_HANDLERS=kubetask.demo``).

Failure vocabulary: raising ``PermanentError`` sends the Task straight to dead
letter; any other exception is retried under the Task's retry policy.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import pathlib
import re
import threading
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


class DuplicateHandler(ValueError):
    """Two registrations claim one handler name."""


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
            raise DuplicateHandler(
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
    when one cannot be imported or claims a name another already took.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except DuplicateHandler as error:
            raise HandlerModuleError(
                f"{HANDLERS_ENV} lists module {module!r}, which registers a name already taken: {error}; "
                f"rename one of the handlers, or drop one module from {HANDLERS_ENV} (the demos of "
                "kubetask.demo take echo, sleep, fail, email, image and report)"
            ) from None
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
            try:
                registry.add(point.name, handler)
            except DuplicateHandler as error:
                raise HandlerModuleError(f"entry point {point.name!r} in group {ENTRY_POINT_GROUP!r}: {error}") from None
    return registry
