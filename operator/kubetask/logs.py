"""Log lines: one JSON object per line for log pipelines, one readable line for people.

Each process calls ``configure`` once at start (``kubetask operator``,
``kubetask worker``, the other CLI commands). It puts one handler with one
formatter on the root logger, so kubetask's own loggers, kopf's, psycopg's
and a handler's own ``logging`` calls all come out in the same format.
``KUBETASK_LOG_FORMAT`` chooses it (``settings.LogSettings``): ``json`` is
the default of the operator and the worker, which run in containers whose
output a log pipeline reads; ``text`` is the default of the other commands,
and what ``make dev`` sets, since a person reads those.

A JSON line::

    {"ts": "2026-11-22T14:04:08.412Z", "level": "info", "logger": "kubetask.worker",
     "message": "…", "task": {"namespace": "default", "name": "hello", "uid": "…",
     "attempt": 1, "queue": "default", "type": "echo"}}

``ts`` is RFC 3339 in UTC; a traceback is one string in ``exception``.

The ``task`` object comes from, in order:

* ``extra=logs.about(namespace, name, uid)`` on the call: the operator's
  lines about one Task;
* the ``TASK`` context variable: the worker sets it to the claimed task at the
  start of the asyncio task that runs the attempt, and asyncio tasks, the
  handler's thread and anything they start inherit it, so every line logged
  while a handler runs, the user's own included, carries the task;
* kopf's per-object loggers' ``k8s_ref`` (``object`` instead, for kinds
  other than Task).

Cost on the worker's hot path: one ``ContextVar.set`` per attempt, in a
context that dies with the attempt (nothing to reset); the variable holds
the claimed task itself, so nothing is allocated. The fields are read only
when a line is actually written.
"""

from __future__ import annotations

import contextvars
import re
import datetime
import json
import logging
import sys
from typing import IO, Any, Protocol

HANDLER_NAME = "kubetask"
"""Name of the root handler ``configure`` installs (and replaces when called again)."""

FORMATS = ("json", "text")

_EXTRA_FIELD = "kubetask_task"


class TaskIdentity(Protocol):
    """What a log line says about the task it is about (``db.queue.ClaimedTask`` is one)."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def uid(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def queue(self) -> str: ...

    @property
    def type(self) -> str: ...


TASK: contextvars.ContextVar[TaskIdentity | None] = contextvars.ContextVar("kubetask_task", default=None)
"""The task whose attempt the current code runs, if any (set by the worker)."""


def about(namespace: str | None, name: str | None, uid: str | None = None) -> dict[str, Any]:
    """``extra=`` for a line about one Task: ``log.info("…", extra=logs.about(ns, name, uid))``."""
    return {_EXTRA_FIELD: {"namespace": namespace, "name": name, "uid": uid}}


def attempt(task: TaskIdentity) -> dict[str, Any]:
    """``extra=`` for a line about an attempt, logged outside it (a worker handing tasks back at shutdown)."""
    return {_EXTRA_FIELD: _fields(task)}


def _fields(task: TaskIdentity) -> dict[str, Any]:
    return {"namespace": task.namespace, "name": task.name, "uid": task.uid, "attempt": task.attempt,
            "queue": task.queue, "type": task.type}


def _context(record: logging.LogRecord) -> tuple[str, dict[str, Any]] | None:
    """("task" or "object", fields) for ``record``, or None."""
    explicit = getattr(record, _EXTRA_FIELD, None)
    if isinstance(explicit, dict):
        return "task", {k: v for k, v in explicit.items() if v is not None}
    current = TASK.get()
    if current is not None:
        return "task", _fields(current)
    ref = getattr(record, "k8s_ref", None)
    if isinstance(ref, dict) and ref.get("name"):
        fields = {k: ref.get(k) for k in ("namespace", "name", "uid") if ref.get(k)}
        if ref.get("kind") == "Task":
            return "task", fields
        return "object", {"kind": ref.get("kind"), **fields}
    return None


def rfc3339(created: float) -> str:
    """``record.created`` as RFC 3339 in UTC, to the millisecond: ``2026-11-22T14:04:08.412Z``."""
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, then task/object and exception when present."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _context(record)
        if context is not None:
            document[context[0]] = context[1]
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        # default=str: an odd argument in a user's log call must not lose the line.
        return json.dumps(document, default=str)


_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_LINES = re.compile("[\n\r\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r"}.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100
                                                     else f"\\u{ord(char):04x}")


def printable(text: str, lines: bool = False) -> str:
    """``text`` safe for a terminal: control characters (escape sequences), and bidirectional overrides
    escaped as ``\\xNN``/``\\uNNNN``, and newlines too unless ``lines``. For tenant text (Task names,
    error messages) in the CLI's tables and text logs, so a Task cannot forge log lines or restyle a
    terminal."""
    return (_UNSAFE if lines else _UNSAFE_LINES).sub(_escape, text)


class TextFormatter(logging.Formatter):
    """``2026-11-22T14:04:08.412Z INFO    kubetask.worker: message  [default/hello #1]``."""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{rfc3339(record.created)} {record.levelname:<7} {record.name}: "
                f"{printable(record.getMessage())}")
        context = _context(record)
        if context is not None:
            fields = context[1]
            where = printable("/".join(str(fields[k]) for k in ("namespace", "name") if fields.get(k)))
            if "attempt" in fields:
                where += f" #{fields['attempt']}"
            line += f"  [{where}]"
        if record.exc_info:
            line += "\n" + printable(self.formatException(record.exc_info), lines=True)
        elif record.exc_text:
            line += "\n" + printable(record.exc_text, lines=True)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def formatter(format: str) -> logging.Formatter:
    if format == "json":
        return JsonFormatter()
    if format == "text":
        return TextFormatter()
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {format!r}")


def configure(format: str, level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """Send every logger's records to ``stream`` (default stderr) in ``format``, from ``level`` up.

    Calling it again replaces the handler it installed before; handlers that
    others put on the root logger are left alone.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(format))
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def configured() -> bool:
    """Whether ``configure`` has run in this process."""
    return any(h.get_name() == HANDLER_NAME for h in logging.getLogger().handlers)
