"""A quality value with the number of examples behind it and its 95% interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Z_95", "QualityEstimate", "accuracy_interval", "bootstrap_interval"]

#: The two-sided 95% quantile of the standard normal distribution.
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class QualityEstimate:
    """One measured quality: ``value`` of ``metric`` on ``n`` examples, 95% interval [low, high].

    Higher is better. ``n``, ``low`` and ``high`` are None only for a user's own evaluator
    that did not report them (see ``load_evaluator``); every built-in evaluator sets them.
    ``extra`` holds secondary numbers (e.g. the mean KL divergence beside an agreement).
    """

    value: float
    n: int | None
    low: float | None
    high: float | None
    metric: str
    extra: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"quality value must be finite, got {self.value!r}")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if (self.low is None) != (self.high is None):
            raise ValueError("low and high are given together or not at all")
        if (
            self.low is not None
            and self.high is not None
            and not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high)
        ):
            raise ValueError(f"interval must be finite with low <= high, got [{self.low}, {self.high}]")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for a trial row or an artifact's metadata."""
        return {
            "metric": self.metric,
            "value": self.value,
            "n": self.n,
            "low": self.low,
            "high": self.high,
            "extra": dict(self.extra),
        }


def accuracy_interval(
    correct: int, n: int, metric: str = "top1_accuracy", extra: Mapping[str, float] | None = None
) -> QualityEstimate:
    """``correct / n`` with its Wilson score 95% interval.

    Wilson rather than the normal approximation: it stays inside [0, 1] and is not a zero-width
    interval at 0 or n correct, which a small evaluation set of a good model often gives.
    """
    if isinstance(n, bool) or isinstance(correct, bool) or not 0 <= correct <= n or n < 1:
        raise ValueError(f"need 0 <= correct <= n and n >= 1, got correct={correct}, n={n}")
    p = correct / n
    z2 = Z_95 * Z_95
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = Z_95 * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    return QualityEstimate(
        value=p,
        n=n,
        # Exactly 0 (1) when none (all) are correct, as the formula gives before rounding.
        low=0.0 if correct == 0 else max(0.0, centre - half),
        high=1.0 if correct == n else min(1.0, centre + half),
        metric=metric,
        extra=dict(extra or {}),
    )


def bootstrap_interval(
    values: Any,
    statistic: Callable[[np.ndarray], float] = np.mean,
    seed: int = 0,
    n_boot: int = 1000,
    metric: str = "mean",
    extra: Mapping[str, float] | None = None,
) -> QualityEstimate:
    """``statistic(values)`` with a seeded percentile-bootstrap 95% interval.

    ``values`` has one row per example (a vector, or an N×k array when the statistic needs
    several numbers per example, e.g. prediction and score columns for Spearman); examples are
    resampled with replacement ``n_boot`` times. A resample on which the statistic is undefined
    (NaN, e.g. a rank correlation of constant values) is left out of the percentiles.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim == 0 or data.shape[0] < 1:
        raise ValueError("bootstrap_interval needs at least one example")
    if isinstance(n_boot, bool) or n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    n = int(data.shape[0])
    value = float(statistic(data))
    rng = np.random.default_rng(seed)
    # One resample at a time: n_boot × n indices at once would be gigabytes for a large set.
    boot = np.array([float(statistic(data[rng.integers(0, n, size=n)])) for _ in range(n_boot)])
    boot = boot[np.isfinite(boot)]
    if boot.size == 0 or not math.isfinite(value):
        raise ValueError(f"the statistic is undefined on these {n} examples (value {value})")
    low, high = np.percentile(boot, [2.5, 97.5])
    return QualityEstimate(
        value=value, n=n, low=float(low), high=float(high), metric=metric, extra=dict(extra or {})
    )
