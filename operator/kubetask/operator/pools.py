"""Worker pools: which Deployments serve which queue, and the scaler that sizes them to the queue.

A pool is a Deployment labelled ``kubetask.io/pool=<queue>``, its policy in
annotations (``scaling.policy_from``), in one of the pool namespaces
(``OperatorSettings.pool_scope``): the chart's Roles let the operator scale
Deployments and patch pods there and nowhere else. ``follow`` lists them and
then follows their watch in each of those namespaces, resuming from the last
version it saw and listing again only when that version has expired; the
first LIST lets the mirror tell "no pool serves this queue" from "not seen
yet". A bad edit of the annotations keeps the last good
policy and says why on the Deployment, so a typo never costs a pool its
scaling.

The scaler (leader only) reads the queue depths, lists each pool's pods, and
sets ``deployments/scale`` to ``scaling.decide``'s answer. Before a scale-in
it marks busy pods with a high ``pod-deletion-cost`` so the ReplicaSet removes
idle pods first. Every enqueue notification wakes it, but passes are at least
``SCALER_MIN_GAP_SECONDS`` apart; the first wake after a quiet spell acts at
once, so scaling from zero is not delayed.

A queue's Queue object bounds its pools through the queue's row (written by
the queues service; a change of it NOTIFYs ``kubetask_queue``, which wakes
the scaler): paused, its pools shrink to their minimum as running tasks
finish; with ``maxRunning`` they hold no more pods than can run that many
(``scaling.ceilings``, shared across every pool of the queue).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from kubetask import db, kube, scaling, supervise
from kubetask.operator.runtime import Pool, Runtime

log = logging.getLogger("kubetask.operator")

SCALER_MIN_GAP_SECONDS = 0.2
"""Shortest time between two scaling passes: in a burst of admissions a pass per batch was a
measurable share of the operator's CPU (bench/results), and 0.2 s is well inside the scale-up
latency users expect."""


def register(rt: Runtime, body: dict[str, Any], deleted: bool = False) -> None:
    """Follow a pool Deployment's watch event (or an item of the start-up LIST)."""
    meta = body.get("metadata", {})
    key = (meta["namespace"], meta["name"])
    if deleted:
        rt.pools.pop(key, None)
        return
    try:
        policy = scaling.policy_from(
            f"{key[0]}/{key[1]}", meta.get("labels", {})[kube.POOL_LABEL], dict(meta.get("annotations") or {}))
    except scaling.PolicyError as err:
        kept = rt.pools.get(key)
        log.error("%s%s", err, "; keeping the previous policy" if kept else "; the pool is not scaled until fixed")
        if meta.get("uid"):
            rt.in_background(_pool_event(rt, key[0], key[1], meta["uid"],
                                         f"{err}{'; keeping the previous policy' if kept else ''}"))
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


async def _pool_event(rt: Runtime, namespace: str, name: str, uid: str, message: str) -> None:
    try:
        await rt.kube.post_event(namespace, name, uid, "BadPoolPolicy", message, warning=True,
                                 kind="Deployment", api_version="apps/v1")
    except Exception as err:  # an Event is a courtesy; the log has the message too
        log.debug("event for Deployment %s/%s: %s", namespace, name, err)


async def follow(rt: Runtime) -> None:
    """Follow the pool Deployments of every pool namespace (the whole cluster when none is set), for ever."""
    scopes: list[str | None] = [*rt.config.pool_scope] or [None]
    listed: set[str | None] = set()
    await asyncio.gather(*(
        supervise.supervise(f"following worker pools in {scope or 'all namespaces'}",
                            functools.partial(_follow_scope, rt, scope, scopes, listed), log,
                            supervise.Delays(first=0.5, cap=10.0))
        for scope in scopes))


async def _follow_scope(rt: Runtime, scope: str | None, scopes: list[str | None], listed: set[str | None]) -> None:
    """LIST the pools of ``scope`` (forgetting those gone meanwhile), then WATCH from that list's version.

    Returns when the version has expired (410), so ``supervise`` lists again; other failures raise.
    """
    items, version = await rt.kube.pool_deployments(scope)
    present = {(body["metadata"]["namespace"], body["metadata"]["name"]) for body in items}
    for key in [key for key in rt.pools if (scope is None or key[0] == scope) and key not in present]:
        rt.pools.pop(key)
    for body in items:
        register(rt, body)
    listed.add(scope)
    rt.pools_listed = listed >= set(scopes)
    try:
        while True:
            async for event in rt.kube.watch_pool_deployments(scope, version):
                body = event.get("object") or {}
                version = (body.get("metadata") or {}).get("resourceVersion") or version
                if event.get("type") != "BOOKMARK":
                    register(rt, body, deleted=event.get("type") == "DELETED")
    except kube.Expired:
        log.debug("watch of worker pools in %s expired; listing again", scope or "all namespaces")


async def run_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    """One scaling pass over every pool; never sooner than ``SCALER_MIN_GAP_SECONDS`` after the last."""
    gap = rt.last_scale_pass + SCALER_MIN_GAP_SECONDS - time.monotonic()
    if gap > 0:
        await asyncio.sleep(gap)
    rt.last_scale_pass = time.monotonic()
    if not rt.pools:
        return False
    depths = await db.reads.queue_depths(conn)
    rows = await db.queues.rows(conn)
    now = time.monotonic()
    looked: list[tuple[Pool, scaling.Load, list[kube.PodInfo] | None, dict[str, int]]] = []
    for pool in sorted(rt.pools.values(), key=lambda p: (p.namespace, p.deployment)):
        depth = depths.get(pool.policy.queue)
        busy = dict(depth.busy_pods) if depth else {}
        pods = None
        if pool.selector:
            pods = await rt.kube.pods(pool.namespace, pool.selector)
            live = {p.name for p in pods if not p.terminating}
            pool.pods = len(live)
            busy = {pod: n for pod, n in busy.items() if pod in live}
        load = scaling.Load(ready=depth.handlers_due if depth else 0, running=depth.handlers_running if depth else 0,
                            busy_pods=len(busy))
        looked.append((pool, load, pods, busy))
    by_queue: dict[str, list[int]] = {}
    for i, (pool, _, _, _) in enumerate(looked):
        by_queue.setdefault(pool.policy.queue, []).append(i)
    for queue, members in by_queue.items():
        limits = queue_limits(rows.get(queue))
        tops = scaling.ceilings(limits, [(looked[i][0].policy, looked[i][1]) for i in members])
        for i, top in zip(members, tops):
            pool, load, pods, busy = looked[i]
            await _scale(rt, pool, load, pods, busy,
                         scaling.decide(pool.policy, load, pool.replicas, now, pool.state, limits, top), limits)
    return False


def queue_limits(row: db.queues.QueueRow | None) -> scaling.QueueLimits:
    """What the scaler obeys of a queue's row (no row, no Queue object: nothing)."""
    return scaling.QueueLimits() if row is None else scaling.QueueLimits(row.paused, row.max_running)


async def _scale(rt: Runtime, pool: Pool, load: scaling.Load, pods: list[kube.PodInfo] | None,
                 busy: dict[str, int], target: int, limits: scaling.QueueLimits) -> None:
    if target == pool.replicas:
        return
    if target < pool.replicas and pods is not None:
        await _mark_busy_pods(rt, pool, pods, busy)
    log.info("pool %s/%s: %d → %d replicas (ready %d, running %d, busy pods %d%s%s)", pool.namespace,
             pool.deployment, pool.replicas, target, load.ready, load.running, load.busy_pods,
             ", queue paused" if limits.paused else "",
             f", maxRunning {limits.max_running}" if limits.max_running is not None else "")
    try:
        await rt.kube.scale(pool.namespace, pool.deployment, target)
        pool.replicas = target
    except kube.NotFound:
        rt.pools.pop((pool.namespace, pool.deployment), None)


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
