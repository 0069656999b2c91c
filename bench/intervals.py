"""Coverage of the latency predictors' 80% intervals on held-out networks: the interval from
training residuals (before) against the interval from 5-fold held-out residuals (now), side by
side in one run.

Run: ``.venv/bin/python bench/intervals.py [--seeds 5] [--data FILE] [--out bench/results/intervals.json]``
and ``--markdown bench/results/intervals.json`` for the table.

Data: NAS-Bench-201 latencies measured on four devices (``nb201_latency_dev.csv.gz``, found as
bench/nb201_data.py says; the first 1,500 cells; features as in bench/latency.py, traced once
and cached) and a synthetic
device (2.5 × the raspi4 prior + 0.4 ms, 2% log-normal noise, on digits-cnn plans: the test
suite's device). For n training rows drawn at random (seeds), the rest are held out; *coverage*
is the share of held-out rows whose measured latency lies in the predicted interval (goal 0.80),
*width* the median of (high - low) / predicted. The search reads these intervals: the guided
strategy weights a plan near a latency ceiling by its probability of fitting under it.

"Before" is what the predictors did until this bench: calibrated-prior took the 10% and 90%
quantiles of its training log ratios; boosted-residual fitted LightGBM quantile models (10%,
90%) on the training residuals. "Now" takes the split-conformal quantiles of log ratios of rows
predicted by models fitted without their fold (``latency_models._predictor``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from latency_models import (
    FEATURE_NAMES,
    BoostedResidual,
    CalibratedPrior,
    create_predictor,
    get_target,
    network_features,
)
from search_spaces import Plan

SIZES = (30, 100, 300, 900)
KINDS = ("calibrated-prior", "boosted-residual")


def before(kind: str, x: np.ndarray, y: np.ndarray) -> Any:
    """The predictor fitted as before this bench: intervals from training residuals."""
    import lightgbm as lgb

    if kind == "calibrated-prior":
        model = CalibratedPrior()._fit(x, y, constant=True, interval=False)
        resid = np.log(y / model.predict(x)[0])
        model.log_q = (float(np.quantile(resid, 0.1)), float(np.quantile(resid, 0.9)))
        return model
    model = BoostedResidual()._fit_point(x, y, trees=len(y) >= BoostedResidual.min_rows, base_interval=False)
    base = model.base
    resid = np.log(y / base.predict(x)[0])
    base.log_q = (float(np.quantile(resid, 0.1)), float(np.quantile(resid, 0.9)))
    if not model.models:
        return model
    for name, alpha in (("lo", 0.1), ("hi", 0.9)):
        q = lgb.LGBMRegressor(**BoostedResidual.tree_params(len(y)), objective="quantile", alpha=alpha)
        q.fit(model._x(x), resid)
        model.models[name] = q.booster_.model_to_string()
    model.log_q = None  # the quantile trees' interval
    return model


def score(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    mid, lo, hi = model.predict(x)
    return {
        "coverage": float(np.mean((lo <= y) & (y <= hi))),
        "width": float(np.median((hi - lo) / mid)),
        "mape": float(np.mean(np.abs(mid - y) / y)),
    }


def nb201_data(data: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import latency as bl  # bench/latency.py (bench/ is first on a script's path): loader and traces

    archs, lat = bl.load(1500, data)
    cache = Path(__file__).parent / "results" / ".cache" / "nb201_inventories_1500.json"
    layers = bl.inventories(archs, cache)
    out = {}
    for device, (target_name, batch) in bl.DEVICES.items():
        target = get_target(target_name)
        x = np.stack([network_features(target, inv, Plan(), batch) for inv in layers])
        out[f"nb201 {device}"] = (x, lat[device])
    return out


def synthetic_data(n: int = 1200) -> tuple[np.ndarray, np.ndarray]:
    from latency_models import predict
    from search_spaces import Space
    from workers.zoo import prepare

    layers = prepare("digits-cnn", coupling=False).layers
    space = Space.build(layers, rank_fractions=(0.1, 0.25, 0.5), wbits=(8,), abits=(8,), rank_multiple=1)
    rng = np.random.default_rng(0)
    target = get_target("raspi4")
    x, y = [], []
    for _ in range(n):
        plan = space.sample(rng)
        x.append(network_features(target, layers, plan.validate(layers), 1))
        y.append((2.5 * predict(target, layers, plan).latency_ms + 0.4) * np.exp(rng.normal(0, 0.02)))
    return np.stack(x), np.array(y)


def run(seeds: int, nb201: Path | None = None) -> dict[str, Any]:
    data = {"synthetic digits-cnn": synthetic_data(), **nb201_data(nb201)}
    out: dict[str, Any] = {"seeds": seeds, "sizes": SIZES, "rows": []}
    for name, (x, y) in data.items():
        keep = y >= 0.05  # NB201 on raspi4 lists cells "measured" at 0.01 ms (failed runs)
        x, y = x[keep], y[keep]
        for n in SIZES:
            for kind in KINDS:
                results: dict[str, list[dict[str, float]]] = {"before": [], "now": []}
                for seed in range(seeds):
                    order = np.random.default_rng(seed).permutation(len(y))
                    tr, te = order[:n], order[n:]
                    results["before"].append(score(before(kind, x[tr], y[tr]), x[te], y[te]))
                    results["now"].append(score(create_predictor(kind).fit(x[tr], y[tr]), x[te], y[te]))
                row = {"data": name, "n_train": n, "n_test": len(y) - n, "kind": kind}
                for how, runs in results.items():
                    for key in ("coverage", "width", "mape"):
                        row[f"{how}_{key}"] = float(np.mean([r[key] for r in runs]))
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
    return out


def markdown(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [
        "| data | rows | predictor | coverage before | coverage now | width before | width now | MAPE |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['data']} | {r['n_train']} | {r['kind']} | {r['before_coverage']:.2f} | "
            f"{r['now_coverage']:.2f} | {r['before_width']:.3f} | {r['now_width']:.3f} "
            f"| {r['now_mape']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--data", type=Path, default=None, help="the NB201 latency table (default: see bench/nb201_data.py)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "intervals.json")
    parser.add_argument("--markdown", type=Path, help="print the table of a results file and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return
    result = run(args.seeds, args.data)
    result["features"] = list(FEATURE_NAMES)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(args.out))


if __name__ == "__main__":
    main()
