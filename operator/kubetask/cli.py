"""``kubetask``: one entry point, a subcommand per process kind.

    kubetask operator   the kopf operator (Kubernetes credentials + DATABASE_URL)
    kubetask worker     a worker process (DATABASE_URL only)
    kubetask crd        print the Task CRD generated from the models

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pydantic


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _operator(args: argparse.Namespace) -> int:
    import kopf

    from kubetask import controller, settings

    try:
        config = settings.OperatorSettings.from_env()
    except (pydantic.ValidationError, ValueError) as err:
        print(f"kubetask operator: bad configuration: {err}", file=sys.stderr)
        return 2
    del controller  # imported for its kopf handlers
    namespaces = config.namespaces
    # Standalone: replicas elect their leader through PostgreSQL (see controller), not kopf peering.
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        liveness_endpoint=config.liveness_endpoint,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from kubetask import worker

    return worker.main()


def _crd(args: argparse.Namespace) -> int:
    from kubetask import crd

    return crd.main([])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetask", description="A Kubernetes-native task queue.")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("operator", help="run the operator (admits Tasks, mirrors status, scales worker pools)").set_defaults(fn=_operator)
    sub.add_parser("worker", help="run a worker (claims and runs tasks from PostgreSQL)").set_defaults(fn=_worker)
    sub.add_parser("crd", help="print the Task CustomResourceDefinition").set_defaults(fn=_crd)
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
