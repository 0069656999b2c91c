"""The baseline strategies: ``random`` (every knob drawn independently) and ``uniform`` (one
compression setting for every layer, swept over its strength)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from search_spaces import KNOBS, Plan

from ._problem import Problem
from ._strategy import Observation, Strategy, register_strategy


@register_strategy
class RandomStrategy(Strategy):
    name = "random"
    description = "uniformly random plans (every knob of every layer drawn independently)"

    def __init__(self, problem: Problem, seed: int) -> None:
        super().__init__(problem, seed)
        self._asked: set[Plan] = set()
        self._warm = 0

    def ask(self, n: int) -> list[Plan]:
        plans = [self.problem.space.sample(self.rng) for _ in range(n)]
        self._asked.update(plans)
        return plans

    def tell(self, observations: Sequence[Observation]) -> None:
        # Plans it never proposed (a resumed job's stored trials): draw a fresh stream, seeded by
        # the seed and how many there were, rather than replay the seed's sequence, whose first
        # draws are those very plans. Deterministic: same seed and same tells, same proposals.
        unasked = [o for o in observations if o.plan not in self._asked and o.plan != Plan()]
        if unasked:
            self._warm += len(unasked)
            self.rng = np.random.default_rng([self.seed, self._warm])


@register_strategy
class UniformStrategy(Strategy):
    """The same compression on every layer, swept over its strength.

    Every combination of the space's global knob values (rank fraction, keep, bits, token
    keep) is one uniform plan: each layer takes the option nearest to that value among its own.
    Plans are ordered by predicted latency on the first target and proposed in a bisecting
    order (van der Corput), so any prefix of the sweep spans the whole latency range.
    """

    name = "uniform"
    description = "one compression setting for every layer, swept over its strength (the baseline)"

    def __init__(self, problem: Problem, seed: int) -> None:
        super().__init__(problem, seed)
        ordered = uniform_plans(problem)
        encoded = np.stack([problem.space.encode(p) for p in ordered])
        latency = problem.screen_latency_ms(encoded)[:, 0]
        by_latency = [ordered[i] for i in np.argsort(latency, kind="stable")]
        self._queue = [by_latency[i] for i in _bisecting_order(len(by_latency))]

    def ask(self, n: int) -> list[Plan]:
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def tell(self, observations: Sequence[Observation]) -> None:
        # A resumed sweep skips the plans already evaluated.
        seen = {o.plan for o in observations}
        if seen & set(self._queue):
            self._queue = [p for p in self._queue if p not in seen]


def uniform_plans(problem: Problem) -> list[Plan]:
    """Every uniform plan of the space: one per combination of its global knob values, each
    layer taking its own option nearest to that value (distinct plans, in combination order)."""
    spec = problem.spec.space
    axes: dict[str, list[Any]] = {
        "rank": [None, *spec.rank_fractions],
        "keep": [1.0, *spec.keep],
        "wbits": [32, *spec.wbits],
        "abits": [32, *spec.abits],
        "token_keep": [1.0, *spec.token_keep],
    }
    plans: dict[Plan, None] = {}
    for combo in itertools.product(*(dict.fromkeys(axes[k]) for k in KNOBS)):
        plans.setdefault(problem.space.nearest_uniform(dict(zip(KNOBS, combo, strict=True))))
    return list(plans)


def _bisecting_order(n: int) -> list[int]:
    """Indices 0..n-1: both ends first, then midpoints of ever finer halvings."""
    if n <= 2:
        return list(range(n))
    order, seen = [0, n - 1], {0, n - 1}
    depth = 1
    while len(order) < n:
        for k in range(1, 2**depth, 2):
            i = round(k * (n - 1) / 2**depth)
            if i not in seen:
                seen.add(i)
                order.append(i)
        depth += 1
        if 2**depth > 4 * n:
            order.extend(i for i in range(n) if i not in seen)
            break
    return order
