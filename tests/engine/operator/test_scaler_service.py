"""The scaler's pass: a pool Deployment follows the due work of its queue."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import create_task

from kubetask import db, kube
from kubetask.operator import admission, pools
from kubetask.operator.runtime import Runtime


def deployment(namespace: str, queue: str, replicas: int = 0) -> dict[str, Any]:
    labels = {"app": f"pool-{queue}"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"pool-{queue}", "namespace": namespace,
                         "labels": {kube.POOL_LABEL: queue},
                         "annotations": {"kubetask.io/max-replicas": "3", "kubetask.io/concurrency": "1"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "worker", "image": "kubetask:never-pulled"}]}}}}


async def test_run_once_scales_a_pool_to_its_due_work_within_its_max(runtime: Runtime, conn: db.connection.Conn,
                                                                      namespace: str) -> None:
    created = await asyncio.to_thread(runtime.kube.apps.create_namespaced_deployment, namespace,
                                      deployment(namespace, "burst"))
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
    good = deployment("ns", "q")
    good["metadata"]["uid"] = ""
    pools.register(runtime, good)
    bad = deployment("ns", "q")
    bad["metadata"]["annotations"]["kubetask.io/max-replicas"] = "many"
    pools.register(runtime, bad)
    assert runtime.pools[("ns", "pool-q")].policy.max_replicas == 3
