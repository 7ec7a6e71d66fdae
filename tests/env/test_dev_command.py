"""`make dev` (python -m kubetask_dev dev): ready line, a working system, nothing left after Ctrl-C."""

from __future__ import annotations

import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time

from kubetask_dev import controlplane, devstack

from tests.conftest import ROOT


def _lines_until(proc: subprocess.Popen[str], wanted: str, timeout: float) -> list[str]:
    """Read stdout lines (in a thread, so the wait stays bounded) until ``wanted`` appears."""
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    stream = proc.stdout
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in stream] and None or lines.put(None),
                     daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            raise AssertionError(f"dev exited with {proc.wait()}: {seen}")
        seen.append(line)
        if line == wanted:
            return seen
    raise TimeoutError(f"no {wanted!r} line within {timeout}s: {seen}")


def test_dev_runs_the_examples_and_ctrl_c_stops_everything(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "dev"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetask_dev", "--state-dir", str(state), "dev", "--examples"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        _lines_until(proc, "kubetask dev: ready", timeout=120)
        plane = controlplane.ControlPlane.load(state / "cluster")
        pids = json.loads((state / "cluster" / "pids.json").read_text())

        def hello_phase() -> str | None:
            out = plane.kubectl("get", "task", "hello", "-o", "jsonpath={.status.phase}", check=False).stdout
            return out if out == "Succeeded" else None

        devstack.wait_for(hello_phase, 60, "examples/task.yaml to succeed")
        worker_pids = [json.loads(p.read_text())["pid"] for p in (state / "cluster" / "pods").glob("*.json")]
        assert worker_pids, "the worker pool ran no process"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == 0
    for pid in [*pids.values(), *worker_pids]:
        assert not controlplane._pid_alive(pid), f"pid {pid} survived Ctrl-C"
    assert not (state / "postgres" / "postmaster.pid").exists(), "PostgreSQL still running"
