"""Generate the Task and Queue CustomResourceDefinitions from the pydantic models.

pydantic writes JSON Schema; Kubernetes wants a *structural* OpenAPI v3
schema. The conversion inlines ``$ref``s, turns ``Optional[X]`` into ``X``
(an absent field is how Kubernetes says "unset"), maps free-form JSON to
``x-kubernetes-preserve-unknown-fields`` and drops what the API server
rejects (titles, ``additionalProperties: false`` — unknown fields are refused
by kubectl's strict field validation instead). A typed map
(``dict[str, str]``) keeps its ``additionalProperties`` schema.

Rules that span fields, or compare with the old object, are CEL rules added
here. Run ``make crds`` (``python -m kubetask.crd crds``) to regenerate
``crds/task.yaml`` and ``crds/queue.yaml``; ``tests/unit/test_crd.py`` fails
when a file drifts.
"""

from __future__ import annotations

import copy
import pathlib
import sys
from typing import Any

import yaml

from kubetask import model

HEADER = (
    "# Generated from operator/kubetask/model.py by `make crds` (python -m kubetask.crd).\n"
    "# Do not edit by hand: tests/unit/test_crd.py fails when this file drifts.\n"
)

SPEC_RULES = [
    {
        "rule": "!(has(self.runAt) && has(self.delaySeconds))",
        "message": "spec.runAt and spec.delaySeconds are exclusive: set one of them",
        "fieldPath": ".runAt",
    },
    {
        # Also in the schema's minimum, which the API server checks against an integer (0) by truncating
        # it to 0: this rule sees the number as a double.
        "rule": "!has(self.backoff) || !has(self.backoff.initialSeconds) || self.backoff.initialSeconds >= 0.1",
        "message": "spec.backoff.initialSeconds must be at least 0.1 (seconds): a 0 s backoff retries back to back",
        "fieldPath": ".backoff.initialSeconds",
    },
    {
        # Also covered by the rule below; this one names the field, since changing the owner of a Task
        # would hand it from one operator to another in mid-life.
        "rule": "has(self.managedBy) == has(oldSelf.managedBy) && (!has(self.managedBy) || self.managedBy == oldSelf.managedBy)",
        "message": "spec.managedBy is immutable: the controller that owns a Task cannot change; delete and re-create it",
        "fieldPath": ".managedBy",
    },
    {
        "rule": "self == oldSelf",
        "message": "spec is immutable once the Task exists: delete and re-create the Task to change it",
    },
]

def _cel_string(text: str) -> str:
    """``text`` inside a single-quoted CEL string literal (where a lone backslash starts an escape)."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


QUEUE_SELECTOR_RULES = [
    {
        # Kubernetes' own rule for a selector requirement, which the schema alone cannot say.
        "rule": "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0"
                " : !has(self.values) || size(self.values) == 0",
        "message": "operator In and NotIn need at least one value; Exists and DoesNotExist take none",
        "fieldPath": ".values",
    },
]
QUEUE_MATCH_LABELS_RULES = [
    {
        "rule": f"self.all(k, size(k) <= {model.MAX_LABEL_KEY_LENGTH} && k.matches('{_cel_string(model.LABEL_KEY_PATTERN)}'))",
        "message": "every matchLabels key must be a label key: an optional DNS prefix and '/', then at most 63 "
                   "alphanumerics, '-', '_' or '.' (e.g. kubernetes.io/metadata.name)",
    },
]
QUEUE_ROOT_RULES = [
    {
        "rule": f"size(self.metadata.name) <= 63 && self.metadata.name.matches('{model.QUEUE_NAME_PATTERN}')",
        "message": "metadata.name must be a queue name, what a Task's spec.queue holds: a DNS label "
                   "(at most 63 lowercase alphanumerics or '-')",
    },
]

QUEUE_PRINTER_COLUMNS = [
    {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused"},
    {"name": "MaxRunning", "type": "integer", "jsonPath": ".spec.maxRunning"},
    {"name": "KeyLimit", "type": "integer", "jsonPath": ".spec.concurrencyKeyLimit", "priority": 1},
    {"name": "Rate", "type": "integer", "jsonPath": ".spec.rateLimit.tasks", "priority": 1},
    {"name": "Per", "type": "integer", "jsonPath": ".spec.rateLimit.periodSeconds", "priority": 1},
    {"name": "Pending", "type": "integer", "jsonPath": ".status.pending"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.running"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

PRINTER_COLUMNS = [
    {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
    {"name": "Queue", "type": "string", "jsonPath": ".spec.queue", "priority": 1},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts"},
    {"name": "Worker", "type": "string", "jsonPath": ".status.worker"},
    {"name": "Next", "type": "date", "jsonPath": ".status.nextAttemptAt", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title", "additionalProperties", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _structural({**target, **extra}, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:
            if rest.get("default", 0) is None:
                rest.pop("default")
            return _structural({**options[0], **rest}, defs)
        raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "additionalProperties" and isinstance(value, dict):
            out[key] = _structural(value, defs)
            continue
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _structural(value, defs)
    if (node.get("type") == "object" and "properties" not in node
            and node.get("additionalProperties", True) is True):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if not out.get("type") and "properties" not in out and "enum" not in out:
        # Free-form JSON (``Any``): anything goes, the API server keeps it as is.
        out = {k: v for k, v in out.items() if k in ("description",)}
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _schema_of(cls: type[model._Schema]) -> dict[str, Any]:
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    return dict(_structural(raw, raw.get("$defs", {})))


def render() -> dict[str, Any]:
    """The Task CRD."""
    spec = _schema_of(model.TaskSpec)
    spec["x-kubernetes-validations"] = SPEC_RULES
    status = _schema_of(model.TaskStatus)
    status.pop("default", None)
    root = {
        "type": "object",
        "description": model.Task.__doc__,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{model.PLURAL}.{model.GROUP}"},
        "spec": {
            "group": model.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": model.KIND,
                "plural": model.PLURAL,
                "singular": model.SINGULAR,
                "shortNames": list(model.SHORT_NAMES),
                "categories": ["kubetask"],
            },
            "versions": [
                {
                    "name": model.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_queue() -> dict[str, Any]:
    """The Queue CRD: cluster-scoped, the admin's."""
    spec = _schema_of(model.QueueSpec)
    # Defaults the API server writes into the stored object, so `kubectl get queue -o yaml` shows that an
    # unset selector admits every namespace.
    spec["default"] = {}
    selector = spec["properties"]["namespaceSelector"]
    selector["default"] = {}
    selector["properties"]["matchExpressions"]["items"]["x-kubernetes-validations"] = QUEUE_SELECTOR_RULES
    selector["properties"]["matchLabels"]["x-kubernetes-validations"] = QUEUE_MATCH_LABELS_RULES
    status = _schema_of(model.QueueStatus)
    status.pop("default", None)
    root = {
        "type": "object",
        "description": model.Queue.__doc__,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": QUEUE_ROOT_RULES,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{model.QUEUE_PLURAL}.{model.GROUP}"},
        "spec": {
            "group": model.GROUP,
            "scope": "Cluster",
            "names": {
                "kind": model.QUEUE_KIND,
                "plural": model.QUEUE_PLURAL,
                "singular": model.QUEUE_SINGULAR,
                "shortNames": list(model.QUEUE_SHORT_NAMES),
                "categories": ["kubetask"],
            },
            "versions": [
                {
                    "name": model.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": QUEUE_PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


#: File name under crds/ → its CRD.
FILES = {"task.yaml": render, "queue.yaml": render_queue}


def render_yaml(file: str = "task.yaml") -> str:
    return HEADER + yaml.safe_dump(FILES[file](), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    """``python -m kubetask.crd [DIR]``: write every CRD into DIR, or print them all as one stream."""
    args = sys.argv[1:] if argv is None else argv
    if args:
        for file in FILES:
            (pathlib.Path(args[0]) / file).write_text(render_yaml(file))
    else:
        sys.stdout.write("---\n".join(render_yaml(file) for file in FILES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
