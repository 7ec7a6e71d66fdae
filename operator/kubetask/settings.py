"""Settings: one small model per concern, read from environment variables.

Each field's docstring gives its unit, default and why; pydantic turns the
docstrings into descriptions (``use_attribute_docstrings``). A field is read
from ``KUBETASK_<FIELD NAME IN CAPITALS>`` unless it names another variable in
its ``json_schema_extra={"env": ...}`` (``DATABASE_URL``, ``POD_NAME``).
``from_env`` reports a bad value by the variable's name, since that is what
the user wrote.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import socket
from collections.abc import Mapping
from typing import Any, Literal, Self

import psycopg.conninfo
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from kubetask import model

ENV_PREFIX = "KUBETASK_"
DEFAULT_SECRETS_DIR = pathlib.Path("/var/run/secrets/kubetask")
"""Where the chart mounts a pool's ``secrets``: ``<dir>/<secret name>/<key>``."""
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def _comma_list(value: Any) -> Any:
    """``a, b,,c`` (how a list is written in an environment variable) → ``["a", "b", "c"]``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SettingsError(ValueError):
    """An environment variable holds a value the settings refuse."""


class _EnvSettings(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, frozen=True, extra="forbid")

    @classmethod
    def env_name(cls, field: str) -> str:
        extra = cls.model_fields[field].json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("env"), str):
            return str(extra["env"])
        return ENV_PREFIX + field.upper()

    @classmethod
    def _secret(cls, field: str) -> bool:
        extra = cls.model_fields[field].json_schema_extra
        return isinstance(extra, dict) and extra.get("secret") is True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Build from ``environ`` (default ``os.environ``); unset variables keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in cls.model_fields:
            name = cls.env_name(field)
            if name in environ:
                values[field] = environ[name]
        try:
            return cls.model_validate(values)
        except pydantic.ValidationError as error:
            problems = []
            for item in error.errors():
                field = str(item["loc"][0]) if item["loc"] else ""
                variable = cls.env_name(field) if field in cls.model_fields else cls.__name__
                shown = "<hidden>" if field in cls.model_fields and cls._secret(field) else repr(environ.get(variable, ""))
                if variable not in environ:
                    shown = "<unset>"
                problems.append(f"{variable}={shown}: {item['msg']}")
            raise SettingsError("invalid environment: " + "; ".join(problems)) from None


class DatabaseSettings(_EnvSettings):
    url: str = Field(json_schema_extra={"env": "DATABASE_URL", "secret": True})
    """PostgreSQL connection URL (``postgresql://user:password@host:port/db``), from ``DATABASE_URL``.
    Required: there is no sensible default for where the queue lives."""

    wait_seconds: float = Field(default=60.0, ge=0, json_schema_extra={"env": "KUBETASK_DATABASE_WAIT_SECONDS"})
    """Seconds the operator and workers wait at start for PostgreSQL to accept a connection before
    exiting 1 with a message naming the host and what to check (``KUBETASK_DATABASE_WAIT_SECONDS``).
    Default 60: rides out a database started alongside kubetask; a wrong host or password then shows
    as CrashLoopBackOff with the reason in the logs. Outages after start are retried for ever."""

    @pydantic.field_validator("url")
    @classmethod
    def _parseable(cls, value: str) -> str:
        try:
            psycopg.conninfo.conninfo_to_dict(value)
        except psycopg.ProgrammingError:
            # psycopg's message quotes the string, which may hold a password: say what is expected instead.
            raise ValueError("not a PostgreSQL connection URL; expected postgresql://USER:PASSWORD@HOST:5432/DATABASE"
                             ) from None
        return value


class LogSettings(_EnvSettings):
    """How every kubetask process writes its log lines (``kubetask.logs``)."""

    format: Literal["json", "text"] | None = Field(default=None, json_schema_extra={"env": "KUBETASK_LOG_FORMAT"})
    """``json`` (one object per line: ts, level, logger, message, and the task it is about) or
    ``text`` (one line for a person) (``KUBETASK_LOG_FORMAT``). Default unset: json for
    ``kubetask operator`` and ``kubetask worker``, whose output a log pipeline reads in a
    container, text for the other commands, which a person reads; ``make dev`` sets text."""

    level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", json_schema_extra={"env": "KUBETASK_LOG_LEVEL"})
    """Lowest level written (``KUBETASK_LOG_LEVEL``; ``kubetask --log-level`` overrides it). Default
    info: one line per attempt and per state change worth knowing, nothing per watch event."""

    @pydantic.field_validator("format", "level", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class WorkerSettings(_EnvSettings):
    queue: str = "default"
    """Queue this worker pool serves (``KUBETASK_QUEUE``). Default ``default``, the queue a Task
    gets when its spec names none."""

    concurrency: int = Field(default=4, ge=1, le=1000)
    """Tasks one worker process runs at once (``KUBETASK_CONCURRENCY``). Default 4: handlers are
    mostly I/O-bound; raise it for I/O-heavy handlers, lower it to 1 for CPU-bound ones."""

    poll_interval_seconds: float = Field(default=2.0, gt=0)
    """Seconds between claims when no notification arrives (``KUBETASK_POLL_INTERVAL_SECONDS``).
    Default 2: NOTIFY wakes the worker at once, polling is the guarantee (delayed tasks that become
    due, notifications lost across a reconnect), so this bounds that latency."""

    lease_seconds: float = Field(default=30.0, gt=0)
    """Seconds a claim is leased for before the rescuer may take it back (``KUBETASK_LEASE_SECONDS``).
    Default 30: long enough to ride out a slow database, short enough that a dead pod's task is
    retried within a minute."""

    heartbeat_interval_seconds: float = Field(default=10.0, gt=0)
    """Seconds between lease renewals (``KUBETASK_HEARTBEAT_INTERVAL_SECONDS``). Default 10, a third
    of the lease, so two renewals can fail before the lease runs out."""

    handler_modules: list[str] = Field(default_factory=list, json_schema_extra={"env": "KUBETASK_HANDLERS"})
    """Modules to import at start-up for their handlers, comma-separated (``KUBETASK_HANDLERS``).
    Default none: only the ``kubetask.handlers`` entry points are loaded, so every handler name is the
    user's; ``kubetask.demo`` adds the demo handlers (``echo``, ``email`` …) for trying kubetask out."""

    pod_name: str = Field(default_factory=socket.gethostname, min_length=1,
                          json_schema_extra={"env": "POD_NAME"})
    """Name of this worker's pod (``POD_NAME``, set from the downward API), recorded on every attempt
    and used by the operator to spare busy pods at scale-in. Default: the hostname, which is the pod
    name in Kubernetes anyway."""

    shutdown_timeout_seconds: float = Field(default=20.0, ge=0)
    """Seconds running tasks may take to finish after SIGTERM before they are handed back to the
    queue (``KUBETASK_SHUTDOWN_TIMEOUT_SECONDS``). Default 20: it must stay below the pod's
    terminationGracePeriodSeconds (default 30) to leave time for the hand-back."""

    max_result_bytes: int = Field(default=65_536, ge=2)
    """Largest result, in bytes of JSON, a handler may return (``KUBETASK_MAX_RESULT_BYTES``).
    Default 64 KiB: the result is mirrored into the Task status, stored in etcd; put bigger
    results in object storage and return a reference."""

    max_memory_mb: int | None = Field(default=None, ge=16)
    """Resident memory, in MiB, above which the worker recycles itself (``KUBETASK_MAX_MEMORY_MB``):
    after the task that crossed it, it stops claiming, lets running tasks finish (or hands them back)
    and exits 0, so the pod restarts it with fresh memory. Default unset: handlers that leak (caches
    that never evict, C extensions) would otherwise grow until the OOM killer ends the pod mid-task.
    Set it below the container's memory limit."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus endpoint ``http://ADDRESS:PORT/metrics`` (``KUBETASK_METRICS_PORT``);
    0 takes any free port and logs it. Default unset: no endpoint, since several workers on one host
    (the dev harness, a benchmark) would clash on a fixed port; the chart sets 9090 on every pod."""

    metrics_address: pydantic.IPvAnyAddress = Field(default=LOOPBACK)
    """Address the Prometheus endpoint listens on (``KUBETASK_METRICS_ADDRESS``). Default
    ``127.0.0.1``: the endpoint has no authentication, so a process started by hand shows its
    metrics to its own host only; the chart sets ``0.0.0.0`` (``metrics.address``) so Prometheus
    can scrape the pod, and its NetworkPolicy decides who may."""

    secrets_dir: pathlib.Path = DEFAULT_SECRETS_DIR
    """Directory where the pool's Secrets are mounted, one subdirectory per Secret, read by handlers
    through ``ctx.secret(name, key)`` (``KUBETASK_SECRETS_DIR``). Default ``/var/run/secrets/kubetask``,
    where the chart mounts a pool's ``secrets``."""

    max_timeout_seconds: float = Field(default=86_400.0, gt=0)
    """Longest any attempt may run on this pool, in seconds (``KUBETASK_MAX_TIMEOUT_SECONDS``): it caps
    a Task's ``timeoutSeconds`` and bounds a Task that sets none, and the attempt's error says when it
    was this cap that ended it. Default 86400 (a day): a Task without a timeout, or a handler that
    hangs, cannot hold a slot for ever, yet no plausible batch job is cut short by an upgrade; set it
    to the longest your pool's handlers should ever take."""

    loop_lag_warning_seconds: float = Field(default=1.0, gt=0)
    """Seconds the worker's event loop may go without running before a warning names the tasks
    running on it and where the loop is stuck (``KUBETASK_LOOP_LAG_WARNING_SECONDS``). Default 1: an
    async handler that blocks (``time.sleep``, blocking I/O, long CPU work without ``await``) stalls
    every other task of the process; leases are renewed from a thread of their own meanwhile."""

    health_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the liveness endpoint ``http://ADDRESS:PORT/healthz`` (``KUBETASK_HEALTH_PORT``), served
    from the heartbeat's thread: 200 while the claim loop, the event loop and the heartbeat come round,
    503 naming the one that is stuck. 0 takes any free port and logs it. Default unset: no endpoint,
    since several workers on one host (the dev harness, a benchmark) would clash on a fixed port."""

    health_address: pydantic.IPvAnyAddress = Field(default=LOOPBACK)
    """Address the liveness endpoint listens on (``KUBETASK_HEALTH_ADDRESS``). Default ``127.0.0.1``: a
    process started by hand answers its own host only; the chart sets ``0.0.0.0``, since the kubelet
    probes the pod's address."""

    liveness_stall_seconds: float = Field(default=60.0, gt=0)
    """Seconds the claim loop, the event loop or the heartbeat may go without coming round before
    ``/healthz`` answers 503 (``KUBETASK_LIVENESS_STALL_SECONDS``). Default 60: far above their normal
    period (the poll and heartbeat intervals), so only a stuck worker fails its probe. A claim loop
    waiting for an unreachable PostgreSQL is not stuck: restarting the pod cannot fix that."""

    _split_modules = pydantic.field_validator("handler_modules", mode="before")(_comma_list)

    @pydantic.model_validator(mode="after")
    def _intervals_fit(self) -> Self:
        if self.heartbeat_interval_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_interval_seconds ({self.heartbeat_interval_seconds}) must be shorter than "
                f"lease_seconds ({self.lease_seconds}), or leases expire between renewals; "
                "a third of the lease is a good value"
            )
        slowest = max(self.poll_interval_seconds, self.heartbeat_interval_seconds)
        if self.liveness_stall_seconds <= slowest:
            raise ValueError(
                f"KUBETASK_LIVENESS_STALL_SECONDS ({self.liveness_stall_seconds}) must be longer than the "
                f"poll and heartbeat intervals ({slowest}), or a healthy worker fails its liveness probe "
                "between two rounds; several times the longer of them is a good value"
            )
        return self


class OperatorSettings(_EnvSettings):
    """The operator's knobs. ``database`` is read from ``DATABASE_URL`` by ``from_env``."""

    database: DatabaseSettings = Field(default=None, validate_default=False)  # type: ignore[assignment]
    """Where the queue lives (``DATABASE_URL``)."""

    managed_by: str = Field(default=model.DEFAULT_MANAGED_BY, max_length=model.MAX_MANAGED_BY_LENGTH,
                            pattern=model.MANAGED_BY_PATTERN)
    """This operator's name (``KUBETASK_MANAGED_BY``): it serves only the Tasks whose ``spec.managedBy``
    is this name, and, when it is the default ``kubetask.io/operator``, the Tasks that set none. Every
    other Task is another controller's: not admitted, mirrored, swept or deleted. A domain-prefixed
    path of at most 63 characters. Default ``kubetask.io/operator``; give each release sharing a
    cluster (and namespaces) a name of its own, and its own database."""

    pod_namespace: str = Field(default="", json_schema_extra={"env": "POD_NAMESPACE"})
    """The operator's own namespace (``POD_NAMESPACE``, from the downward API in the chart): with
    ``managed_by`` it is the release's identity, recorded in the database it owns, so a second release
    pointed at the same database (even one of the same name) refuses to start. Default empty (an
    operator run by hand)."""

    namespaces: list[str] = Field(default_factory=list)
    """Namespaces whose Tasks and worker pools the operator serves, comma-separated
    (``KUBETASK_NAMESPACES``). Default empty: the whole cluster."""

    leader_poll_seconds: float = Field(default=1.0, gt=0)
    """Seconds between a standby replica's attempts to take leadership, and between the leader's
    checks that it still holds it (``KUBETASK_LEADER_POLL_SECONDS``). Default 1: a standby takes over
    about a second after the leader's database session ends."""

    liveness_endpoint: str | None = None
    """kopf liveness endpoint, e.g. ``http://0.0.0.0:8080/healthz`` (``KUBETASK_LIVENESS_ENDPOINT``).
    Default none."""

    api_concurrency: int = Field(default=16, ge=1, le=256)
    """Kubernetes API requests in flight at once (``KUBETASK_API_CONCURRENCY``). Default 16: enough
    to mirror a few hundred statuses a second without crowding the API server."""

    admit_batch_size: int = Field(default=500, ge=1)
    """Most Tasks admitted in one INSERT (``KUBETASK_ADMIT_BATCH_SIZE``). Default 500."""

    admit_batch_window_seconds: float = Field(default=0.005, ge=0)
    """Seconds to wait for more new Tasks before inserting a batch (``KUBETASK_ADMIT_BATCH_WINDOW_SECONDS``).
    Default 5 ms: a burst goes in a few round trips, a single Task is barely delayed."""

    admission_queue_size: int = Field(default=10_000, ge=1)
    """Most new Task bodies the operator holds in memory waiting for admission
    (``KUBETASK_ADMISSION_QUEUE_SIZE``). Past it only a reference to each is kept and its body read
    again when its turn comes, so a burst of large Tasks cannot exhaust the operator's memory and none
    is lost. Default 10000."""

    mirror_batch_size: int = Field(default=500, ge=1)
    """Most rows mirrored into Task statuses per round (``KUBETASK_MIRROR_BATCH_SIZE``). Default 500."""

    poll_interval_seconds: float = Field(default=1.0, gt=0)
    """Seconds between checks of the outbox when no NOTIFY arrives (``KUBETASK_POLL_INTERVAL_SECONDS``).
    Default 1: NOTIFY is the fast path, this bounds the delay if one is lost."""

    scale_interval_seconds: float = Field(default=1.0, gt=0)
    """Seconds between scaling decisions without an enqueue notification (``KUBETASK_SCALE_INTERVAL_SECONDS``).
    Default 1: also how promptly a cooldown that ran out scales a pool in."""

    rescue_interval_seconds: float = Field(default=5.0, gt=0)
    """Seconds between searches for expired leases (``KUBETASK_RESCUE_INTERVAL_SECONDS``). Default 5,
    so a dead worker's task is retried within lease + 5 s."""

    cleaner_interval_seconds: float = Field(default=5.0, gt=0)
    """Seconds between deletions of finished Tasks whose ttlSecondsAfterFinished ran out
    (``KUBETASK_CLEANER_INTERVAL_SECONDS``). Default 5."""

    default_ttl_seconds_after_finished: int = Field(default=604_800, ge=0, le=31_536_000)
    """Seconds after it finished that a Task which sets no ``ttlSecondsAfterFinished`` of its own is
    deleted (``KUBETASK_DEFAULT_TTL_SECONDS_AFTER_FINISHED``), so finished Task objects do not pile up
    in etcd; the history stays in PostgreSQL (``kubetask history``). Applied at admission: Tasks
    admitted before the setting keep what they had. Default 604800 (7 days); 0: no default, finished
    Tasks without a TTL of their own are kept until someone deletes them (the behaviour before). A
    Task that wants to stay sets a long TTL of its own (at most a year)."""

    @property
    def default_ttl(self) -> int | None:
        """The TTL admission gives a Task that sets none; None: keep it."""
        return self.default_ttl_seconds_after_finished or None

    history_retention_days: float | None = Field(default=None, gt=0)
    """Days a finished task's history (its row and attempts) is kept in PostgreSQL after it finished
    (``KUBETASK_HISTORY_RETENTION_DAYS``; fractions allowed, 0.5 = 12 hours). Default unset: keep it
    for ever, because deleting history cannot be undone and an upgrade must not start doing it
    unasked. A Task object that still exists keeps its status; a row waiting for its Task's
    ttlSecondsAfterFinished deletion stays until that deletion."""

    history_keep_last: int | None = Field(default=None, ge=1)
    """Keep at most this many finished tasks in PostgreSQL, the most recently finished, counted over
    all queues and namespaces (``KUBETASK_HISTORY_KEEP_LAST``): a cap on the table's size whatever the
    rate. Default unset: no cap. With both retention settings, a task goes when either rule says so."""

    history_retention_interval_seconds: float = Field(default=60.0, gt=0)
    """Seconds between retention passes of the leader (``KUBETASK_HISTORY_RETENTION_INTERVAL_SECONDS``).
    Default 60: history is measured in days; a pass deletes everything due in batches."""

    history_retention_batch_size: int = Field(default=5_000, ge=1, le=100_000)
    """Most finished tasks deleted by one statement, each its own short transaction
    (``KUBETASK_HISTORY_RETENTION_BATCH_SIZE``). Default 5,000: a batch holds its row locks for
    tens of milliseconds, so retention never stalls workers or the mirror."""

    queue_resync_seconds: float = Field(default=60.0, gt=0)
    """Seconds between passes that compare every Queue object with its row in PostgreSQL even when no watch
    event came (``KUBETASK_QUEUE_RESYNC_SECONDS``). Default 60: a LIST of Queues and one of namespaces each
    time; events wake it at once, so this only bounds what a missed event costs."""

    require_queue: bool = False
    """Run only Tasks whose queue has a Queue object (``KUBETASK_REQUIRE_QUEUE``): deny by default. A Task
    naming a queue with no Queue is refused as one from a namespace its Queue does not admit (phase
    DeadLetter, lastError QueueRefused naming the missing Queue and the fix, a Refused Event), at admission
    or, when its Queue is deleted while it waits, by the leader's next pass over the Queues. Default false:
    a queue without a Queue object is open to every namespace and unlimited, as before Queues existed."""

    queue_status_interval_seconds: float = Field(default=10.0, gt=0)
    """Seconds between the leader's passes that mirror each Queue's counts from PostgreSQL into its
    status (``KUBETASK_QUEUE_STATUS_INTERVAL_SECONDS``). Default 10: ``kubectl get queues`` is at most
    that stale, and a pass costs one LIST of Queues, three counting queries and a PATCH only for a
    Queue whose status changed, so the API server sees at most one write per Queue per interval."""

    container_tasks: bool = True
    """Run container Tasks (``KUBETASK_CONTAINER_TASKS``; chart ``operator.containerTasks``): the leader
    creates a pod per attempt in the Task's namespace, which needs pods create/delete/list/watch and
    pods/log get there. false: container Tasks are refused at admission (DeadLetter, with why), and the
    operator never touches pods but for its worker pools'. Default true."""

    container_max_pods: int = Field(default=200, ge=1, le=100_000)
    """Most container-Task pods the leader keeps in flight at once, over every queue
    (``KUBETASK_CONTAINER_MAX_PODS``). Default 200; a Queue's maxRunning bounds its own queue's below
    that. The leader's memory and API calls follow this, not how many Tasks wait."""

    container_lease_seconds: float = Field(default=60.0, gt=0)
    """Lease the leader holds on each running container attempt, renewed every pass
    (``KUBETASK_CONTAINER_LEASE_SECONDS``). Default 60: a new leader adopts the running pods well within
    it; if no leader renews it (none for that long), the attempt is rescued as lost and retried."""

    container_start_timeout_seconds: float = Field(default=120.0, gt=0)
    """How long a task pod may wait on an image or container-configuration problem (ErrImagePull,
    ImagePullBackOff, InvalidImageName, CreateContainerConfigError…) before its attempt fails with that
    reason (``KUBETASK_CONTAINER_START_TIMEOUT_SECONDS``). Default 120."""

    container_pass_seconds: float = Field(default=2.0, gt=0)
    """Longest wait between the container service's passes (``KUBETASK_CONTAINER_PASS_SECONDS``); new
    Tasks and pod changes wake it at once. Default 2."""

    keep_failed_pods_seconds: float = Field(default=0.0, ge=0)
    """How long a failed task pod is kept after its outcome is recorded, for ``kubectl describe`` and
    debugging (``KUBETASK_KEEP_FAILED_PODS_SECONDS``). Default 0: deleted at once (its exit code, reason
    and last 64 KiB of log are in the history). Succeeded pods are always deleted."""

    orphan_sweep_seconds: float = Field(default=60.0, gt=0)
    """Seconds between sweeps that cancel tasks whose Task object was deleted while the operator was
    down (``KUBETASK_ORPHAN_SWEEP_SECONDS``). Default 60: one LIST of Tasks each time."""

    schedule_interval_seconds: float = Field(default=10.0, gt=0)
    """Longest wait between the scheduler's passes over the TaskSchedules
    (``KUBETASK_SCHEDULE_INTERVAL_SECONDS``). It wakes at each schedule's next tick anyway; this
    bounds how long a new, edited or resumed schedule waits to be seen. Default 10: a LIST of
    TaskSchedules and one of their Tasks each pass."""

    refused_ttl_seconds: float = Field(default=3600.0, ge=0)
    """Seconds a Task refused at admission (status reason ``InvalidSpec``) is kept before the operator
    deletes it (``KUBETASK_REFUSED_TTL_SECONDS``), judged by the orphan sweep. Default 3600: time to
    read why with ``kubectl describe``; a refused object (up to ~1.5 MiB) never fills etcd."""

    admission_events: bool = True
    """Post an ``Admitted`` Event on every Task (``KUBETASK_ADMISSION_EVENTS``). Default true; set false to
    save one API write per Task at high rates (Retrying and DeadLetter Events are always posted)."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus endpoint ``http://ADDRESS:PORT/metrics`` (``KUBETASK_METRICS_PORT``),
    apart from kopf's liveness endpoint; 0 takes any free port and logs it. Default unset: no endpoint;
    the chart sets 9090."""

    metrics_address: pydantic.IPvAnyAddress = Field(default=LOOPBACK)
    """Address the Prometheus endpoint listens on (``KUBETASK_METRICS_ADDRESS``). Default
    ``127.0.0.1``, as for the workers: no authentication, so only the host unless asked; the chart
    sets ``0.0.0.0`` and a NetworkPolicy."""

    pool_namespaces: list[str] = Field(default_factory=list)
    """Namespaces where Deployments labelled ``kubetask.io/pool`` are worker pools the operator
    discovers and scales, comma-separated (``KUBETASK_POOL_NAMESPACES``). Default empty: the
    namespaces of ``KUBETASK_NAMESPACES``, or the whole cluster when that is empty. The chart sets the
    release namespace (plus ``operator.poolNamespaces``), so its Roles can confine ``patch pods`` and
    ``deployments/scale`` there: Tasks come from every namespace, pools only from where they belong."""

    _split_namespaces = pydantic.field_validator("namespaces", "pool_namespaces", mode="before")(_comma_list)

    @property
    def pool_scope(self) -> list[str]:
        """Namespaces whose pools are discovered: ``pool_namespaces``, else ``namespaces``; empty = all."""
        return list(dict.fromkeys(self.pool_namespaces or self.namespaces))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        environ = os.environ if environ is None else environ
        database = DatabaseSettings.from_env(environ)
        base = super().from_env({k: v for k, v in environ.items() if k != cls.env_name("database")})
        return base.model_copy(update={"database": database})
