"""kubetask itself on the local cluster: CRDs, a worker pool, the operator.

Used by ``make dev`` and by the end-to-end tests, so both exercise the same
wiring: the CRD from ``crds/``, a worker Deployment whose pods the harness
backs with real ``kubetask worker`` processes (DATABASE_URL from a Secret, the
pod name from the downward API, no ServiceAccount token), and the operator as
a local ``kubetask operator`` process with the admin kubeconfig.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

from kubetask_dev import controlplane, postgres

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAMESPACE = "kubetask-system"
DB_SECRET = "kubetask-db"
DEMO_HANDLERS = "kubetask.demo"
"""``KUBETASK_HANDLERS`` of every pool here: ``make dev``, the examples, the tests and the benchmarks run the
demo handlers, which no production worker has unless its pool names them."""


def worker_deployment(queue: str, *, namespace: str = NAMESPACE, min_replicas: int = 0, max_replicas: int = 3,
                      concurrency: int = 4, scale_down_delay: int = 5, grace: int = 20,
                      extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/part-of": "kubetask", "app.kubernetes.io/component": "worker",
              "kubetask.io/pool": queue}
    env: list[dict[str, Any]] = [
        # The workers' own role, which may run a task's statements and nothing else.
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": DB_SECRET, "key": "worker-url"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "KUBETASK_QUEUE", "value": queue},
        {"name": "KUBETASK_CONCURRENCY", "value": str(concurrency)},
        {"name": "KUBETASK_SHUTDOWN_TIMEOUT_SECONDS", "value": str(max(1, grace - 5))},
        # People read these logs (.dev/logs/pods/); the product's default is JSON for a log pipeline.
        {"name": "KUBETASK_LOG_FORMAT", "value": "text"},
    ]
    # extra_env may replace the handler modules; a pool that still needs the demos names them too.
    env += [{"name": k, "value": v} for k, v in {"KUBETASK_HANDLERS": DEMO_HANDLERS, **(extra_env or {})}.items()]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": f"kubetask-worker-{queue}", "namespace": namespace, "labels": labels,
            "annotations": {
                "kubetask.io/queue": queue, "kubetask.io/min-replicas": str(min_replicas),
                "kubetask.io/max-replicas": str(max_replicas), "kubetask.io/concurrency": str(concurrency),
                "kubetask.io/scale-down-delay-seconds": str(scale_down_delay),
            },
        },
        "spec": {
            "replicas": min_replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": grace,
                    "containers": [{"name": "worker", "image": "kubetask:dev", "command": ["kubetask", "worker"],
                                    "env": env}],
                },
            },
        },
    }


@dataclasses.dataclass
class DevStack:
    plane: controlplane.ControlPlane
    dsn: str
    operator: subprocess.Popen[bytes]
    log_dir: pathlib.Path

    @staticmethod
    def install(plane: controlplane.ControlPlane, dsn: str) -> None:
        """CRD, namespace, database Secret, default worker pool."""
        plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/tasks.kubetask.io",
                      "crd/taskschedules.kubetask.io")
        plane.kubectl("create", "namespace", NAMESPACE, check=False)
        plane.wait_default_serviceaccount(NAMESPACE)
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": DB_SECRET, "namespace": NAMESPACE},
                  "stringData": {"url": dsn, "worker-url": postgres.worker_dsn(dsn)}}
        plane.kubectl("apply", "-f", "-", input=json.dumps(secret))
        plane.kubectl("apply", "-f", "-", input=json.dumps(worker_deployment("default")))

    @staticmethod
    def start_operator(plane: controlplane.ControlPlane, dsn: str, log_dir: pathlib.Path,
                       env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / "operator.log", "ab")
        kubetask = pathlib.Path(sys.executable).parent / "kubetask"
        proc = subprocess.Popen(
            [str(kubetask), "operator"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Text for people (.dev/logs/operator.log) unless the caller or the shell chose a format.
            env={"KUBETASK_LOG_FORMAT": "text", **os.environ, "KUBECONFIG": str(plane.kubeconfig),
                 "DATABASE_URL": dsn, **(env or {})},
            start_new_session=True,
        )
        log.close()
        return proc

    @classmethod
    def start(cls, plane: controlplane.ControlPlane, dsn: str, log_dir: pathlib.Path) -> "DevStack":
        cls.install(plane, dsn)
        operator = cls.start_operator(plane, dsn, log_dir)
        return cls(plane=plane, dsn=dsn, operator=operator, log_dir=log_dir)

    def stop(self) -> None:
        stop_process(self.operator)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
