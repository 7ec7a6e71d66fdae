"""The scaler's pass: a pool Deployment follows the due work of its queue."""

from __future__ import annotations

import asyncio

from conftest import create_task, pool_deployment, put_queue

from kubetask import db
from kubetask.operator import admission, pools, queues
from kubetask.operator.runtime import Runtime


async def test_run_once_scales_a_pool_to_its_due_work_within_its_max(runtime: Runtime, conn: db.connection.Conn,
                                                                      namespace: str) -> None:
    created = await asyncio.to_thread(runtime.kube.apps.create_namespaced_deployment, namespace,
                                      pool_deployment(namespace, "burst"))
    pools.register(runtime, runtime.kube.api_client.sanitize_for_serialization(created))
    assert (namespace, "pool-burst") in runtime.pools
    for _ in range(5):
        task = admission.admissible(await create_task(runtime, namespace, queue="burst"))
        assert isinstance(task, db.queue.NewTask)
        await db.queue.admit(conn, [task])
    await pools.run_once(runtime, conn)
    scale = await asyncio.to_thread(runtime.kube.apps.read_namespaced_deployment_scale, "pool-burst", namespace)
    assert scale.spec.replicas == 3, "5 due tasks at concurrency 1 want 5 pods; the pool's max is 3"


def test_a_bad_policy_edit_keeps_the_last_good_one(runtime: Runtime) -> None:
    good = pool_deployment("ns", "q")
    good["metadata"]["uid"] = ""
    pools.register(runtime, good)
    bad = pool_deployment("ns", "q")
    bad["metadata"]["annotations"]["kubetask.io/max-replicas"] = "many"
    pools.register(runtime, bad)
    assert runtime.pools[("ns", "pool-q")].policy.max_replicas == 3


async def replicas(rt: Runtime, namespace: str, deployment: str) -> int:
    scale = await asyncio.to_thread(rt.kube.apps.read_namespaced_deployment_scale, deployment, namespace)
    return int(scale.spec.replicas or 0)


async def test_a_queues_pools_hold_no_more_pods_than_max_running_and_none_while_paused(
        runtime: Runtime, conn: db.connection.Conn, namespace: str, queue_name: str) -> None:
    # Two pools of one queue (max 3 pods each, concurrency 1): 6 pods without a Queue, for 8 due tasks.
    for pool in ("a", "b"):
        body = pool_deployment(namespace, queue_name)
        body["metadata"]["name"] = f"pool-{pool}"
        created = await asyncio.to_thread(runtime.kube.apps.create_namespaced_deployment, namespace, body)
        pools.register(runtime, runtime.kube.api_client.sanitize_for_serialization(created))
    for _ in range(8):
        task = admission.admissible(await create_task(runtime, namespace, queue=queue_name))
        assert isinstance(task, db.queue.NewTask)
        await db.queue.admit(conn, [task])
    await pools.run_once(runtime, conn)
    assert [await replicas(runtime, namespace, d) for d in ("pool-a", "pool-b")] == [3, 3]

    # maxRunning 4 over both pools: the scaler reads it from the row the queues service writes, at once
    # (no cooldown: the limit is a ceiling, like a lowered max-replicas).
    await put_queue(runtime, queue_name, maxRunning=4)
    await queues.run_once(runtime, conn)
    await pools.run_once(runtime, conn)
    assert [await replicas(runtime, namespace, d) for d in ("pool-a", "pool-b")] == [3, 1]

    # Paused: nothing can be claimed and nothing runs, so both pools go to their minimum (0) at once.
    await put_queue(runtime, queue_name, paused=True)
    await queues.run_once(runtime, conn)
    await pools.run_once(runtime, conn)
    assert [await replicas(runtime, namespace, d) for d in ("pool-a", "pool-b")] == [0, 0]

    # Resumed, with maxRunning 2: scale-up is immediate, within the limit.
    await put_queue(runtime, queue_name, paused=False, maxRunning=2)
    await queues.run_once(runtime, conn)
    await pools.run_once(runtime, conn)
    assert [await replicas(runtime, namespace, d) for d in ("pool-a", "pool-b")] == [2, 0]
