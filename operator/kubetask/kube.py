"""Every call the operator makes to the Kubernetes API, in one place.

kopf watches; this module writes. The ``kubernetes`` client is synchronous, so
each call runs in a bounded thread pool (``asyncio.to_thread`` on a dedicated
executor): the event loop never blocks and the API server never sees more
than ``max_concurrency`` requests from us at once.

Workers never import this module: they need no Kubernetes credentials.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime
import functools
import uuid
from typing import Any, Callable, Sequence, TypeVar

import kubernetes

from kubetask import model

T = TypeVar("T")

POOL_LABEL = f"{model.GROUP}/pool"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


class NotFound(Exception):
    """The object is gone (deleted meanwhile)."""


class Conflict(Exception):
    """A precondition failed (the object was replaced by another with the same name)."""


@dataclasses.dataclass(frozen=True)
class PodInfo:
    name: str
    deletion_cost: int | None
    terminating: bool


class Kube:
    def __init__(self, max_concurrency: int = 16) -> None:
        config = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
        config.connection_pool_maxsize = max_concurrency
        self.api_client = kubernetes.client.ApiClient(config)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.apps = kubernetes.client.AppsV1Api(self.api_client)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="kube")
        self.writes = 0
        """API writes made, for the benchmarks' writes-per-Task figure."""

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                raise NotFound(str(err.reason)) from err
            if err.status == 409:
                raise Conflict(str(err.reason)) from err
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()  # type: ignore[no-untyped-call]

    # -- Tasks ----------------------------------------------------------------------

    async def patch_task_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource; the uid precondition skips a re-created namesake."""
        self.writes += 1
        body = {"metadata": {"uid": uid}, "status": status}
        await self._call(
            self.custom.patch_namespaced_custom_object_status,
            model.GROUP, model.VERSION, namespace, model.PLURAL, name, body,
        )

    async def delete_task(self, namespace: str, name: str, uid: str) -> None:
        self.writes += 1
        await self._call(
            self.custom.delete_namespaced_custom_object,
            model.GROUP, model.VERSION, namespace, model.PLURAL, name,
            body={"preconditions": {"uid": uid}, "propagationPolicy": "Background"},
        )

    async def task_uids(self, namespaces: Sequence[str] = ()) -> set[str]:
        """uids of every Task in ``namespaces`` (all when empty), one page at a time.

        Per namespace when the operator is namespaced: its Roles allow no cluster-wide list.
        """
        uids: set[str] = set()
        targets: list[str | None] = [*namespaces] if namespaces else [None]
        for namespace in targets:
            cont: str | None = None
            while True:
                kwargs: dict[str, Any] = {"limit": 2000}
                if cont:
                    kwargs["_continue"] = cont
                if namespace is None:
                    page = await self._call(self.custom.list_cluster_custom_object,
                                            model.GROUP, model.VERSION, model.PLURAL, **kwargs)
                else:
                    page = await self._call(self.custom.list_namespaced_custom_object,
                                            model.GROUP, model.VERSION, namespace, model.PLURAL, **kwargs)
                assert isinstance(page, dict)
                uids.update(item["metadata"]["uid"] for item in page["items"])
                cont = page["metadata"].get("continue")
                if not cont:
                    break
        return uids

    async def post_event(self, namespace: str, name: str, uid: str, reason: str, message: str, warning: bool = False) -> None:
        """A core/v1 Event on the Task, as ``kubectl describe task`` shows them."""
        self.writes += 1
        now = datetime.datetime.now(datetime.timezone.utc)
        body = {
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {"apiVersion": model.API_VERSION, "kind": model.KIND, "name": name,
                               "namespace": namespace, "uid": uid},
            "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
            "source": {"component": "kubetask-operator"}, "reportingComponent": "kubetask.io/operator",
            "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
        }
        await self._call(self.core.create_namespaced_event, namespace, body)

    # -- worker pools ---------------------------------------------------------------

    async def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        self.writes += 1
        await self._call(self.apps.patch_namespaced_deployment_scale, deployment, namespace, {"spec": {"replicas": replicas}})

    async def pods(self, namespace: str, selector: dict[str, str]) -> list[PodInfo]:
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        listing = await self._call(self.core.list_namespaced_pod, namespace, label_selector=label_selector)
        out = []
        for pod in listing.items:
            meta = pod.metadata
            if meta is None or meta.name is None:
                continue
            raw = (meta.annotations or {}).get(DELETION_COST)
            try:
                cost = int(raw) if raw is not None else None
            except ValueError:
                cost = None
            out.append(PodInfo(meta.name, cost, meta.deletion_timestamp is not None))
        return out

    async def set_deletion_cost(self, namespace: str, pod: str, cost: int) -> None:
        self.writes += 1
        await self._call(self.core.patch_namespaced_pod, pod, namespace,
                         {"metadata": {"annotations": {DELETION_COST: str(cost)}}})
