"""Abuse by one tenant, through the real API server: no single object may stop the operator's loops.

A table: each row is something a tenant (careless or hostile) can send with
``kubectl``, and what kubetask must do about it — refuse it at apply, refuse it
by name in the Task's status, or run it within bounds — while the Tasks around
it carry on. Each row comes from the hardening issue (20) and failed, or was
not bounded, before its fix. The rows needing an operator configured otherwise
(narrowed namespaces, a skewed clock, a 403-ing status) are in the engine tier:
``tests/engine/test_hardening.py`` and ``tests/engine/operator/test_hardening_services.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kubetask_dev import binaries, devstack

from tests.stack import Stack, task

KUBETASK = str(pathlib.Path(sys.executable).parent / "kubetask")


@dataclasses.dataclass(frozen=True)
class Abuse:
    """What the tenant sends (``send``) and what must hold afterwards (``check``)."""

    name: str
    send: Callable[[Stack, str, pathlib.Path], None]
    check: Callable[[Stack, str], None]


# -- what a tenant sends ------------------------------------------------------------------


def _create_raw(body: str) -> Callable[[Stack, str, pathlib.Path], None]:
    """POST the body as is: ``kubectl apply`` would parse it first, the API server stores what it is given."""
    def send(e2e: Stack, namespace: str, tmp: pathlib.Path) -> None:
        manifest = tmp / f"{uuid.uuid4().hex}.json"
        manifest.write_text(body)
        e2e.plane.kubectl("create", "--raw", f"/apis/kubetask.io/v1alpha1/namespaces/{namespace}/tasks",
                          "-f", str(manifest))
    return send


def _apply(*manifests: Callable[[str], dict[str, Any]]) -> Callable[[Stack, str, pathlib.Path], None]:
    def send(e2e: Stack, namespace: str, tmp: pathlib.Path) -> None:
        e2e.apply(*(make(namespace) for make in manifests))
    return send


def _task(type_: str, name: str, **spec: Any) -> Callable[[str], dict[str, Any]]:
    return lambda namespace: task(namespace, type_, name, **spec)


def _refused_at_apply(name: str, field: str, **spec: Any) -> Abuse:
    """Sent with kubectl apply: refused by the API server, naming the field, and nothing stored."""

    def send(e2e: Stack, namespace: str, tmp: pathlib.Path) -> None:
        result = e2e.plane.kubectl("apply", "-f", "-", input=json.dumps(task(namespace, "echo", "bad", **spec)),
                                   check=False)
        assert result.returncode != 0, f"accepted: {spec}"
        assert field in result.stderr, result.stderr

    def check(e2e: Stack, namespace: str) -> None:
        assert e2e.plane.kubectl("get", "task", "bad", "-n", namespace, check=False).returncode != 0

    return Abuse(name, send, check)


def _create_and_delete(e2e: Stack, namespace: str, tmp: pathlib.Path) -> None:
    manifest = tmp / "doomed.json"
    manifest.write_text(json.dumps(task(namespace, "sleep", "doomed", payload={"seconds": 5})))
    # One shell, so the delete follows the create by milliseconds: before the admission batch, usually.
    subprocess.run(["sh", "-c", 'kubectl create -f "$1" && kubectl delete task doomed -n "$2" --wait=false',
                    "sh", str(manifest), namespace],
                   env={**os.environ, "KUBECONFIG": str(e2e.plane.kubeconfig),
                        "PATH": f"{binaries.bin_dir()}:{os.environ['PATH']}"},
                   check=True, capture_output=True, timeout=60)


def _random_queues(e2e: Stack, namespace: str, tmp: pathlib.Path) -> None:
    e2e.apply(*(task(namespace, "echo", f"q{i}", queue=f"random-{uuid.uuid4().hex[:12]}") for i in range(20)))


# -- what must hold -----------------------------------------------------------------------


def _jsonpath(e2e: Stack, namespace: str, name: str, path: str) -> str:
    # jsonpath, not `-o json`: the test's own json.loads would choke on the deep object.
    return e2e.plane.kubectl("get", "task", name, "-n", namespace, "-o", f"jsonpath={path}").stdout


def _phase_is(e2e: Stack, namespace: str, name: str, phase: str, timeout: float = 60) -> None:
    devstack.wait_for(lambda: _jsonpath(e2e, namespace, name, "{.status.phase}") == phase or None, timeout,
                      f"Task {namespace}/{name} to reach {phase}", interval=0.2)


def _still_served(e2e: Stack, namespace: str) -> None:
    """The next Task of the same tenant runs: no loop of the operator stopped on the bad one."""
    e2e.apply(task(namespace, "echo", "after", payload={"still": "served"}))
    assert e2e.wait_phase(namespace, "after", "Succeeded")["status"]["result"] == {"still": "served"}


def _ends(phase: str, *in_message: str, name: str = "abuse", path: str = "{.status.lastError.message}",
          ) -> Callable[[Stack, str], None]:
    def check(e2e: Stack, namespace: str) -> None:
        _phase_is(e2e, namespace, name, phase)
        message = _jsonpath(e2e, namespace, name, path)
        for part in in_message:
            assert part in message, message
        _still_served(e2e, namespace)
    return check


def _bounded_error_message(e2e: Stack, namespace: str) -> None:
    _phase_is(e2e, namespace, "abuse", "DeadLetter")
    message = _jsonpath(e2e, namespace, "abuse", "{.status.lastError.message}")
    assert message.startswith("x") and len(message) <= 2100, len(message)
    stored = e2e.sql("SELECT last_error->>'message' AS m FROM kubetask_tasks WHERE namespace = %s AND name = 'abuse'",
                     namespace)[0]["m"]
    assert len(stored) <= 4100, len(stored)


def _run_at_clamped(e2e: Stack, namespace: str) -> None:
    done = e2e.wait_phase(namespace, "abuse", "Succeeded")
    created = datetime.datetime.fromisoformat(done["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    (row,) = e2e.sql("SELECT run_at FROM kubetask_tasks WHERE uid = %s", done["metadata"]["uid"])
    assert row["run_at"] >= created, (row["run_at"], created)


def _retry_storm_thinned(e2e: Stack, namespace: str) -> None:
    done = e2e.wait_phase(namespace, "abuse", "DeadLetter", timeout=90)
    assert len(e2e.attempts(done["metadata"]["uid"])) == 9

    def retrying() -> list[str] | None:
        out = e2e.plane.kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=abuse",
                                "-o", "jsonpath={range .items[*]}{.reason}={.count}{\"\\n\"}{end}").stdout.split()
        return out if any(line.startswith("DeadLetter=") for line in out) else None

    events = devstack.wait_for(retrying, 15, "the DeadLetter event")
    counts = sum(int(line.split("=")[1] or 1) for line in events if line.startswith("Retrying="))
    assert counts == 4, events  # attempts 1, 2, 4 and 8 of 9 failed ones


def _never_runs(e2e: Stack, namespace: str) -> None:
    def row() -> dict[str, Any] | None:
        rows = e2e.sql("SELECT state, attempts, uid FROM kubetask_tasks WHERE namespace = %s AND name = 'doomed'",
                       namespace)
        return rows[0] if rows and rows[0]["state"] == "cancelled" else None

    found = devstack.wait_for(row, 30, "the deleted Task's row to be cancelled")
    assert not [a for a in e2e.attempts(str(found["uid"])) if a["outcome"] == "succeeded"]
    _still_served(e2e, namespace)


def _queues_folded(e2e: Stack, namespace: str) -> None:
    e2e.wait_all(namespace, ("Queued",), 20)

    def scraped() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{e2e.metrics_port}/metrics", timeout=5) as response:
            text: str = response.read().decode()
        return text if 'queue="_unserved"' in text else None

    text = devstack.wait_for(scraped, 30, "the unserved queues' series")
    assert "random-" not in text, [line for line in text.splitlines() if "random-" in line][:3]


def _cli_escapes(e2e: Stack, namespace: str) -> None:
    _phase_is(e2e, namespace, "abuse", "DeadLetter")
    env = {**os.environ, "KUBECONFIG": str(e2e.plane.kubeconfig), "DATABASE_URL": e2e.dsn}
    out = subprocess.run([KUBETASK, "list", "-n", namespace, "-o", "wide"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\\x1b[2J" in out.stdout, out.stdout


def _long_name_runs(e2e: Stack, namespace: str) -> None:
    assert e2e.wait_phase(namespace, "n" * 253, "Succeeded")["status"]["result"] == {"long": "name"}


def _wide_payload_runs(e2e: Stack, namespace: str) -> None:
    done = e2e.wait_phase(namespace, "abuse", "Succeeded")
    assert done["status"]["phase"] == "Succeeded"


def _deep(levels: int) -> str:
    return ('{"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": "abuse"}, '
            '"spec": {"type": "echo", "payload": ' + '{"a": ' * levels + "{}" + "}" * levels + "}}")


def _sized(kib: int) -> str:
    return json.dumps({"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": "abuse"},
                       "spec": {"type": "echo", "payload": {"blob": "x" * (kib * 1024)}}})


def _sleep(**payload: Any) -> Callable[[Stack, str, pathlib.Path], None]:
    return _apply(_task("sleep", "abuse", payload=payload, maxRetries=0))


CAP = "abuse-capped"
"""A pool whose attempts end after 2 s (``KUBETASK_MAX_TIMEOUT_SECONDS``), for the rows about time."""

ABUSES = [
    # Refused at `kubectl apply`, naming the field: nothing is stored.
    _refused_at_apply("retry storm: backoff 0", "spec.backoff.initialSeconds", maxRetries=100, backoff={"initialSeconds": 0}),
    _refused_at_apply("retries past the cap", "spec.maxRetries", maxRetries=1_000_000),
    _refused_at_apply("priority past the cap", "spec.priority", priority=10**9),
    _refused_at_apply("delay of 30,000 years", "spec.delaySeconds", delaySeconds=10**12),
    _refused_at_apply("timeout of 30,000 years", "spec.timeoutSeconds", timeoutSeconds=10**12),
    _refused_at_apply("ttl of 30,000 years", "spec.ttlSecondsAfterFinished", ttlSecondsAfterFinished=10**12),
    _refused_at_apply("a queue name that is not a DNS label", "spec.queue", queue="../../etc"),
    _refused_at_apply("a type naming a Python path", "spec.type", type="os.system('id')"),
    # Stored by the API server, refused by the operator by name; the tenant's next Task runs.
    Abuse("payload nested 5,000 deep", _create_raw(_deep(5000)), _ends("DeadLetter", "nested", "levels deep")),
    Abuse("payload nested 65 deep", _create_raw(_deep(65)), _ends("DeadLetter", "nested")),
    Abuse("payload of 65 KiB", _create_raw(_sized(65)), _ends("DeadLetter", "spec.payload")),
    Abuse("payload of 1 MiB", _create_raw(_sized(1024)), _ends("DeadLetter", "spec.payload")),
    Abuse("payload holding a NUL character", _apply(_task("echo", "abuse", payload={"s": "a\u0000b"})),
          _ends("DeadLetter", "spec.payload.s holds a NUL character")),
    # Runs within bounds.
    Abuse("a demo sleep of 1e9 seconds", _sleep(seconds=1e9), _ends("DeadLetter", "3600")),
    Abuse("a demo sleep of a string", _sleep(seconds="forever"), _ends("DeadLetter", "non-negative number")),
    Abuse("a type no handler has", _apply(_task("os.system", "abuse", maxRetries=0)),
          _ends("DeadLetter", "no handler named 'os.system'")),
    Abuse("a Task with no timeout on a pool with a cap", _apply(_task("sleep", "abuse", queue=CAP, maxRetries=0,
                                                                        payload={"seconds": 60})),
          _ends("DeadLetter", "KUBETASK_MAX_TIMEOUT_SECONDS")),
    Abuse("a huge timeoutSeconds on a pool with a cap",
          _apply(_task("sleep", "abuse", queue=CAP, maxRetries=0, timeoutSeconds=86400, payload={"seconds": 60})),
          _ends("DeadLetter", "KUBETASK_MAX_TIMEOUT_SECONDS")),
    Abuse("an error message of 60 KB", _apply(_task("fail", "abuse", payload={"permanent": True,
                                                                              "message": "x" * 60_000})),
          _bounded_error_message),
    Abuse("an error message with terminal escapes", _apply(_task("fail", "abuse", payload={
        "permanent": True, "message": "\x1b[2J\x1b[31mFORGED\nline"})), _cli_escapes),
    Abuse("retry storm at the floor: backoff 0.1 s, 8 retries",
          _apply(_task("fail", "abuse", maxRetries=8,
                       backoff={"initialSeconds": 0.1, "factor": 1, "maxSeconds": 0.1, "jitter": 0})),
          _retry_storm_thinned),
    Abuse("runAt 1970-01-01", _apply(_task("echo", "abuse", runAt="1970-01-01T00:00:00Z")), _run_at_clamped),
    Abuse("20 random queue names", _random_queues, _queues_folded),
    Abuse("deleted before it was admitted", _create_and_delete, _never_runs),
    Abuse("a name of 253 characters", _apply(_task("echo", "n" * 253, payload={"long": "name"})), _long_name_runs),
    Abuse("a payload of 3,000 keys", _apply(_task("echo", "abuse", payload={f"k{i}": i for i in range(3000)})),
          _wide_payload_runs),
]


@pytest.fixture(scope="module")
def capped_pool(stack: Stack) -> Any:
    stack.add_pool(CAP, extra_env={"KUBETASK_MAX_TIMEOUT_SECONDS": "2"}, max_replicas=1, scale_down_delay=3)
    yield CAP
    stack.remove_pool(CAP)


@pytest.mark.parametrize("abuse", ABUSES, ids=[a.name for a in ABUSES])
def test_a_tenant_cannot_stop_or_flood_the_operator(e2e: Stack, namespace: str, tmp_path: pathlib.Path,
                                                     capped_pool: str, abuse: Abuse) -> None:
    abuse.send(e2e, namespace, tmp_path)
    abuse.check(e2e, namespace)

