"""Fixtures every test tier shares: a real control plane and a real PostgreSQL.

Both start once per session, on free ports under the session's temp dir, and
stop at the end with every process they started. The control-plane binaries
are built on first use (``make binaries``) and cached in ``~/.cache/kubetask``.
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
from collections.abc import Iterator

import pytest
from kubetask_dev import controlplane, postgres


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.ControlPlane]:
    plane = controlplane.ControlPlane.start(tmp_path_factory.mktemp("cluster"))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[postgres.PostgresServer]:
    server = postgres.PostgresServer.start(tmp_path_factory.mktemp("postgres") / "data")
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def temporary_namespace(plane: controlplane.ControlPlane, name: str) -> Iterator[str]:
    """Create ``name`` (ready for pods), and delete it afterwards without waiting for it to terminate."""
    plane.kubectl("create", "namespace", name)
    plane.wait_default_serviceaccount(name)
    try:
        yield name
    finally:
        plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(control_plane: controlplane.ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, named after it."""
    readable = "".join(c if c.isalnum() else "-" for c in request.node.name.lower().removeprefix("test_"))
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:6]
    with temporary_namespace(control_plane, f"t-{readable[:40].strip('-')}-{digest}") as name:
        yield name


ROOT = pathlib.Path(__file__).resolve().parents[1]


# The end-to-end stack (operator, pools, database) is session-wide and shared by
# tests/e2e and tests/faults: defined once, here, so there is one instance.
from tests.stack import e2e, stack  # noqa: E402,F401
