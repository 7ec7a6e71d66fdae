"""The operator's shared state, built once at start-up and handed to every service.

Nothing here is a module global: ``app`` builds one ``Runtime`` when kopf
starts, keeps it in kopf's memo for the watch handlers, and passes it to each
service; a test builds its own and calls a service's ``run_once`` directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
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


@dataclasses.dataclass
class Runtime:
    """Everything the services share."""

    config: settings.OperatorSettings
    kube: kube.Kube
    admissions: asyncio.Queue[dict[str, Any]] = dataclasses.field(default_factory=asyncio.Queue)
    """New Task bodies from the watch, waiting for the admission service."""
    mirror_wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    scale_wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    pools: dict[tuple[str, str], Pool] = dataclasses.field(default_factory=dict)
    pools_listed: bool = False
    """True once the pool Deployments have been seen: before that "no pool" would be a guess."""
    last_scale_pass: float = float("-inf")
    """When the scaler's last pass began (``time.monotonic``), for its minimum gap."""
    leading: bool = False
    unrowed: Unrowed = dataclasses.field(default_factory=Unrowed)
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


RunOnce = Callable[[Runtime, db.connection.Conn], Awaitable[bool]]
"""One pass of a service: True when more work is waiting (run again at once), False to wait."""
