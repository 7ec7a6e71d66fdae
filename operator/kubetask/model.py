"""The Task and Queue resources, written once.

These pydantic models are the single source of truth for the schemas:
``crds/task.yaml``, ``crds/queue.yaml`` and ``crds/taskschedule.yaml`` are generated from them
(``make crds``) and a test fails when they drift. Field docstrings become the OpenAPI descriptions that
``kubectl explain task.spec`` prints, so they are written for users.

Rules that only the API server can enforce at ``kubectl apply`` time (mutually
exclusive fields, immutability of ``spec``) are CEL rules attached in
``crd.py``; everything else is plain OpenAPI (types, bounds, patterns,
required, unknown fields pruned-and-refused via ``additionalProperties``).

The TaskSchedule resource (below the Task's) follows the same rules; its
docstring says which of its checks the API server makes and which only the
operator can.

Nothing here imports Kubernetes or PostgreSQL.
"""

from __future__ import annotations

import datetime
import enum
import re
import zoneinfo
from typing import Annotated, Any, Literal

import cronsim
import pydantic
from pydantic.alias_generators import to_camel

GROUP = "kubetask.io"
VERSION = "v1alpha1"
KIND = "Task"
PLURAL = "tasks"
SINGULAR = "task"
SHORT_NAMES = ("kt",)
API_VERSION = f"{GROUP}/{VERSION}"

QUEUE_KIND = "Queue"
QUEUE_PLURAL = "queues"
QUEUE_SINGULAR = "queue"
QUEUE_SHORT_NAMES = ("ktq",)

#: The controller a Task without ``spec.managedBy`` belongs to: the operator's default name
#: (``KUBETASK_MANAGED_BY``).
DEFAULT_MANAGED_BY = f"{GROUP}/operator"
#: Longest ``spec.managedBy`` (as for a Job's).
MAX_MANAGED_BY_LENGTH = 63
#: ``spec.managedBy``: a domain-prefixed path, ``example.com/my-controller``.
MANAGED_BY_PATTERN = (r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
                      r"/[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$")

#: Annotation whose every new value re-queues a finished Task.
RETRY_ANNOTATION = f"{GROUP}/retry"

#: Bytes of JSON a payload may take; larger data belongs in object storage,
#: referenced by the payload.
MAX_PAYLOAD_BYTES = 64 * 1024
#: Levels of nesting a payload may have. Python's json gives up near 1,000 by default; a payload
#: nested deeper than any real argument list is refused by name instead.
MAX_PAYLOAD_DEPTH = 64
#: Bytes of JSON of a result mirrored into status; the full result stays in PostgreSQL.
MAX_STATUS_RESULT_BYTES = 8 * 1024
#: Characters of an error message mirrored into status.
MAX_STATUS_ERROR_CHARS = 2048
#: Attempts kept in ``status.history`` (all of them stay in PostgreSQL).
STATUS_HISTORY_LENGTH = 10


def depth(value: Any) -> int:
    """Levels of nesting of a JSON value (a scalar is 0), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest


def find_nul(value: Any, path: str = "$") -> str | None:
    """The JSON path of the first string (or key) holding U+0000, or None.

    PostgreSQL cannot store that character in ``text`` or ``jsonb``: a payload
    holding one is refused at admission and a result holding one is a
    permanent error, both naming this path.
    """
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return f"{path} (a key)"
            found = find_nul(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = find_nul(item, f"{path}[{index}]")
            if found:
                return found
    return None


_QUEUE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A queue's name: what ``spec.queue`` of a Task holds, and the name of its Queue object.
QUEUE_NAME_PATTERN = _QUEUE_PATTERN
_TYPE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]*$"
#: Longest ``spec.concurrencyKey``.
MAX_CONCURRENCY_KEY_LENGTH = 253
#: ``spec.concurrencyKey``: any text without control characters (a customer id, an e-mail address, a URL).
CONCURRENCY_KEY_PATTERN = r"^[^\x00-\x1f\x7f]+$"
#: A label key: an optional DNS-subdomain prefix and ``/``, then a name of at most 63 characters (as Kubernetes'
#: own validation; the lengths are checked separately).
LABEL_KEY_PATTERN = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
#: A label value: empty, or at most 63 alphanumerics with ``-``, ``_`` and ``.`` inside.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
MAX_LABEL_KEY_LENGTH = 253 + 1 + 63
MAX_LABEL_VALUE_LENGTH = 63
#: Bounds that keep a selector's CEL rules cheap for the API server to check.
MAX_SELECTOR_LABELS = 64
MAX_SELECTOR_EXPRESSIONS = 32
MAX_SELECTOR_VALUES = 64


class _Schema(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        extra="forbid",
        populate_by_name=True,
        use_attribute_docstrings=True,
        alias_generator=to_camel,
    )


class Backoff(_Schema):
    """How long to wait between attempts: initialSeconds × factor^(retry−1), capped at maxSeconds, ± jitter."""

    initial_seconds: float = pydantic.Field(default=1.0, ge=0.1, le=86400)
    """Delay before the first retry, in seconds, at least 0.1. Default 1."""

    factor: float = pydantic.Field(default=2.0, ge=1, le=10)
    """Multiplier applied to the delay after each failed attempt. Default 2 (exponential)."""

    max_seconds: float = pydantic.Field(default=300.0, ge=0, le=604800)
    """Upper bound of any single delay, in seconds. Default 300."""

    jitter: float = pydantic.Field(default=0.1, ge=0, le=1)
    """Random spread of each delay as a fraction (0.1 = ±10%), so retries of many tasks do not stampede. Default 0.1."""


# -- Container Tasks --------------------------------------------------------------------------------

#: ``spec.type`` a container Task has in PostgreSQL, its metrics and ``kubectl get`` (a handler may not be named
#: so: the handler pattern has no parentheses).
CONTAINER_TYPE = "(container)"
#: Labels of every pod the operator creates for a container Task's attempt.
TASK_UID_LABEL = f"{GROUP}/task-uid"
ATTEMPT_LABEL = f"{GROUP}/attempt"
#: The one container of a task pod.
TASK_CONTAINER = "task"
#: Bytes of a pod's log kept in the attempt's row when the pod ends (the tail).
LOG_TAIL_BYTES = 64 * 1024
#: A resource quantity, as Kubernetes writes them (``500m``, ``1``, ``2Gi``, ``1e3``).
QUANTITY_PATTERN = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$"
#: An environment variable's name (as the API server's default, relaxed validation allows).
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
#: A DNS subdomain (a Secret, a ConfigMap, a ServiceAccount): lowercase, at most 253 characters.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: An image reference: no whitespace, no upper case registry tricks beyond what a reference allows.
IMAGE_PATTERN = r"^[^\s]+$"


def _quantity(value: Any) -> Any:
    # YAML writes `cpu: 1` as an integer: Kubernetes' quantities are int-or-string.
    if isinstance(value, bool):
        raise ValueError("a quantity is a number or a string such as 500m or 1Gi")
    return str(value) if isinstance(value, (int, float)) else value


Quantity = Annotated[
    str,
    pydantic.BeforeValidator(_quantity),
    pydantic.StringConstraints(pattern=QUANTITY_PATTERN, max_length=64),
    # Kubernetes' own shape for a quantity; the pattern applies to the string form.
    pydantic.WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
                             "pattern": QUANTITY_PATTERN}),
]


class ResourceList(_Schema):
    """Amounts of the resources a task's container may name."""

    cpu: Quantity | None = None
    """CPU, in cores (`1`, `0.5`, `250m`)."""
    memory: Quantity | None = None
    """Memory, in bytes (`256Mi`, `1Gi`)."""
    ephemeral_storage: Quantity | None = pydantic.Field(default=None, alias="ephemeral-storage")
    """Local scratch space, in bytes (`1Gi`)."""

    def amounts(self) -> dict[str, str]:
        """The amounts set, by resource name as a Pod spells it."""
        return {name: value for name, value in self.model_dump(by_alias=True, exclude_none=True).items()}


class KeyRef(_Schema):
    """One key of a Secret or ConfigMap in the Task's namespace."""

    name: str = pydantic.Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the Secret or ConfigMap, in the Task's namespace."""
    key: str = pydantic.Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """The key whose value the variable gets."""
    optional: bool | None = None
    """True: a missing object or key leaves the variable unset instead of failing the pod."""


class EnvVarSource(_Schema):
    """Where a variable's value comes from: exactly one of secretKeyRef or configMapKeyRef."""

    secret_key_ref: KeyRef | None = None
    """A key of a Secret in the Task's namespace."""
    config_map_key_ref: KeyRef | None = None
    """A key of a ConfigMap in the Task's namespace."""

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> "EnvVarSource":
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("valueFrom takes exactly one of secretKeyRef or configMapKeyRef")
        return self


class EnvVar(_Schema):
    """An environment variable of the task's container: a literal value or a reference."""

    name: str = pydantic.Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN)
    """The variable's name (letters, digits, `_`, `-`, `.`; not starting with a digit)."""
    value: str | None = pydantic.Field(default=None, max_length=32 * 1024)
    """A literal value; `$(NAME)` expands an earlier variable, as in a Pod."""
    value_from: EnvVarSource | None = None
    """A Secret's or ConfigMap's key instead of a literal value."""

    @pydantic.model_validator(mode="after")
    def _value_or_reference(self) -> "EnvVar":
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: value and valueFrom are exclusive: set one of them")
        return self


class Resources(_Schema):
    """CPU, memory and ephemeral storage, as a Pod's: requests reserve, limits cap."""

    requests: ResourceList = pydantic.Field(default_factory=ResourceList)
    """What the pod is scheduled with, e.g. `{cpu: 250m, memory: 256Mi}`."""
    limits: ResourceList = pydantic.Field(default_factory=ResourceList)
    """What the container may use at most; over its memory limit it is OOMKilled."""


class Container(_Schema):
    """The container a container Task runs, one pod per attempt: the subset of a Pod's container a task author chooses. The Queue chooses the rest (service account, node placement, pull secrets, security context, default and maximum resources)."""

    image: str = pydantic.Field(min_length=1, max_length=1024, pattern=IMAGE_PATTERN)
    """The image to run, e.g. `registry.example.com/team/report:1.4`. The Queue may restrict it to allowed prefixes. Required."""
    command: list[Annotated[str, pydantic.Field(max_length=32 * 1024)]] = pydantic.Field(
        default_factory=list, max_length=256)
    """The entrypoint (the image's when unset)."""
    args: list[Annotated[str, pydantic.Field(max_length=32 * 1024)]] = pydantic.Field(
        default_factory=list, max_length=1024)
    """Arguments to the entrypoint."""
    env: list[EnvVar] = pydantic.Field(default_factory=list, max_length=256)
    """Environment variables: literal values, or keys of Secrets and ConfigMaps in the Task's namespace."""
    resources: Resources = pydantic.Field(default_factory=Resources)
    """Requests and limits; what is unset comes from the Queue's podPolicy.defaultResources."""
    working_dir: str | None = pydantic.Field(default=None, min_length=1, max_length=4096, pattern=r"^/")
    """The working directory, an absolute path (the image's when unset)."""

    @pydantic.model_validator(mode="after")
    def _unique_env(self) -> "Container":
        # The CRD says so with a map-typed list (crd.py): the API server refuses a duplicate name.
        names = [var.name for var in self.env]
        if len(names) != len(set(names)):
            raise ValueError("spec.container.env names must be unique")
        return self


TYPE_OR_CONTAINER_MESSAGE = ("a Task runs a handler or a container: set exactly one of spec.type "
                             "(a handler's name) and spec.container (an image to run)")
PERMANENT_EXIT_CODES_MESSAGE = "spec.permanentExitCodes applies to container Tasks only: set spec.container, or drop it"


class TaskSpec(_Schema):
    """What to run and how. Immutable once created: delete and re-create the Task to change it."""

    type: str | None = pydantic.Field(default=None, min_length=1, max_length=253, pattern=_TYPE_PATTERN)
    """Name of the handler that runs this task (for example `echo`, `email`, or one of your own). Exactly one of type and container."""

    container: Container | None = None
    """A container to run instead of a handler: one pod per attempt, in the Task's namespace, with the queue's guarantees (priority, limits, retries, dead letter, history). Exactly one of type and container."""

    payload: dict[str, Any] = pydantic.Field(default_factory=dict)
    """Arguments for the handler (a container Task gets them as JSON in the KUBETASK_PAYLOAD variable): any JSON object, at most 64 KiB. Visible to anyone who can read Tasks: reference Secrets by name, never inline them."""

    permanent_exit_codes: list[Annotated[int, pydantic.Field(ge=1, le=255)]] = pydantic.Field(
        default_factory=list, max_length=32)
    """Container Tasks only: exit codes (1-255) that mean retrying is pointless; an attempt ending with one goes straight to DeadLetter. Other non-zero codes are retried."""

    queue: str = pydantic.Field(default="default", min_length=1, max_length=63, pattern=_QUEUE_PATTERN)
    """Worker pool that runs this task (a DNS label). Default `default`."""

    priority: int = pydantic.Field(default=0, ge=-1000, le=1000)
    """Higher runs first among due tasks of the same queue. Default 0."""

    max_retries: int = pydantic.Field(default=3, ge=0, le=100)
    """Retries after the first failed attempt: at most maxRetries + 1 attempts. Default 3."""

    backoff: Backoff = pydantic.Field(default_factory=Backoff)
    """Delay between attempts."""

    timeout_seconds: int | None = pydantic.Field(default=None, ge=1, le=86400)
    """An attempt running longer than this fails as a timeout (and is retried). Unset: no limit."""

    run_at: datetime.datetime | None = None
    """Do not start before this time (RFC 3339, e.g. 2026-01-02T15:04:05Z). Exclusive with delaySeconds."""

    delay_seconds: int | None = pydantic.Field(default=None, ge=0, le=31536000)
    """Do not start before this many seconds after admission. Exclusive with runAt."""

    ttl_seconds_after_finished: int | None = pydantic.Field(default=None, ge=0, le=31536000)
    """Delete the Task object this many seconds after it finished (Succeeded, DeadLetter or Cancelled). History stays in PostgreSQL. Unset: the operator's default (KUBETASK_DEFAULT_TTL_SECONDS_AFTER_FINISHED, 7 days unless set; 0 there keeps it)."""

    concurrency_key: str | None = pydantic.Field(default=None, min_length=1, max_length=MAX_CONCURRENCY_KEY_LENGTH,
                                                 pattern=CONCURRENCY_KEY_PATTERN)
    """Tasks of one queue that share this key (e.g. a customer id) run at most the Queue's concurrencyKeyLimit at a time; the others wait, spending no retries. At most 253 characters, no control characters. Unset: no key, no such limit."""

    managed_by: str | None = pydantic.Field(default=None, max_length=MAX_MANAGED_BY_LENGTH,
                                            pattern=MANAGED_BY_PATTERN)
    """The controller that runs this Task, a domain-prefixed path of at most 63 characters (e.g. `kubetask.io/team-a`): only the kubetask operator of that name (KUBETASK_MANAGED_BY) admits, mirrors, sweeps or deletes it; every other ignores it. Unset: the default operator's (`kubetask.io/operator`). Immutable."""

    @pydantic.model_validator(mode="after")
    def _one_schedule(self) -> "TaskSpec":
        if self.run_at is not None and self.delay_seconds is not None:
            raise ValueError("spec.runAt and spec.delaySeconds are exclusive: set one of them")
        if (self.type is None) == (self.container is None):
            raise ValueError(TYPE_OR_CONTAINER_MESSAGE)
        if self.permanent_exit_codes and self.container is None:
            raise ValueError(PERMANENT_EXIT_CODES_MESSAGE)
        return self

    @property
    def runs(self) -> str:
        """What ``spec.type`` says in PostgreSQL: the handler's name, or CONTAINER_TYPE."""
        return self.type if self.type is not None else CONTAINER_TYPE


class Phase(str, enum.Enum):
    """Where a Task is in its life. Mirrors the state of its row in PostgreSQL."""

    PENDING = "Pending"
    """Created, not yet admitted into PostgreSQL by the operator."""
    QUEUED = "Queued"
    """Admitted and waiting for a worker (or for its runAt)."""
    RUNNING = "Running"
    """A worker holds it and runs an attempt."""
    RETRYING = "Retrying"
    """The last attempt failed; the next one is due at nextAttemptAt."""
    SUCCEEDED = "Succeeded"
    """An attempt succeeded; status.result holds its result."""
    DEAD_LETTER = "DeadLetter"
    """Gave up: the attempt budget is spent or the error was permanent. Annotate kubetask.io/retry to run again."""
    CANCELLED = "Cancelled"
    """The Task was deleted before it finished."""

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.DEAD_LETTER, Phase.CANCELLED)


#: PostgreSQL state → phase (the state vocabulary lives in the migrations).
PHASE_BY_STATE: dict[str, Phase] = {
    "queued": Phase.QUEUED,
    "running": Phase.RUNNING,
    "retrying": Phase.RETRYING,
    "succeeded": Phase.SUCCEEDED,
    "dead_letter": Phase.DEAD_LETTER,
    "cancelled": Phase.CANCELLED,
}


class ErrorInfo(_Schema):
    """The error of a failed attempt."""

    type: str
    """Exception type, e.g. `ValueError`, `Timeout`, `LeaseExpired`, `PermanentError`."""
    message: str
    """Exception message, truncated to 2048 characters; the full traceback is kept in PostgreSQL (`kubetask history`)."""
    attempt: int | None = None
    """Attempt number that raised it."""


class AttemptRecord(_Schema):
    """One execution of the task."""

    number: int
    """Attempt number, 1-based, counted over the Task's whole life."""
    worker: str | None = None
    """Pod that ran it."""
    started_at: datetime.datetime | None = None
    """When the worker claimed it."""
    finished_at: datetime.datetime | None = None
    """When it ended; unset while running."""
    outcome: Literal["running", "succeeded", "failed", "timeout", "lost", "cancelled", "handed_back"]
    """running, succeeded, failed, timeout, lost (the worker vanished), cancelled, or handed_back (worker shut down)."""
    error: str | None = None
    """`Type: message` of a failed attempt."""
    exit_code: int | None = None
    """The container's exit code (Tasks with spec.container); unset for handler Tasks, and when the container never started (an image that cannot be pulled, say)."""
    reason: str | None = None
    """Why the container attempt ended, as Kubernetes reported it: Completed, Error, OOMKilled, DeadlineExceeded, Evicted, ErrImagePull… (Tasks with spec.container). `kubetask logs` shows its output."""


class Condition(_Schema):
    """A Kubernetes-style condition."""

    type: str
    """Condition type, e.g. `Admitted`, `Finished`."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """One CamelCase word saying why."""
    message: str = ""
    """Human-readable detail."""
    last_transition_time: datetime.datetime | None = None
    """When status last changed."""


class TaskStatus(_Schema):
    """What happened, mirrored by the operator from PostgreSQL. Never edit by hand."""

    phase: Phase | None = None
    """Pending, Queued, Running, Retrying, Succeeded, DeadLetter or Cancelled."""
    attempts: int = 0
    """Attempts started so far."""
    next_attempt_at: datetime.datetime | None = None
    """When the next attempt is due (Queued and Retrying)."""
    worker: str | None = None
    """Pod running (or that last ran) the task."""
    started_at: datetime.datetime | None = None
    """When the latest attempt started."""
    finished_at: datetime.datetime | None = None
    """When the task reached Succeeded, DeadLetter or Cancelled."""
    result: Any = None
    """The handler's return value (JSON), when at most 8 KiB; larger results stay in PostgreSQL and this says so."""
    last_error: ErrorInfo | None = None
    """The latest attempt's error."""
    history: list[AttemptRecord] = pydantic.Field(default_factory=list)
    """The last 10 attempts, oldest first; all attempts stay in PostgreSQL."""
    conditions: list[Condition] = pydantic.Field(default_factory=list)
    """Admitted, Finished, and why."""
    observed_generation: int | None = None
    """metadata.generation this status describes."""


class Task(_Schema):
    """A unit of work for kubetask: a handler name and its payload, run by a worker pool with retries."""

    api_version: Literal["kubetask.io/v1alpha1"] = "kubetask.io/v1alpha1"
    kind: Literal["Task"] = "Task"
    metadata: dict[str, Any] = pydantic.Field(default_factory=dict)
    spec: TaskSpec
    status: TaskStatus | None = None


# -- the Queue resource ------------------------------------------------------------------------


class SelectorOperator(str, enum.Enum):
    """How a selector requirement compares a namespace's label with its values."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


LabelValue = Annotated[str, pydantic.Field(max_length=MAX_LABEL_VALUE_LENGTH, pattern=LABEL_VALUE_PATTERN)]
"""A label value: empty, or at most 63 alphanumerics with ``-``, ``_`` and ``.`` inside."""


class LabelSelectorRequirement(_Schema):
    """One requirement on a label of the namespace: `key` `operator` `values`."""

    key: str = pydantic.Field(min_length=1, max_length=MAX_LABEL_KEY_LENGTH, pattern=LABEL_KEY_PATTERN)
    """The label key, e.g. `kubernetes.io/metadata.name` or `team`."""

    operator: SelectorOperator
    """In, NotIn, Exists or DoesNotExist."""

    values: list[LabelValue] = pydantic.Field(default_factory=list, max_length=MAX_SELECTOR_VALUES)
    """Label values: at least one for In and NotIn, none for Exists and DoesNotExist."""

    @pydantic.model_validator(mode="after")
    def _values_fit_the_operator(self) -> "LabelSelectorRequirement":
        needs_values = self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if needs_values and not self.values:
            raise ValueError(f"operator {self.operator.value} needs at least one value")
        if not needs_values and self.values:
            raise ValueError(f"operator {self.operator.value} takes no values")
        return self


class LabelSelector(_Schema):
    """A Kubernetes label selector over namespaces: every matchLabels pair and every matchExpressions requirement must hold. Empty (`{}`) matches every namespace."""

    match_labels: dict[str, LabelValue] = pydantic.Field(default_factory=dict, max_length=MAX_SELECTOR_LABELS)
    """Labels the namespace must have, with these values, e.g. `{team: payments}`."""

    match_expressions: list[LabelSelectorRequirement] = pydantic.Field(default_factory=list,
                                                                       max_length=MAX_SELECTOR_EXPRESSIONS)
    """Requirements on the namespace's labels, all of which must hold."""

    @pydantic.field_validator("match_labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        # The CRD says the same in a CEL rule (crd.QUEUE_MATCH_LABELS_RULES): OpenAPI cannot constrain map keys.
        for key in labels:
            if len(key) > MAX_LABEL_KEY_LENGTH or not re.match(LABEL_KEY_PATTERN, key):
                raise ValueError(f"{key!r} is not a label key")
        return labels

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a namespace with these labels is selected (Kubernetes' own semantics)."""
        if any(labels.get(key) != value for key, value in self.match_labels.items()):
            return False
        for requirement in self.match_expressions:
            present = requirement.key in labels
            value = labels.get(requirement.key)
            if requirement.operator is SelectorOperator.IN and not (present and value in requirement.values):
                return False
            if requirement.operator is SelectorOperator.NOT_IN and present and value in requirement.values:
                return False
            if requirement.operator is SelectorOperator.EXISTS and not present:
                return False
            if requirement.operator is SelectorOperator.DOES_NOT_EXIST and present:
                return False
        return True

    def describe(self) -> str:
        """The selector as ``kubectl`` writes one (``team=payments,env in (prod)``); ``<everything>`` when empty."""
        parts = [f"{key}={value}" for key, value in sorted(self.match_labels.items())]
        for requirement in self.match_expressions:
            if requirement.operator is SelectorOperator.EXISTS:
                parts.append(requirement.key)
            elif requirement.operator is SelectorOperator.DOES_NOT_EXIST:
                parts.append(f"!{requirement.key}")
            else:
                word = "in" if requirement.operator is SelectorOperator.IN else "notin"
                parts.append(f"{requirement.key} {word} ({','.join(requirement.values)})")
        return ",".join(parts) or "<everything>"


class RateLimit(_Schema):
    """At most `tasks` claims in any `periodSeconds` (a token bucket refilled evenly, on the database's clock), over every worker of the queue."""

    tasks: int = pydantic.Field(ge=1, le=1_000_000)
    """Claims allowed per period, at least 1; also the largest burst."""

    period_seconds: int = pydantic.Field(ge=1, le=86400)
    """Length of the period in seconds, 1 to 86400 (a day)."""


class Toleration(_Schema):
    """A taint the queue's pods tolerate, as a Pod's toleration."""

    key: str | None = pydantic.Field(default=None, max_length=MAX_LABEL_KEY_LENGTH, pattern=LABEL_KEY_PATTERN)
    """The taint's key; unset with operator Exists: every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Equal (the value must match) or Exists (any value). Default Equal."""
    value: str | None = pydantic.Field(default=None, max_length=MAX_LABEL_VALUE_LENGTH, pattern=LABEL_VALUE_PATTERN)
    """The taint's value, for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """The taint's effect; unset: every effect."""
    toleration_seconds: int | None = pydantic.Field(default=None, ge=0, le=31536000)
    """For NoExecute: how long the pod stays bound to a tainted node."""


class SeccompProfile(_Schema):
    """The seccomp profile of the queue's pods."""

    type: Literal["RuntimeDefault", "Unconfined"] = "RuntimeDefault"
    """RuntimeDefault (the container runtime's profile, what Pod Security's restricted level asks) or Unconfined."""


class PodSecurityContext(_Schema):
    """The pod-level security context of the queue's pods (what the task author may not choose)."""

    run_as_non_root: bool | None = None
    """True: the kubelet refuses to start a container whose image runs as root (uid 0)."""
    run_as_user: int | None = pydantic.Field(default=None, ge=0, le=2147483647)
    """The uid the containers run as (the image's when unset)."""
    run_as_group: int | None = pydantic.Field(default=None, ge=0, le=2147483647)
    """The primary gid the containers run as."""
    fs_group: int | None = pydantic.Field(default=None, ge=0, le=2147483647)
    """A supplementary group owning the pod's volumes."""
    seccomp_profile: SeccompProfile | None = None
    """The seccomp profile; unset: RuntimeDefault is written for you."""


class PodPolicy(_Schema):
    """What the cluster admin decides for every pod of a container Task of this queue. Task authors choose only image, command, args, env, resources (within maxResources) and workingDir."""

    service_account_name: str | None = pydantic.Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """The ServiceAccount the pods run as, which must exist in each Task's namespace. Unset: the namespace's `default`."""
    automount_service_account_token: bool = False
    """Mount the ServiceAccount's API token into the pods. Default false: a task pod has no Kubernetes credentials."""
    node_selector: dict[str, LabelValue] = pydantic.Field(default_factory=dict, max_length=MAX_SELECTOR_LABELS)
    """Labels a node must have to run the pods."""
    tolerations: list[Toleration] = pydantic.Field(default_factory=list, max_length=32)
    """Taints the pods tolerate."""
    default_resources: Resources = pydantic.Field(default_factory=Resources)
    """Requests and limits a Task's container gets for each resource it does not set itself."""
    max_resources: ResourceList = pydantic.Field(default_factory=ResourceList)
    """The most a Task's container may request or be limited to, per resource; a Task asking more goes to DeadLetter (ResourcesNotAllowed) without running."""
    image_pull_secrets: list[Annotated[str, pydantic.StringConstraints(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]] = pydantic.Field(default_factory=list, max_length=16)
    """Secrets (in each Task's namespace) the kubelet pulls the images with."""
    allowed_image_prefixes: list[Annotated[str, pydantic.StringConstraints(
        min_length=1, max_length=1024, pattern=IMAGE_PATTERN)]] = pydantic.Field(default_factory=list, max_length=64)
    """If set, a Task's image must start with one of these (e.g. `registry.example.com/team-a/`); any other goes to DeadLetter (ImageNotAllowed) without running. Unset: any image."""
    security_context: PodSecurityContext = pydantic.Field(default_factory=PodSecurityContext)
    """The pods' security context. Every task container also runs with allowPrivilegeEscalation false and all capabilities dropped."""
    active_deadline_seconds: int | None = pydantic.Field(default=None, ge=1, le=604800)
    """The longest any pod of the queue may run; a Task's own timeoutSeconds is capped by it."""
    priority_class_name: str | None = pydantic.Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """The PriorityClass of the pods (scheduling priority and preemption)."""

    @pydantic.field_validator("node_selector")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        return LabelSelector._label_keys(labels)

    def allows_image(self, image: str) -> bool:
        return not self.allowed_image_prefixes or any(image.startswith(p) for p in self.allowed_image_prefixes)


class QueueSpec(_Schema):
    """Who may submit to the queue and how its tasks are claimed. Limits hold across every worker, enforced in PostgreSQL when a task is claimed."""

    namespace_selector: LabelSelector = pydantic.Field(default_factory=LabelSelector)
    """Namespaces whose Tasks may use this queue, by their labels (e.g. `matchLabels: {kubernetes.io/metadata.name: team-a}`). A Task from any other namespace never runs: it is refused (phase DeadLetter, lastError QueueRefused, a Refused Event). Default `{}`: every namespace."""

    paused: bool = False
    """While true nothing new of this queue is claimed: running tasks finish, new Tasks keep queueing. Default false."""

    max_running: int | None = pydantic.Field(default=None, ge=1, le=100_000)
    """At most this many tasks of the queue run at once, over all its workers. Unset: no limit but the workers'."""

    rate_limit: RateLimit | None = None
    """At most rateLimit.tasks claims per rateLimit.periodSeconds. Unset: no rate limit."""

    concurrency_key_limit: int | None = pydantic.Field(default=None, ge=1, le=10_000)
    """At most this many tasks with the same spec.concurrencyKey run at once; the others wait, spending no retries. Tasks without a key are not limited. Unset: no limit."""

    pod_policy: PodPolicy = pydantic.Field(default_factory=PodPolicy)
    """How the pods of this queue's container Tasks are made: service account, placement, security context, images and resources allowed."""


class QueueStatus(_Schema):
    """The queue as PostgreSQL sees it, mirrored by the operator. Never edit by hand."""

    pending: int | None = None
    """Tasks queued and due, waiting for a worker."""
    running: int | None = None
    """Tasks running now."""
    retrying: int | None = None
    """Tasks waiting for their next attempt."""
    dead_letter: int | None = None
    """Tasks that gave up (kept until the history retention removes them)."""
    oldest_waiting_seconds: float | None = None
    """Seconds the longest-waiting due task has waited."""
    claimed_last_minute: int | None = None
    """Claims in the last 60 seconds."""
    conditions: list[Condition] = pydantic.Field(default_factory=list)
    """Why the queue is or is not claiming (e.g. Paused)."""
    observed_generation: int | None = None
    """metadata.generation this status describes."""


# -- TaskSchedule ---------------------------------------------------------------------------------

SCHEDULE_KIND = "TaskSchedule"
SCHEDULE_PLURAL = "taskschedules"
SCHEDULE_SINGULAR = "taskschedule"
SCHEDULE_SHORT_NAMES = ("kts",)
#: Label on every Task a schedule created: the schedule's name.
SCHEDULE_LABEL = f"{GROUP}/schedule"
#: Annotation on every Task a schedule created: the tick it runs for (RFC 3339, UTC).
TICK_ANNOTATION = f"{GROUP}/scheduled-at"
#: Annotation on a Task ``kubetask schedule trigger`` created from a schedule, outside its ticks: ``manual``
#: (CronJob's ``cronjob.kubernetes.io/instantiate: manual``). Such a Task has no TICK_ANNOTATION.
MANUAL_ANNOTATION = f"{GROUP}/instantiate"
MANUAL = "manual"
#: Longest schedule name: its Tasks carry it as a label value (63 at most), and are named
#: ``<schedule>-<unix minutes of the tick>``.
MAX_SCHEDULE_NAME_LENGTH = 63

#: CronJob's macros and the five fields each stands for.
CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def _cron_field(value: str) -> str:
    item = rf"([*]|({value})(-({value}))?)(/[1-9][0-9]*)?"
    return rf"{item}(,{item})*"


_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_DAYS = "SUN|MON|TUE|WED|THU|FRI|SAT"
#: Five cron fields (minute hour day-of-month month day-of-week) separated by spaces, each a list of
#: ``*``, values or ranges with an optional step, values within their field's bounds; or a macro.
#: Written without a backslash so the same text is an RE2 pattern in the CRD's CEL rule (inside a
#: CEL string literal) and a Python one here.
CRON_PATTERN = (
    "(?i)^(" + "|".join(re.escape(m) for m in CRON_MACROS) + "|"
    + " +".join(_cron_field(v) for v in (
        "[0-5]?[0-9]", "[01]?[0-9]|2[0-3]", "0?[1-9]|[12][0-9]|3[01]", f"0?[1-9]|1[0-2]|{_MONTHS}",
        f"[0-7]|{_DAYS}"))
    + ")$"
)
#: An IANA zone name's shape (``UTC``, ``Europe/Paris``, ``America/Argentina/Buenos_Aires``, ``Etc/GMT+5``).
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"


def cron_expression(schedule: str) -> str:
    """The five cron fields of ``schedule`` (a macro expanded); ValueError naming spec.schedule if invalid.

    The same pattern as the CRD's rule, then cronsim's full parse, which also refuses what no pattern
    sees (a day-of-month no month of the schedule has, such as ``0 0 30 2 *``).
    """
    text = schedule
    if not re.match(CRON_PATTERN, text):
        raise ValueError(f"spec.schedule {schedule!r} is not a cron schedule: five fields (minute hour "
                         "day-of-month month day-of-week) or a macro (@hourly, @daily, @weekly, @monthly, @yearly)")
    fields = CRON_MACROS.get(text.lower(), text)
    try:
        cronsim.CronSim(fields, datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
    except cronsim.CronSimError as err:
        raise ValueError(f"spec.schedule {schedule!r} never fires or is malformed: {err}") from None
    return fields


def time_zone(name: str) -> zoneinfo.ZoneInfo:
    """The zone of that IANA name; ValueError naming spec.timeZone if there is none."""
    if not re.match(TIME_ZONE_PATTERN, name):
        raise ValueError(f"spec.timeZone {name!r} is not an IANA time zone name (e.g. Europe/Paris, UTC)")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"spec.timeZone {name!r} is not a time zone of the IANA database "
                         "(e.g. Europe/Paris, America/New_York, UTC)") from None


class ConcurrencyPolicy(str, enum.Enum):
    """What a tick does while a Task of an earlier tick has not finished."""

    ALLOW = "Allow"
    """Create the new Task anyway: runs may overlap."""
    FORBID = "Forbid"
    """Skip the tick (recorded as skipped) while an earlier run is unfinished."""
    REPLACE = "Replace"
    """Delete the unfinished runs (deletion cancels them) and create the new one."""


class TaskScheduleSpec(_Schema):
    """When to create Tasks and what they run, with CronJob's conventions."""

    schedule: str = pydantic.Field(min_length=1, max_length=128)
    """When to create a Task: five cron fields, minute hour day-of-month month day-of-week (e.g. `*/15 * * * *`, `0 3 * * MON-FRI`), or a macro: @hourly, @daily (@midnight), @weekly, @monthly, @yearly (@annually). Read in timeZone. Required."""

    time_zone: str = pydantic.Field(default="UTC", min_length=1, max_length=64, pattern=TIME_ZONE_PATTERN)
    """IANA time zone the schedule is read in (e.g. `Europe/Paris`): a tick that a daylight-saving jump skips runs when the clock jumps, one it repeats runs once. Default `UTC`."""

    template: TaskSpec
    """The spec of each Task created, as a Task's spec (handler, payload, queue, retries, …), except runAt: a run starts at its tick (delaySeconds delays it). Required."""

    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW
    """What a tick does while an earlier run is unfinished: `Allow` (run both), `Forbid` (skip this tick) or `Replace` (delete the earlier run, which cancels it, and run this one). Default `Allow`."""

    starting_deadline_seconds: int | None = pydantic.Field(default=None, ge=1, le=31536000)
    """How late a tick may still run, in seconds (the operator was down, or the API server away): a later one is recorded as missed. Ticks missed in a row make one run at most, for the latest of them. Unset: the latest missed tick runs however late."""

    suspend: bool = False
    """True: no Task is created; ticks that pass while suspended never run, even after resuming. Runs already created are left alone. Default false."""

    successful_history_limit: int = pydantic.Field(default=3, ge=0, le=1000)
    """Succeeded Tasks of this schedule kept as objects; older ones are deleted (their history stays in PostgreSQL). Default 3."""

    failed_history_limit: int = pydantic.Field(default=1, ge=0, le=1000)
    """DeadLetter and Cancelled Tasks of this schedule kept as objects; older ones are deleted (their history stays in PostgreSQL). Default 1."""

    @pydantic.field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        cron_expression(value)
        return value

    @pydantic.field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        time_zone(value)
        return value

    @pydantic.model_validator(mode="after")
    def _starts_at_its_tick(self) -> "TaskScheduleSpec":
        if self.template.run_at is not None:
            raise ValueError("spec.template.runAt: a scheduled Task starts at its tick; use delaySeconds to delay it")
        return self


class TaskReference(_Schema):
    """A Task this schedule created."""

    name: str
    """The Task's name: `<schedule>-<unix minutes of its tick>`, or `<schedule>-manual-<unix seconds>` for a run `kubetask schedule trigger` made."""
    uid: str
    """The Task's metadata.uid."""


class TaskScheduleStatus(_Schema):
    """What the schedule did, written by the operator's leader. Never edit by hand."""

    last_schedule_time: datetime.datetime | None = None
    """The latest tick a Task was created for."""
    last_successful_time: datetime.datetime | None = None
    """When the latest of its Tasks that succeeded finished."""
    next_schedule_time: datetime.datetime | None = None
    """The next tick (unset while suspended or refused)."""
    active: list[TaskReference] = pydantic.Field(default_factory=list)
    """Its Tasks that have not finished."""
    active_count: int = 0
    """How many of its Tasks have not finished (the length of active), for `kubectl get taskschedules`."""
    missed: int = 0
    """Ticks that did not run because the operator could not create them in time (startingDeadlineSeconds, or several missed in a row), counted since the schedule was created."""
    conditions: list[Condition] = pydantic.Field(default_factory=list)
    """Scheduled: True while ticks are created; False with reason InvalidSchedule, InvalidTimeZone or Suspended, and a message naming the field."""
    observed_generation: int | None = None
    """metadata.generation this status describes."""


#: ``lastError.type`` (and the condition's reason) of a Task its Queue refuses: its namespace is not one the
#: Queue's namespaceSelector matches.
QUEUE_REFUSED = "QueueRefused"
#: The message of that refusal, a PostgreSQL ``format()`` template (the row is refused in SQL, at admission
#: or when the Queue or the namespace changes): 1 the namespace, 2 the Queue, 3 its selector (JSON), 4 the Task.
QUEUE_REFUSAL_MESSAGE = (
    "Queue %2$s does not admit Tasks from namespace %1$s: its spec.namespaceSelector %3$s does not match the "
    "namespace's labels, so this Task never runs. The cluster admin can label namespace %1$s to match, or widen "
    "spec.namespaceSelector of Queue %2$s (kubectl edit queue %2$s); then "
    "`kubectl annotate task %4$s " + RETRY_ANNOTATION + "=$(date +%%s) --overwrite` runs it.")
#: The message of a Task naming a queue that has no Queue object when the operator requires one
#: (``KUBETASK_REQUIRE_QUEUE``): the same ``format()`` arguments as ``QUEUE_REFUSAL_MESSAGE`` (3 unused).
QUEUE_MISSING_MESSAGE = (
    "Queue %2$s does not exist, and this operator runs only Tasks whose queue has a Queue object "
    "(KUBETASK_REQUIRE_QUEUE=true, chart value operator.requireQueue), so this Task never runs. The cluster "
    "admin can create Queue %2$s (a cluster-scoped kubetask.io/v1alpha1 Queue, e.g. from the chart's "
    "pools[].queueSpec) admitting namespace %1$s, or the Task can name a queue that exists (kubectl get queues); "
    "then `kubectl annotate task %4$s " + RETRY_ANNOTATION + "=$(date +%%s) --overwrite` runs it.")


class Queue(_Schema):
    """A queue of kubetask Tasks, owned by the cluster admin: which namespaces may submit to it, whether it is paused, and how many of its tasks may run, how fast."""

    api_version: Literal["kubetask.io/v1alpha1"] = "kubetask.io/v1alpha1"
    kind: Literal["Queue"] = "Queue"
    metadata: dict[str, Any] = pydantic.Field(default_factory=dict)
    spec: QueueSpec = pydantic.Field(default_factory=QueueSpec)
    status: QueueStatus | None = None


class TaskSchedule(_Schema):
    """Creates a Task from a template on a cron schedule, each tick once (claimed in PostgreSQL), with CronJob's conventions.

    Refused at ``kubectl apply`` by the API server (OpenAPI and CEL rules, ``crd.py``): unknown
    fields, a template the Task schema refuses, a template with runAt, a bad concurrencyPolicy or
    limit, a name over 63 characters, a schedule that is not five cron fields within their bounds (or
    a macro), a timeZone that is not shaped like an IANA name. What only Python can check is the
    operator's: a schedule that never fires (``0 0 30 2 *``) and a zone name the IANA database does
    not know (``Mars/Olympus``). The leader refuses such a schedule visibly, creating nothing: the
    Scheduled condition is False naming the field, with a Warning Event.
    """

    api_version: Literal["kubetask.io/v1alpha1"] = "kubetask.io/v1alpha1"
    kind: Literal["TaskSchedule"] = "TaskSchedule"
    metadata: dict[str, Any] = pydantic.Field(default_factory=dict)
    spec: TaskScheduleSpec
    status: TaskScheduleStatus | None = None
