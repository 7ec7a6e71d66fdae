"""The pod harness plays the kubelet for task pods: run once, report the end as a kubelet does, serve the logs.

Task pods have the shape the operator creates (component ``task``,
restartPolicy Never, one container ``task``); each test makes its own in a
fresh namespace on the shared control plane and reads back what a real
cluster would show: the pod status, and the output through the API server's
``pods/log`` (which calls the harness's log server as the node's kubelet).
"""

from __future__ import annotations

import json
import pathlib
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from kubetask_dev import controlplane, devstack, podrunner

Pod = dict[str, Any]


def task_pod(name: str, command: list[str], image: str = "registry.example/tasks:1", **spec: Any) -> Pod:
    container = {"name": "task", "image": image, "command": command[:1], "args": command[1:],
                 "resources": {"limits": {"cpu": "1", "memory": "128Mi"}}}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/part-of": "kubetask", "app.kubernetes.io/component": "task",
            "kubetask.io/task-uid": "4a7d1ed4-0000-4000-8000-000000000000", "kubetask.io/attempt": "1"}},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "terminationGracePeriodSeconds": 5, "containers": [container], **spec},
    }


def create(plane: controlplane.ControlPlane, namespace: str, pod: Pod) -> Pod:
    code, body = plane.request(f"/api/v1/namespaces/{namespace}/pods", method="POST", body=pod)
    assert code == 201, body
    created: Pod = body
    return created


def get(plane: controlplane.ControlPlane, namespace: str, name: str) -> Pod | None:
    code, body = plane.request(f"/api/v1/namespaces/{namespace}/pods/{name}")
    if code == 404:
        return None
    assert code == 200, body
    pod: Pod = body
    return pod


def wait_phase(plane: controlplane.ControlPlane, namespace: str, name: str, *phases: str,
               timeout: float = 30) -> Pod:
    def check() -> Pod | None:
        pod = get(plane, namespace, name)
        return pod if pod and pod.get("status", {}).get("phase") in phases else None
    pod: Pod = devstack.wait_for(check, timeout, f"pod {name} to be {'/'.join(phases)}")
    return pod


def container_state(pod: Pod) -> dict[str, Any]:
    (status,) = pod["status"]["containerStatuses"]
    assert status["name"] == "task"
    state: dict[str, Any] = status["state"]
    return state


def condition(pod: Pod, kind: str) -> str | None:
    return next((c["status"] for c in pod["status"].get("conditions", []) if c["type"] == kind), None)


def pod_log(plane: controlplane.ControlPlane, namespace: str, name: str, **query: str) -> tuple[int, str]:
    """``GET pods/NAME/log`` through the API server: (status, body)."""
    query = {"container": "task", **query}
    request = urllib.request.Request(
        f"{plane.server}/api/v1/namespaces/{namespace}/pods/{name}/log?{urllib.parse.urlencode(query)}",
        headers={"Authorization": f"Bearer {plane.token}"})
    try:
        with urllib.request.urlopen(request, context=plane.ssl_context(), timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def gone(plane: controlplane.ControlPlane, namespace: str, name: str, uid: str) -> bool:
    pod = get(plane, namespace, name)
    return pod is None or pod["metadata"]["uid"] != uid


def test_a_process_that_exits_0_succeeds_and_its_output_is_served(control_plane: controlplane.ControlPlane,
                                                                  namespace: str) -> None:
    create(control_plane, namespace, task_pod("ok", ["sh", "-c", "echo hello; echo err >&2; exit 0"]))
    pod = wait_phase(control_plane, namespace, "ok", "Succeeded", "Failed")

    assert pod["status"]["phase"] == "Succeeded"
    terminated = container_state(pod)["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["reason"] == "Completed"
    assert terminated["startedAt"] and terminated["finishedAt"] and terminated["containerID"]
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] is False and status["restartCount"] == 0
    assert status["image"] == "registry.example/tasks:1" and status["imageID"] == ""
    assert condition(pod, "Ready") == "False"
    assert pod["status"]["startTime"]

    assert pod_log(control_plane, namespace, "ok") == (200, "hello\nerr\n")
    assert control_plane.kubectl("logs", "ok", "-n", namespace).stdout == "hello\nerr\n"
    assert "ok" not in podrunner.running_processes(control_plane.state_dir, namespace)


@pytest.mark.parametrize(("script", "code"), [("exit 3", 3), ("kill -TERM $$", 128 + 15)],
                         ids=["exit-3", "killed-by-sigterm"])
def test_a_process_that_fails_fails_the_pod_with_its_exit_code(control_plane: controlplane.ControlPlane,
                                                               namespace: str, script: str, code: int) -> None:
    create(control_plane, namespace, task_pod("bad", ["sh", "-c", script]))
    pod = wait_phase(control_plane, namespace, "bad", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Failed"
    terminated = container_state(pod)["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (code, "Error")


def test_a_pod_past_its_active_deadline_is_stopped_and_fails(control_plane: controlplane.ControlPlane,
                                                             namespace: str) -> None:
    create(control_plane, namespace, task_pod("slow", ["sleep", "60"], activeDeadlineSeconds=2))
    pid = devstack.wait_for(lambda: podrunner.running_processes(control_plane.state_dir, namespace).get("slow"),
                            30, "the task's process")
    started = time.monotonic()
    pod = wait_phase(control_plane, namespace, "slow", "Succeeded", "Failed", timeout=20)

    assert time.monotonic() - started < 15  # 2 s of deadline, the SIGTERM, and the status write
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert pod["status"]["message"] == "Pod was active on the node longer than the specified deadline"
    terminated = container_state(pod)["terminated"]
    assert terminated["exitCode"] in (137, 143) and terminated["reason"] == "Error"
    assert not controlplane._pid_alive(pid)


def test_a_command_not_on_path_is_a_start_error(control_plane: controlplane.ControlPlane, namespace: str) -> None:
    create(control_plane, namespace, task_pod("missing", ["kubetask-no-such-command", "--flag"]))
    pod = wait_phase(control_plane, namespace, "missing", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Failed"
    terminated = container_state(pod)["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
    assert 'exec: "kubetask-no-such-command": executable file not found in $PATH' in terminated["message"]


def test_an_unpullable_image_waits_pending_and_never_runs(control_plane: controlplane.ControlPlane,
                                                          namespace: str, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "ran"
    create(control_plane, namespace, task_pod("nopull", ["touch", str(marker)], image="unpullable.invalid/x:1"))
    seen: list[str] = []

    def backing_off() -> bool:
        pod = get(control_plane, namespace, "nopull")
        waiting = (container_state(pod).get("waiting") if pod and pod["status"].get("containerStatuses") else None)
        if waiting and (not seen or seen[-1] != waiting["reason"]):
            seen.append(waiting["reason"])
        return bool(seen) and seen[-1] == "ImagePullBackOff"

    devstack.wait_for(backing_off, 30, "ImagePullBackOff", interval=0.05)
    assert seen == ["ErrImagePull", "ImagePullBackOff"]
    pod = get(control_plane, namespace, "nopull")
    assert pod is not None
    assert pod["status"]["phase"] == "Pending"
    assert "unpullable.invalid/x:1" in container_state(pod)["waiting"]["message"]
    assert condition(pod, "Ready") == "False"
    assert not marker.exists()
    assert "nopull" not in podrunner.running_processes(control_plane.state_dir, namespace)
    code, body = pod_log(control_plane, namespace, "nopull")
    assert code == 400 and "waiting to start" in body


def test_a_missing_secret_waits_until_it_exists_then_env_and_working_dir_apply(
        control_plane: controlplane.ControlPlane, namespace: str, tmp_path: pathlib.Path) -> None:
    env = [{"name": "LITERAL", "value": "plain"},
           {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
           {"name": "FROM_CONFIG", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}]
    create(control_plane, namespace, task_pod(
        "configured", ["sh", "-c", 'echo "$LITERAL $FROM_SECRET $FROM_CONFIG $(pwd)"'],
        container={"env": env, "workingDir": str(tmp_path)}))

    def config_error() -> Pod | None:
        pod = get(control_plane, namespace, "configured")
        statuses = (pod or {}).get("status", {}).get("containerStatuses")
        return pod if statuses and statuses[0]["state"].get("waiting", {}).get("reason") == \
            "CreateContainerConfigError" else None

    pod = devstack.wait_for(config_error, 30, "CreateContainerConfigError")
    assert pod["status"]["phase"] == "Pending"
    assert 'secrets "creds" not found' in container_state(pod)["waiting"]["message"]

    control_plane.kubectl("create", "secret", "generic", "creds", "--from-literal=token=s3cret", "-n", namespace)
    control_plane.kubectl("create", "configmap", "settings", "--from-literal=mode=fast", "-n", namespace)
    pod = wait_phase(control_plane, namespace, "configured", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod_log(control_plane, namespace, "configured") == (200, f"plain s3cret fast {tmp_path}\n")


def test_follow_streams_output_while_the_process_runs_and_ends_when_it_exits(
        control_plane: controlplane.ControlPlane, namespace: str, tmp_path: pathlib.Path) -> None:
    go = tmp_path / "go"
    script = f'echo first; while [ ! -e "{go}" ]; do sleep 0.05; done; echo second'
    create(control_plane, namespace, task_pod("chatty", ["sh", "-c", script]))
    wait_phase(control_plane, namespace, "chatty", "Running")

    request = urllib.request.Request(
        f"{control_plane.server}/api/v1/namespaces/{namespace}/pods/chatty/log?container=task&follow=true",
        headers={"Authorization": f"Bearer {control_plane.token}"})
    with urllib.request.urlopen(request, context=control_plane.ssl_context(), timeout=20) as stream:
        assert stream.readline() == b"first\n"  # before the file exists: the process is still waiting for it
        assert get(control_plane, namespace, "chatty")["status"]["phase"] == "Running"  # type: ignore[index]
        go.touch()
        assert stream.readline() == b"second\n"
        assert stream.read() == b""  # the stream ends once the process has exited
    pod = wait_phase(control_plane, namespace, "chatty", "Succeeded", "Failed")
    assert pod["status"]["phase"] == "Succeeded"


def test_tail_lines_and_limit_bytes_follow_kubelet_semantics(control_plane: controlplane.ControlPlane,
                                                             namespace: str) -> None:
    create(control_plane, namespace, task_pod("lines", ["sh", "-c", "printf 'one\\ntwo\\nthree\\n'"]))
    wait_phase(control_plane, namespace, "lines", "Succeeded")
    assert pod_log(control_plane, namespace, "lines", tailLines="1") == (200, "three\n")
    assert pod_log(control_plane, namespace, "lines", tailLines="2") == (200, "two\nthree\n")
    assert pod_log(control_plane, namespace, "lines", tailLines="10") == (200, "one\ntwo\nthree\n")
    assert pod_log(control_plane, namespace, "lines", limitBytes="5") == (200, "one\nt")
    assert pod_log(control_plane, namespace, "lines", tailLines="2", limitBytes="3") == (200, "two")
    assert pod_log(control_plane, namespace, "lines", timestamps="true") == (200, "one\ntwo\nthree\n")


def test_deleting_a_finished_pod_removes_it(control_plane: controlplane.ControlPlane, namespace: str) -> None:
    uid = create(control_plane, namespace, task_pod("done", ["true"]))["metadata"]["uid"]
    wait_phase(control_plane, namespace, "done", "Succeeded")
    control_plane.kubectl("delete", "pod", "done", "-n", namespace, "--wait=false")
    devstack.wait_for(lambda: gone(control_plane, namespace, "done", uid), 30, "the finished pod to be removed")


def test_deleting_a_running_pod_stops_its_process(control_plane: controlplane.ControlPlane, namespace: str) -> None:
    uid = create(control_plane, namespace, task_pod("busy", ["sleep", "3600"]))["metadata"]["uid"]
    pid = devstack.wait_for(lambda: podrunner.running_processes(control_plane.state_dir, namespace).get("busy"),
                            30, "the task's process")
    wait_phase(control_plane, namespace, "busy", "Running")
    control_plane.kubectl("delete", "pod", "busy", "-n", namespace, "--wait=false")
    devstack.wait_for(lambda: not controlplane._pid_alive(pid), 15, "SIGTERM to end the process")
    devstack.wait_for(lambda: gone(control_plane, namespace, "busy", uid), 30, "the pod to be removed")


def test_a_recreated_pod_with_the_same_name_shows_only_its_own_output(control_plane: controlplane.ControlPlane,
                                                                      namespace: str) -> None:
    uid = create(control_plane, namespace, task_pod("again", ["echo", "first pod"]))["metadata"]["uid"]
    wait_phase(control_plane, namespace, "again", "Succeeded")
    assert pod_log(control_plane, namespace, "again") == (200, "first pod\n")
    control_plane.kubectl("delete", "pod", "again", "-n", namespace, "--wait=false")
    devstack.wait_for(lambda: gone(control_plane, namespace, "again", uid), 30, "the first pod to be removed")

    create(control_plane, namespace, task_pod("again", ["echo", "second pod"]))
    wait_phase(control_plane, namespace, "again", "Succeeded")
    assert pod_log(control_plane, namespace, "again") == (200, "second pod\n")


def test_worker_pods_logs_are_served_too(control_plane: controlplane.ControlPlane, namespace: str) -> None:
    pod = task_pod("worker", ["sh", "-c", "echo worker says hi; exec sleep 3600"])
    pod["metadata"]["labels"]["app.kubernetes.io/component"] = "worker"
    pod["spec"]["restartPolicy"] = "Always"
    pod["spec"]["containers"][0]["name"] = "worker"
    create(control_plane, namespace, pod)
    devstack.wait_for(lambda: control_plane.kubectl("logs", "worker", "-n", namespace, check=False).stdout
                      == "worker says hi\n", 30, "the worker's output through kubectl logs")


def _fetch(port: int, context: ssl.SSLContext, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            reply = tls.recv(4096)
    if not reply:
        raise ConnectionResetError("closed without a reply")
    return int(reply.split()[1])


def test_the_log_server_answers_only_the_api_server(control_plane: controlplane.ControlPlane, namespace: str) -> None:
    create(control_plane, namespace, task_pod("secret-output", ["echo", "private"]))
    wait_phase(control_plane, namespace, "secret-output", "Succeeded")
    node = json.loads(control_plane.kubectl("get", "node", "kwok-node-0", "-o", "json").stdout)
    port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    assert port == control_plane.ports["kubelet"]
    assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
    path = f"/containerLogs/{namespace}/secret-output/task"
    pki = control_plane.state_dir / "pki"

    def context(cert: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.check_hostname = False
        if cert:
            ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
        return ctx

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _fetch(port, context(None), path)  # no client certificate: the handshake fails
    if not (pki / "log-reader.crt").exists():
        controlplane.client_certificate(pki, "log-reader", "/O=system:masters/CN=log-reader")
    assert _fetch(port, context("log-reader"), path) == 403  # the cluster CA's, but not the API server's
    assert _fetch(port, context("kubelet-client"), path) == 200
