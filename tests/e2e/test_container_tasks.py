"""Container Tasks on the real control plane: one pod per attempt, made and followed by the leader.

On kwok the dev pod harness plays the kubelet for task pods: it runs the
container's command here, writes the real exit code into the pod's status and
serves its output as the pod's log (``kubetask_dev.podrunner``); the image is
not pulled (``unpullable.invalid/...`` plays an image that cannot be pulled).
"""

from __future__ import annotations

import json
import pathlib
import time
import uuid
from typing import Any

from kubetask_dev import devstack

from tests.stack import Stack

SELECTOR = "app.kubernetes.io/component=task"


def container_task(namespace: str, name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"image": "busybox:1.36", "command": ["sh", "-c", script], **spec.pop("container", {})}
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": name, "namespace": namespace},
            "spec": {"container": container, "backoff": {"initialSeconds": 0.1, "jitter": 0}, **spec}}


def queue(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kubetask.io/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": spec}


def task_pods(e2e: Stack, namespace: str) -> list[dict[str, Any]]:
    out = e2e.plane.kubectl("get", "pods", "-n", namespace, "-l", SELECTOR, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def uid_of(e2e: Stack, namespace: str, name: str) -> str:
    return str(e2e.get(namespace, name)["metadata"]["uid"])


def test_a_container_that_exits_0_succeeds_with_its_log_in_history_and_its_pod_gone(
        e2e: Stack, namespace: str) -> None:
    e2e.apply(container_task(namespace, "hello", 'echo "hello from $KUBETASK_TASK_NAME"; echo "$KUBETASK_PAYLOAD"',
                             payload={"n": 1}))
    status = e2e.wait_phase(namespace, "hello", "Succeeded")["status"]
    [attempt] = e2e.attempts(uid_of(e2e, namespace, "hello"))
    assert attempt["outcome"] == "succeeded" and attempt["exit_code"] == 0 and attempt["reason"] == "Completed"
    assert attempt["log_tail"] == 'hello from hello\n{"n":1}\n'
    assert attempt["worker_pod"].startswith("hello-1-") and status["worker"] == attempt["worker_pod"]
    devstack.wait_for(lambda: not task_pods(e2e, namespace), 20, "the finished pod to be deleted")


def test_a_failing_container_is_retried_to_the_dead_letter_with_each_exit_code_and_log(
        e2e: Stack, namespace: str) -> None:
    e2e.apply(container_task(namespace, "flaky", 'echo "attempt $KUBETASK_ATTEMPT"; exit 3', maxRetries=2))
    status = e2e.wait_phase(namespace, "flaky", "DeadLetter", timeout=90)["status"]
    attempts = e2e.attempts(uid_of(e2e, namespace, "flaky"))
    assert [(a["outcome"], a["exit_code"], a["reason"]) for a in attempts] == [("failed", 3, "Error")] * 3
    assert [a["log_tail"] for a in attempts] == [f"attempt {n}\n" for n in (1, 2, 3)]
    assert status["attempts"] == 3 and "exited with code 3" in status["lastError"]["message"]


def test_a_permanent_exit_code_goes_straight_to_the_dead_letter(e2e: Stack, namespace: str) -> None:
    e2e.apply(container_task(namespace, "bad-input", "exit 4", maxRetries=5, permanentExitCodes=[4, 5]))
    status = e2e.wait_phase(namespace, "bad-input", "DeadLetter", timeout=60)["status"]
    assert status["attempts"] == 1
    assert "permanentExitCodes" in status["lastError"]["message"]


def test_a_container_past_its_timeout_is_stopped_and_fails_as_a_timeout(e2e: Stack, namespace: str) -> None:
    e2e.apply(container_task(namespace, "slow", "sleep 60", timeoutSeconds=2, maxRetries=0))
    e2e.wait_phase(namespace, "slow", "DeadLetter", timeout=60)
    [attempt] = e2e.attempts(uid_of(e2e, namespace, "slow"))
    assert attempt["outcome"] == "timeout" and attempt["reason"] == "DeadlineExceeded"


def test_deleting_the_task_deletes_its_pod(e2e: Stack, namespace: str) -> None:
    e2e.apply(container_task(namespace, "doomed", "sleep 60"))
    uid = e2e.wait_phase(namespace, "doomed", "Running")["metadata"]["uid"]
    devstack.wait_for(lambda: task_pods(e2e, namespace), 20, "the attempt's pod")
    e2e.plane.kubectl("delete", "task", "doomed", "-n", namespace)
    devstack.wait_for(lambda: not task_pods(e2e, namespace), 30, "the pod to go with its Task")
    assert e2e.attempts(uid)[-1]["outcome"] == "cancelled"


def test_a_pod_deleted_by_hand_is_a_lost_attempt_and_is_retried(e2e: Stack, namespace: str) -> None:
    e2e.apply(container_task(namespace, "rescued", 'if [ "$KUBETASK_ATTEMPT" = 1 ]; then sleep 60; fi; echo second'))
    e2e.wait_phase(namespace, "rescued", "Running")
    [pod] = devstack.wait_for(lambda: task_pods(e2e, namespace), 20, "the attempt's pod")
    e2e.plane.kubectl("delete", "pod", pod["metadata"]["name"], "-n", namespace, "--wait=false")
    e2e.wait_phase(namespace, "rescued", "Succeeded", timeout=90)
    attempts = e2e.attempts(uid_of(e2e, namespace, "rescued"))
    assert [a["outcome"] for a in attempts] == ["lost", "succeeded"]
    assert attempts[0]["error_type"] == "PodDeleted" and attempts[1]["log_tail"] == "second\n"


def test_a_new_leader_adopts_running_pods_and_no_attempt_runs_twice(
        e2e: Stack, namespace: str, tmp_path: pathlib.Path) -> None:
    runs = tmp_path / "runs"
    release = tmp_path / "release"
    script = (f'echo "$KUBETASK_TASK_NAME" >> {runs}; '
              f'while [ ! -e {release} ]; do sleep 0.1; done; echo finished')
    e2e.apply(*[container_task(namespace, f"long-{i}", script) for i in range(3)])
    devstack.wait_for(lambda: runs.exists() and len(runs.read_text().split()) == 3, 60, "three pods running")
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in task_pods(e2e, namespace)}
    e2e.stop_operator(kill=True)
    e2e.start_operator()
    devstack.wait_for(lambda: "adopted 3 running container attempts" in e2e.operator_log(), 60,
                      "the new leader to adopt the pods")
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in task_pods(e2e, namespace)} == before
    release.touch()
    items = e2e.wait_all(namespace, ("Succeeded",), 3, timeout=60)
    assert sorted(runs.read_text().split()) == ["long-0", "long-1", "long-2"], "each container ran once"
    for item in items:
        assert [a["outcome"] for a in e2e.attempts(item["metadata"]["uid"])] == ["succeeded"]


def test_the_queues_pod_policy_refuses_images_outside_its_prefixes(e2e: Stack, namespace: str) -> None:
    name = f"images-{uuid.uuid4().hex[:6]}"
    e2e.apply(queue(name, podPolicy={"allowedImagePrefixes": ["registry.example.com/allowed/"]}))
    try:
        e2e.wait_queue_row(name, "pod_policy <> '{}'")
        e2e.apply(container_task(namespace, "outside", "echo no", queue=name),
                  container_task(namespace, "inside", "echo yes", queue=name,
                                 container={"image": "registry.example.com/allowed/tool:1"}))
        refused = e2e.wait_phase(namespace, "outside", "DeadLetter")["status"]
        assert refused["lastError"]["type"] == "ImageNotAllowed"
        assert "allowedImagePrefixes" in refused["lastError"]["message"] and name in refused["lastError"]["message"]
        e2e.wait_phase(namespace, "inside", "Succeeded")
    finally:
        e2e.plane.kubectl("delete", "queue", name, "--wait=false", check=False)


def test_an_image_that_cannot_be_pulled_ends_the_attempt_after_a_bounded_wait(e2e: Stack, namespace: str) -> None:
    e2e.apply(container_task(namespace, "no-image", "true", maxRetries=0,
                             container={"image": "unpullable.invalid/app:1"}))
    status = e2e.wait_phase(namespace, "no-image", "DeadLetter", timeout=60)["status"]
    assert status["lastError"]["type"] in ("ErrImagePull", "ImagePullBackOff")
    assert "did not start within" in status["lastError"]["message"]


def test_env_comes_from_literals_secrets_and_configmaps_of_the_tasks_namespace(e2e: Stack, namespace: str) -> None:
    e2e.plane.kubectl("create", "secret", "generic", "api", "-n", namespace, "--from-literal=token=s3cret")
    e2e.plane.kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=mode=full")
    e2e.apply(container_task(namespace, "env", 'echo "$A $TOKEN $MODE"', container={"env": [
        {"name": "A", "value": "literal"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
    ]}))
    e2e.wait_phase(namespace, "env", "Succeeded")
    [attempt] = e2e.attempts(uid_of(e2e, namespace, "env"))
    assert attempt["log_tail"] == "literal s3cret full\n"


def test_max_running_and_priority_hold_for_300_container_tasks(e2e: Stack, namespace: str) -> None:
    name = f"limited-{uuid.uuid4().hex[:6]}"
    limit = 20
    e2e.apply(queue(name, paused=True, maxRunning=limit))
    try:
        e2e.wait_queue_row(name, "paused")
        e2e.apply(*[container_task(namespace, f"c{i:03d}", "sleep 0.2", queue=name, priority=i % 3)
                    for i in range(300)])
        devstack.wait_for(lambda: len(e2e.sql("SELECT 1 FROM kubetask_tasks WHERE queue = %s", name)) == 300, 60,
                          "all 300 admitted")
        e2e.plane.kubectl("patch", "queue", name, "--type=merge", "-p", '{"spec": {"paused": false}}')
        most_running, most_pods, samples = 0, 0, 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            [row] = e2e.sql("SELECT count(*) FILTER (WHERE state = 'running') AS running,"
                            " count(*) FILTER (WHERE state = 'succeeded') AS done"
                            " FROM kubetask_tasks WHERE queue = %s", name)
            pods_now = len([p for p in task_pods(e2e, namespace)
                            if p["status"].get("phase") in ("Pending", "Running")
                            and not p["metadata"].get("deletionTimestamp")])
            most_running, most_pods, samples = max(most_running, row["running"]), max(most_pods, pods_now), samples + 1
            if row["done"] == 300:
                break
            time.sleep(0.5)  # a sampling period, not a wait for a condition
        assert row["done"] == 300, f"{row['done']}/300 succeeded"
        assert samples >= 10 and 0 < most_running <= limit and most_pods <= limit, (most_running, most_pods)
        started = e2e.sql("SELECT t.priority FROM kubetask_attempts a JOIN kubetask_tasks t ON t.id = a.task_id"
                          # One claim's tasks share its started_at: within it, the claim's own (priority) order.
                          " WHERE t.queue = %s ORDER BY a.started_at, t.priority DESC", name)
        order = [r["priority"] for r in started]
        assert order == sorted(order, reverse=True), "every higher-priority task started before any lower one"
    finally:
        e2e.plane.kubectl("delete", "queue", name, "--wait=false", check=False)
