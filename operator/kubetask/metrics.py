"""Prometheus metrics: every metric kubetask exports is defined here, once.

Each process exports its own on its own registry, over HTTP at
``/metrics`` on ``KUBETASK_METRICS_PORT`` (unset: no endpoint) of
``KUBETASK_METRICS_ADDRESS`` (default loopback: there is no authentication), together with
the process collector's CPU, memory and file descriptors:

* A **worker** counts what only it sees (``WorkerMetrics``): attempts by
  outcome, handler durations, pickup latency, its slots, claims its queue's
  rate limit throttled. Recording sits on the
  hot path of thousands of tasks a second, so it adds to plain numbers (no
  lock: one event loop records and renders them) and the collector turns them
  into samples when scraped; the slot gauges are read only then too.
* The **operator** exports what lives in PostgreSQL and in its loops
  (``OperatorMetrics``): unfinished tasks by phase and queue, queue depth and
  the age of the oldest due task, each Queue's pause and maxRunning and how
  saturated it is, the status-mirror backlog and lag, desired and actual
  replicas per pool, Kubernetes API writes, leadership. The database
  figures are a snapshot the leader refreshes when scraped, at most once per
  ``REFRESH_SECONDS``, from queries that read only unfinished or unmirrored
  rows through their partial indexes: a scrape costs the same with a million
  finished rows as with none. Finished tasks are therefore counted as events
  (``kubetask_attempts_total``, ``kubetask_dead_letters_total``) rather than
  as a row count. Only the leader reports the database and pool figures, so a
  sum over operator replicas counts each fact once.

Snapshots are exported through a collector rather than labelled ``Gauge``
objects so that a queue that empties or a pool that is deleted leaves the next
scrape instead of keeping its last value forever.

The endpoint is a small aiohttp server on the process's own event loop (the
operator already runs aiohttp for kopf and its API calls): a scrape can await
the database refresh, and no thread is added to the worker.

Layering: above ``db`` (whose rows it exports), below the worker and the
operator; never Kubernetes, since the worker imports it.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence

import aiohttp.web
import prometheus_client
import prometheus_client.exposition
import prometheus_client.registry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from kubetask import db

logger = logging.getLogger("kubetask.metrics")

REFRESH_SECONDS = 5.0
"""Shortest interval between two database refreshes of the operator's snapshot, however often it is scraped."""

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Handler run times: from no-op handlers (sub-millisecond) to hour-long reports."""

PICKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  300.0, 1800.0)
"""From due to claimed: milliseconds when a worker is idle, minutes when the pool is saturated."""

TIMED_OUTCOMES = frozenset({"succeeded", "failed", "timeout"})
"""Attempt outcomes whose handler ran to an end, and so have a duration."""

UNKNOWN_TYPE = "unknown"
"""``type`` label of tasks whose handler the worker does not know: the type comes from the Task spec, and a
label per misspelt name would grow the series without bound."""

UNSERVED_QUEUE = "_unserved"
"""``queue`` label of the operator's figures for queues no worker pool serves, summed: queue names come from
Task specs. Not a valid queue name (queues are DNS labels), so it never stands for a real queue."""


class EndpointError(OSError):
    """An endpoint (metrics, or the worker's liveness) cannot listen on its port."""


# --------------------------------------------------------------------- the worker

class _Histogram:
    """Observations by bucket, kept as plain numbers: no lock, since one event loop records and renders."""

    __slots__ = ("bounds", "labels", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.labels = [repr(float(bound)) for bound in bounds] + ["+Inf"]
        """``le`` of each bucket, spelt as Prometheus clients spell them (``0.005``, ``1.0``, ``+Inf``)."""
        self.counts = [0] * (len(bounds) + 1)
        """Per bucket, not cumulative; the last one is +Inf."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        return list(zip(self.labels, itertools.accumulate(self.counts)))


class WorkerMetrics:
    """One worker process's metrics; ``registry`` is what its endpoint serves.

    The per-task figures are plain counts and sums, rendered by a collector
    when scraped, rather than prometheus_client's Counter and Histogram, whose
    every increment takes a lock: the worker records on its one event loop
    thread, and at thousands of tasks a second the locks cost several times
    what the counting does.
    """

    def __init__(self, queue: str, slots: int, busy: Callable[[], float], known_types: Collection[str],
                 loop_lag: Callable[[], float] = lambda: 0.0) -> None:
        self.queue = queue
        self.registry = prometheus_client.CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self.registry)
        self._known = frozenset(known_types)
        self._attempts: dict[tuple[str, str], int] = {}
        """(type label, outcome) → attempts."""
        self._durations: dict[tuple[str, str], _Histogram] = {}
        self._dead: dict[str, int] = {}
        self._pickup = _Histogram(PICKUP_BUCKETS)
        prometheus_client.Gauge("kubetask_worker_slots", "Tasks this worker runs at once (KUBETASK_CONCURRENCY).",
                                ["queue"], registry=self.registry).labels(queue).set(slots)
        prometheus_client.Gauge("kubetask_worker_busy_slots", "Slots running a handler now.", ["queue"],
                                registry=self.registry).labels(queue).set_function(busy)
        prometheus_client.Gauge("kubetask_worker_event_loop_lag_seconds", "How late the worker's event loop "
                                "last ran a timer: near 0 unless an async handler blocks it.", ["queue"],
                                registry=self.registry).labels(queue).set_function(loop_lag)
        self._loop_stalls = 0
        self._throttled = 0
        self.registry.register(_WorkerCollector(self))

    def _type(self, type_: str) -> str:
        return type_ if type_ in self._known else UNKNOWN_TYPE

    def picked_up(self, waited_seconds: float) -> None:
        self._pickup.observe(max(waited_seconds, 0.0))

    def attempt(self, type_: str, outcome: str, seconds: float | None = None) -> None:
        """An attempt ended with ``outcome``; ``seconds`` is its handler's run time when it ran to an end."""
        key = (self._type(type_), outcome)
        self._attempts[key] = self._attempts.get(key, 0) + 1
        if seconds is not None and outcome in TIMED_OUTCOMES:
            histogram = self._durations.get(key)
            if histogram is None:
                histogram = self._durations[key] = _Histogram(DURATION_BUCKETS)
            histogram.observe(seconds)

    def loop_stalled(self) -> None:
        """The event loop went longer than KUBETASK_LOOP_LAG_WARNING_SECONDS without running (counted from
        the watchdog's thread, the only writer)."""
        self._loop_stalls += 1

    def claim_throttled(self) -> None:
        """A claim found the queue's rate limit spent (less than a token left)."""
        self._throttled += 1

    def dead_lettered(self, type_: str) -> None:
        label = self._type(type_)
        self._dead[label] = self._dead.get(label, 0) + 1


class _WorkerCollector(prometheus_client.registry.Collector):
    def __init__(self, owner: WorkerMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        owner, queue = self._owner, self._owner.queue
        attempts = CounterMetricFamily(
            "kubetask_attempts", "Attempts this worker ended, by outcome: succeeded, failed, timeout, "
            "handed_back (returned to the queue at shutdown), discarded (the lease was no longer ours: "
            "nothing recorded).", labels=["queue", "type", "outcome"])
        for (type_, outcome), count in sorted(owner._attempts.items()):
            attempts.add_metric([queue, type_, outcome], count)
        yield attempts
        dead = CounterMetricFamily("kubetask_dead_letters", "Tasks this worker moved to the dead letter (retries "
                                   "spent or a permanent error).", labels=["queue", "type"])
        for type_, count in sorted(owner._dead.items()):
            dead.add_metric([queue, type_], count)
        yield dead
        durations = HistogramMetricFamily("kubetask_task_duration_seconds", "Handler run time of attempts that "
                                          "succeeded, failed or timed out.", labels=["queue", "type", "outcome"])
        for (type_, outcome), histogram in sorted(owner._durations.items()):
            durations.add_metric([queue, type_, outcome], histogram.buckets(), histogram.sum)
        yield durations
        pickup = HistogramMetricFamily("kubetask_pickup_latency_seconds", "Seconds from when a task was due "
                                       "(created, or its retry time) to its claim by this worker, by the "
                                       "database's clock.", labels=["queue"])
        pickup.add_metric([queue], owner._pickup.buckets(), owner._pickup.sum)
        yield pickup
        stalls = CounterMetricFamily("kubetask_worker_event_loop_stalls", "Times the worker's event loop went "
                                     "longer than KUBETASK_LOOP_LAG_WARNING_SECONDS without running (an async "
                                     "handler blocking it; each is logged with the task).", labels=["queue"])
        stalls.add_metric([queue], owner._loop_stalls)
        yield stalls
        throttled = CounterMetricFamily("kubetask_claims_throttled", "Claims by this worker that the queue's "
                                        "rate limit (Queue spec.rateLimit) cut short: its token bucket held less "
                                        "than a token after them.", labels=["queue"])
        throttled.add_metric([queue], owner._throttled)
        yield throttled


# ------------------------------------------------------------------- the operator

@dataclasses.dataclass(frozen=True)
class DatabaseFacts:
    """What the leader read from PostgreSQL at its last refresh."""

    queues: Sequence[db.reads.QueueDepth]
    mirror_backlog: int
    """Rows whose Task status is behind (version > mirrored_version)."""
    mirror_lag_seconds: float
    """Age of the oldest change not yet written to its Task; 0 when none."""
    limits: Sequence[db.queues.QueueRow] = ()
    """The Queues' rows (paused, maxRunning): what the claim enforces, for the saturation figures."""


@dataclasses.dataclass(frozen=True)
class PoolFacts:
    namespace: str
    pool: str
    """The Deployment's name."""
    queue: str
    desired: int
    """Replicas the scaler set (the Deployment's spec.replicas)."""
    actual: int | None
    """Pods of the pool that exist and are not terminating, at the scaler's last look; None before it."""


class OperatorMetrics:
    """One operator replica's metrics.

    The counters are incremented by the loops. Everything else is read when
    scraped: ``leading()``, ``pools()`` and ``api_writes()`` from the runtime,
    and ``database``, the snapshot the leader keeps fresh (None on a standby,
    or when the last refresh failed: no figure rather than a stale one).
    """

    def __init__(self, leading: Callable[[], bool], pools: Callable[[], Sequence[PoolFacts]],
                 api_writes: Callable[[], Mapping[str, int]]) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self.registry)
        self.admitted = prometheus_client.Counter(
            "kubetask_tasks_admitted", "Tasks this replica inserted into PostgreSQL (each Task once, whichever "
            "replica admits it).", registry=self.registry)
        self.lease_expiries = prometheus_client.Counter(
            "kubetask_lease_expiries", "Attempts recorded lost because their worker stopped renewing the "
            "lease, by what became of the task: retrying or dead_letter.", ["queue", "outcome"],
            registry=self.registry)
        self.status_refused = prometheus_client.Counter(
            "kubetask_status_refused", "Task statuses the API server refused for good (403, 422, any 4xx but "
            "404, 408, 409 and 429), by HTTP code: given up, the Task's row keeps the truth.", ["code"],
            registry=self.registry)
        self._schedule_ticks: dict[tuple[str, str], dict[str, int]] = {}
        """(namespace, schedule) → outcome → ticks this replica recorded."""
        self.database: DatabaseFacts | None = None
        self.refreshed_at: float | None = None
        """Monotonic time of the last refresh of ``database``."""
        self.registry.register(_OperatorCollector(self, leading, pools, api_writes))

    def schedule_ticks(self, namespace: str, schedule: str, outcome: str, count: int = 1) -> None:
        """This replica recorded ``count`` ticks of a TaskSchedule with ``outcome`` (created, skipped, missed,
        suspended): each tick is recorded by one pass only (``db.ticks``), so a sum over replicas counts it once."""
        if count > 0:
            outcomes = self._schedule_ticks.setdefault((namespace, schedule), {})
            outcomes[outcome] = outcomes.get(outcome, 0) + count

    def forget_schedules(self, live: Collection[tuple[str, str]]) -> None:
        """Drop the series of schedules no longer listed (deleted): the label sets stay those of live objects."""
        for key in self._schedule_ticks.keys() - set(live):
            del self._schedule_ticks[key]


class _OperatorCollector(prometheus_client.registry.Collector):
    def __init__(self, owner: OperatorMetrics, leading: Callable[[], bool],
                 pools: Callable[[], Sequence[PoolFacts]], api_writes: Callable[[], Mapping[str, int]]) -> None:
        self._owner = owner
        self._leading = leading
        self._pools = pools
        self._api_writes = api_writes

    def collect(self) -> Iterator[Metric]:
        leading = self._leading()
        yield GaugeMetricFamily("kubetask_operator_leader",
                                "1 on the replica that holds the leadership lock (mirrors, scales, rescues).",
                                value=1 if leading else 0)
        writes = CounterMetricFamily("kubetask_kubernetes_writes", "Kubernetes API writes by this replica, by "
                                     "kind: task_status, queue_status, schedule_status, event, scale, "
                                     "pod_deletion_cost, task_delete, task_create.", labels=["kind"])
        for kind, count in sorted(self._api_writes().items()):
            writes.add_metric([kind], count)
        yield writes
        ticks = CounterMetricFamily("kubetask_schedule_ticks", "TaskSchedule ticks this replica recorded, by "
                                    "outcome: created (its Task made), skipped (concurrencyPolicy Forbid), missed "
                                    "(too late for startingDeadlineSeconds, passed over in a row while the "
                                    "operator was away, or its Task refused), suspended (spec.suspend).",
                                    labels=["namespace", "schedule", "outcome"])
        for (namespace, schedule), outcomes in sorted(self._owner._schedule_ticks.items()):
            for outcome, count in sorted(outcomes.items()):
                ticks.add_metric([namespace, schedule, outcome], count)
        yield ticks
        if not leading:
            return
        desired = GaugeMetricFamily("kubetask_pool_desired_replicas", "Replicas the scaler set for a worker pool.",
                                    labels=["namespace", "pool", "queue"])
        actual = GaugeMetricFamily("kubetask_pool_replicas", "Pods of a worker pool that exist and are not "
                                   "terminating, at the scaler's last look.", labels=["namespace", "pool", "queue"])
        pools = self._pools()
        for pool in pools:
            labels = [pool.namespace, pool.pool, pool.queue]
            desired.add_metric(labels, pool.desired)
            if pool.actual is not None:
                actual.add_metric(labels, pool.actual)
        yield desired
        yield actual
        facts = self._owner.database
        if facts is None:
            return
        tasks = GaugeMetricFamily("kubetask_tasks", "Unfinished tasks by queue and phase (Queued, Running, "
                                  "Retrying), scheduled ones included.", labels=["queue", "phase"])
        depth = GaugeMetricFamily("kubetask_queue_depth", "Tasks due now and waiting for a worker.",
                                  labels=["queue"])
        oldest = GaugeMetricFamily("kubetask_queue_oldest_due_seconds", "Age of the oldest task due now and "
                                   "waiting for a worker, from when it became due; 0 when none waits.",
                                   labels=["queue"])
        # A queue a pool serves is reported even when empty: its depth falls back to 0 rather than vanishing.
        # Queues no pool serves are one series: their names are whatever Tasks say, so a tenant could
        # otherwise create series without bound.
        served = {pool.queue for pool in pools}
        listed = {queue.queue for queue in facts.queues}
        idle = [db.reads.QueueDepth(name, queued=0, retrying=0, due=0, scheduled=0, running=0,
                                    oldest_due_seconds=0.0, busy_pods={})
                for name in sorted(served - listed)]
        unserved = [queue for queue in facts.queues if queue.queue not in served]
        folded = [db.reads.QueueDepth(
            UNSERVED_QUEUE, queued=sum(q.queued for q in unserved), retrying=sum(q.retrying for q in unserved),
            due=sum(q.due for q in unserved), scheduled=sum(q.scheduled for q in unserved),
            running=sum(q.running for q in unserved),
            oldest_due_seconds=max(q.oldest_due_seconds for q in unserved), busy_pods={})] if unserved else []
        for queue in [*(q for q in facts.queues if q.queue in served), *idle, *folded]:
            for phase, count in (("Queued", queue.queued), ("Running", queue.running),
                                 ("Retrying", queue.retrying)):
                tasks.add_metric([queue.queue, phase], count)
            depth.add_metric([queue.queue], queue.due)
            oldest.add_metric([queue.queue], queue.oldest_due_seconds)
        yield tasks
        yield depth
        yield oldest
        # Per Queue object (the admin makes them: bounded): how close each queue is to its limit.
        running = {queue.queue: queue.running for queue in facts.queues}
        paused = GaugeMetricFamily("kubetask_queue_paused", "1 while a Queue's spec.paused holds (nothing is "
                                   "claimed), 0 otherwise; one series per Queue object.", labels=["queue"])
        cap = GaugeMetricFamily("kubetask_queue_max_running", "A Queue's maxRunning: most of its tasks running "
                                "at once; only for Queues that set it.", labels=["queue"])
        saturation = GaugeMetricFamily("kubetask_queue_running_saturation", "Running tasks over the Queue's "
                                       "maxRunning: 1 when the limit binds (due tasks then wait for it, not for "
                                       "workers); only for Queues that set it.", labels=["queue"])
        for row in facts.limits:
            paused.add_metric([row.name], 1 if row.paused else 0)
            if row.max_running is not None:
                cap.add_metric([row.name], row.max_running)
                saturation.add_metric([row.name], running.get(row.name, 0) / row.max_running)
        yield paused
        yield cap
        yield saturation
        yield GaugeMetricFamily("kubetask_status_mirror_backlog", "Task statuses behind their PostgreSQL row.",
                                value=facts.mirror_backlog)
        yield GaugeMetricFamily("kubetask_status_mirror_lag_seconds", "Age of the oldest row change not yet "
                                "written to its Task status; 0 when every status is current.",
                                value=facts.mirror_lag_seconds)


# ------------------------------------------------------------------- the endpoint

@dataclasses.dataclass
class Endpoint:
    runner: aiohttp.web.AppRunner
    port: int
    """The port listened on (the one chosen by the system when 0 was asked for)."""

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(registry: prometheus_client.CollectorRegistry, port: int, host: str = "127.0.0.1",
                before_scrape: Callable[[], Awaitable[None]] | None = None) -> Endpoint:
    """Serve ``registry`` at ``http://host:port/metrics``; port 0 lets the system choose one.

    ``before_scrape`` runs before each scrape is rendered (the operator's
    database refresh); if it fails, the scrape still answers with the rest.
    """

    async def scrape(request: aiohttp.web.Request) -> aiohttp.web.Response:
        if before_scrape is not None:
            try:
                await before_scrape()
            except Exception as error:
                logger.warning("refreshing metrics before a scrape: %s: %s", type(error).__name__, error)
        body = prometheus_client.generate_latest(registry)
        return aiohttp.web.Response(body=body,
                                    headers={"Content-Type": prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4})

    app = aiohttp.web.Application()
    app.router.add_get("/metrics", scrape)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = aiohttp.web.TCPSite(runner, host, port)
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise EndpointError(
            f"cannot serve metrics on {host}:{port} ({error.strerror or error}): set KUBETASK_METRICS_PORT "
            "to a free port, 0 for any free port, or unset it to serve no metrics; KUBETASK_METRICS_ADDRESS "
            "must be an address of this host") from None
    bound = int(runner.addresses[0][1])
    logger.info("metrics at http://%s:%d/metrics", host, bound)
    return Endpoint(runner, bound)
