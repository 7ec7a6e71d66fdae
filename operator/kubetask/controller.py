"""The kopf operator: the only writer of Kubernetes objects.

Shape of the module: kopf only *watches*. Its handlers are ``on.event``
handlers, which keep no state on the objects (no progress annotations, no
finalizers), so kopf itself adds no write per Task. Everything that writes
is one of a few loops started at operator start-up, each with its own
PostgreSQL connection and each woken by NOTIFY with a polling fallback:

admitter  new Tasks, batched: one INSERT for everything that arrived within a
          few milliseconds. Idempotent on the Task uid, so a relist after a
          restart re-admits nothing.
mirror    rows whose ``version`` is ahead of ``mirrored_version`` (the outbox)
          → one status patch each with the *latest* state (coalesced), then
          Events for admission, retries and dead letters.
scaler    queue depth per pool → ``deployments/scale``; marks busy pods with a
          high ``pod-deletion-cost`` before a scale-in so idle pods go first.
rescuer   expired leases → lost attempt → retry or dead letter.
cleaner   ``ttlSecondsAfterFinished`` deletions, cancelling rows whose
          Task was deleted while the operator was down, and the history
          retention (``history_retention_days``, ``history_keep_last``):
          finished rows deleted in bounded batches, oldest first.

Replicas: every replica watches and admits (admission, cancellation and
retries are idempotent in SQL), but only the leader runs mirror, scaler,
rescuer and cleaner. The leader is whoever holds a session-level PostgreSQL
advisory lock; when it dies its session ends, the lock is released, and a
standby takes over within ``leader_poll_seconds``. No kopf peering objects or
extra RBAC are needed, and a leader cut off from PostgreSQL stops leading
as soon as it notices (its loops could not do anything useful anyway).

Because PostgreSQL rows carry the facts and NOTIFY only wakes readers, a
restart loses nothing: the loops resume from the rows.

Metrics (``KUBETASK_METRICS_PORT``, see ``kubetask.metrics``): the loops bump
counters; the database figures are read by the leader when it is scraped
(``_refresh_metrics``), never in a loop of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import random
import time
from typing import Any, Awaitable, Callable

import kopf
import psycopg
import pydantic

from kubetask import kube, logs, metrics, model, scaling, settings, status, store

log = logging.getLogger("kubetask.operator")

STATUS_CHANNEL = "kubetask_status"
QUEUE_CHANNEL = "kubetask_queue"


@dataclasses.dataclass
class Pool:
    namespace: str
    deployment: str
    selector: dict[str, str]
    policy: scaling.PoolPolicy
    replicas: int
    state: scaling.PoolState = dataclasses.field(default_factory=scaling.PoolState)
    pods: int | None = None
    """Pods that exist and are not terminating, at the scaler's last look (for the metrics)."""


@dataclasses.dataclass
class Runtime:
    """Everything the loops share, created at start-up."""

    config: settings.OperatorSettings
    kube: kube.Kube
    admissions: asyncio.Queue[tuple[dict[str, Any], float]] = dataclasses.field(default_factory=asyncio.Queue)
    mirror_wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    scale_wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    pools: dict[tuple[str, str], Pool] = dataclasses.field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    leading: bool = False
    background: set[asyncio.Future[None]] = dataclasses.field(default_factory=set)
    """Fire-and-forget Event posts, held so they are not garbage-collected mid-flight."""
    pools_listed: bool = False
    """True once the pool Deployments have been seen: before that "no pool" would be a guess."""
    seen_uids: set[str] = dataclasses.field(default_factory=set)
    admitted_events: int = 0
    meters: metrics.OperatorMetrics = dataclasses.field(init=False)
    metrics_endpoint: metrics.Endpoint | None = None
    metrics_conn: psycopg.AsyncConnection[Any] | None = None
    """The leader's connection for the metrics' database figures, opened at the first scrape."""
    metrics_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.meters = metrics.OperatorMetrics(leading=lambda: self.leading, pools=self.pool_facts,
                                              api_writes=lambda: self.kube.writes_by_kind)

    def pool_facts(self) -> list[metrics.PoolFacts]:
        return [metrics.PoolFacts(pool.namespace, pool.deployment, pool.policy.queue, pool.replicas, pool.pods)
                for pool in list(self.pools.values())]


RUNTIME: Runtime | None = None


def _runtime() -> Runtime:
    if RUNTIME is None:
        raise RuntimeError("the kubetask operator has not started")
    return RUNTIME


async def _connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await store.connect(dsn)


async def _forever(name: str, body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]) -> None:
    """Run a loop body on its own connection; reconnect with capped backoff on any failure."""
    rt = _runtime()
    delay = 0.2
    while True:
        started = time.monotonic()
        try:
            async with await _connect(rt.config.database.url) as conn:
                await body(conn)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if time.monotonic() - started > 30:
                delay = 0.2  # it ran well for a while: this is a new problem, not the same one again
            log.warning("%s: %s: %s; retrying in %.1fs", name, type(err).__name__, err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    event.clear()


# -- start-up and shut-down ----------------------------------------------------------


class _NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: kopf deep-copies every object on every watch event to diff it against the last
    handled state, which only on.create/update/delete/resume handlers read. kubetask has only on.event
    handlers, and that copy was ~5% of the operator's CPU in a burst (py-spy), so there is nothing to
    build, store or fetch."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global RUNTIME
    config = settings_from_env()
    settings.posting.enabled = False  # kopf would post an Event per log line: extra writes per Task
    # kopf logs "Handler 'task_event' succeeded." at INFO for every watch event of every Task: a log
    # line (and its formatting) per event, a measurable share of the operator's CPU in a burst.
    # Warnings and errors about objects still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.queueing.idle_timeout = 30
    settings.persistence.diffbase_storage = _NoDiffBase()
    async with await _connect(config.database.url) as conn:
        applied = await store.migrate(conn)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
    RUNTIME = rt = Runtime(config=config, kube=kube.Kube(max_concurrency=config.api_concurrency))
    if config.metrics_port is not None:
        try:
            rt.metrics_endpoint = await metrics.serve(rt.meters.registry, config.metrics_port,
                                                      before_scrape=_refresh_metrics)
        except metrics.EndpointError as err:
            raise kopf.PermanentError(str(err)) from None
    rt.tasks = [
        asyncio.create_task(_forever("listener", _listen), name="kubetask-listener"),
        asyncio.create_task(_forever("admitter", _admitter), name="kubetask-admitter"),
        asyncio.create_task(_forever("leadership", _lead), name="kubetask-leadership"),
        asyncio.create_task(_list_pools(), name="kubetask-list-pools"),
    ]
    log.info("kubetask operator started; waiting for leadership")


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    global RUNTIME
    rt = RUNTIME
    if rt is None:
        return
    for task in rt.tasks:
        task.cancel()
    await asyncio.gather(*rt.tasks, return_exceptions=True)
    await rt.kube.close()
    if rt.metrics_endpoint is not None:
        await rt.metrics_endpoint.close()
    if rt.metrics_conn is not None:
        await rt.metrics_conn.close()
    log.info("stopped after %d Kubernetes API writes", rt.kube.writes)
    RUNTIME = None


def settings_from_env() -> settings.OperatorSettings:
    return settings.OperatorSettings.from_env()


# -- watching -------------------------------------------------------------------------


@kopf.on.event(model.GROUP, model.VERSION, model.PLURAL)
async def task_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    rt = _runtime()
    raw = dict(body)
    meta = raw.get("metadata", {})
    uid = meta.get("uid")
    if not uid:
        return
    if event.get("type") == "DELETED":
        rt.seen_uids.discard(uid)
        await _with_conn(lambda conn: store.cancel(conn, uid))
        return
    rt.seen_uids.add(uid)
    phase = (raw.get("status") or {}).get("phase")
    if phase in (None, model.Phase.PENDING.value):
        rt.admissions.put_nowait((raw, time.monotonic()))
        return
    token = (meta.get("annotations") or {}).get(model.RETRY_ANNOTATION)
    if token and phase in (model.Phase.DEAD_LETTER.value, model.Phase.SUCCEEDED.value):
        revived = await _with_conn(lambda conn: store.retry_dead(conn, uid, token))
        if revived:
            log.info("Task %s/%s re-queued by %s=%s", meta.get("namespace"), meta.get("name"), model.RETRY_ANNOTATION, token,
                     extra=logs.about(meta.get("namespace"), meta.get("name"), uid))
        elif await _with_conn(lambda conn: store.get_task(conn, uid)) is None:
            log.warning("Task %s/%s cannot be retried: PostgreSQL has no row for it (its history was deleted by "
                        "the history retention, or the Task was refused at admission); delete and re-create "
                        "the Task to run it again", meta.get("namespace"), meta.get("name"),
                        extra=logs.about(meta.get("namespace"), meta.get("name"), uid))


@kopf.on.event("apps", "v1", "deployments", labels={kube.POOL_LABEL: kopf.PRESENT})
async def pool_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    _register_pool(dict(body), deleted=event.get("type") == "DELETED")


def _register_pool(body: dict[str, Any], deleted: bool = False) -> None:
    rt = _runtime()
    meta = body.get("metadata", {})
    key = (meta["namespace"], meta["name"])
    if deleted:
        rt.pools.pop(key, None)
        return
    try:
        policy = scaling.policy_from(
            f"{key[0]}/{key[1]}", meta.get("labels", {})[kube.POOL_LABEL], dict(meta.get("annotations") or {}))
    except scaling.PolicyError as err:
        # A bad edit must not cost the pool its scaling: keep the last good policy, and say why on the Deployment.
        kept = rt.pools.get(key)
        log.error("%s%s", err, "; keeping the previous policy" if kept else "; the pool is not scaled until fixed")
        if meta.get("uid"):
            posted = asyncio.ensure_future(_pool_event(
                key[0], key[1], meta["uid"], f"{err}{'; keeping the previous policy' if kept else ''}"))
            rt.background.add(posted)
            posted.add_done_callback(rt.background.discard)
        return
    selector = dict(body.get("spec", {}).get("selector", {}).get("matchLabels") or {})
    replicas = int(body.get("spec", {}).get("replicas") or 0)
    existing = rt.pools.get(key)
    if existing is None:
        rt.pools[key] = Pool(key[0], key[1], selector, policy, replicas)
        log.info("worker pool %s/%s serves queue %r: %s", key[0], key[1], policy.queue, policy)
    else:
        existing.policy, existing.selector, existing.replicas = policy, selector, replicas
    rt.scale_wake.set()


async def _pool_event(namespace: str, name: str, uid: str, message: str) -> None:
    try:
        await _runtime().kube.post_event(namespace, name, uid, "BadPoolPolicy", message, warning=True,
                                         kind="Deployment", api_version="apps/v1")
    except Exception as err:  # an Event is a courtesy; the log has the message too
        log.debug("event for Deployment %s/%s: %s", namespace, name, err)


async def _list_pools() -> None:
    """One LIST at start-up, so the mirror can tell "no pool serves this queue" from "not seen yet"."""
    rt = _runtime()
    delay = 0.5
    while True:
        try:
            for body in await rt.kube.pool_deployments(rt.config.namespaces):
                _register_pool(body)
            rt.pools_listed = True
            return
        except Exception as err:
            log.warning("listing worker pools: %s; retrying in %.1fs", err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


_shared_conn: psycopg.AsyncConnection[Any] | None = None
_shared_lock = asyncio.Lock()


async def _with_conn(fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]) -> Any:
    """One connection for the (rare) per-event writes: cancel and retry."""
    global _shared_conn
    async with _shared_lock:
        for attempt in range(5):
            try:
                if _shared_conn is None or _shared_conn.closed:
                    _shared_conn = await _connect(_runtime().config.database.url)
                return await fn(_shared_conn)
            except psycopg.OperationalError as err:
                log.warning("database: %s; retrying", err)
                _shared_conn = None
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        raise kopf.TemporaryError("PostgreSQL unreachable", delay=5)


# -- the loops ------------------------------------------------------------------------


LEADER_LOOPS: dict[str, Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]] = {}


async def _lead(conn: psycopg.AsyncConnection[Any]) -> None:
    """Hold the leadership lock on ``conn`` and run the leader's loops while it is held."""
    rt = _runtime()
    while not await store.try_lead(conn):
        await asyncio.sleep(rt.config.leader_poll_seconds * (0.8 + 0.4 * random.random()))
    log.info("leading: mirroring statuses, scaling pools, rescuing leases")
    loops = [asyncio.create_task(_forever(name, body), name=f"kubetask-{name}") for name, body in LEADER_LOOPS.items()]
    rt.leading = True
    try:
        while True:
            # The lock lives as long as this session: check that it still does.
            await asyncio.sleep(rt.config.leader_poll_seconds)
            await conn.execute("SELECT 1")
    finally:
        rt.leading = False
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        log.warning("no longer leading")


async def _listen(conn: psycopg.AsyncConnection[Any]) -> None:
    rt = _runtime()
    await conn.execute(f"LISTEN {STATUS_CHANNEL}")
    await conn.execute(f"LISTEN {QUEUE_CHANNEL}")
    # Anything that happened while we were not listening: look once.
    rt.mirror_wake.set()
    rt.scale_wake.set()
    async for note in conn.notifies():
        if note.channel == STATUS_CHANNEL:
            rt.mirror_wake.set()
        else:
            rt.scale_wake.set()


def _new_task(raw: dict[str, Any]) -> store.NewTask:
    meta = raw["metadata"]
    spec = model.TaskSpec.model_validate(raw.get("spec") or {})
    run_at: datetime.datetime | None = spec.run_at
    if spec.delay_seconds is not None:
        created = meta.get("creationTimestamp")
        base = (datetime.datetime.fromisoformat(created.replace("Z", "+00:00")) if created
                else datetime.datetime.now(datetime.timezone.utc))
        run_at = base + datetime.timedelta(seconds=spec.delay_seconds)
    return store.NewTask(
        uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], type=spec.type,
        payload=spec.payload, queue=spec.queue, priority=spec.priority, max_retries=spec.max_retries,
        backoff_initial_seconds=spec.backoff.initial_seconds, backoff_factor=spec.backoff.factor,
        backoff_max_seconds=spec.backoff.max_seconds, backoff_jitter=spec.backoff.jitter,
        timeout_seconds=spec.timeout_seconds, run_at=run_at,
        ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
    )


def _refusal(raw: dict[str, Any]) -> str | None:
    """Why a Task the CRD schema let through cannot be admitted, or None."""
    import json

    payload = (raw.get("spec") or {}).get("payload") or {}
    size = len(json.dumps(payload, separators=(",", ":")).encode())
    if size > model.MAX_PAYLOAD_BYTES:
        return (f"spec.payload is {size} bytes, over the {model.MAX_PAYLOAD_BYTES}-byte cap: store large data "
                "elsewhere (object storage, a ConfigMap) and pass a reference in the payload")
    try:
        model.TaskSpec.model_validate(raw.get("spec") or {})
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = "spec." + ".".join(str(p) for p in first["loc"]) if first["loc"] else "spec"
        return f"{where}: {first['msg']}"
    nul = store.find_nul(payload, "spec.payload")
    if nul is not None:
        return (f"{nul} holds a NUL character (\\u0000), which PostgreSQL cannot store: "
                "encode binary data, e.g. as base64")
    return None


async def _admitter(conn: psycopg.AsyncConnection[Any]) -> None:
    rt = _runtime()
    while True:
        first = await rt.admissions.get()
        batch = [first]
        deadline = time.monotonic() + rt.config.admit_batch_window_seconds
        while len(batch) < rt.config.admit_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(rt.admissions.get(), remaining))
            except asyncio.TimeoutError:
                break
        new: dict[str, store.NewTask] = {}
        refused: list[tuple[dict[str, Any], str]] = []
        for raw, _ in batch:
            reason = _refusal(raw)
            if reason is None:
                task = _new_task(raw)
                new[task.uid] = task
            else:
                refused.append((raw, reason))
        try:
            if new:
                rt.meters.admitted.inc(await store.admit(conn, list(new.values())))
        except psycopg.OperationalError:
            for item in batch:
                rt.admissions.put_nowait(item)
            raise  # the connection is gone: reconnect and try the whole batch again
        except Exception as err:
            # A row PostgreSQL refuses must not block the Tasks batched with it:
            # admit one at a time and refuse, visibly, only the ones that fail.
            log.warning("admitting a batch of %d failed (%s); admitting one by one", len(new), err)
            raws = {raw["metadata"]["uid"]: raw for raw, _ in batch}
            pending = list(new.items())
            for index, (uid, task) in enumerate(pending):
                try:
                    rt.meters.admitted.inc(await store.admit(conn, [task]))
                except psycopg.OperationalError:
                    for rest, _ in pending[index:]:
                        rt.admissions.put_nowait((raws[rest], time.monotonic()))
                    raise
                except Exception as single:
                    refused.append((raws[uid], f"PostgreSQL refused the Task: {type(single).__name__}: {single}"))
        for raw, reason in refused:
            meta = raw["metadata"]
            log.warning("Task %s/%s refused: %s", meta["namespace"], meta["name"], reason,
                        extra=logs.about(meta["namespace"], meta["name"], meta["uid"]))
            now = datetime.datetime.now(datetime.timezone.utc)
            try:
                await rt.kube.patch_task_status(meta["namespace"], meta["name"], meta["uid"],
                                                status.rejected("InvalidSpec", reason, now))
                await rt.kube.post_event(meta["namespace"], meta["name"], meta["uid"], "Refused", reason, warning=True)
            except kube.NotFound:
                pass


async def _mirror(conn: psycopg.AsyncConnection[Any]) -> None:
    rt = _runtime()
    semaphore = asyncio.Semaphore(rt.config.api_concurrency)

    async def one(row: Any) -> tuple[int, int, str] | None:
        async with semaphore:
            try:
                served = {pool.policy.queue for pool in rt.pools.values()}
                missing = row.queue if rt.pools_listed and row.queue not in served else None
                await rt.kube.patch_task_status(row.namespace, row.name, str(row.uid), status.build(row, missing))
            except (kube.NotFound, kube.Conflict):
                return (row.id, row.version, row.state)  # the Task is gone: nothing left to mirror
            except Exception as err:
                log.warning("status of %s/%s: %s", row.namespace, row.name, err,
                            extra=logs.about(row.namespace, row.name, str(row.uid)))
                return None
            await _post_transition_events(rt, row)
            return (row.id, row.version, row.state)

    while True:
        rows = await store.pending_status(conn, rt.config.mirror_batch_size)
        if rows:
            done = [r for r in await asyncio.gather(*(one(row) for row in rows)) if r is not None]
            if done:
                await store.mark_mirrored(conn, done)
            if len(done) == len(rows):
                continue  # more may be waiting: no sleep while there is a backlog
        await _wait(rt.mirror_wake, rt.config.poll_interval_seconds)


async def _post_transition_events(rt: Runtime, row: Any) -> None:
    before, after = row.mirrored_state, row.state
    ns, name, uid = row.namespace, row.name, str(row.uid)
    err = row.last_error or {}
    try:
        if before is None and rt.config.admission_events:
            await rt.kube.post_event(ns, name, uid, "Admitted", f"queued on {row.queue!r}")
        if after == "retrying":
            await rt.kube.post_event(
                ns, name, uid, "Retrying",
                f"attempt {err.get('attempt')} failed with {err.get('type')}: {err.get('message', '')}; "
                f"next attempt at {status._time(row.run_at)}", warning=True)
        elif after == "dead_letter" and before != "dead_letter":
            await rt.kube.post_event(
                ns, name, uid, "DeadLetter",
                f"gave up after {row.attempts} attempt(s): {err.get('type')}: {err.get('message', '')}; "
                f"`kubectl annotate task {name} {model.RETRY_ANNOTATION}=$(date +%s) --overwrite` runs it again",
                warning=True)
    except Exception as event_err:  # an Event is a courtesy: never block the mirror on it
        log.debug("event for %s/%s: %s", ns, name, event_err, extra=logs.about(ns, name, uid))


SCALER_MIN_GAP_SECONDS = 0.2
"""Shortest time between two scaling passes. Every enqueue notification wakes the scaler, and each pass
reads the queue depths and lists each pool's pods: in a burst of admissions that was a pass per batch
(~4% of the operator's CPU in a 2,000-Task burst). The first wake after a quiet spell still acts at once,
so scaling from zero is not delayed."""


async def _scaler(conn: psycopg.AsyncConnection[Any]) -> None:
    rt = _runtime()
    last_pass = -SCALER_MIN_GAP_SECONDS
    while True:
        gap = last_pass + SCALER_MIN_GAP_SECONDS - time.monotonic()
        if gap > 0:
            await asyncio.sleep(gap)
        last_pass = time.monotonic()
        if rt.pools:
            depths = await store.queue_depths(conn)
            now = time.monotonic()
            for pool in list(rt.pools.values()):
                depth = depths.get(pool.policy.queue)
                busy = {pod: n for pod, n in (depth.busy_pods if depth else {}).items()}
                pods = None
                if pool.selector:
                    pods = await rt.kube.pods(pool.namespace, pool.selector)
                    live = {p.name for p in pods if not p.terminating}
                    pool.pods = len(live)
                    busy = {pod: n for pod, n in busy.items() if pod in live}
                load = scaling.Load(ready=depth.ready if depth else 0, running=depth.running if depth else 0,
                                    busy_pods=len(busy))
                target = scaling.decide(pool.policy, load, pool.replicas, now, pool.state)
                if target == pool.replicas:
                    continue
                if target < pool.replicas and pods is not None:
                    await _mark_busy_pods(rt, pool, pods, busy)
                log.info("pool %s/%s: %d → %d replicas (ready %d, running %d, busy pods %d)", pool.namespace,
                         pool.deployment, pool.replicas, target, load.ready, load.running, load.busy_pods)
                try:
                    await rt.kube.scale(pool.namespace, pool.deployment, target)
                    pool.replicas = target
                except kube.NotFound:
                    rt.pools.pop((pool.namespace, pool.deployment), None)
        await _wait(rt.scale_wake, rt.config.scale_interval_seconds)


async def _mark_busy_pods(rt: Runtime, pool: Pool, pods: list[kube.PodInfo], busy: dict[str, int]) -> None:
    """Idle pods cost 0 to delete, busy ones more per running task: the ReplicaSet removes idle pods first."""
    for pod in pods:
        if pod.terminating:
            continue
        cost = 1000 * busy[pod.name] if pod.name in busy else 0
        if pod.deletion_cost != cost:
            try:
                await rt.kube.set_deletion_cost(pool.namespace, pod.name, cost)
            except kube.NotFound:
                pass


async def _rescuer(conn: psycopg.AsyncConnection[Any]) -> None:
    rt = _runtime()
    while True:
        rescued = await store.rescue_expired(conn, limit=500)
        for item in rescued:
            log.warning("task %s/%s (uid %s) attempt %d: the lease of worker pod %s expired; %s", item.namespace,
                        item.name, item.uid, item.attempt, item.worker_pod,
                        "dead letter" if item.state == "dead_letter" else f"retrying at {item.run_at.isoformat()}",
                        extra=logs.about(item.namespace, item.name, item.uid))
            rt.meters.lease_expiries.labels(item.queue, item.state).inc()
        await asyncio.sleep(rt.config.rescue_interval_seconds * (0.8 + 0.4 * random.random()))


async def _cleaner(conn: psycopg.AsyncConnection[Any]) -> None:
    rt = _runtime()
    last_sweep = 0.0
    last_retention: float | None = None
    while True:
        for uid, namespace, name in await store.expired_ttl(conn, limit=500):
            try:
                await rt.kube.delete_task(namespace, name, uid)
            except (kube.NotFound, kube.Conflict):
                pass
            await store.mark_object_deleted(conn, uid)
        if time.monotonic() - last_sweep > rt.config.orphan_sweep_seconds:
            last_sweep = time.monotonic()
            # Only rows admitted before the list began can be judged by it.
            listed_at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
            live = await rt.kube.task_uids(rt.config.namespaces)
            cancelled = await store.cancel_missing(conn, live, admitted_before=listed_at)
            if cancelled:
                log.info("cancelled %d task(s) whose Task object was deleted while the operator was away", cancelled)
        if last_retention is None or time.monotonic() - last_retention > rt.config.history_retention_interval_seconds:
            last_retention = time.monotonic()
            await _retention_pass(rt, conn)
        await asyncio.sleep(rt.config.cleaner_interval_seconds)


async def _retention_pass(rt: Runtime, conn: psycopg.AsyncConnection[Any]) -> None:
    """Delete the finished history the retention settings let go, in bounded batches.

    A Task object whose row goes is left as it is: its status already shows how
    it ended, it is never admitted again (only Pending Tasks are), and nothing
    else reads it from PostgreSQL except ``kubetask history``, which then says
    there is none.
    """
    config = rt.config
    cutoff = await store.history_cutoff(conn, retention_days=config.history_retention_days,
                                        keep_last=config.history_keep_last)
    if cutoff is None:
        return
    began, deleted = time.monotonic(), 0
    while True:
        batch = await store.delete_history(conn, cutoff, config.history_retention_batch_size)
        deleted += batch
        if batch < config.history_retention_batch_size:
            break
    if deleted:
        log.info("history retention: deleted %d finished task(s) that finished before %s, in %.1fs",
                 deleted, cutoff.isoformat(), time.monotonic() - began)


METRICS_QUERY_TIMEOUT_SECONDS = 3.0
"""Longest a scrape waits for the database figures (Prometheus gives up on a scrape after 10 s by default)."""


async def _refresh_metrics() -> None:
    """Before a scrape: the leader re-reads the database figures, at most once per ``metrics.REFRESH_SECONDS``.

    A standby reports none (the leader does), and a failed refresh leaves none
    rather than stale ones; the scrape answers either way.
    """
    rt = _runtime()
    meters = rt.meters
    if not rt.leading:
        meters.database, meters.refreshed_at = None, None
        return
    async with rt.metrics_lock:
        if meters.refreshed_at is not None and time.monotonic() - meters.refreshed_at < metrics.REFRESH_SECONDS:
            return
        meters.database = None
        try:
            async with asyncio.timeout(METRICS_QUERY_TIMEOUT_SECONDS):
                if rt.metrics_conn is None or rt.metrics_conn.closed:
                    rt.metrics_conn = await _connect(rt.config.database.url)
                queues = await store.queue_gauges(rt.metrics_conn)
                backlog, lag = await store.mirror_lag(rt.metrics_conn)
        except BaseException:
            if rt.metrics_conn is not None:
                await rt.metrics_conn.close()
                rt.metrics_conn = None
            raise
        meters.database = metrics.DatabaseFacts(queues, backlog, lag)
        meters.refreshed_at = time.monotonic()


LEADER_LOOPS.update(mirror=_mirror, scaler=_scaler, rescuer=_rescuer, cleaner=_cleaner)
