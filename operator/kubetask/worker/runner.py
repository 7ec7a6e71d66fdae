"""The ``Worker``: claims due tasks of one queue, runs them in slots, records every outcome.

See the package docstring for the shape; this module is the mechanism.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import inspect
import logging
import random
import secrets
import time
import traceback
from typing import Any

from kubetask import db, handlers, logs, metrics, retry, settings, states, supervise
from kubetask.worker import health, invoke, recycle, watchdog
from kubetask.worker.completions import Completions
from kubetask.worker.heartbeat import Heartbeat, Leases, label as _label
from kubetask.worker.results import AttemptTimeout, OWN_ERRORS, encode_result
from kubetask.worker.sideloop import SideLoop
from kubetask.worker.threads import HandlerThreads

logger = logging.getLogger("kubetask.worker")

@dataclasses.dataclass(eq=False)
class _Slot:
    task: db.queue.ClaimedTask
    ctx: handlers.Context
    runner: asyncio.Task[None] | None = None
    handler: asyncio.Task[Any] | None = None
    abandoned: str | None = None
    """Why the handler was stopped from outside: ``lost`` (lease gone) or ``shutdown``."""
    finished: bool = False
    """The handler is done: the slot counts as idle while its outcome is being recorded."""


class Worker:
    def __init__(self, config: settings.WorkerSettings, database: settings.DatabaseSettings,
                 stop: asyncio.Event, registry: handlers.Registry) -> None:
        self.config = config
        self.stop = stop
        self.registry = registry
        self.lease_owner = f"{config.pod_name}/{secrets.token_hex(6)}"
        self._dsn = database.url
        self._db = db.connection.Shared(database.url, self._application_name, stop)
        self._completions = Completions(self._db, self.lease_owner, config.lease_seconds,
                                         carried=self._claim_carries_results)
        self._slots: dict[int, _Slot] = {}
        self._busy = 0
        """Slots whose handler has not finished yet."""
        self._wake = asyncio.Event()
        self._more_work = False
        self._throttled_seconds: float | None = None
        """From the last claim: seconds until the queue's rate limit allows one more (None: not throttled)."""
        self._rng = random.Random()
        self._threads = HandlerThreads(config.concurrency)
        self.recycled: str | None = None
        """Why this worker stopped itself and wants a fresh process (``recycle.EXIT_CODE``)."""
        self._leases = Leases()
        self._side = SideLoop("kubetask-heartbeat")
        self._heartbeat = Heartbeat(database.url, self.lease_owner, config.lease_seconds,
                                    config.heartbeat_interval_seconds, self._leases, self._lost_threadsafe)
        self._watchdog = watchdog.LoopWatchdog(config.loop_lag_warning_seconds, self._leases,
                                               on_stall=lambda: self.metrics.loop_stalled())
        self._claimed_at = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics = metrics.WorkerMetrics(config.queue, config.concurrency, busy=lambda: self._busy,
                                             known_types=registry.names(), loop_lag=lambda: self._watchdog.lag)
        self.metrics_endpoint: metrics.Endpoint | None = None
        self.health_endpoint: metrics.Endpoint | None = None

    @property
    def _application_name(self) -> str:
        return f"kubetask-worker {self.lease_owner}"[:63]

    @property
    def abandoned_threads(self) -> int:
        """Handler threads still running after their attempt was given up (timeout or shutdown)."""
        return self._threads.abandoned

    async def run(self) -> None:
        logger.info("worker %s serves queue %r with %d slots; handlers: %s", self.lease_owner,
                    self.config.queue, self.config.concurrency, ", ".join(self.registry.names()))
        self._loop = asyncio.get_running_loop()
        self._side.start()
        try:
            await self._serve()
        finally:
            self._side.stop(timeout=self.config.lease_seconds)
        logger.info("worker %s stopped", self.lease_owner)

    async def _serve(self) -> None:
        # On the side loop: what must go on while a handler blocks this loop (see ``sideloop``).
        self._side.submit(supervise.supervise("heartbeat", self._heartbeat.run, logger))
        self._side.submit(self._watchdog.observe())
        if self.config.health_port is not None:
            liveness = health.Liveness(health.Signs(
                claim_loop_at=lambda: self._claimed_at, claim_loop_exempt=self._claim_loop_exempt,
                event_loop_at=lambda: self._watchdog.last_tick, heartbeat_at=lambda: self._heartbeat.beat_at),
                self.config.liveness_stall_seconds)
            self.health_endpoint = await asyncio.wrap_future(
                self._side.submit(liveness.serve(self.config.health_port, host=str(self.config.health_address))))
        if self.config.metrics_port is not None:
            self.metrics_endpoint = await metrics.serve(self.metrics.registry, self.config.metrics_port,
                                                        host=str(self.config.metrics_address))
        background = [
            asyncio.create_task(supervise.supervise("listener", self._listen, logger, supervise.Delays(first=0.1)),
                                name="kubetask-listen"),
            asyncio.create_task(self._watchdog.tick(), name="kubetask-watchdog"),
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
            self._threads.shutdown()
            if self.metrics_endpoint is not None:
                await self.metrics_endpoint.close()
            if self.health_endpoint is not None:
                await asyncio.wrap_future(self._side.submit(self.health_endpoint.close()))

    def _claim_loop_exempt(self) -> str | None:
        if self.stop.is_set():
            return "stopping"
        if self._db.unavailable_since is not None:
            return "waiting for PostgreSQL"
        return None

    # ------------------------------------------------------------------ waking

    async def _relay_stop(self) -> None:
        await self.stop.wait()
        self._wake.set()

    async def _listen(self) -> None:
        """Wake the claim loop when this queue gets work; a (re)connect wakes it once too."""
        async with await db.connection.connect(self._dsn, self._db.application_name) as conn:
            await db.connection.listen(conn, db.connection.QUEUE_CHANNEL)
            # Anything notified while we were not listening is found by this claim.
            self._wake.set()
            async for notification in conn.notifies():
                if notification.payload == self.config.queue:
                    self._wake.set()

    async def _wait_for_wake(self) -> None:
        # A rate-limited queue says when its next token comes: look then, not a whole poll later.
        timeout = self.config.poll_interval_seconds
        if self._throttled_seconds is not None and self._idle() > 0:
            timeout = min(timeout, max(self._throttled_seconds, 0.001))
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    # ---------------------------------------------------------------- claiming

    def _idle(self) -> int:
        return self.config.concurrency - self._busy

    def _claim_carries_results(self) -> bool:
        """The claim loop is about to claim (a slot freed, more work is waiting): results ride along."""
        return self._more_work and self._idle() > 0 and not self.stop.is_set()

    async def _claim(self, conn: db.connection.Conn) -> tuple[list[db.queue.ClaimedTask], int]:
        # Counted when the connection is ours: slots freed and results produced meanwhile ride along.
        idle = self._idle()
        batch = self._completions.take()
        if idle <= 0 and not batch:
            return [], idle
        try:
            recorded, claimed, self._throttled_seconds = await db.queue.complete_and_claim(
                conn, self.lease_owner, Completions.rows(batch), queue=self.config.queue,
                worker_pod=self.config.pod_name, limit=max(idle, 0), lease_seconds=self.config.lease_seconds)
        except BaseException:
            self._completions.put_back(batch)
            raise
        Completions.settle(batch, recorded)
        if self._throttled_seconds is not None:
            self.metrics.claim_throttled()
        return claimed, idle

    async def _claim_loop(self) -> None:
        while not self.stop.is_set():
            self._claimed_at = time.monotonic()
            if self._idle() > 0:
                try:
                    claimed, idle = await self._db.run(self._claim, "claim", patience=None)
                except db.connection.Stopped:
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

    def _start(self, task: db.queue.ClaimedTask) -> None:
        ctx = handlers.Context(
            uid=task.uid, namespace=task.namespace, name=task.name, type=task.type, queue=task.queue,
            attempt=task.attempt, attempt_in_budget=task.attempt_in_budget, max_retries=task.max_retries,
            secrets_dir=self.config.secrets_dir,
        )
        slot = _Slot(task=task, ctx=ctx)
        self._slots[task.id] = slot
        try:
            on_loop = inspect.iscoroutinefunction(self.registry.get(task.type))
        except handlers.UnknownHandler:
            on_loop = False
        self._leases.hold(task, on_loop)
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
        # in the metrics already, and a JSON line costs a large share of a no-op task's worker CPU.
        # Failures, retries and dead letters are WARNING and ERROR.
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: started (type %s)", _label(task), task.type)
        started = time.monotonic()
        try:
            try:
                if slot.abandoned is not None:
                    raise asyncio.CancelledError()
                handler = self.registry.get(task.type)
                slot.handler = asyncio.create_task(self._invoke(handler, slot),
                                                   name=f"{watchdog.HANDLER_TASK_PREFIX}{task.id}")
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
            self._leases.release(task)
            self._free(slot)
            self._check_memory(task)

    def _check_memory(self, task: db.queue.ClaimedTask) -> None:
        if not self.stop.is_set() and recycle.over_memory(self.config, _label(task)):
            self.stop.set()

    def _free(self, slot: _Slot) -> None:
        """The handler is done: its slot may take a new task (even before the outcome is written)."""
        if not slot.finished:
            slot.finished = True
            self._busy -= 1
            if self._more_work:
                self._wake.set()

    async def _invoke(self, handler: handlers.Handler, slot: _Slot) -> Any:
        return await invoke.invoke(handler, slot.task, slot.ctx, self._threads,
                                   invoke.time_limit(slot.task, self.config), on_abandoned=self._check_threads)

    def _check_threads(self, task: db.queue.ClaimedTask) -> None:
        if not self.stop.is_set() and recycle.threads_full(self.config, self._threads.abandoned, task, _label(task)):
            self.recycled = "abandoned handler threads"
            self.stop.set()

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
        outcome = states.Outcome.TIMEOUT if isinstance(error, AttemptTimeout) else states.Outcome.FAILED
        decision = retry.decide(
            attempt_in_budget=task.attempt_in_budget, max_retries=task.max_retries, backoff=task.backoff,
            permanent=permanent, now=datetime.datetime.now(datetime.UTC), rng=self._rng,
        )
        error_type = type(error).__qualname__
        message = str(error) or error_type
        trace = None if isinstance(error, OWN_ERRORS) else "".join(traceback.format_exception(error))
        retry_in = decision.delay_seconds if isinstance(decision, retry.Retry) else None
        recorded = await self._db.run(
            lambda conn: db.queue.fail(conn, task.id, self.lease_owner, task.attempt, error_type=error_type,
                                    message=message, traceback=trace, outcome=outcome,
                                    retry_in_seconds=retry_in),
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

    def _lost_threadsafe(self, attempts: list[tuple[int, int]]) -> None:
        """From the heartbeat's thread: these attempts' leases are no longer ours."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._lost, attempts)

    def _lost(self, attempts: list[tuple[int, int]]) -> None:
        for task_id, attempt in attempts:
            slot = self._slots.get(task_id)
            if slot is not None and slot.task.attempt == attempt:
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
            lambda conn: db.queue.hand_back(conn, ids, self.lease_owner),
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
