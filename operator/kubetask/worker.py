"""The worker: claim due tasks of one queue, run their handlers, record every outcome.

Shape of one worker process (``run``):

* A listener connection LISTENs on ``kubetask_queue`` and wakes the claim
  loop when its queue gets work. NOTIFY is only a hint: the claim loop also
  polls every ``poll_interval_seconds``, and claims once after every
  (re)connect of the listener, so a lost notification costs latency, never work.
* The claim loop claims at most as many tasks as it has idle slots, in one
  statement, so one process never takes more than it can run and the rest
  stay for other pods. A slot is idle again as soon as its handler returns:
  the claim does not wait for the result to be written.
* Successes are group-committed. While the worker is busy (its last claim was
  full), the results ride along with its next claim: one statement records a
  batch and claims the next (``store.complete_and_claim``). Otherwise they are
  written at once (``store.complete_many``), and those that arrive while a
  write is in flight go together in the next one. An idle worker pays no extra
  latency; a busy one pays one round trip per batch instead of two per task.
  Each slot still waits for its own result to be recorded, and each row of a
  batch is guarded by the lease as before.
* Each claimed task runs in a slot. Async handlers run on the event loop;
  plain functions run in a thread pool so a blocking handler stalls neither
  the loop nor the heartbeat. ``timeoutSeconds`` is enforced with an asyncio
  timeout; a thread cannot be killed, so a timed-out plain-function handler's
  thread is abandoned (its ``ctx.cancelled`` is set so a cooperative handler
  can return) and its attempt is recorded as ``timeout`` at once.
* A heartbeat renews the leases of the tasks this process runs every
  ``heartbeat_interval_seconds``, and learns which of them it no longer holds
  (Task deleted, or rescued after this process stalled): those are stopped
  and their outcome is not recorded (someone else already did).
* Outcomes are recorded through ``store`` with the retry decision from
  ``retry``; every write is guarded by the lease, so a late result after a
  rescue changes nothing.

Graceful stop (the ``stop`` event, set by SIGTERM/SIGINT in ``main``): stop
claiming, let running tasks finish for up to ``shutdown_timeout_seconds``,
then cancel the rest and hand them back to the queue (their attempt is
recorded ``handed_back`` and does not spend the retry budget), then return.
Cancelling the task running ``run`` instead is abrupt: leases then expire and
the operator's rescuer records those attempts as lost.

Database outages: each operation reconnects with exponential backoff; the
listener re-LISTENs after reconnecting. Every write is guarded, so retrying
one whose first try may have committed is harmless. A claim whose commit was
lost with the connection leaves tasks this process does not know about; their
leases are never renewed and the rescuer returns them to the queue.

Layering: this module uses store, handlers, retry and settings; never
Kubernetes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import datetime
import inspect
import json
import logging
import os
import random
import secrets
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import psycopg

from kubetask import handlers, logs, metrics, retry, settings, store

logger = logging.getLogger("kubetask.worker")

T = TypeVar("T")


class ResultError(handlers.PermanentError):
    """The handler's result cannot be stored. Permanent: the same code returns the same kind of value."""


class ResultNotSerializable(ResultError):
    pass


class ResultTooLarge(ResultError):
    pass


class AttemptTimeout(Exception):
    """The attempt ran past the Task's timeoutSeconds."""


_OWN_ERRORS = (ResultError, AttemptTimeout, handlers.UnknownHandler)
"""Errors raised by the worker itself: their traceback would show our code, not the user's."""


def encode_result(value: Any, max_bytes: int) -> Any:
    """Check that a handler's result can be stored: JSON, no NUL character, at most ``max_bytes``."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ResultNotSerializable(
            f"the handler returned a value that is not JSON ({error}); return dicts, lists, "
            "strings, finite numbers, booleans or None"
        ) from None
    path = store.find_nul(value, "result")
    if path is not None:
        raise ResultNotSerializable(
            f"{path} contains a NUL character (U+0000), which PostgreSQL cannot store; "
            "encode binary data (for example as base64)"
        )
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise ResultTooLarge(
            f"the result is {size} bytes of JSON, more than KUBETASK_MAX_RESULT_BYTES={max_bytes}; "
            "store large results elsewhere (object storage) and return a reference"
        )
    return value


def _label(task: store.ClaimedTask) -> str:
    return f"task {task.namespace}/{task.name} (uid {task.uid}) attempt {task.attempt}"


class _Stopped(Exception):
    """The worker was asked to stop while waiting for the database."""


class _Database:
    """One connection shared by the slots, the claim loop and the heartbeat, reconnected on failure.

    psycopg serialises operations on a connection, and every statement here
    takes milliseconds, so one connection per process is enough. Operations
    also queue here, in order, rather than inside psycopg: an operation's
    arguments are then computed when the connection is free for it (the claim
    counts its idle slots at that moment, not when it started waiting).
    """

    def __init__(self, dsn: str, application_name: str, stop: asyncio.Event) -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._stop = stop
        self._conn: store.Conn | None = None
        self._lock = asyncio.Lock()
        self._turn = asyncio.Lock()

    async def _connection(self) -> store.Conn:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await store.connect(self._dsn, self._application_name)
            return self._conn

    async def _discard(self, broken: store.Conn | None) -> None:
        async with self._lock:
            if broken is not None and self._conn is broken:
                self._conn = None
                await broken.close()

    async def run(self, operation: Callable[[store.Conn], Awaitable[T]], what: str,
                  patience: float | None) -> T:
        """Run ``operation``, reconnecting with backoff on connection failures.

        ``patience``: seconds to keep trying (0: one try); None: until the
        worker is asked to stop (then ``_Stopped``).
        """
        deadline = None if patience is None else time.monotonic() + patience
        delay = 0.1
        while True:
            conn: store.Conn | None = None
            try:
                async with self._turn:
                    conn = await self._connection()
                    return await operation(conn)
            except psycopg.OperationalError as error:
                await self._discard(conn)
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                if deadline is None and self._stop.is_set():
                    raise _Stopped() from error
                logger.warning("database unavailable during %s (%s); retrying in %.1fs", what,
                               str(error).strip(), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        await self._discard(self._conn)


_Success = tuple[store.ClaimedTask, Any, "asyncio.Future[bool]"]


class _Completions:
    """Successes waiting to be written; every write takes all of them (group commit).

    Two writers take from here, each when the connection is its turn: the
    claim loop, whose claim statement carries them while the worker is busy
    (one round trip records a batch and claims the next), and a writer task of
    their own, which writes them at once when the worker is not about to claim
    (no added latency when idle). ``record`` returns once the result is written
    (True) or found to be no longer ours (False), and raises what the write
    raised after ``patience`` seconds of retries.
    """

    CARRY_SECONDS = 0.05
    """How long the writer task leaves the successes to a claim that is about to run."""

    def __init__(self, db: _Database, lease_owner: str, patience: float, carried: Callable[[], bool]) -> None:
        self._db = db
        self._lease_owner = lease_owner
        self._patience = patience
        self._carried = carried
        self._waiting: list[_Success] = []
        self._emptied = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def record(self, task: store.ClaimedTask, value: Any) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((task, value, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="kubetask-completions")
        return await future

    def take(self) -> list[_Success]:
        batch, self._waiting = self._waiting, []
        self._emptied.set()
        return batch

    def put_back(self, batch: list[_Success]) -> None:
        """A write failed: the next one retries these."""
        self._waiting[:0] = [entry for entry in batch if not entry[2].done()]

    @staticmethod
    def rows(batch: list[_Success]) -> list[tuple[int, int, Any]]:
        return [(task.id, task.attempt, value) for task, value, _ in batch]

    @staticmethod
    def settle(batch: list[_Success], recorded: set[int]) -> None:
        for task, _, future in batch:
            if not future.done():
                future.set_result(task.id in recorded)

    async def _write_once(self, conn: store.Conn) -> None:
        batch = self.take()
        if not batch:
            return
        try:
            recorded = await store.complete_many(conn, self._lease_owner, self.rows(batch))
        except BaseException:
            self.put_back(batch)
            raise
        self.settle(batch, recorded)

    async def _write(self) -> None:
        try:
            while self._waiting:
                if self._carried():
                    self._emptied.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.CARRY_SECONDS):
                            await self._emptied.wait()
                    # Whatever the claim did not take by then is written here.
                await self._db.run(self._write_once, "recording results", patience=self._patience)
        except Exception as error:
            for _, _, future in self.take():
                if not future.done():
                    future.set_exception(error)

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        for _, _, future in self.take():
            future.cancel()


@dataclasses.dataclass(eq=False)
class _Slot:
    task: store.ClaimedTask
    ctx: handlers.Context
    runner: asyncio.Task[None] | None = None
    handler: asyncio.Task[Any] | None = None
    abandoned: str | None = None
    """Why the handler was stopped from outside: ``lost`` (lease gone) or ``shutdown``."""
    finished: bool = False
    """The handler is done: the slot counts as idle while its outcome is being recorded."""


def resident_mb() -> float:
    """This process's resident memory now (not its peak), in MiB."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


class Worker:
    def __init__(self, config: settings.WorkerSettings, database: settings.DatabaseSettings,
                 stop: asyncio.Event, registry: handlers.Registry) -> None:
        self.config = config
        self.stop = stop
        self.registry = registry
        self.lease_owner = f"{config.pod_name}/{secrets.token_hex(6)}"
        self._dsn = database.url
        self._db = _Database(database.url, self._application_name, stop)
        self._completions = _Completions(self._db, self.lease_owner, config.lease_seconds,
                                         carried=self._claim_carries_results)
        self._slots: dict[int, _Slot] = {}
        self._busy = 0
        """Slots whose handler has not finished yet."""
        self._wake = asyncio.Event()
        self._more_work = False
        self._rng = random.Random()
        # Threads of timed-out handlers may linger, so allow twice the slots.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=2 * config.concurrency, thread_name_prefix="kubetask-handler")
        self._threads: set[concurrent.futures.Future[Any]] = set()
        self.metrics = metrics.WorkerMetrics(config.queue, config.concurrency, busy=lambda: self._busy,
                                             known_types=registry.names())
        self.metrics_endpoint: metrics.Endpoint | None = None

    @property
    def _application_name(self) -> str:
        return f"kubetask-worker {self.lease_owner}"[:63]

    @property
    def abandoned_threads(self) -> int:
        """Handler threads still running after their attempt was given up (timeout or shutdown)."""
        return sum(1 for future in self._threads if not future.done())

    async def run(self) -> None:
        logger.info("worker %s serves queue %r with %d slots; handlers: %s", self.lease_owner,
                    self.config.queue, self.config.concurrency, ", ".join(self.registry.names()))
        if self.config.metrics_port is not None:
            self.metrics_endpoint = await metrics.serve(self.metrics.registry, self.config.metrics_port)
        background = [
            asyncio.create_task(self._listen(), name="kubetask-listen"),
            asyncio.create_task(self._heartbeat(), name="kubetask-heartbeat"),
            asyncio.create_task(self._relay_stop(), name="kubetask-stop"),
        ]
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for job in background:
                job.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            leftovers = [slot.runner for slot in self._slots.values() if slot.runner is not None]
            for runner in leftovers:
                runner.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
            await self._completions.close()
            await self._db.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self.metrics_endpoint is not None:
                await self.metrics_endpoint.close()
        logger.info("worker %s stopped", self.lease_owner)

    # ------------------------------------------------------------------ waking

    async def _relay_stop(self) -> None:
        await self.stop.wait()
        self._wake.set()

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await store.connect(self._dsn, self._application_name)
                try:
                    await store.listen_queue(conn)
                    delay = 0.1
                    # Anything notified while we were not listening is found by this claim.
                    self._wake.set()
                    async for notification in conn.notifies():
                        if notification.payload == self.config.queue:
                            self._wake.set()
                finally:
                    await conn.close()
            except psycopg.OperationalError as error:
                logger.warning("listener connection lost (%s); reconnecting in %.1fs", str(error).strip(), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _wait_for_wake(self) -> None:
        try:
            async with asyncio.timeout(self.config.poll_interval_seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    # ---------------------------------------------------------------- claiming

    def _idle(self) -> int:
        return self.config.concurrency - self._busy

    def _claim_carries_results(self) -> bool:
        """The claim loop is about to claim (a slot freed, more work is waiting): results ride along."""
        return self._more_work and self._idle() > 0 and not self.stop.is_set()

    async def _claim(self, conn: store.Conn) -> tuple[list[store.ClaimedTask], int]:
        # Counted when the connection is ours: slots freed and results produced meanwhile ride along.
        idle = self._idle()
        batch = self._completions.take()
        if idle <= 0 and not batch:
            return [], idle
        try:
            recorded, claimed = await store.complete_and_claim(
                conn, self.lease_owner, _Completions.rows(batch), queue=self.config.queue,
                worker_pod=self.config.pod_name, limit=max(idle, 0), lease_seconds=self.config.lease_seconds)
        except BaseException:
            self._completions.put_back(batch)
            raise
        _Completions.settle(batch, recorded)
        return claimed, idle

    async def _claim_loop(self) -> None:
        while not self.stop.is_set():
            if self._idle() > 0:
                try:
                    claimed, idle = await self._db.run(self._claim, "claim", patience=None)
                except _Stopped:
                    break
                for task in claimed:
                    self._start(task)
                # A full batch suggests more is waiting: claim again as soon as a slot frees.
                self._more_work = idle <= 0 or len(claimed) == idle
            await self._wait_for_wake()
            # Cleared before the next claim: a hint arriving during that claim wakes us again.
            self._wake.clear()
            if self._idle() <= 0:
                # Woken with no idle slot: look again as soon as one frees.
                self._more_work = True

    def _start(self, task: store.ClaimedTask) -> None:
        ctx = handlers.Context(
            uid=task.uid, namespace=task.namespace, name=task.name, type=task.type, queue=task.queue,
            attempt=task.attempt, attempt_in_budget=task.attempt_in_budget, max_retries=task.max_retries,
            secrets_dir=self.config.secrets_dir,
        )
        slot = _Slot(task=task, ctx=ctx)
        self._slots[task.id] = slot
        self._busy += 1
        self.metrics.picked_up(task.waited_seconds)
        slot.runner = asyncio.create_task(self._run_slot(slot), name=f"kubetask-task-{task.id}")

    # ----------------------------------------------------------------- running

    async def _run_slot(self, slot: _Slot) -> None:
        task = slot.task
        # Every line logged from here on, the handler's own included, names the task. This asyncio
        # task has a context of its own (as do the handler's task and thread, copied from it), so
        # there is nothing to reset.
        logs.TASK.set(task)
        # Per-task lines of the happy path are DEBUG: every attempt is recorded in PostgreSQL and counted
        # in the metrics already, and a JSON line costs ~20 µs, a third of a no-op task's worker CPU.
        # Failures, retries and dead letters are WARNING and ERROR.
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: started (type %s)", _label(task), task.type)
        started = time.monotonic()
        try:
            try:
                if slot.abandoned is not None:
                    raise asyncio.CancelledError()
                handler = self.registry.get(task.type)
                slot.handler = asyncio.create_task(self._invoke(handler, slot))
                value = encode_result(await slot.handler, self.config.max_result_bytes)
            except asyncio.CancelledError:
                if slot.abandoned is None:
                    raise
                if slot.abandoned == "lost":
                    self.metrics.attempt(task.type, "discarded")
                    logger.warning("%s: stopped, the lease is no longer ours (Task deleted, or rescued "
                                   "after this worker stalled)", _label(task))
                return
            except Exception as error:
                self._free(slot)
                await self._record_failure(slot, error, time.monotonic() - started)
                return
            self._free(slot)
            await self._record_success(slot, value, time.monotonic() - started)
        finally:
            del self._slots[task.id]
            self._free(slot)
            self._check_memory(task)

    def _check_memory(self, task: store.ClaimedTask) -> None:
        """Recycle the process once it holds more memory than allowed (a leaking handler is contained)."""
        limit = self.config.max_memory_mb
        if limit is None or self.stop.is_set():
            return
        rss = resident_mb()
        if rss > limit:
            logger.warning("recycling: resident memory %.0f MiB is over KUBETASK_MAX_MEMORY_MB=%d after %s; "
                           "finishing running tasks and exiting so the pod restarts this worker",
                           rss, limit, _label(task))
            self.stop.set()

    def _free(self, slot: _Slot) -> None:
        """The handler is done: its slot may take a new task (even before the outcome is written)."""
        if not slot.finished:
            slot.finished = True
            self._busy -= 1
            if self._more_work:
                self._wake.set()

    async def _invoke(self, handler: handlers.Handler, slot: _Slot) -> Any:
        task = slot.task
        timeout = task.timeout_seconds
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                if inspect.iscoroutinefunction(handler):
                    return await handler(task.payload, slot.ctx)
                context = contextvars.copy_context()
                future = self._executor.submit(context.run, handler, task.payload, slot.ctx)
                self._threads.add(future)
                future.add_done_callback(self._threads.discard)
                value = await asyncio.wrap_future(future)
                if inspect.isawaitable(value):
                    value = await value
                return value
        except TimeoutError:
            if not deadline.expired():
                raise
            slot.ctx.cancelled.set()
            raise AttemptTimeout(
                f"the attempt ran longer than timeoutSeconds={timeout}"
                + ("" if inspect.iscoroutinefunction(handler)
                   else "; the handler's thread cannot be stopped and is abandoned")
            ) from None

    def _abandon(self, slot: _Slot, why: str) -> bool:
        if slot.handler is not None and slot.handler.done():
            return False
        slot.abandoned = why
        slot.ctx.cancelled.set()
        if slot.handler is not None:
            slot.handler.cancel()
        return True

    async def _record_success(self, slot: _Slot, value: Any, seconds: float) -> None:
        task = slot.task
        recorded = await self._completions.record(task, value)
        self.metrics.attempt(task.type, "succeeded" if recorded else "discarded", seconds)
        if recorded:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s: succeeded in %.3fs", _label(task), seconds)
        else:
            logger.warning("%s: finished in %.3fs but its result is discarded: the lease is no longer "
                           "ours (Task deleted, or rescued after this worker stalled)", _label(task), seconds)

    async def _record_failure(self, slot: _Slot, error: Exception, seconds: float) -> None:
        task = slot.task
        permanent = isinstance(error, handlers.PermanentError)
        outcome = "timeout" if isinstance(error, AttemptTimeout) else "failed"
        decision = retry.decide(
            attempt_in_budget=task.attempt_in_budget, max_retries=task.max_retries, backoff=task.backoff,
            permanent=permanent, now=datetime.datetime.now(datetime.UTC), rng=self._rng,
        )
        error_type = type(error).__qualname__
        message = str(error) or error_type
        trace = None if isinstance(error, _OWN_ERRORS) else "".join(traceback.format_exception(error))
        retry_at = decision.at if isinstance(decision, retry.Retry) else None
        recorded = await self._db.run(
            lambda conn: store.fail(conn, task.id, self.lease_owner, task.attempt, error_type=error_type,
                                    message=message, traceback=trace, outcome=outcome, retry_at=retry_at),
            f"recording the failure of {_label(task)}", patience=self.config.lease_seconds)
        self.metrics.attempt(task.type, outcome if recorded else "discarded", seconds)
        if recorded and not isinstance(decision, retry.Retry):
            self.metrics.dead_lettered(task.type)
        if not recorded:
            logger.warning("%s: failed (%s: %s) but the lease is no longer ours; nothing recorded",
                           _label(task), error_type, message)
        elif isinstance(decision, retry.Retry):
            logger.warning("%s: %s after %.3fs (%s: %s); retrying in %.1fs", _label(task), outcome, seconds,
                           error_type, message, decision.delay_seconds)
        else:
            logger.error("%s: %s after %.3fs (%s: %s); dead letter: %s", _label(task), outcome, seconds,
                         error_type, message, decision.reason)

    # --------------------------------------------------------------- heartbeat

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_seconds)
            held = list(self._slots)
            if not held:
                continue
            try:
                lost = await self._db.run(
                    lambda conn: store.heartbeat(conn, self.lease_owner, self.config.lease_seconds, held),
                    "heartbeat", patience=0)
            except psycopg.Error as error:
                logger.warning("heartbeat failed (%s); leases of %d tasks not renewed", str(error).strip(),
                               len(held))
                continue
            for task_id in lost:
                slot = self._slots.get(task_id)
                if slot is not None:
                    self._abandon(slot, "lost")

    # ---------------------------------------------------------------- shutdown

    async def _drain(self) -> None:
        if not self._slots:
            return
        timeout = self.config.shutdown_timeout_seconds
        logger.info("stopping: waiting up to %.1fs for %d running tasks", timeout, len(self._slots))
        runners = [slot.runner for slot in self._slots.values() if slot.runner is not None]
        await asyncio.wait(runners, timeout=timeout)
        handing_back = [slot for slot in list(self._slots.values()) if self._abandon(slot, "shutdown")]
        # Let every slot end (handlers cancelled, recordings in flight finished) before the hand-back.
        runners = [slot.runner for slot in self._slots.values() if slot.runner is not None]
        if runners:
            await asyncio.wait(runners, timeout=self.config.lease_seconds)
        if not handing_back:
            return
        ids = [slot.task.id for slot in handing_back]
        moved = await self._db.run(
            lambda conn: store.hand_back(conn, ids, self.lease_owner),
            "handing back tasks", patience=self.config.lease_seconds)
        for slot in handing_back:
            self.metrics.attempt(slot.task.type, "handed_back")
            logger.warning("%s: still running at shutdown; handed back to the queue", _label(slot.task),
                           extra=logs.attempt(slot.task))
        if moved != len(ids):
            logger.warning("handed back %d of %d tasks; the others were no longer ours", moved, len(ids))
        if self.abandoned_threads:
            logger.warning("%d handler threads are still running and are abandoned; their tasks may "
                           "be claimed again meanwhile", self.abandoned_threads)


async def run(config: settings.WorkerSettings, database: settings.DatabaseSettings,
              stop: asyncio.Event | None = None, *, registry: handlers.Registry | None = None) -> None:
    """Run a worker until ``stop`` is set, then stop gracefully (see the module docstring)."""
    worker = Worker(config, database, stop or asyncio.Event(), registry or handlers.registry)
    await worker.run()


async def _serve(config: settings.WorkerSettings, database: settings.DatabaseSettings,
                 registry: handlers.Registry) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(config, database, stop, registry)
    await worker.run()
    return worker.abandoned_threads


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the worker's event loop: uvloop when it is installed, asyncio's own otherwise.

    uvloop takes roughly a fifth off the worker's CPU per task (measured by
    ``bench/engine.py``); psycopg's async connections run on either.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> int:
    """Entry point of a worker process: settings from the environment, stop on SIGTERM/SIGINT.

    Returns the exit status: 0 after a graceful stop, 1 when PostgreSQL is not
    reachable within ``KUBETASK_DATABASE_WAIT_SECONDS`` of start, 2 when the
    settings or a handler module are wrong, or the metrics port is taken.
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
        run_loop(store.wait_until_reachable(
            database.url, database.wait_seconds,
            lambda error, delay: logger.warning("waiting for PostgreSQL (%s); retrying in %.1fs", error, delay)))
    except store.DatabaseUnreachable as error:
        logger.error("%s", error)
        return 1
    try:
        abandoned = run_loop(_serve(config, database, registry))
    except metrics.EndpointError as error:
        logger.error("%s", error)
        return 2
    if abandoned:
        # Interpreter exit would wait for those threads; their tasks are already handed back.
        logging.shutdown()
        os._exit(0)
    return 0
