"""``kubetask``: one entry point, a subcommand per job, kubectl-style flags.

    kubetask operator | worker              the two processes of the product
    kubetask submit TYPE --payload JSON     create a Task (``--wait`` follows it to the end)
    kubetask get NAME | list                Tasks from the API server, as tables or -o json|yaml
    kubetask history NAME                   every attempt, from PostgreSQL (also for deleted Tasks)
    kubetask logs NAME [--attempt N] [-f]   a container Task's output: its pod's log, else the tail in PostgreSQL
    kubetask retry NAME                     run a finished Task again (the retry annotation)
    kubetask stats                          per-queue numbers from PostgreSQL
    kubetask dead-letter list | retry       the dead letter
    kubetask schedule list | trigger NAME | suspend NAME | resume NAME
                                            TaskSchedules (trigger: one run now)
    kubetask queue list | pause | resume | describe   Queue objects (pause patches spec.paused)
    kubetask crd                            print the Task and Queue CRDs generated from the models

Exit codes, for scripts: 0 success; 1 the Task failed (DeadLetter or Cancelled)
or a runtime error; 2 bad usage or configuration; 3 not found; 4 timed out;
5 forbidden (the API server refused, or ``history`` or ``logs`` found you may
not read Tasks, or pod logs, in that namespace).
Commands that read PostgreSQL need ``DATABASE_URL``; the others use the
kubeconfig (``KUBECONFIG``, in-cluster credentials).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from kubetask.cli import history, logs, queues, schedules, tasks, terminal


PROCESSES = ("operator", "worker")
"""Commands that run a kubetask process: they log JSON unless KUBETASK_LOG_FORMAT says otherwise."""


def _configure_logging(command: str, level: str | None) -> None:
    """One log format for the whole process (``kubetask.logs``), from ``settings.LogSettings``."""
    import kubetask.logs
    from kubetask import settings

    chosen = settings.LogSettings.from_env()
    default = "json" if command in PROCESSES else "text"
    kubetask.logs.configure(chosen.format or default, level or chosen.level)


def _operator(args: argparse.Namespace) -> int:
    from kubetask.operator import app

    return app.main()


def _worker(args: argparse.Namespace) -> int:
    from kubetask import worker

    return worker.main()


def _crd(args: argparse.Namespace) -> int:
    from kubetask import crd

    return crd.main([])


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
    command("crd", _crd, "print the Task and Queue CustomResourceDefinitions", ns=False)

    p = command("submit", tasks.submit, "create a Task", output=("json",))
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

    p = command("get", tasks.get, "show a Task", output=("json", "yaml", "wide"))
    p.add_argument("name")
    p = command("list", tasks.list_tasks, "list Tasks", output=("json", "yaml", "wide"))
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--phase", help="only Tasks in this phase, e.g. DeadLetter")
    p = command("history", history.history, "every attempt of a Task, from PostgreSQL (deleted Tasks too)",
                output=("json", "yaml"))
    p.add_argument("name", nargs="?", default="", help="Task name (the newest Task of that name)")
    p.add_argument("--uid", help="select by uid instead of name")
    p.add_argument("--tracebacks", action="store_true", help="print each failed attempt's traceback")
    p.add_argument("--no-access-check", action="store_true",
                   help="skip asking the API server whether you may get Tasks in the namespace (database admins "
                        "without a kubeconfig)")
    p = command("logs", logs.logs, "a container Task's output: live from its attempt's pod, else the tail of "
                "it stored in PostgreSQL (deleted Tasks too)")
    p.add_argument("name", help="Task name (the newest Task of that name)")
    p.add_argument("--attempt", type=int, metavar="N", help="this attempt (default: the latest)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="stream the log until the container ends; if the pod goes first, finish from the stored tail")
    p.add_argument("--no-access-check", action="store_true",
                   help="skip asking the API server whether you may get Tasks and pods/log in the namespace "
                        "(database admins)")
    p = command("retry", tasks.retry, "run a finished Task again (fresh attempt budget, history kept)")
    p.add_argument("name")
    p = command("stats", history.stats, "per-queue numbers from PostgreSQL", ns=False, output=("json", "yaml"))
    p.add_argument("--queue", help="only this queue")
    p.add_argument("--window", type=float, default=60.0, metavar="SECONDS",
                   help="window for finished counts and throughput (default 60)")
    p = command("dead-letter", tasks.dead_letter, "list or retry dead-lettered Tasks", output=("json", "yaml", "wide"))
    p.add_argument("action", choices=["list", "retry"])
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="retry every dead-lettered Task (with retry)")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--queue", help="only Tasks of this queue")
    schedules.add_parser(command)
    p = command("queue", queues.queue, "list, pause, resume or describe Queues (cluster-scoped; RBAC applies)",
                ns=False, output=("json", "yaml", "wide"))
    p.add_argument("action", choices=queues.ACTIONS)
    p.add_argument("name", nargs="?", default="", metavar="NAME")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        _configure_logging(args.command, args.log_level)
    except ValueError as err:  # settings.SettingsError: names the variable
        print(f"kubetask {args.command}: {err}", file=sys.stderr)
        return terminal.EXIT_USAGE
    if getattr(args, "command", None) == "history" and not args.name and not args.uid:
        print("kubetask history: give a Task NAME or --uid", file=sys.stderr)
        return terminal.EXIT_USAGE
    try:
        code: int = args.fn(args)
    except terminal.CliError as err:
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
            return f"{detail}", terminal.EXIT_NOT_FOUND
        if err.status == 409:
            return f"{detail}: choose another --name, or delete the existing Task first", terminal.EXIT_FAILED
        if err.status in (401, 403):
            return f"{detail}: your kubeconfig's user may not do this (kubectl auth can-i)", terminal.EXIT_FORBIDDEN
        if err.status == 422:
            return f"refused by the API server: {detail}", terminal.EXIT_USAGE
        return f"the API server answered {err.status}: {detail}", terminal.EXIT_FAILED
    if isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError)):
        return f"cannot reach the Kubernetes API server ({err}); check KUBECONFIG and the cluster", terminal.EXIT_FAILED
    if isinstance(err, kubernetes.config.ConfigException):
        return f"no usable Kubernetes credentials ({err}); set KUBECONFIG or run inside a pod", terminal.EXIT_USAGE
    if isinstance(err, psycopg.OperationalError):
        return f"cannot reach PostgreSQL ({str(err).splitlines()[0]}); check DATABASE_URL", terminal.EXIT_FAILED
    return None, terminal.EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
