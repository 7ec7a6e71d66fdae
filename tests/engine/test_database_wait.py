"""Start-up before the database: wait for it, bounded, then exit with the reason.

A pod started before its PostgreSQL (a fresh ``helm install``) must wait, not
crash at once; a pod that can never reach it (a wrong host, port or password)
must exit non-zero after the wait, so Kubernetes shows CrashLoopBackOff, with a
log line that names the host and what to check, and never the password.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys

import pytest
from kubetask_dev.postgres import PostgresServer, free_port

from kubetask import db

KUBETASK = str(pathlib.Path(sys.executable).parent / "kubetask")
PROCESSES = {
    "worker": [KUBETASK, "worker"],
    "operator": [KUBETASK, "operator"],
}


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_a_process_that_cannot_reach_postgres_exits_1_saying_what_to_check(process: str) -> None:
    port = free_port()  # nothing listens there
    env = {**os.environ, "DATABASE_URL": f"postgresql://queue:s3cret-pw@127.0.0.1:{port}/tasks",
           "KUBETASK_DATABASE_WAIT_SECONDS": "1.5", "KUBETASK_LOG_LEVEL": "INFO"}
    done = subprocess.run(PROCESSES[process], env=env, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"cannot reach PostgreSQL at queue@127.0.0.1:{port}/tasks after 1.5 s" in output
    assert "Check DATABASE_URL" in output and "KUBETASK_DATABASE_WAIT_SECONDS" in output
    assert "waiting for PostgreSQL" in output  # it did retry before giving up
    assert "s3cret-pw" not in output and "Traceback" not in output


async def test_a_database_that_comes_up_during_the_wait_is_used(tmp_path: pathlib.Path) -> None:
    port = free_port()
    dsn = PostgresServer(data_dir=tmp_path / "data", port=port).dsn()
    retried = asyncio.Event()
    waiting = asyncio.create_task(db.connection.wait_until_reachable(dsn, 120, lambda error, delay: retried.set()))
    server = None
    try:
        await asyncio.wait_for(retried.wait(), 30)
        assert not waiting.done()
        server = await asyncio.to_thread(PostgresServer.start, tmp_path / "data", port)
        await asyncio.wait_for(waiting, 30)  # returns (no DatabaseUnreachable) once the server is up
    finally:
        waiting.cancel()
        if server is not None:
            await asyncio.to_thread(server.stop)
