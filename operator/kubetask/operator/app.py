"""The kopf application: the only module that imports kopf.

kopf only *watches*: Tasks, and Queues and namespaces (whose events only
wake the queues service, which lists them itself). The worker-pool Deployments are
followed by ``pools``, in the pool namespaces alone. Its handlers are
``on.event`` handlers, which keep no state on the objects (no progress
annotations, no finalizers), so kopf itself adds no write per Task; what an
event means is decided in ``watch``. Start-up migrates the schema, builds the
``Runtime``, keeps it in kopf's memo for the handlers (no module global) and
starts the services (``services``); shut-down stops them.

``main`` is ``kubetask operator``: it waits a bounded time for PostgreSQL
before kopf starts, because kopf would retry a failing start-up handler for
ever, silently to ``kubectl get pods``; exiting instead shows as
CrashLoopBackOff with the reason in the log.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import kopf
import psycopg

from kubetask import db, kube, metrics, model, settings
from kubetask.operator import scrape, services, watch
from kubetask.operator.runtime import Runtime, ours

log = logging.getLogger("kubetask.operator")

JSON_NESTING = 25_000
"""Recursion limit of the operator process. Python's json decoder counts one level per nested object
against it (1,000 by default), and the API server stores objects nested far deeper (it accepted 5,000
levels here; its own JSON limit is 10,000): one such Task would kill kopf's watch stream, and with it
every tenant's admission. Admission then refuses the Task by name (``model.MAX_PAYLOAD_DEPTH``)."""


class _NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: kopf deep-copies every object on every watch event to diff it against the last
    handled state, which only on.create/update/delete/resume handlers read. kubetask has only on.event
    handlers, and that copy was a measurable share of the operator's CPU in a burst (py-spy), so there
    is nothing to build, store or fetch."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = _settings()
    settings.posting.enabled = False  # kopf would post an Event per log line: extra writes per Task
    # kopf logs "Handler 'task_event' succeeded." at INFO for every watch event of every Task: a log
    # line (and its formatting) per event, a measurable share of the operator's CPU in a burst.
    # Warnings and errors about objects still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.queueing.idle_timeout = 30
    settings.persistence.diffbase_storage = _NoDiffBase()
    try:
        await prepare_database(config)
    except db.release.DatabaseInUse as err:
        raise kopf.PermanentError(str(err)) from None
    rt = Runtime(config=config, kube=kube.Kube(max_concurrency=config.api_concurrency))
    if config.metrics_port is not None:
        try:
            rt.metrics_endpoint = await metrics.serve(rt.meters.registry, config.metrics_port,
                                                      host=str(config.metrics_address),
                                                      before_scrape=lambda: scrape.refresh(rt))
        except metrics.EndpointError as err:
            raise kopf.PermanentError(str(err)) from None
    services.start(rt)
    memo.runtime = rt
    log.info("kubetask operator started; waiting for leadership")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime | None = memo.get("runtime")
    if rt is None:
        return
    await rt.close()
    log.info("stopped after %d Kubernetes API writes", rt.kube.writes)


async def prepare_database(config: settings.OperatorSettings) -> None:
    """Migrate the schema and claim the database for this release (``db.release.DatabaseInUse`` if another has)."""
    async with await db.connection.connect(config.database.url) as conn:
        applied = await db.schema.migrate(conn)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        me = await db.roles.whoami(conn)
        if me.superuser:
            log.warning("the operator connects to PostgreSQL as %s, a superuser of the whole server; it needs only "
                        "to own kubetask's database: connect as a role that owns it (README: Least privilege)",
                        me.role)
        owner = await db.release.claim(conn, config.managed_by, config.pod_namespace)
        log.info("serving Tasks managed by %s; the database belongs to this release (%s)", config.managed_by, owner)


def _settings() -> settings.OperatorSettings:
    return settings.OperatorSettings.from_env()


def _ours(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    """kopf's filter: a Task another controller owns (``spec.managedBy``) reaches no handler."""
    return ours(memo.runtime.config, body)


@kopf.on.event(model.GROUP, model.VERSION, model.PLURAL, when=_ours)
async def task_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    try:
        await watch.on_task_event(memo.runtime, event.get("type"), dict(body))
    except psycopg.OperationalError as err:
        raise kopf.TemporaryError(f"PostgreSQL unreachable: {err}", delay=5) from None


@kopf.on.event(model.GROUP, model.VERSION, model.QUEUE_PLURAL)
async def queue_event(memo: kopf.Memo, **_: Any) -> None:
    """A Queue changed: the queues service (the leader's) compares its row again."""
    memo.runtime.queues_wake.set()


@kopf.on.event("", "v1", "namespaces")
async def namespace_event(memo: kopf.Memo, **_: Any) -> None:
    """A namespace changed (its labels, say): the Queues' selectors may match it differently now."""
    memo.runtime.queues_wake.set()


def main() -> int:
    """``kubetask operator``: wait for PostgreSQL, then run kopf until stopped; the exit status."""
    try:
        config = _settings()
    except (settings.SettingsError, ValueError) as err:
        print(f"kubetask operator: bad configuration: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(db.connection.wait_until_reachable(
            config.database.url, config.database.wait_seconds,
            lambda error, delay: log.warning("waiting for PostgreSQL (%s); retrying in %.1fs", error, delay)))
    except db.connection.DatabaseUnreachable as err:
        print(f"kubetask operator: {err}", file=sys.stderr)
        return 1
    try:
        # Before kopf: a second release on this database must exit, not retry its start-up for ever.
        asyncio.run(prepare_database(config))
    except db.release.DatabaseInUse as err:
        print(f"kubetask operator: {err}", file=sys.stderr)
        return 1
    sys.setrecursionlimit(max(sys.getrecursionlimit(), JSON_NESTING))
    namespaces = config.namespaces
    # Standalone: replicas elect their leader through PostgreSQL (see services), not kopf peering.
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint=config.liveness_endpoint,
    )
    return 0
