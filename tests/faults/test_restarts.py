"""Infrastructure restarts mid-run: PostgreSQL, the kube-apiserver. Nothing lost, nothing stuck."""

from __future__ import annotations

import time

from kubetask_dev import postgres

from tests.stack import Stack, task


def test_postgres_restart_mid_run_loses_nothing(e2e: Stack, namespace: str, pg_server: postgres.PostgresServer) -> None:
    e2e.apply(*[task(namespace, "sleep", f"a{i:02d}", payload={"seconds": 0.3}) for i in range(20)])
    time.sleep(0.5)  # let some of the work start before the database goes away (a fault, not a wait)
    pg_server.restart()
    e2e.apply(*[task(namespace, "echo", f"b{i:02d}") for i in range(20)])
    items = e2e.wait_all(namespace, ("Succeeded",), 40, timeout=180)
    rows = e2e.sql("SELECT count(*) AS n FROM kubetask_attempts a JOIN kubetask_tasks t ON t.id = a.task_id"
                   " WHERE t.namespace = %s AND a.outcome = 'succeeded'", namespace)
    assert rows[0]["n"] == 40, "one successful attempt per task"
    assert len(items) == 40


def test_apiserver_restart_mid_run_the_operator_catches_up(e2e: Stack, namespace: str) -> None:
    e2e.apply(*[task(namespace, "sleep", f"a{i:02d}", payload={"seconds": 0.5}) for i in range(10)])
    e2e.plane.restart_component("kube-apiserver", down_seconds=2)
    e2e.apply(*[task(namespace, "echo", f"b{i:02d}") for i in range(10)])
    e2e.wait_all(namespace, ("Succeeded",), 20, timeout=180)
