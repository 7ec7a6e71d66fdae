"""``kubetask queue list|pause|resume|describe``: Queue objects through the API server.

Pause and resume merge-patch ``spec.paused`` of the Queue, so the API
server's RBAC decides who may (``patch queues``: the cluster admin's, not a
tenant's), and the change is the object's like any ``kubectl edit``: the
leader copies it into the queue's row and the claim obeys it within about a
second (running tasks finish). A Queue the chart renders keeps a pause across
``helm upgrade`` unless its ``pools[].queueSpec`` sets ``paused`` itself.
"""

from __future__ import annotations

import argparse
from typing import Any

from kubetask.cli import terminal

ACTIONS = ("list", "pause", "resume", "describe")


def _api() -> Any:
    from kubetask import client

    return client._api(None)


def _get(name: str) -> dict[str, Any]:
    import kubernetes

    from kubetask import model

    try:
        found: dict[str, Any] = _api().get_cluster_custom_object(model.GROUP, model.VERSION, model.QUEUE_PLURAL, name)
    except kubernetes.client.ApiException as err:
        if err.status == 404:
            raise terminal.CliError(
                f"Queue {name} not found (kubetask queue list shows the Queues); a queue without one is open to "
                "every namespace and unlimited: create a Queue of that name (chart: pools[].queueSpec) to pause "
                "or limit it", terminal.EXIT_NOT_FOUND) from None
        raise
    return found


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c.get("type") == kind), {})


def _rate(spec: dict[str, Any]) -> str:
    rate = spec.get("rateLimit") or {}
    return f"{rate['tasks']}/{rate['periodSeconds']}s" if rate else ""


def rows(items: list[dict[str, Any]], wide: bool) -> str:
    headers = ["NAME", "PAUSED", "MAX-RUNNING", "PENDING", "RUNNING", "OLDEST", "AGE"]
    if wide:
        headers += ["RATE", "KEY-LIMIT", "RETRYING", "DEAD-LETTER", "CLAIMED/MIN", "NAMESPACES"]
    table = []
    for item in items:
        meta, spec, status = item["metadata"], item.get("spec") or {}, item.get("status") or {}
        oldest = status.get("oldestWaitingSeconds")
        row = [meta["name"], str(bool(spec.get("paused"))).lower(), spec.get("maxRunning", ""),
               status.get("pending", ""), status.get("running", ""),
               "" if oldest is None else f"{int(oldest)}s", terminal.age(meta.get("creationTimestamp"))]
        if wide:
            row += [_rate(spec), spec.get("concurrencyKeyLimit", ""), status.get("retrying", ""),
                    status.get("deadLetter", ""), status.get("claimedLastMinute", ""),
                    _selector(spec.get("namespaceSelector") or {})]
        table.append(row)
    return terminal.table(headers, table)


def _selector(raw: dict[str, Any]) -> str:
    from kubetask import model

    try:
        return model.LabelSelector.model_validate(raw).describe()
    except ValueError:
        return str(raw)


def describe(item: dict[str, Any]) -> str:
    meta, spec, status = item["metadata"], item.get("spec") or {}, item.get("status") or {}
    paused = _condition(status, "Paused")
    lines = [
        f"Name:                 {meta['name']}",
        f"Namespaces admitted:  {_selector(spec.get('namespaceSelector') or {})}",
        f"Paused:               {str(bool(spec.get('paused'))).lower()}",
        f"Max running:          {spec.get('maxRunning', 'no limit')}",
        f"Rate limit:           {_rate(spec) or 'none'}",
        f"Concurrency key limit: {spec.get('concurrencyKeyLimit', 'none')}",
        "Status (from PostgreSQL, mirrored by the operator):",
        f"  Pending:            {status.get('pending', '?')}",
        f"  Running:            {status.get('running', '?')}",
        f"  Retrying:           {status.get('retrying', '?')}",
        f"  Dead letter:        {status.get('deadLetter', '?')}",
        f"  Oldest waiting:     {status.get('oldestWaitingSeconds', '?')}s",
        f"  Claimed last min:   {status.get('claimedLastMinute', '?')}",
    ]
    if paused:
        lines.append(f"  Paused condition:   {paused.get('status')} ({paused.get('reason')}): {paused.get('message', '')}"
                     f" since {paused.get('lastTransitionTime', '?')}")
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if observed != generation:
        lines.append(f"  Not enforced yet:   the operator enforces generation {observed or 'none'}, the spec is at "
                     f"{generation} (it applies changes within seconds; longer: see the operator's log)")
    return "\n".join(lines)


def queue(args: argparse.Namespace) -> int:
    from kubetask import model

    if args.action == "list":
        if args.name:
            raise terminal.CliError("kubetask queue list takes no NAME (kubetask queue describe NAME)",
                                    terminal.EXIT_USAGE)
        items = _api().list_cluster_custom_object(model.GROUP, model.VERSION, model.QUEUE_PLURAL)["items"]
        terminal.emit({"items": items} if args.output in ("json", "yaml") else items, args.output,
                      lambda: rows(items, args.output == "wide") if items else "No Queues found.")
        return terminal.EXIT_OK
    if not args.name:
        raise terminal.CliError(f"kubetask queue {args.action}: give a Queue NAME", terminal.EXIT_USAGE)
    if args.action == "describe":
        item = _get(args.name)
        terminal.emit(item, args.output, lambda: describe(item))
        return terminal.EXIT_OK
    _get(args.name)  # a missing Queue gets the message that says what a queue without one is
    paused = args.action == "pause"
    _api().patch_cluster_custom_object(model.GROUP, model.VERSION, model.QUEUE_PLURAL, args.name,
                                       {"spec": {"paused": paused}})
    print(f"queue.kubetask.io/{args.name} {'paused: nothing new is claimed; running tasks finish' if paused else 'resumed'}")
    return terminal.EXIT_OK
