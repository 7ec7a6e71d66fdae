"""The Helm chart, rendered by the real helm binary and installed on a real control plane.

Render tests run ``helm template`` / ``helm lint`` and assert on the parsed
objects; they need no server.

Install tests use a control plane of their own (``chart_plane``), not the
session's shared one: the end-to-end stack runs a cluster-wide operator there,
which would also admit this module's Tasks into its own database, and it
installs the Task CRD with kubectl, so no Helm release could own it. Here the
CRDs are applied once from the chart's own rendering; each test installs a
release into a fresh namespace, with a fresh database on the session's
PostgreSQL, an operator scoped to that namespace and a queue of its own.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubetask_dev import binaries, controlplane, devstack, podrunner, postgres

from tests.conftest import ROOT, temporary_namespace

CHART = ROOT / "charts" / "kubetask"
#: The one value every render needs: where the database URL lives.
DB = ("--set", "database.existingSecret=kubetask-db")


def helm(*args: str, kubeconfig: pathlib.Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [str(binaries.bin_dir() / "helm"), *args]
    if kubeconfig is not None:
        command += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(command, text=True, capture_output=True, timeout=180)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def render(*args: str, namespace: str = "kubetask-system", release: str = "kubetask") -> list[dict[str, Any]]:
    """``helm template`` the chart with ``args`` (e.g. ``--set k=v``); the objects it renders."""
    out = helm("template", release, str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(*args: str) -> str:
    """``helm template`` that must fail; its error output."""
    result = helm("template", "kubetask", str(CHART), *args, check=False)
    assert result.returncode != 0, f"helm template {' '.join(args)} should have failed:\n{result.stdout[:2000]}"
    return result.stderr


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod template spec of every workload, by ``Kind/name``."""
    return {f"{obj['kind']}/{obj['metadata']['name']}": obj["spec"]["template"]["spec"]
            for obj in objects if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")}


# -- install tests ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chart_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.ControlPlane]:
    """A control plane for the chart's install tests, with the chart's CRDs applied."""
    plane = controlplane.ControlPlane.start(tmp_path_factory.mktemp("chart-cluster"))
    try:
        crds = helm("template", "kubetask", str(CHART), *DB, "--show-only", "templates/crds.yaml").stdout
        plane.kubectl("apply", "--server-side", "-f", "-", input=crds)
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/tasks.kubetask.io",
                      "crd/taskschedules.kubetask.io")
        yield plane
    finally:
        plane.stop()


@dataclasses.dataclass
class Release:
    """A release of the chart installed in its own namespace, served by its own operator and database."""

    plane: controlplane.ControlPlane
    namespace: str
    name: str
    queue: str
    dsn: str
    values: list[str]

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return helm(*args, "--namespace", self.namespace, kubeconfig=self.plane.kubeconfig, check=check)

    def upgrade(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.helm("upgrade", self.name, str(CHART), *self.values, *args)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.plane.kubectl("-n", self.namespace, *args, check=check, input=input)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    @property
    def operator_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-kubetask-operator"

    @property
    def pool(self) -> str:
        return f"{self.name}-kubetask-worker-{self.queue}"

    def processes(self) -> dict[str, int]:
        return podrunner.running_processes(self.plane.state_dir, self.namespace)

    def pod_log(self, component: str) -> str:
        logs = self.plane.state_dir / "logs" / "pods"
        pods = self.get("pods", "-l", f"app.kubernetes.io/component={component}")["items"]
        text = ""
        for pod in pods:
            path = logs / f"{self.namespace}_{pod['metadata']['name']}.log"
            if path.exists():
                text += f"--- {pod['metadata']['name']}\n" + path.read_text(errors="replace")[-4000:]
        return text

    def task(self, name: str, type_: str, **spec: Any) -> None:
        body = {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"type": type_, "queue": self.queue, **spec}}
        self.kubectl("apply", "-f", "-", input=json.dumps(body))

    def wait_phase(self, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            task: dict[str, Any] = self.get("task", name)
            return task if (task.get("status") or {}).get("phase") == phase else None

        try:
            result: dict[str, Any] = devstack.wait_for(check, timeout, f"Task {self.namespace}/{name} {phase}",
                                                        interval=0.3)
        except TimeoutError:
            print(self.pod_log("operator"))
            raise
        return result

    def replicas(self) -> int:
        return int(self.get("deployment", self.pool)["spec"].get("replicas") or 0)


def install(plane: controlplane.ControlPlane, pg_server: postgres.PostgresServer, namespace: str,
            *extra: str, crds: bool = False) -> Release:
    """A fresh database and its Secret in ``namespace``, then ``helm install`` with a pool of its own queue."""
    dsn = pg_server.create_database("chart_" + uuid.uuid4().hex[:10])
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kubetask-db", "namespace": namespace},
              "stringData": {"url": dsn}}
    plane.kubectl("apply", "-f", "-", input=json.dumps(secret))
    queue = "q-" + uuid.uuid4().hex[:8]
    values = [
        *DB,
        "--set", f"crds.install={str(crds).lower()}",
        "--set", f"operator.namespaces={{{namespace}}}",
        # The harness runs every operator pod on this machine: each needs a port of its own.
        "--set", f"operator.livenessProbe.port={postgres.free_port()}",
        # …and the chart's one metrics port would be shared by the operator and the workers here (pods of a
        # cluster each have their own address); tests/e2e/test_metrics.py scrapes the processes instead.
        "--set", "metrics.enabled=false",
        "--set", f"pools[0].name={queue}",
        "--set", "pools[0].handlers={kubetask.demo}",  # as the default pool has: the tests' Tasks run the demos
        *extra,
    ]
    release = Release(plane, namespace, "kt", queue, dsn, values)
    release.helm("install", release.name, str(CHART), *values)
    return release


@pytest.fixture
def chart_namespace(chart_plane: controlplane.ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    with temporary_namespace(chart_plane, "c-" + uuid.uuid4().hex[:8]) as name:
        yield name


@pytest.fixture
def release_factory(chart_plane: controlplane.ControlPlane, pg_server: postgres.PostgresServer,
                    chart_namespace: str) -> Iterator[Any]:
    """Install the chart (once per test) with extra ``--set`` arguments; uninstalled afterwards."""
    made: list[Release] = []

    def make(*extra: str) -> Release:
        release = install(chart_plane, pg_server, chart_namespace, *extra)
        made.append(release)
        return release

    yield make
    for release in made:
        release.helm("uninstall", release.name, "--wait", "--timeout", "60s", check=False)
