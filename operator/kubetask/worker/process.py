"""The worker process: settings from the environment, SIGTERM as a graceful stop, the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import psycopg

from kubetask import db, handlers, logs, metrics, settings, supervise
from kubetask.worker import recycle
from kubetask.worker.runner import Worker

logger = logging.getLogger("kubetask.worker")

T = TypeVar("T")


async def run(config: settings.WorkerSettings, database: settings.DatabaseSettings,
              stop: asyncio.Event | None = None, *, registry: handlers.Registry | None = None) -> None:
    """Run a worker until ``stop`` is set, then stop gracefully (see the module docstring)."""
    worker = Worker(config, database, stop or asyncio.Event(), registry or handlers.registry)
    await worker.run()


async def _serve(config: settings.WorkerSettings, database: settings.DatabaseSettings,
                 registry: handlers.Registry) -> tuple[int, int]:
    """Run the worker until it stops; its exit status and how many handler threads it abandoned."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(config, database, stop, registry)
    await worker.run()
    return (0 if worker.recycled is None else recycle.EXIT_CODE), worker.abandoned_threads


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the worker's event loop: uvloop when it is installed, asyncio's own otherwise.

    uvloop takes a clear share off the worker's CPU per task (``bench/engine.py``
    measures it); psycopg's async connections run on either.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _check_role(dsn: str, wait_seconds: float) -> str | None:
    """Wait (bounded) until the schema exists and this worker's role may use it; say so when the role could
    do what only the operator should (workers run tenant code). Returns what to fix, if it never could."""
    delays = supervise.Delays(first=0.2, cap=2.0)
    deadline = time.monotonic() + wait_seconds
    told = False
    async with await db.connection.connect(dsn, "kubetask-probe") as conn:
        while not await db.roles.may_work(conn):
            if time.monotonic() > deadline:
                me = await db.roles.whoami(conn)
                return (f"the database role {me.role} may not run a worker's statements after {wait_seconds:g} s: "
                        f"either the operator has not migrated this database yet (is it running, on the same "
                        f"database?), or {me.role} is in no kubetask role: GRANT {db.roles.WORKER} TO {me.role};")
            if not told:
                logger.info("waiting for the operator to migrate the database and grant this worker's role")
                told = True
            await asyncio.sleep(delays.next())
        me = await db.roles.whoami(conn)
    if me.superuser or me.owns_schema:
        logger.warning(
            "this worker connects to PostgreSQL as %s, %s: the handlers it runs could alter or delete every "
            "task and its history. Give workers a role of their own in %s (CREATE ROLE app_worker LOGIN "
            "PASSWORD '…' IN ROLE %s) and its URL (chart: database.workerSecret)",
            me.role, "a superuser" if me.superuser else "the owner of kubetask's tables",
            db.roles.WORKER, db.roles.WORKER)
    return None


def main() -> int:
    """Entry point of a worker process: settings from the environment, stop on SIGTERM/SIGINT.

    Returns the exit status: 0 after a graceful stop, 1 when PostgreSQL is not
    reachable within ``KUBETASK_DATABASE_WAIT_SECONDS`` of start, 2 when the
    settings or a handler module are wrong, or the metrics or liveness port is
    taken, 3 when the worker recycled itself because timed-out handlers'
    threads, which cannot be stopped, took all the room it has for them.
    """
    try:
        log_settings = settings.LogSettings.from_env()
    except settings.SettingsError as error:
        print(f"kubetask worker: {error}", file=sys.stderr)
        return 2
    if not logs.configured():  # `kubetask worker` has configured it already (with --log-level)
        logs.configure(log_settings.format or "json", log_settings.level)
    try:
        config = settings.WorkerSettings.from_env()
        database = settings.DatabaseSettings.from_env()
        registry = handlers.load(config.handler_modules)
    except (settings.SettingsError, handlers.HandlerModuleError) as error:
        logger.error("%s", error)
        return 2
    try:
        run_loop(db.connection.wait_until_reachable(
            database.url, database.wait_seconds,
            lambda error, delay: logger.warning("waiting for PostgreSQL (%s); retrying in %.1fs", error, delay)))
    except db.connection.DatabaseUnreachable as error:
        logger.error("%s", error)
        return 1
    try:
        problem = run_loop(_check_role(database.url, database.wait_seconds))
    except psycopg.OperationalError as error:  # lost it again since: exit, and the restart waits again
        logger.error("PostgreSQL went away while checking this worker's role: %s", error)
        return 1
    if problem is not None:
        logger.error("%s", problem)
        return 1
    try:
        code, abandoned = run_loop(_serve(config, database, registry))
    except metrics.EndpointError as error:
        logger.error("%s", error)
        return 2
    if abandoned:
        # Interpreter exit would wait for those threads; their attempts are recorded or handed back already.
        logging.shutdown()
        os._exit(code)
    return code
