"""Container Tasks' pods: the pod an attempt gets, and what a pod's status means for the attempt."""

import datetime
import decimal

import pytest

from kubetask import model, pods

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.timezone.utc)
ATTEMPT = pods.Attempt(uid="0123abcd-0000-0000-0000-000000000000", namespace="team-a", name="report", queue="batch",
                       attempt=2, payload={"day": "2026-12-04"}, timeout_seconds=600)


def container(**fields: object) -> model.Container:
    return model.Container.model_validate({"image": "registry.example.com/team-a/report:1", **fields})


@pytest.mark.parametrize("text, value", [
    ("500m", "0.5"), ("1", "1"), ("2Gi", str(2 * 2**30)), ("1e3", "1000"), ("1.5k", "1500"), ("100Mi", str(100 * 2**20)),
])
def test_quantities_read_as_kubernetes_reads_them(text: str, value: str) -> None:
    assert pods.quantity(text) == decimal.Decimal(value)


def test_a_pod_name_is_unique_per_attempt_and_per_re_created_task() -> None:
    assert pods.pod_name("report", ATTEMPT.uid, 2) == "report-2-0123a"
    assert pods.pod_name("report", "ffff" + ATTEMPT.uid[4:], 2) != pods.pod_name("report", ATTEMPT.uid, 2)
    long = pods.pod_name("x" * 253, ATTEMPT.uid, 100)
    assert len(long) <= 253 and long.endswith("-100-0123a")


def test_the_pod_runs_the_container_under_the_queues_policy() -> None:
    policy = model.PodPolicy.model_validate({
        "serviceAccountName": "runner", "nodeSelector": {"pool": "batch"},
        "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        "imagePullSecrets": ["registry"], "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
        "defaultResources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "activeDeadlineSeconds": 300, "priorityClassName": "batch-low",
    })
    pod = pods.build(ATTEMPT, container(command=["report"], args=["--day", "today"],
                                        env=[{"name": "MODE", "value": "full"},
                                             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}],
                                        resources={"limits": {"memory": "1Gi"}}, workingDir="/work"), policy)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"][model.TASK_UID_LABEL] == ATTEMPT.uid and meta["labels"][model.ATTEMPT_LABEL] == "2"
    assert pods.attempt_of(pod) == (ATTEMPT.uid, 2)
    assert meta["labels"][pods.MANAGED_BY_LABEL] == "kubetask.io.operator", "an operator follows only its own pods"
    assert pods.selector("example.com/team-a") == (
        "app.kubernetes.io/part-of=kubetask,app.kubernetes.io/component=task,kubetask.io/managed-by=example.com.team-a")
    assert meta["ownerReferences"] == [{"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "name": "report",
                                        "uid": ATTEMPT.uid, "controller": True}]
    assert spec["restartPolicy"] == "Never" and spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False and spec["serviceAccountName"] == "runner"
    assert spec["activeDeadlineSeconds"] == 300, "the Task's 600 s capped by the Queue's 300 s"
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    assert spec["nodeSelector"] == {"pool": "batch"} and spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["tolerations"] == [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["priorityClassName"] == "batch-low"
    [main] = spec["containers"]
    assert main["name"] == "task" and main["image"] == "registry.example.com/team-a/report:1"
    assert main["command"] == ["report"] and main["args"] == ["--day", "today"] and main["workingDir"] == "/work"
    assert main["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert main["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}
    env = {var["name"]: var for var in main["env"]}
    assert env["KUBETASK_PAYLOAD"]["value"] == '{"day":"2026-12-04"}' and env["KUBETASK_ATTEMPT"]["value"] == "2"
    assert env["TOKEN"] == {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}


def test_without_a_policy_the_pod_has_no_token_and_no_deadline_unless_the_task_sets_one() -> None:
    pod = pods.build(pods.Attempt(**{**ATTEMPT.__dict__, "timeout_seconds": None}), container(), model.PodPolicy())
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod["spec"] and "activeDeadlineSeconds" not in pod["spec"]
    assert "command" not in pod["spec"]["containers"][0], "the image's entrypoint"


def test_the_queue_refuses_images_outside_its_prefixes_and_resources_over_its_maximum() -> None:
    policy = model.PodPolicy.model_validate({"allowedImagePrefixes": ["registry.example.com/team-a/"],
                                             "maxResources": {"cpu": "2", "memory": "4Gi"}})
    assert pods.refusal(container(), policy, "batch") is None
    kind, message = pods.refusal(container(image="docker.io/library/busybox"), policy, "batch")
    assert kind == "ImageNotAllowed" and "allowedImagePrefixes" in message and "kubectl edit queue batch" in message
    kind, message = pods.refusal(container(resources={"limits": {"cpu": "2500m"}}), policy, "batch")
    assert kind == "ResourcesNotAllowed" and "resources.limits.cpu 2500m" in message
    assert pods.refusal(container(resources={"requests": {"memory": "4Gi"}}), policy, "batch") is None


def pod(phase: str, *, state: dict | None = None, reason: str | None = None, message: str | None = None,
        created: datetime.datetime = NOW, conditions: list | None = None) -> dict:
    status: dict = {"phase": phase, "conditions": conditions or []}
    if state is not None:
        status["containerStatuses"] = [{"name": "task", "state": state}]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return {"metadata": {"creationTimestamp": created.isoformat().replace("+00:00", "Z")}, "status": status}


def test_a_pods_status_tells_how_the_attempt_ended() -> None:
    done = pods.observe(pod("Succeeded", state={"terminated": {"exitCode": 0, "reason": "Completed"}}), NOW, 60)
    assert done == pods.Ended(True, "Completed", "", 0)
    failed = pods.observe(pod("Failed", state={"terminated": {"exitCode": 3, "reason": "Error"}}), NOW, 60)
    assert isinstance(failed, pods.Ended) and not failed.succeeded and failed.exit_code == 3
    assert failed.reason == "Error" and "exited with code 3" in failed.message
    oom = pods.observe(pod("Failed", state={"terminated": {"exitCode": 137, "reason": "OOMKilled"}}), NOW, 60)
    assert oom.reason == "OOMKilled" and oom.exit_code == 137
    late = pods.observe(pod("Failed", reason="DeadlineExceeded", message="Pod was active too long"), NOW, 60)
    assert late.timeout and late.reason == "DeadlineExceeded"
    evicted = pods.observe(pod("Failed", reason="Evicted", message="The node was low on resource: memory."), NOW, 60)
    assert evicted.reason == "Evicted" and "low on resource" in evicted.message
    assert pods.observe(pod("Running", state={"running": {}}), NOW, 60) is None


def test_a_pod_that_cannot_start_waits_a_bounded_time_then_ends_the_attempt() -> None:
    pulling = pod("Pending", state={"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}},
                  created=NOW - datetime.timedelta(seconds=30))
    assert pods.observe(pulling, NOW, 60) == pods.Waiting("ImagePullBackOff", "Back-off pulling")
    ended = pods.observe(pulling, NOW, 20)
    assert isinstance(ended, pods.Ended) and ended.reason == "ImagePullBackOff" and not ended.permanent
    invalid = pod("Pending", state={"waiting": {"reason": "InvalidImageName"}}, created=NOW - datetime.timedelta(hours=1))
    assert pods.observe(invalid, NOW, 60).permanent
    unschedulable = pod("Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": "0/2 nodes are available: 2 Insufficient cpu."}])
    assert pods.observe(unschedulable, NOW, 60) == pods.Waiting("Unschedulable", "0/2 nodes are available: 2 Insufficient cpu.")
