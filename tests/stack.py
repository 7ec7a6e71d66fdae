"""The kubetask stack for end-to-end and fault tests: operator and worker pods on the real control plane.

One stack per session: the CRD, a ``kubetask-system`` namespace with the
database Secret and the ``default`` worker pool, and the operator as a real
``kubetask operator`` process. Tests create their Tasks in their own
namespace, and a test that needs a pool to itself creates one for its own
queue, so tests do not see each other's work.

Leases and intervals are short here so rescue and scale-in happen within
seconds; the behaviour is the same as with the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.rows
import pytest
from kubetask_dev import controlplane, devstack, postgres

FAST_WORKER_ENV = {
    "KUBETASK_LEASE_SECONDS": "3",
    "KUBETASK_HEARTBEAT_INTERVAL_SECONDS": "1",
    "KUBETASK_POLL_INTERVAL_SECONDS": "1",
}
FAST_OPERATOR_ENV = {
    "KUBETASK_RESCUE_INTERVAL_SECONDS": "1",
    "KUBETASK_CLEANER_INTERVAL_SECONDS": "1",
    "KUBETASK_ORPHAN_SWEEP_SECONDS": "5",
    "KUBETASK_CONTAINER_START_TIMEOUT_SECONDS": "5",
    "KUBETASK_CONTAINER_LEASE_SECONDS": "10",
}


@dataclasses.dataclass
class Stack:
    plane: controlplane.ControlPlane
    dsn: str
    log_dir: pathlib.Path
    operator: subprocess.Popen[bytes] | None = None
    metrics_port: int = dataclasses.field(default_factory=postgres.free_port)
    """The operator's /metrics port, kept across its restarts (workers share this host: none is fixed)."""

    # -- operator ---------------------------------------------------------------------

    def start_operator(self) -> None:
        self.operator = devstack.DevStack.start_operator(
            self.plane, self.dsn, self.log_dir, {**FAST_OPERATOR_ENV, "KUBETASK_METRICS_PORT": str(self.metrics_port)})

    def stop_operator(self, kill: bool = False) -> None:
        if self.operator is None:
            return
        if kill:
            self.operator.kill()
            self.operator.wait()
        else:
            devstack.stop_process(self.operator)
        self.operator = None

    def operator_log(self) -> str:
        return (self.log_dir / "operator.log").read_text(errors="replace")

    # -- pools --------------------------------------------------------------------------

    def add_pool(self, queue: str, extra_env: dict[str, str] | None = None, **options: Any) -> None:
        manifest = devstack.worker_deployment(queue, extra_env={**FAST_WORKER_ENV, **(extra_env or {})}, **options)
        self.plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def remove_pool(self, queue: str) -> None:
        self.plane.kubectl("delete", "deployment", f"kubetask-worker-{queue}", "-n", devstack.NAMESPACE,
                           "--wait=false", check=False)

    def replicas(self, queue: str) -> int:
        out = self.plane.kubectl("get", "deployment", f"kubetask-worker-{queue}", "-n", devstack.NAMESPACE,
                                 "-o", "jsonpath={.spec.replicas}").stdout
        return int(out or 0)

    # -- tasks --------------------------------------------------------------------------

    def apply(self, *manifests: dict[str, Any]) -> None:
        body = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
        self.plane.kubectl("apply", "-f", "-", input=json.dumps(body))

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return json.loads(self.plane.kubectl("get", "task", name, "-n", namespace, "-o", "json").stdout)

    def tasks(self, namespace: str) -> list[dict[str, Any]]:
        return json.loads(self.plane.kubectl("get", "tasks", "-n", namespace, "-o", "json").stdout)["items"]

    def wait_phase(self, namespace: str, name: str, phases: str | tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
        wanted = (phases,) if isinstance(phases, str) else phases

        def check() -> dict[str, Any] | None:
            task = self.get(namespace, name)
            return task if (task.get("status") or {}).get("phase") in wanted else None

        try:
            return devstack.wait_for(check, timeout, f"Task {namespace}/{name} to reach {wanted}", interval=0.2)
        except TimeoutError:
            print(self.operator_log()[-5000:])
            raise

    def wait_all(self, namespace: str, phases: tuple[str, ...], count: int, timeout: float = 120) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            items = self.tasks(namespace)
            done = [t for t in items if (t.get("status") or {}).get("phase") in phases]
            return items if len(items) == count and len(done) == count else None

        return devstack.wait_for(check, timeout, f"{count} Tasks in {namespace} to reach {phases}", interval=0.5)

    # -- PostgreSQL --------------------------------------------------------------------

    def user_kubeconfig(self, namespace: str, user: str, verbs: str, resources: str,
                        directory: pathlib.Path) -> pathlib.Path:
        """A kubeconfig of a ServiceAccount ``user`` that may only ``verbs`` on ``resources`` in ``namespace``
        (a real token: the API server decides what it may do)."""
        self.plane.kubectl("create", "serviceaccount", user, "-n", namespace)
        self.plane.kubectl("create", "role", user, f"--verb={verbs}", f"--resource={resources}", "-n", namespace)
        self.plane.kubectl("create", "rolebinding", user, f"--role={user}", f"--serviceaccount={namespace}:{user}",
                           "-n", namespace)
        code, body = self.plane.request(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{user}/token", method="POST",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                  "spec": {"expirationSeconds": 600}})
        assert code == 201, body
        path = directory / f"{user}.kubeconfig"
        path.write_text(controlplane.kubeconfig_text(self.plane.server, self.plane.ca_file, body["status"]["token"],
                                                     user=user))
        return path

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn, row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def wait_queue_row(self, name: str, where: str = "true", timeout: float = 30) -> None:
        """Until the operator wrote Queue ``name``'s row (``where`` holding of it), from a schema it may not have
        migrated yet."""
        def row() -> bool:
            try:
                return bool(self.sql(f"SELECT 1 FROM kubetask_queues WHERE name = %s AND ({where})", name))
            except psycopg.errors.UndefinedTable:
                return False  # a fresh stack's operator has not migrated yet

        devstack.wait_for(row, timeout, f"Queue {name}'s row ({where})")

    def attempts(self, uid: str) -> list[dict[str, Any]]:
        return self.sql(
            "SELECT a.* FROM kubetask_attempts a JOIN kubetask_tasks t ON t.id = a.task_id"
            " WHERE t.uid = %s ORDER BY a.number", uid)


def task(namespace: str, type_: str, name: str | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetask.io/v1alpha1", "kind": "Task",
        "metadata": {"name": name or f"{type_}-{uuid.uuid4().hex[:6]}", "namespace": namespace},
        "spec": {"type": type_, **spec},
    }


@pytest.fixture(scope="session")
def stack(control_plane: controlplane.ControlPlane, pg_server: postgres.PostgresServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    dsn = pg_server.create_database("kubetask_e2e")
    devstack.DevStack.install(control_plane, dsn)
    result = Stack(control_plane, dsn, tmp_path_factory.mktemp("operator"))
    result.add_pool("default", max_replicas=3, scale_down_delay=3)
    result.start_operator()
    try:
        yield result
    finally:
        result.stop_operator()
        result.remove_pool("default")


@pytest.fixture
def e2e(stack: Stack) -> Iterator[Stack]:
    """The stack, with its operator (re)started if a previous test stopped it."""
    if stack.operator is None or stack.operator.poll() is not None:
        stack.start_operator()
    started = time.monotonic()
    yield stack
    if stack.operator is not None and stack.operator.poll() is not None:
        pytest.fail(f"the operator died during the test ({time.monotonic() - started:.0f}s):\n"
                    + stack.operator_log()[-4000:])
