"""The operator's services, one ``run_once`` at a time: real PostgreSQL, real API server, no kopf.

Each test gets a fresh database (the engine fixtures) and a namespace of its
own on the session's control plane, and a ``Runtime`` built as ``app`` builds
it at start-up, so a service's pass is exercised exactly as the operator runs
it, minus the loop around it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubetask_dev import controlplane, devstack

from kubetask import kube, model, settings
from kubetask.operator.runtime import Runtime

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def crd_plane(control_plane: controlplane.ControlPlane) -> controlplane.ControlPlane:
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    control_plane.kubectl("wait", "--for=condition=Established", "crd/tasks.kubetask.io", "crd/queues.kubetask.io",
                          "crd/taskschedules.kubetask.io", "--timeout=60s")
    # Established is not served yet: a LIST right after answers 429 "storage is (re)initializing".
    devstack.wait_for(lambda: control_plane.kubectl("get", "tasks,taskschedules,queues", "-A", check=False).returncode == 0,
                      30, "the kubetask.io resources to be served", interval=0.2)
    return control_plane


@pytest.fixture
async def runtime(dsn: str, crd_plane: controlplane.ControlPlane) -> AsyncIterator[Runtime]:
    config = settings.OperatorSettings.from_env({"DATABASE_URL": dsn})
    rt = Runtime(config=config, kube=kube.Kube(kubeconfig=str(crd_plane.kubeconfig)))
    try:
        yield rt
    finally:
        await rt.close()
        # A connection this test left open is reported here, in this test, not in whichever later one
        # happens to trigger the collection (pytest's unraisable-exception check, filterwarnings=error).
        gc.collect()


async def create_task(rt: Runtime, namespace: str, name: str | None = None, **spec: Any) -> dict[str, Any]:
    """Create a Task object and return its body as the API server stored it (uid, creationTimestamp)."""
    body = {"apiVersion": model.API_VERSION, "kind": model.KIND,
            "metadata": {"name": name or f"t-{uuid.uuid4().hex[:8]}", "namespace": namespace},
            "spec": {"type": "echo", **spec}}
    created: dict[str, Any] = await asyncio.to_thread(
        rt.kube.custom.create_namespaced_custom_object, model.GROUP, model.VERSION, namespace, model.PLURAL, body)
    return created


async def get_task(rt: Runtime, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = await asyncio.to_thread(
            rt.kube.custom.get_namespaced_custom_object, model.GROUP, model.VERSION, namespace, model.PLURAL, name)
    except Exception as err:
        if getattr(err, "status", None) == 404:
            return None
        raise
    return found


async def events_of(rt: Runtime, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = await asyncio.to_thread(rt.kube.core.list_namespaced_event, namespace,
                                     field_selector=f"involvedObject.name={name}")
    return [json.loads(json.dumps(rt.kube.api_client.sanitize_for_serialization(e))) for e in listed.items]


def pool_deployment(namespace: str, queue: str, replicas: int = 0) -> dict[str, Any]:
    """A worker-pool Deployment of ``queue`` (max 3 replicas, concurrency 1) whose pods never run."""
    labels = {"app": f"pool-{queue}"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"pool-{queue}", "namespace": namespace,
                         "labels": {kube.POOL_LABEL: queue},
                         "annotations": {"kubetask.io/max-replicas": "3", "kubetask.io/concurrency": "1"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "worker", "image": "kubetask:never-pulled"}]}}}}


@pytest.fixture
async def queue_name(runtime: Runtime) -> AsyncIterator[str]:
    """A queue name of this test's own (Queues are cluster-wide), its Queue object deleted at the end."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        await asyncio.to_thread(runtime.kube.custom.delete_cluster_custom_object, model.GROUP, model.VERSION,
                                model.QUEUE_PLURAL, name)
    except Exception as err:
        if getattr(err, "status", None) != 404:
            raise


async def put_queue(rt: Runtime, name: str, **spec: Any) -> None:
    """Create the Queue, or replace its spec (a merge patch)."""
    body = {"apiVersion": model.API_VERSION, "kind": model.QUEUE_KIND, "metadata": {"name": name}, "spec": spec}
    try:
        await asyncio.to_thread(rt.kube.custom.create_cluster_custom_object, model.GROUP, model.VERSION,
                                model.QUEUE_PLURAL, body)
    except Exception as err:
        if getattr(err, "status", None) != 409:
            raise
        await asyncio.to_thread(rt.kube.custom.patch_cluster_custom_object, model.GROUP, model.VERSION,
                                model.QUEUE_PLURAL, name, {"spec": spec})
