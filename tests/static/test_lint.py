"""Strict typing and the import layers hold (what `make lint` runs)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from tests.conftest import ROOT

BIN = pathlib.Path(sys.executable).parent


def test_mypy_strict_passes() -> None:
    result = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]


def test_import_layers_are_kept() -> None:
    """The model imports neither PostgreSQL nor Kubernetes; workers never import Kubernetes."""
    result = subprocess.run([str(BIN / "lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
