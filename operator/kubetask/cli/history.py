"""Commands that read PostgreSQL: the history of a Task (also after its object is gone), and per-queue stats."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any, Callable, Sequence

from kubetask import logs
from kubetask.cli import terminal, tasks

if TYPE_CHECKING:
    from kubetask import db


async def with_db(fn: Callable[[Any], Any]) -> Any:
    from kubetask import db, settings

    try:
        database = settings.DatabaseSettings.from_env()
    except settings.SettingsError as err:
        raise terminal.CliError(f"{err}; this command reads PostgreSQL: set DATABASE_URL", terminal.EXIT_USAGE) from None
    conn = await db.connection.connect(database.url, application_name="kubetask-cli")
    try:
        return await fn(conn)
    finally:
        await conn.close()


def history(args: argparse.Namespace) -> int:
    from kubetask import db

    namespace = "" if args.uid else tasks.namespace_of(args)
    if namespace:
        check_access(args, namespace)

    async def run(conn: Any) -> tuple[Any, Any]:
        rows = [await db.reads.get_task(conn, args.uid)] if args.uid else await db.reads.find_tasks(
            conn, namespace, args.name)
        rows = [r for r in rows if r is not None]
        if not rows or (args.uid and not _may_read(args, rows[0].namespace)):
            return None, []  # a uid in a namespace the caller may not read is not found: no existence leaks
        return rows[0], await db.reads.task_history(conn, rows[0].uid)

    task, attempts = asyncio.run(with_db(run))
    if task is None:
        what = f"uid {args.uid}" if args.uid else f"Task {namespace}/{args.name}"
        raise terminal.CliError(f"no history for {what} in PostgreSQL", terminal.EXIT_NOT_FOUND)

    def render() -> str:
        head = logs.printable(f"Task {task.namespace}/{task.name} uid={task.uid} type={task.type} "
                              f"queue={task.queue} state={task.state} attempts={task.attempts}")
        text = head + "\n" + attempt_table(task.type, attempts)
        if args.tracebacks:
            text += "".join(f"\n\n--- attempt {a.number}\n{a.traceback}" for a in attempts if a.traceback)
        return text

    terminal.emit({"task": terminal.plain(task), "attempts": [terminal.plain(a) for a in attempts]}, args.output, render)
    return terminal.EXIT_OK


def attempt_table(task_type: str, attempts: Sequence[db.reads.AttemptRow]) -> str:
    """One line per attempt; a container Task's also say its pod's exit code and why it ended."""
    from kubetask import model

    container = task_type == model.CONTAINER_TYPE
    headers = ["#", "POD" if container else "WORKER", "STARTED", "TOOK", "OUTCOME"]
    headers += ["EXIT", "REASON", "ERROR"] if container else ["ERROR"]
    rows = []
    for a in attempts:
        took = f"{(a.finished_at - a.started_at).total_seconds():.3f}s" if a.finished_at else "running"
        error = f"{a.error_type}: {a.error_message}" if a.error_type else ""
        row: list[Any] = [a.number, a.worker_pod, a.started_at.strftime("%Y-%m-%d %H:%M:%S"), took, a.outcome]
        row += [a.exit_code, a.reason, error[:100]] if container else [error[:100]]
        rows.append(row)
    return terminal.table(headers, rows)


def _may_read(args: argparse.Namespace, namespace: str) -> bool:
    return bool(args.no_access_check or tasks.api_client().may_get_tasks(namespace))


def check_access(args: argparse.Namespace, namespace: str) -> None:
    """PostgreSQL holds every namespace's history: answer only where the caller may read the Tasks themselves."""
    if not _may_read(args, namespace):
        raise terminal.CliError(
            f"you may not get Tasks in namespace {namespace} (the API server's SelfSubjectAccessReview said no), "
            "so their history is not shown either: ask for get on tasks.kubetask.io there, or, as the database's "
            "administrator, pass --no-access-check", terminal.EXIT_FORBIDDEN)


def stats(args: argparse.Namespace) -> int:
    from kubetask import db

    async def read(conn: Any) -> tuple[list[db.reads.QueueStats], dict[str, db.queues.QueueRow]]:
        return await db.reads.queue_stats(conn, args.window), await db.queues.rows(conn)

    stats, limits = asyncio.run(with_db(read))
    # A queue with a Queue object is shown even when idle: a paused queue with nothing in it is worth seeing.
    listed = {s.queue for s in stats}
    stats = sorted([*stats, *(db.reads.QueueStats(name, 0, 0, 0, 0, 0.0, 0, 0, 0, 0)
                              for name in limits if name not in listed)], key=lambda s: s.queue)
    if args.queue:
        stats = [s for s in stats if s.queue == args.queue]

    def limit_words(row: db.queues.QueueRow | None) -> str:
        if row is None:
            return "-"
        words = [f"max {row.max_running}" if row.max_running is not None else "",
                 f"{row.rate_tasks}/{row.rate_period_seconds}s" if row.rate_tasks is not None else "",
                 f"key {row.concurrency_key_limit}" if row.concurrency_key_limit is not None else ""]
        return ", ".join(w for w in words if w) or "none"

    def render() -> str:
        if not stats:
            return "No tasks in PostgreSQL yet."
        rows = [[s.queue, s.due, s.scheduled, s.running, s.retrying, s.succeeded, s.dead_letter,
                 s.dead_letter_total, f"{s.succeeded / args.window:.1f}/s",
                 f"{s.oldest_due_seconds:.1f}s" if s.due else "-",
                 ("yes" if limits[s.queue].paused else "no") if s.queue in limits else "-",
                 limit_words(limits.get(s.queue))]
                for s in stats]
        window = f"{args.window:g}s"
        return terminal.table(["QUEUE", "WAITING", "SCHEDULED", "RUNNING", "RETRYING", f"SUCCEEDED/{window}",
                      f"DEAD/{window}", "DEAD-LETTER", "THROUGHPUT", "OLDEST WAITING", "PAUSED", "LIMITS"], rows)

    def plain(s: db.reads.QueueStats) -> dict[str, Any]:
        row = limits.get(s.queue)
        # The Queue's limits as the claim enforces them (its row); null: no Queue object, open and unlimited.
        queue = None if row is None else {
            "paused": row.paused, "max_running": row.max_running, "concurrency_key_limit": row.concurrency_key_limit,
            "rate_limit": None if row.rate_tasks is None else {"tasks": row.rate_tasks,
                                                                 "period_seconds": row.rate_period_seconds}}
        return {**terminal.plain(s), "queue_object": queue}

    terminal.emit([plain(s) for s in stats], args.output, render)
    return terminal.EXIT_OK
