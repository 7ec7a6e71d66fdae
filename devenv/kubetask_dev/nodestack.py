"""``make node``: kubetask from its Helm chart on a real node, in real containers.

The same pieces as ``make dev`` (PostgreSQL on 127.0.0.1, the control plane),
plus the real node of ``node.py`` and the images of ``images.py``; the chart is
then installed as a user would install it, with the image built from the
Dockerfile, the database URL in a Secret (the host's PostgreSQL, which pods
reach at the host's address on the pod bridge), the operator and one worker
pool in containers under the kubelet.

State lives in one directory (``.node/`` for the Makefile):

    .node/cluster/    control plane (pki, etcd, logs, pids)
    .node/postgres/   the host's PostgreSQL
    .node/node/       containerd, kubelet, kube-proxy: config, data, logs
    .node/kubeconfig  admin kubeconfig;  .node/env: KUBECONFIG and PATH
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from kubetask_dev import binaries, controlplane, images, node, postgres

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetask"
NAMESPACE = "kubetask-system"
RELEASE = "kubetask"
DB_SECRET = "kubetask-db"
DATABASE = "kubetask"

# The worker pool's handler modules (chart value pools[].handlers, KUBETASK_HANDLERS): the demos, which
# examples/task.yaml and the node tests run, reach a worker only when named.
HANDLER_MODULES: list[str] = ["kubetask.demo"]


def _log(message: str) -> None:
    print(f"[kubetask node] {message}", file=sys.stderr, flush=True)


def chart_values(node_images: images.NodeImages, *, bundled_postgres: bool = False,
                 pool: dict[str, Any] | None = None) -> dict[str, Any]:
    """Values for the chart on the real node: local images, never pulled; the pool's handlers."""
    repository, tag = images.split(node_images.kubetask)
    values: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "pools": [{"name": "default", "minReplicas": 1, "maxReplicas": 3, "scaleDownDelaySeconds": 5,
                   "terminationGracePeriodSeconds": 20, "handlers": HANDLER_MODULES, **(pool or {})}],
    }
    if bundled_postgres:
        pg_repository, pg_tag = images.split(node_images.postgres)
        values["postgresql"] = {
            "enabled": True,
            "image": {"repository": pg_repository, "tag": pg_tag, "pullPolicy": "Never"},
            # The node has no volume provisioner: the data lives in an emptyDir.
            "persistence": {"enabled": False},
        }
    else:
        values["database"] = {"existingSecret": DB_SECRET, "workerSecret": DB_SECRET, "workerKey": "worker-url"}
    return values


def helm(plane: controlplane.ControlPlane, *args: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(binaries.bin_dir() / "helm"), "--kubeconfig", str(plane.kubeconfig), *args],
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def install(plane: controlplane.ControlPlane, values: dict[str, Any], *, namespace: str = NAMESPACE,
            release: str = RELEASE, timeout: str = "5m") -> None:
    """``helm install --wait`` of the repository's chart with ``values``."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(values, file)
    try:
        helm(plane, "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
             "--values", file.name, "--wait", "--timeout", timeout)
    finally:
        pathlib.Path(file.name).unlink()


def database_secret(plane: controlplane.ControlPlane, pg: postgres.PostgresServer, database: str,
                    namespace: str = NAMESPACE) -> None:
    """The Secret of ``database``: ``url`` the operator's, ``worker-url`` the workers' own role's."""
    plane.kubectl("create", "namespace", namespace, check=False)
    postgres.worker_dsn(pg.dsn(database))  # the roles, made over loopback
    dsn = host_dsn(pg, database)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": DB_SECRET, "namespace": namespace},
              "stringData": {"url": dsn, "worker-url": postgres.as_role(dsn, postgres.WORKER_LOGIN)}}
    plane.kubectl("apply", "-f", "-", input=json.dumps(secret))


def host_dsn(pg: postgres.PostgresServer, database: str) -> str:
    """The host's PostgreSQL as pods see it: through the forwarder on the bridge."""
    return f"postgresql://{postgres.SUPERUSER}@{node.BRIDGE_IP}:{pg.port}/{database}"


def build() -> tuple[binaries.NodeBinaries, images.NodeImages]:
    """The node's binaries and images. Cold, the Go builds are CPU-bound and the Debian images mostly
    download and unpack packages, so the two run side by side."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        node_bins = pool.submit(binaries.ensure_node)
        rootfs = pool.submit(lambda: (images.kubetask_image(), images.postgres_image()))
        rootfs.result()
        built = node_bins.result()
    return built, images.ensure(built.coredns)


def prepare() -> None:
    """Build what the real node needs (tests/node and ``make node``), or say why this machine cannot run one."""
    reason = node.unavailable()
    if reason:
        _log(f"no real node on this machine ({reason}): nothing to build, tests/node will be skipped")
        return
    started = time.monotonic()
    build()
    _log(f"node binaries and images ready in {time.monotonic() - started:.0f}s")


def up(state: pathlib.Path) -> None:
    started = time.monotonic()
    state = state.resolve()
    if (state / "cluster" / "pids.json").exists() or (state / "node" / "pids.json").exists():
        raise SystemExit(f"a node is already running from {state}: `make node-down` first")
    reason = node.unavailable()
    if reason:
        raise SystemExit(f"kubetask node: cannot run here: {reason}")
    bins = binaries.ensure()
    _, node_images = build()
    built = time.monotonic()
    # Every run starts from nothing: a previous run's etcd would still hold its release and pods.
    for part in ("cluster", "postgres", "node"):
        shutil.rmtree(state / part, ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    bin_dir = state / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("kubectl", "helm"):
        link = bin_dir / tool
        link.unlink(missing_ok=True)
        link.symlink_to(getattr(bins, tool))
    try:
        node.network_up(state / "node")
        pg = postgres.PostgresServer.start(state / "postgres")
        (state / "postgres.json").write_text(json.dumps({"port": pg.port}))
        pg.create_database(DATABASE)
        plane = controlplane.ControlPlane.start(state / "cluster", nodes=0, harness=False,
                                                advertise_address=node.BRIDGE_IP)
        shutil.copy(plane.kubeconfig, state / "kubeconfig")
        node.Node.start(state / "node", plane, node_images, extra_forwards={"postgres": pg.port})
        database_secret(plane, pg, DATABASE)
        values = chart_values(node_images)
        # Per-attempt lines (started, succeeded, with the Task's uid) are debug lines: show them in kubectl logs.
        values["logs"] = {"level": "debug"}
        install(plane, values)
    except BaseException:
        down(state)
        raise
    (state / "env").write_text(f"export KUBECONFIG={state / 'kubeconfig'}\nexport PATH={bin_dir}:$PATH\n")
    _log(f"builds checked in {built - started:.1f}s, cluster + node + chart up in {time.monotonic() - built:.1f}s")
    _log(f"try: source {state / 'env'} && kubectl apply -f examples/task.yaml && kubectl get tasks -w")
    print("kubetask node: ready", flush=True)


def down(state: pathlib.Path) -> None:
    state = state.resolve()
    plane = None
    if (state / "cluster" / "cluster.json").exists() and (state / "cluster" / "pids.json").exists():
        plane = controlplane.ControlPlane.load(state / "cluster")
    node.stop(state / "node", plane)
    controlplane.stop(state / "cluster")
    postgres.stop(state / "postgres")
    (state / "postgres.json").unlink(missing_ok=True)
    left = node.leftovers(state / "node")
    if left:
        _log("left behind: " + "; ".join(left))
    else:
        _log("stopped; no process, mount, network device or iptables chain of the node is left")
