"""Bad Task manifests are refused by the API server at `kubectl apply`, naming the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kubetask_dev import controlplane

from tests.stack import Stack

BASE: dict[str, Any] = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task",
                        "metadata": {"name": "bad"}, "spec": {"type": "echo"}}


def _with(**spec: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    manifest["spec"].update(spec)
    return manifest


def _meta(**metadata: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    manifest["metadata"].update(metadata)
    return manifest


def _without_spec() -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    del manifest["spec"]
    return manifest


def _container(**container: Any) -> dict[str, Any]:
    """A container Task whose spec.container has these fields (None: without it)."""
    manifest = copy.deepcopy(BASE)
    fields = {"image": "busybox:1.36", **container}
    manifest["spec"] = {"container": {k: v for k, v in fields.items() if v is not None}}
    return manifest


def _container_with(**spec: Any) -> dict[str, Any]:
    manifest = _container()
    manifest["spec"].update(spec)
    return manifest


def _without_type() -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    manifest["spec"] = {"payload": {}}
    return manifest


CASES = [
    ("neither type nor container", _without_type(), "set exactly one of spec.type"),
    ("empty type", _with(type=""), "spec.type"),
    ("overlong type", _with(type="x" * 300), "spec.type"),
    ("type with spaces", _with(type="send email"), "spec.type"),
    ("negative retries", _with(maxRetries=-1), "spec.maxRetries"),
    ("huge retries", _with(maxRetries=10_000), "spec.maxRetries"),
    ("retries as string", _with(maxRetries="three"), "spec.maxRetries"),
    ("priority out of range", _with(priority=5000), "spec.priority"),
    ("payload not an object", _with(payload=[1, 2]), "spec.payload"),
    ("payload a string", _with(payload="hello"), "spec.payload"),
    ("unknown field", _with(retries=3), 'unknown field "spec.retries"'),
    ("backoff factor below 1", _with(backoff={"factor": 0.5}), "spec.backoff.factor"),
    ("backoff negative", _with(backoff={"initialSeconds": -1}), "spec.backoff.initialSeconds"),
    ("backoff below its 0.1 s floor", _with(backoff={"initialSeconds": 0}), "spec.backoff.initialSeconds"),
    ("backoff jitter above 1", _with(backoff={"jitter": 2}), "spec.backoff.jitter"),
    ("backoff unknown field", _with(backoff={"base": 2}), 'unknown field "spec.backoff.base"'),
    ("runAt not RFC 3339", _with(runAt="tomorrow"), "spec.runAt"),
    ("runAt and delaySeconds", _with(runAt="2030-01-01T00:00:00Z", delaySeconds=5), "spec.runAt and spec.delaySeconds are exclusive"),
    ("negative delay", _with(delaySeconds=-5), "spec.delaySeconds"),
    ("zero timeout", _with(timeoutSeconds=0), "spec.timeoutSeconds"),
    ("queue not a DNS label", _with(queue="Emails_Q"), "spec.queue"),
    ("negative ttl", _with(ttlSecondsAfterFinished=-1), "spec.ttlSecondsAfterFinished"),
    ("no spec at all", _without_spec(), "spec: Required value"),
    ("type null", _with(type=None), "spec.type"),
    ("type a number", _with(type=42), "spec.type"),
    ("priority a float", _with(priority=1.5), "spec.priority"),
    ("backoff not an object", _with(backoff="fast"), "spec.backoff"),
    ("timeout a string", _with(timeoutSeconds="10s"), "spec.timeoutSeconds"),
    ("delay over a year", _with(delaySeconds=31_536_001), "spec.delaySeconds"),
    ("ttl a string", _with(ttlSecondsAfterFinished="1h"), "spec.ttlSecondsAfterFinished"),
    ("queue over 63 characters", _with(queue="q" * 64), "spec.queue"),
    ("name over 253 characters", _meta(name="n" * 254), "metadata.name"),
    ("name with capitals", _meta(name="Bad"), "metadata.name"),
    ("label value over 63 characters", _meta(labels={"team": "x" * 64}), "metadata.labels"),
    ("managedBy without a domain prefix", _with(managedBy="operator"), "spec.managedBy"),
    ("managedBy with an empty path", _with(managedBy="kubetask.io/"), "spec.managedBy"),
    ("managedBy with capitals in the domain", _with(managedBy="Kubetask.IO/operator"), "spec.managedBy"),
    ("managedBy with spaces", _with(managedBy="kubetask.io/my operator"), "spec.managedBy"),
    ("managedBy over 63 characters", _with(managedBy="kubetask.io/" + "x" * 52), "spec.managedBy"),
    ("managedBy empty", _with(managedBy=""), "spec.managedBy"),
    ("managedBy a number", _with(managedBy=7), "spec.managedBy"),
    ("concurrencyKey empty", _with(concurrencyKey=""), "spec.concurrencyKey"),
    ("concurrencyKey over 253 characters", _with(concurrencyKey="k" * 254), "spec.concurrencyKey"),
    ("concurrencyKey with a newline", _with(concurrencyKey="customer\n42"), "spec.concurrencyKey"),
    ("concurrencyKey a number", _with(concurrencyKey=42), "spec.concurrencyKey"),
    # Container Tasks: spec.container instead of spec.type.
    ("both type and container", _with(container={"image": "busybox:1"}), "set exactly one of spec.type"),
    ("container without image", _container(command=["true"], image=None), "spec.container.image: Required value"),
    ("container image empty", _container(image=""), "spec.container.image"),
    ("container image with a space", _container(image="busybox 1"), "spec.container.image"),
    ("container command not a list", _container(command="echo hi"), "spec.container.command"),
    ("container args of numbers", _container(args=[1, 2]), "spec.container.args[0]"),
    ("container unknown field", _container(ports=[{"containerPort": 80}]), 'unknown field "spec.container.ports"'),
    ("container privileged", _container(securityContext={"privileged": True}),
     'unknown field "spec.container.securityContext"'),
    ("env without name", _container(env=[{"value": "x"}]), "spec.container.env[0].name: Required value"),
    ("env name with a space", _container(env=[{"name": "MY VAR", "value": "x"}]), "spec.container.env[0].name"),
    ("env named twice", _container(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
     "spec.container.env[1]: Duplicate value"),
    ("env value and valueFrom", _container(env=[{"name": "A", "value": "1", "valueFrom": {
        "secretKeyRef": {"name": "s", "key": "k"}}}]), "takes value or valueFrom, not both"),
    ("env valueFrom empty", _container(env=[{"name": "A", "valueFrom": {}}]), "exactly one of secretKeyRef"),
    ("env valueFrom both refs", _container(env=[{"name": "A", "valueFrom": {
        "secretKeyRef": {"name": "s", "key": "k"}, "configMapKeyRef": {"name": "c", "key": "k"}}}]),
     "exactly one of secretKeyRef"),
    ("env secretKeyRef without key", _container(env=[{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s"}}}]),
     "spec.container.env[0].valueFrom.secretKeyRef.key: Required value"),
    ("env from a field path", _container(env=[{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]),
     'unknown field "spec.container.env[0].valueFrom.fieldRef"'),
    ("resources not a quantity", _container(resources={"limits": {"memory": "lots"}}),
     "spec.container.resources.limits.memory"),
    ("resources of an unknown kind", _container(resources={"limits": {"nvidia.com/gpu": 1}}),
     'unknown field "spec.container.resources.limits.nvidia.com/gpu"'),
    ("workingDir relative", _container(workingDir="src"), "spec.container.workingDir"),
    ("permanentExitCodes on a handler Task", _with(permanentExitCodes=[3]),
     "spec.permanentExitCodes applies to container Tasks only"),
    ("permanentExitCode 0", _container_with(permanentExitCodes=[0]), "spec.permanentExitCodes[0]"),
    ("permanentExitCode over 255", _container_with(permanentExitCodes=[256]), "spec.permanentExitCodes[0]"),
    ("permanentExitCodes repeated", _container_with(permanentExitCodes=[3, 3]),
     "spec.permanentExitCodes[1]: Duplicate value"),
]


@pytest.mark.parametrize(("manifest", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_manifest_is_refused_naming_the_field(e2e: Stack, namespace: str, manifest: dict[str, Any],
                                                  message: str) -> None:
    body = copy.deepcopy(manifest)
    body["metadata"]["namespace"] = namespace
    result = e2e.plane.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0, f"accepted: {body}"
    assert message in result.stderr, result.stderr
    assert e2e.plane.kubectl("get", "task", "bad", "-n", namespace, check=False).returncode != 0


def test_managed_by_at_its_limit_is_accepted_and_cannot_change_or_go(e2e: Stack, namespace: str) -> None:
    """Another controller's name (63 characters): the e2e operator leaves the Task alone, and nobody may
    hand it to a different controller, or to the default one by removing the field."""
    body = _with(managedBy="example.com/" + "x" * 51)
    body["metadata"]["namespace"] = namespace
    e2e.plane.kubectl("apply", "-f", "-", input=json.dumps(body))
    for patch in ({"spec": {"managedBy": "example.com/other"}}, {"spec": {"managedBy": None}}):
        result = e2e.plane.kubectl("patch", "task", "bad", "-n", namespace, "--type=merge", "-p", json.dumps(patch),
                                   check=False)
        assert result.returncode != 0, f"accepted: {patch}"
        assert "spec.managedBy is immutable" in result.stderr, result.stderr
    added = copy.deepcopy(BASE)
    added["metadata"].update(name="unowned", namespace=namespace)
    e2e.plane.kubectl("apply", "-f", "-", input=json.dumps(added))
    result = e2e.plane.kubectl("patch", "task", "unowned", "-n", namespace, "--type=merge",
                               "-p", json.dumps({"spec": {"managedBy": "example.com/other"}}), check=False)
    assert result.returncode != 0 and "spec.managedBy is immutable" in result.stderr, result.stderr


def test_names_labels_and_queue_at_their_limits_are_accepted(e2e: Stack, namespace: str) -> None:
    body = copy.deepcopy(BASE)
    body["metadata"].update(name="n" * 253, namespace=namespace, labels={"team": "x" * 63})
    body["spec"].update(queue="q" * 63, type="t" * 253, maxRetries=100, priority=1000)
    e2e.plane.kubectl("apply", "-f", "-", input=json.dumps(body))
    # Accepted, and visibly waiting: no pool serves that queue.
    status = e2e.wait_phase(namespace, "n" * 253, "Queued")["status"]
    assert {c["type"]: c["reason"] for c in status["conditions"]}["WorkerPool"] == "NoWorkerPool"


def test_a_good_manifest_gets_the_defaults(control_plane: controlplane.ControlPlane, e2e: Stack, namespace: str) -> None:
    body = copy.deepcopy(BASE)
    body["metadata"]["namespace"] = namespace
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(body))
    spec = json.loads(control_plane.kubectl("get", "task", "bad", "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec["queue"] == "default" and spec["maxRetries"] == 3 and spec["priority"] == 0
