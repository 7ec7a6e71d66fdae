"""``python -m kubetask_dev``: the commands behind ``make cluster``, ``make cluster-down`` and ``make dev``.

State lives in one directory (``.dev/`` for the Makefile):

    .dev/cluster/     control plane state: pki, etcd data, logs, pids
    .dev/postgres/    PostgreSQL data directory and log
    .dev/kubeconfig   admin kubeconfig
    .dev/env          DATABASE_URL and KUBECONFIG, for ``source .dev/env``
    .dev/bin/         kubectl and helm
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import sys
import threading
import time

from kubetask_dev import binaries, controlplane, devstack, nodestack, postgres


def _log(message: str) -> None:
    print(f"[kubetask dev] {message}", file=sys.stderr, flush=True)


def up(state: pathlib.Path) -> tuple[controlplane.ControlPlane, postgres.PostgresServer]:
    started = time.monotonic()
    state = state.resolve()
    if (state / "cluster" / "pids.json").exists():
        raise SystemExit(f"a cluster is already running from {state}: `make cluster-down` first")
    bins = binaries.ensure()
    state.mkdir(parents=True, exist_ok=True)
    bin_dir = state / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("kubectl", "helm"):
        link = bin_dir / tool
        link.unlink(missing_ok=True)
        link.symlink_to(getattr(bins, tool))
    pg = postgres.PostgresServer.start(state / "postgres")
    (state / "postgres.json").write_text(json.dumps({"port": pg.port}))
    plane = controlplane.ControlPlane.start(state / "cluster")
    shutil.copy(plane.kubeconfig, state / "kubeconfig")
    (state / "env").write_text(
        f"export DATABASE_URL={pg.dsn('postgres')}\n"
        f"export KUBECONFIG={state / 'kubeconfig'}\n"
        f"export PATH={bin_dir}:$PATH\n"
    )
    _log(f"cluster and PostgreSQL up in {time.monotonic() - started:.1f}s")
    _log(f"kubeconfig: {state / 'kubeconfig'}   env: source {state / 'env'}")
    return plane, pg


def down(state: pathlib.Path) -> None:
    state = state.resolve()
    controlplane.stop(state / "cluster")
    postgres.stop(state / "postgres")
    (state / "postgres.json").unlink(missing_ok=True)
    _log("stopped")


def dev(state: pathlib.Path, apply_examples: bool) -> None:
    """Everything, in the foreground, until Ctrl-C."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    state = state.resolve()
    if (state / "cluster" / "pids.json").exists():
        down(state)
    plane, pg = up(state)
    stack = None
    try:
        stack = devstack.DevStack.start(plane, pg.dsn("postgres"), log_dir=state / "logs")
        if apply_examples:
            plane.kubectl("apply", "-f", str(pathlib.Path(__file__).parents[2] / "examples"))
        print("kubetask dev: ready", flush=True)
        _log(f"try: {state / 'bin' / 'kubectl'} --kubeconfig {state / 'kubeconfig'} apply -f examples/task.yaml")
        while not stop.wait(0.5):
            if stack.operator.poll() is not None:
                _log(f"the operator exited with {stack.operator.returncode}; see {state / 'logs' / 'operator.log'}")
                break
    finally:
        if stack is not None:
            stack.stop()
        down(state)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kubetask_dev", description="Local cluster for kubetask development and tests.")
    parser.add_argument("--state-dir", type=pathlib.Path, default=pathlib.Path(".dev"))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("binaries", help="build or find the control-plane binaries, kubectl and helm")
    sub.add_parser("up", help="start the control plane and PostgreSQL in the background")
    sub.add_parser("down", help="stop everything `up` started")
    dev_parser = sub.add_parser("dev", help="control plane, PostgreSQL, CRDs, operator and a worker pool, until Ctrl-C")
    dev_parser.add_argument("--examples", action="store_true", help="apply examples/ once ready")
    sub.add_parser("node", help="control plane, PostgreSQL, a real node (kubelet, containerd) and the chart, in the background")
    sub.add_parser("node-down", help="stop everything `node` started and undo its changes to the host")
    sub.add_parser("node-prepare", help="build the real node's binaries and images, where this machine can run one")
    args = parser.parse_args()
    if args.command == "binaries":
        started = time.monotonic()
        binaries.ensure()
        _log(f"binaries ready in {time.monotonic() - started:.0f}s in {binaries.bin_dir()}")
    elif args.command == "up":
        up(args.state_dir)
    elif args.command == "down":
        down(args.state_dir)
    elif args.command == "node":
        nodestack.up(args.state_dir)
    elif args.command == "node-down":
        nodestack.down(args.state_dir)
    elif args.command == "node-prepare":
        nodestack.prepare()
    elif args.command == "dev":
        dev(args.state_dir, args.examples or os.environ.get("KUBETASK_DEV_EXAMPLES") == "1")


if __name__ == "__main__":
    main()
