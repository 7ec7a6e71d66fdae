"""The queue: every state change of a task's life, one statement each.

Admit (idempotent on the Task uid), claim and complete (one statement: a busy
worker records the successes of its last batch and claims the next in one
round trip), fail, heartbeat, hand back (graceful shutdown), cancel (the Task
was deleted) and retry from the dead letter. Every write a worker makes is
guarded by its lease owner and attempt number, so a late outcome of an
attempt that was rescued, cancelled or superseded changes nothing.

The retry decision is the caller's (``kubetask.retry``): ``fail`` takes the
time to retry at, or None for the dead letter.

PostgreSQL cannot store U+0000 in ``text`` or ``jsonb``. Admission refuses
payloads holding one (``kubetask.operator.admission``) and the worker refuses
such results (both through ``model.find_nul``); error messages and
tracebacks, which are ours to record, get each NUL replaced by the visible
``\\x00`` here.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Collection, Sequence
from typing import Any, LiteralString, NamedTuple

from psycopg import AsyncCursor
from psycopg.types.json import Jsonb

from kubetask import model, retry, states
from kubetask.db import sql
from kubetask.db.connection import Conn, one

QUERIES = sql.load("queue")

MAX_ATTEMPTS = 1_000
"""Attempts a task may make in all, over every retry from the dead letter (each grants up to 101): the
retry annotation, set in a loop, would otherwise run a failing task without end."""
MAX_ERROR_MESSAGE_CHARS = 4_000
"""Error messages are cut to this: they land in the Task status (etcd)."""

MAX_TRACEBACK_CHARS = 32_000
"""Tracebacks are cut to their last this-many characters (the innermost frames matter)."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """A task's retry budget and backoff, as its row holds them."""

    max_retries: int
    backoff_initial_seconds: float
    backoff_factor: float
    backoff_max_seconds: float
    backoff_jitter: float

    @property
    def backoff(self) -> retry.Backoff:
        return retry.Backoff(
            initial_seconds=self.backoff_initial_seconds, factor=self.backoff_factor,
            max_seconds=self.backoff_max_seconds, jitter=self.backoff_jitter,
        )


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
    """Delete the finished Task object this long after it finished (see ``upkeep.expired_ttl``); None: keep it."""
    concurrency_key: str | None = None
    """``spec.concurrencyKey``: the Queue's concurrencyKeyLimit counts running tasks per key. None: no key."""
    container: dict[str, Any] | None = None
    """``spec.container`` (camelCase, as written): the operator runs it as a pod, no worker claims it. None: a
    handler Task."""
    permanent_exit_codes: tuple[int, ...] = ()
    """``spec.permanentExitCodes``: a container attempt ending with one goes straight to the dead letter."""


@dataclasses.dataclass(frozen=True)
class ClaimedTask(RetryPolicy):
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
    lease_owner: str
    worker_pod: str
    waited_seconds: float = 0.0
    """Seconds from when the task was due (``run_at``) to this claim, by the database's clock."""
    container: dict[str, Any] | None = None
    """A container task's ``spec.container`` (camelCase JSON); None for a handler task."""
    permanent_exit_codes: tuple[int, ...] = ()


def clean_text(text: str, limit: int, keep_tail: bool = False) -> str:
    """Text we record ourselves (errors, tracebacks): NUL and lone surrogates made visible, cut to ``limit``.

    ``str(exception)`` can hold a lone surrogate (bytes decoded with
    ``surrogateescape``), which UTF-8 cannot encode: sent raw, the whole
    outcome would fail to record and the attempt would later count as lost.
    """
    text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    if keep_tail:
        return "…(truncated)\n" + text[-limit:]
    return text[:limit] + "…(truncated)"


async def admit(conn: Conn, tasks: Sequence[NewTask], missing_queues: Collection[str] = ()) -> int:
    """Insert new tasks in one round trip; a uid already known is skipped. Returns how many were new.

    A task whose queue's row (``db.queues``) does not admit its namespace is inserted refused, and so is
    one whose queue is in ``missing_queues`` (no Queue object, and the operator requires one).
    """
    if not tasks:
        return 0
    columns: dict[str, list[Any]] = {field.name: [] for field in dataclasses.fields(NewTask)}
    for task in tasks:
        for field, values in columns.items():
            value = getattr(task, field)
            if field == "payload" or (field == "container" and value is not None):
                value = Jsonb(value)
            elif field == "permanent_exit_codes":
                value = Jsonb(list(value))  # an array per row: one jsonb each (a SQL array must be rectangular)
            values.append(value)
    params: dict[str, Any] = {**columns, "refusal": model.QUEUE_REFUSAL_MESSAGE,
                              "missing_queues": sorted(missing_queues),
                              "missing_refusal": model.QUEUE_MISSING_MESSAGE}
    row = await one(conn, QUERIES["admit"], params)
    return int(row[0])


async def claim(conn: Conn, queue: str, lease_owner: str, worker_pod: str, limit: int,
                lease_seconds: float, containers: bool = False) -> list[ClaimedTask]:
    """Lease up to ``limit`` due tasks of ``queue`` (priority, then run_at, then id) in one statement.

    ``containers``: container tasks (the leader's, run as pods) instead of handler tasks (a worker's).
    """
    if limit <= 0:
        return []
    _, claimed, _ = await complete_and_claim(conn, lease_owner, [], queue=queue, worker_pod=worker_pod,
                                          limit=limit, lease_seconds=lease_seconds, containers=containers)
    return claimed


_RUNNERS: dict[bool, LiteralString] = {False: "t.container IS NULL", True: "t.container IS NOT NULL"}


@functools.lru_cache(maxsize=2048)
def _with_limit(query: str, limit: int, containers: bool = False) -> LiteralString:
    """The statement with its LIMIT written as a literal: one prepared statement per limit.

    With ``LIMIT $n`` PostgreSQL's generic plan cannot know how small the
    limit is and assumes a tenth of the queue, so on a big table the plan
    cache judges it too costly and replans the statement on every call
    (bench: ``claim_latency_ratio_1m_vs_empty``). With the limit in the text,
    each limit (at most the worker's concurrency, + 1 for 0) gets its own
    prepared statement whose generic plan is as cheap as a custom one, so it
    is planned once per connection.

    The runner (handler tasks or container tasks) is a literal for the same
    reason: each claim's condition then implies its own partial index's.
    """
    return sql.trusted(QUERIES[query].replace("%(limit)s", str(int(limit))).replace("%(runner)s", _RUNNERS[containers]))


class Claim(NamedTuple):
    """What one complete-and-claim did."""

    recorded: set[int]
    """Ids of the successes written."""
    claimed: list[ClaimedTask]
    throttled_seconds: float | None = None
    """Seconds until the queue's rate limit allows another claim, when it allows none now; else None."""


async def complete_and_claim(conn: Conn, lease_owner: str, successes: Sequence[tuple[int, int, Any]], *,
                             queue: str, worker_pod: str, limit: int, lease_seconds: float,
                             containers: bool = False) -> Claim:
    """Record (task_id, attempt, result) successes and lease up to ``limit`` due tasks.

    Returns the ids recorded (an id missing from it was not ours any more:
    rescued, cancelled, superseded; nothing changed for it) and the tasks
    claimed. Each task may appear once in ``successes``. ``limit`` 0 only
    records.

    A queue with no limit (or no Queue) is one statement. A queue whose Queue
    sets a limit costs a second, short transaction: the first statement
    records the successes and finds the queue limited, then ``claim_limited``
    claims holding the queue row's lock, so the queue's claimers take turns
    and each counts what the one before it claimed.
    """
    params = {"lease_owner": lease_owner, "queue": queue, "worker_pod": worker_pod, "lease_seconds": lease_seconds}
    first = {
        "done_id": [task_id for task_id, _, _ in successes],
        "done_attempt": [attempt for _, attempt, _ in successes],
        "done_results": Jsonb([result for _, _, result in successes]),
        **params,
    }
    limited_key = (queue, containers)
    if limit > 0 and limited_key in _LIMITED:
        # Known limited: record, lock and claim_limited in one pipeline with one Sync, so one network
        # round trip and one transaction (see _locked_claim). Were the queue no longer limited,
        # claim_limited claims without limits.
        async with conn.pipeline():
            recording = await conn.execute(_with_limit("complete_and_claim", 0, containers), first)
            claiming = await _locked_claim(conn, queue, limit, containers, params)
        rows = await recording.fetchall()
        claim_rows = await claiming.fetchall()
        if not (rows and rows[0][2]):
            _LIMITED.discard(limited_key)
        return Claim(set(rows[0][0]) if rows else set(),
                     [_claimed(row[2:]) for row in claim_rows if row[2] is not None],
                     claim_rows[0][1] if claim_rows else None)
    cursor = await conn.execute(_with_limit("complete_and_claim", max(limit, 0), containers), first)
    rows = await cursor.fetchall()
    recorded: set[int] = set(rows[0][0]) if rows else set()
    limited = bool(rows[0][2]) if rows else False
    claimed = [_claimed(row[3:]) for row in rows if row[3] is not None]
    if not limited or limit <= 0:
        return Claim(recorded, claimed)
    _LIMITED.add(limited_key)
    async with conn.pipeline():
        cursor = await _locked_claim(conn, queue, limit, containers, params)
    rows = await cursor.fetchall()
    throttled = rows[0][1] if rows else None
    return Claim(recorded, [_claimed(row[2:]) for row in rows if row[2] is not None], throttled)


async def _locked_claim(conn: Conn, queue: str, limit: int, containers: bool,
                        params: dict[str, Any]) -> AsyncCursor[Any]:
    """Send lock_queue and claim_limited into the open pipeline; the caller's leaving it sends the Sync.

    No ``conn.transaction()`` here: inside a pipeline psycopg syncs on entering and on leaving one, and
    each Sync waits for the server (three round trips where one will do). The statements a pipeline
    sends before its Sync run in one implicit transaction instead (the extended query protocol's rule):
    the row lock holds until the Sync commits, an error rolls everything back, and claim_limited, a
    statement of its own, takes its snapshot after the lock was granted.
    """
    await conn.execute(QUERIES["lock_queue"], {"queue": queue})
    return await conn.execute(_with_limit("claim_limited", limit, containers), params)


_LIMITED: set[tuple[str, bool]] = set()
"""Queues this process last found limited: their next claim goes straight to ``claim_limited``, pipelined
with the recording of successes. A hint only: a stale entry costs nothing but the pipeline, and is dropped."""


def _claimed(row: Sequence[Any]) -> ClaimedTask:
    (id_, uid, namespace, name, queue, type_, payload, attempt, attempt_in_budget, timeout_seconds, max_retries,
     initial, factor, max_seconds, jitter, lease_owner, worker_pod, waited, container, permanent) = row
    return ClaimedTask(
        max_retries=max_retries, backoff_initial_seconds=initial, backoff_factor=factor,
        backoff_max_seconds=max_seconds, backoff_jitter=jitter, id=id_, uid=uid, namespace=namespace, name=name,
        queue=queue, type=type_, payload=payload, attempt=attempt, attempt_in_budget=attempt_in_budget,
        timeout_seconds=timeout_seconds, lease_owner=lease_owner, worker_pod=worker_pod, waited_seconds=waited,
        container=container, permanent_exit_codes=tuple(permanent or ()))


async def complete(conn: Conn, task_id: int, lease_owner: str, attempt: int, result: Any) -> bool:
    """Record success. False (and nothing changed) when the attempt no longer holds the lease."""
    return task_id in await complete_many(conn, lease_owner, [(task_id, attempt, result)])


async def complete_many(conn: Conn, lease_owner: str, successes: Sequence[tuple[int, int, Any]]) -> set[int]:
    """Record (task_id, attempt, result) successes in one statement; return the ids recorded."""
    if not successes:
        return set()
    recorded, _, _ = await complete_and_claim(conn, lease_owner, successes, queue="", worker_pod="", limit=0,
                                           lease_seconds=0)
    return recorded


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


async def fail(conn: Conn, task_id: int, lease_owner: str, attempt: int, *, error_type: str,
               message: str, traceback: str | None, outcome: states.Outcome = states.Outcome.FAILED,
               retry_in_seconds: float | None = None, retry_at: datetime.datetime | None = None) -> bool:
    """Record a failed attempt: retrying ``retry_in_seconds`` from now on the database's clock (what the
    worker passes: ``retry.Retry.delay_seconds``) or at ``retry_at``; dead letter when both are None.

    ``outcome`` is ``failed``, ``timeout`` or ``lost`` (a container task's pod vanished). False (and nothing changed) when
    the attempt no longer holds the lease.
    """
    if outcome not in (states.Outcome.FAILED, states.Outcome.TIMEOUT, states.Outcome.LOST):
        raise ValueError(f"outcome must be 'failed', 'timeout' or 'lost', not {outcome!r}")
    row = await one(conn, QUERIES["fail"], {
        "task_id": task_id, "lease_owner": lease_owner, "attempt": attempt,
        "error_type": clean_text(error_type, 200),
        "message": clean_text(message, MAX_ERROR_MESSAGE_CHARS),
        "traceback": None if traceback is None else clean_text(traceback, MAX_TRACEBACK_CHARS, keep_tail=True),
        "outcome": str(outcome), "retry_in": retry_in_seconds, "retry_at": retry_at,
    })
    return bool(row[0] == 1)


async def hand_back(conn: Conn, task_ids: Sequence[int], lease_owner: str) -> int:
    """Return running tasks to the queue (graceful shutdown) without spending their retry budget.

    Only tasks still leased to ``lease_owner`` move. Returns how many did.
    """
    if not task_ids:
        return 0
    row = await one(conn, QUERIES["hand_back"], {"task_ids": list(task_ids), "lease_owner": lease_owner})
    return int(row[0])


async def cancel(conn: Conn, *uids: str) -> int:
    """The Tasks were deleted: their queued, running or retrying tasks become cancelled (history stays).

    Returns how many were cancelled.
    """
    if not uids:
        return 0
    row = await one(conn, QUERIES["cancel"], {"uids": list(uids)})
    return int(row[0])


async def cancel_or_tombstone(conn: Conn, uid: str, namespace: str, name: str, type: str) -> int:
    """A Task deleted before it may have been admitted: cancel its row, or leave a cancelled one in its place.

    Either way it never runs, in whichever order this and its admission reach the database.
    """
    row = await one(conn, QUERIES["cancel_or_tombstone"],
                    {"uid": uid, "namespace": namespace, "name": name, "type": type})
    return int(row[0])


async def refuse_retry(conn: Conn, uid: str, token: str) -> bool:
    """Record a retry request as acted on without requeueing; True the first time ``token`` is seen."""
    row = await one(conn, QUERIES["refuse_retry"], {"uid": uid, "token": token})
    return bool(row[0] == 1)


async def retry_dead(conn: Conn, uid: str, token: str | None = None) -> bool:
    """Requeue a dead-lettered (or succeeded) task now, with a fresh retry budget.

    ``token`` (the retry annotation's value) makes the request idempotent: a
    token already acted on changes nothing, so a watch event delivered twice
    does not run the task twice. None: always requeue.
    """
    row = await one(conn, QUERIES["retry_dead"], {"uid": uid, "token": token, "max_attempts": MAX_ATTEMPTS})
    return bool(row[0] == 1)
