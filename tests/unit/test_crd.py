"""crds/task.yaml and crds/queue.yaml are generated from the pydantic models and must not drift."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
import yaml

from kubetask import crd, model
from tests.conftest import ROOT


@pytest.mark.parametrize("file", sorted(crd.FILES))
def test_committed_crd_matches_the_models(file: str) -> None:
    committed = (ROOT / "crds" / file).read_text()
    assert committed == crd.render_yaml(file), f"crds/{file} is stale: run `make crds` and commit the result"


@pytest.mark.parametrize("file", sorted(crd.FILES))
def test_every_spec_and_status_field_has_a_description(file: str) -> None:
    schema = crd.FILES[file]()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

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


def test_printing_writes_both_crds_as_one_stream(capsys: pytest.CaptureFixture[str]) -> None:
    crd.main([])
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(capsys.readouterr().out)]
    assert names == ["tasks.kubetask.io", "queues.kubetask.io"]


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
