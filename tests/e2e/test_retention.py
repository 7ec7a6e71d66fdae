"""History retention through the operator, and the operator's JSON log, on the real stack.

The session's operator keeps history for ever; this test runs one that keeps
a day of it and logs JSON, and gives the session's operator back afterwards
(the ``e2e`` fixture restarts it). "Two days pass" for one finished task by
moving its ``finished_at`` back: everything else is the operator's doing.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from kubetask_dev import devstack

from tests.e2e.test_cli import cli
from tests.stack import FAST_OPERATOR_ENV, Stack, task

RETENTION_ENV = {
    **FAST_OPERATOR_ENV,
    "KUBETASK_HISTORY_RETENTION_DAYS": "1",
    "KUBETASK_HISTORY_RETENTION_INTERVAL_SECONDS": "1",
    "KUBETASK_LOG_FORMAT": "json",
    # Tasks that keep their object once finished: the retention waits for a TTL's deletion, and the
    # default TTL (7 days) would hold these rows that long.
    "KUBETASK_DEFAULT_TTL_SECONDS_AFTER_FINISHED": "0",
}


def _start(e2e: Stack, log_dir: pathlib.Path) -> None:
    e2e.stop_operator()
    e2e.operator = devstack.DevStack.start_operator(e2e.plane, e2e.dsn, log_dir, RETENTION_ENV)


def _log(log_dir: pathlib.Path) -> list[dict[str, Any]]:
    """Every line of the operator's log, each parsed as one JSON object (a line that is not fails the test)."""
    return [json.loads(line) for line in (log_dir / "operator.log").read_text().splitlines()]


def test_history_older_than_the_retention_goes_recent_history_stays_and_the_task_is_left_alone(
        e2e: Stack, namespace: str, tmp_path: pathlib.Path) -> None:
    _start(e2e, tmp_path)
    try:
        e2e.apply(task(namespace, "echo", "old", payload={"n": 1}), task(namespace, "echo", "recent"))
        old = e2e.wait_phase(namespace, "old", "Succeeded")
        e2e.wait_phase(namespace, "recent", "Succeeded")
        uid = old["metadata"]["uid"]
        [row] = e2e.sql("SELECT id FROM kubetask_tasks WHERE uid = %s", uid)
        assert len(e2e.attempts(uid)) == 1
        e2e.sql("UPDATE kubetask_tasks SET finished_at = finished_at - interval '2 days' WHERE uid = %s"
                " RETURNING id", uid)

        devstack.wait_for(lambda: not e2e.sql("SELECT 1 FROM kubetask_tasks WHERE uid = %s", uid), 30,
                          "the retention to delete the old task's row")
        assert e2e.sql("SELECT count(*) AS n FROM kubetask_attempts WHERE task_id = %s", row["id"]) == [{"n": 0}]
        gone = cli(e2e, "history", "old", "-n", namespace)
        assert gone.returncode == 3 and "no history for Task" in gone.stderr, gone
        kept = cli(e2e, "history", "recent", "-n", namespace)
        assert kept.returncode == 0 and "succeeded" in kept.stdout, kept

        # The Task object outlives its row as it was, and the retry annotation says why it cannot run.
        assert e2e.get(namespace, "old")["status"]["phase"] == "Succeeded"
        assert cli(e2e, "retry", "old", "-n", namespace).returncode == 0

        def refused() -> list[dict[str, Any]]:
            return [line for line in _log(tmp_path) if "cannot be retried" in line["message"]]

        [line] = devstack.wait_for(refused, 30, "the operator to log why the retry cannot run")
        assert line["level"] == "warning" and line["logger"] == "kubetask.operator"
        assert line["task"] == {"namespace": namespace, "name": "old", "uid": uid}
        assert e2e.get(namespace, "old")["status"]["phase"] == "Succeeded"

        # A restart relists every Task: the old one is not admitted again.
        _start(e2e, tmp_path)
        e2e.apply(task(namespace, "echo", "after-restart"))
        e2e.wait_phase(namespace, "after-restart", "Succeeded")
        assert e2e.sql("SELECT 1 FROM kubetask_tasks WHERE uid = %s", uid) == []
        assert e2e.get(namespace, "old")["status"]["phase"] == "Succeeded"

        lines = _log(tmp_path)
        assert all(line["ts"].endswith("Z") and {"level", "logger", "message"} <= set(line) for line in lines)
        assert any(line["message"].startswith("history retention: deleted") for line in lines)
        assert any(line["logger"].startswith("kopf") for line in lines), "kopf's lines go through the same formatter"
    finally:
        e2e.stop_operator()
