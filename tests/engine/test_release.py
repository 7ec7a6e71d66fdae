"""One database, one release (issue 20): a second release pointed at a database another one uses is refused.

Two releases sharing a database would admit into, cancel from, rescue and TTL-delete one queue: the
orphan sweep of each cancels the rows of Tasks it cannot see, the other's. So the first operator to
start records who it is, and an operator with another identity refuses to start, naming both.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from kubetask import db

OPERATOR_PROCESS = [sys.executable, "-c", "import sys\nfrom kubetask.operator import app\nsys.exit(app.main())"]


async def test_the_first_release_claims_the_database_and_its_replicas_and_restarts_share_it(
        conn: db.connection.Conn) -> None:
    first = await db.release.claim(conn, "kubetask.io/team-a", "team-a")
    assert (first.managed_by, first.namespace) == ("kubetask.io/team-a", "team-a")
    again = await db.release.claim(conn, "kubetask.io/team-a", "team-a")  # another replica, or a restart
    assert again == first


@pytest.mark.parametrize(("managed_by", "namespace"), [
    ("kubetask.io/team-b", "team-a"),  # another name
    ("kubetask.io/team-a", "team-b"),  # the same (default) name installed twice, in another namespace
])
async def test_a_second_release_is_refused_naming_both_and_the_fix(
        conn: db.connection.Conn, managed_by: str, namespace: str) -> None:
    await db.release.claim(conn, "kubetask.io/team-a", "team-a")
    with pytest.raises(db.release.DatabaseInUse) as refused:
        await db.release.claim(conn, managed_by, namespace)
    message = str(refused.value)
    assert "kubetask.io/team-a in namespace team-a" in message
    assert f"{managed_by} in namespace {namespace}" in message
    assert "a database of its own" in message and "DELETE FROM kubetask_release" in message
    assert (await db.release.claim(conn, "kubetask.io/team-a", "team-a")).namespace == "team-a", "the first keeps it"


async def test_two_releases_starting_at_once_get_one_owner(dsn: str) -> None:
    async def start(name: str) -> str:
        async with await db.connection.connect(dsn) as conn:
            try:
                return (await db.release.claim(conn, name, "ns")).managed_by
            except db.release.DatabaseInUse:
                return "refused"

    outcomes = await asyncio.gather(*(start(f"kubetask.io/r{i}") for i in range(8)))
    assert sorted(outcomes).count("refused") == 7


async def test_the_operator_of_a_second_release_exits_1_before_serving_anything(
        conn: db.connection.Conn, dsn: str) -> None:
    await db.release.claim(conn, "kubetask.io/team-a", "team-a")
    env = {**os.environ, "DATABASE_URL": dsn, "KUBETASK_MANAGED_BY": "kubetask.io/team-b", "POD_NAMESPACE": "team-b",
           "KUBETASK_DATABASE_WAIT_SECONDS": "5", "KUBECONFIG": "/nonexistent"}
    process = await asyncio.create_subprocess_exec(*OPERATOR_PROCESS, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 1, output.decode()
    text = output.decode()
    assert "kubetask.io/team-a in namespace team-a" in text and "kubetask.io/team-b in namespace team-b" in text
