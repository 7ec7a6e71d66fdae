"""The chart's bundled PostgreSQL (postgresql.enabled) on the real node, with the image built here."""

from __future__ import annotations

import pytest
from kubetask_dev import nodestack

from tests.node.conftest import NodeRelease, RealNode, install, values


@pytest.mark.timeout(420)
def test_bundled_postgresql_installs_and_a_task_succeeds(real_node: RealNode, release: NodeRelease) -> None:
    """``release`` is there for the CRDs it installs; this release has a database of its own."""
    namespace = "kt-bundled"
    chart = values(real_node, namespace)
    # The CRDs belong to the session's release; this one brings its own database instead of a Secret.
    chart.pop("database")
    chart["postgresql"] = nodestack.chart_values(real_node.node.images, bundled_postgres=True)["postgresql"]
    chart["crds"] = {"install": False}
    bundled = install(real_node, namespace, "kb", chart)
    try:
        database = bundled.ready_pod("database")
        (status,) = database["status"]["containerStatuses"]
        assert status["image"].endswith(real_node.node.images.postgres.split("/", 1)[1])
        bundled.task("on-bundled", "echo", payload={"db": "bundled"})
        task = bundled.wait_phase("on-bundled", ("Succeeded",), timeout=180)
        assert task["status"]["result"] == {"db": "bundled"}

        def psql(query: str) -> list[str]:
            # The image's superuser, on the pod's own socket: the one place it can still log in.
            result = bundled.kubectl("exec", database["metadata"]["name"], "--", "psql", "--no-psqlrc", "-U",
                                     "postgres", "-d", "kubetask", "-tAc", query)
            return sorted(result.stdout.split())

        # Each process logged in as its own role; none of them is a superuser, and the superuser has no password.
        sessions = psql("SELECT DISTINCT usename || '=' || split_part(application_name, ' ', 1) FROM pg_stat_activity "
                        "WHERE application_name LIKE 'kubetask%'")
        assert "kubetask_worker=kubetask-worker" in sessions and "kubetask=kubetask-operator" in sessions, sessions
        assert {s.split("=")[0] for s in sessions} <= {"kubetask", "kubetask_worker"}, sessions
        assert psql("SELECT rolname FROM pg_roles WHERE rolsuper") == ["postgres"]
        assert psql("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = 'postgres'") == ["t"]
        assert psql("SELECT has_table_privilege('kubetask_worker', 'kubetask_attempts', 'DELETE')") == ["f"]
    finally:
        real_node.plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
