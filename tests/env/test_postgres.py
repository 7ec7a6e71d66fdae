"""The local PostgreSQL is a real server: LISTEN/NOTIFY crosses connections, after commit only."""

from __future__ import annotations

import psycopg
from kubetask_dev import postgres


def test_listen_notify_between_two_connections(pg_server: postgres.PostgresServer) -> None:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as listener, \
            psycopg.connect(pg_server.dsn(), autocommit=True) as sender:
        listener.execute("LISTEN proof")
        with sender.transaction():
            sender.execute("SELECT pg_notify('proof', 'hello')")
            # Not delivered before the sender's transaction commits.
            assert list(listener.notifies(timeout=0.2)) == []
        notes = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("proof", "hello")]


def test_server_version_is_the_embedded_one(pg_server: postgres.PostgresServer) -> None:
    with psycopg.connect(pg_server.dsn()) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None and int(row[0]) >= 180000


def test_restart_keeps_data_and_port(tmp_path: object) -> None:
    import pathlib

    data = pathlib.Path(str(tmp_path)) / "data"
    server = postgres.PostgresServer.start(data)
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
        server.restart()
        with psycopg.connect(server.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        server.stop()
