"""Bad Queue manifests are refused by the API server at `kubectl apply`, naming the field.

Queues are the admin's (cluster-scoped): only the CRD is needed, no operator.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubetask_dev import controlplane

from tests.conftest import ROOT

BASE: dict[str, Any] = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Queue", "metadata": {"name": "bad"}, "spec": {}}


@pytest.fixture(scope="module")
def plane(control_plane: controlplane.ControlPlane) -> controlplane.ControlPlane:
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "queue.yaml"))
    control_plane.kubectl("wait", "--for=condition=Established", "crd/queues.kubetask.io", "--timeout=60s")
    return control_plane


@pytest.fixture
def queue_name(plane: controlplane.ControlPlane) -> Iterator[str]:
    """A Queue name of this test's own (Queues are cluster-wide), deleted afterwards."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    yield name
    plane.kubectl("delete", "queue", name, "--ignore-not-found", "--wait=false", check=False)


def _with(**spec: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    manifest["spec"].update(spec)
    return manifest


def _policy(**policy: Any) -> dict[str, Any]:
    return _with(podPolicy=policy)


def _selector(**selector: Any) -> dict[str, Any]:
    return _with(namespaceSelector=selector)


def _expression(**requirement: Any) -> dict[str, Any]:
    return _selector(matchExpressions=[requirement])


CASES = [
    ("zero maxRunning", _with(maxRunning=0), "spec.maxRunning"),
    ("negative maxRunning", _with(maxRunning=-3), "spec.maxRunning"),
    ("maxRunning a string", _with(maxRunning="three"), "spec.maxRunning"),
    ("maxRunning a float", _with(maxRunning=1.5), "spec.maxRunning"),
    ("zero concurrencyKeyLimit", _with(concurrencyKeyLimit=0), "spec.concurrencyKeyLimit"),
    ("negative rate", _with(rateLimit={"tasks": -1, "periodSeconds": 60}), "spec.rateLimit.tasks"),
    ("zero rate period", _with(rateLimit={"tasks": 10, "periodSeconds": 0}), "spec.rateLimit.periodSeconds"),
    ("rate period over a day", _with(rateLimit={"tasks": 10, "periodSeconds": 86401}),
     "spec.rateLimit.periodSeconds"),
    ("rate without tasks", _with(rateLimit={"periodSeconds": 60}), "spec.rateLimit.tasks: Required value"),
    ("rate without a period", _with(rateLimit={"tasks": 5}), "spec.rateLimit.periodSeconds: Required value"),
    ("rate unknown field", _with(rateLimit={"tasks": 5, "periodSeconds": 1, "burst": 9}),
     'unknown field "spec.rateLimit.burst"'),
    ("paused a string", _with(paused="yes"), "spec.paused"),
    ("unknown spec field", _with(maxConcurrency=3), 'unknown field "spec.maxConcurrency"'),
    ("selector operator unknown", _expression(key="team", operator="Equals", values=["a"]),
     "spec.namespaceSelector.matchExpressions[0].operator"),
    ("selector In without values", _expression(key="team", operator="In"),
     "spec.namespaceSelector.matchExpressions[0].values"),
    ("selector Exists with values", _expression(key="team", operator="Exists", values=["a"]),
     "spec.namespaceSelector.matchExpressions[0].values"),
    ("selector without a key", _expression(operator="Exists"),
     "spec.namespaceSelector.matchExpressions[0].key: Required value"),
    ("selector key with spaces", _expression(key="my team", operator="Exists"),
     "spec.namespaceSelector.matchExpressions[0].key"),
    ("selector value with spaces", _expression(key="team", operator="In", values=["team a"]),
     "spec.namespaceSelector.matchExpressions[0].values[0]"),
    ("selector matchLabels value a number", _selector(matchLabels={"team": 7}),
     "spec.namespaceSelector.matchLabels.team"),
    ("selector matchLabels bad key", _selector(matchLabels={"bad key": "a"}), "spec.namespaceSelector.matchLabels"),
    ("selector matchLabels value too long", _selector(matchLabels={"team": "x" * 64}),
     "spec.namespaceSelector.matchLabels.team"),
    ("selector unknown field", _selector(matchNames=["a"]), 'unknown field "spec.namespaceSelector.matchNames"'),
    ("selector not an object", _with(namespaceSelector="team=a"), "spec.namespaceSelector"),
    # spec.podPolicy: how container Tasks' pods are made.
    ("podPolicy unknown field", _policy(hostNetwork=True), 'unknown field "spec.podPolicy.hostNetwork"'),
    ("serviceAccountName not a name", _policy(serviceAccountName="Not_A_Name"), "spec.podPolicy.serviceAccountName"),
    ("nodeSelector key not a label key", _policy(nodeSelector={"not a key": "x"}), "spec.podPolicy.nodeSelector"),
    ("nodeSelector value too long", _policy(nodeSelector={"pool": "x" * 64}), "spec.podPolicy.nodeSelector.pool"),
    ("toleration operator unknown", _policy(tolerations=[{"key": "k", "operator": "Above"}]),
     "spec.podPolicy.tolerations[0].operator"),
    ("toleration Exists with a value", _policy(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
     "operator Exists takes no value"),
    ("toleration without key, Equal", _policy(tolerations=[{"value": "v"}]), "without a key must have operator Exists"),
    ("toleration effect unknown", _policy(tolerations=[{"key": "k", "effect": "Sometimes"}]),
     "spec.podPolicy.tolerations[0].effect"),
    ("maxResources not a quantity", _policy(maxResources={"cpu": "many"}), "spec.podPolicy.maxResources.cpu"),
    ("defaultResources unknown kind", _policy(defaultResources={"limits": {"gpu": 1}}),
     'unknown field "spec.podPolicy.defaultResources.limits.gpu"'),
    ("imagePullSecrets not names", _policy(imagePullSecrets=[{"name": "x"}]), "spec.podPolicy.imagePullSecrets[0]"),
    ("allowedImagePrefixes empty string", _policy(allowedImagePrefixes=[""]), "spec.podPolicy.allowedImagePrefixes[0]"),
    ("runAsUser negative", _policy(securityContext={"runAsUser": -1}), "spec.podPolicy.securityContext.runAsUser"),
    ("seccomp profile Localhost", _policy(securityContext={"seccompProfile": {"type": "Localhost"}}),
     "spec.podPolicy.securityContext.seccompProfile.type"),
    ("privileged in the security context", _policy(securityContext={"privileged": True}),
     'unknown field "spec.podPolicy.securityContext.privileged"'),
    ("activeDeadlineSeconds zero", _policy(activeDeadlineSeconds=0), "spec.podPolicy.activeDeadlineSeconds"),
]


@pytest.mark.parametrize(("manifest", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_queue_is_refused_naming_the_field(plane: controlplane.ControlPlane, queue_name: str,
                                               manifest: dict[str, Any], message: str) -> None:
    body = copy.deepcopy(manifest)
    body["metadata"]["name"] = queue_name
    result = plane.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0, f"accepted: {body}"
    assert message in result.stderr, result.stderr
    assert plane.kubectl("get", "queue", queue_name, check=False).returncode != 0


def test_a_queue_name_must_be_what_a_task_can_name(plane: controlplane.ControlPlane) -> None:
    body = copy.deepcopy(BASE)
    body["metadata"]["name"] = "emails.eu"  # a valid object name, but no Task's spec.queue can hold it
    result = plane.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0 and "metadata.name must be a queue name" in result.stderr, result.stderr


def test_an_empty_queue_gets_its_defaults_and_shows_in_kubectl_get(plane: controlplane.ControlPlane,
                                                                   queue_name: str) -> None:
    body = copy.deepcopy(BASE)
    body["metadata"]["name"] = queue_name
    del body["spec"]
    plane.kubectl("apply", "-f", "-", input=json.dumps(body))
    stored = json.loads(plane.kubectl("get", "queue", queue_name, "-o", "json").stdout)
    assert stored["spec"] == {"paused": False, "namespaceSelector": {}}
    assert "namespace" not in stored["metadata"], "cluster-scoped"
    table = plane.kubectl("get", "queues", queue_name).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "PAUSED", "MAXRUNNING"]


def test_a_full_queue_is_accepted(plane: controlplane.ControlPlane, queue_name: str) -> None:
    body = _with(paused=True, maxRunning=3, concurrencyKeyLimit=1, rateLimit={"tasks": 20, "periodSeconds": 1},
                 namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "team-a"},
                                    "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["free"]},
                                                         {"key": "example.com/paying", "operator": "Exists"}]})
    body["metadata"]["name"] = queue_name
    plane.kubectl("apply", "-f", "-", input=json.dumps(body))
    row = plane.kubectl("get", "queue", queue_name, "--no-headers").stdout.split()
    assert row[:3] == [queue_name, "true", "3"]
