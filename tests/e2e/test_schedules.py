"""A TaskSchedule on the whole stack: the real operator process creates each tick's Task once, a worker runs it,
and an operator killed between ticks carries on without a duplicate."""

from __future__ import annotations

import json
from typing import Any

from kubetask_dev import devstack

from kubetask import cron, model
from tests.stack import Stack


def _schedule(stack: Stack, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(stack.plane.kubectl("get", "taskschedule", "minutely", "-n", namespace,
                                                           "-o", "json").stdout)
    return found


def test_a_minutely_schedule_runs_each_tick_once_across_an_operator_kill(e2e: Stack, namespace: str) -> None:
    e2e.apply({"apiVersion": model.API_VERSION, "kind": model.SCHEDULE_KIND,
               "metadata": {"name": "minutely", "namespace": namespace},
               "spec": {"schedule": "* * * * *", "template": {"type": "echo", "payload": {"every": "minute"}}}})
    first = devstack.wait_for(lambda: e2e.tasks(namespace), 75, "the first tick's Task", interval=0.5)[0]
    assert e2e.wait_phase(namespace, first["metadata"]["name"], "Succeeded")["status"]["result"] == {"every": "minute"}

    e2e.stop_operator(kill=True)
    e2e.start_operator()
    second = devstack.wait_for(lambda: [t for t in e2e.tasks(namespace) if t["metadata"]["name"] !=
                                        first["metadata"]["name"]], 90, "the next tick's Task", interval=0.5)[0]
    e2e.wait_phase(namespace, second["metadata"]["name"], "Succeeded")

    rows = e2e.sql("SELECT tick_at, outcome, task_name FROM kubetask_schedule_ticks WHERE schedule_uid = %s "
                   "ORDER BY tick_at", _schedule(e2e, namespace)["metadata"]["uid"])
    created = [row for row in rows if row["outcome"] == "created"]
    assert [row["task_name"] for row in created] == [cron.task_name("minutely", row["tick_at"]) for row in created]
    names = sorted(t["metadata"]["name"] for t in e2e.tasks(namespace))
    assert names == sorted(row["task_name"] for row in created), "one Task per created tick, none twice"

    def mirrored() -> dict[str, Any] | None:
        status: dict[str, Any] = _schedule(e2e, namespace).get("status") or {}
        return status if status.get("lastSuccessfulTime") else None

    status = devstack.wait_for(mirrored, 30, "the schedule's lastSuccessfulTime", interval=0.5)
    assert status["lastScheduleTime"] >= second["metadata"]["annotations"][model.TICK_ANNOTATION]
