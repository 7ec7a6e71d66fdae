"""Container Tasks' pods, as pure functions: the pod an attempt runs in, and what its status says.

The leader's container service (``kubetask.operator.containers``) claims a
container task, builds its pod here and creates it; as the pod's status
changes it asks ``observe`` whether the attempt ended and how. Nothing here
does I/O, so every rule is unit-tested on plain dicts (``tests/unit/test_pods.py``).

What the Task author chooses (``spec.container``): image, command, args,
env, resources, workingDir. What the Queue's ``spec.podPolicy`` (the
cluster admin) chooses: service account and whether its token is mounted
(not by default), node selector, tolerations, pull secrets, priority class,
the pod's security context, the longest deadline, default and maximum
resources, and which images are allowed. Every task container also runs with
``allowPrivilegeEscalation: false`` and every capability dropped, and no
Service links in its environment.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import re
from collections.abc import Mapping
from typing import Any

from kubetask import model

PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
QUEUE_LABEL = f"{model.GROUP}/queue"
#: Which operator made the pod (its ``managed_by``, ``/`` written ``.``): an operator follows, adopts and
#: deletes only its own pods, never those of another release sharing the cluster, nor a pod someone made
#: with the task labels by hand.
MANAGED_BY_LABEL = f"{model.GROUP}/managed-by"
#: The label selector of every task pod, whoever made it.
SELECTOR = f"{PART_OF}=kubetask,{COMPONENT}=task"


def managed_by_value(managed_by: str) -> str:
    """``managed_by`` as a label value (``kubetask.io/operator`` → ``kubetask.io.operator``)."""
    return managed_by.replace("/", ".")


def selector(managed_by: str) -> str:
    """The task pods of the operator named ``managed_by``: the ones its container service follows."""
    return f"{SELECTOR},{MANAGED_BY_LABEL}={managed_by_value(managed_by)}"

#: Waiting reasons that mean the container will not start by itself soon: after the bounded wait
#: (``container_start_timeout_seconds``) the attempt ends with the reason.
START_PROBLEMS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                            "CreateContainerError", "ErrImageNeverPull", "RunContainerError"})
#: Of those, the ones no retry can fix (the image's name itself is wrong).
PERMANENT_START_PROBLEMS = frozenset({"InvalidImageName", "ErrImageNeverPull"})

_SUFFIXES = {
    "n": decimal.Decimal("1e-9"), "u": decimal.Decimal("1e-6"), "m": decimal.Decimal("1e-3"), "": decimal.Decimal(1),
    "k": decimal.Decimal(10) ** 3, "M": decimal.Decimal(10) ** 6, "G": decimal.Decimal(10) ** 9,
    "T": decimal.Decimal(10) ** 12, "P": decimal.Decimal(10) ** 15, "E": decimal.Decimal(10) ** 18,
    "Ki": decimal.Decimal(2) ** 10, "Mi": decimal.Decimal(2) ** 20, "Gi": decimal.Decimal(2) ** 30,
    "Ti": decimal.Decimal(2) ** 40, "Pi": decimal.Decimal(2) ** 50, "Ei": decimal.Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")


def quantity(text: str) -> decimal.Decimal:
    """A Kubernetes quantity's value (``500m`` → 0.5, ``1Gi`` → 1073741824)."""
    found = _QUANTITY.match(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a quantity")
    number, suffix = found.groups()
    return decimal.Decimal(number) * _SUFFIXES[suffix or ""]


def pod_name(task_name: str, uid: str, attempt: int) -> str:
    """``<task>-<attempt>-<uid[:5]>``: unique per attempt, and per Task re-created with the same name."""
    tail = f"-{attempt}-{uid[:5]}"
    return task_name[: 253 - len(tail)].rstrip("-.") + tail


def resources(container: model.Container, policy: model.PodPolicy) -> dict[str, dict[str, str]]:
    """The container's requests and limits, each resource it leaves unset taken from the Queue's defaults."""
    out: dict[str, dict[str, str]] = {}
    for kind in ("requests", "limits"):
        amounts = {**getattr(policy.default_resources, kind).amounts(), **getattr(container.resources, kind).amounts()}
        if amounts:
            out[kind] = amounts
    return out


def refusal(container: model.Container, policy: model.PodPolicy, queue: str) -> tuple[str, str] | None:
    """(error type, message) when the Queue's policy does not allow this container; None when it does."""
    if not policy.allows_image(container.image):
        return ("ImageNotAllowed",
                f"image {container.image!r} is not allowed by Queue {queue}: spec.podPolicy.allowedImagePrefixes is "
                f"{policy.allowed_image_prefixes}. Use an image under one of those prefixes, or ask the cluster admin "
                f"to add its prefix (kubectl edit queue {queue})")
    ceiling = policy.max_resources.amounts()
    for kind, amounts in resources(container, policy).items():
        for name, amount in amounts.items():
            if name in ceiling and quantity(amount) > quantity(ceiling[name]):
                return ("ResourcesNotAllowed",
                        f"spec.container.resources.{kind}.{name} {amount} is over the {ceiling[name]} Queue {queue} "
                        f"allows (spec.podPolicy.maxResources.{name}). Ask for at most that, or ask the cluster admin "
                        f"to raise it (kubectl edit queue {queue})")
    return None


def deadline(timeout_seconds: int | None, policy: model.PodPolicy) -> int | None:
    """The pod's activeDeadlineSeconds: the Task's timeout, capped by the Queue's longest."""
    bounds = [b for b in (timeout_seconds, policy.active_deadline_seconds) if b is not None]
    return min(bounds) if bounds else None


@dataclasses.dataclass(frozen=True)
class Attempt:
    """The attempt a pod is for: what the claim returned that the pod needs."""

    uid: str
    namespace: str
    name: str
    queue: str
    attempt: int
    payload: Mapping[str, Any]
    timeout_seconds: int | None


def build(attempt: Attempt, container: model.Container, policy: model.PodPolicy,
          managed_by: str = model.DEFAULT_MANAGED_BY) -> dict[str, Any]:
    """The Pod for one attempt of a container Task, owned by the Task (deleting it deletes the pod), labelled
    with the operator that made it (``managed_by``)."""
    env: list[dict[str, Any]] = [
        {"name": "KUBETASK_TASK_NAME", "value": attempt.name},
        {"name": "KUBETASK_TASK_UID", "value": attempt.uid},
        {"name": "KUBETASK_ATTEMPT", "value": str(attempt.attempt)},
        {"name": "KUBETASK_QUEUE", "value": attempt.queue},
        {"name": "KUBETASK_PAYLOAD", "value": json.dumps(attempt.payload, separators=(",", ":"))},
    ]
    env += [var.model_dump(mode="json", by_alias=True, exclude_none=True) for var in container.env]
    main: dict[str, Any] = {
        "name": model.TASK_CONTAINER,
        "image": container.image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        # The end of the log becomes the termination message when the container failed without writing one.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if container.command:
        main["command"] = list(container.command)
    if container.args:
        main["args"] = list(container.args)
    if container.working_dir:
        main["workingDir"] = container.working_dir
    wanted = resources(container, policy)
    if wanted:
        main["resources"] = wanted
    security = policy.security_context.model_dump(mode="json", by_alias=True, exclude_none=True)
    security.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": policy.automount_service_account_token,
        "enableServiceLinks": False,
        "securityContext": security,
        "containers": [main],
    }
    if policy.service_account_name:
        spec["serviceAccountName"] = policy.service_account_name
    active = deadline(attempt.timeout_seconds, policy)
    if active is not None:
        spec["activeDeadlineSeconds"] = active
    if policy.node_selector:
        spec["nodeSelector"] = dict(policy.node_selector)
    if policy.tolerations:
        spec["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in policy.tolerations]
    if policy.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in policy.image_pull_secrets]
    if policy.priority_class_name:
        spec["priorityClassName"] = policy.priority_class_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(attempt.name, attempt.uid, attempt.attempt),
            "namespace": attempt.namespace,
            "labels": {
                PART_OF: "kubetask", COMPONENT: "task", model.TASK_UID_LABEL: attempt.uid,
                model.ATTEMPT_LABEL: str(attempt.attempt), QUEUE_LABEL: attempt.queue,
                MANAGED_BY_LABEL: managed_by_value(managed_by),
            },
            "annotations": {f"{model.GROUP}/task": attempt.name},
            "ownerReferences": [{
                "apiVersion": model.API_VERSION, "kind": model.KIND, "name": attempt.name, "uid": attempt.uid,
                "controller": True,
            }],
        },
        "spec": spec,
    }


def attempt_of(pod: Mapping[str, Any]) -> tuple[str, int] | None:
    """(task uid, attempt number) from a task pod's labels; None when they are not a task pod's."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    uid, number = labels.get(model.TASK_UID_LABEL), labels.get(model.ATTEMPT_LABEL)
    if not uid or not number or not str(number).isdigit():
        return None
    return str(uid), int(number)


@dataclasses.dataclass(frozen=True)
class Ended:
    """The attempt is over: what the pod says happened."""

    succeeded: bool
    reason: str
    """Completed, Error, OOMKilled, DeadlineExceeded, Evicted, StartError, ErrImagePull…"""
    message: str
    exit_code: int | None = None
    timeout: bool = False
    permanent: bool = False
    """No retry can help (an image name that cannot be valid)."""


@dataclasses.dataclass(frozen=True)
class Waiting:
    """Not started yet, and why, when the pod says why (Unschedulable, ImagePullBackOff…)."""

    reason: str
    message: str


def _container_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == model.TASK_CONTAINER:
            return dict(status)
    return {}


def _since(stamp: str | None, now: datetime.datetime) -> float:
    if not stamp:
        return 0.0
    return (now - datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def interrupted(pod: Mapping[str, Any]) -> Ended:
    """What a pod deleted from under its attempt (by hand, an eviction, a drain) tells: a lost attempt."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    reason, why = "PodDeleted", "deleted (by hand or by a controller)"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            reason = str(condition.get("reason") or "DisruptionTarget")
            why = str(condition.get("message") or reason)
    terminated = (_container_status(pod).get("state") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    return Ended(False, reason, f"pod {meta.get('namespace')}/{meta.get('name')} was {why} before its container "
                                "ended; the attempt counts as lost and is retried",
                 None if code is None else int(code))


def observe(pod: Mapping[str, Any], now: datetime.datetime, start_timeout_seconds: float) -> Ended | Waiting | None:
    """Whether the pod's attempt ended (``Ended``), cannot start (``Waiting``), or runs (None)."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    container = _container_status(pod)
    state = container.get("state") or {}
    terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    if phase == "Succeeded":
        return Ended(True, terminated.get("reason") or "Completed", "", 0 if code is None else int(code))
    if phase == "Failed":
        reason = status.get("reason") or terminated.get("reason") or "Failed"
        detail = (status.get("message") or terminated.get("message") or "").strip()
        if reason == "DeadlineExceeded":
            return Ended(False, reason, detail or "the pod ran past its activeDeadlineSeconds",
                         None if code is None else int(code), timeout=True)
        exit_code = None if code is None else int(code)
        summary = (f"the container exited with code {exit_code} ({reason})" if exit_code is not None
                   else f"the pod failed ({reason})")
        return Ended(False, reason, summary + (f": {detail}" if detail else ""), exit_code)
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in START_PROBLEMS:
        waited = _since((pod.get("metadata") or {}).get("creationTimestamp"), now)
        message = (waiting.get("message") or "").strip()
        if waited >= start_timeout_seconds:
            return Ended(False, str(waiting["reason"]),
                         f"the container did not start within {start_timeout_seconds:g}s: {waiting['reason']}"
                         + (f": {message}" if message else ""),
                         permanent=waiting["reason"] in PERMANENT_START_PROBLEMS)
        return Waiting(str(waiting["reason"]), message)
    for condition in status.get("conditions") or []:
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"):
            return Waiting("Unschedulable", str(condition.get("message") or "no node fits the pod"))
    return None
