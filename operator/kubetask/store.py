"""PostgreSQL: the durable queue and the permanent history.

Every statement lives in ``sql/queries.sql`` under a ``-- name:`` header and is
loaded once into ``QUERIES``; this module only binds parameters and shapes
rows. Each public function is one state change, and nearly every one is a
single statement (data-modifying CTEs) so that it is one round trip and, on an
autocommit connection, one transaction: the claim picks rows with
``FOR UPDATE SKIP LOCKED``, marks them running and inserts their attempt rows
at once; a completion updates the task and its attempt at once. A busy worker
does both in the same statement (``complete_and_claim``): the successes of its
last batch and the claim of the next, one round trip per batch. The only
function with two statements is ``rescue_expired``, because the backoff
decision is made in Python (``retry.decide``) between locking the expired rows
and updating them; it runs them in one explicit transaction.

Connections must be in autocommit mode (``connect`` makes them so): LISTEN
needs it, and a statement then commits by itself. A caller that wants several
calls in one transaction can wrap them in ``conn.transaction()``.

Contract with the operator (see the migration for the states):

* ``version`` is bumped by every state-changing statement and each such
  statement notifies ``kubetask_status``; the outbox is the rows with
  ``version > mirrored_version`` (``pending_status`` / ``mark_mirrored``).
* Statements that make work due notify ``kubetask_queue`` with the queue name.
* Attempt accounting: ``attempts`` counts attempts ever started (the latest
  attempt's number); ``attempts - budget_base`` is what the retry budget has
  spent. A retry from dead letter starts a new budget; a handed-back attempt
  (graceful shutdown) does not spend the budget; a lost attempt (expired
  lease) does, so a task that kills its worker cannot loop forever.

PostgreSQL cannot store the NUL character (U+0000) in ``text`` or ``jsonb``.
Payloads containing one are refused by ``admit`` with ``NulCharacterError``
naming the Task and the JSON path (encode binary data, e.g. as base64); the
worker refuses such results the same way; error messages and tracebacks, which
are ours to record, get each NUL replaced by the visible ``\\x00``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import importlib.resources
import random
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, LiteralString

import psycopg
import psycopg.conninfo
from psycopg.rows import TupleRow, class_row
from psycopg.types.json import Jsonb

from kubetask import retry

Conn = psycopg.AsyncConnection[TupleRow]
"""Connections used here: autocommit, tuple rows (functions choose their own row factory)."""

QUEUE_CHANNEL = "kubetask_queue"
"""NOTIFY channel woken when work becomes due; the payload is the queue name."""

STATUS_CHANNEL = "kubetask_status"
"""NOTIFY channel woken when a row's status changed (empty payload)."""

HISTORY_LENGTH = 10
"""Attempts ``pending_status`` returns per task: enough for a status, small for etcd."""

MAX_ERROR_MESSAGE_CHARS = 4_000
"""Error messages are cut to this: they land in the Task status (etcd)."""

MAX_TRACEBACK_CHARS = 32_000
"""Tracebacks are cut to their last this-many characters (the innermost frames matter)."""


# --------------------------------------------------------------------------- SQL

_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def _trusted(text: str) -> LiteralString:
    """SQL read from a file shipped in this package: as trusted as a literal in the source.

    (mypy treats LiteralString as str; the annotation documents the intent.)
    """
    return text


def _load_queries(text: str) -> dict[str, LiteralString]:
    """Split queries.sql on its ``-- name:`` headers."""
    parts = _HEADER.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in queries:
            raise ValueError(f"queries.sql: query {name!r} is defined twice")
        # The file ships in the package and is as trusted as a literal.
        queries[name] = _trusted(body.strip())
    return queries


QUERIES: Mapping[str, LiteralString] = _load_queries(
    importlib.resources.files("kubetask").joinpath("sql", "queries.sql").read_text(encoding="utf-8")
)


def _migrations() -> list[tuple[str, LiteralString]]:
    folder = importlib.resources.files("kubetask").joinpath("sql", "migrations")
    files = sorted((entry.name, entry) for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), _trusted(entry.read_text(encoding="utf-8")))
            for name, entry in files]


# ------------------------------------------------------------------------- types

class NulCharacterError(ValueError):
    """A value holds U+0000, which PostgreSQL cannot store in text or jsonb."""


@dataclasses.dataclass(frozen=True)
class NewTask:
    """A Task as admitted into the queue (the spec, flattened)."""

    uid: str
    namespace: str
    name: str
    type: str
    payload: dict[str, Any]
    queue: str = "default"
    priority: int = 0
    max_retries: int = 3
    backoff_initial_seconds: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_seconds: float = 300.0
    backoff_jitter: float = 0.1
    timeout_seconds: int | None = None
    run_at: datetime.datetime | None = None
    """None: due now (the database's clock)."""
    ttl_seconds_after_finished: int | None = None
    """Delete the finished Task object this long after it finished (see ``expired_ttl``); None: keep it."""


@dataclasses.dataclass(frozen=True)
class ClaimedTask:
    """A task a worker now holds a lease on; ``attempt`` is the attempt's number."""

    id: int
    uid: str
    namespace: str
    name: str
    queue: str
    type: str
    payload: dict[str, Any]
    attempt: int
    attempt_in_budget: int
    timeout_seconds: int | None
    max_retries: int
    backoff_initial_seconds: float
    backoff_factor: float
    backoff_max_seconds: float
    backoff_jitter: float
    lease_owner: str
    worker_pod: str
    waited_seconds: float = 0.0
    """Seconds from when the task was due (``run_at``) to this claim, by the database's clock."""

    @property
    def backoff(self) -> retry.Backoff:
        return retry.Backoff(
            initial_seconds=self.backoff_initial_seconds, factor=self.backoff_factor,
            max_seconds=self.backoff_max_seconds, jitter=self.backoff_jitter,
        )


@dataclasses.dataclass(frozen=True)
class Rescued:
    """A task whose lease expired: its attempt is recorded lost and it retries or dead-letters."""

    task_id: int
    uid: str
    namespace: str
    name: str
    attempt: int
    worker_pod: str
    lease_owner: str
    state: str
    """``retrying`` or ``dead_letter``."""
    run_at: datetime.datetime
    message: str
    queue: str = ""


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """One attempt, as shown in a Task's status history."""

    number: int
    worker_pod: str
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    outcome: str
    error_type: str | None
    error_message: str | None


@dataclasses.dataclass(frozen=True)
class StatusRow:
    """Everything needed to write one Task's status; ``history`` is the last attempts, oldest first."""

    id: int
    uid: str
    namespace: str
    name: str
    type: str
    queue: str
    state: str
    attempts: int
    attempts_in_budget: int
    max_retries: int
    run_at: datetime.datetime
    worker_pod: str | None
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    result: Any
    last_error: dict[str, Any] | None
    version: int
    mirrored_state: str | None
    history: list[HistoryEntry]


@dataclasses.dataclass(frozen=True)
class QueueDepth:
    ready: int
    """Queued or retrying and due now."""
    running: int
    scheduled: int
    """Queued or retrying, due in the future."""
    busy_pods: dict[str, int]
    """Worker pod name → tasks it runs now."""


@dataclasses.dataclass(frozen=True)
class AttemptRow:
    number: int
    worker_pod: str
    lease_owner: str
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    outcome: str
    error_type: str | None
    error_message: str | None
    traceback: str | None
    result: Any


@dataclasses.dataclass(frozen=True)
class TaskRow:
    id: int
    uid: str
    namespace: str
    name: str
    type: str
    payload: dict[str, Any]
    queue: str
    priority: int
    max_retries: int
    backoff_initial_seconds: float
    backoff_factor: float
    backoff_max_seconds: float
    backoff_jitter: float
    timeout_seconds: int | None
    state: str
    attempts: int
    budget_base: int
    run_at: datetime.datetime
    lease_owner: str | None
    worker_pod: str | None
    lease_expires_at: datetime.datetime | None
    result: Any
    last_error: dict[str, Any] | None
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    version: int
    mirrored_version: int
    mirrored_state: str | None


@dataclasses.dataclass(frozen=True)
class _Expired:
    id: int
    uid: str
    namespace: str
    name: str
    queue: str
    attempt: int
    attempt_in_budget: int
    max_retries: int
    backoff_initial_seconds: float
    backoff_factor: float
    backoff_max_seconds: float
    backoff_jitter: float
    worker_pod: str
    lease_owner: str
    lease_expires_at: datetime.datetime
    now: datetime.datetime


# ----------------------------------------------------------------------- helpers

def find_nul(value: Any, path: str = "$") -> str | None:
    """The JSON path of the first string (or key) holding U+0000, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return f"{path} (a key)"
            found = find_nul(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = find_nul(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _clean_text(text: str, limit: int, keep_tail: bool = False) -> str:
    text = text.replace("\x00", "\\x00")
    if len(text) <= limit:
        return text
    if keep_tail:
        return "…(truncated)\n" + text[-limit:]
    return text[:limit] + "…(truncated)"


def _check_new_task(task: NewTask) -> None:
    where = f"Task {task.namespace}/{task.name} (uid {task.uid})"
    for field in ("uid", "namespace", "name", "type", "queue"):
        if "\x00" in getattr(task, field):
            raise NulCharacterError(f"{where}: {field} contains a NUL character (U+0000), "
                                    "which PostgreSQL cannot store")
    path = find_nul(task.payload, "payload")
    if path is not None:
        raise NulCharacterError(
            f"{where}: {path} contains a NUL character (U+0000), which PostgreSQL cannot store "
            "in jsonb; encode binary data (for example as base64) before putting it in the payload"
        )


async def _one(conn: Conn, query: LiteralString, params: Mapping[str, Any]) -> tuple[Any, ...]:
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    assert row is not None, "the statement always returns one row"
    return row


# ------------------------------------------------------------------ connections

async def connect(dsn: str, application_name: str = "kubetask") -> Conn:
    """An autocommit connection: LISTEN works and each statement commits by itself."""
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name=application_name)


class DatabaseUnreachable(Exception):
    """PostgreSQL did not accept a connection within the start-up wait; the message says what to check."""


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` of a connection URL, never its password."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    host = str(parts.get("host") or "localhost")
    port = str(parts.get("port") or "5432")
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"{user}{host}:{port}/{parts.get('dbname') or ''}"


async def wait_until_reachable(dsn: str, timeout: float,
                               on_retry: Callable[[str, float], None] | None = None) -> None:
    """Return once PostgreSQL accepts a connection; raise ``DatabaseUnreachable`` after ``timeout`` s.

    A pod that starts before its database (a fresh install, a database being
    restarted) waits instead of crash-looping at once; one that can never
    reach it (a wrong host, port or password) exits after the wait, so
    Kubernetes shows CrashLoopBackOff and the logs say what to fix.
    Retries back off from 0.2 s to 5 s; ``on_retry(error, delay)`` is told
    each failure.
    """
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        attempt_timeout = max(1, min(10, int(deadline - time.monotonic()) + 1))
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=attempt_timeout,
                                                         application_name="kubetask-probe")
        except psycopg.OperationalError as error:
            # psycopg's message names host, port and user and never the password.
            reason = " ".join(str(error).split()) or type(error).__name__
            if time.monotonic() + delay > deadline:
                raise DatabaseUnreachable(
                    f"cannot reach PostgreSQL at {describe_dsn(dsn)} after {timeout:g} s: {reason}. "
                    "Check DATABASE_URL (host, port, database, user and password) and that the server "
                    "is up and accepts connections from this pod; KUBETASK_DATABASE_WAIT_SECONDS sets "
                    "how long to wait at start."
                ) from None
            if on_retry is not None:
                on_retry(reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            await conn.close()
            return


async def listen_queue(conn: Conn) -> None:
    """Subscribe ``conn`` to ``kubetask_queue`` (payload: the queue that has due work)."""
    await conn.execute(QUERIES["listen_queue"])


async def listen_status(conn: Conn) -> None:
    """Subscribe ``conn`` to ``kubetask_status`` (some row's status changed)."""
    await conn.execute(QUERIES["listen_status"])


async def migrate(conn: Conn) -> list[str]:
    """Apply pending migrations in order, under an advisory lock; return their names."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute(QUERIES["migrate_lock"])
        await conn.execute(QUERIES["create_schema_version"])
        cursor = await conn.execute(QUERIES["applied_migrations"])
        applied = {row[0] for row in await cursor.fetchall()}
        for name, sql in _migrations():
            if name in applied:
                continue
            await conn.execute(sql)
            await conn.execute(QUERIES["record_migration"], {"name": name})
            applied_now.append(name)
    return applied_now


async def try_lead(conn: Conn) -> bool:
    """Take operator leadership for as long as ``conn`` lives; False while another session holds it."""
    row = await _one(conn, QUERIES["try_lead"], {})
    return bool(row[0])


# ------------------------------------------------------------------------ queue

async def admit(conn: Conn, tasks: Sequence[NewTask]) -> int:
    """Insert new tasks in one round trip; a uid already known is skipped. Returns how many were new.

    Raises ``NulCharacterError`` (before touching the database) when a task
    holds U+0000.
    """
    if not tasks:
        return 0
    for task in tasks:
        _check_new_task(task)
    columns: dict[str, list[Any]] = {field.name: [] for field in dataclasses.fields(NewTask)}
    for task in tasks:
        for field, values in columns.items():
            value = getattr(task, field)
            values.append(Jsonb(value) if field == "payload" else value)
    row = await _one(conn, QUERIES["admit"], columns)
    return int(row[0])


async def claim(conn: Conn, queue: str, lease_owner: str, worker_pod: str, limit: int,
                lease_seconds: float) -> list[ClaimedTask]:
    """Lease up to ``limit`` due tasks of ``queue`` (priority, then run_at, then id) in one statement."""
    if limit <= 0:
        return []
    _, claimed = await complete_and_claim(conn, lease_owner, [], queue=queue, worker_pod=worker_pod,
                                          limit=limit, lease_seconds=lease_seconds)
    return claimed


@functools.lru_cache(maxsize=1024)
def _claim_with_limit(limit: int) -> LiteralString:
    """The ``claim`` statement with its LIMIT written as a literal: one prepared statement per limit.

    With ``LIMIT $n`` PostgreSQL's generic plan cannot know how small the
    limit is and assumes a tenth of the queue, so on a big table (a million
    finished rows) the plan cache judges it too costly and replans the
    statement on every call: ~0.5 ms of planning per claim, 1.6-1.9x the
    claim latency of an empty table (bench: claim_latency_ratio_1m_vs_empty).
    With the limit in the text, each limit (at most the worker's concurrency,
    + 1 for 0) gets its own prepared statement whose generic plan is as cheap
    as a custom one, so it is planned once per connection.
    """
    return _trusted(QUERIES["claim"].replace("%(limit)s", str(int(limit))))


async def complete_and_claim(conn: Conn, lease_owner: str, successes: Sequence[tuple[int, int, Any]], *,
                             queue: str, worker_pod: str, limit: int,
                             lease_seconds: float) -> tuple[set[int], list[ClaimedTask]]:
    """Record (task_id, attempt, result) successes and lease up to ``limit`` due tasks, in one statement.

    Returns the ids recorded (an id missing from it was not ours any more:
    rescued, cancelled, superseded; nothing changed for it) and the tasks
    claimed. Each task may appear once in ``successes``. ``limit`` 0 only
    records.
    """
    cursor = await conn.execute(_claim_with_limit(max(limit, 0)), {
        "done_id": [task_id for task_id, _, _ in successes],
        "done_attempt": [attempt for _, attempt, _ in successes],
        "done_results": Jsonb([result for _, _, result in successes]),
        "lease_owner": lease_owner, "queue": queue, "worker_pod": worker_pod,
        "lease_seconds": lease_seconds,
    })
    rows = await cursor.fetchall()
    recorded = set(rows[0][0]) if rows else set()
    return recorded, [ClaimedTask(*row[2:]) for row in rows if row[2] is not None]


async def heartbeat(conn: Conn, lease_owner: str, lease_seconds: float, held: Sequence[int]) -> list[int]:
    """Extend the leases of the tasks in ``held``; return those no longer leased to ``lease_owner``.

    A returned id was cancelled, rescued, or finished by someone else: the
    worker should stop running it and must not record its outcome.
    """
    if not held:
        return []
    cursor = await conn.execute(QUERIES["heartbeat"], {
        "lease_owner": lease_owner, "lease_seconds": lease_seconds, "held": list(held),
    })
    return [row[0] for row in await cursor.fetchall()]


async def complete(conn: Conn, task_id: int, lease_owner: str, attempt: int, result: Any) -> bool:
    """Record success. False (and nothing changed) when the attempt no longer holds the lease."""
    return task_id in await complete_many(conn, lease_owner, [(task_id, attempt, result)])


async def complete_many(conn: Conn, lease_owner: str, successes: Sequence[tuple[int, int, Any]]) -> set[int]:
    """Record (task_id, attempt, result) successes in one statement; return the ids recorded."""
    if not successes:
        return set()
    recorded, _ = await complete_and_claim(conn, lease_owner, successes, queue="", worker_pod="", limit=0,
                                           lease_seconds=0)
    return recorded


async def fail(conn: Conn, task_id: int, lease_owner: str, attempt: int, *, error_type: str,
               message: str, traceback: str | None, outcome: str = "failed",
               retry_at: datetime.datetime | None) -> bool:
    """Record a failed attempt: retrying until ``retry_at``, or dead letter when it is None.

    ``outcome`` is ``failed`` or ``timeout``. The decision is the caller's
    (``retry.decide``). False (and nothing changed) when the attempt no longer
    holds the lease.
    """
    if outcome not in ("failed", "timeout"):
        raise ValueError(f"outcome must be 'failed' or 'timeout', not {outcome!r}")
    row = await _one(conn, QUERIES["fail"], {
        "task_id": task_id, "lease_owner": lease_owner, "attempt": attempt,
        "error_type": _clean_text(error_type, 200),
        "message": _clean_text(message, MAX_ERROR_MESSAGE_CHARS),
        "traceback": None if traceback is None else _clean_text(traceback, MAX_TRACEBACK_CHARS, keep_tail=True),
        "outcome": outcome, "retry_at": retry_at,
    })
    return bool(row[0] == 1)


async def hand_back(conn: Conn, task_ids: Sequence[int], lease_owner: str) -> int:
    """Return running tasks to the queue (graceful shutdown) without spending their retry budget.

    Only tasks still leased to ``lease_owner`` move. Returns how many did.
    """
    if not task_ids:
        return 0
    row = await _one(conn, QUERIES["hand_back"], {"task_ids": list(task_ids), "lease_owner": lease_owner})
    return int(row[0])


async def rescue_expired(conn: Conn, limit: int = 100, rng: random.Random | None = None) -> list[Rescued]:
    """Record attempts whose lease expired as lost; retry them (with backoff) or dead-letter them.

    Lost attempts spend the retry budget. Two concurrent callers never rescue
    the same task (``FOR UPDATE SKIP LOCKED``). Backoff is computed against the
    database's clock.
    """
    rng = rng or random.Random()
    async with conn.transaction():
        cursor = conn.cursor(row_factory=class_row(_Expired))
        await cursor.execute(QUERIES["lock_expired"], {"limit": limit})
        expired = await cursor.fetchall()
        if not expired:
            return []
        decisions: list[tuple[_Expired, datetime.datetime | None, str]] = []
        for row in expired:
            message = (
                f"worker pod {row.worker_pod} stopped renewing its lease (lease owner {row.lease_owner}, "
                f"expired at {row.lease_expires_at.isoformat()}): the pod died, was killed, or lost "
                f"its database connection during attempt {row.attempt}"
            )
            decision = retry.decide(
                attempt_in_budget=row.attempt_in_budget, max_retries=row.max_retries,
                backoff=retry.Backoff(
                    initial_seconds=row.backoff_initial_seconds, factor=row.backoff_factor,
                    max_seconds=row.backoff_max_seconds, jitter=row.backoff_jitter,
                ),
                permanent=False, now=row.now, rng=rng,
            )
            retry_at = decision.at if isinstance(decision, retry.Retry) else None
            decisions.append((row, retry_at, message))
        cursor2 = await conn.execute(QUERIES["rescue"], {
            "task_id": [row.id for row, _, _ in decisions],
            "retry_at": [at for _, at, _ in decisions],
            "message": [message for _, _, message in decisions],
        })
        outcome = {row[0]: (row[1], row[2]) for row in await cursor2.fetchall()}
    return [
        Rescued(task_id=row.id, uid=row.uid, namespace=row.namespace, name=row.name,
                attempt=row.attempt, worker_pod=row.worker_pod, lease_owner=row.lease_owner,
                state=outcome[row.id][0], run_at=outcome[row.id][1], message=message, queue=row.queue)
        for row, _, message in decisions if row.id in outcome
    ]


async def cancel(conn: Conn, uid: str) -> bool:
    """The Task was deleted: a queued, running or retrying task becomes cancelled (history stays)."""
    row = await _one(conn, QUERIES["cancel"], {"uid": uid})
    return bool(row[0] == 1)


async def retry_dead(conn: Conn, uid: str, token: str | None = None) -> bool:
    """Requeue a dead-lettered (or succeeded) task now, with a fresh retry budget.

    ``token`` (the retry annotation's value) makes the request idempotent: a
    token already acted on changes nothing, so a watch event delivered twice
    does not run the task twice. None: always requeue.
    """
    row = await _one(conn, QUERIES["retry_dead"], {"uid": uid, "token": token})
    return bool(row[0] == 1)


async def cancel_missing(conn: Conn, live: Collection[str], admitted_before: datetime.datetime) -> int:
    """Cancel unfinished tasks admitted before ``admitted_before`` whose uid is not in ``live``.

    For Task objects deleted while the operator was not watching; ``live``
    is the set of Task uids listed after ``admitted_before``. Returns how many.
    """
    row = await _one(conn, QUERIES["cancel_missing"], {"live": list(live), "admitted_before": admitted_before})
    return int(row[0])


async def expired_ttl(conn: Conn, limit: int) -> list[tuple[str, str, str]]:
    """(uid, namespace, name) of finished, mirrored tasks whose object outlived ttlSecondsAfterFinished."""
    cursor = await conn.execute(QUERIES["expired_ttl"], {"limit": limit})
    return [(uid, namespace, name) for uid, namespace, name in await cursor.fetchall()]


async def mark_object_deleted(conn: Conn, uid: str) -> None:
    """Record that the Task object was deleted for its TTL, so ``expired_ttl`` no longer lists it."""
    await conn.execute(QUERIES["mark_object_deleted"], {"uid": uid})


# -------------------------------------------------------------------- retention

async def history_cutoff(conn: Conn, *, retention_days: float | None,
                         keep_last: int | None) -> datetime.datetime | None:
    """The time before which finished tasks may be deleted, or None when none may.

    A finished task goes when it finished more than ``retention_days`` ago, or
    when it is not among the ``keep_last`` most recently finished tasks (of all
    queues and namespaces); None switches a rule off. Computed once per
    retention pass: rows finishing meanwhile only make the cutoff conservative.
    """
    if retention_days is None and keep_last is None:
        return None
    row = await _one(conn, QUERIES["history_cutoff"], {"retention_days": retention_days, "keep_last": keep_last})
    cutoff: datetime.datetime | None = row[0]
    return cutoff


async def delete_history(conn: Conn, finished_before: datetime.datetime, limit: int) -> int:
    """Delete up to ``limit`` finished tasks (and their attempts) that finished before ``finished_before``.

    Oldest first, in one short statement. Never an unfinished task, one whose
    final status is not mirrored yet, or one whose Task object still waits for
    its ``ttlSecondsAfterFinished`` deletion. Returns how many tasks went:
    fewer than ``limit`` means none is left before the cutoff.
    """
    cursor = await conn.execute(QUERIES["delete_history"], {"cutoff": finished_before, "limit": limit})
    return max(cursor.rowcount, 0)


# ----------------------------------------------------------------------- mirror

def _timestamp(value: str | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromisoformat(value)


async def pending_status(conn: Conn, limit: int) -> list[StatusRow]:
    """Rows whose status is behind (the outbox), oldest version first, with their last attempts."""
    cursor = await conn.execute(QUERIES["pending_status"], {"limit": limit, "history": HISTORY_LENGTH})
    names = [column.name for column in cursor.description or ()]
    rows: list[StatusRow] = []
    for values in await cursor.fetchall():
        record = dict(zip(names, values))
        record["history"] = [
            HistoryEntry(
                number=entry["number"], worker_pod=entry["worker_pod"],
                started_at=datetime.datetime.fromisoformat(entry["started_at"]),
                finished_at=_timestamp(entry["finished_at"]), outcome=entry["outcome"],
                error_type=entry["error_type"], error_message=entry["error_message"],
            )
            for entry in record["history"]
        ]
        rows.append(StatusRow(**record))
    return rows


async def mark_mirrored(conn: Conn, items: Sequence[tuple[int, int, str]]) -> None:
    """Record (task_id, version, state) as written to the Task; an older version never wins."""
    latest: dict[int, tuple[int, str]] = {}
    for task_id, version, state in items:
        if task_id not in latest or version > latest[task_id][0]:
            latest[task_id] = (version, state)
    if not latest:
        return
    await conn.execute(QUERIES["mark_mirrored"], {
        "task_id": list(latest), "version": [v for v, _ in latest.values()],
        "state": [s for _, s in latest.values()],
    })


async def queue_depths(conn: Conn) -> dict[str, QueueDepth]:
    """Per queue with unfinished work: ready, running, scheduled, and the pods running it."""
    cursor = await conn.execute(QUERIES["queue_depths"])
    return {
        queue: QueueDepth(ready=int(ready), running=int(running), scheduled=int(scheduled),
                          busy_pods={pod: int(n) for pod, n in busy_pods.items()})
        for queue, ready, running, scheduled, busy_pods in await cursor.fetchall()
    }


async def get_task(conn: Conn, uid: str) -> TaskRow | None:
    cursor = conn.cursor(row_factory=class_row(TaskRow))
    await cursor.execute(QUERIES["get_task"], {"uid": uid})
    return await cursor.fetchone()


async def task_history(conn: Conn, uid: str) -> list[AttemptRow]:
    """Every attempt of a task, oldest first."""
    cursor = conn.cursor(row_factory=class_row(AttemptRow))
    await cursor.execute(QUERIES["task_history"], {"uid": uid})
    return await cursor.fetchall()


async def find_tasks(conn: Conn, namespace: str, name: str) -> list[TaskRow]:
    """Rows of the Tasks named ``namespace/name``, newest first (the object may be long gone)."""
    cursor = conn.cursor(row_factory=class_row(TaskRow))
    await cursor.execute(QUERIES["find_tasks"], {"namespace": namespace, "name": name})
    return await cursor.fetchall()


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """One queue's numbers, for ``kubetask stats``."""

    queue: str
    queued: int
    """Due now and waiting for a worker."""
    scheduled: int
    """Waiting for a future runAt or retry time."""
    running: int
    retrying: int
    """Failed once, due again now."""
    succeeded: int
    """Finished within the window."""
    dead_letter: int
    """Dead-lettered within the window."""
    cancelled: int
    """Cancelled within the window."""
    dead_letter_total: int
    """In the dead letter now, whenever they got there."""
    oldest_waiting_seconds: float | None
    """Age of the oldest due task still waiting (None when none waits)."""


async def queue_stats(conn: Conn, window_seconds: float = 60.0) -> list[QueueStats]:
    cursor = conn.cursor(row_factory=class_row(QueueStats))
    await cursor.execute(QUERIES["queue_stats"], {"window_seconds": window_seconds})
    return await cursor.fetchall()


# ---------------------------------------------------------------------- metrics

@dataclasses.dataclass(frozen=True)
class QueueGauges:
    """One queue's unfinished tasks, for the operator's metrics."""

    queue: str
    queued: int
    running: int
    retrying: int
    due: int
    """Queued or retrying and due now: waiting for a worker."""
    oldest_due_seconds: float
    """Age of the oldest of those, from when it became due; 0 when none waits."""


async def queue_gauges(conn: Conn) -> list[QueueGauges]:
    """Per queue with unfinished tasks; reads only unfinished rows, through their partial indexes."""
    cursor = conn.cursor(row_factory=class_row(QueueGauges))
    await cursor.execute(QUERIES["queue_gauges"])
    return await cursor.fetchall()


async def mirror_lag(conn: Conn) -> tuple[int, float]:
    """(statuses behind their row, age in seconds of the oldest change not yet mirrored; 0 when none)."""
    row = await _one(conn, QUERIES["mirror_lag"], {})
    return int(row[0]), float(row[1])
