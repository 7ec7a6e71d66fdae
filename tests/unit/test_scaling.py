"""The pool-size decision: follow due work, clamp, never drop busy pods, cool down before shrinking."""

from __future__ import annotations

import pytest

from kubetask import scaling

POLICY = scaling.PoolPolicy(queue="q", min_replicas=0, max_replicas=5, concurrency=4, scale_down_delay_seconds=30)


@pytest.mark.parametrize(("ready", "running", "busy", "want"), [
    (0, 0, 0, 0),      # idle: scale to zero
    (1, 0, 0, 1),      # the first task needs a pod
    (8, 0, 0, 2),      # ceil(8 / 4)
    (9, 0, 0, 3),
    (100, 0, 0, 5),    # clamped to max
    (0, 3, 3, 3),      # three busy pods are kept even though 3 tasks fit in one
])
def test_desired_follows_due_work(ready: int, running: int, busy: int, want: int) -> None:
    assert scaling.desired(POLICY, scaling.Load(ready, running, busy)) == want


def test_min_replicas_is_a_floor() -> None:
    policy = scaling.PoolPolicy(queue="q", min_replicas=2, max_replicas=5)
    assert scaling.desired(policy, scaling.Load(0, 0, 0)) == 2


def test_scale_up_is_immediate_and_scale_down_waits_for_the_cooldown() -> None:
    state = scaling.PoolState()
    assert scaling.decide(POLICY, scaling.Load(20, 0, 0), current=0, now=0.0, state=state) == 5
    # Work drops: keep the pods until the cooldown has passed since demand was last high.
    assert scaling.decide(POLICY, scaling.Load(0, 0, 0), current=5, now=10.0, state=state) == 5
    assert scaling.decide(POLICY, scaling.Load(0, 0, 0), current=5, now=29.9, state=state) == 5
    assert scaling.decide(POLICY, scaling.Load(0, 0, 0), current=5, now=30.0, state=state) == 0


def test_new_demand_restarts_the_cooldown() -> None:
    state = scaling.PoolState()
    scaling.decide(POLICY, scaling.Load(20, 0, 0), current=0, now=0.0, state=state)
    scaling.decide(POLICY, scaling.Load(20, 0, 0), current=5, now=25.0, state=state)
    assert scaling.decide(POLICY, scaling.Load(0, 0, 0), current=5, now=40.0, state=state) == 5
    assert scaling.decide(POLICY, scaling.Load(0, 0, 0), current=5, now=55.0, state=state) == 0


def test_lowered_max_applies_at_once() -> None:
    policy = scaling.PoolPolicy(queue="q", max_replicas=2, scale_down_delay_seconds=300)
    assert scaling.decide(policy, scaling.Load(50, 0, 0), current=5, now=0.0, state=scaling.PoolState()) == 2


def test_policy_from_annotations() -> None:
    policy = scaling.policy_from("ns/pool", "default", {
        "kubetask.io/queue": "emails", "kubetask.io/min-replicas": "1", "kubetask.io/max-replicas": "7",
        "kubetask.io/concurrency": "8", "kubetask.io/scale-down-delay-seconds": "12"})
    assert policy == scaling.PoolPolicy("emails", 1, 7, 8, 12.0)
    assert scaling.policy_from("ns/pool", "default", {}).queue == "default"


@pytest.mark.parametrize(("annotations", "message"), [
    ({"kubetask.io/max-replicas": "ten"}, "kubetask.io/max-replicas='ten' is not an integer"),
    ({"kubetask.io/concurrency": "0"}, "kubetask.io/concurrency=0 must be ≥ 1"),
    ({"kubetask.io/min-replicas": "4", "kubetask.io/max-replicas": "2"}, "min-replicas 4 > max-replicas 2"),
])
def test_bad_policy_names_the_deployment_and_annotation(annotations: dict[str, str], message: str) -> None:
    with pytest.raises(scaling.PolicyError, match="Deployment ns/pool") as err:
        scaling.policy_from("ns/pool", "default", annotations)
    assert message in str(err.value)


# -- a Queue's limits: paused, maxRunning -------------------------------------------------------------

PAUSED = scaling.QueueLimits(paused=True)


@pytest.mark.parametrize(("policy", "load", "want"), [
    (POLICY, scaling.Load(100, 0, 0), 0),                                        # due work cannot be claimed
    (scaling.PoolPolicy(queue="q", min_replicas=2, max_replicas=5), scaling.Load(100, 0, 0), 2),   # minimum kept
    (POLICY, scaling.Load(100, 3, 3), 3),                                        # running tasks finish on their pods
    (POLICY, scaling.Load(100, 5, 1), 2),                                        # ceil(5 running / 4)
])
def test_a_paused_queue_asks_only_for_its_running_work(policy: scaling.PoolPolicy, load: scaling.Load,
                                                       want: int) -> None:
    assert scaling.desired(policy, load, paused=True) == want
    [ceiling] = scaling.ceilings(PAUSED, [(policy, load)])
    assert scaling.decide(policy, load, current=5, now=0.0, state=scaling.PoolState(), limits=PAUSED,
                          ceiling=ceiling) == want


def test_pausing_skips_the_cooldown_and_resuming_scales_up_at_once() -> None:
    state = scaling.PoolState()
    assert scaling.decide(POLICY, scaling.Load(20, 0, 0), current=0, now=0.0, state=state) == 5
    assert scaling.decide(POLICY, scaling.Load(20, 0, 0), current=5, now=1.0, state=state, limits=PAUSED) == 0
    assert scaling.decide(POLICY, scaling.Load(20, 0, 0), current=0, now=2.0, state=state) == 5


@pytest.mark.parametrize(("max_running", "concurrency", "ready", "want"), [
    (3, 1, 200, 3),      # 3 tasks at once, one per pod
    (3, 4, 200, 1),      # one pod runs all 3
    (10, 4, 200, 3),     # ceil(10 / 4)
    (10, 4, 5, 2),       # less work than the limit: the work decides
    (100, 4, 200, 5),    # the pool's max is lower
])
def test_max_running_caps_a_single_pool(max_running: int, concurrency: int, ready: int, want: int) -> None:
    policy = scaling.PoolPolicy(queue="q", max_replicas=5, concurrency=concurrency)
    load = scaling.Load(ready, 0, 0)
    limits = scaling.QueueLimits(max_running=max_running)
    [ceiling] = scaling.ceilings(limits, [(policy, load)])
    assert scaling.decide(policy, load, current=0, now=0.0, state=scaling.PoolState(), limits=limits,
                          ceiling=ceiling) == want


def test_a_lowered_max_running_applies_at_once_but_keeps_busy_pods() -> None:
    policy = scaling.PoolPolicy(queue="q", max_replicas=10, concurrency=1, scale_down_delay_seconds=300)
    limits = scaling.QueueLimits(max_running=2)
    load = scaling.Load(ready=50, running=4, busy_pods=4)
    [ceiling] = scaling.ceilings(limits, [(policy, load)])
    assert ceiling == 4, "the four running tasks finish where they are"
    assert scaling.decide(policy, load, current=10, now=0.0, state=scaling.PoolState(), limits=limits,
                          ceiling=ceiling) == 4
    idle = scaling.Load(ready=50, running=0, busy_pods=0)
    [ceiling] = scaling.ceilings(limits, [(policy, idle)])
    assert scaling.decide(policy, idle, current=10, now=0.0, state=scaling.PoolState(), limits=limits,
                          ceiling=ceiling) == 2


def test_min_replicas_wins_over_max_running() -> None:
    policy = scaling.PoolPolicy(queue="q", min_replicas=3, max_replicas=5, concurrency=4)
    assert scaling.ceilings(scaling.QueueLimits(max_running=1), [(policy, scaling.Load(0, 0, 0))]) == [3]


@pytest.mark.parametrize(("max_running", "pools", "want"), [
    # (concurrency, min, max, busy) per pool, in the scaler's order; 200 tasks due.
    (8, [(4, 0, 5, 0), (4, 0, 5, 0)], [2, 0]),             # the first pool fills the budget
    (10, [(4, 0, 5, 0), (4, 0, 5, 0)], [3, 0]),            # ceil(10 / 4) = 3, 12 slots ≥ 10
    (10, [(4, 0, 2, 0), (1, 0, 5, 0)], [2, 2]),            # 8 slots in the first (its max), 2 more in the second
    (10, [(4, 0, 5, 0), (4, 1, 5, 0)], [2, 1]),            # the second pool's minimum is spent first: 6 left, 2 pods
    (6, [(2, 0, 5, 0), (2, 0, 5, 2)], [1, 2]),             # the second's busy pods count first: 2 slots left
    (None, [(4, 0, 5, 0), (4, 0, 3, 0)], [5, 3]),          # no limit: each pool's own max
])
def test_pools_of_a_queue_share_its_max_running(max_running: int | None, pools: list[tuple[int, int, int, int]],
                                                want: list[int]) -> None:
    limits = scaling.QueueLimits(max_running=max_running)
    looked = [(scaling.PoolPolicy(queue="q", min_replicas=lo, max_replicas=hi, concurrency=c),
               scaling.Load(200, 2 * busy, busy)) for c, lo, hi, busy in pools]
    tops = scaling.ceilings(limits, looked)
    got = [scaling.decide(policy, load, current=0, now=0.0, state=scaling.PoolState(), limits=limits, ceiling=top)
           for (policy, load), top in zip(looked, tops)]
    assert got == want
    if max_running is not None:
        slots = sum(n * policy.concurrency for n, (policy, _) in zip(got, looked))
        floors = sum(scaling.floor(policy, load) * policy.concurrency for policy, load in looked)
        assert slots < max(max_running, floors) + max(policy.concurrency for policy, _ in looked)
