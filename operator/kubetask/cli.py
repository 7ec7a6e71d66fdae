"""``kubetask``: one entry point, a subcommand per job, kubectl-style flags.

    kubetask operator | worker              the two processes of the product
    kubetask submit TYPE --payload JSON     create a Task (``--wait`` follows it to the end)
    kubetask get NAME | list                Tasks from the API server, as tables or -o json|yaml
    kubetask history NAME                   every attempt, from PostgreSQL (also for deleted Tasks)
    kubetask retry NAME                     run a finished Task again (the retry annotation)
    kubetask stats                          per-queue numbers from PostgreSQL
    kubetask dead-letter list | retry       the dead letter
    kubetask crd                            print the Task CRD generated from the models

Exit codes, for scripts: 0 success; 1 the Task failed (DeadLetter or Cancelled)
or a runtime error; 2 bad usage or configuration; 3 not found; 4 timed out.
Commands that read PostgreSQL need ``DATABASE_URL``; the others use the
kubeconfig (``KUBECONFIG``, in-cluster credentials).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import pathlib
import sys
from typing import Any, Callable, Sequence

import pydantic
import yaml

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT = 0, 1, 2, 3, 4


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


PROCESSES = ("operator", "worker")
"""Commands that run a kubetask process: they log JSON unless KUBETASK_LOG_FORMAT says otherwise."""


def _configure_logging(command: str, level: str | None) -> None:
    """One log format for the whole process (``kubetask.logs``), from ``settings.LogSettings``."""
    from kubetask import logs, settings

    chosen = settings.LogSettings.from_env()
    default = "json" if command in PROCESSES else "text"
    logs.configure(chosen.format or default, level or chosen.level)


# -- formatting --------------------------------------------------------------------------


def _age(timestamp: str | datetime.datetime | None) -> str:
    if not timestamp:
        return ""
    when = (timestamp if isinstance(timestamp, datetime.datetime)
            else datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")))
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2 or (unit == "m" and seconds >= 60):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _emit(obj: Any, output: str | None, render_table: Callable[[], str]) -> None:
    if output == "json":
        print(json.dumps(obj, indent=2, default=str))
    elif output == "yaml":
        print(yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False), end="")
    else:
        print(render_table())


def _task_rows(items: list[dict[str, Any]], wide: bool, all_namespaces: bool) -> str:
    headers = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "TYPE", "PHASE", "ATTEMPTS", "WORKER", "AGE"]
    if wide:
        headers += ["QUEUE", "PRIORITY", "NEXT", "LAST ERROR"]
    rows = []
    for item in items:
        meta, spec, status = item["metadata"], item.get("spec", {}), item.get("status") or {}
        row = ([meta["namespace"]] if all_namespaces else []) + [
            meta["name"], spec.get("type"), status.get("phase", "Pending"), status.get("attempts", 0),
            status.get("worker", ""), _age(meta.get("creationTimestamp"))]
        if wide:
            error = status.get("lastError") or {}
            row += [spec.get("queue", "default"), spec.get("priority", 0), status.get("nextAttemptAt", ""),
                    f"{error.get('type')}: {error.get('message', '')[:60]}" if error else ""]
        rows.append(row)
    return table(headers, rows)


# -- Kubernetes-side commands ------------------------------------------------------------


def _client() -> Any:
    from kubetask import client

    return client


def _namespace(args: argparse.Namespace) -> str:
    return str(args.namespace or _client().default_namespace())


def _payload(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    text = pathlib.Path(raw[1:]).read_text() if raw.startswith("@") else raw
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(f"--payload is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                       "pass a JSON object, or @file.json", EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise CliError(f"--payload must be a JSON object, not {type(value).__name__}", EXIT_USAGE)
    return value


def _progress(status: dict[str, Any]) -> None:
    phase, attempts = status.get("phase", "Pending"), status.get("attempts", 0)
    extra = ""
    if status.get("lastError") and phase in ("Retrying", "DeadLetter"):
        extra = f" — {status['lastError']['type']}: {status['lastError']['message'][:120]}"
    if phase == "Retrying" and status.get("nextAttemptAt"):
        extra += f" (next attempt at {status['nextAttemptAt']})"
    print(f"{datetime.datetime.now().strftime('%H:%M:%S')}  {phase:<10} attempts={attempts}{extra}",
          file=sys.stderr, flush=True)


def _submit(args: argparse.Namespace) -> int:
    client = _client()
    options: dict[str, Any] = {"queue": args.queue, "priority": args.priority, "maxRetries": args.max_retries,
                               "delaySeconds": args.delay, "timeoutSeconds": args.timeout, "runAt": args.run_at,
                               "ttlSecondsAfterFinished": args.ttl}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        ref = client.submit(args.type, _payload(args.payload), name=args.name, namespace=_namespace(args), **options)
    except ValueError as err:
        raise CliError(str(err), EXIT_USAGE) from None
    print(f"task.kubetask.io/{ref.name} created" if args.output is None else
          json.dumps({"namespace": ref.namespace, "name": ref.name, "uid": ref.uid}))
    if not args.wait:
        return EXIT_OK
    try:
        status = client.wait(ref, timeout=args.timeout_wait, on_change=_progress)
    except client.TaskFailed as failed:
        print(str(failed), file=sys.stderr)
        return EXIT_FAILED
    except client.WaitTimeout as err:
        print(str(err), file=sys.stderr)
        return EXIT_TIMEOUT
    if args.output is None and status.get("result") is not None:
        print(json.dumps(status["result"], indent=2))
    return EXIT_OK


def _get(args: argparse.Namespace) -> int:
    import kubernetes

    client = _client()
    try:
        task = client.get(args.name, _namespace(args))
    except kubernetes.client.ApiException as err:
        if err.status == 404:
            raise CliError(f"Task {_namespace(args)}/{args.name} not found "
                           "(`kubetask history` still shows a deleted Task's attempts)", EXIT_NOT_FOUND) from None
        raise
    _emit(task, args.output, lambda: _task_rows([task], args.output == "wide", False))
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from kubetask import model

    api = _client()._api(None)
    if args.all_namespaces:
        listing = api.list_cluster_custom_object(model.GROUP, model.VERSION, model.PLURAL)
    else:
        listing = api.list_namespaced_custom_object(model.GROUP, model.VERSION, _namespace(args), model.PLURAL)
    items = listing["items"]
    if args.phase:
        items = [t for t in items if (t.get("status") or {}).get("phase", "Pending") == args.phase]
    _emit({"items": items} if args.output in ("json", "yaml") else items, args.output,
          lambda: _task_rows(items, args.output == "wide", args.all_namespaces) if items else "No Tasks found.")
    return EXIT_OK


def _retry(args: argparse.Namespace) -> int:
    _client().retry(args.name, _namespace(args))
    print(f"task.kubetask.io/{args.name} annotated for retry")
    return EXIT_OK


# -- PostgreSQL-side commands ------------------------------------------------------------


async def _with_db(fn: Callable[[Any], Any]) -> Any:
    from kubetask import db, settings

    try:
        database = settings.DatabaseSettings.from_env()
    except settings.SettingsError as err:
        raise CliError(f"{err}; this command reads PostgreSQL: set DATABASE_URL", EXIT_USAGE) from None
    conn = await db.connection.connect(database.url, application_name="kubetask-cli")
    try:
        return await fn(conn)
    finally:
        await conn.close()


def _history(args: argparse.Namespace) -> int:
    from kubetask import db

    async def run(conn: Any) -> tuple[Any, Any]:
        rows = [await db.reads.get_task(conn, args.uid)] if args.uid else await db.reads.find_tasks(
            conn, _namespace(args), args.name)
        rows = [r for r in rows if r is not None]
        if not rows:
            return None, []
        return rows[0], await db.reads.task_history(conn, rows[0].uid)

    task, attempts = asyncio.run(_with_db(run))
    if task is None:
        raise CliError(f"no history for Task {_namespace(args)}/{args.name} in PostgreSQL", EXIT_NOT_FOUND)

    def render() -> str:
        head = (f"Task {task.namespace}/{task.name} uid={task.uid} type={task.type} queue={task.queue} "
                f"state={task.state} attempts={task.attempts}")
        rows = []
        for a in attempts:
            took = f"{(a.finished_at - a.started_at).total_seconds():.3f}s" if a.finished_at else "running"
            error = f"{a.error_type}: {a.error_message}" if a.error_type else ""
            rows.append([a.number, a.worker_pod, a.started_at.strftime("%Y-%m-%d %H:%M:%S"), took, a.outcome,
                         error[:100]])
        text = head + "\n" + table(["#", "WORKER", "STARTED", "TOOK", "OUTCOME", "ERROR"], rows)
        if args.tracebacks:
            text += "".join(f"\n\n--- attempt {a.number}\n{a.traceback}" for a in attempts if a.traceback)
        return text

    _emit({"task": _plain(task), "attempts": [_plain(a) for a in attempts]}, args.output, render)
    return EXIT_OK


def _plain(row: Any) -> dict[str, Any]:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(row).items()}


def _stats(args: argparse.Namespace) -> int:
    from kubetask import db

    stats = asyncio.run(_with_db(lambda conn: db.reads.queue_stats(conn, args.window)))
    if args.queue:
        stats = [s for s in stats if s.queue == args.queue]

    def render() -> str:
        if not stats:
            return "No tasks in PostgreSQL yet."
        rows = [[s.queue, s.due, s.scheduled, s.running, s.retrying, s.succeeded, s.dead_letter,
                 s.dead_letter_total, f"{s.succeeded / args.window:.1f}/s",
                 f"{s.oldest_due_seconds:.1f}s" if s.due else "-"]
                for s in stats]
        window = f"{args.window:g}s"
        return table(["QUEUE", "WAITING", "SCHEDULED", "RUNNING", "RETRYING", f"SUCCEEDED/{window}",
                      f"DEAD/{window}", "DEAD-LETTER", "THROUGHPUT", "OLDEST WAITING"], rows)

    _emit([_plain(s) for s in stats], args.output, render)
    return EXIT_OK


def _dead_letter(args: argparse.Namespace) -> int:
    from kubetask import model

    api = _client()._api(None)
    if args.all_namespaces:
        items = api.list_cluster_custom_object(model.GROUP, model.VERSION, model.PLURAL)["items"]
    else:
        items = api.list_namespaced_custom_object(model.GROUP, model.VERSION, _namespace(args), model.PLURAL)["items"]
    dead = [t for t in items if (t.get("status") or {}).get("phase") == model.Phase.DEAD_LETTER.value
            and (args.queue is None or t["spec"].get("queue", "default") == args.queue)]
    if args.action == "list":
        _emit({"items": dead} if args.output in ("json", "yaml") else dead, args.output,
              lambda: _task_rows(dead, True, args.all_namespaces) if dead else "The dead letter is empty.")
        return EXIT_OK
    if not args.all and not args.names:
        raise CliError("dead-letter retry needs NAME… or --all", EXIT_USAGE)
    chosen = dead if args.all else [t for t in dead if t["metadata"]["name"] in set(args.names)]
    missing = set(args.names) - {t["metadata"]["name"] for t in chosen}
    for number, task in enumerate(chosen, 1):
        _client().retry(task["metadata"]["name"], task["metadata"]["namespace"])
        print(f"[{number}/{len(chosen)}] {task['metadata']['namespace']}/{task['metadata']['name']} re-queued",
              file=sys.stderr, flush=True)
    print(f"{len(chosen)} Task(s) re-queued from the dead letter")
    if missing:
        raise CliError(f"not in the dead letter: {', '.join(sorted(missing))}", EXIT_NOT_FOUND)
    return EXIT_OK


# -- the processes -------------------------------------------------------------------------


def _operator(args: argparse.Namespace) -> int:
    from kubetask.operator import app

    return app.main()


def _worker(args: argparse.Namespace) -> int:
    from kubetask import worker

    return worker.main()


def _crd(args: argparse.Namespace) -> int:
    from kubetask import crd

    return crd.main([])


# -- parser ----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kubetask", description="A Kubernetes-native task queue.",
                                  epilog="Exit codes: 0 ok, 1 task failed or error, 2 usage, 3 not found, 4 timeout.")
    top.add_argument("--log-level", choices=["debug", "info", "warning", "error"], type=str.lower,
                     help="lowest level logged (default: KUBETASK_LOG_LEVEL, or info)")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], int], help: str, ns: bool = True,
                output: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        if ns:
            p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        if output:
            p.add_argument("-o", "--output", choices=list(output), help="output format (default: a table)")
        return p

    command("operator", _operator, "run the operator (admits Tasks, mirrors status, scales worker pools)", ns=False)
    command("worker", _worker, "run a worker (claims and runs tasks from PostgreSQL)", ns=False)
    command("crd", _crd, "print the Task CustomResourceDefinition", ns=False)

    p = command("submit", _submit, "create a Task", output=("json",))
    p.add_argument("type", help="handler name, e.g. echo")
    p.add_argument("--payload", help="JSON object, or @file.json")
    p.add_argument("--name", help="Task name (default: generated from the type)")
    p.add_argument("--queue", help="worker pool queue (default: default)")
    p.add_argument("--priority", type=int, help="higher runs first (default 0)")
    p.add_argument("--max-retries", type=int, help="retries after the first failure (default 3)")
    p.add_argument("--delay", type=int, metavar="SECONDS", help="do not start before this many seconds")
    p.add_argument("--run-at", metavar="RFC3339", help="do not start before this time")
    p.add_argument("--timeout", type=int, metavar="SECONDS", help="per-attempt timeout")
    p.add_argument("--ttl", type=int, metavar="SECONDS", help="delete the Task this long after it finished")
    p.add_argument("--wait", action="store_true", help="show progress until the Task finishes; exit 1 if it fails")
    p.add_argument("--timeout-wait", type=float, metavar="SECONDS", help="give up waiting after this long (exit 4)")

    p = command("get", _get, "show a Task", output=("json", "yaml", "wide"))
    p.add_argument("name")
    p = command("list", _list, "list Tasks", output=("json", "yaml", "wide"))
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--phase", help="only Tasks in this phase, e.g. DeadLetter")
    p = command("history", _history, "every attempt of a Task, from PostgreSQL (deleted Tasks too)",
                output=("json", "yaml"))
    p.add_argument("name", nargs="?", default="", help="Task name (the newest Task of that name)")
    p.add_argument("--uid", help="select by uid instead of name")
    p.add_argument("--tracebacks", action="store_true", help="print each failed attempt's traceback")
    p = command("retry", _retry, "run a finished Task again (fresh attempt budget, history kept)")
    p.add_argument("name")
    p = command("stats", _stats, "per-queue numbers from PostgreSQL", ns=False, output=("json", "yaml"))
    p.add_argument("--queue", help="only this queue")
    p.add_argument("--window", type=float, default=60.0, metavar="SECONDS",
                   help="window for finished counts and throughput (default 60)")
    p = command("dead-letter", _dead_letter, "list or retry dead-lettered Tasks", output=("json", "yaml", "wide"))
    p.add_argument("action", choices=["list", "retry"])
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="retry every dead-lettered Task (with retry)")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--queue", help="only Tasks of this queue")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        _configure_logging(args.command, args.log_level)
    except ValueError as err:  # settings.SettingsError: names the variable
        print(f"kubetask {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "command", None) == "history" and not args.name and not args.uid:
        print("kubetask history: give a Task NAME or --uid", file=sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.fn(args)
    except CliError as err:
        print(f"kubetask {args.command}: {err}", file=sys.stderr)
        return err.code
    except Exception as err:  # the API server's or PostgreSQL's answer, said plainly
        message, exit_code = _explain(err)
        if message is None:
            raise
        print(f"kubetask {args.command}: {message}", file=sys.stderr)
        return exit_code
    return code


def _explain(err: Exception) -> tuple[str | None, int]:
    """A one-line message and exit code for the failures users meet, or (None, _) to show the traceback."""
    import kubernetes
    import psycopg
    import urllib3

    if isinstance(err, kubernetes.client.ApiException):
        try:
            detail = json.loads(err.body or "{}").get("message") or err.reason
        except ValueError:
            detail = err.reason
        if err.status == 404:
            return f"{detail}", EXIT_NOT_FOUND
        if err.status == 409:
            return f"{detail}: choose another --name, or delete the existing Task first", EXIT_FAILED
        if err.status in (401, 403):
            return f"{detail}: your kubeconfig's user may not do this (kubectl auth can-i)", EXIT_FAILED
        if err.status == 422:
            return f"refused by the API server: {detail}", EXIT_USAGE
        return f"the API server answered {err.status}: {detail}", EXIT_FAILED
    if isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError)):
        return f"cannot reach the Kubernetes API server ({err}); check KUBECONFIG and the cluster", EXIT_FAILED
    if isinstance(err, kubernetes.config.ConfigException):
        return f"no usable Kubernetes credentials ({err}); set KUBECONFIG or run inside a pod", EXIT_USAGE
    if isinstance(err, psycopg.OperationalError):
        return f"cannot reach PostgreSQL ({str(err).splitlines()[0]}); check DATABASE_URL", EXIT_FAILED
    return None, EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
