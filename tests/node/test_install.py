"""`helm install` on the real node: the operator and a worker pool run in containers and run a Task."""

from __future__ import annotations

import json

from kubetask_dev import node

from tests.node.conftest import EXAMPLE_TASK, NodeRelease


def test_operator_and_worker_pods_are_ready_under_the_kubelet(release: NodeRelease) -> None:
    for component in ("operator", "worker"):
        pod = release.ready_pod(component)
        assert pod["spec"]["nodeName"] == node.NODE_NAME
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] and "running" in status["state"], status
        assert status["containerID"].startswith("containerd://")
        assert status["image"].endswith(release.real.node.images.kubetask.split("/", 1)[1])
        assert pod["status"]["podIP"].startswith(node.BRIDGE_IP.rsplit(".", 1)[0] + ".")


def test_example_task_succeeds_and_the_worker_logs_it_with_its_uid(release: NodeRelease) -> None:
    release.kubectl("apply", "-f", str(EXAMPLE_TASK))
    task = release.wait_phase("hello", ("Succeeded",))
    assert task["status"]["result"] == {"greeting": "hello from kubetask"}
    worker = task["status"]["worker"]
    assert worker.startswith(release.pool + "-")
    lines = [json.loads(line) for line in release.kubectl("logs", worker).stdout.splitlines() if line.startswith("{")]
    about = [line for line in lines if (line.get("task") or {}).get("uid") == task["metadata"]["uid"]]
    assert about, f"no log line of {worker} names the Task's uid {task['metadata']['uid']}: {lines[-5:]}"
    assert {line["task"]["name"] for line in about} == {"hello"}
