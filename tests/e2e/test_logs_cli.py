"""`kubetask logs` and `kubetask history` for container Tasks, against the real stack.

Most tests here keep the leader's container service out of the way: their
Tasks wait in a paused Queue (admitted, never claimed), and each test writes
what the leader would record straight into the attempt's row, as the
database's owner, so that what is under test is what the CLI reads and prints
(an OOMKilled attempt, a 64 KiB cut). The live tests run real container Tasks
through the leader and the dev pod harness, which serves their pods' logs.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubetask_dev import devstack

from kubetask import model
from tests.e2e.test_cli import KUBETASK, cli
from tests.stack import Stack, task


def container_task(namespace: str, name: str, queue: str = "default", script: str = "echo hi") -> dict[str, Any]:
    return {
        "apiVersion": model.API_VERSION, "kind": model.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"container": {"image": "registry.example/report:1", "command": ["sh", "-c", script]},
                 "queue": queue, "maxRetries": 0},
    }


@pytest.fixture
def held(e2e: Stack) -> Iterator[str]:
    """A paused Queue of this test's own: its Tasks are admitted and never claimed."""
    name = f"held-{uuid.uuid4().hex[:8]}"
    e2e.apply({"apiVersion": model.API_VERSION, "kind": model.QUEUE_KIND, "metadata": {"name": name},
               "spec": {"paused": True}})
    e2e.wait_queue_row(name, "paused")
    yield name
    e2e.plane.kubectl("delete", "queue", name, "--wait=false", check=False)


def admitted(e2e: Stack, namespace: str, name: str) -> dict[str, Any]:
    """The Task's row, once the operator admitted it (a container Task then waits: no worker claims it)."""
    e2e.wait_phase(namespace, name, "Queued")

    def row() -> dict[str, Any] | None:
        rows = e2e.sql("SELECT id, uid::text AS uid, type FROM kubetask_tasks WHERE namespace = %s AND name = %s",
                       namespace, name)
        return rows[0] if rows else None

    found: dict[str, Any] = devstack.wait_for(row, 60, f"Task {namespace}/{name} admitted", interval=0.2)
    assert found["type"] == model.CONTAINER_TYPE
    return found


def record_attempt(e2e: Stack, task_id: int, number: int, pod: str, outcome: str = "failed",
                   exit_code: int | None = None, reason: str | None = None, log_tail: str | None = None) -> None:
    """What the leader writes of an attempt: its row while the pod runs, its end when the pod ended."""
    finished = None if outcome == "running" else "now"
    e2e.sql("INSERT INTO kubetask_attempts (task_id, number, worker_pod, lease_owner, outcome, finished_at,"
            " error_type, error_message, exit_code, reason, log_tail)"
            " VALUES (%s, %s, %s, 'leader', %s, %s::timestamptz, %s, %s, %s, %s, %s) RETURNING number",
            task_id, number, pod, outcome, finished, None if outcome in ("running", "succeeded") else reason,
            None if exit_code is None or outcome == "succeeded" else f"container task: exit {exit_code}",
            exit_code, reason, log_tail)
    e2e.sql("UPDATE kubetask_tasks SET attempts = greatest(attempts, %s) WHERE id = %s RETURNING id", number, task_id)


def end_attempt(e2e: Stack, task_id: int, number: int, exit_code: int, reason: str, log_tail: str) -> None:
    e2e.sql("UPDATE kubetask_attempts SET outcome = 'failed', finished_at = now(), exit_code = %s, reason = %s,"
            " log_tail = %s WHERE task_id = %s AND number = %s RETURNING number",
            exit_code, reason, log_tail, task_id, number)


def attempt_pod(name: str, uid: str, attempt: int, command: list[str]) -> dict[str, Any]:
    """A pod shaped as the leader makes them (component task, restartPolicy Never, one container ``task``)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/part-of": "kubetask", "app.kubernetes.io/component": "task",
            model.TASK_UID_LABEL: uid, model.ATTEMPT_LABEL: str(attempt)}},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 2,
                 "containers": [{"name": model.TASK_CONTAINER, "image": "registry.example/report:1",
                                 "command": command[:1], "args": command[1:]}]},
    }


def create_pod(e2e: Stack, namespace: str, pod: dict[str, Any]) -> str:
    code, body = e2e.plane.request(f"/api/v1/namespaces/{namespace}/pods", method="POST", body=pod)
    assert code == 201, body
    name: str = body["metadata"]["name"]

    def running() -> bool:
        code, body = e2e.plane.request(f"/api/v1/namespaces/{namespace}/pods/{name}")
        return code == 200 and body.get("status", {}).get("phase") in ("Running", "Succeeded", "Failed")

    devstack.wait_for(running, 30, f"pod {namespace}/{name} to run", interval=0.2)
    return name


def pod_log(e2e: Stack, namespace: str, pod: str) -> tuple[int, Any]:
    return e2e.plane.request(f"/api/v1/namespaces/{namespace}/pods/{pod}/log?container={model.TASK_CONTAINER}")


def live_logs_or_skip(e2e: Stack, namespace: str, pod: str) -> None:
    """Skip unless the API server serves this running pod's log: on kwok's fake nodes no kubelet does (the
    API server answers what kwok's stand-in answers, 404, or cannot dial the node) until the dev pod harness
    serves task pods' logs."""
    code, body = pod_log(e2e, namespace, pod)
    if code != 200:
        pytest.skip(f"pods/log does not work on this control plane yet (the API server answered {code}: "
                    f"{json.dumps(body)[:300]}): the dev pod harness does not serve task pods' logs here")


def test_logs_prints_the_stored_tail_and_history_the_exit_codes(e2e: Stack, namespace: str, held: str,
                                                                tmp_path: pathlib.Path) -> None:
    e2e.apply(container_task(namespace, "report", held))
    row = admitted(e2e, namespace, "report")
    early = cli(e2e, "logs", "report", "-n", namespace)
    assert early.returncode == 3 and "has not started an attempt yet" in early.stderr, early
    assert cli(e2e, "logs", "never-was", "-n", namespace).returncode == 3

    record_attempt(e2e, row["id"], 1, "report-a1", exit_code=3, reason="Error", log_tail="loading\nboom\n")
    long_log = "".join(f"line {n}\n" for n in range(20_000))
    tail = long_log.encode()[-model.LOG_TAIL_BYTES:].decode()
    record_attempt(e2e, row["id"], 2, "report-a2", exit_code=137, reason="OOMKilled", log_tail=tail)

    latest = cli(e2e, "logs", "report", "-n", namespace)
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout == tail and latest.stdout.endswith("line 19999\n")
    assert "stored in PostgreSQL, cut to its last 64 KiB" in latest.stderr
    assert "attempt 2" in latest.stderr and "ended failed (OOMKilled, exit 137)" in latest.stderr
    first = cli(e2e, "logs", "report", "-n", namespace, "--attempt", "1")
    assert first.returncode == 0 and first.stdout == "loading\nboom\n", first
    assert "stored in PostgreSQL" in first.stderr and "cut to" not in first.stderr
    followed = cli(e2e, "logs", "report", "-n", namespace, "--attempt", "1", "-f", timeout=30)
    assert followed.returncode == 0 and followed.stdout == "loading\nboom\n", followed  # no pod: nothing to follow
    missing = cli(e2e, "logs", "report", "-n", namespace, "--attempt", "5")
    assert missing.returncode == 3 and "has no attempt 5 (it has had 2)" in missing.stderr, missing
    # The database's administrator, with no kubeconfig at all: the stored tail is all there is, and enough.
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing"), "DATABASE_URL": e2e.dsn}
    admin = subprocess.run([KUBETASK, "logs", "report", "-n", namespace, "--attempt", "1", "--no-access-check"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert admin.returncode == 0 and admin.stdout == "loading\nboom\n", admin

    history = cli(e2e, "history", "report", "-n", namespace)
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[1].split()[:8] == ["#", "POD", "STARTED", "TOOK", "OUTCOME", "EXIT", "REASON", "ERROR"]
    assert [line.split()[1] for line in lines[2:4]] == ["report-a1", "report-a2"]
    assert [line.split()[5:8] for line in lines[2:4]] == [["failed", "3", "Error"], ["failed", "137", "OOMKilled"]]
    as_json = json.loads(cli(e2e, "history", "report", "-n", namespace, "-o", "json").stdout)
    assert [(a["exit_code"], a["reason"]) for a in as_json["attempts"]] == [(3, "Error"), (137, "OOMKilled")]
    assert as_json["attempts"][0]["log_tail"] == "loading\nboom\n"


def test_logs_of_a_handler_task_names_the_worker_that_ran_it(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "echo", "greet", payload={"x": 1}))
    done = e2e.wait_phase(namespace, "greet", "Succeeded")
    [attempt] = e2e.attempts(done["metadata"]["uid"])
    result = cli(e2e, "logs", "greet", "-n", namespace)
    assert result.returncode == 2, result
    assert "handler Tasks' output is in the worker's logs" in result.stderr
    assert f"attempt 1 ran on worker pod {attempt['worker_pod']}" in result.stderr
    assert result.stdout == ""


def test_logs_need_get_on_pods_log_as_well_as_on_tasks(e2e: Stack, namespace: str, held: str,
                                                       tmp_path: pathlib.Path) -> None:
    """The stored tail is the pod's log: who may not read the live log may not read it from PostgreSQL either."""
    e2e.apply(container_task(namespace, "secretive", held))
    row = admitted(e2e, namespace, "secretive")
    record_attempt(e2e, row["id"], 1, "secretive-a1", exit_code=1, reason="Error", log_tail="token=…\n")
    tasks_only = e2e.user_kubeconfig(namespace, "tasks-only", "get,list", "tasks.kubetask.io", tmp_path)
    log_reader = e2e.user_kubeconfig(namespace, "log-reader", "get,list", "tasks.kubetask.io,pods,pods/log", tmp_path)

    def as_user(kubeconfig: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "DATABASE_URL": e2e.dsn}
        return subprocess.run([KUBETASK, "logs", *args], env=env, capture_output=True, text=True, timeout=60)

    refused = as_user(tasks_only, "secretive", "-n", namespace)
    assert refused.returncode == 5, refused
    assert f"you may not get pods/log in namespace {namespace}" in refused.stderr and refused.stdout == ""
    allowed = as_user(log_reader, "secretive", "-n", namespace)
    assert allowed.returncode == 0 and allowed.stdout == "token=…\n", allowed
    other = as_user(log_reader, "secretive", "-n", "default")
    assert other.returncode == 5 and "you may not get Tasks in namespace default" in other.stderr, other


def test_logs_fall_back_to_the_stored_tail_when_the_pods_log_cannot_be_read(e2e: Stack, namespace: str,
                                                                           held: str) -> None:
    """A pod on a node whose kubelet is out of reach: the API server cannot serve its log, the tail can."""
    e2e.apply(container_task(namespace, "stranded", held))
    row = admitted(e2e, namespace, "stranded")
    record_attempt(e2e, row["id"], 1, "stranded-a1", outcome="running")
    # Not a pod the dev harness runs (no part-of label): kwok marks it Running, and no kubelet serves it.
    pod = attempt_pod("stranded-a1", row["uid"], 1, ["sleep", "60"])
    pod["metadata"]["labels"].pop("app.kubernetes.io/part-of")
    create_pod(e2e, namespace, pod)
    code, body = pod_log(e2e, namespace, "stranded-a1")
    if code == 200:
        pytest.skip("this control plane serves the log of a pod nothing runs: no unreadable log to test")
    unreadable = cli(e2e, "logs", "stranded", "-n", namespace)
    assert unreadable.returncode == 1, unreadable
    assert "cannot read the log of pod stranded-a1" in unreadable.stderr
    assert "no log tail is stored in PostgreSQL yet" in unreadable.stderr
    end_attempt(e2e, row["id"], 1, 2, "Error", "partial output\n")
    stored = cli(e2e, "logs", "stranded", "-n", namespace)
    assert stored.returncode == 0 and stored.stdout == "partial output\n", stored
    assert "cannot read the log of pod stranded-a1" in stored.stderr and "stored in PostgreSQL" in stored.stderr


def running_pod(e2e: Stack, namespace: str, name: str) -> str:
    """The pod the leader made for the Task's first attempt, once it runs."""
    uid = e2e.wait_phase(namespace, name, "Running")["metadata"]["uid"]
    selector = f"{model.TASK_UID_LABEL}={uid},{model.ATTEMPT_LABEL}=1"

    def running() -> str | None:
        items = json.loads(e2e.plane.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)
        return next((p["metadata"]["name"] for p in items["items"] if p["status"].get("phase") == "Running"), None)

    pod: str = devstack.wait_for(running, 30, f"the pod of {namespace}/{name} to run", interval=0.2)
    return pod


def follow(e2e: Stack, namespace: str, name: str, first: str,
           meanwhile: Callable[[], None]) -> tuple[int, str, str]:
    """``kubetask logs NAME -f`` until it ends: its first line must be ``first``; then ``meanwhile`` runs.
    Returns the exit code and what came after the first line (stdout), and stderr."""
    env = {**os.environ, "KUBECONFIG": str(e2e.plane.kubeconfig), "DATABASE_URL": e2e.dsn}
    follower = subprocess.Popen([KUBETASK, "logs", name, "-n", namespace, "-f"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == first, "the live log, while the container runs"
        meanwhile()
        out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    return follower.returncode, out, err


def test_logs_follow_a_live_pod_until_its_container_ends_then_come_from_postgresql(
        e2e: Stack, namespace: str, tmp_path: pathlib.Path) -> None:
    gate = tmp_path / "go"
    e2e.apply(container_task(namespace, "live", script=f"echo first; while [ ! -e {gate} ]; do sleep 0.1; done; "
                                                       "echo second"))
    pod = running_pod(e2e, namespace, "live")
    live_logs_or_skip(e2e, namespace, pod)
    code, out, err = follow(e2e, namespace, "live", "first\n", gate.touch)
    # The rest of the live log, nothing twice (the leader may delete the pod the moment it ends: the CLI then
    # finishes from the stored tail, printing only what the stream had not).
    assert code == 0 and out == "second\n", (out, err)
    e2e.wait_phase(namespace, "live", "Succeeded")
    devstack.wait_for(lambda: cli(e2e, "logs", "live", "-n", namespace).stderr.count("stored in PostgreSQL"), 30,
                      "the pod to be gone")
    stored = cli(e2e, "logs", "live", "-n", namespace)
    assert stored.returncode == 0 and stored.stdout == "first\nsecond\n", stored


def test_logs_follow_ends_when_the_pod_is_deleted_from_under_its_attempt(e2e: Stack, namespace: str) -> None:
    e2e.apply(container_task(namespace, "vanishing", script="echo start; sleep 60"))
    pod = running_pod(e2e, namespace, "vanishing")
    live_logs_or_skip(e2e, namespace, pod)
    code, out, err = follow(e2e, namespace, "vanishing", "start\n",
                            lambda: e2e.plane.kubectl("delete", "pod", pod, "-n", namespace, "--wait=false"))
    assert code == 0 and out == "", (out, err)  # nothing after "start": nothing repeated
    status = e2e.wait_phase(namespace, "vanishing", "DeadLetter")["status"]
    assert status["history"][0]["outcome"] == "lost"
