"""`kubetask schedule list|trigger|suspend|resume` against the real stack: the operator acts on what the CLI did."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
from typing import Any

import yaml
from kubetask_dev import devstack

from kubetask import model
from tests.e2e.test_cli import KUBETASK, cli
from tests.stack import Stack

NIGHTLY = "0 3 * * *"


def _apply_schedule(e2e: Stack, namespace: str, name: str = "nightly", **spec: Any) -> None:
    e2e.apply({"apiVersion": model.API_VERSION, "kind": model.SCHEDULE_KIND,
               "metadata": {"name": name, "namespace": namespace},
               "spec": {"schedule": NIGHTLY, "timeZone": "Europe/Paris",
                        "template": {"type": "echo", "payload": {"from": name}}, **spec}})


def _schedule(e2e: Stack, namespace: str, name: str = "nightly") -> dict[str, Any]:
    found: dict[str, Any] = json.loads(e2e.plane.kubectl("get", "taskschedule", name, "-n", namespace,
                                                         "-o", "json").stdout)
    return found


def _status_when(e2e: Stack, namespace: str, check: Any, what: str, timeout: float = 45) -> dict[str, Any]:
    """Wait (bounded) for the operator's next pass to write a status that satisfies ``check``."""
    def ready() -> dict[str, Any] | None:
        status: dict[str, Any] = _schedule(e2e, namespace).get("status") or {}
        return status if check(status) else None

    found: dict[str, Any] = devstack.wait_for(ready, timeout, what, interval=0.5)
    return found


def _condition(status: dict[str, Any]) -> tuple[str, str] | None:
    for condition in status.get("conditions") or ():
        if condition["type"] == "Scheduled":
            return condition["status"], condition["reason"]
    return None


def test_list_shows_the_schedules_as_a_table_json_and_yaml(e2e: Stack, namespace: str) -> None:
    _apply_schedule(e2e, namespace)
    _apply_schedule(e2e, namespace, "paused", suspend=True)
    status = _status_when(e2e, namespace, lambda s: s.get("nextScheduleTime"), "the operator's nextScheduleTime")

    table = cli(e2e, "schedule", "list", "-n", namespace)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "SCHEDULE", "ZONE", "SUSPEND", "ACTIVE", "LAST", "NEXT"]
    [nightly] = [row for row in rows if row.startswith("nightly ")]
    assert re.fullmatch(rf"nightly\s+{re.escape(NIGHTLY)}\s+Europe/Paris\s+False\s+0\s+<none>\s+"
                        rf"{re.escape(status['nextScheduleTime'])}", nightly), nightly
    [paused] = [row for row in rows if row.startswith("paused ")]
    assert paused.split()[6:8] == ["Europe/Paris", "True"], paused

    everywhere = cli(e2e, "schedule", "list", "-A")
    assert everywhere.returncode == 0, everywhere.stderr
    assert everywhere.stdout.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:2] == [namespace, "nightly"] for line in everywhere.stdout.splitlines())

    as_json = json.loads(cli(e2e, "schedule", "list", "-n", namespace, "-o", "json").stdout)
    assert [item["metadata"]["name"] for item in as_json["items"]] == ["nightly", "paused"]
    assert as_json["items"][0]["spec"]["schedule"] == NIGHTLY
    as_yaml = yaml.safe_load(cli(e2e, "schedule", "list", "-n", namespace, "-o", "yaml").stdout)
    assert [item["metadata"]["name"] for item in as_yaml["items"]] == ["nightly", "paused"]

    with_none = cli(e2e, "schedule", "list", "-n", f"{namespace}-nothing-here")
    assert with_none.returncode == 0 and with_none.stdout.strip() == "No TaskSchedules found."


def test_trigger_runs_one_task_now_as_a_run_of_the_schedule(e2e: Stack, namespace: str) -> None:
    _apply_schedule(e2e, namespace, suspend=True)  # manual runs need no tick, and work while suspended
    schedule = _schedule(e2e, namespace)
    result = cli(e2e, "schedule", "trigger", "nightly", "-n", namespace)
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"task\.kubetask\.io/(nightly-manual-(\d+)) created \(from taskschedule\.kubetask\.io/"
                         r"nightly\)\n", result.stdout)
    assert match is not None, result.stdout
    name = match.group(1)
    task = e2e.wait_phase(namespace, name, "Succeeded")
    assert task["status"]["result"] == {"from": "nightly"}
    meta = task["metadata"]
    assert meta["labels"] == {model.SCHEDULE_LABEL: "nightly"}
    assert meta["annotations"][model.MANUAL_ANNOTATION] == model.MANUAL
    assert model.TICK_ANNOTATION not in meta["annotations"], "not a tick: the scheduler's tick names stay free"
    [owner] = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        model.SCHEDULE_KIND, "nightly", schedule["metadata"]["uid"], True)
    # Owned by the schedule, it is one of its runs: the scheduler reports its success.
    status = _status_when(e2e, namespace, lambda s: s.get("lastSuccessfulTime"), "the run's lastSuccessfulTime")
    assert status["lastSuccessfulTime"] == task["status"]["finishedAt"]
    assert "lastScheduleTime" not in status, "a manual run is not a tick"
    assert e2e.sql("SELECT count(*) AS n FROM kubetask_schedule_ticks WHERE schedule_uid = %s",
                   schedule["metadata"]["uid"])[0]["n"] == 0


def test_suspend_and_resume_patch_spec_suspend_and_the_operator_follows(e2e: Stack, namespace: str) -> None:
    _apply_schedule(e2e, namespace)
    _status_when(e2e, namespace, lambda s: _condition(s) == ("True", "OnSchedule"), "the schedule on schedule")
    suspended = cli(e2e, "schedule", "suspend", "nightly", "-n", namespace)
    assert suspended.returncode == 0, suspended.stderr
    assert suspended.stdout == "taskschedule.kubetask.io/nightly suspended\n"
    assert _schedule(e2e, namespace)["spec"]["suspend"] is True
    status = _status_when(e2e, namespace, lambda s: _condition(s) == ("False", "Suspended"), "Suspended")
    assert "nextScheduleTime" not in status
    resumed = cli(e2e, "schedule", "resume", "nightly", "-n", namespace)
    assert resumed.returncode == 0 and resumed.stdout == "taskschedule.kubetask.io/nightly resumed\n"
    spec = _schedule(e2e, namespace)["spec"]
    assert spec["suspend"] is False and spec["schedule"] == NIGHTLY, "a merge patch: the rest of the spec stays"
    _status_when(e2e, namespace, lambda s: _condition(s) == ("True", "OnSchedule") and s.get("nextScheduleTime"),
                 "the schedule on schedule again")


def test_a_missing_schedule_exits_3_naming_it(e2e: Stack, namespace: str) -> None:
    for action in ("trigger", "suspend", "resume"):
        result = cli(e2e, "schedule", action, "nope", "-n", namespace)
        assert result.returncode == 3, (action, result)
        assert f"TaskSchedule {namespace}/nope not found" in result.stderr and "Traceback" not in result.stderr
    usage = cli(e2e, "schedule", "trigger", "-n", namespace)
    assert usage.returncode == 2 and "NAME" in usage.stderr
    assert e2e.tasks(namespace) == []


def test_rbac_decides_what_a_user_may_do_and_refusals_exit_5(e2e: Stack, namespace: str,
                                                           tmp_path: pathlib.Path) -> None:
    """The CLI acts as the kubeconfig's user: a reader of TaskSchedules may list them, not suspend or trigger."""
    _apply_schedule(e2e, namespace)
    kubeconfig = e2e.user_kubeconfig(namespace, "viewer", "get,list", "taskschedules.kubetask.io,tasks.kubetask.io",
                                     tmp_path)

    def as_viewer(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        return subprocess.run([KUBETASK, "schedule", *args, "-n", namespace], env=env, capture_output=True,
                              text=True, timeout=60)

    listed = as_viewer("list")
    assert listed.returncode == 0 and "nightly" in listed.stdout, listed.stderr
    for action in ("suspend", "resume", "trigger"):
        refused = as_viewer(action, "nightly")
        assert refused.returncode == 5, (action, refused)
        assert "forbidden" in refused.stderr and "Traceback" not in refused.stderr
    assert "suspend" not in _schedule(e2e, namespace)["spec"] or not _schedule(e2e, namespace)["spec"]["suspend"]
    assert e2e.tasks(namespace) == [], "the refused trigger created nothing"
