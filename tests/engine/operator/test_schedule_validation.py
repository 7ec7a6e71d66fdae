"""Bad TaskSchedule manifests are refused by the API server at `kubectl apply`, naming the field.

What the API server cannot know (a schedule that never fires, a zone name the IANA database lacks) is
the operator's to refuse, visibly: tests/engine/operator/test_schedule_service.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from kubetask_dev import controlplane

from kubetask import model
from tests.conftest import ROOT

BASE: dict[str, Any] = {"apiVersion": "kubetask.io/v1alpha1", "kind": "TaskSchedule",
                        "metadata": {"name": "bad"}, "spec": {"schedule": "*/5 * * * *", "template": {"type": "echo"}}}


def _with(**spec: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    manifest["spec"].update(spec)
    return manifest


def _template(**template: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    manifest["spec"]["template"].update(template)
    return manifest


def _without(field: str) -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    del manifest["spec"][field]
    return manifest


SCHEDULE = "spec.schedule must be five cron fields"
CASES = [
    ("no schedule", _without("schedule"), "spec.schedule: Required value"),
    ("no template", _without("template"), "spec.template: Required value"),
    ("four cron fields", _with(schedule="* * * *"), SCHEDULE),
    ("six cron fields", _with(schedule="0 * * * * *"), SCHEDULE),
    ("minute 61", _with(schedule="61 * * * *"), SCHEDULE),
    ("hour 24", _with(schedule="0 24 * * *"), SCHEDULE),
    ("month 13", _with(schedule="0 0 1 13 *"), SCHEDULE),
    ("step 0", _with(schedule="*/0 * * * *"), SCHEDULE),
    ("unknown macro", _with(schedule="@often"), SCHEDULE),
    ("zone in the schedule", _with(schedule="CRON_TZ=Europe/Paris 0 3 * * *"), SCHEDULE),
    ("schedule a number", _with(schedule=5), "spec.schedule"),
    ("zone with spaces", _with(timeZone="Central European Time"), "spec.timeZone"),
    ("zone a path", _with(timeZone="../../etc/passwd"), "spec.timeZone"),
    ("unknown policy", _with(concurrencyPolicy="Queue"), "spec.concurrencyPolicy"),
    ("deadline zero", _with(startingDeadlineSeconds=0), "spec.startingDeadlineSeconds"),
    ("deadline a string", _with(startingDeadlineSeconds="1m"), "spec.startingDeadlineSeconds"),
    ("suspend a string", _with(suspend="yes"), "spec.suspend"),
    ("negative history", _with(successfulHistoryLimit=-1), "spec.successfulHistoryLimit"),
    ("huge failed history", _with(failedHistoryLimit=5000), "spec.failedHistoryLimit"),
    ("unknown field", _with(scheduel="@daily"), 'unknown field "spec.scheduel"'),
    ("template without type or container", _with(template={"payload": {}}), "set exactly one of spec.type"),
    ("template type with spaces", _template(type="send email"), "spec.template.type"),
    ("template unknown field", _template(retries=3), 'unknown field "spec.template.retries"'),
    ("template retries out of range", _template(maxRetries=-1), "spec.template.maxRetries"),
    ("template payload not an object", _template(payload=[1]), "spec.template.payload"),
    ("template runAt", _template(runAt="2030-01-01T00:00:00Z"), "spec.template.runAt is not allowed"),
    ("template zero backoff", _template(backoff={"initialSeconds": 0}), "spec.template.backoff.initialSeconds"),
    ("template queue not a DNS label", _template(queue="Emails_Q"), "spec.template.queue"),
    ("name over 63 characters", {**copy.deepcopy(BASE), "metadata": {"name": "n" * 64}}, "metadata.name"),
]


@pytest.mark.parametrize(("manifest", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_schedule_is_refused_at_apply_naming_the_field(crd_plane: controlplane.ControlPlane, namespace: str,
                                                           manifest: dict[str, Any], message: str) -> None:
    body = copy.deepcopy(manifest)
    body["metadata"]["namespace"] = namespace
    result = crd_plane.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0, f"accepted: {body}"
    assert message in result.stderr, result.stderr
    name = body["metadata"]["name"]
    assert crd_plane.kubectl("get", "taskschedule", name, "-n", namespace, check=False).returncode != 0


@pytest.mark.parametrize("schedule", ["@hourly", "@annually", "0 3 * * MON-FRI", "*/15 0-6,22-23 1,15 jan-jun sun",
                                      "0 0 30 2 *"])
def test_good_schedules_are_accepted_with_the_defaults(crd_plane: controlplane.ControlPlane, namespace: str,
                                                       schedule: str) -> None:
    """Including one that passes the pattern but never fires: the operator refuses that one (the
    API server cannot tell)."""
    body = _with(schedule=schedule, timeZone="America/Argentina/Buenos_Aires")
    body["metadata"].update(namespace=namespace, name="n" * 63)
    crd_plane.kubectl("apply", "-f", "-", input=json.dumps(body))
    stored = json.loads(crd_plane.kubectl("get", "taskschedule", "n" * 63, "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["concurrencyPolicy"] == "Allow" and stored["spec"]["suspend"] is False
    assert stored["spec"]["successfulHistoryLimit"] == 3 and stored["spec"]["failedHistoryLimit"] == 1
    assert stored["spec"]["template"]["queue"] == "default", "the template gets a Task's defaults"


def test_the_example_is_accepted_and_is_a_valid_spec(crd_plane: controlplane.ControlPlane, namespace: str) -> None:
    example = ROOT / "examples" / "taskschedule.yaml"
    model.TaskSchedule.model_validate(yaml.safe_load(example.read_text()))
    crd_plane.kubectl("apply", "-n", namespace, "-f", str(example))
