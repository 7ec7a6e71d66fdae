"""The real-node tier: the chart in real containers under a real kubelet.

One real node per session (``kubetask_dev.node``): its own control plane (its
API server advertises the host's address on the pod bridge, so pods reach it),
containerd with runc, the kubelet, kube-proxy and CoreDNS, the images built
from the Dockerfile and Debian's packages (``kubetask_dev.images``, cached by
their inputs' hash). The session's PostgreSQL on 127.0.0.1 is forwarded to the
bridge, and one release of the chart (``release``) is installed from it with
the operator scoped to its own namespace, so a second release (the bundled
PostgreSQL test) can live beside it.

Skipped, with the reason, on a machine that cannot run a node (not root, no
runc, containerd or CNI plugins, a node already running). Teardown stops
everything and fails if any process, mount, network device, iptables chain or
cgroup of the node is left.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubetask_dev import binaries, controlplane, devstack, node, nodestack, postgres

from tests.conftest import ROOT

GRACE_SECONDS = 20


@dataclasses.dataclass
class RealNode:
    plane: controlplane.ControlPlane
    node: node.Node
    pg: postgres.PostgresServer


@pytest.fixture(scope="session")
def real_node(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RealNode]:
    reason = node.unavailable()
    if reason:
        pytest.skip(f"no real node on this machine: {reason}")
    pg_server: postgres.PostgresServer = request.getfixturevalue("pg_server")  # only once the node can run
    binaries.ensure()
    _, node_images = nodestack.build()
    state = tmp_path_factory.mktemp("real-node")
    node.network_up(state / "node")
    plane = None
    try:
        plane = controlplane.ControlPlane.start(state / "cluster", nodes=0, harness=False,
                                                advertise_address=node.BRIDGE_IP)
        real = node.Node.start(state / "node", plane, node_images, extra_forwards={"postgres": pg_server.port})
        yield RealNode(plane=plane, node=real, pg=pg_server)
    finally:
        node.stop(state / "node", plane)
        if plane is not None:
            plane.stop()
        left = node.leftovers(state / "node")
        assert not left, f"the real node left behind: {left}"


@dataclasses.dataclass
class NodeRelease:
    """A release of the chart on the real node, in its own namespace."""

    real: RealNode
    namespace: str
    name: str
    dsn: str = ""
    """The release's database, from the host (loopback)."""

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.real.plane.kubectl("-n", self.namespace, *args, check=check, input=input)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    @property
    def pool(self) -> str:
        return f"{self.name}-worker-default"

    @property
    def operator(self) -> str:
        return f"{self.name}-operator"

    def pods(self, component: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-l", f"app.kubernetes.io/component={component}")["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def ready_pod(self, component: str, timeout: float = 120) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            for pod in self.pods(component):
                conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
                if conditions.get("Ready") == "True":
                    return pod
            return None
        pod: dict[str, Any] = devstack.wait_for(ready, timeout, f"a Ready {component} pod in {self.namespace}",
                                                interval=0.5)
        return pod

    def task(self, name: str, type_: str, **spec: Any) -> dict[str, Any]:
        body = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task",
                "metadata": {"name": name, "namespace": self.namespace}, "spec": {"type": type_, **spec}}
        self.kubectl("apply", "-f", "-", input=json.dumps(body))
        return body

    def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float = 90) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            task: dict[str, Any] = self.get("task", name)
            return task if (task.get("status") or {}).get("phase") in phases else None
        try:
            task: dict[str, Any] = devstack.wait_for(check, timeout, f"Task {self.namespace}/{name} {phases}",
                                                     interval=0.3)
        except TimeoutError:
            print(self.kubectl("logs", f"deployment/{self.operator}", "--tail=60", check=False).stdout)
            raise
        return task

    def exec(self, pod: str, code: str) -> Any:
        """Run Python ``code`` in the pod with ``kubectl exec``; it prints one JSON value."""
        result = self.kubectl("exec", pod, "--", "python", "-c", code)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def host_pid(self, pod: dict[str, Any], container: str) -> int:
        """The host PID of a container's main process, from containerd."""
        status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == container)
        container_id = status["containerID"].removeprefix("containerd://")
        for line in self.real.node.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return int(fields[1])
        raise AssertionError(f"container {container_id} of {pod['metadata']['name']} has no task in containerd")


def install(real: RealNode, namespace: str, release: str, values: dict[str, Any], timeout: str = "5m") -> NodeRelease:
    nodestack.install(real.plane, values, namespace=namespace, release=release, timeout=timeout)
    return NodeRelease(real=real, namespace=namespace, name=f"{release}-kubetask")


def values(real: RealNode, namespace: str, **extra: Any) -> dict[str, Any]:
    chart = nodestack.chart_values(real.node.images, pool={"terminationGracePeriodSeconds": GRACE_SECONDS})
    chart["operator"] = {"namespaces": [namespace]}
    # Per-attempt lines (started, succeeded) are debug lines: the tests read them with kubectl logs.
    chart["logs"] = {"level": "debug"}
    chart.update(extra)
    return chart


@pytest.fixture(scope="session")
def release(real_node: RealNode) -> Iterator[NodeRelease]:
    """The chart as a user installs it: image from the Dockerfile, database URL in a Secret."""
    namespace = "kt-node"
    database = "node_" + uuid.uuid4().hex[:8]
    real_node.pg.create_database(database)
    nodestack.database_secret(real_node.plane, real_node.pg, database, namespace)
    started = time.monotonic()
    installed = install(real_node, namespace, "kt", values(real_node, namespace))
    installed.dsn = real_node.pg.dsn(database)
    print(f"helm install on the real node took {time.monotonic() - started:.1f}s")
    yield installed


EXAMPLE_TASK = ROOT / "examples" / "task.yaml"
