"""Producers in Python: ``kubetask.submit(...)`` and ``kubetask.wait(...)``.

A producer creates Task objects through the API server, exactly as ``kubectl
apply`` does, so RBAC, admission and the audit log see the same thing either
way, and the producer needs no database credentials. The spec is validated
against the same pydantic model the CRD is generated from before anything is
sent, so a mistake raises at the call site, naming the field.

    import kubetask

    ref = kubetask.submit("email", {"to": "a@example.com"}, queue="emails", priority=5)
    status = kubetask.wait(ref, timeout=60)      # raises kubetask.TaskFailed on DeadLetter
    print(status["result"])
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any, Callable

import kubernetes
import pydantic

from kubetask import model


class TaskFailed(Exception):
    """The Task ended in DeadLetter or Cancelled; ``status`` holds why."""

    def __init__(self, ref: "TaskRef", status: dict[str, Any]) -> None:
        error = status.get("lastError") or {}
        super().__init__(f"Task {ref} ended {status.get('phase')}: {error.get('type', '')}: {error.get('message', '')}")
        self.ref = ref
        self.status = status


class WaitTimeout(TimeoutError):
    """The Task did not finish within the timeout."""


@dataclasses.dataclass(frozen=True)
class TaskRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def _api_client() -> kubernetes.client.ApiClient:
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient(config)


def _api(api_client: kubernetes.client.ApiClient | None) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client or _api_client())


def may_get_tasks(namespace: str, api_client: kubernetes.client.ApiClient | None = None) -> bool:
    """Whether the caller may ``get`` Tasks in ``namespace``: the API server's answer (SelfSubjectAccessReview).

    Every authenticated user may ask this of its own rights (``system:basic-user``).
    """
    review = kubernetes.client.V1SelfSubjectAccessReview(spec=kubernetes.client.V1SelfSubjectAccessReviewSpec(
        resource_attributes=kubernetes.client.V1ResourceAttributes(
            group=model.GROUP, resource=model.PLURAL, verb="get", namespace=namespace)))
    answer = kubernetes.client.AuthorizationV1Api(api_client or _api_client()).create_self_subject_access_review(review)
    return answer.status is not None and bool(answer.status.allowed)


def default_namespace() -> str:
    """The namespace of the current kubeconfig context (or the pod's own), else ``default``."""
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as fh:
            return fh.read().strip()
    except OSError:
        pass
    try:
        _, context = kubernetes.config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        return str(context.get("context", {}).get("namespace") or "default")
    except (kubernetes.config.ConfigException, OSError, TypeError):
        return "default"


def build(type: str, payload: dict[str, Any] | None = None, *, name: str | None = None,
          namespace: str | None = None, labels: dict[str, str] | None = None, **options: Any) -> dict[str, Any]:
    """The Task manifest for ``submit``: validated, in the API's camelCase, defaults left to the server."""
    try:
        spec = model.TaskSpec.model_validate({"type": type, "payload": payload or {}, **options})
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "spec"
        raise ValueError(f"Task {type!r}: spec.{field}: {first['msg']}") from None
    metadata: dict[str, Any] = {"namespace": namespace or default_namespace()}
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = f"{type.lower().replace('_', '-').replace('.', '-').replace(':', '-')[:40]}-"
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": metadata,
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True),
    }


def submit(type: str, payload: dict[str, Any] | None = None, *, name: str | None = None,
           namespace: str | None = None, labels: dict[str, str] | None = None,
           api_client: kubernetes.client.ApiClient | None = None, **options: Any) -> TaskRef:
    """Create a Task; ``options`` are spec fields in Python or API spelling (``max_retries`` or ``maxRetries``)."""
    body = build(type, payload, name=name, namespace=namespace, labels=labels, **options)
    ns = body["metadata"]["namespace"]
    created: Any = _api(api_client).create_namespaced_custom_object(model.GROUP, model.VERSION, ns, model.PLURAL, body)
    return TaskRef(ns, created["metadata"]["name"], created["metadata"]["uid"])


def get(ref: TaskRef | str, namespace: str | None = None,
        api_client: kubernetes.client.ApiClient | None = None) -> dict[str, Any]:
    name, ns = (ref.name, ref.namespace) if isinstance(ref, TaskRef) else (ref, namespace or default_namespace())
    task: Any = _api(api_client).get_namespaced_custom_object(model.GROUP, model.VERSION, ns, model.PLURAL, name)
    assert isinstance(task, dict)
    return task


def wait(ref: TaskRef | str, namespace: str | None = None, *, timeout: float | None = None,
         poll_seconds: float = 0.5, on_change: Callable[[dict[str, Any]], None] | None = None,
         api_client: kubernetes.client.ApiClient | None = None) -> dict[str, Any]:
    """Block until the Task finishes; return its status on Succeeded, raise ``TaskFailed`` otherwise.

    ``on_change`` is called with the status each time its phase or attempt count changes (progress).
    """
    api = api_client if api_client is not None else _api(None).api_client
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: tuple[Any, Any] | None = None
    while True:
        task = get(ref, namespace, api_client=api)
        status = task.get("status") or {}
        key = (status.get("phase"), status.get("attempts"))
        if key != seen:
            seen = key
            if on_change is not None:
                on_change(status)
        phase = status.get("phase")
        if phase == model.Phase.SUCCEEDED.value:
            return status
        if phase in (model.Phase.DEAD_LETTER.value, model.Phase.CANCELLED.value):
            meta = task["metadata"]
            raise TaskFailed(TaskRef(meta["namespace"], meta["name"], meta["uid"]), status)
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"Task {ref} still {phase or 'Pending'} after {timeout}s")
        time.sleep(poll_seconds)


def retry(ref: TaskRef | str, namespace: str | None = None,
          api_client: kubernetes.client.ApiClient | None = None) -> None:
    """Ask for a fresh run of a finished Task: a new value of the retry annotation."""
    name, ns = (ref.name, ref.namespace) if isinstance(ref, TaskRef) else (ref, namespace or default_namespace())
    token = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    _api(api_client).patch_namespaced_custom_object(
        model.GROUP, model.VERSION, ns, model.PLURAL, name,
        {"metadata": {"annotations": {model.RETRY_ANNOTATION: token}}})
