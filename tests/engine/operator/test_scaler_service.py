"""The scaler's pass: a pool Deployment follows the due work of its queue."""

from __future__ import annotations

import asyncio

from conftest import create_task, pool_deployment

from kubetask import db
from kubetask.operator import admission, pools
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
