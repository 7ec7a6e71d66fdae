"""Smoke test of ``bench/e2e.py``: the whole benchmark with tiny sizes, on its own control plane.

No timing is asserted (the machine is shared and noisy): only that every figure is reported and
every key is a finite number, so the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

import math

from bench import e2e
from bench.common import Figure

KEYS = ("e2e_tasks_per_s", "e2e_vs_jobs", "apply_to_running_p50_ms", "apply_to_succeeded_p50_ms",
        "api_writes_per_task", "api_writes_per_job", "scale_from_zero_s", "operator_rss_mb_10k",
        "operator_cpu_s_10k", "operator_cpu_ms_per_task", "e2e_create_ceiling_tasks_per_s", "e2e_vs_create_ceiling",
        "create_request_p50_ms_in_burst", "container_tasks_per_s", "container_vs_jobs",
        "api_writes_per_container_task", "container_jobs_per_s", "api_writes_per_container_job")


def test_e2e_benchmark_reports_every_key_as_a_number() -> None:
    figures: list[Figure] = []
    keys = e2e.measure(True, figures.append, e2e.Sizes(tasks=20, jobs=5, footprint=100, scale_reps=1, containers=5))
    for key in KEYS:
        assert isinstance(keys.get(key), float) and math.isfinite(keys[key]), (key, keys.get(key))
    assert keys["api_writes_per_task"] > 0 and keys["api_writes_per_job"] > 0
    assert keys["api_writes_per_container_task"] > 0 and keys["api_writes_per_container_job"] > 0
    assert len(figures) == 11
    assert all(isinstance(f.ours, float) and math.isfinite(f.ours) for f in figures)
