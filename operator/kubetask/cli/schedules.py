"""``kubetask schedule list | trigger NAME | suspend NAME | resume NAME``: TaskSchedules, through the API server.

Everything goes through the API server with the caller's kubeconfig, so RBAC decides (exit 5 when it
refuses) and the audit log sees who did it; nothing here touches PostgreSQL.

* ``trigger`` creates one Task now from the schedule's template, with the body the scheduler builds
  for a tick (``cron.task_body``: owned by the schedule, labelled with it), named
  ``<schedule>-manual-<unix seconds>`` and annotated ``kubetask.io/instantiate: manual`` instead of a
  tick's time. It is a run like the others: concurrencyPolicy Forbid skips ticks while it is
  unfinished, Replace deletes it at the next tick, the history limits prune it. It records no tick,
  and works on a suspended schedule too (as ``kubectl create job --from=cronjob/…``).
* ``suspend`` / ``resume`` merge-patch ``spec.suspend``; the operator's leader acts on it at its next pass.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from kubetask.cli import terminal
from kubetask.cli.tasks import api_client, namespace_of


def _api() -> Any:
    return api_client()._api(None)


def _not_found(err: Exception, namespace: str, name: str) -> None:
    """Raise exit 3 naming the schedule for a 404; anything else is left to the caller (``cli._explain``)."""
    import kubernetes

    if isinstance(err, kubernetes.client.ApiException) and err.status == 404:
        raise terminal.CliError(f"TaskSchedule {namespace}/{name} not found", terminal.EXIT_NOT_FOUND) from None


def get_schedule(namespace: str, name: str) -> dict[str, Any]:
    from kubetask import model

    try:
        found: dict[str, Any] = _api().get_namespaced_custom_object(model.GROUP, model.VERSION, namespace,
                                                                     model.SCHEDULE_PLURAL, name)
    except Exception as err:
        _not_found(err, namespace, name)
        raise
    return found


def schedule_rows(items: list[dict[str, Any]], all_namespaces: bool) -> str:
    headers = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "SCHEDULE", "ZONE", "SUSPEND", "ACTIVE", "LAST",
                                                           "NEXT"]
    rows = []
    for item in items:
        meta, spec, status = item["metadata"], item.get("spec") or {}, item.get("status") or {}
        rows.append(([meta["namespace"]] if all_namespaces else []) + [
            meta["name"], spec.get("schedule"), spec.get("timeZone", "UTC"),
            "True" if spec.get("suspend") else "False", status.get("activeCount", 0),
            terminal.age(status.get("lastScheduleTime")) or "<none>", status.get("nextScheduleTime") or "<none>"])
    return terminal.table(headers, rows)


def list_schedules(args: argparse.Namespace) -> int:
    from kubetask import model

    api = _api()
    if args.all_namespaces:
        listing = api.list_cluster_custom_object(model.GROUP, model.VERSION, model.SCHEDULE_PLURAL)
    else:
        listing = api.list_namespaced_custom_object(model.GROUP, model.VERSION, namespace_of(args),
                                                    model.SCHEDULE_PLURAL)
    items = sorted(listing["items"], key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"]))
    terminal.emit({"items": items} if args.output in ("json", "yaml") else items, args.output,
                  lambda: schedule_rows(items, args.all_namespaces) if items else "No TaskSchedules found.")
    return terminal.EXIT_OK


def trigger(args: argparse.Namespace) -> int:
    import kubernetes

    from kubetask import cron, model

    namespace = namespace_of(args)
    schedule = get_schedule(namespace, args.name)
    name = cron.manual_task_name(args.name, datetime.datetime.now(datetime.timezone.utc))
    body = cron.task_body(schedule, name, {model.MANUAL_ANNOTATION: model.MANUAL})
    try:
        _api().create_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, body)
    except kubernetes.client.ApiException as err:
        if err.status == 409:
            raise terminal.CliError(f"the Task {namespace}/{name} exists already (triggered in this same second): "
                                    "trigger again in a second", terminal.EXIT_FAILED) from None
        raise
    print(f"task.kubetask.io/{name} created (from taskschedule.kubetask.io/{args.name})")
    return terminal.EXIT_OK


def _set_suspend(args: argparse.Namespace, suspend: bool) -> int:
    from kubetask import model

    namespace = namespace_of(args)
    try:
        _api().patch_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.SCHEDULE_PLURAL,
                                              args.name, {"spec": {"suspend": suspend}})
    except Exception as err:
        _not_found(err, namespace, args.name)
        raise
    print(f"taskschedule.kubetask.io/{args.name} {'suspended' if suspend else 'resumed'}")
    return terminal.EXIT_OK


def schedule(args: argparse.Namespace) -> int:
    if args.action == "list":
        return list_schedules(args)
    if not args.name:
        raise terminal.CliError(f"schedule {args.action} needs the TaskSchedule's NAME", terminal.EXIT_USAGE)
    if args.action == "trigger":
        return trigger(args)
    return _set_suspend(args, args.action == "suspend")


def add_parser(command: Any) -> None:
    """Register ``schedule`` with the CLI's ``command(name, fn, help, ns, output)`` helper."""
    p = command("schedule", schedule, "list TaskSchedules, trigger one now, suspend or resume one",
                output=("json", "yaml"))
    p.add_argument("action", choices=["list", "trigger", "suspend", "resume"])
    p.add_argument("name", nargs="?", default="", metavar="NAME", help="the TaskSchedule (trigger, suspend, resume)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list in every namespace (with list)")
