"""The local control plane is a real one: it serves, authorises, schedules and runs pods."""

from __future__ import annotations

import json

from kubetask_dev import controlplane, devstack, podrunner


def test_apiserver_answers_with_its_version(control_plane: controlplane.ControlPlane) -> None:
    code, body = control_plane.request("/version")
    assert code == 200
    assert body["gitVersion"].startswith("v1.")


def test_kwok_nodes_are_ready(control_plane: controlplane.ControlPlane) -> None:
    nodes = json.loads(control_plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = [n["metadata"]["name"] for n in nodes
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])]
    assert len(ready) >= 2


def test_rbac_refuses_a_serviceaccount_without_rights(control_plane: controlplane.ControlPlane, namespace: str) -> None:
    control_plane.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = control_plane.kubectl("create", "token", "nobody", "-n", namespace).stdout.strip()

    code, body = control_plane.request(f"/api/v1/namespaces/{namespace}/secrets", token=token)
    assert code == 403, body
    assert f"system:serviceaccount:{namespace}:nobody" in body["message"]

    # The same request with rights granted succeeds: RBAC, not a broken token, refused it.
    control_plane.kubectl("create", "role", "read-secrets", "--verb=list", "--resource=secrets", "-n", namespace)
    control_plane.kubectl("create", "rolebinding", "nobody-reads", "--role=read-secrets",
                          f"--serviceaccount={namespace}:nobody", "-n", namespace)
    code, body = devstack.wait_for(
        lambda: (lambda r: r if r[0] == 200 else None)(
            control_plane.request(f"/api/v1/namespaces/{namespace}/secrets", token=token)),
        timeout=10, what="the RoleBinding to take effect")
    assert code == 200


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.proof.kubetask.io"},
    "spec": {
        "group": "proof.kubetask.io", "scope": "Namespaced",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                "status": {"type": "object", "properties": {"state": {"type": "string"}}},
            }}},
        }],
    },
}


def test_custom_resource_is_created_listed_and_status_patched(control_plane: controlplane.ControlPlane,
                                                              namespace: str) -> None:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/widgets.proof.kubetask.io")
    widget = {"apiVersion": "proof.kubetask.io/v1", "kind": "Widget",
              "metadata": {"name": "w1", "namespace": namespace}, "spec": {"size": 3}}
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(widget))

    listed = json.loads(control_plane.kubectl("get", "widgets", "-n", namespace, "-o", "json").stdout)["items"]
    assert [w["metadata"]["name"] for w in listed] == ["w1"]

    control_plane.kubectl("patch", "widget", "w1", "-n", namespace, "--subresource=status", "--type=merge",
                          "-p", json.dumps({"status": {"state": "shiny"}}))
    got = json.loads(control_plane.kubectl("get", "widget", "w1", "-n", namespace, "-o", "json").stdout)
    assert got["status"] == {"state": "shiny"}
    assert got["spec"] == {"size": 3}


def _sleeper(namespace: str, replicas: int) -> dict[str, object]:
    labels = {"app": "sleeper", "app.kubernetes.io/part-of": "kubetask", "app.kubernetes.io/component": "worker"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "sleeper", "namespace": namespace, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"automountServiceAccountToken": False, "terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "main", "image": "sleeper", "command": ["sleep", "3600"]}]},
        }},
    }


def test_deployment_pods_run_as_harness_processes_and_stop_on_scale_to_zero(
        control_plane: controlplane.ControlPlane, namespace: str) -> None:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(_sleeper(namespace, 3)))

    def running_pods() -> list[str]:
        pods = json.loads(control_plane.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        return sorted(p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"
                      and not p["metadata"].get("deletionTimestamp"))

    pods = devstack.wait_for(lambda: (lambda r: r if len(r) == 3 else None)(running_pods()), 60, "3 Running pods")
    processes = devstack.wait_for(
        lambda: (lambda r: r if len(r) == 3 else None)(podrunner.running_processes(control_plane.state_dir, namespace)),
        30, "3 harness processes")
    assert sorted(processes) == pods

    control_plane.kubectl("scale", "deployment/sleeper", "--replicas=0", "-n", namespace)
    devstack.wait_for(lambda: not podrunner.running_processes(control_plane.state_dir, namespace), 30,
                      "harness processes to stop")
    for pid in processes.values():
        assert not controlplane._pid_alive(pid)
    devstack.wait_for(lambda: not control_plane.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip(),
                      30, "the pods to be removed")


def test_pod_stays_terminating_until_its_process_has_exited(control_plane: controlplane.ControlPlane,
                                                            namespace: str) -> None:
    """The harness gives the process its grace period: SIGTERM first, the pod object goes last."""
    deployment = _sleeper(namespace, 1)
    # A process that ignores SIGTERM: only SIGKILL after the grace period ends it.
    deployment["spec"]["template"]["spec"]["containers"][0]["command"] = [  # type: ignore[index]
        "bash", "-c", "trap '' TERM; sleep 3600 & wait"]
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 2  # type: ignore[index]
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    processes = devstack.wait_for(lambda: podrunner.running_processes(control_plane.state_dir, namespace), 60,
                                  "the harness process")
    (pod, pid), = processes.items()
    control_plane.kubectl("delete", "pod", pod, "-n", namespace, "--wait=false")
    # Still there, Terminating, while the process ignores SIGTERM …
    got = json.loads(control_plane.kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)
    assert got["metadata"].get("deletionTimestamp")
    assert controlplane._pid_alive(pid)
    # … and gone once the grace period ran out and SIGKILL ended it.
    devstack.wait_for(lambda: not controlplane._pid_alive(pid), 15, "SIGKILL after the grace period")
    devstack.wait_for(
        lambda: control_plane.kubectl("get", "pod", pod, "-n", namespace, check=False).returncode != 0,
        15, "the pod object to be removed")
