"""The `kubetask` CLI and the Python client, against the real stack: what scripts and producers rely on."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import kubernetes
import pytest


from tests.conftest import temporary_namespace
from tests.stack import Stack, task

KUBETASK = str(pathlib.Path(sys.executable).parent / "kubetask")


def cli(e2e: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(e2e.plane.kubeconfig), "DATABASE_URL": e2e.dsn}
    return subprocess.run([KUBETASK, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_submit_wait_prints_progress_and_the_result(e2e: Stack, namespace: str) -> None:
    result = cli(e2e, "submit", "fail", "-n", namespace, "--name", "cli-flaky", "--max-retries", "2",
                 "--payload", '{"times": 1, "message": "once"}', "--wait")
    assert result.returncode == 0, result.stderr
    assert "task.kubetask.io/cli-flaky created" in result.stdout
    assert "Retrying" in result.stderr and "Succeeded" in result.stderr
    assert "Succeeded  attempts=2" in result.stderr


def test_submit_wait_exits_1_on_dead_letter(e2e: Stack, namespace: str) -> None:
    result = cli(e2e, "submit", "fail", "-n", namespace, "--payload", '{"permanent": true}', "--wait")
    assert result.returncode == 1
    assert "DeadLetter" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--payload", "{not json"], "--payload is not valid JSON"),
    (["--payload", "[1, 2]"], "--payload must be a JSON object"),
    (["--max-retries", "-1"], "spec.maxRetries"),
    (["--delay", "5", "--run-at", "2030-01-01T00:00:00Z"], "exclusive"),
])
def test_submit_refuses_bad_input_with_exit_2(e2e: Stack, namespace: str, args: list[str], message: str) -> None:
    result = cli(e2e, "submit", "echo", "-n", namespace, *args)
    assert result.returncode == 2, result
    assert message in result.stderr


def test_get_list_and_not_found(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "echo", "listed", payload={"x": 1}))
    e2e.wait_phase(namespace, "listed", "Succeeded")
    table = cli(e2e, "list", "-n", namespace)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:4] == ["NAME", "TYPE", "PHASE", "ATTEMPTS"]
    assert "listed" in table.stdout and "Succeeded" in table.stdout
    as_json = json.loads(cli(e2e, "get", "listed", "-n", namespace, "-o", "json").stdout)
    assert as_json["status"]["result"] == {"x": 1}
    missing = cli(e2e, "get", "nope", "-n", namespace)
    assert missing.returncode == 3 and "not found" in missing.stderr


def test_history_outlives_the_task_object(e2e: Stack, namespace: str) -> None:
    e2e.apply(task(namespace, "fail", "gone", payload={"times": 1}, maxRetries=1,
                   backoff={"initialSeconds": 0.1, "jitter": 0}))
    e2e.wait_phase(namespace, "gone", "Succeeded")
    e2e.plane.kubectl("delete", "task", "gone", "-n", namespace)
    result = cli(e2e, "history", "gone", "-n", namespace, "--tracebacks")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "state=succeeded attempts=2" in lines[0]
    assert [line.split()[5] for line in lines[2:4]] == ["failed", "succeeded"]
    assert "Traceback" in result.stdout
    assert cli(e2e, "history", "never-existed", "-n", namespace).returncode == 3


def test_history_answers_only_where_the_caller_may_get_tasks(e2e: Stack, namespace: str,
                                                            tmp_path: pathlib.Path) -> None:
    """PostgreSQL holds every namespace's history; `history` shows it only to who may read those Tasks."""
    with temporary_namespace(e2e.plane, f"{namespace[:50]}-other") as other:
        for ns in (namespace, other):
            e2e.apply(task(ns, "echo", "mine", payload={"ns": ns}))
        for ns in (namespace, other):
            e2e.wait_phase(ns, "mine", "Succeeded")
        # A user who may get Tasks in `namespace` only (a ServiceAccount token, so the API server decides).
        kubeconfig = e2e.user_kubeconfig(namespace, "reader", "get,list", "tasks.kubetask.io", tmp_path)

        def as_reader(*args: str) -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "KUBECONFIG": str(kubeconfig), "DATABASE_URL": e2e.dsn}
            return subprocess.run([KUBETASK, "history", *args], env=env, capture_output=True, text=True, timeout=60)

        allowed = as_reader("mine", "-n", namespace)
        assert allowed.returncode == 0, allowed.stderr
        assert f"Task {namespace}/mine" in allowed.stdout and "succeeded" in allowed.stdout
        refused = as_reader("mine", "-n", other)
        assert refused.returncode == 5, refused
        assert f"you may not get Tasks in namespace {other}" in refused.stderr and "mine" not in refused.stdout
        # By uid, a Task the caller may not read is not found: whether it exists does not leak.
        [row] = e2e.sql("SELECT uid::text AS uid FROM kubetask_tasks WHERE namespace = %s AND name = 'mine'", other)
        by_uid = as_reader("--uid", row["uid"])
        assert by_uid.returncode == 3 and "no history for uid" in by_uid.stderr, by_uid
        # The database's administrator, who holds the URL anyway, may skip the check.
        admin = as_reader("mine", "-n", other, "--no-access-check")
        assert admin.returncode == 0 and f"Task {other}/mine" in admin.stdout, admin.stderr


def test_dead_letter_list_and_retry_all_then_stats(e2e: Stack, namespace: str) -> None:
    e2e.add_pool("dlq", min_replicas=1, max_replicas=1)
    try:
        for name in ("d1", "d2"):
            e2e.apply(task(namespace, "fail", name, queue="dlq", payload={"times": 1}, maxRetries=0))
        for name in ("d1", "d2"):
            e2e.wait_phase(namespace, name, "DeadLetter")
        listed = cli(e2e, "dead-letter", "list", "-n", namespace)
        assert "d1" in listed.stdout and "d2" in listed.stdout
        stats = json.loads(cli(e2e, "stats", "--queue", "dlq", "-o", "json").stdout)
        assert stats[0]["dead_letter_total"] == 2
        retried = cli(e2e, "dead-letter", "retry", "--all", "-n", namespace)
        assert retried.returncode == 0 and "2 Task(s) re-queued" in retried.stdout
        for name in ("d1", "d2"):
            assert e2e.wait_phase(namespace, name, "Succeeded")["status"]["attempts"] == 2
        stats = json.loads(cli(e2e, "stats", "--queue", "dlq", "-o", "json").stdout)
        assert stats[0]["dead_letter_total"] == 0 and stats[0]["succeeded"] == 2
        table = cli(e2e, "stats")
        assert table.stdout.splitlines()[0].startswith("QUEUE")
    finally:
        e2e.remove_pool("dlq")


def test_python_client_submit_and_wait(e2e: Stack, namespace: str) -> None:
    import kubetask
    from kubetask import client

    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(e2e.plane.kubeconfig), client_configuration=config)
    api = kubernetes.client.ApiClient(config)
    try:
        ref = kubetask.submit("echo", {"n": 42}, namespace=namespace, api_client=api, max_retries=0)
        assert ref.name.startswith("echo-")
        assert kubetask.wait(ref, timeout=60, api_client=api)["result"] == {"n": 42}

        doomed = kubetask.submit("fail", {"permanent": True}, namespace=namespace, api_client=api)
        with pytest.raises(kubetask.TaskFailed, match="DeadLetter"):
            kubetask.wait(doomed, timeout=60, api_client=api)
        with pytest.raises(ValueError, match="spec.priority"):
            kubetask.submit("echo", namespace=namespace, api_client=api, priority=10**6)
        with pytest.raises(client.WaitTimeout):
            kubetask.wait(kubetask.submit("sleep", {"seconds": 30}, namespace=namespace, api_client=api),
                          timeout=0.5, api_client=api)
    finally:
        api.close()



def test_errors_are_one_line_with_an_exit_code(e2e: Stack, namespace: str, tmp_path: pathlib.Path) -> None:
    cli(e2e, "submit", "echo", "-n", namespace, "--name", "taken")
    again = cli(e2e, "submit", "echo", "-n", namespace, "--name", "taken")
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing"), "DATABASE_URL": "postgresql://x@127.0.0.1:1/db"}
    no_cluster = subprocess.run([KUBETASK, "list"], env=env, capture_output=True, text=True, timeout=60)
    assert no_cluster.returncode == 2 and "KUBECONFIG" in no_cluster.stderr and "Traceback" not in no_cluster.stderr
    no_db = subprocess.run([KUBETASK, "stats"], env=env, capture_output=True, text=True, timeout=60)
    assert no_db.returncode == 1 and "cannot reach PostgreSQL" in no_db.stderr and "Traceback" not in no_db.stderr
