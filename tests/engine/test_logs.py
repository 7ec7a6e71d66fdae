"""A real worker process logging JSON: every line parses, and every line of an attempt names the task."""

import json
import os
import pathlib
from typing import Any

from kubetask import db

HERE = pathlib.Path(__file__).resolve().parent


async def test_a_json_worker_puts_the_task_on_every_line_of_an_attempt_the_handlers_own_too(
        dsn: str, conn: db.connection.Conn, new_task, start_worker_process, sigterm_when) -> None:
    tasks = {
        "log-async": new_task(type="log-async", payload={"card": "4242"}),
        "log-sync": new_task(type="log-sync", payload={"card": "5555"}),
        "log-fail": new_task(type="log-fail", payload={}),
    }
    await db.queue.admit(conn, list(tasks.values()))
    # DEBUG: the worker's own per-task lines (started, succeeded) are DEBUG, and they must carry the task too.
    env = {"DATABASE_URL": dsn, "POD_NAME": "worker-logs-1", "KUBETASK_LOG_FORMAT": "json",
           "KUBETASK_LOG_LEVEL": "debug", "KUBETASK_HANDLERS": "log_handlers", "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "KUBETASK_POLL_INTERVAL_SECONDS": "0.2"}
    process = await start_worker_process(env)

    async def finished() -> bool:
        rows = [await db.reads.get_task(conn, t.uid) for t in tasks.values()]
        return all(r is not None and r.state in ("succeeded", "dead_letter") for r in rows)

    code, output = await sigterm_when(process, finished, "the worker process to finish the three tasks")
    assert code == 0, output.decode()

    lines = [json.loads(line) for line in output.decode().splitlines()]  # every line is one JSON object
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(line["ts"].endswith("Z") for line in lines)

    def about(type_: str) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("task", {}).get("type") == type_]

    for type_, task in tasks.items():
        mine = about(type_)
        assert {line["logger"] for line in mine} >= {"myapp.billing", "kubetask.worker"}, mine
        for line in mine:
            assert line["task"] == {"namespace": task.namespace, "name": task.name, "uid": task.uid,
                                    "attempt": 1, "queue": "default", "type": type_}, line
    [charge] = [line for line in about("log-async") if line["logger"] == "myapp.billing"]
    assert (charge["level"], charge["message"]) == ("info", "charging card 4242")
    [refund] = [line for line in about("log-sync") if line["logger"] == "myapp.billing"]
    assert refund["message"] == "refunding card 5555", "a sync handler's thread carries the task too"
    [failure] = [line for line in about("log-fail") if line["logger"] == "myapp.billing"]
    assert (failure["level"], failure["message"]) == ("error", "gateway call failed")
    assert failure["exception"].rstrip().endswith("ConnectionError: the payment gateway hung up")
    untagged = [line for line in lines if "task" not in line]
    assert untagged and not [line for line in untagged if line["logger"] == "myapp.billing"]
