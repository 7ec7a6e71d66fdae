"""crds/*.yaml are generated from the pydantic models and must not drift."""

from __future__ import annotations

from typing import Any, Callable

import pydantic
import pytest
import yaml

from kubetask import crd, model
from tests.conftest import ROOT

RENDERS: list[Callable[[], dict[str, Any]]] = [crd.render, crd.render_queue, crd.render_schedule]


@pytest.mark.parametrize("file", sorted(crd.FILES))
def test_committed_crd_matches_the_models(file: str) -> None:
    committed = (ROOT / "crds" / file).read_text()
    assert committed == crd.render_yaml(file), f"crds/{file} is stale: run `make crds` and commit the result"


def test_crds_holds_exactly_the_generated_files() -> None:
    assert sorted(path.name for path in (ROOT / "crds").iterdir()) == sorted(crd.FILES)


@pytest.mark.parametrize("render", RENDERS, ids=["Task", "Queue", "TaskSchedule"])
def test_every_spec_and_status_field_has_a_description(render: Callable[[], dict[str, Any]]) -> None:
    schema = render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node: dict[str, Any], path: str) -> list[str]:
        missing = []
        for name, sub in (node.get("properties") or {}).items():
            where = f"{path}.{name}"
            if not sub.get("description") and where.count(".") >= 2:
                missing.append(where)
            missing += walk(sub, where)
            if isinstance(sub.get("items"), dict):
                missing += walk(sub["items"], where + "[]")
        return missing

    assert walk(schema["properties"]["spec"], ".spec") == []
    assert walk(schema["properties"]["status"], ".status") == []


def test_crd_names_and_columns() -> None:
    rendered = crd.render()
    names = rendered["spec"]["names"]
    assert names["kind"] == model.KIND and names["shortNames"] == ["kt"]
    columns = [c["name"] for c in rendered["spec"]["versions"][0]["additionalPrinterColumns"]]
    for wanted in ("Type", "Phase", "Attempts", "Worker", "Age"):
        assert wanted in columns
    assert yaml.safe_load(crd.render_yaml()) == rendered


def test_the_queue_crd_is_cluster_scoped_with_its_dashboard_columns() -> None:
    rendered = crd.render_queue()
    assert rendered["spec"]["scope"] == "Cluster"
    assert rendered["spec"]["names"]["kind"] == model.QUEUE_KIND
    columns = [c["name"] for c in rendered["spec"]["versions"][0]["additionalPrinterColumns"]]
    for wanted in ("Paused", "MaxRunning", "Age"):
        assert wanted in columns
    assert yaml.safe_load(crd.render_yaml("queue.yaml")) == rendered


def test_printing_writes_every_crd_as_one_stream(capsys: pytest.CaptureFixture[str]) -> None:
    crd.main([])
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(capsys.readouterr().out)]
    assert names == ["tasks.kubetask.io", "queues.kubetask.io", "taskschedules.kubetask.io"]


SELECTOR_CASES = [
    ({}, {}, True),
    ({}, {"team": "a"}, True),
    ({"matchLabels": {"team": "a"}}, {"team": "a", "x": "y"}, True),
    ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
    ({"matchLabels": {"team": "a"}}, {}, False),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}, {"team": "b"}, True),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {"team": "a"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"team": ""}, True),
    ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {"team": ""}, False),
    ({"matchLabels": {"env": "prod"}, "matchExpressions": [{"key": "team", "operator": "Exists"}]},
     {"env": "prod"}, False),
]


@pytest.mark.parametrize(("selector", "labels", "matches"), SELECTOR_CASES)
def test_a_label_selector_matches_as_kubernetes_does(selector: dict[str, Any], labels: dict[str, str],
                                                     matches: bool) -> None:
    assert model.LabelSelector.model_validate(selector).matches(labels) is matches


@pytest.mark.parametrize("selector", [
    {"matchExpressions": [{"key": "team", "operator": "In"}]},
    {"matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]},
    {"matchExpressions": [{"key": "team", "operator": "Like", "values": ["a"]}]},
    {"matchLabels": {"bad key!": "a"}},
    {"matchLabels": {"team": "not a value"}},
])
def test_the_model_refuses_what_the_crd_refuses(selector: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        model.LabelSelector.model_validate(selector)


def test_schedule_crd_names_and_columns() -> None:
    rendered = crd.render_schedule()
    assert rendered["metadata"]["name"] == "taskschedules.kubetask.io"
    assert rendered["spec"]["names"]["kind"] == "TaskSchedule" and rendered["spec"]["scope"] == "Namespaced"
    columns = [c["name"] for c in rendered["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Schedule", "Zone", "Suspend", "Active", "Last", "Next", "Age"]
    assert yaml.safe_load(crd.render_schedule_yaml()) == rendered


def test_the_schedules_template_is_the_task_spec_schema() -> None:
    """One Task schema: a template is checked by the same OpenAPI as a Task (its CEL rules are its own)."""
    template = dict(crd.render_schedule()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                    ["properties"]["spec"]["properties"]["template"])
    template.pop("x-kubernetes-validations")
    task_spec = dict(crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])
    task_spec.pop("x-kubernetes-validations")
    assert template.pop("description") != task_spec.pop("description")
    assert template == task_spec
