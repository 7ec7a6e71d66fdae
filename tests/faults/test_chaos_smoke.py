"""``make chaos`` in miniature: the soak module, run as a program, with 40 tasks and one of each fault."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT

LAST_LINE = re.compile(r"^chaos: submitted=(\d+) succeeded=(\d+) dead_letter=(\d+) lost=(\d+) duplicated=(\d+)"
                       r" mismatched=(\d+) faults=(\d+)$")


def test_chaos_soak_in_miniature_loses_duplicates_and_mismatches_nothing() -> None:
    proc = subprocess.run([sys.executable, "-m", "tests.faults.chaos", "--tasks", "40"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    lines = proc.stdout.strip().splitlines()
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    match = LAST_LINE.match(lines[-1]) if lines else None
    assert match, f"last line is not the verdict: {lines[-1:]!r}"
    submitted, succeeded, dead_letter, lost, duplicated, mismatched, faults = map(int, match.groups())
    assert (lost, duplicated, mismatched) == (0, 0, 0)
    assert submitted == 40 and succeeded + dead_letter == 40
    assert faults >= 3, "the operator, PostgreSQL and kube-apiserver restarts are faults too"
    assert proc.returncode == 0
