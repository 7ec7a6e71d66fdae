"""Commands that work on Task objects through the API server: submit, get, list, retry, dead letter."""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
from typing import Any

from kubetask import logs
from kubetask.cli import terminal


def api_client() -> Any:
    from kubetask import client

    return client


def namespace_of(args: argparse.Namespace) -> str:
    return str(args.namespace or api_client().default_namespace())


def _payload(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    text = pathlib.Path(raw[1:]).read_text() if raw.startswith("@") else raw
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise terminal.CliError(f"--payload is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                       "pass a JSON object, or @file.json", terminal.EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise terminal.CliError(f"--payload must be a JSON object, not {type(value).__name__}", terminal.EXIT_USAGE)
    return value


def _progress(status: dict[str, Any]) -> None:
    phase, attempts = status.get("phase", "Pending"), status.get("attempts", 0)
    extra = ""
    if status.get("lastError") and phase in ("Retrying", "DeadLetter"):
        extra = logs.printable(f" — {status['lastError']['type']}: {status['lastError']['message'][:120]}")
    if phase == "Retrying" and status.get("nextAttemptAt"):
        extra += f" (next attempt at {status['nextAttemptAt']})"
    print(f"{datetime.datetime.now().strftime('%H:%M:%S')}  {phase:<10} attempts={attempts}{extra}",
          file=sys.stderr, flush=True)


def submit(args: argparse.Namespace) -> int:
    client = api_client()
    options: dict[str, Any] = {"queue": args.queue, "priority": args.priority, "maxRetries": args.max_retries,
                               "delaySeconds": args.delay, "timeoutSeconds": args.timeout, "runAt": args.run_at,
                               "ttlSecondsAfterFinished": args.ttl}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        ref = client.submit(args.type, _payload(args.payload), name=args.name, namespace=namespace_of(args), **options)
    except ValueError as err:
        raise terminal.CliError(str(err), terminal.EXIT_USAGE) from None
    print(f"task.kubetask.io/{ref.name} created" if args.output is None else
          json.dumps({"namespace": ref.namespace, "name": ref.name, "uid": ref.uid}))
    if not args.wait:
        return terminal.EXIT_OK
    try:
        status = client.wait(ref, timeout=args.timeout_wait, on_change=_progress)
    except client.TaskFailed as failed:
        print(str(failed), file=sys.stderr)
        return terminal.EXIT_FAILED
    except client.WaitTimeout as err:
        print(str(err), file=sys.stderr)
        return terminal.EXIT_TIMEOUT
    if args.output is None and status.get("result") is not None:
        print(json.dumps(status["result"], indent=2))
    return terminal.EXIT_OK


def get(args: argparse.Namespace) -> int:
    import kubernetes

    client = api_client()
    try:
        task = client.get(args.name, namespace_of(args))
    except kubernetes.client.ApiException as err:
        if err.status == 404:
            raise terminal.CliError(f"Task {namespace_of(args)}/{args.name} not found "
                           "(`kubetask history` still shows a deleted Task's attempts)", terminal.EXIT_NOT_FOUND) from None
        raise
    terminal.emit(task, args.output, lambda: terminal.task_rows([task], args.output == "wide", False))
    return terminal.EXIT_OK


def list_tasks(args: argparse.Namespace) -> int:
    from kubetask import model

    api = api_client()._api(None)
    if args.all_namespaces:
        listing = api.list_cluster_custom_object(model.GROUP, model.VERSION, model.PLURAL)
    else:
        listing = api.list_namespaced_custom_object(model.GROUP, model.VERSION, namespace_of(args), model.PLURAL)
    items = listing["items"]
    if args.phase:
        items = [t for t in items if (t.get("status") or {}).get("phase", "Pending") == args.phase]
    terminal.emit({"items": items} if args.output in ("json", "yaml") else items, args.output,
          lambda: terminal.task_rows(items, args.output == "wide", args.all_namespaces) if items else "No Tasks found.")
    return terminal.EXIT_OK


def retry(args: argparse.Namespace) -> int:
    api_client().retry(args.name, namespace_of(args))
    print(f"task.kubetask.io/{args.name} annotated for retry")
    return terminal.EXIT_OK


def dead_letter(args: argparse.Namespace) -> int:
    from kubetask import model

    api = api_client()._api(None)
    if args.all_namespaces:
        items = api.list_cluster_custom_object(model.GROUP, model.VERSION, model.PLURAL)["items"]
    else:
        items = api.list_namespaced_custom_object(model.GROUP, model.VERSION, namespace_of(args), model.PLURAL)["items"]
    dead = [t for t in items if (t.get("status") or {}).get("phase") == model.Phase.DEAD_LETTER.value
            and (args.queue is None or t["spec"].get("queue", "default") == args.queue)]
    if args.action == "list":
        terminal.emit({"items": dead} if args.output in ("json", "yaml") else dead, args.output,
              lambda: terminal.task_rows(dead, True, args.all_namespaces) if dead else "The dead letter is empty.")
        return terminal.EXIT_OK
    if not args.all and not args.names:
        raise terminal.CliError("dead-letter retry needs NAME… or --all", terminal.EXIT_USAGE)
    chosen = dead if args.all else [t for t in dead if t["metadata"]["name"] in set(args.names)]
    missing = set(args.names) - {t["metadata"]["name"] for t in chosen}
    for number, task in enumerate(chosen, 1):
        api_client().retry(task["metadata"]["name"], task["metadata"]["namespace"])
        print(f"[{number}/{len(chosen)}] {task['metadata']['namespace']}/{task['metadata']['name']} re-queued",
              file=sys.stderr, flush=True)
    print(f"{len(chosen)} Task(s) re-queued from the dead letter")
    if missing:
        raise terminal.CliError(f"not in the dead letter: {', '.join(sorted(missing))}", terminal.EXIT_NOT_FOUND)
    return terminal.EXIT_OK
