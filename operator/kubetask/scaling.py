"""How many worker pods a pool should have: a pure decision, no I/O.

A pool is a worker Deployment labelled ``kubetask.io/pool``; its annotations
carry the policy (so ``helm upgrade`` changes it and the operator obeys at
once, with no restart):

    kubetask.io/queue                       queue the pool serves (default: the pool label)
    kubetask.io/min-replicas                floor, 0 allows scale to zero (default 0)
    kubetask.io/max-replicas                ceiling (default 10)
    kubetask.io/concurrency                 tasks one pod runs at once (default 4)
    kubetask.io/scale-down-delay-seconds    cooldown before removing pods (default 30)

Desired replicas follow the work that is due now (ready + running) divided by
the per-pod concurrency, clamped to [min, max]. The pool never drops below the
number of pods that hold a task, so scale-in does not cut running work short,
and it only shrinks once the work has stayed lower for the whole cooldown,
so a bursty queue does not flap. Scale-up is immediate.
"""

from __future__ import annotations

import dataclasses
import math

from kubetask import model

ANNOTATION_PREFIX = f"{model.GROUP}/"


class PolicyError(ValueError):
    """A pool Deployment carries an annotation the operator cannot use."""


@dataclasses.dataclass(frozen=True)
class PoolPolicy:
    queue: str
    min_replicas: int = 0
    max_replicas: int = 10
    concurrency: int = 4
    scale_down_delay_seconds: float = 30.0


@dataclasses.dataclass(frozen=True)
class Load:
    ready: int
    """Tasks due now and waiting for a slot."""
    running: int
    """Tasks being run."""
    busy_pods: int
    """Pods of this pool holding at least one task."""


def policy_from(deployment: str, pool_label: str, annotations: dict[str, str]) -> PoolPolicy:
    """Read a pool's policy from its Deployment's annotations, naming what is wrong."""

    def integer(key: str, default: int, minimum: int) -> int:
        raw = annotations.get(ANNOTATION_PREFIX + key)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise PolicyError(
                f"Deployment {deployment}: annotation {ANNOTATION_PREFIX}{key}={raw!r} is not an integer; "
                f"set it to a whole number ≥ {minimum}"
            ) from None
        if value < minimum:
            raise PolicyError(f"Deployment {deployment}: annotation {ANNOTATION_PREFIX}{key}={value} must be ≥ {minimum}")
        return value

    policy = PoolPolicy(
        queue=annotations.get(ANNOTATION_PREFIX + "queue", pool_label),
        min_replicas=integer("min-replicas", 0, 0),
        max_replicas=integer("max-replicas", 10, 0),
        concurrency=integer("concurrency", 4, 1),
        scale_down_delay_seconds=float(integer("scale-down-delay-seconds", 30, 0)),
    )
    if policy.min_replicas > policy.max_replicas:
        raise PolicyError(
            f"Deployment {deployment}: min-replicas {policy.min_replicas} > max-replicas {policy.max_replicas}; "
            "lower min or raise max"
        )
    return policy


def desired(policy: PoolPolicy, load: Load) -> int:
    """Replicas the work asks for right now, before the cooldown."""
    want = math.ceil((load.ready + load.running) / policy.concurrency)
    want = max(want, load.busy_pods)
    return max(policy.min_replicas, min(policy.max_replicas, want))


@dataclasses.dataclass
class PoolState:
    """What the scaler remembers of a pool between ticks."""

    last_demand_at: float | None = None
    """Monotonic time when the work last asked for at least the current replicas."""


def decide(policy: PoolPolicy, load: Load, current: int, now: float, state: PoolState) -> int:
    """Replicas to set: up at once, down only after ``scale_down_delay_seconds`` of lower demand."""
    target = desired(policy, load)
    if target >= current:
        state.last_demand_at = now
        return target
    if state.last_demand_at is None:
        # First sight of this pool (operator start): the cooldown starts now.
        state.last_demand_at = now
    if now - state.last_demand_at >= policy.scale_down_delay_seconds:
        return target
    return min(current, policy.max_replicas)
