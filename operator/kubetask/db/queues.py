"""Queues: the row that mirrors each Queue object, which the claim reads (``sql/queues.sql``).

The operator writes a row whenever it sees a Queue (created, changed, or
listed again after a restart) and deletes it with the object; the claim
(``db.queue.complete_and_claim``) honours it in the same transaction as it
claims. A queue with no row is open to every namespace and unlimited.

``allowed_namespaces`` is what the Queue's ``namespaceSelector`` matched
among the namespaces the operator knows (None: the selector is empty, every
namespace): the selector is evaluated on Kubernetes labels, which
PostgreSQL does not have, so the operator evaluates it and writes the answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from kubetask import model
from kubetask.db import sql
from kubetask.db.connection import Conn, one

QUERIES = sql.load("queues")


@dataclasses.dataclass(frozen=True)
class QueueRow:
    """A Queue as the claim reads it."""

    name: str
    paused: bool = False
    max_running: int | None = None
    rate_tasks: int | None = None
    rate_period_seconds: int | None = None
    concurrency_key_limit: int | None = None
    namespace_selector: dict[str, Any] = dataclasses.field(default_factory=dict)
    allowed_namespaces: tuple[str, ...] | None = None
    """Namespaces whose tasks may be claimed; None: every namespace."""
    generation: int = 0
    pod_policy: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The Queue's ``spec.podPolicy`` (camelCase JSON, defaults left out): how its container Tasks' pods are made."""

    @classmethod
    def of(cls, name: str, spec: model.QueueSpec, allowed_namespaces: Sequence[str] | None,
           generation: int = 0) -> "QueueRow":
        """The row of a Queue object's spec, with the namespaces its selector matches."""
        return cls(
            name=name, paused=spec.paused, max_running=spec.max_running,
            rate_tasks=spec.rate_limit.tasks if spec.rate_limit else None,
            rate_period_seconds=spec.rate_limit.period_seconds if spec.rate_limit else None,
            concurrency_key_limit=spec.concurrency_key_limit,
            namespace_selector=spec.namespace_selector.model_dump(mode="json", by_alias=True, exclude_defaults=True),
            allowed_namespaces=None if allowed_namespaces is None else tuple(sorted(allowed_namespaces)),
            generation=generation,
            pod_policy=spec.pod_policy.model_dump(mode="json", by_alias=True, exclude_defaults=True))

    @property
    def policy(self) -> model.PodPolicy:
        return model.PodPolicy.model_validate(self.pod_policy)


async def upsert(conn: Conn, row: QueueRow) -> None:
    """Write a queue's row (insert or replace); its workers are woken."""
    params = dataclasses.asdict(row)
    params["namespace_selector"] = Jsonb(row.namespace_selector)
    params["pod_policy"] = Jsonb(row.pod_policy)
    params["allowed_namespaces"] = None if row.allowed_namespaces is None else list(row.allowed_namespaces)
    await one(conn, QUERIES["upsert_queue"], params)


async def delete(conn: Conn, name: str) -> bool:
    """Remove a queue's row (its Queue was deleted): the queue is open and unlimited again."""
    row = await one(conn, QUERIES["delete_queue"], {"name": name})
    return bool(row[0])


async def get(conn: Conn, name: str) -> QueueRow | None:
    cursor = await conn.execute(QUERIES["get_queue"], {"name": name})
    found = await cursor.fetchone()
    return None if found is None else _row(found)


async def rows(conn: Conn) -> dict[str, QueueRow]:
    """Every queue's row, by name."""
    cursor = await conn.execute(QUERIES["list_queues"])
    return {row.name: row for row in map(_row, await cursor.fetchall())}


async def refuse_outside_namespaces(conn: Conn) -> list[tuple[str, str, str]]:
    """Refuse the waiting tasks whose queue's row does not admit their namespace; (namespace, name, queue) of each.

    The claim never takes them anyway; this makes the refusal visible (the mirror gives the Task its
    DeadLetter status and a Refused Event) and final.
    """
    cursor = await conn.execute(QUERIES["refuse_outside_namespaces"], {"refusal": model.QUEUE_REFUSAL_MESSAGE})
    return [(namespace, name, queue) for namespace, name, queue, _ in await cursor.fetchall()]


async def refuse_without_queue(conn: Conn, known: Sequence[str]) -> list[tuple[str, str, str]]:
    """Refuse the waiting tasks of every queue not in ``known`` (the Queue objects that exist), when the
    operator requires a Queue for every queue; (namespace, name, queue) of each."""
    cursor = await conn.execute(QUERIES["refuse_without_queue"],
                                {"known": sorted(known), "refusal": model.QUEUE_MISSING_MESSAGE})
    return [(namespace, name, queue) for namespace, name, queue, _ in await cursor.fetchall()]


def _row(found: Sequence[Any]) -> QueueRow:
    (name, paused, max_running, rate_tasks, period, key_limit, selector, allowed, generation, pod_policy) = found
    return QueueRow(name=name, paused=paused, max_running=max_running, rate_tasks=rate_tasks,
                    rate_period_seconds=period, concurrency_key_limit=key_limit, namespace_selector=selector,
                    allowed_namespaces=None if allowed is None else tuple(allowed), generation=generation,
                    pod_policy=pod_policy)
