"""The worker process: settings from the environment, SIGTERM as a graceful stop, the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import psycopg

from kubetask import db, handlers, logs, metrics, settings
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


async def _warn_if_privileged(dsn: str) -> None:
    """A worker runs tenant code: say so when its credential could do what only the operator should."""
    try:
        async with await db.connection.connect(dsn, "kubetask-probe") as conn:
            me = await db.roles.whoami(conn)
    except psycopg.Error as error:  # the claim loop reports and retries a database it cannot use
        logger.debug("could not check the database role: %s", error)
        return
    if me.superuser or me.owns_schema:
        logger.warning(
            "this worker connects to PostgreSQL as %s, %s: the handlers it runs could alter or delete every "
            "task and its history. Give workers a role of their own in %s (CREATE ROLE app_worker LOGIN "
            "PASSWORD '…' IN ROLE %s) and its URL (chart: database.workerSecret)",
            me.role, "a superuser" if me.superuser else "the owner of kubetask's tables",
            db.roles.WORKER, db.roles.WORKER)


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
    run_loop(_warn_if_privileged(database.url))
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
