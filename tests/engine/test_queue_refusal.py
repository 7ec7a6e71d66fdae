"""A Task from a namespace its Queue does not admit never runs, in any order of events, and is refused
visibly: a dead letter whose error names the Queue, the namespace and the fix.

Each case is a sequence of steps on the real database; the rows a Queue's watch would write are written
directly (``db.queues.upsert``), with the namespaces its selector matched. After every step nothing of the
outside namespace may have been claimed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kubetask import db, model

QUEUE = "default"
INSIDE, OUTSIDE = "team-a", "team-b"
SELECTOR = {"matchLabels": {"team": "a"}}


def row(*allowed: str, selector: dict[str, Any] | None = None) -> db.queues.QueueRow:
    return db.queues.QueueRow(name=QUEUE, namespace_selector=SELECTOR if selector is None else selector,
                              allowed_namespaces=tuple(allowed))


class Story:
    """One task in the outside namespace and one inside, through a sequence of steps."""

    def __init__(self, conn: db.connection.Conn, new_task: Callable[..., db.queue.NewTask]) -> None:
        self.conn = conn
        self.outside = new_task(namespace=OUTSIDE, name="outsider")
        self.inside = new_task(namespace=INSIDE, name="insider")
        self.ran: list[str] = []

    async def admit(self) -> None:
        await db.queue.admit(self.conn, [self.outside, self.inside])

    async def queue(self, queue_row: db.queues.QueueRow) -> None:
        await db.queues.upsert(self.conn, queue_row)

    async def unqueue(self) -> None:
        await db.queues.delete(self.conn, QUEUE)

    async def claim(self) -> None:
        for task in await db.queue.claim(self.conn, QUEUE, "pod/1", "pod", 10, 30):
            self.ran.append(task.namespace)
            assert task.namespace != OUTSIDE, "an outside Task was claimed"

    async def sweep(self) -> None:
        await db.queues.refuse_outside_namespaces(self.conn)


async def state_of(conn: db.connection.Conn, task: db.queue.NewTask) -> tuple[str, dict[str, Any] | None]:
    found = await db.reads.get_task(conn, task.uid)
    assert found is not None
    return found.state, found.last_error


#: (story, its steps, whether the inside Task ran).
STORIES: list[tuple[str, list[tuple[str, Any]], bool]] = [
    ("admitted after the Queue: refused at once",
     [("queue", row(INSIDE)), ("admit", None), ("claim", None)], True),
    ("created before the Queue existed",
     [("admit", None), ("queue", row(INSIDE)), ("claim", None), ("sweep", None)], True),
    ("the claim keeps it out before the sweep runs",
     [("admit", None), ("queue", row(INSIDE)), ("claim", None), ("claim", None), ("sweep", None)], True),
    ("selector narrowed while it waits",
     [("queue", row(INSIDE, OUTSIDE, selector={})), ("admit", None), ("queue", row(INSIDE)), ("claim", None),
      ("sweep", None)], True),
    ("namespace relabelled out of the selector",
     [("queue", row(INSIDE, OUTSIDE)), ("admit", None), ("queue", row(INSIDE)), ("sweep", None), ("claim", None)],
     True),
    ("the selector admits no namespace at all",
     [("admit", None), ("queue", row()), ("sweep", None), ("claim", None)], False),
    ("swept twice: refused once",
     [("queue", row(INSIDE)), ("admit", None), ("sweep", None), ("sweep", None), ("claim", None)], True),
]


@pytest.mark.parametrize(("steps", "inside_runs"), [s[1:] for s in STORIES], ids=[s[0] for s in STORIES])
async def test_an_outside_task_never_runs_and_is_refused_naming_the_queue_and_the_fix(
        conn: db.connection.Conn, new_task, steps: list[tuple[str, Any]], inside_runs: bool) -> None:
    story = Story(conn, new_task)
    for step, argument in steps:
        method = getattr(story, step)
        await (method(argument) if argument is not None else method())
    await story.claim()
    assert OUTSIDE not in story.ran
    state, error = await state_of(conn, story.outside)
    assert state == "dead_letter" and error is not None
    assert error["type"] == model.QUEUE_REFUSED
    message = error["message"]
    for words in (f"Queue {QUEUE} does not admit Tasks from namespace {OUTSIDE}", '"team": "a"',
                  f"label namespace {OUTSIDE}", f"kubectl edit queue {QUEUE}",
                  "kubectl annotate task outsider kubetask.io/retry=$(date +%s) --overwrite"):
        assert words in message, message
    assert story.ran == ([INSIDE] if inside_runs else [])
    assert (await state_of(conn, story.inside))[0] == ("running" if inside_runs else "dead_letter")


async def test_a_running_task_finishes_when_its_namespace_is_no_longer_admitted(conn: db.connection.Conn,
                                                                                new_task) -> None:
    task = new_task(namespace=OUTSIDE)
    await db.queue.admit(conn, [task])
    [held] = await db.queue.claim(conn, QUEUE, "pod/1", "pod", 1, 30)
    await db.queues.upsert(conn, row(INSIDE))
    assert await db.queues.refuse_outside_namespaces(conn) == []
    assert await db.queue.complete(conn, held.id, held.lease_owner, held.attempt, "done")
    assert (await state_of(conn, task))[0] == "succeeded"


async def test_a_retrying_task_is_refused_when_its_namespace_is_no_longer_admitted(conn: db.connection.Conn,
                                                                                   new_task) -> None:
    task = new_task(namespace=OUTSIDE)
    await db.queue.admit(conn, [task])
    [held] = await db.queue.claim(conn, QUEUE, "pod/1", "pod", 1, 30)
    assert await db.queue.fail(conn, held.id, held.lease_owner, held.attempt, error_type="E", message="m",
                               traceback=None, retry_in_seconds=0)
    await db.queues.upsert(conn, row(INSIDE))
    assert await db.queues.refuse_outside_namespaces(conn) == [(OUTSIDE, task.name, QUEUE)]
    state, error = await state_of(conn, task)
    assert state == "dead_letter" and error is not None and error["attempt"] == 1


async def test_a_refused_task_runs_after_the_admin_widens_the_selector_and_it_is_retried(
        conn: db.connection.Conn, new_task) -> None:
    task = new_task(namespace=OUTSIDE)
    await db.queues.upsert(conn, row(INSIDE))
    await db.queue.admit(conn, [task])
    assert (await state_of(conn, task))[0] == "dead_letter"
    await db.queues.upsert(conn, row(INSIDE, OUTSIDE))
    assert await db.queue.claim(conn, QUEUE, "pod/1", "pod", 1, 30) == [], "widening alone does not run it"
    assert await db.queue.retry_dead(conn, task.uid, "token-1")
    [claimed] = await db.queue.claim(conn, QUEUE, "pod/1", "pod", 1, 30)
    assert claimed.uid == task.uid


async def test_a_retried_task_still_outside_is_refused_again(conn: db.connection.Conn, new_task) -> None:
    task = new_task(namespace=OUTSIDE)
    await db.queues.upsert(conn, row(INSIDE))
    await db.queue.admit(conn, [task])
    assert await db.queue.retry_dead(conn, task.uid, "token-1")
    assert await db.queue.claim(conn, QUEUE, "pod/1", "pod", 1, 30) == []
    assert await db.queues.refuse_outside_namespaces(conn) == [(OUTSIDE, task.name, QUEUE)]


async def test_an_empty_selector_and_a_deleted_queue_admit_every_namespace(conn: db.connection.Conn,
                                                                           new_task) -> None:
    await db.queues.upsert(conn, db.queues.QueueRow(name=QUEUE))  # namespaceSelector {}: allowed None
    first = new_task(namespace=OUTSIDE)
    await db.queue.admit(conn, [first])
    assert [t.uid for t in await db.queue.claim(conn, QUEUE, "pod/1", "pod", 5, 30)] == [first.uid]
    await db.queues.upsert(conn, row(INSIDE))
    await db.queues.delete(conn, QUEUE)
    second = new_task(namespace=OUTSIDE)
    await db.queue.admit(conn, [second])
    assert [t.uid for t in await db.queue.claim(conn, QUEUE, "pod/1", "pod", 5, 30)] == [second.uid]
