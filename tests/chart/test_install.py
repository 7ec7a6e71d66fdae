"""`helm install` on a real control plane: the operator pod runs `kubetask operator` under the chart's RBAC.

The dev harness backs every Running operator and worker pod with a real
process (the operator's with a kubeconfig holding its ServiceAccount's token),
so these tests prove the chart's wiring and its RBAC, not just its YAML.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from kubetask_dev import controlplane, devstack, postgres

from tests.chart.conftest import Release, install


def _can_i(release: Release, *args: str) -> bool:
    result = release.plane.kubectl("auth", "can-i", f"--as={release.operator_account}", *args, check=False)
    return result.stdout.strip() == "yes"


def test_install_runs_the_operator_and_a_task_succeeds(release_factory: Any) -> None:
    release: Release = release_factory("--set", "pools[0].minReplicas=1")

    def running() -> dict[str, int] | None:
        processes = release.processes()
        components = {pod["metadata"]["name"]: pod["metadata"]["labels"]["app.kubernetes.io/component"]
                      for pod in release.get("pods")["items"]}
        kinds = sorted(components.get(name, "?") for name in processes)
        return processes if kinds == ["operator", "worker"] else None

    devstack.wait_for(running, 60, "an operator process and a worker process (minReplicas=1)", interval=0.5)
    release.task("hello", "echo", payload={"greeting": "hello from the chart"})
    task = release.wait_phase("hello", "Succeeded")
    assert task["status"]["result"] == {"greeting": "hello from the chart"}
    assert task["status"]["worker"].startswith(release.pool + "-")


def test_core_scenarios_under_the_charts_serviceaccount(release_factory: Any) -> None:
    """Retries, dead letter and revival, cancel, TTL, scale from zero and back: the chart's RBAC suffices."""
    release: Release = release_factory("--set", "pools[0].scaleDownDelaySeconds=1")
    fast = {"backoff": {"initialSeconds": 0.2, "factor": 1, "jitter": 0}}
    release.task("flaky", "fail", payload={"times": 1}, maxRetries=2, **fast)
    release.task("doomed", "fail", payload={"permanent": True})
    release.task("brief", "echo", ttlSecondsAfterFinished=1)
    release.task("endless", "sleep", payload={"seconds": 60})

    assert release.wait_phase("flaky", "Succeeded")["status"]["attempts"] == 2
    release.wait_phase("doomed", "DeadLetter")
    release.kubectl("annotate", "task", "doomed", "kubetask.io/retry=1", "--overwrite")
    devstack.wait_for(lambda: release.get("task", "doomed")["status"]["attempts"] == 2, 60, "the revived attempt")
    devstack.wait_for(lambda: release.kubectl("get", "task", "brief", check=False).returncode != 0, 60,
                      "the TTL deletion")
    release.wait_phase("endless", "Running")
    release.kubectl("delete", "task", "endless")
    # With nothing left to run the pool goes back to zero.
    devstack.wait_for(lambda: release.replicas() == 0, 60, "the pool to scale back to zero")

    events = release.kubectl("get", "events", "-o", "jsonpath={.items[*].reason}").stdout.split()
    assert {"Admitted", "Retrying", "DeadLetter"} <= set(events)
    log = release.pod_log("operator")
    # A refused request shows as "Forbidden" or as an HTTP status 403 (not as the digits inside a uid).
    assert "Forbidden" not in log and not re.search(r"\b403\b(?!-)", log), log


def test_operator_rbac_works_and_grants_no_secrets(release_factory: Any) -> None:
    release: Release = release_factory()
    ns = release.namespace
    # What the operator needs, in its namespace ...
    assert _can_i(release, "patch", "tasks.kubetask.io", "--subresource=status", "-n", ns)
    assert _can_i(release, "patch", "deployments.apps", "--subresource=scale", "-n", ns)
    assert _can_i(release, "patch", "pods", "-n", ns)
    assert _can_i(release, "create", "events", "-n", ns)
    # Queues (cluster-scoped) and namespace labels, read only (the admin's objects), but Queue statuses.
    assert _can_i(release, "watch", "queues.kubetask.io")
    assert _can_i(release, "list", "namespaces")
    assert not _can_i(release, "patch", "queues.kubetask.io")
    assert _can_i(release, "patch", "queues.kubetask.io", "--subresource=status")
    assert not _can_i(release, "update", "queues.kubetask.io", "--subresource=status")
    assert not _can_i(release, "patch", "namespaces")
    assert _can_i(release, "list", "taskschedules.kubetask.io", "-n", ns)
    assert _can_i(release, "patch", "taskschedules.kubetask.io", "--subresource=status", "-n", ns)
    assert _can_i(release, "create", "tasks.kubetask.io", "-n", ns)
    # Container Tasks (operator.containerTasks, the default): their pods in the served namespaces, and their logs.
    for verb in ("create", "delete", "list", "watch"):
        assert _can_i(release, verb, "pods", "-n", ns), verb
    assert _can_i(release, "get", "pods", "--subresource=log", "-n", ns)
    # ... and nothing it does not: no Secrets anywhere, no Tasks outside its namespaces, no pods outside them,
    # no edit of a Task (only its status) or of a Deployment (only its scale), no exec into pods.
    assert not _can_i(release, "get", "secrets", "-n", "default")
    assert not _can_i(release, "get", "secrets", "-n", ns)
    assert not _can_i(release, "list", "secrets", "--all-namespaces")
    assert not _can_i(release, "list", "tasks.kubetask.io", "-n", "default")
    assert not _can_i(release, "create", "pods", "-n", "default")
    assert not _can_i(release, "create", "pods", "--subresource=exec", "-n", ns)
    assert not _can_i(release, "update", "pods", "-n", ns)
    assert not _can_i(release, "patch", "tasks.kubetask.io", "-n", ns)
    assert not _can_i(release, "patch", "taskschedules.kubetask.io", "-n", ns)
    assert not _can_i(release, "patch", "deployments.apps", "-n", ns)
    assert not _can_i(release, "update", "deployments.apps", "--subresource=scale", "-n", ns)
    # The real token is refused too, not only the impersonation.
    code, body = release.plane.request(
        f"/api/v1/namespaces/{ns}/serviceaccounts/{release.name}-kubetask-operator/token", method="POST",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}})
    assert code == 201, body
    code, body = release.plane.request("/api/v1/namespaces/default/secrets", token=body["status"]["token"])
    assert code == 403, body


def test_upgrade_changes_the_pool_policy_and_the_operator_obeys(release_factory: Any) -> None:
    release: Release = release_factory("--set", "pools[0].maxReplicas=1", "--set", "pools[0].concurrency=1",
                                       "--set", "pools[0].scaleDownDelaySeconds=60")
    for index in range(3):
        release.task(f"slow-{index}", "sleep", payload={"seconds": 30})
    devstack.wait_for(lambda: release.replicas() == 1, 30, f"{release.pool} scaled to its max of 1")
    assert release.replicas() == 1

    release.upgrade("--set", "pools[0].maxReplicas=3")
    annotations = release.get("deployment", release.pool)["metadata"]["annotations"]
    assert annotations["kubetask.io/max-replicas"] == "3"
    try:
        devstack.wait_for(lambda: release.replicas() == 3, 30, f"{release.pool} scaled to the new max of 3")
    except TimeoutError:
        print(release.pod_log("operator"))
        raise
    # The upgrade carried the operator's replica count; a second one must not reset it either.
    release.upgrade("--set", "pools[0].maxReplicas=3")
    assert release.replicas() == 3


@pytest.fixture
def own_plane(tmp_path: pathlib.Path) -> Iterator[controlplane.ControlPlane]:
    """A control plane with no CRDs yet, so the release installs (and owns) them."""
    plane = controlplane.ControlPlane.start(tmp_path / "cluster")
    try:
        yield plane
    finally:
        plane.stop()


def test_uninstall_keeps_the_crds_and_the_tasks(own_plane: controlplane.ControlPlane,
                                                pg_server: postgres.PostgresServer) -> None:
    own_plane.kubectl("create", "namespace", "kubetask")
    own_plane.wait_default_serviceaccount("kubetask")
    release = install(own_plane, pg_server, "kubetask", crds=True)
    owner = json.loads(own_plane.kubectl("get", "crd", "tasks.kubetask.io", "-o", "json").stdout)
    assert owner["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name
    release.task("kept", "echo")
    release.wait_phase("kept", "Succeeded")

    release.helm("uninstall", release.name, "--wait", "--timeout", "60s")
    crds = own_plane.kubectl("get", "crd", "-o", "name").stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/tasks.kubetask.io" in crds
    assert not [crd for crd in crds if crd.endswith(".kopf.dev")], "the chart installs no kopf CRDs"
    assert release.get("task", "kept")["status"]["phase"] == "Succeeded"
    assert release.get("deployments")["items"] == [], "everything but the CRDs is gone"


def test_a_cluster_wide_operator_serves_every_namespace_but_scales_and_patches_only_its_own(
        own_plane: controlplane.ControlPlane, pg_server: postgres.PostgresServer) -> None:
    """The default scope: Tasks from any namespace run, while pods and Deployments elsewhere are out of reach."""
    for namespace in ("kubetask", "tenant"):
        own_plane.kubectl("create", "namespace", namespace)
        own_plane.wait_default_serviceaccount(namespace)
    release = install(own_plane, pg_server, "kubetask", "--set", "operator.namespaces=null", crds=True)
    assert "KUBETASK_NAMESPACES" not in {e["name"] for e in release.get("deployment", "kt-kubetask-operator")
                                         ["spec"]["template"]["spec"]["containers"][0]["env"]}, "cluster-wide"
    # A Task of another namespace runs on the release's pool, scaled from zero in the release namespace.
    body = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": "far", "namespace": "tenant"},
            "spec": {"type": "echo", "queue": release.queue, "payload": {"from": "tenant"}}}
    own_plane.kubectl("apply", "-f", "-", input=json.dumps(body))
    far = Release(own_plane, "tenant", release.name, release.queue, release.dsn, release.values)
    try:
        assert far.wait_phase("far", "Succeeded")["status"]["result"] == {"from": "tenant"}
    except TimeoutError:
        print(release.pod_log("operator"))
        raise
    # Tasks everywhere ...
    assert _can_i(release, "list", "tasks.kubetask.io", "--all-namespaces")
    assert _can_i(release, "patch", "tasks.kubetask.io", "--subresource=status", "-n", "tenant")
    assert _can_i(release, "create", "events", "-n", "tenant")
    assert not _can_i(release, "patch", "tasks.kubetask.io", "-n", "tenant")
    # ... container Tasks' pods wherever Tasks are served (made, followed and deleted, never patched) ...
    assert _can_i(release, "create", "pods", "-n", "tenant") and _can_i(release, "delete", "pods", "-n", "tenant")
    # ... while pool pods and Deployments only in the release namespace: not in a tenant's, not in kube-system.
    for namespace in ("tenant", "kube-system"):
        assert not _can_i(release, "patch", "pods", "-n", namespace), namespace
        assert not _can_i(release, "patch", "deployments.apps", "--subresource=scale", "-n", namespace), namespace
        assert not _can_i(release, "list", "deployments.apps", "-n", namespace), namespace
    assert not _can_i(release, "list", "deployments.apps", "--all-namespaces")
    assert _can_i(release, "patch", "deployments.apps", "--subresource=scale", "-n", "kubetask")
    log = release.pod_log("operator")
    assert "Forbidden" not in log and not re.search(r"\b403\b(?!-)", log), log


def test_a_pools_queue_spec_becomes_its_queue_which_the_operator_enforces_and_reports(release_factory: Any) -> None:
    """pools[].queueSpec on a real API server: Helm creates the Queue, the operator under the chart's RBAC
    obeys it (paused: nothing claimed) and writes its status; resumed, the Task runs."""
    release: Release = release_factory(
        "--set", "pools[0].queueSpec.paused=true", "--set", "pools[0].queueSpec.maxRunning=2",
        "--set", "operator.extraEnv[0].name=KUBETASK_QUEUE_STATUS_INTERVAL_SECONDS",
        "--set-string", "operator.extraEnv[0].value=0.5")
    queue = json.loads(release.plane.kubectl("get", "queue", release.queue, "-o", "json").stdout)
    assert queue["spec"] == {"paused": True, "maxRunning": 2, "namespaceSelector": {}}
    assert queue["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name

    def status_when(check: Any) -> Any:
        def probe() -> dict[str, Any] | None:
            body = json.loads(release.plane.kubectl("get", "queue", release.queue, "-o", "json").stdout)
            status = body.get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or ()}
            return status if check(status, conditions) else None
        return probe

    # Once the status says Paused the operator has the Queue's row: the claim obeys it from then on (before,
    # a Queue whose row is not written yet is open, as documented).
    devstack.wait_for(status_when(lambda status, conditions: conditions.get("Paused") == "True"), 60,
                      f"Queue {release.queue} Paused", interval=0.3)
    release.task("held", "echo")
    status = devstack.wait_for(status_when(lambda status, conditions: status.get("pending") == 1), 60,
                               f"Queue {release.queue} with 1 pending", interval=0.3)
    assert status["observedGeneration"] == 1
    assert release.get("task", "held")["status"]["phase"] == "Queued"
    assert release.replicas() == 0, "a paused queue's pool stays at its minimum"

    release.plane.kubectl("patch", "queue", release.queue, "--type", "merge", "-p", '{"spec": {"paused": false}}')
    release.wait_phase("held", "Succeeded")
