"""Scale-in through the kubelet: SIGTERM reaches the worker, which finishes or hands back its task in time."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from kubetask_dev import binaries, devstack

from tests.node.conftest import GRACE_SECONDS, NodeRelease


def worker_owner(messages: list[str]) -> str:
    """The worker's lease owner, from its first line (``worker OWNER serves queue …``)."""
    first = next(m for m in messages if m.startswith("worker ") and " serves queue " in m)
    return first.split()[1]


@pytest.mark.timeout(300)
def test_scale_in_lets_a_running_task_finish_within_the_grace_period(release: NodeRelease) -> None:
    release.task("long", "sleep", payload={"seconds": 6})
    task = release.wait_phase("long", ("Running",))
    worker = task["status"]["worker"]
    # Follow the worker's log to its end: the lines it writes after SIGTERM are the proof.
    follow = subprocess.Popen(
        [str(binaries.bin_dir() / "kubectl"), "--kubeconfig", str(release.real.plane.kubeconfig),
         "-n", release.namespace, "logs", "-f", worker],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        signalled = time.monotonic()
        release.kubectl("scale", f"deployment/{release.pool}", "--replicas=0")

        def gone() -> bool:
            return release.kubectl("get", "pod", worker, check=False).returncode != 0
        devstack.wait_for(gone, GRACE_SECONDS + 30, f"pod {worker} to terminate", interval=0.3)
        took = time.monotonic() - signalled
        output, _ = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert took < GRACE_SECONDS + 10, f"{worker} took {took:.1f}s to go (grace {GRACE_SECONDS}s)"
    messages = [json.loads(line)["message"] for line in output.splitlines() if line.startswith("{")]
    assert any(m.startswith("stopping: waiting up to") for m in messages), messages[-10:]
    assert messages[-1] == f"worker {worker_owner(messages)} stopped", messages[-10:]
    task = release.wait_phase("long", ("Succeeded",), timeout=120)
    outcomes = [attempt["outcome"] for attempt in task["status"]["history"]]
    # Finished on the terminating pod, or handed back and finished by a new one: never lost to a SIGKILL.
    assert outcomes[-1] == "succeeded" and "lost" not in outcomes, outcomes
    # The operator keeps the pool at its floor: a Ready worker again for the tests that follow.
    release.ready_pod("worker", timeout=120)
