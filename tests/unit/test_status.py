"""The status the mirror writes, built from a PostgreSQL row."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from kubetask import model, status

T0 = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


@dataclasses.dataclass
class Attempt:
    number: int
    outcome: str
    worker_pod: str | None = "pod-a"
    started_at: datetime.datetime | None = T0
    finished_at: datetime.datetime | None = T0
    error_type: str | None = None
    error_message: str | None = None
    exit_code: int | None = None
    reason: str | None = None


@dataclasses.dataclass
class Row:
    state: str
    attempts: int = 0
    run_at: datetime.datetime | None = T0
    worker_pod: str | None = None
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    created_at: datetime.datetime = T0
    result: Any = None
    last_error: dict[str, Any] | None = None
    history: list[Attempt] = dataclasses.field(default_factory=list)
    type: str = "echo"


def test_succeeded_after_retries_shows_result_and_every_attempt() -> None:
    row = Row("succeeded", attempts=3, worker_pod="pod-b", started_at=T0, finished_at=T0, result={"ok": 1},
              last_error={"type": "ValueError", "message": "boom", "attempt": 2},
              history=[Attempt(1, "failed", error_type="ValueError", error_message="boom"),
                       Attempt(2, "failed", error_type="ValueError", error_message="boom"),
                       Attempt(3, "succeeded", worker_pod="pod-b")])
    built = status.build(row)
    assert built["phase"] == "Succeeded"
    assert built["result"] == {"ok": 1}
    assert [h["outcome"] for h in built["history"]] == ["failed", "failed", "succeeded"]
    assert built["history"][0]["error"] == "ValueError: boom"
    assert built["nextAttemptAt"] is None  # a finished task has no next attempt: the merge patch clears it
    assert {c["type"]: c["status"] for c in built["conditions"]} == {"Admitted": "True", "Finished": "True"}
    model.TaskStatus.model_validate(built)  # what we write is what the CRD schema describes


def test_container_attempts_show_exit_code_and_reason_handler_attempts_do_not() -> None:
    last_error = {"type": "OOMKilled", "message": "container task: exit 137", "attempt": 2}
    row = Row("retrying", attempts=2, last_error=last_error,
              history=[Attempt(1, "failed", error_type="Error", error_message="exit 3", exit_code=3, reason="Error"),
                       Attempt(2, "failed", error_type="OOMKilled", error_message="container task: exit 137",
                               exit_code=137, reason="OOMKilled"),
                       Attempt(3, "succeeded")])
    built = status.build(row)
    assert [(h.get("exitCode"), h.get("reason")) for h in built["history"]] == [
        (3, "Error"), (137, "OOMKilled"), (None, None)]
    assert "exitCode" not in built["history"][2] and "reason" not in built["history"][2]  # unset, not null
    assert built["lastError"]["message"] == "container task: exit 137"
    model.TaskStatus.model_validate(built)


def test_exit_code_zero_is_shown() -> None:
    built = status.build(Row("succeeded", history=[Attempt(1, "succeeded", exit_code=0, reason="Completed")]))
    assert built["history"][0]["exitCode"] == 0 and built["history"][0]["reason"] == "Completed"


def test_retrying_shows_when_the_next_attempt_is_due() -> None:
    built = status.build(Row("retrying", attempts=1, last_error={"type": "Timeout", "message": "x", "attempt": 1}))
    assert built["phase"] == "Retrying"
    assert built["nextAttemptAt"] == "2026-01-02T03:04:05Z"
    assert built["lastError"] == {"type": "Timeout", "message": "x", "attempt": 1}


def test_large_result_and_error_are_capped() -> None:
    huge = {"data": "x" * (model.MAX_STATUS_RESULT_BYTES + 10)}
    built = status.build(Row("succeeded", result=huge, last_error={"type": "E", "message": "y" * 10_000}))
    assert built["result"]["truncated"] is True
    assert len(built["lastError"]["message"]) == model.MAX_STATUS_ERROR_CHARS


def test_history_keeps_the_last_ten() -> None:
    built = status.build(Row("dead_letter", history=[Attempt(n, "failed") for n in range(1, 16)]))
    assert [h["number"] for h in built["history"]] == list(range(6, 16))


def test_retrying_events_are_thinned_to_powers_of_two() -> None:
    """Write amplification (issue 20): maxRetries 100 used to post 100 Retrying Events per Task."""
    from kubetask.operator import mirror

    assert [n for n in range(1, 101) if mirror.thinned_in(n)] == [1, 2, 4, 8, 16, 32, 64]


def test_a_task_its_queue_refuses_says_so_in_a_condition_until_it_is_retried() -> None:
    refusal = {"type": model.QUEUE_REFUSED, "message": "Queue q does not admit Tasks from namespace n: …",
               "attempt": 0}
    refused = status.build(Row("dead_letter", finished_at=T0, last_error=refusal))
    assert refused["phase"] == "DeadLetter"
    [condition] = [c for c in refused["conditions"] if c["type"] == "QueueAdmitted"]
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "False", model.QUEUE_REFUSED, refusal["message"])
    retried = status.build(Row("queued", last_error=refusal))
    assert retried["phase"] == "Queued"
    assert "QueueAdmitted" not in [c["type"] for c in retried["conditions"]]


def test_a_waiting_task_is_told_no_pool_serves_its_queue_unless_it_is_a_container_task() -> None:
    handler = {c["type"]: c for c in status.build(Row("queued"), no_pool_for="batch")["conditions"]}
    assert handler["WorkerPool"]["reason"] == "NoWorkerPool" and "'batch'" in handler["WorkerPool"]["message"]
    container = status.build(Row("queued", type=model.CONTAINER_TYPE), no_pool_for="batch")["conditions"]
    assert "WorkerPool" not in {c["type"] for c in container}, "the leader runs container Tasks' pods: no pool needed"
