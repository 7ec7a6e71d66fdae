"""A container Task on the real node: a real image in a real container, its log kept after the pod is gone."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from kubetask_dev import devstack, images

from tests.node.conftest import NodeRelease

KUBETASK = str(pathlib.Path(sys.executable).parent / "kubetask")


def test_a_container_task_runs_a_real_image_and_its_log_outlives_the_pod(release: NodeRelease) -> None:
    image = release.real.node.images.kubetask  # built here, loaded into the node's containerd: never pulled
    repository, tag = images.split(image)
    body = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task",
            "metadata": {"name": "real-container", "namespace": release.namespace},
            "spec": {"container": {"image": f"{repository}:{tag}", "command": ["python", "-c"],
                                   "args": ["import os; print('hello from', os.environ['KUBETASK_TASK_NAME'],"
                                            " 'attempt', os.environ['KUBETASK_ATTEMPT'])"]},
                     "maxRetries": 0}}
    release.kubectl("apply", "-f", "-", input=json.dumps(body))
    status = release.wait_phase("real-container", ("Succeeded", "DeadLetter"), timeout=120)["status"]
    assert status["phase"] == "Succeeded", status
    [attempt] = status["history"]
    assert attempt["exitCode"] == 0 and attempt["reason"] == "Completed"
    devstack.wait_for(lambda: not release.get("pods", "-l", "app.kubernetes.io/component=task")["items"], 60,
                      "the task pod to be deleted")
    env = {**os.environ, "KUBECONFIG": str(release.real.plane.kubeconfig), "DATABASE_URL": release.dsn}
    logs = subprocess.run([KUBETASK, "logs", "real-container", "-n", release.namespace], env=env,
                          capture_output=True, text=True, timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "hello from real-container attempt 1\n"
