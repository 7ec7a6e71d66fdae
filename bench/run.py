"""Entry point: ``python -m bench.run [--quick] [--only engine|e2e]`` (``make bench``, ``make bench-quick``).

Runs the engine figures (``bench.engine``: PostgreSQL only, against PGQueuer
and procrastinate) and the end-to-end figures (``bench.e2e``: through a real
API server, against Kubernetes Jobs), prints each figure as it is measured,
then the whole table with the machine, the peers' versions and the command,
and writes ``bench/results/latest.json`` and ``bench/results/latest.png``.

Each part runs in its own try: a part that fails is reported (and the exit
status is 1) but does not lose the figures of the other.

With ``--only``, the figures and keys of the parts not run are kept from the
``latest.json`` already there, and this run is listed under
``meta.partial_runs`` (command, revision, time, machine load), so one part
can be measured again without losing, or mislabelling, the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import pathlib
import signal
import subprocess
import sys
import time
import traceback
from typing import Any

from bench import common

PARTS = ("engine", "e2e", "retention")


def _postgres_version() -> str:
    try:
        from kubetask_dev import postgres

        out = subprocess.run([str(postgres.bin_dir() / "postgres"), "--version"], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip().rsplit(" ", 1)[-1]
    except (ImportError, OSError, RuntimeError, subprocess.CalledProcessError):
        return ""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so PostgreSQL and the worker processes are stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts: about 2 minutes instead of 15")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument("--e2e-phases", help="with the e2e part: only these of its phases, comma-separated "
                        "(bench.e2e.PHASES: e2e, containers, zero, footprint)")
    parser.add_argument("--output", type=pathlib.Path, default=common.RESULTS,
                        help="folder for latest.json and latest.png (default bench/results)")
    args = parser.parse_args(argv)
    command = "python -m bench.run" + (" --quick" if args.quick else "") + "".join(
        f" --only {part}" for part in args.only or ()) + (f" --e2e-phases {args.e2e_phases}" if args.e2e_phases else "")
    meta: dict[str, Any] = {
        "quick": args.quick,
        "command": command,
        "revision": common.git_revision(),
        "machine": common.machine(_postgres_version()),
        "peers": {"pgqueuer": common.package_version("pgqueuer"),
                  "procrastinate": common.package_version("procrastinate"),
                  "polling-1s": "a 1 s SELECT … FOR UPDATE SKIP LOCKED loop (bench/peers/polling_peer.py)",
                  "Kubernetes Jobs": "the control plane of bench.e2e"},
        "kubetask": common.package_version("kubetask"),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(common.header(meta), flush=True)
    figures: list[common.Figure] = []
    keys: dict[str, float] = {}
    failed: list[str] = []

    def report(figure: common.Figure) -> None:
        figures.append(figure)
        ratios = ", ".join(f"{r:.2f}x {peer}" for peer, r in figure.ratios.items())
        met = "" if figure.met is None else (" [target met]" if figure.met else " [target MISSED]")
        print(f"  {figure.name}: {figure.ours:,.2f} {figure.unit}"
              + (f" ({ratios})" if ratios else "") + met, flush=True)

    for part in args.only or PARTS:
        if importlib.util.find_spec(f"bench.{part}") is None:
            print(f"\n[{part}] skipped: bench/{part}.py does not exist yet", flush=True)
            continue
        print(f"\n[{part}]", flush=True)
        began = time.monotonic()
        try:
            module = importlib.import_module(f"bench.{part}")
            options = {"phases": args.e2e_phases.split(",")} if part == "e2e" and args.e2e_phases else {}
            keys.update(module.measure(args.quick, report, **options))
        except Exception:
            traceback.print_exc()
            failed.append(part)
        print(f"[{part}] {time.monotonic() - began:.0f} s", flush=True)
        meta[f"{part}_seconds"] = round(time.monotonic() - began, 1)

    peers = sorted({peer for figure in figures for peer in figure.peers},
                   key=lambda p: list(meta["peers"]).index(p) if p in meta["peers"] else 99)
    print("\n" + common.header(meta))
    print(common.table(figures, peers))
    for figure in figures:
        if figure.note:
            print(f"- {figure.name}: {figure.note}")
    meta["failed_parts"] = failed
    if args.only:
        keys, figures, meta = _merge_previous(args.output / "latest.json", keys, figures, meta)
    common.write_json(args.output / "latest.json", keys, figures, meta)
    partial = "".join(f" + {run['command']}" for run in meta.get("partial_runs", []))
    common.write_png(args.output / "latest.png", figures,
                     f"kubetask vs peers ({'quick' if meta['quick'] else 'full'}; {meta['machine']['cores']} cores, "
                     f"{meta['machine']['cpu_model']}) — {meta['command']}{partial}")
    print(f"\nwrote {args.output / 'latest.json'} and {args.output / 'latest.png'}")
    if failed:
        print(f"FAILED parts: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _merge_previous(path: pathlib.Path, keys: dict[str, float], figures: list[common.Figure],
                    meta: dict[str, Any]) -> tuple[dict[str, float], list[common.Figure], dict[str, Any]]:
    """This partial run's keys and figures on top of the previous full run's (see the module docstring)."""
    if not path.exists():
        return keys, figures, meta
    previous = json.loads(path.read_text(encoding="utf-8"))
    old_meta = previous.pop("meta", {})
    old_figures = previous.pop("figures", [])
    names = {figure.name for figure in figures}
    fields = {field.name for field in dataclasses.fields(common.Figure)}
    kept = [common.Figure(**{k: v for k, v in figure.items() if k in fields})
            for figure in old_figures if figure["name"] not in names]
    merged_keys = {k: float(v) for k, v in previous.items() if v is not None and k not in keys}
    merged_meta = dict(old_meta)
    merged_meta["partial_runs"] = [run for run in old_meta.get("partial_runs", []) if run["command"] != meta["command"]]
    merged_meta["partial_runs"].append({k: meta[k] for k in ("command", "revision", "started_at", "quick", "failed_parts")}
                                       | {"load_average_at_start": meta["machine"]["load_average_at_start"]})
    return {**merged_keys, **keys}, kept + figures, merged_meta


if __name__ == "__main__":
    sys.exit(main())
