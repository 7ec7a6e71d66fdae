"""The operator's shared state, built once at start-up and handed to every service.

Nothing here is a module global: ``app`` builds one ``Runtime`` when kopf
starts, keeps it in kopf's memo for the watch handlers, and passes it to each
service; a test builds its own and calls a service's ``run_once`` directly.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import uuid
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from kubetask import db, kube, metrics, model, scaling, settings


def ours(config: settings.OperatorSettings, raw: Mapping[str, Any]) -> bool:
    """Whether this operator serves the Task: its ``spec.managedBy`` is our name (unset: the default's).

    kopf's ``when=`` filter (``app``) asks it before any handler runs, ``watch`` again, and the orphan
    sweep of every body it fetches: a Task another controller owns is never admitted, cancelled,
    retried, mirrored or deleted here (its row could only come from us, and it never gets one).
    """
    spec = raw.get("spec") or {}
    owner = spec.get("managedBy") if isinstance(spec, Mapping) else None
    return (owner or model.DEFAULT_MANAGED_BY) == config.managed_by


@dataclasses.dataclass
class Pool:
    """A worker Deployment the operator scales, as last seen."""

    namespace: str
    deployment: str
    selector: dict[str, str]
    policy: scaling.PoolPolicy
    replicas: int
    state: scaling.PoolState = dataclasses.field(default_factory=scaling.PoolState)
    pods: int | None = None
    """Pods that exist and are not terminating, at the scaler's last look (for the metrics)."""


@dataclasses.dataclass
class Unrowed:
    """The orphan sweep's memory of Task objects PostgreSQL has no row for, between sweeps."""

    suspects: set[str] = dataclasses.field(default_factory=set)
    """Seen without a row by the last sweep: looked at if the next one sees them so too."""
    settled: set[str] = dataclasses.field(default_factory=set)
    """Finished objects whose row the history retention deleted: nothing to do, never fetched again."""
    refused_until: dict[str, float] = dataclasses.field(default_factory=dict)
    """Refused Tasks, and when (``time.time``) their object is deleted."""


class Admissions:
    """New Task bodies waiting for the admission service, bounded in memory.

    Up to ``size`` whole bodies are held (a body may be ~1.5 MiB: a burst of large Tasks must not grow the
    operator without bound); past that only a reference is kept (namespace, name, uid: ~200 bytes) and the
    body is read again from the API server when its turn comes, so nothing offered is lost. A Task already
    waiting is not queued twice (a relist, or a MODIFIED event before admission, offers it again).
    """

    def __init__(self, size: int, fetch: Callable[[str, str], Awaitable[dict[str, Any] | None]]) -> None:
        self.size = size
        self._fetch = fetch
        self._bodies: collections.deque[dict[str, Any]] = collections.deque()
        self._refs: collections.deque[tuple[str, str, str]] = collections.deque()
        self._waiting: set[str] = set()
        self._ready = asyncio.Event()

    def offer(self, raw: dict[str, Any]) -> None:
        """Queue a Task body for admission (never blocks, never drops)."""
        meta = raw["metadata"]
        uid = meta["uid"]
        if uid in self._waiting:
            return
        self._waiting.add(uid)
        if len(self._bodies) < self.size:
            self._bodies.append(raw)
        else:
            self._refs.append((meta["namespace"], meta["name"], uid))
        self._ready.set()

    def qsize(self) -> int:
        return len(self._bodies) + len(self._refs)

    def empty(self) -> bool:
        return not self._bodies and not self._refs

    def bodies_held(self) -> int:
        """Whole bodies in memory (at most ``size``); the rest are references."""
        return len(self._bodies)

    def get_nowait(self) -> dict[str, Any]:
        """The next held body (raises ``asyncio.QueueEmpty`` when none is held in memory)."""
        if not self._bodies:
            raise asyncio.QueueEmpty
        raw = self._bodies.popleft()
        self._waiting.discard(raw["metadata"]["uid"])
        return raw

    async def get(self) -> dict[str, Any]:
        """The next Task body: a held one, else one read again from a reference (skipping Tasks gone since)."""
        while True:
            raw = await self.get_within(None)
            if raw is not None:
                return raw

    async def get_within(self, timeout: float | None) -> dict[str, Any] | None:
        """The next Task body if one is offered within ``timeout`` seconds (None: wait for ever), else None.

        Only the wait is timed, never a body's fetch: a GET cut off halfway would leave its connection
        half read (and the reference would only be fetched again).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._bodies:
                return self.get_nowait()
            if self._refs:
                namespace, name, uid = self._refs.popleft()
                try:
                    raw = await self._fetch(namespace, name)
                except BaseException:
                    self._refs.appendleft((namespace, name, uid))  # the API server is away: try again later
                    raise
                self._waiting.discard(uid)
                if raw is not None and raw["metadata"]["uid"] == uid:
                    return raw
                continue  # deleted (its delete event left a tombstone), or re-created: its own event offers it
            self._ready.clear()
            if deadline is None:
                await self._ready.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except asyncio.TimeoutError:
                return None


@dataclasses.dataclass
class Held:
    """A container attempt whose lease this leader holds, and its pod."""

    task: db.queue.ClaimedTask
    pod: str
    since: float
    """When it was claimed or adopted (``time.monotonic``)."""
    waiting_told: str | None = None
    """The waiting reason already told in an Event (Unschedulable, ImagePullBackOff…), so it is told once."""


@dataclasses.dataclass
class TaskPods:
    """The container service's view: the task pods (from their watch) and the attempts it holds."""

    pods: dict[tuple[str, int], dict[str, Any]] = dataclasses.field(default_factory=dict)
    """(task uid, attempt) → the pod as last seen."""
    listed: bool = False
    """True once the pods have been listed since leading began: before that, "no pod" is a guess."""
    held: dict[int, Held] = dataclasses.field(default_factory=dict)
    """Task id → the attempt held."""
    adopted: bool = False
    """True once this leader adopted the running attempts whose pods it found."""
    kept: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    """(namespace, pod) of failed pods kept for debugging → when to delete them (``time.monotonic``)."""
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    """Set by a pod's watch event or an enqueue: the container service looks at once."""


@dataclasses.dataclass
class Runtime:
    """Everything the services share."""

    config: settings.OperatorSettings
    kube: kube.Kube
    admissions: Admissions = dataclasses.field(init=False)
    """New Task bodies from the watch and the orphan sweep, waiting for the admission service."""
    mirror_wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    scale_wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    queues_wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    """Set by a Queue's or a namespace's watch event: the queues service compares the rows again."""
    pools: dict[tuple[str, str], Pool] = dataclasses.field(default_factory=dict)
    pools_listed: bool = False
    """True once the pool Deployments have been seen: before that "no pool" would be a guess."""
    last_scale_pass: float = float("-inf")
    """When the scaler's last pass began (``time.monotonic``), for its minimum gap."""
    leading: bool = False
    schedules_served: bool | None = None
    """Whether the API server serves TaskSchedules (None: not asked yet), so a missing CRD is told once."""
    next_tick_at: float = float("inf")
    """When (``time.monotonic``) the earliest next tick of any TaskSchedule is due, as the scheduler's
    last pass saw it: its next pass starts then, or after ``schedule_interval_seconds``."""
    unrowed: Unrowed = dataclasses.field(default_factory=Unrowed)
    task_pods: TaskPods = dataclasses.field(default_factory=TaskPods)
    lease_owner: str = dataclasses.field(default_factory=lambda: f"operator/{uuid.uuid4().hex[:12]}")
    """This replica's name on the container attempts it leads (their lease owner)."""
    background: set[asyncio.Future[None]] = dataclasses.field(default_factory=set)
    """Fire-and-forget Event posts, held so they are not garbage-collected mid-flight."""
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    """The services started at start-up, cancelled at shut-down."""
    events_db: db.connection.Shared = dataclasses.field(init=False)
    """The watch handlers' connection (cancel on delete, retry on annotation)."""
    metrics_db: db.connection.Shared = dataclasses.field(init=False)
    """The leader's connection for the metrics' database figures, used when scraped."""
    meters: metrics.OperatorMetrics = dataclasses.field(init=False)
    metrics_endpoint: metrics.Endpoint | None = None

    def __post_init__(self) -> None:
        self.admissions = Admissions(self.config.admission_queue_size, self.kube.task)
        self.events_db = db.connection.Shared(self.config.database.url, "kubetask-operator events")
        self.metrics_db = db.connection.Shared(self.config.database.url, "kubetask-operator metrics")
        self.meters = metrics.OperatorMetrics(leading=lambda: self.leading, pools=self.pool_facts,
                                              api_writes=lambda: self.kube.writes_by_kind)

    def pool_facts(self) -> list[metrics.PoolFacts]:
        return [metrics.PoolFacts(pool.namespace, pool.deployment, pool.policy.queue, pool.replicas, pool.pods)
                for pool in list(self.pools.values())]

    def in_background(self, job: Awaitable[None]) -> None:
        """Run ``job`` without waiting for it (an Event, a courtesy), holding it until it ends."""
        future = asyncio.ensure_future(job)
        self.background.add(future)
        future.add_done_callback(self.background.discard)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.background, return_exceptions=True)
        await self.kube.close()
        if self.metrics_endpoint is not None:
            await self.metrics_endpoint.close()
        await self.events_db.close()
        await self.metrics_db.close()


async def missing_queues(rt: Runtime, conn: db.connection.Conn, names: Collection[str]) -> set[str]:
    """Of ``names``, the queues that have no Queue object, when the operator requires one (else none).

    A queue with a row in PostgreSQL has a Queue (the leader writes the row from it); for any other the
    API server is asked, since a Queue created a moment ago may not have its row yet: a refusal is final,
    so it is never made on a row that lags. One GET per such queue name.
    """
    if not rt.config.require_queue or not names:
        return set()
    rows = await db.queues.rows(conn)
    missing = set()
    for name in sorted(set(names) - rows.keys()):
        if await rt.kube.queue(name) is None:
            missing.add(name)
    return missing


RunOnce = Callable[[Runtime, db.connection.Conn], Awaitable[bool]]
"""One pass of a service: True when more work is waiting (run again at once), False to wait."""
