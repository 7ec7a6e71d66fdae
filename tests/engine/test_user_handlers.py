"""Every handler name is the user's: the demo handlers reach a worker only through KUBETASK_HANDLERS.

A real worker process against the real PostgreSQL, as a pool runs it: the
user's module is found on PYTHONPATH and named in KUBETASK_HANDLERS, exactly
as the chart's ``pools[].handlers`` sets it.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import textwrap
import uuid

import pytest

from kubetask import db

DEMO_NAMES = ("echo", "sleep", "fail", "email", "image", "report")
FINAL = ("succeeded", "dead_letter", "cancelled")


def _worker_env(dsn: str, modules: str | None = None, path: pathlib.Path | None = None) -> dict[str, str]:
    env = {"DATABASE_URL": dsn, "POD_NAME": "worker-user-1", "KUBETASK_POLL_INTERVAL_SECONDS": "0.2"}
    if modules is not None:
        env["KUBETASK_HANDLERS"] = modules
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(path), os.environ.get("PYTHONPATH", "")) if p)
    return env


async def _run_until_final(conn: db.connection.Conn, start_worker_process, sigterm_when, env: dict[str, str],
                           tasks: dict[str, db.queue.NewTask]) -> tuple[dict[str, db.reads.TaskRow], str]:
    """Admit ``tasks``, run one worker process until all are final, stop it; the rows and its output."""
    await db.queue.admit(conn, list(tasks.values()))
    process = await start_worker_process(env)
    rows: dict[str, db.reads.TaskRow] = {}

    async def finished() -> bool:
        if process.returncode is not None:  # it stopped by itself: at start-up, say, a handler module failed
            assert process.stdout is not None
            output = (await process.stdout.read()).decode()
            raise AssertionError(f"the worker process exited with {process.returncode}:\n{output}")
        for key, task in tasks.items():
            row = await db.reads.get_task(conn, task.uid)
            if row is None or row.state not in FINAL:
                return False
            rows[key] = row
        return True

    code, output = await sigterm_when(process, finished, f"the worker process to finish {len(tasks)} tasks")
    assert code == 0, output.decode()
    return rows, output.decode()


async def test_a_user_module_may_register_every_demo_name_and_its_functions_run(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, sigterm_when, tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETASK_HANDLERS", raising=False)
    module = f"user_tasks_{uuid.uuid4().hex[:8]}"
    registrations = "".join(textwrap.dedent(f"""
        @handlers.register({name!r})
        def user_{name}(payload, ctx):
            return {{"by": "the user's {name}", "type": ctx.type}}
    """) for name in DEMO_NAMES)
    (tmp_path / f"{module}.py").write_text("from kubetask import handlers\n" + registrations)
    # Payloads the demos would refuse (email without `to`, image without `url`, fail without `times`):
    # only the user's functions can succeed on them.
    tasks = {name: new_task(type=name, payload={"seconds": 30}) for name in DEMO_NAMES}

    rows, output = await _run_until_final(conn, start_worker_process, sigterm_when,
                                          _worker_env(dsn, module, tmp_path), tasks)

    assert "registered twice" not in output
    for name in DEMO_NAMES:
        assert (rows[name].state, rows[name].attempts) == ("succeeded", 1), (name, rows[name].last_error, output)
        assert rows[name].result == {"by": f"the user's {name}", "type": name}


async def test_the_demos_load_with_kubetask_demo(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, sigterm_when,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETASK_HANDLERS", raising=False)
    tasks = {
        "echo": new_task(type="echo", payload={"hello": "demo"}),
        "email": new_task(type="email", payload={"to": "a@example.com", "subject": "Hi", "delay_seconds": 0}),
    }

    rows, output = await _run_until_final(conn, start_worker_process, sigterm_when,
                                          _worker_env(dsn, "kubetask.demo"), tasks)

    assert (rows["echo"].state, rows["echo"].result) == ("succeeded", {"hello": "demo"}), output
    assert rows["email"].state == "succeeded" and rows["email"].result["message_id"].endswith("@kubetask.local>")


async def test_without_kubetask_demo_an_echo_task_dead_letters_as_an_unknown_handler(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, sigterm_when,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETASK_HANDLERS", raising=False)
    tasks = {"echo": new_task(type="echo", payload={"hello": "nobody"}, max_retries=3)}

    rows, output = await _run_until_final(conn, start_worker_process, sigterm_when, _worker_env(dsn), tasks)

    echo = rows["echo"]
    assert echo.state == "dead_letter", f"the worker ran a demo it was not given: {echo.state}, {echo.result}"
    assert echo.attempts == 1, "an unknown handler is permanent: no retries"
    assert echo.last_error is not None and echo.last_error["type"] == "UnknownHandler", output
    assert "no handler named 'echo' on this worker; known handlers: (none)" in echo.last_error["message"]


async def test_a_user_module_and_the_demos_claiming_one_name_stop_the_worker_saying_which(
        dsn: str, start_worker_process, tmp_path: pathlib.Path) -> None:
    module = f"user_echo_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from kubetask import handlers\n\n@handlers.register('echo')\ndef mine(payload, ctx):\n    return 1\n")
    process = await start_worker_process(_worker_env(dsn, f"kubetask.demo,{module}", tmp_path))
    assert process.stdout is not None
    output = (await asyncio.wait_for(process.stdout.read(), 60)).decode()
    assert await asyncio.wait_for(process.wait(), 60) == 2, output
    assert f"lists module {module!r}, which registers a name already taken" in output
    assert "'echo' is registered twice" in output and "Traceback" not in output
