"""``kubetask queue list|pause|resume|describe`` against the real API server, and what the operator makes of it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import put_queue
from kubetask_dev import controlplane

from kubetask import db
from kubetask.operator import queues
from kubetask.operator.runtime import Runtime


CLI = "import sys\nfrom kubetask import cli\nsys.exit(cli.main(sys.argv[1:]))"
"""``kubetask`` with the test's interpreter and PYTHONPATH (this checkout's code, not an installed one)."""


@pytest.fixture
def kubeconfig(crd_plane: controlplane.ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(crd_plane.kubeconfig))


async def cli(*args: str, command: str = "queue", env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it (a process of its own, this checkout's code, the plane's kubeconfig)."""
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-c", CLI, command, *args],
                                   env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


async def test_pause_and_resume_patch_the_queue_and_the_claim_obeys(
        runtime: Runtime, conn: db.connection.Conn, queue_name: str, namespace: str, new_task: Any,
        kubeconfig: None) -> None:
    admit_untagged = {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}
    await put_queue(runtime, queue_name, maxRunning=3, namespaceSelector=admit_untagged)
    await queues.run_once(runtime, conn)
    await queues.status_once(runtime, conn)

    listed = await cli("list", "-o", "wide")
    assert listed.returncode == 0, listed.stderr
    [header, *lines] = listed.stdout.splitlines()
    assert header.split()[:5] == ["NAME", "PAUSED", "MAX-RUNNING", "PENDING", "RUNNING"]
    [line] = [line for line in lines if line.split()[0] == queue_name]
    assert line.split()[1:5] == ["false", "3", "0", "0"] and "!team" in line

    paused = await cli("pause", queue_name)
    assert paused.returncode == 0, paused.stderr
    assert f"queue.kubetask.io/{queue_name} paused" in paused.stdout
    await queues.run_once(runtime, conn)
    row = await db.queues.get(conn, queue_name)
    assert row is not None and row.paused and row.max_running == 3, "only spec.paused changed"
    await db.queue.admit(conn, [new_task(queue=queue_name, namespace=namespace)])
    assert await db.queue.claim(conn, queue_name, "pod/1", "pod", 5, 30) == [], "paused"

    await queues.status_once(runtime, conn)
    described = await cli("describe", queue_name)
    assert described.returncode == 0, described.stderr
    for words in (f"Name:                 {queue_name}", "Namespaces admitted:  !team", "Paused:               true",
                  "Max running:          3", "Paused condition:   True (Paused)"):
        assert words in described.stdout, described.stdout
    as_json = json.loads((await cli("describe", queue_name, "-o", "json")).stdout)
    assert as_json["spec"]["paused"] is True

    resumed = await cli("resume", queue_name)
    assert resumed.returncode == 0 and f"queue.kubetask.io/{queue_name} resumed" in resumed.stdout
    await queues.run_once(runtime, conn)
    row = await db.queues.get(conn, queue_name)
    assert row is not None and not row.paused
    [claimed] = await db.queue.claim(conn, queue_name, "pod/1", "pod", 5, 30)
    assert claimed.namespace == namespace


async def test_a_missing_queue_or_name_is_said_with_its_exit_code(runtime: Runtime, queue_name: str,
                                                                  kubeconfig: None) -> None:
    missing = await cli("pause", queue_name)
    assert missing.returncode == 3, missing
    assert f"Queue {queue_name} not found" in missing.stderr and "pools[].queueSpec" in missing.stderr
    unnamed = await cli("describe")
    assert unnamed.returncode == 2 and "give a Queue NAME" in unnamed.stderr


async def test_stats_shows_each_queues_pause_and_limits_idle_queues_too(dsn: str, conn: db.connection.Conn,
                                                                        new_task: Any) -> None:
    await db.queues.upsert(conn, db.queues.QueueRow("held", paused=True, max_running=3, rate_tasks=20,
                                                    rate_period_seconds=1))
    await db.queues.upsert(conn, db.queues.QueueRow("idle"))
    await db.queue.admit(conn, [new_task(queue="held"), new_task(queue="open")])
    result = await cli("-o", "json", command="stats", env={"DATABASE_URL": dsn})
    assert result.returncode == 0, result.stderr
    by_queue = {s["queue"]: s for s in json.loads(result.stdout)}
    assert by_queue["held"]["queue_object"] == {"paused": True, "max_running": 3, "concurrency_key_limit": None,
                                                "rate_limit": {"tasks": 20, "period_seconds": 1}}
    assert by_queue["held"]["due"] == 1
    assert by_queue["idle"]["queue_object"]["paused"] is False and by_queue["idle"]["due"] == 0, "shown though idle"
    assert by_queue["open"]["queue_object"] is None, "no Queue object: open and unlimited"
    table = (await cli(command="stats", env={"DATABASE_URL": dsn})).stdout.splitlines()
    assert table[0].split()[-2:] == ["PAUSED", "LIMITS"]
    [held] = [line for line in table if line.startswith("held")]
    assert held.split()[-4:] == ["yes", "max", "3,", "20/1s"], held
