"""What every benchmark shares: the ``Figure`` record, the machine, timing, and the outputs.

A benchmark module (``bench.engine``, ``bench.e2e``) exposes
``measure(quick, report) -> dict[str, float]``: it calls ``report(figure)``
for each ``Figure`` as soon as it is measured (``bench.run`` prints it at
once, so a long run shows progress) and returns the flat keys that go into
``bench/results/latest.json``.

Peers are measured in the same run, on the same PostgreSQL server, so the
ratios stay meaningful on a noisy shared machine where the absolute numbers
do not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Figure:
    """One measured figure: kubetask's value and each peer's, measured in the same run."""

    name: str
    unit: str
    ours: float
    peers: dict[str, float]
    note: str = ""
    command: str = ""
    """The exact command that measures this figure (how to reproduce it)."""
    target: str = ""
    """The target, for a reader: ``>= 5000``, ``>= 1.5x pgqueuer``."""
    met: bool | None = None
    """Whether the target is met; None when the figure has no target."""
    higher_is_better: bool = True
    """Tasks/s: True; latencies: False. Decides which way the ratios are taken."""

    @property
    def ratios(self) -> dict[str, float]:
        """Per peer, how many times better kubetask is (> 1: kubetask wins)."""
        out: dict[str, float] = {}
        for peer, value in self.peers.items():
            if self.higher_is_better:
                out[peer] = self.ours / value if value else math.inf
            else:
                out[peer] = value / self.ours if self.ours else math.inf
        return out

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ratios"] = {peer: _finite(r) for peer, r in self.ratios.items()}
        return data


Report = Callable[[Figure], None]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------- timing

def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


# ------------------------------------------------------------------ machine

def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        import psutil
        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine(postgres_version: str = "") -> dict[str, Any]:
    """What the figures were measured on: cores, RAM, CPU model, Python, PostgreSQL, load at start."""
    return {
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "postgresql": postgres_version,
        "os": platform.platform(),
        "load_average_at_start": _load(),
    }


def package_version(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=pathlib.Path(__file__).parent, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=pathlib.Path(__file__).parent, check=True)
        return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------- output

def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(figures: Sequence[Figure], peers: Sequence[str]) -> str:
    """A plain-text table: figure, kubetask, each peer, ratio(s), target, met?"""
    header = ["figure", "unit", "kubetask", *peers, "ratio", "target", "met?"]
    rows = [header]
    for figure in figures:
        ratios = figure.ratios
        ratio = ", ".join(f"{_fmt(r)}x {peer}" for peer, r in ratios.items()) or "-"
        met = "-" if figure.met is None else ("yes" if figure.met else "NO")
        rows.append([figure.name, figure.unit, _fmt(figure.ours),
                     *[_fmt(figure.peers[p]) if p in figure.peers else "" for p in peers],
                     ratio, figure.target or "-", met])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def header(meta: Mapping[str, Any]) -> str:
    m = meta["machine"]
    peers = ", ".join(f"{name} {version}" for name, version in meta["peers"].items())
    return "\n".join([
        f"kubetask benchmarks ({'quick' if meta['quick'] else 'full'}), revision {meta['revision']}",
        f"machine: {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['cpu_model']}; Python {m['python']}; "
        f"PostgreSQL {m['postgresql'] or '?'}; load average at start {m['load_average_at_start']}",
        f"peers: {peers}",
        f"command: {meta['command']}",
    ])


def write_json(path: pathlib.Path, keys: Mapping[str, float], figures: Sequence[Figure],
               meta: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**{k: _finite(float(v)) for k, v in keys.items()}, "meta": dict(meta),
                "figures": [figure.as_dict() for figure in figures]}
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_png(path: pathlib.Path, figures: Sequence[Figure], title: str) -> None:
    """Grouped bars, kubetask against each peer: one panel per unit (tasks/s, ms)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[Figure]] = {}
    for figure in figures:
        if figure.unit in ("tasks/s", "ms") and math.isfinite(figure.ours):
            panels.setdefault(figure.unit, []).append(figure)
    if not panels:
        return
    systems = ["kubetask"] + sorted({p for f in figures for p in f.peers})
    colours = dict(zip(systems, ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#718096", "#d53f8c"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 4.5 * len(panels)), squeeze=False)
    for ax, (unit, group) in zip(axes[:, 0], sorted(panels.items(), reverse=True)):
        width = 0.8 / len(systems)
        for index, system in enumerate(systems):
            xs, ys = [], []
            for position, figure in enumerate(group):
                value = figure.ours if system == "kubetask" else figure.peers.get(system)
                if value is not None and math.isfinite(value):
                    xs.append(position + (index - (len(systems) - 1) / 2) * width)
                    ys.append(value)
            if xs:
                bars = ax.bar(xs, ys, width, label=system, color=colours[system])
                ax.bar_label(bars, labels=[_fmt(y) for y in ys], fontsize=7, rotation=90, padding=2)
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels([f.name for f in group], rotation=15, ha="right", fontsize=8)
        ax.set_ylabel(unit + (" (lower is better)" if unit == "ms" else " (higher is better)"))
        if unit == "ms":
            ax.set_yscale("log")
        ax.margins(y=0.25)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def command_line() -> str:
    return " ".join([os.path.basename(sys.executable), *sys.argv]) if sys.argv else sys.executable
