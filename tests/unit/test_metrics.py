"""What the metrics registries render, given figures: no database, no server."""

from __future__ import annotations

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from kubetask import db, metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def rendered(registry: prometheus_client.CollectorRegistry) -> Samples:
    text = prometheus_client.generate_latest(registry).decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples if name.startswith("kubetask_")}


def test_worker_counts_attempts_and_times_only_those_that_ran_to_an_end() -> None:
    busy = [3]
    meters = metrics.WorkerMetrics("q", slots=8, busy=lambda: busy[0], known_types=["echo"])
    meters.attempt("echo", "succeeded", 0.003)
    meters.attempt("echo", "succeeded", 0.2)
    meters.attempt("echo", "handed_back")
    meters.picked_up(-0.001)  # clocks: a claim in the same instant as run_at
    samples = rendered(meters.registry)
    ok = frozenset({"queue": "q", "type": "echo", "outcome": "succeeded"}.items())
    assert samples[("kubetask_attempts_total", ok)] == 2
    assert samples[("kubetask_task_duration_seconds_count", ok)] == 2
    assert samples[("kubetask_task_duration_seconds_bucket", ok | {("le", "0.005")})] == 1
    back = frozenset({"queue": "q", "type": "echo", "outcome": "handed_back"}.items())
    assert samples[("kubetask_attempts_total", back)] == 1
    assert ("kubetask_task_duration_seconds_count", back) not in samples
    assert samples[("kubetask_pickup_latency_seconds_sum", frozenset({("queue", "q")}))] == 0
    assert samples[("kubetask_worker_slots", frozenset({("queue", "q")}))] == 8
    busy[0] = 5
    assert rendered(meters.registry)[("kubetask_worker_busy_slots", frozenset({("queue", "q")}))] == 5


def test_worker_exports_its_event_loop_lag_and_stalls() -> None:
    lag = [0.004]
    meters = metrics.WorkerMetrics("q", slots=1, busy=lambda: 0, known_types=[], loop_lag=lambda: lag[0])
    queue = frozenset({("queue", "q")})
    assert rendered(meters.registry)[("kubetask_worker_event_loop_stalls_total", queue)] == 0
    meters.loop_stalled()
    lag[0] = 5.0
    samples = rendered(meters.registry)
    assert samples[("kubetask_worker_event_loop_stalls_total", queue)] == 1
    assert samples[("kubetask_worker_event_loop_lag_seconds", queue)] == 5.0


def test_a_type_without_a_handler_is_labelled_unknown() -> None:
    meters = metrics.WorkerMetrics("q", slots=1, busy=lambda: 0, known_types=["echo"])
    for typo in ("ecko", "ehco", "echoo"):
        meters.attempt(typo, "failed", 0.001)
        meters.dead_lettered(typo)
    samples = rendered(meters.registry)
    types = {dict(labels)["type"] for name, labels in samples if name == "kubetask_attempts_total"}
    assert types == {"unknown"}
    assert samples[("kubetask_dead_letters_total", frozenset({("queue", "q"), ("type", "unknown")}))] == 3


def _operator(leading: bool, database: metrics.DatabaseFacts | None) -> metrics.OperatorMetrics:
    pools = [metrics.PoolFacts("ns", "kubetask-worker-a", "a", desired=2, actual=1),
             metrics.PoolFacts("ns", "kubetask-worker-idle", "idle", desired=0, actual=None)]
    meters = metrics.OperatorMetrics(leading=lambda: leading, pools=lambda: pools,
                                     api_writes=lambda: {"task_status": 7, "event": 3})
    meters.database = database
    return meters


FACTS = metrics.DatabaseFacts(
    queues=[db.reads.QueueDepth("a", queued=5, retrying=1, due=4, scheduled=2, running=2, oldest_due_seconds=12.5,
                                busy_pods={"w": 2})],
    mirror_backlog=3, mirror_lag_seconds=0.25)


def test_the_leader_reports_queues_pools_and_the_mirror_and_an_empty_served_queue_as_zero() -> None:
    samples = rendered(_operator(True, FACTS).registry)
    assert samples[("kubetask_operator_leader", frozenset())] == 1
    assert samples[("kubetask_tasks", frozenset({("queue", "a"), ("phase", "Queued")}))] == 5
    assert samples[("kubetask_tasks", frozenset({("queue", "a"), ("phase", "Running")}))] == 2
    assert samples[("kubetask_queue_depth", frozenset({("queue", "a")}))] == 4
    assert samples[("kubetask_queue_oldest_due_seconds", frozenset({("queue", "a")}))] == 12.5
    assert samples[("kubetask_queue_depth", frozenset({("queue", "idle")}))] == 0
    assert samples[("kubetask_status_mirror_backlog", frozenset())] == 3
    assert samples[("kubetask_status_mirror_lag_seconds", frozenset())] == 0.25
    pool = frozenset({"namespace": "ns", "pool": "kubetask-worker-a", "queue": "a"}.items())
    assert samples[("kubetask_pool_desired_replicas", pool)] == 2
    assert samples[("kubetask_pool_replicas", pool)] == 1
    idle = frozenset({"namespace": "ns", "pool": "kubetask-worker-idle", "queue": "idle"}.items())
    assert ("kubetask_pool_replicas", idle) not in samples, "not looked at yet: no figure rather than a guess"
    assert samples[("kubetask_kubernetes_writes_total", frozenset({("kind", "task_status")}))] == 7


def test_a_standby_reports_only_its_own_figures_so_sums_count_each_fact_once() -> None:
    samples = rendered(_operator(False, FACTS).registry)
    assert samples[("kubetask_operator_leader", frozenset())] == 0
    assert names(samples) == {"kubetask_operator_leader", "kubetask_kubernetes_writes_total",
                              "kubetask_tasks_admitted_total", "kubetask_tasks_admitted_created"}


def test_a_leader_without_fresh_database_figures_reports_none_rather_than_stale_ones() -> None:
    samples = rendered(_operator(True, None).registry)
    assert "kubetask_queue_depth" not in names(samples)
    assert "kubetask_pool_desired_replicas" in names(samples)


def test_queues_no_pool_serves_are_folded_into_one_series() -> None:
    """A tenant creating Tasks with random queue names must not create unbounded metric series."""
    random_queues = [db.reads.QueueDepth(f"typo-{i}", queued=1, retrying=0, due=1, scheduled=0, running=0,
                                         oldest_due_seconds=float(i), busy_pods={}) for i in range(50)]
    facts = metrics.DatabaseFacts(queues=[*FACTS.queues, *random_queues], mirror_backlog=0, mirror_lag_seconds=0)
    samples = rendered(_operator(True, facts).registry)
    depth_queues = {dict(labels)["queue"] for name, labels in samples if name == "kubetask_queue_depth"}
    assert depth_queues == {"a", "idle", metrics.UNSERVED_QUEUE}
    assert samples[("kubetask_queue_depth", frozenset({("queue", metrics.UNSERVED_QUEUE)}))] == 50
    assert samples[("kubetask_queue_oldest_due_seconds", frozenset({("queue", metrics.UNSERVED_QUEUE)}))] == 49
    assert samples[("kubetask_tasks", frozenset({("queue", metrics.UNSERVED_QUEUE), ("phase", "Queued")}))] == 50


def test_schedule_ticks_are_counted_on_every_replica_and_a_deleted_schedules_series_go() -> None:
    meters = _operator(False, None)
    meters.schedule_ticks("ns", "nightly", "created")
    meters.schedule_ticks("ns", "nightly", "created")
    meters.schedule_ticks("ns", "nightly", "missed", 9)
    meters.schedule_ticks("ns", "nightly", "skipped", 0)  # nothing passed over: no series
    meters.schedule_ticks("other", "hourly", "suspended")
    samples = rendered(meters.registry)

    def ticks(namespace: str, schedule: str, outcome: str) -> frozenset[tuple[str, str]]:
        return frozenset({"namespace": namespace, "schedule": schedule, "outcome": outcome}.items())

    assert samples[("kubetask_schedule_ticks_total", ticks("ns", "nightly", "created"))] == 2
    assert samples[("kubetask_schedule_ticks_total", ticks("ns", "nightly", "missed"))] == 9
    assert ("kubetask_schedule_ticks_total", ticks("ns", "nightly", "skipped")) not in samples
    assert samples[("kubetask_schedule_ticks_total", ticks("other", "hourly", "suspended"))] == 1, \
        "a standby that led reports the ticks it recorded, as its other counters"
    meters.forget_schedules([("other", "hourly")])
    left = {dict(labels)["schedule"] for name, labels in rendered(meters.registry)
            if name == "kubetask_schedule_ticks_total"}
    assert left == {"hourly"}


def test_each_queue_object_reports_its_pause_limit_and_saturation() -> None:
    facts = metrics.DatabaseFacts(
        queues=FACTS.queues, mirror_backlog=0, mirror_lag_seconds=0,
        limits=[db.queues.QueueRow("a", max_running=4), db.queues.QueueRow("idle", paused=True, max_running=2),
                db.queues.QueueRow("open")])
    samples = rendered(_operator(True, facts).registry)
    assert samples[("kubetask_queue_max_running", frozenset({("queue", "a")}))] == 4
    assert samples[("kubetask_queue_running_saturation", frozenset({("queue", "a")}))] == 0.5, "2 running of 4"
    assert samples[("kubetask_queue_running_saturation", frozenset({("queue", "idle")}))] == 0
    assert {dict(labels)["queue"]: value for (name, labels), value in samples.items()
            if name == "kubetask_queue_paused"} == {"a": 0, "idle": 1, "open": 0}
    assert ("kubetask_queue_max_running", frozenset({("queue", "open")})) not in samples, "no limit, no series"


def test_a_worker_counts_the_claims_its_queues_rate_limit_throttled() -> None:
    meters = metrics.WorkerMetrics("q", slots=1, busy=lambda: 0, known_types=[])
    assert rendered(meters.registry)[("kubetask_claims_throttled_total", frozenset({("queue", "q")}))] == 0
    meters.claim_throttled()
    meters.claim_throttled()
    assert rendered(meters.registry)[("kubetask_claims_throttled_total", frozenset({("queue", "q")}))] == 2
