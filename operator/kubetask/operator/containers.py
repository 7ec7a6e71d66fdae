"""Container Tasks: the leader runs each attempt as a pod of its own, in the Task's namespace.

Two leader services. ``watch_once`` lists and then watches the task pods
(``pods.selector``: those labelled as this operator's) into ``rt.task_pods.pods`` and wakes the other on every
change. ``run_once`` is one pass:

1. **Adopt** (once per leadership): every task pod whose attempt still runs
   in PostgreSQL becomes this leader's (its lease moves here, whoever held it),
   so a new leader never makes a second pod for an attempt; a pod of an attempt
   that no longer runs is deleted.
2. **Renew** the leases of the attempts held. One the heartbeat says is no
   longer ours (the Task was deleted, or the attempt was rescued) is dropped
   and its pod deleted.
3. **Observe** each held attempt's pod (``pods.observe``): when it ended,
   read the last 64 KiB of its log, record exit code, reason and log tail with
   the outcome (success, or a failure retried by the Task's budget and backoff;
   a permanent exit code or an image name that cannot be valid goes to the dead
   letter; activeDeadlineSeconds is a timeout), then delete the pod. A pod that
   vanished before its container ended is a lost attempt, retried. A pod that
   cannot be scheduled or started is told once in a Warning Event on the Task.
4. **Claim** due container tasks, queue by queue, through the queue's own
   claim (priority, the Queue's pause, maxRunning, rate and concurrency-key
   limits, its namespaces), up to ``container_max_pods`` in flight, and create
   each attempt's pod from ``spec.container`` and the Queue's ``podPolicy``. An
   image or resources the policy refuses, or a pod the API server refuses (Pod
   Security, a bad spec), fails the attempt with the reason, no pod made.

Everything is resumed from PostgreSQL and the pods' labels: a leader that dies
leaves leases that the next one adopts, or that expire and are rescued.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from typing import Any

import pydantic

from kubetask import db, kube, model, pods, retry, states
from kubetask.operator.runtime import Held, Runtime

log = logging.getLogger("kubetask.operator")

#: Lines of log asked for when a pod ends; the tail kept is ``model.LOG_TAIL_BYTES`` of them.
LOG_TAIL_LINES = 10_000
#: Seconds a held attempt's pod may be missing from the watch right after its creation before it
#: counts as lost (the watch may not have shown it yet).
CREATE_GRACE_SECONDS = 30.0
_rng = random.Random()


def _namespaces(rt: Runtime) -> list[str | None]:
    return list(rt.config.namespaces) or [None]


async def watch_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    """List the task pods, then follow their watch until it ends; always True (run again)."""
    state = rt.task_pods
    listed: dict[tuple[str, int], dict[str, Any]] = {}
    versions: dict[str | None, str] = {}
    for namespace in _namespaces(rt):
        items, versions[namespace] = await rt.kube.task_pods(namespace, pods.selector(rt.config.managed_by))
        for pod in items:
            key = pods.attempt_of(pod)
            if key is not None:
                listed[key] = pod
    state.pods = listed
    state.listed = True
    state.wake.set()

    async def follow(namespace: str | None) -> None:
        version = versions[namespace]
        while True:
            async for event in rt.kube.watch_task_pods(namespace, pods.selector(rt.config.managed_by), version):
                pod = event.get("object") or {}
                version = (pod.get("metadata") or {}).get("resourceVersion", version)
                if event.get("type") == "BOOKMARK":
                    continue
                key = pods.attempt_of(pod)
                if key is None:
                    continue
                if event.get("type") == "DELETED":
                    state.pods.pop(key, None)
                else:
                    state.pods[key] = pod
                state.wake.set()

    try:
        await asyncio.gather(*(follow(ns) for ns in versions))
    except kube.Expired:
        pass  # too old to resume: list again
    finally:
        state.listed = False
    return True


async def run_once(rt: Runtime, conn: db.connection.Conn) -> bool:
    """One pass: adopt or clear stray pods, renew, observe, claim. True when more is waiting at once."""
    state = rt.task_pods
    if not state.listed:
        return False
    await _strays(rt, conn)
    await _renew(rt, conn)
    await _observe(rt, conn)
    await _sweep_kept(rt)
    return await _claim(rt, conn)


async def _strays(rt: Runtime, conn: db.connection.Conn) -> None:
    """Task pods of attempts this leader does not hold: adopt those still running, delete the others.

    At the start of a leadership these are every running pod (a new leader adopts them whoever held
    them, so no attempt gets a second pod); later, a pod whose attempt was rescued or cancelled, or one
    whose deletion failed.
    """
    state = rt.task_pods
    held = {(h.task.uid, h.task.attempt) for h in state.held.values()}
    strays = sorted(key for key, pod in state.pods.items()
                    if key not in held and not (pod.get("metadata") or {}).get("deletionTimestamp")
                    and ((pod.get("metadata") or {}).get("namespace"), (pod.get("metadata") or {}).get("name"))
                    not in state.kept)
    if not strays:
        return
    running = await db.containers.running_attempts(conn, strays)
    adopted = await db.containers.adopt(conn, rt.lease_owner, rt.config.container_lease_seconds, sorted(running))
    now = time.monotonic()
    for task in adopted:
        pod = state.pods.get((task.uid, task.attempt)) or {}
        state.held[task.id] = Held(task, (pod.get("metadata") or {}).get("name")
                                   or pods.pod_name(task.name, task.uid, task.attempt), now)
    if adopted:
        log.info("adopted %d running container attempts from their pods", len(adopted))
    for key in strays:
        if key not in running and key in state.pods:
            await _delete_stale(rt, state.pods[key])


async def _delete_stale(rt: Runtime, pod: dict[str, Any]) -> None:
    """A task pod whose attempt is over (or is not this database's): delete it, unless it is a kept one."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or (meta.get("namespace"), meta.get("name")) in rt.task_pods.kept:
        return
    phase = (pod.get("status") or {}).get("phase")
    if phase == "Failed" and rt.config.keep_failed_pods_seconds > 0:
        rt.task_pods.kept[(meta["namespace"], meta["name"])] = time.monotonic() + rt.config.keep_failed_pods_seconds
        return
    await _delete(rt, meta["namespace"], meta["name"], meta.get("uid"))


async def _delete(rt: Runtime, namespace: str, name: str, uid: str | None = None) -> None:
    try:
        await rt.kube.delete_pod(namespace, name, uid)
    except (kube.NotFound, kube.Conflict):
        pass


async def _renew(rt: Runtime, conn: db.connection.Conn) -> None:
    state = rt.task_pods
    if not state.held:
        return
    gone = await db.queue.heartbeat(conn, rt.lease_owner, rt.config.container_lease_seconds, list(state.held))
    if not gone:
        return
    # Not ours any more: the Task was deleted (cancelled), the attempt was rescued, or another leader
    # adopted it. Only in that last case does its pod live on.
    lost = [state.held.pop(task_id) for task_id in gone if task_id in state.held]
    still = await db.containers.running_attempts(conn, [(h.task.uid, h.task.attempt) for h in lost])
    for held in lost:
        if (held.task.uid, held.task.attempt) not in still:
            await _delete(rt, held.task.namespace, held.pod)


async def _observe(rt: Runtime, conn: db.connection.Conn) -> None:
    state = rt.task_pods
    now = datetime.datetime.now(datetime.timezone.utc)
    over: list[tuple[Held, pods.Ended]] = []
    for task_id, held in list(state.held.items()):
        task = held.task
        pod = state.pods.get((task.uid, task.attempt))
        if pod is None:
            if time.monotonic() - held.since < CREATE_GRACE_SECONDS:
                continue
            await _finish(rt, conn, held, pods.Ended(
                False, "PodLost", f"pod {task.namespace}/{held.pod} disappeared before its container ended "
                                  "(deleted by hand, evicted, or its node was lost)"), None, lost=True)
            continue
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            # Deleted while its attempt is ours (we delete a pod only once its attempt is recorded): by hand,
            # by an eviction or a drain. Whatever its container says, the attempt was interrupted: lost.
            ended = pods.interrupted(pod)
            await _finish(rt, conn, held, ended, await _log_tail(rt, task.namespace, held.pod), lost=True)
            continue
        seen = pods.observe(pod, now, rt.config.container_start_timeout_seconds)
        if isinstance(seen, pods.Waiting):
            if held.waiting_told != seen.reason:
                held.waiting_told = seen.reason
                rt.in_background(rt.kube.post_event(
                    task.namespace, task.name, task.uid, seen.reason,
                    f"attempt {task.attempt}: pod {held.pod} is not running: {seen.reason}"
                    + (f": {seen.message}" if seen.message else ""), warning=True))
            continue
        if seen is None:
            continue
        over.append((held, seen))
    if not over:
        return
    # The API calls of the pods that ended go out together (bounded like the mirror's); the outcomes are
    # recorded one after the other on this pass's connection.
    limit = asyncio.Semaphore(rt.config.api_concurrency)

    async def bounded(call: Any) -> Any:
        async with limit:
            return await call

    tails = await asyncio.gather(*(bounded(_log_tail(rt, h.task.namespace, h.pod)) for h, _ in over))
    # Successes in one transaction of two statements, however many; each failure has its own retry decision.
    await _succeed(rt, conn, [(held, seen, tail) for (held, seen), tail in zip(over, tails) if seen.succeeded])
    deletes = []
    for (held, seen), tail in zip(over, tails):
        if not seen.succeeded:
            await _finish(rt, conn, held, seen, tail)
        if not seen.succeeded and rt.config.keep_failed_pods_seconds > 0:
            state.kept[(held.task.namespace, held.pod)] = time.monotonic() + rt.config.keep_failed_pods_seconds
        else:
            deletes.append(bounded(_delete(rt, held.task.namespace, held.pod)))
    await asyncio.gather(*deletes)


async def _log_tail(rt: Runtime, namespace: str, pod: str) -> str | None:
    try:
        raw = await rt.kube.pod_log(namespace, pod, model.TASK_CONTAINER, LOG_TAIL_LINES, model.LOG_TAIL_BYTES)
    except (kube.NotFound, kube.ApiError, OSError, asyncio.TimeoutError) as err:
        log.info("no log for pod %s/%s: %s", namespace, pod, err)
        return None
    return raw.decode("utf-8", "replace")


def _exit(held: Held, ended: pods.Ended, tail: str | None) -> db.containers.Exit:
    return db.containers.Exit(held.task.id, held.task.attempt, ended.exit_code, ended.reason, tail)


async def _succeed(rt: Runtime, conn: db.connection.Conn, done: list[tuple[Held, pods.Ended, str | None]]) -> None:
    """Record succeeded attempts (exit code, reason, log tail, outcome) in one transaction."""
    if not done:
        return
    for held, _, _ in done:
        rt.task_pods.held.pop(held.task.id, None)
    async with conn.transaction():
        await db.containers.record_exit(conn, rt.lease_owner, [_exit(*item) for item in done])
        await db.queue.complete_many(conn, rt.lease_owner,
                                     [(held.task.id, held.task.attempt, {"exitCode": 0}) for held, _, _ in done])


async def _finish(rt: Runtime, conn: db.connection.Conn, held: Held, ended: pods.Ended, tail: str | None,
                  lost: bool = False) -> None:
    """Record the attempt's end (exit code, reason, log tail and outcome) in one transaction."""
    if ended.succeeded:
        await _succeed(rt, conn, [(held, ended, tail)])
        return
    task = held.task
    rt.task_pods.held.pop(task.id, None)
    async with conn.transaction():
        await db.containers.record_exit(conn, rt.lease_owner, [_exit(held, ended, tail)])
        permanent = ended.permanent or (ended.exit_code is not None and ended.exit_code in task.permanent_exit_codes)
        decision = retry.decide(task.attempt_in_budget, task.max_retries, task.backoff, permanent,
                                datetime.datetime.now(datetime.timezone.utc), _rng)
        message = ended.message
        if permanent and ended.exit_code in task.permanent_exit_codes:
            message += f"; exit code {ended.exit_code} is in spec.permanentExitCodes: not retried"
        outcome = (states.Outcome.LOST if lost else states.Outcome.TIMEOUT if ended.timeout
                   else states.Outcome.FAILED)
        await db.queue.fail(conn, task.id, rt.lease_owner, task.attempt, error_type=ended.reason, message=message,
                            traceback=None, outcome=outcome,
                            retry_in_seconds=decision.delay_seconds if isinstance(decision, retry.Retry) else None)


async def _sweep_kept(rt: Runtime) -> None:
    kept = rt.task_pods.kept
    now = time.monotonic()
    for key, until in list(kept.items()):
        if now >= until:
            del kept[key]
            await _delete(rt, *key)


async def _claim(rt: Runtime, conn: db.connection.Conn) -> bool:
    state = rt.task_pods
    room = rt.config.container_max_pods - len(state.held)
    if room <= 0:
        return False
    queues = await db.containers.due_queues(conn)
    if not queues:
        return False
    rows = await db.queues.rows(conn)
    more = False
    for queue in queues:
        if room <= 0:
            return True
        want = min(room, BATCH)
        claimed = await db.queue.claim(conn, queue, rt.lease_owner, "", want, rt.config.container_lease_seconds,
                                       containers=True)
        more = more or len(claimed) == want
        room -= len(claimed)
        row = rows.get(queue)
        policy = row.policy if row is not None else model.PodPolicy()
        limit = asyncio.Semaphore(rt.config.api_concurrency)
        bodies = [(task, await _body(rt, conn, task, policy)) for task in claimed]
        wanted = [(task, body) for task, body in bodies if body is not None]

        async def create(task: db.queue.ClaimedTask, body: dict[str, Any]) -> kube.ApiError | None:
            async with limit:
                try:
                    await rt.kube.create_pod(task.namespace, body)
                except kube.Conflict:
                    pass  # the attempt's pod exists (made before a restart): it is the one to follow
                except kube.ApiError as err:
                    return err
                return None

        errors = await asyncio.gather(*(create(task, body) for task, body in wanted))
        made: list[tuple[int, int, str]] = []
        for (task, body), err in zip(wanted, errors):
            if err is None:
                made.append((task.id, task.attempt, body["metadata"]["name"]))
            else:
                await _refused_by_api(rt, conn, task, err)
        await db.containers.set_pods(conn, rt.lease_owner, made)
    return more


BATCH = 200
"""Most container tasks claimed from one queue in one statement (and no more than there is room for)."""


async def _body(rt: Runtime, conn: db.connection.Conn, task: db.queue.ClaimedTask,
                policy: model.PodPolicy) -> dict[str, Any] | None:
    """The attempt's pod, now held; None when the policy refuses it (the attempt failed, recorded)."""
    held = Held(task, pods.pod_name(task.name, task.uid, task.attempt), time.monotonic())
    try:
        container = model.Container.model_validate(task.container or {})
    except pydantic.ValidationError as err:
        await _refuse(rt, conn, held, "InvalidContainer", f"spec.container: {err.errors()[0]['msg']}", permanent=True)
        return None
    refused = pods.refusal(container, policy, task.queue)
    if refused is not None:
        await _refuse(rt, conn, held, *refused, permanent=True)
        return None
    rt.task_pods.held[task.id] = held
    return pods.build(pods.Attempt(task.uid, task.namespace, task.name, task.queue, task.attempt, task.payload,
                                   task.timeout_seconds), container, policy, rt.config.managed_by)


async def _refused_by_api(rt: Runtime, conn: db.connection.Conn, task: db.queue.ClaimedTask,
                          err: kube.ApiError) -> None:
    held = rt.task_pods.held.pop(task.id)
    # 403: Pod Security Admission or a ResourceQuota; 422: the API server finds the pod invalid.
    reason = "PodForbidden" if err.status == 403 else "PodInvalid" if err.status == 422 else "PodCreateFailed"
    quota = "exceeded quota" in err.reason
    await _refuse(rt, conn, held, reason, f"the API server refused pod {held.pod}: {err.reason}",
                  permanent=reason != "PodCreateFailed" and not quota)


async def _refuse(rt: Runtime, conn: db.connection.Conn, held: Held, error_type: str, message: str,
                  permanent: bool) -> None:
    """The attempt cannot get a pod: record it failed with why (no exit code), and tell the Task's Events."""
    await _finish(rt, conn, held, pods.Ended(False, error_type, message, permanent=permanent), None)
    rt.in_background(rt.kube.post_event(held.task.namespace, held.task.name, held.task.uid, error_type, message,
                                        warning=True))
