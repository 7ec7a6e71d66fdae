"""Build a Task's ``status`` from its PostgreSQL row: pure, no I/O.

The mirror always writes the *whole* latest status, so a Task that finished
before the operator got to it goes straight to Succeeded (coalescing), and
fields that no longer apply are sent as ``null`` so the merge patch removes
them. Sizes are capped here so a huge result or error can never make the
status patch fail: the full values stay in PostgreSQL.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Protocol, Sequence

from kubetask import model


class _Span(Protocol):
    """What a row and an attempt both have: who ran it, and when."""

    @property
    def worker_pod(self) -> str | None: ...
    @property
    def started_at(self) -> datetime.datetime | None: ...
    @property
    def finished_at(self) -> datetime.datetime | None: ...


class AttemptLike(_Span, Protocol):
    """An attempt as the status shows it (``db.outbox.HistoryEntry`` is one)."""

    @property
    def number(self) -> int: ...
    @property
    def outcome(self) -> str: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def reason(self) -> str | None: ...


class RowLike(_Span, Protocol):
    """A task row as the status shows it (``db.outbox.StatusRow`` is one)."""

    @property
    def state(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def run_at(self) -> datetime.datetime | None: ...
    @property
    def created_at(self) -> datetime.datetime: ...
    @property
    def result(self) -> Any: ...
    @property
    def last_error(self) -> dict[str, Any] | None: ...
    @property
    def history(self) -> Sequence[AttemptLike]: ...
    @property
    def type(self) -> str: ...


def timestamp(value: datetime.datetime | None) -> str | None:
    if value is None:
        return None
    # isoformat is several times cheaper than strftime, and the mirror formats a dozen times per status.
    return value.astimezone(datetime.timezone.utc).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def _truncate(text: str | None, limit: int = model.MAX_STATUS_ERROR_CHARS) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def capped_result(result: Any) -> Any:
    if result is None:
        return None
    encoded = json.dumps(result, separators=(",", ":"))
    if len(encoded.encode()) <= model.MAX_STATUS_RESULT_BYTES:
        return result
    return {
        "truncated": True,
        "bytes": len(encoded.encode()),
        "message": f"result larger than {model.MAX_STATUS_RESULT_BYTES} bytes; `kubetask history` shows it in full",
    }


def _condition(type_: str, ok: bool, reason: str, message: str, when: datetime.datetime | None) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message,
            "lastTransitionTime": timestamp(when)}


def build(row: RowLike, no_pool_for: str | None = None) -> dict[str, Any]:
    """The whole status; ``no_pool_for`` names the queue when no worker pool serves it."""
    phase = model.PHASE_BY_STATE[row.state]
    history = [
        {
            "number": a.number,
            "worker": a.worker_pod,
            "startedAt": timestamp(a.started_at),
            "finishedAt": timestamp(a.finished_at),
            "outcome": a.outcome,
            "error": _truncate(f"{a.error_type}: {a.error_message or ''}" if a.error_type else None, 512),
            "exitCode": a.exit_code,
            "reason": _truncate(a.reason, 64),
        }
        for a in list(row.history)[-model.STATUS_HISTORY_LENGTH:]
    ]
    for entry in history:
        for key in [k for k, v in entry.items() if v is None]:
            del entry[key]
    last_error = None
    if row.last_error:
        last_error = {
            "type": str(row.last_error.get("type", "Error")),
            "message": _truncate(str(row.last_error.get("message", ""))),
            "attempt": row.last_error.get("attempt"),
        }
    conditions = [_condition("Admitted", True, "Admitted", "stored in PostgreSQL", row.created_at)]
    if phase.finished:
        conditions.append(_condition("Finished", True, phase.value, f"finished as {phase.value}", row.finished_at))
    # Only while refused: a Task retried after the admin let its namespace in keeps the refusal as its
    # last error (until an attempt replaces it), but is no longer refused.
    if phase is model.Phase.DEAD_LETTER and last_error is not None and last_error["type"] == model.QUEUE_REFUSED:
        conditions.append(_condition("QueueAdmitted", False, model.QUEUE_REFUSED, str(last_error["message"]),
                                     row.finished_at))
    waiting = phase in (model.Phase.QUEUED, model.Phase.RETRYING)
    if waiting and no_pool_for is not None and row.type != model.CONTAINER_TYPE:  # the leader runs those
        conditions.append(_condition(
            "WorkerPool", False, "NoWorkerPool",
            f"no worker pool serves queue {no_pool_for!r}: the Task waits until one does (a Deployment labelled "
            f"kubetask.io/pool with annotation kubetask.io/queue: {no_pool_for}), or re-create it with another spec.queue",
            row.created_at))
    return {
        "phase": phase.value,
        "attempts": row.attempts,
        "nextAttemptAt": timestamp(row.run_at) if waiting else None,
        "worker": row.worker_pod,
        "startedAt": timestamp(row.started_at),
        "finishedAt": timestamp(row.finished_at) if phase.finished else None,
        "result": capped_result(row.result) if phase is model.Phase.SUCCEEDED else None,
        "lastError": last_error,
        "history": history,
        "conditions": conditions,
        "observedGeneration": 1,
    }


REFUSED = "InvalidSpec"
"""``lastError.type`` of a Task refused at admission (the orphan sweep deletes those after a while)."""


def rejected(reason: str, message: str, now: datetime.datetime) -> dict[str, Any]:
    """Status of a Task the operator refuses to admit (the CRD schema could not catch it)."""
    return {
        "phase": model.Phase.DEAD_LETTER.value,
        "attempts": 0,
        "lastError": {"type": reason, "message": _truncate(message)},
        "finishedAt": timestamp(now),
        "conditions": [
            _condition("Admitted", False, reason, message, now),
            _condition("Finished", True, model.Phase.DEAD_LETTER.value, message, now),
        ],
        "observedGeneration": 1,
    }
