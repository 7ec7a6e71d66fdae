"""The operator's liveness probe, served by kopf and acted on by the kubelet."""

from __future__ import annotations

import os
import signal

import pytest
from kubetask_dev import devstack

from tests.node.conftest import NodeRelease


@pytest.mark.timeout(420)
def test_a_frozen_operator_is_restarted_and_statuses_converge(release: NodeRelease) -> None:
    pod = release.ready_pod("operator")
    name = pod["metadata"]["name"]
    before = pod["status"]["containerStatuses"][0]["restartCount"]
    # Frozen, not dead: the process is there but answers nothing, probes included.
    os.kill(release.host_pid(pod, "operator"), signal.SIGSTOP)

    def restarted() -> bool:
        status = release.get("pod", name)["status"]["containerStatuses"][0]
        return bool(status["restartCount"] > before and status.get("ready"))
    # The chart probes every 30 s after 30 s, three failures of 10 s each; the kubelet then waits the
    # 30 s grace period (a stopped process cannot act on SIGTERM) before SIGKILL.
    devstack.wait_for(restarted, 300, f"the kubelet to restart the frozen operator in {name}", interval=1)
    last = release.get("pod", name)["status"]["containerStatuses"][0]["lastState"]
    assert "terminated" in last, last
    release.task("after-freeze", "echo", payload={"n": 1})
    task = release.wait_phase("after-freeze", ("Succeeded",), timeout=120)
    assert task["status"]["result"] == {"n": 1}
