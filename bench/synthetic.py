"""Synthetic trials, stored as a search stores them: the one generator of the benches and the tests.

bench/dashboard.py and bench/front_cache.py import it as ``synthetic`` (a script's own folder
is first on ``sys.path``); the tests get it from the ``synthetic`` fixture of tests/conftest.py.

- ``trial``: one trial with the quality and latency given (one target), for tests that need
  exact numbers;
- ``trials``: ``n`` trials of a job on some targets: latency with an 80% interval, energy,
  weight bytes, quality a noisy function of latency (the front holds ~1-2% of the trials), a
  latency ceiling on the first target, plans of a few layers. Trial 0 is the uncompressed model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: The targets ``trials`` costs on unless told otherwise (an FPGA board and a phone CPU).
TARGETS = ("zcu102", "cortex-a76")
#: Layer names of digits-cnn, which synthetic plans compress.
LAYERS = ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2")
#: Power per target position (W): energy = latency × power.
_POWER_W = (15.0, 4.0)


def trial(
    job_id: str,
    number: int,
    quality: float | None,
    latency_ms: float,
    *,
    target: str = "xeon-gold-6240",
    feasible: bool = True,
    plan: dict[str, Any] | None = None,
    costs: dict[str, dict[str, Any]] | None = None,
    violations: Sequence[str] = (),
    strategy: str = "random",
) -> dict[str, Any]:
    """One stored trial (``Trial.to_dict()``'s shape); ``costs`` replaces the default costs
    (``latency_ms`` on ``target``, 10 weight bytes)."""
    return {
        "job_id": job_id,
        "number": number,
        "plan": {"layers": dict(plan or {})},
        "status": "ok" if quality is not None else "failed",
        "quality": quality,
        "quality_metric": "top1_accuracy",
        "costs": costs
        if costs is not None
        else {target: {"latency_ms": latency_ms, "weight_bytes": 10, "provenance": "analytic"}},
        "feasible": feasible,
        "violations": list(violations),
        "error": None,
        "eval_s": 0.0,
        "predict_s": 0.0,
        "strategy": strategy,
        "measured": None,
    }


def trials(
    job_id: str,
    n: int,
    seed: int,
    *,
    start: int = 0,
    targets: Sequence[str] = TARGETS,
    limit_ms: float = 0.16,
    strategy: str = "guided",
) -> list[dict[str, Any]]:
    """``n`` trials numbered from ``start``; feasible when the first target's latency is at most
    ``limit_ms`` (the uncompressed model, 0.15 ms there, always is)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        lat = 0.15 if i == 0 else float(rng.uniform(0.10, 0.17))
        quality = 0.99 if i == 0 else float(np.clip(0.99 - (0.15 - lat) * rng.uniform(2, 12), 0.1, 0.99))
        costs = {}
        for k, name in enumerate(targets):
            ms = lat * (1 + 9 * k) * float(rng.uniform(0.95, 1.05))
            costs[name] = {
                "latency_ms": ms,
                "latency_low_ms": ms * 0.93,
                "latency_high_ms": ms * 1.07,
                "energy_mj": ms * _POWER_W[min(k, len(_POWER_W) - 1)],
                "weight_bytes": int(4e5 * lat / 0.15),
                "provenance": "analytic prior (uncalibrated)",
            }
        plan = {}
        if i != 0:
            for name in rng.choice(LAYERS, size=int(rng.integers(1, 4)), replace=False):
                plan[str(name)] = {
                    "rank": None if rng.random() < 0.5 else int(rng.choice([4, 8])),
                    "keep": float(rng.choice([0.5, 0.75, 1.0])),
                    "wbits": int(rng.choice([4, 8, 32])),
                    "abits": 32,
                    "token_keep": 1.0,
                }
        first = costs[targets[0]]["latency_ms"]
        over = [f"latency_ms@{targets[0]} {first:.4g} > {limit_ms:g}"] if first > limit_ms else []
        out.append(
            trial(
                job_id,
                i,
                quality,
                first,
                costs=costs,
                plan=plan,
                feasible=not over,
                violations=over,
                strategy=strategy,
            )
            | {"eval_s": 0.05, "predict_s": 0.001}
        )
    return out
