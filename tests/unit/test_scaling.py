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
