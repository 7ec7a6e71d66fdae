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
    finally:
        real_node.plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
