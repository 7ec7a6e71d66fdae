"""Pool discovery: the operator follows the pool Deployments of its pool namespaces, and no others."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import contextlib
import gc
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import pool_deployment
from kubetask_dev import controlplane

from kubetask import kube, settings
from kubetask.operator import pools
from kubetask.operator.runtime import Runtime
from tests.conftest import temporary_namespace


@pytest.fixture
def other_namespace(control_plane: controlplane.ControlPlane) -> Iterator[str]:
    with temporary_namespace(control_plane, "t-other-" + uuid.uuid4().hex[:8]) as name:
        yield name


@contextlib.asynccontextmanager
async def following(rt: Runtime) -> AsyncIterator[None]:
    task = asyncio.create_task(pools.follow(rt))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def create(rt: Runtime, namespace: str, queue: str) -> None:
    await asyncio.to_thread(rt.kube.apps.create_namespaced_deployment, namespace, pool_deployment(namespace, queue))


async def test_pools_are_followed_only_in_the_pool_namespaces(
        dsn: str, crd_plane: controlplane.ControlPlane, namespace: str, other_namespace: str,
        wait_until: Any) -> None:
    config = settings.OperatorSettings.from_env({"DATABASE_URL": dsn, "KUBETASK_POOL_NAMESPACES": namespace})
    rt = Runtime(config=config, kube=kube.Kube(kubeconfig=str(crd_plane.kubeconfig)))
    try:
        await create(rt, namespace, "before")  # seen by the first LIST
        await create(rt, other_namespace, "elsewhere")
        async with following(rt):
            await wait_until(lambda: asyncio.sleep(0, rt.pools_listed), 15, what="the first LIST")
            assert set(rt.pools) == {(namespace, "pool-before")}
            await create(rt, namespace, "after")  # seen through the WATCH
            await wait_until(lambda: asyncio.sleep(0, (namespace, "pool-after") in rt.pools), 15,
                             what="the watched pool")
            patch = {"metadata": {"annotations": {"kubetask.io/max-replicas": "7"}}}
            await asyncio.to_thread(rt.kube.apps.patch_namespaced_deployment, "pool-after", namespace, patch)
            await wait_until(lambda: asyncio.sleep(0, rt.pools[(namespace, "pool-after")].policy.max_replicas == 7),
                             15, what="the edited policy")
            await asyncio.to_thread(rt.kube.apps.delete_namespaced_deployment, "pool-before", namespace)
            await wait_until(lambda: asyncio.sleep(0, (namespace, "pool-before") not in rt.pools), 15,
                             what="the deleted pool to be forgotten")
            await create(rt, other_namespace, "still-elsewhere")
            # Watch events come in resourceVersion order: were the other namespace watched, its pool
            # (created first) would be known by the time the marker is.
            await create(rt, namespace, "marker")
            await wait_until(lambda: asyncio.sleep(0, (namespace, "pool-marker") in rt.pools), 15, what="the marker")
            assert {key[0] for key in rt.pools} == {namespace}
    finally:
        await rt.close()


async def test_a_cancelled_watch_leaves_no_socket_open(dsn: str, crd_plane: controlplane.ControlPlane,
                                                      namespace: str, wait_until: Any) -> None:
    """A watch cut by cancellation is aborted, not left in a TLS shutdown that outlives ``close()``
    (an open socket, and a ResourceWarning in whichever test collects it)."""
    def open_sockets() -> list[asyncio.Transport]:
        loop = asyncio.get_running_loop()
        return [o for o in gc.get_objects() if isinstance(o, asyncio.selector_events._SelectorSocketTransport)
                and o._loop is loop and not o.is_closing()]  # type: ignore[attr-defined]

    config = settings.OperatorSettings.from_env({"DATABASE_URL": dsn, "KUBETASK_POOL_NAMESPACES": namespace})
    rt = Runtime(config=config, kube=kube.Kube(kubeconfig=str(crd_plane.kubeconfig)))
    try:
        async with following(rt):
            await wait_until(lambda: asyncio.sleep(0, rt.pools_listed), 15, what="the first LIST")
            assert open_sockets(), "the watch holds a connection"
    finally:
        await rt.close()
    assert open_sockets() == []


def test_the_pool_scope_defaults_to_the_served_namespaces_then_the_cluster() -> None:
    env = {"DATABASE_URL": "postgresql://u@h/d"}
    assert settings.OperatorSettings.from_env(env).pool_scope == []
    assert settings.OperatorSettings.from_env({**env, "KUBETASK_NAMESPACES": "a,b"}).pool_scope == ["a", "b"]
    assert settings.OperatorSettings.from_env(
        {**env, "KUBETASK_NAMESPACES": "a,b", "KUBETASK_POOL_NAMESPACES": "kt"}).pool_scope == ["kt"]
