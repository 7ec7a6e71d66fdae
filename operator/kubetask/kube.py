"""Every call the operator makes to the Kubernetes API, in one place.

kopf watches the Tasks; this module writes, and follows the worker-pool
Deployments itself: a label-selected LIST and WATCH in each pool namespace
only, where kopf would watch every Deployment of the cluster (needing
cluster-wide RBAC on Deployments, and holding them all in memory). The hot writes, one or two per Task (the
status patch and the Event), go over aiohttp (which kopf ships) on the event
loop, with keep-alive connections: a request costs a fraction of the CPU of
the generated ``kubernetes`` client in a thread, which was the ceiling of the
status mirror (bench/e2e.py). The rare calls (scale, pod listing, deletion,
the orphan sweep's LIST) keep the synchronous ``kubernetes`` client, each in
a bounded thread pool. Either way the API server never sees more than
``max_concurrency`` requests from each path at once.

Workers never import this module: they need no Kubernetes credentials.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import datetime
import functools
import json
import ssl
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any, Callable, Sequence, TypeVar

import aiohttp
import kubernetes

from kubetask import model

T = TypeVar("T")

POOL_LABEL = f"{model.GROUP}/pool"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"
"""Accept header of a metadata-only LIST (what ``kubectl get -o name`` asks for)."""
LIST_PAGE = 500
"""Objects per LIST page."""


@dataclasses.dataclass(frozen=True)
class TaskRef:
    """Which Task, without its spec or status."""

    uid: str
    namespace: str
    name: str
WATCH_SECONDS = 300
"""How long the server keeps one watch open before the operator resumes it from its last version:
the API server's own default range, so an idle watch is renewed, not left to a proxy's timeout."""


class NotFound(Exception):
    """The object is gone (deleted meanwhile)."""


class Conflict(Exception):
    """A precondition failed (the object was replaced by another with the same name)."""


class Expired(Exception):
    """A watch's resourceVersion is too old (410 Gone): list again."""


class ApiError(Exception):
    """Any other refusal by the API server."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class _AsyncHttp:
    """Keep-alive HTTPS to the API server on the event loop, with the client configuration's
    server, CA, client certificate and (refreshed) bearer token."""

    TOKEN_SECONDS = 60.0
    """How long a bearer token is reused before the configuration is asked again. Asking is not free:
    the kubeconfig loader's refresh hook re-applies the whole configuration (proxies from the
    environment included), a visible share of the operator's CPU in a burst when done per request.
    A minute is far inside the lifetime of projected ServiceAccount tokens (an hour, renewed by the
    kubelet at 80%), and a 401 drops the cached token at once."""

    def __init__(self, config: kubernetes.client.Configuration, limit: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._clock = clock
        self._token: str | None = None
        self._token_at: float | None = None

    def token(self) -> str | None:
        """The bearer token (``Bearer …``), asked of the configuration at most every ``TOKEN_SECONDS``."""
        now = self._clock()
        if self._token_at is None or now - self._token_at >= self.TOKEN_SECONDS:
            self._token = self.config.get_api_key_with_prefix("BearerToken", alias="authorization") or None
            self._token_at = now
        return self._token

    def forget_token(self) -> None:
        self._token_at = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.config.verify_ssl:
            return False
        context = ssl.create_default_context(cafile=self.config.ssl_ca_cert)
        if self.config.cert_file:
            context.load_cert_chain(self.config.cert_file, self.config.key_file)
        return context

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        token = self.token()
        if token:
            headers["Authorization"] = token
        return headers

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limit, ssl=self._ssl(), keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=60), skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "kubetask-operator"})
        return self._session

    async def request(self, method: str, path: str, body: Any, content_type: str = "application/json",
                      accept: str = "application/json") -> bytes:
        """The response body on success; NotFound, Conflict or ApiError otherwise."""
        session = self._opened()
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        for fresh_token in (False, True):
            async with session.request(method, self.config.host + path, data=data,
                                       headers={**self._headers(content_type), "Accept": accept}) as resp:
                payload = await resp.read()  # the object as stored: read to keep the connection, not parsed
                status = resp.status
            if status == 401 and not fresh_token:
                self.forget_token()  # rotated under us: ask the configuration again, once
                continue
            break
        if status < 300:
            return payload
        reason = _status_message(payload)
        if status == 404:
            raise NotFound(reason)
        if status == 409:
            raise Conflict(reason)
        raise ApiError(status, reason)

    async def lines(self, path: str, read_timeout: float) -> AsyncIterator[dict[str, Any]]:
        """GET a streaming response (a watch) and yield each JSON line as it arrives.

        Split by hand rather than with aiohttp's readline, which refuses lines over 128 KiB: a
        Deployment with a large last-applied annotation must not stop the watch.
        """
        timeout = aiohttp.ClientTimeout(total=None, sock_read=read_timeout)
        async with self._opened().get(self.config.host + path, headers=self._headers("application/json"),
                                      timeout=timeout) as resp:
            if resp.status >= 300:
                reason = (await resp.read())[:300].decode(errors="replace")
                if resp.status == 401:
                    self.forget_token()
                raise ApiError(resp.status, reason)
            buffer = b""
            try:
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    for line in complete:
                        if line.strip():
                            yield json.loads(line)
            finally:
                # A watch cut short (cancelled, or its reader gone) leaves a connection nobody reuses. It
                # is aborted: a graceful TLS close waits for the server's close_notify, which a watch
                # stream may never send, and the socket would outlive close() (a ResourceWarning later).
                connection = resp.connection
                if not resp.content.at_eof() and connection is not None and connection.transport is not None:
                    connection.transport.abort()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _status_message(payload: bytes) -> str:
    """A refusal's ``Status.message`` (what kubectl prints), else the start of the body."""
    try:
        message = json.loads(payload).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message)[:2000] if message else payload[:300].decode(errors="replace")


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


@dataclasses.dataclass(frozen=True)
class PodInfo:
    name: str
    deletion_cost: int | None
    terminating: bool


class Kube:
    def __init__(self, max_concurrency: int = 16, kubeconfig: str | None = None) -> None:
        """In-cluster credentials when there are some, else ``kubeconfig`` (default: $KUBECONFIG, ~/.kube/config)."""
        config = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(config_file=kubeconfig,  # type: ignore[no-untyped-call]
                                               client_configuration=config)
        config.connection_pool_maxsize = max_concurrency
        self.api_client = kubernetes.client.ApiClient(config)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.apps = kubernetes.client.AppsV1Api(self.api_client)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="kube")
        self._http = _AsyncHttp(config, max_concurrency)
        self.writes = 0
        """API writes made, for the benchmarks' writes-per-Task figure."""
        self.writes_by_kind: collections.Counter[str] = collections.Counter()
        """The same writes by kind (task_status, event, …), for the operator's metrics."""

    def _wrote(self, kind: str) -> None:
        self.writes += 1
        self.writes_by_kind[kind] += 1

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

    async def close(self) -> None:
        await self._http.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()  # type: ignore[no-untyped-call]

    # -- Tasks ----------------------------------------------------------------------

    async def patch_task_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource; the uid precondition skips a re-created namesake."""
        self._wrote("task_status")
        body = {"metadata": {"uid": uid}, "status": status}
        path = (f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{_quote(namespace)}/{model.PLURAL}/"
                f"{_quote(name)}/status")
        await self._http.request("PATCH", path, body, "application/merge-patch+json")

    async def delete_task(self, namespace: str, name: str, uid: str) -> None:
        self._wrote("task_delete")
        await self._call(
            self.custom.delete_namespaced_custom_object,
            model.GROUP, model.VERSION, namespace, model.PLURAL, name,
            body={"preconditions": {"uid": uid}, "propagationPolicy": "Background"},
        )

    async def task_refs(self, namespaces: Sequence[str] = ()) -> dict[str, TaskRef]:
        """Every Task in ``namespaces`` (all when empty) by uid, metadata only, one page at a time.

        A PartialObjectMetadataList: the API server leaves out spec and status, so a sweep of many Tasks
        with large payloads reads kilobytes per Task at most, not up to their ~1.5 MiB each. Per
        namespace when the operator is namespaced: its Roles allow no cluster-wide list.
        """
        refs: dict[str, TaskRef] = {}
        base = f"/apis/{model.GROUP}/{model.VERSION}"
        for namespace in [*namespaces] if namespaces else [None]:
            collection = (f"{base}/{model.PLURAL}" if namespace is None
                          else f"{base}/namespaces/{_quote(namespace)}/{model.PLURAL}")
            cont: str | None = None
            while True:
                query = f"?limit={LIST_PAGE}" + (f"&continue={_quote(cont)}" if cont else "")
                page = json.loads(await self._http.request("GET", collection + query, None, accept=METADATA_LIST))
                for item in page.get("items") or ():
                    meta = item["metadata"]
                    refs[meta["uid"]] = TaskRef(meta["uid"], meta["namespace"], meta["name"])
                cont = (page.get("metadata") or {}).get("continue")
                if not cont:
                    break
        return refs

    async def task(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Task's whole body as stored, or None when it is gone."""
        path = f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{_quote(namespace)}/{model.PLURAL}/{_quote(name)}"
        try:
            body: dict[str, Any] = json.loads(await self._http.request("GET", path, None))
        except NotFound:
            return None
        return body

    async def post_event(self, namespace: str, name: str, uid: str, reason: str, message: str, warning: bool = False,
                         kind: str = model.KIND, api_version: str = model.API_VERSION) -> None:
        """A core/v1 Event on the Task (or another object), as ``kubectl describe`` shows them."""
        self._wrote("event")
        now = datetime.datetime.now(datetime.timezone.utc)
        body = {
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {"apiVersion": api_version, "kind": kind, "name": name,
                               "namespace": namespace, "uid": uid},
            "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
            "source": {"component": "kubetask-operator"}, "reportingComponent": "kubetask.io/operator",
            "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
        }
        await self._http.request("POST", f"/api/v1/namespaces/{_quote(namespace)}/events", body)

    # -- Queues and the namespaces they admit ----------------------------------------

    async def queues(self) -> list[dict[str, Any]]:
        """Every Queue object (cluster-scoped); ``NotFound`` when the Queue CRD is not installed."""
        return await self._list_all(f"/apis/{model.GROUP}/{model.VERSION}/{model.QUEUE_PLURAL}")

    async def queue(self, name: str) -> dict[str, Any] | None:
        """One Queue object, or None when there is none (or the Queue CRD is not installed)."""
        try:
            body: dict[str, Any] = json.loads(await self._http.request(
                "GET", f"/apis/{model.GROUP}/{model.VERSION}/{model.QUEUE_PLURAL}/{_quote(name)}", None))
        except NotFound:
            return None
        return body

    async def namespace_labels(self) -> dict[str, dict[str, str]]:
        """Every namespace's labels, by name (metadata only)."""
        items = await self._list_all("/api/v1/namespaces", accept=METADATA_LIST)
        return {item["metadata"]["name"]: dict(item["metadata"].get("labels") or {}) for item in items}

    async def patch_queue_status(self, name: str, uid: str, status: dict[str, Any]) -> None:
        """Merge-patch a Queue's status subresource; the uid precondition skips a re-created namesake."""
        self._wrote("queue_status")
        body = {"metadata": {"uid": uid}, "status": status}
        path = f"/apis/{model.GROUP}/{model.VERSION}/{model.QUEUE_PLURAL}/{_quote(name)}/status"
        await self._http.request("PATCH", path, body, "application/merge-patch+json")

    async def _list_all(self, collection: str, accept: str = "application/json",
                        label_selector: str | None = None) -> list[dict[str, Any]]:
        """Every item of a collection, a page at a time."""
        items: list[dict[str, Any]] = []
        cont: str | None = None
        while True:
            query = {"limit": str(LIST_PAGE)}
            if label_selector:
                query["labelSelector"] = label_selector
            if cont:
                query["continue"] = cont
            page = json.loads(await self._http.request("GET", f"{collection}?{urllib.parse.urlencode(query)}", None,
                                                       accept=accept))
            items.extend(page.get("items") or ())
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return items

    # -- TaskSchedules ---------------------------------------------------------------

    async def _list(self, plural: str, namespaces: Sequence[str], label_selector: str | None = None
                    ) -> list[dict[str, Any]]:
        """Every object of a kubetask.io resource in ``namespaces`` (all when empty), whole, a page at a time."""
        base = f"/apis/{model.GROUP}/{model.VERSION}"
        items: list[dict[str, Any]] = []
        for namespace in [*namespaces] if namespaces else [None]:
            collection = (f"{base}/{plural}" if namespace is None
                          else f"{base}/namespaces/{_quote(namespace)}/{plural}")
            items.extend(await self._list_all(collection, label_selector=label_selector))
        return items

    async def schedules(self, namespaces: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Every TaskSchedule in ``namespaces`` (all when empty), as stored."""
        return await self._list(model.SCHEDULE_PLURAL, namespaces)

    async def scheduled_tasks(self, namespaces: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Every Task a TaskSchedule created (label ``kubetask.io/schedule``) in ``namespaces``, as stored."""
        return await self._list(model.PLURAL, namespaces, label_selector=model.SCHEDULE_LABEL)

    async def create_task(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a Task; ``Conflict`` when one of that name exists."""
        self._wrote("task_create")
        path = f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{_quote(namespace)}/{model.PLURAL}"
        created: dict[str, Any] = json.loads(await self._http.request("POST", path, body))
        return created

    async def patch_schedule_status(self, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
        """Merge-patch a TaskSchedule's status subresource; the uid precondition skips a re-created namesake."""
        self._wrote("schedule_status")
        body = {"metadata": {"uid": uid}, "status": status}
        path = (f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{_quote(namespace)}/{model.SCHEDULE_PLURAL}/"
                f"{_quote(name)}/status")
        await self._http.request("PATCH", path, body, "application/merge-patch+json")

    # -- worker pools ---------------------------------------------------------------

    async def pool_deployments(self, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every worker-pool Deployment (label ``kubetask.io/pool``) in ``namespace`` (all when None),
        and the list's resourceVersion to watch from."""
        if namespace is None:
            listing = await self._call(self.apps.list_deployment_for_all_namespaces, label_selector=POOL_LABEL)
        else:
            listing = await self._call(self.apps.list_namespaced_deployment, namespace, label_selector=POOL_LABEL)
        plain = self.api_client.sanitize_for_serialization(listing)  # type: ignore[no-untyped-call]
        return plain["items"], plain["metadata"]["resourceVersion"]

    async def watch_pool_deployments(self, namespace: str | None, resource_version: str,
                                     timeout_seconds: int = WATCH_SECONDS) -> AsyncIterator[dict[str, Any]]:
        """The watch events (``{"type", "object"}``) of worker-pool Deployments after ``resource_version``,
        bookmarks included, until the server ends the watch after ``timeout_seconds``.
        Raises ``Expired`` when the version is too old to watch from (relist)."""
        async for event in self._watch("/apis/apps/v1", "deployments", namespace, POOL_LABEL, resource_version,
                                       timeout_seconds):
            yield event

    async def _watch(self, api: str, plural: str, namespace: str | None, selector: str, resource_version: str,
                     timeout_seconds: int) -> AsyncIterator[dict[str, Any]]:
        """One watch of ``plural`` matching ``selector``; Expired (410) or ApiError on an ERROR event."""
        query = urllib.parse.urlencode({"labelSelector": selector, "watch": "true", "allowWatchBookmarks": "true",
                                        "resourceVersion": resource_version, "timeoutSeconds": timeout_seconds})
        scope = f"/namespaces/{_quote(namespace)}" if namespace is not None else ""
        async for event in self._http.lines(f"{api}{scope}/{plural}?{query}", timeout_seconds + 30):
            if event.get("type") == "ERROR":
                status = event.get("object") or {}
                if status.get("code") == 410:
                    raise Expired(str(status.get("message")))
                raise ApiError(int(status.get("code") or 500), str(status.get("message")))
            yield event

    async def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        self._wrote("scale")
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
        self._wrote("pod_deletion_cost")
        await self._call(self.core.patch_namespaced_pod, pod, namespace,
                         {"metadata": {"annotations": {DELETION_COST: str(cost)}}})

    # -- container Tasks' pods ------------------------------------------------------

    async def create_pod(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a task pod; Conflict when one of that name exists (the attempt's pod: adopt it)."""
        self._wrote("pod_create")
        await self._http.request("POST", f"/api/v1/namespaces/{_quote(namespace)}/pods", body)

    async def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a pod (background propagation); NotFound when it is gone already. ``uid``: only that pod."""
        self._wrote("pod_delete")
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        await self._http.request("DELETE", f"/api/v1/namespaces/{_quote(namespace)}/pods/{_quote(name)}", body)

    async def pod_log(self, namespace: str, name: str, container: str, tail_lines: int, limit_bytes: int) -> bytes:
        """The last ``tail_lines`` lines of a container's log, cut to its last ``limit_bytes`` bytes."""
        query = urllib.parse.urlencode({"container": container, "tailLines": tail_lines})
        raw = await self._http.request("GET", f"/api/v1/namespaces/{_quote(namespace)}/pods/{_quote(name)}/log?{query}",
                                       None, accept="*/*")
        return raw[-limit_bytes:]

    async def task_pods(self, namespace: str | None, selector: str) -> tuple[list[dict[str, Any]], str]:
        """Every pod matching ``selector`` in ``namespace`` (all when None), and the list's resourceVersion."""
        scope = f"/namespaces/{_quote(namespace)}" if namespace is not None else ""
        query = urllib.parse.urlencode({"labelSelector": selector})
        listing = json.loads(await self._http.request("GET", f"/api/v1{scope}/pods?{query}", None))
        return listing["items"], listing["metadata"]["resourceVersion"]

    async def watch_task_pods(self, namespace: str | None, selector: str, resource_version: str,
                              timeout_seconds: int = WATCH_SECONDS) -> AsyncIterator[dict[str, Any]]:
        """Watch events of the pods matching ``selector`` after ``resource_version`` (bookmarks included).
        Raises ``Expired`` when the version is too old to watch from (relist)."""
        async for event in self._watch("/api/v1", "pods", namespace, selector, resource_version, timeout_seconds):
            yield event
