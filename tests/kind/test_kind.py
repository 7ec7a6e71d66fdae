"""The kind path, end to end, on machines with Docker and kind.

Skipped where there is no Docker engine (the build machines): kind runs
Kubernetes nodes as containers and cannot start without one.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT


def _docker_engine() -> str | None:
    if shutil.which("docker") is None:
        return "no Docker engine: the docker command is missing"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine: `docker info` cannot reach a daemon"
    if shutil.which("kind") is None:
        return "kind is not installed (go install sigs.k8s.io/kind@latest)"
    return None


pytestmark = [pytest.mark.kind, pytest.mark.skipif(_docker_engine() is not None, reason=_docker_engine() or "")]


def test_make_kind_runs_the_example_task_to_success() -> None:
    """`make kind` creates the cluster, loads the image, installs the chart and waits for the example Task."""
    result = subprocess.run(["make", "kind"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Succeeded" in result.stdout
