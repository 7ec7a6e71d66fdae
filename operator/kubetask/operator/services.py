"""The operator's services, and who runs them: every replica, or only the leader.

Every replica watches and admits (admission, cancellation and retries are
idempotent in SQL), and listens for NOTIFY to wake its services. Only the
leader mirrors (Task and Queue statuses), scales, keeps up (rescuer, TTL, orphans, retention),
creates the TaskSchedules' Tasks (scheduler) and runs container Tasks' pods (pod-watch, containers). The
leader is whoever holds a session-level PostgreSQL advisory lock: when it dies
its session ends, the lock is released, and a standby takes over within
``leader_poll_seconds``. No kopf peering objects or extra RBAC are needed,
and a leader cut off from PostgreSQL stops leading as soon as it notices (its
services could not do anything useful anyway).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable

from kubetask import db, supervise
from kubetask.operator import admission, containers, loop, mirror, pools, queues, schedules, upkeep
from kubetask.operator.runtime import RunOnce, Runtime, TaskPods

log = logging.getLogger("kubetask.operator")


@dataclasses.dataclass(frozen=True)
class Service:
    name: str
    run_once: RunOnce
    interval: Callable[[Runtime], float]
    wake: Callable[[Runtime], asyncio.Event | None] = lambda rt: None
    jitter: float = 0.0

    def start(self, rt: Runtime) -> asyncio.Task[None]:
        return asyncio.create_task(
            loop.run(rt, self.name, self.run_once, interval=lambda: self.interval(rt), wake=self.wake(rt),
                     jitter=self.jitter),
            name=f"kubetask-{self.name}")


EVERY_REPLICA = [
    Service("admission", admission.run_once, interval=lambda rt: 0.0),
]

LEADER = [
    Service("mirror", mirror.run_once, interval=lambda rt: rt.config.poll_interval_seconds,
            wake=lambda rt: rt.mirror_wake),
    Service("scaler", pools.run_once, interval=lambda rt: rt.config.scale_interval_seconds,
            wake=lambda rt: rt.scale_wake),
    Service("queues", queues.run_once, interval=lambda rt: rt.config.queue_resync_seconds,
            wake=lambda rt: rt.queues_wake),
    Service("queue-status", queues.status_once, interval=lambda rt: rt.config.queue_status_interval_seconds),
    Service("rescuer", upkeep.rescue_once, interval=lambda rt: rt.config.rescue_interval_seconds, jitter=0.2),
    Service("ttl", upkeep.ttl_once, interval=lambda rt: rt.config.cleaner_interval_seconds),
    Service("orphans", upkeep.orphans_once, interval=lambda rt: rt.config.orphan_sweep_seconds),
    Service("retention", upkeep.retention_once, interval=lambda rt: rt.config.history_retention_interval_seconds),
    Service("scheduler", schedules.run_once, interval=schedules.interval),
    Service("pod-watch", containers.watch_once, interval=lambda rt: 0.0),
    Service("containers", containers.run_once, interval=lambda rt: rt.config.container_pass_seconds,
            wake=lambda rt: rt.task_pods.wake),
]


#: The services that touch task pods: not started when container Tasks are off (``container_tasks``).
CONTAINER_SERVICES = frozenset({"pod-watch", "containers"})


def start(rt: Runtime) -> None:
    """Start everything a replica runs; ``rt.close()`` stops it."""
    rt.tasks = [
        asyncio.create_task(supervise.supervise("listener", lambda: listen(rt), log), name="kubetask-listener"),
        asyncio.create_task(supervise.supervise("leadership", lambda: lead(rt), log), name="kubetask-leadership"),
        asyncio.create_task(pools.follow(rt), name="kubetask-pools"),
        *(service.start(rt) for service in EVERY_REPLICA),
    ]


async def listen(rt: Runtime) -> None:
    """Relay NOTIFY to the services' wake events; a (re)connect wakes them all once."""
    async with await db.connection.connect(rt.config.database.url, "kubetask-operator listener") as conn:
        await db.connection.listen(conn, db.connection.STATUS_CHANNEL, db.connection.QUEUE_CHANNEL)
        # Anything that happened while we were not listening: look once.
        rt.mirror_wake.set()
        rt.scale_wake.set()
        async for note in conn.notifies():
            if note.channel == db.connection.STATUS_CHANNEL:
                rt.mirror_wake.set()
            else:
                rt.scale_wake.set()
                rt.task_pods.wake.set()


async def lead(rt: Runtime, services: list[Service] | None = None) -> None:
    """Wait for the leadership lock, then run the leader's services for as long as the lock is held."""
    async with await db.connection.connect(rt.config.database.url, "kubetask-operator leadership") as conn:
        while not await db.upkeep.try_lead(conn):
            await asyncio.sleep(rt.config.leader_poll_seconds * (0.8 + 0.4 * random.random()))
        log.info("leading: mirroring statuses, scaling pools, rescuing leases, running container Tasks")
        rt.task_pods = TaskPods()  # what an earlier leadership held is the rows' to tell again
        chosen = LEADER if services is None else services
        if not rt.config.container_tasks:
            chosen = [s for s in chosen if s.name not in CONTAINER_SERVICES]
        running = [service.start(rt) for service in chosen]
        rt.leading = True
        try:
            while True:
                # The lock lives as long as this session: check that it still does.
                await asyncio.sleep(rt.config.leader_poll_seconds)
                await conn.execute("SELECT 1")
        finally:
            rt.leading = False
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            log.warning("no longer leading")
