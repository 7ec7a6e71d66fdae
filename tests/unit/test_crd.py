"""crds/task.yaml is generated from the pydantic models and must not drift."""

from __future__ import annotations

import yaml

from kubetask import crd, model
from tests.conftest import ROOT


def test_committed_crd_matches_the_models() -> None:
    committed = (ROOT / "crds" / "task.yaml").read_text()
    assert committed == crd.render_yaml(), "crds/task.yaml is stale: run `make crds` and commit the result"


def test_every_spec_and_status_field_has_a_description() -> None:
    schema = crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node: dict[str, object], path: str) -> list[str]:
        missing = []
        for name, sub in (node.get("properties") or {}).items():  # type: ignore[union-attr]
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
