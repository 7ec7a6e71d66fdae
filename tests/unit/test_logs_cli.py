"""What `kubetask logs` and `kubetask history` print of container attempts, without a cluster."""

from __future__ import annotations

import datetime

import pytest

from kubetask import db, model
from kubetask.cli import history, logs

T0 = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def attempt(number: int, outcome: str, **fields: object) -> db.reads.AttemptRow:
    defaults: dict[str, object] = {
        "worker_pod": f"pod-{number}", "lease_owner": "leader", "started_at": T0,
        "finished_at": T0 + datetime.timedelta(seconds=2), "error_type": None, "error_message": None,
        "traceback": None, "result": None}
    return db.reads.AttemptRow(number=number, outcome=outcome, **{**defaults, **fields})  # type: ignore[arg-type]


def test_history_of_a_container_task_shows_pod_exit_code_and_reason() -> None:
    table = history.attempt_table(model.CONTAINER_TYPE, [
        attempt(1, "failed", exit_code=137, reason="OOMKilled", error_type="OOMKilled",
                error_message="container task: exit 137"),
        attempt(2, "succeeded", exit_code=0, reason="Completed")])
    header, first, second = table.splitlines()
    assert header.split() == ["#", "POD", "STARTED", "TOOK", "OUTCOME", "EXIT", "REASON", "ERROR"]
    assert first.split()[5:8] == ["failed", "137", "OOMKilled"]
    assert second.split()[5:] == ["succeeded", "0", "Completed"]  # exit 0 is shown, not blank


def test_history_of_a_handler_task_keeps_its_columns() -> None:
    header, row = history.attempt_table("echo", [attempt(1, "succeeded")]).splitlines()
    assert header.split() == ["#", "WORKER", "STARTED", "TOOK", "OUTCOME", "ERROR"]
    assert row.split()[5] == "succeeded"


@pytest.mark.parametrize(("shown", "tail", "rest"), [
    (b"", b"a\nb\n", b"a\nb\n"),                            # nothing streamed: the whole tail
    (b"line 1\n", b"line 1\nline 2\n", b"line 2\n"),        # a short log: what was streamed starts the tail
    (b"line 1\nline 2\n", b"line 1\nline 2\n", b""),        # everything was streamed already
    (b"x" * 10 + b"y" * 300, b"y" * 300 + b"z\n", b"z\n"),  # a long log: they meet over 300 bytes
    (b"abc\n" + b"\n", b"\nlater\n", None),                 # a 1-byte overlap is chance: cannot tell
    (b"early\n", b"much later\n", None),                    # the stream missed more than the tail holds
])
def test_unseen_is_the_tail_after_what_was_streamed(shown: bytes, tail: bytes, rest: bytes | None) -> None:
    assert logs.unseen(shown, len(shown), tail) == rest


def test_unseen_matches_periodic_text() -> None:
    """The overlap is the longest one (KMP), so repeated lines are not cut short."""
    tail = b"tick\n" * 100 + b"done\n"
    shown = b"start\n" + b"tick\n" * 150
    assert logs.unseen(shown, len(shown), tail) == b"done\n"


def test_a_tail_that_fills_the_limit_was_cut() -> None:
    assert logs.was_cut("x" * model.LOG_TAIL_BYTES)
    assert logs.was_cut("é" * (model.LOG_TAIL_BYTES // 2 - 1))  # a 2-byte character cut at the start
    assert not logs.was_cut("short\n")


def test_how_an_attempt_ended() -> None:
    log = db.reads.AttemptLog(2, "p", "failed", 137, "OOMKilled", None)
    assert logs.ending(log) == "ended failed (OOMKilled, exit 137)"
    assert logs.ending(db.reads.AttemptLog(1, "p", "succeeded", 0, "Completed", "")) == \
        "ended succeeded (Completed, exit 0)"
    assert logs.ending(db.reads.AttemptLog(1, "p", "running", None, None, None)) == "is running"


def test_a_handler_task_is_pointed_at_its_worker() -> None:
    message = logs.handler_message("Task ns/t", "email", db.reads.AttemptLog(3, "worker-abc", "failed", None, None,
                                                                           None))
    assert "handler Tasks' output is in the worker's logs" in message
    assert "attempt 3 ran on worker pod worker-abc" in message
    assert "has not run yet" in logs.handler_message("Task ns/t", "email", None)
