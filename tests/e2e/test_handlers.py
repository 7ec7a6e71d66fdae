"""Each demo handler, applied with kubectl, ends in the phase and status its spec dictates."""

from __future__ import annotations

import datetime

import pytest

from tests.stack import Stack, task

FAST = {"backoff": {"initialSeconds": 0.2, "factor": 1, "jitter": 0}}


def test_echo_succeeds_with_its_payload_as_result(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "echo", "hello", payload={"greeting": "hi", "n": [1, 2]}))
    done = e2e.wait_phase(namespace, "hello", "Succeeded")
    status = done["status"]
    assert status["result"] == {"greeting": "hi", "n": [1, 2]}
    assert status["attempts"] == 1
    assert status["worker"].startswith("kubetask-worker-default-")
    assert [h["outcome"] for h in status["history"]] == ["succeeded"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Admitted": "True", "Finished": "True"}
    assert e2e.attempts(done["metadata"]["uid"])[0]["outcome"] == "succeeded"


@pytest.mark.parametrize("type_,payload", [
    ("email", {"to": "a@example.com", "subject": "hi"}),
    ("image", {"url": "s3://bucket/cat.png", "width": 64, "height": 64}),
    ("report", {"rows": [1, 2, 3], "kind": "sum"}),
    ("sleep", {"seconds": 0.1}),
])
def test_simulated_course_handlers_succeed(e2e: Stack, namespace: str, type_: str, payload: dict[str, object]) -> None:
    e2e.apply(task(namespace, type_, "t", payload=payload))
    assert e2e.wait_phase(namespace, "t", "Succeeded")["status"]["attempts"] == 1


def test_fail_within_budget_succeeds_after_that_many_attempts(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "fail", "flaky", payload={"times": 2, "message": "flaky backend"}, maxRetries=3, **FAST))
    done = e2e.wait_phase(namespace, "flaky", "Succeeded")
    status = done["status"]
    assert status["attempts"] == 3
    assert [h["outcome"] for h in status["history"]] == ["failed", "failed", "succeeded"]
    assert "flaky backend" in status["history"][0]["error"]
    rows = e2e.attempts(done["metadata"]["uid"])
    assert [r["outcome"] for r in rows] == ["failed", "failed", "succeeded"]
    assert all(r["traceback"] for r in rows[:2]), "a failed attempt keeps its traceback in PostgreSQL"


def test_fail_beyond_budget_goes_to_dead_letter(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "fail", "doomed", payload={"times": 10, "message": "still broken"}, maxRetries=1, **FAST))
    done = e2e.wait_phase(namespace, "doomed", "DeadLetter")
    status = done["status"]
    assert status["attempts"] == 2
    assert status["lastError"]["attempt"] == 2
    assert "still broken" in status["lastError"]["message"]
    assert len(e2e.attempts(done["metadata"]["uid"])) == 2


def test_permanent_error_dead_letters_after_one_attempt(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "fail", "bad-input", payload={"permanent": True, "message": "no such user"}, maxRetries=5))
    status = e2e.wait_phase(namespace, "bad-input", "DeadLetter")["status"]
    assert status["attempts"] == 1
    assert status["lastError"]["type"] == "PermanentError"


def test_timeout_is_retried_then_dead_lettered(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "sleep", "slow", payload={"seconds": 30}, timeoutSeconds=1, maxRetries=1, **FAST))
    status = e2e.wait_phase(namespace, "slow", "DeadLetter", timeout=60)["status"]
    assert status["attempts"] == 2
    assert [h["outcome"] for h in status["history"]] == ["timeout", "timeout"]


def test_unknown_handler_is_a_permanent_error_listing_the_known_ones(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "no-such-handler", "typo"))
    status = e2e.wait_phase(namespace, "typo", "DeadLetter")["status"]
    assert status["attempts"] == 1
    assert "no-such-handler" in status["lastError"]["message"]
    assert "echo" in status["lastError"]["message"]


def test_retry_annotation_revives_a_dead_letter_task_keeping_its_history(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "fail", "revive", payload={"times": 1}, maxRetries=0))
    e2e.wait_phase(namespace, "revive", "DeadLetter")
    e2e.plane.kubectl("annotate", "task", "revive", "-n", namespace, "kubetask.io/retry=1", "--overwrite")
    status = e2e.wait_phase(namespace, "revive", "Succeeded")["status"]
    assert status["attempts"] == 2
    assert [h["outcome"] for h in status["history"]] == ["failed", "succeeded"]


def test_events_tell_the_story(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "fail", "story", payload={"permanent": True}))
    e2e.wait_phase(namespace, "story", "DeadLetter")

    def reasons() -> set[str] | None:
        out = e2e.plane.kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=story",
                                "-o", "jsonpath={.items[*].reason}").stdout.split()
        return set(out) if {"Admitted", "DeadLetter"} <= set(out) else None

    from kubetask_dev import devstack
    devstack.wait_for(reasons, 15, "Admitted and DeadLetter events")


def test_delay_seconds_holds_the_task_back(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "echo", "later", delaySeconds=3))
    queued = e2e.wait_phase(namespace, "later", ("Queued",))
    created = datetime.datetime.fromisoformat(queued["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    next_at = datetime.datetime.fromisoformat(queued["status"]["nextAttemptAt"].replace("Z", "+00:00"))
    assert next_at - created >= datetime.timedelta(seconds=2)
    done = e2e.wait_phase(namespace, "later", "Succeeded", timeout=30)
    started = datetime.datetime.fromisoformat(done["status"]["startedAt"].replace("Z", "+00:00"))
    assert started - created >= datetime.timedelta(seconds=2)  # whole-second timestamps: allow rounding
