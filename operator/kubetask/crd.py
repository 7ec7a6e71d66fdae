"""Generate the Task, Queue and TaskSchedule CustomResourceDefinitions from the pydantic models.

pydantic writes JSON Schema; Kubernetes wants a *structural* OpenAPI v3
schema. The conversion inlines ``$ref``s, turns ``Optional[X]`` into ``X``
(an absent field is how Kubernetes says "unset"), maps free-form JSON to
``x-kubernetes-preserve-unknown-fields`` and drops what the API server
rejects (titles, ``additionalProperties: false`` — unknown fields are refused
by kubectl's strict field validation instead). A typed map
(``dict[str, str]``) keeps its ``additionalProperties`` schema.

Rules that span fields, or compare with the old object, are CEL rules added
here. Run ``make crds`` (``python -m kubetask.crd crds``) to regenerate
``crds/task.yaml``, ``crds/queue.yaml`` and ``crds/taskschedule.yaml``;
``tests/unit/test_crd.py`` fails when a file drifts.
"""

from __future__ import annotations

import copy
import pathlib
import sys
from typing import Any

import yaml

from kubetask import model

HEADER = (
    "# Generated from operator/kubetask/model.py by `make crds` (python -m kubetask.crd crds).\n"
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

#: What a Task and a TaskSchedule's template both say about running a handler or a container.
RUNNER_RULES = [
    {
        "rule": "has(self.type) != has(self.container)",
        "message": model.TYPE_OR_CONTAINER_MESSAGE,
    },
    {
        "rule": "!has(self.permanentExitCodes) || size(self.permanentExitCodes) == 0 || has(self.container)",
        "message": model.PERMANENT_EXIT_CODES_MESSAGE,
        "fieldPath": ".permanentExitCodes",
    },
]
ENV_RULES = [
    {
        "rule": "!(has(self.value) && has(self.valueFrom))",
        "message": "an env variable takes value or valueFrom, not both",
        "fieldPath": ".valueFrom",
    },
]
ENV_SOURCE_RULES = [
    {
        "rule": "has(self.secretKeyRef) != has(self.configMapKeyRef)",
        "message": "valueFrom takes exactly one of secretKeyRef (a Secret's key) and configMapKeyRef (a ConfigMap's key), "
                   "both in the Task's namespace",
    },
]
TOLERATION_RULES = [
    {
        "rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "message": "a toleration with operator Exists takes no value",
        "fieldPath": ".value",
    },
    {
        "rule": "has(self.key) || (has(self.operator) && self.operator == 'Exists')",
        "message": "a toleration without a key must have operator Exists (it then tolerates every taint)",
        "fieldPath": ".key",
    },
]


def _container_rules(spec: dict[str, Any]) -> None:
    """The rules of spec.container's nested schemas, and its env as a list keyed by name (no duplicate)."""
    env = spec["properties"]["container"]["properties"]["env"]
    env["x-kubernetes-list-type"] = "map"
    env["x-kubernetes-list-map-keys"] = ["name"]
    env["items"]["x-kubernetes-validations"] = ENV_RULES
    env["items"]["properties"]["valueFrom"]["x-kubernetes-validations"] = ENV_SOURCE_RULES
    codes = spec["properties"]["permanentExitCodes"]
    codes["x-kubernetes-list-type"] = "set"

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
NODE_SELECTOR_RULES = [
    {
        "rule": QUEUE_MATCH_LABELS_RULES[0]["rule"],
        "message": "every spec.podPolicy.nodeSelector key must be a label key: an optional DNS prefix and '/', then "
                   "at most 63 alphanumerics, '-', '_' or '.' (e.g. kubernetes.io/os)",
    },
]
QUEUE_ROOT_RULES = [
    {
        "rule": f"size(self.metadata.name) <= 63 && self.metadata.name.matches('{model.QUEUE_NAME_PATTERN}')",
        "message": "metadata.name must be a queue name, what a Task's spec.queue holds: a DNS label "
                   "(at most 63 lowercase alphanumerics or '-')",
    },
]

QUEUE_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused"},
    {"name": "MaxRunning", "type": "integer", "jsonPath": ".spec.maxRunning"},
    {"name": "KeyLimit", "type": "integer", "jsonPath": ".spec.concurrencyKeyLimit", "priority": 1},
    {"name": "Rate", "type": "integer", "jsonPath": ".spec.rateLimit.tasks", "priority": 1},
    {"name": "Per", "type": "integer", "jsonPath": ".spec.rateLimit.periodSeconds", "priority": 1},
    {"name": "Pending", "type": "integer", "jsonPath": ".status.pending"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.running"},
    {"name": "Oldest", "type": "number", "jsonPath": ".status.oldestWaitingSeconds",
     "description": "Seconds the longest-waiting due task has waited"},
    {"name": "Retrying", "type": "integer", "jsonPath": ".status.retrying", "priority": 1},
    {"name": "DeadLetter", "type": "integer", "jsonPath": ".status.deadLetter", "priority": 1},
    {"name": "Claimed1m", "type": "integer", "jsonPath": ".status.claimedLastMinute", "priority": 1,
     "description": "Claims in the last minute"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
    {"name": "Image", "type": "string", "jsonPath": ".spec.container.image", "priority": 1},
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
    if node.get("x-kubernetes-int-or-string"):
        # A quantity: an integer or a string of the pattern (the only anyOf a structural schema may hold).
        return {k: copy.deepcopy(v) for k, v in node.items() if k not in _DROP}
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


def _crd(*, kind: str, plural: str, singular: str, short_names: tuple[str, ...], description: str | None,
         spec: dict[str, Any], status: dict[str, Any], columns: list[dict[str, Any]],
         root_rules: list[dict[str, str]] | None = None, scope: str = "Namespaced",
         spec_required: bool = True) -> dict[str, Any]:
    status.pop("default", None)
    root: dict[str, Any] = {
        "type": "object",
        "description": description,
        **({"required": ["spec"]} if spec_required else {}),
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if root_rules:
        root["x-kubernetes-validations"] = root_rules
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{model.GROUP}"},
        "spec": {
            "group": model.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": ["kubetask"],
            },
            "versions": [
                {
                    "name": model.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render() -> dict[str, Any]:
    """The Task CRD."""
    spec = _schema_of(model.TaskSpec)
    spec["x-kubernetes-validations"] = RUNNER_RULES + SPEC_RULES
    _container_rules(spec)
    return _crd(kind=model.KIND, plural=model.PLURAL, singular=model.SINGULAR, short_names=model.SHORT_NAMES,
                description=model.Task.__doc__, spec=spec, status=_schema_of(model.TaskStatus),
                columns=PRINTER_COLUMNS)


SCHEDULE_RULES = [
    {
        # The CEL string literal holds the pattern as is: it has no quote and no backslash.
        "rule": f"self.schedule.matches('{model.CRON_PATTERN}')",
        "message": ("spec.schedule must be five cron fields within their bounds (minute 0-59, hour 0-23, "
                    "day-of-month 1-31, month 1-12 or JAN-DEC, day-of-week 0-7 or SUN-SAT), separated by spaces, "
                    "e.g. '*/15 * * * *', or a macro: @hourly, @daily, @midnight, @weekly, @monthly, @yearly, "
                    "@annually (set the zone in spec.timeZone, not in the schedule)"),
        "fieldPath": ".schedule",
    },
]

TEMPLATE_RULES = [
    {
        "rule": "!has(self.runAt)",
        "message": "spec.template.runAt is not allowed: a scheduled Task starts at its tick (use delaySeconds to delay it)",
        "fieldPath": ".runAt",
    },
    {
        # As for a Task (SPEC_RULES): the schema's minimum alone lets 0 through.
        "rule": "!has(self.backoff) || !has(self.backoff.initialSeconds) || self.backoff.initialSeconds >= 0.1",
        "message": "spec.template.backoff.initialSeconds must be at least 0.1 (seconds): a 0 s backoff retries back to back",
        "fieldPath": ".backoff.initialSeconds",
    },
]

SCHEDULE_ROOT_RULES = [
    {
        "rule": f"self.metadata.name.size() <= {model.MAX_SCHEDULE_NAME_LENGTH}",
        "message": (f"metadata.name must be at most {model.MAX_SCHEDULE_NAME_LENGTH} characters: the schedule's Tasks "
                    f"carry it as the value of their {model.SCHEDULE_LABEL} label"),
    },
]

SCHEDULE_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
    {"name": "Zone", "type": "string", "jsonPath": ".spec.timeZone", "priority": 1},
    {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
    {"name": "Active", "type": "integer", "jsonPath": ".status.activeCount"},
    {"name": "Last", "type": "date", "jsonPath": ".status.lastScheduleTime"},
    # A time, not an age: kubectl shows a date column as the time since, <invalid> for the future.
    {"name": "Next", "type": "string", "jsonPath": ".status.nextScheduleTime"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def render_schedule() -> dict[str, Any]:
    """The TaskSchedule CRD."""
    spec = _schema_of(model.TaskScheduleSpec)
    spec["x-kubernetes-validations"] = SCHEDULE_RULES
    spec["properties"]["template"]["x-kubernetes-validations"] = RUNNER_RULES + TEMPLATE_RULES
    _container_rules(spec["properties"]["template"])
    return _crd(kind=model.SCHEDULE_KIND, plural=model.SCHEDULE_PLURAL, singular=model.SCHEDULE_SINGULAR,
                short_names=model.SCHEDULE_SHORT_NAMES, description=model.TaskSchedule.__doc__, spec=spec,
                status=_schema_of(model.TaskScheduleStatus), columns=SCHEDULE_PRINTER_COLUMNS,
                root_rules=SCHEDULE_ROOT_RULES)




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
    policy = spec["properties"]["podPolicy"]
    policy["properties"]["nodeSelector"]["x-kubernetes-validations"] = NODE_SELECTOR_RULES
    policy["properties"]["tolerations"]["items"]["x-kubernetes-validations"] = TOLERATION_RULES
    # No spec required: an empty Queue (every namespace, no limits) is a Queue.
    return _crd(kind=model.QUEUE_KIND, plural=model.QUEUE_PLURAL, singular=model.QUEUE_SINGULAR,
                short_names=model.QUEUE_SHORT_NAMES, description=model.Queue.__doc__, spec=spec,
                status=_schema_of(model.QueueStatus), columns=QUEUE_PRINTER_COLUMNS, root_rules=QUEUE_ROOT_RULES,
                scope="Cluster", spec_required=False)


#: The files ``make crds`` writes into ``crds/`` (and the chart copies) → the CRD each holds.
FILES = {"task.yaml": render, "queue.yaml": render_queue, "taskschedule.yaml": render_schedule}


def render_yaml(file: str = "task.yaml") -> str:
    return HEADER + yaml.safe_dump(FILES[file](), sort_keys=False, width=120)


def render_schedule_yaml() -> str:
    return render_yaml("taskschedule.yaml")


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
