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

A Queue object's limits bound this (``QueueLimits``, from the queue's row):

* ``paused``: nothing due can be claimed, so only running tasks count. The
  pool shrinks to its minimum as they finish (never below its busy pods),
  without the cooldown: no pod can take work, so nothing would be saved by
  keeping one.
* ``maxRunning``: no more pods than can run that many tasks. With one pool
  that is ``ceil(maxRunning / concurrency)``; with several pools serving the
  queue the budget is shared (``ceilings``): each pool's floor (its minimum,
  and its busy pods) is spent first, then the rest goes to the pools in a
  stable order (namespace, name), so the pools together never hold much more
  than ``maxRunning`` slots. ``min-replicas`` still wins over the limit: a
  floor the admin set is kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

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


@dataclasses.dataclass(frozen=True)
class QueueLimits:
    """What a Queue object says of its queue that bounds its pools (no Queue: ``QueueLimits()``)."""

    paused: bool = False
    max_running: int | None = None


def desired(policy: PoolPolicy, load: Load, paused: bool = False) -> int:
    """Replicas the work asks for right now, before the cooldown and the queue's ceiling.

    While the queue is paused the due work cannot be claimed: only the running tasks count.
    """
    ready = 0 if paused else load.ready
    want = math.ceil((ready + load.running) / policy.concurrency)
    want = max(want, load.busy_pods)
    return max(policy.min_replicas, min(policy.max_replicas, want))


def floor(policy: PoolPolicy, load: Load) -> int:
    """Fewest replicas a pool may have: its minimum, and its busy pods (within its maximum)."""
    return max(policy.min_replicas, min(policy.max_replicas, load.busy_pods))


def ceilings(limits: QueueLimits, pools: Sequence[tuple[PoolPolicy, Load]]) -> list[int]:
    """Most replicas each pool of one queue may have, so that together they hold about ``maxRunning`` slots.

    ``pools`` in a stable order (the scaler sorts them by namespace and name). Each pool's floor is spent
    from the budget first; the rest goes to the pools in order, each taking the pods its work asks for
    (``desired``) up to what the remaining budget fills. No ``maxRunning``: each pool's own maximum.
    """
    if limits.max_running is None:
        return [policy.max_replicas for policy, _ in pools]
    floors = [floor(policy, load) for policy, load in pools]
    budget = limits.max_running - sum(f * policy.concurrency for f, (policy, _) in zip(floors, pools))
    result = []
    for f, (policy, load) in zip(floors, pools):
        extra = max(0, desired(policy, load, limits.paused) - f)
        extra = min(extra, math.ceil(max(budget, 0) / policy.concurrency))
        budget -= extra * policy.concurrency
        result.append(f + extra)
    return result


@dataclasses.dataclass
class PoolState:
    """What the scaler remembers of a pool between ticks."""

    last_demand_at: float | None = None
    """Monotonic time when the work last asked for at least the current replicas."""


def decide(policy: PoolPolicy, load: Load, current: int, now: float, state: PoolState,
           limits: QueueLimits = QueueLimits(), ceiling: int | None = None) -> int:
    """Replicas to set: up at once, down only after ``scale_down_delay_seconds`` of lower demand.

    ``ceiling`` (from ``ceilings``) bounds the answer at once, like a lowered maximum; a paused queue's
    pools shrink without the cooldown.
    """
    top = policy.max_replicas if ceiling is None else min(policy.max_replicas, ceiling)
    target = min(desired(policy, load, limits.paused), top)
    if target >= current:
        state.last_demand_at = now
        return target
    if state.last_demand_at is None:
        # First sight of this pool (operator start): the cooldown starts now.
        state.last_demand_at = now
    if limits.paused or now - state.last_demand_at >= policy.scale_down_delay_seconds:
        return target
    return min(current, top)
