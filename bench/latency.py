"""Latency-model validation tables and predictor throughput (issue 3's bench).

Run: ``.venv/bin/python bench/latency.py [--quick] [--data FILE] [--out bench/results/latency.json]``.

- NAS-Bench-201 on four real devices (``shared/data/nb201_latency_dev.csv.gz`` beside the
  checkout, ``$HWSEARCH_SHARED_DATA`` or ``--data``; bench/nb201_data.py): features come
  from hwsearch's own pipeline (zoo → ``kernels.trace`` → ``network_features`` on the matching
  target), for the first ``--networks`` NB201 indices (HELP's protocol needs 0–1899).
  * HELP's protocol: train pool = indices 0–899, test = 900–1899, both trimmed to the device's
    10–90% latency band; train on the first 10 / 100 / 900 pool networks; Spearman.
  * Random splits (5 seeds): 10 / 100 / 900 training networks, test = the rest of the sample;
    MAPE and share within ±10%.
  Baselines on the same splits: MACs (FLOPs proxy) and a linear model on the same features
  (``latency_models.proxy_baselines``), ridge on a one-hot encoding of the six cell ops (the
  issue's anchor), and the analytic prior.
- Throughput: plans per second of ``BatchPredictor`` (vectorised) and of per-plan ``predict``
  on mobilenet-v2 (53 compressible layers) on zcu102.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nb201_data import nb201_csv, read_nb201
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge

from latency_models import (
    FEATURE_NAMES,
    BatchPredictor,
    create_predictor,
    get_target,
    metrics,
    network_features,
    predict,
    proxy_baselines,
)
from search_spaces import LayerSpec, Plan, Space
from workers.zoo import prepare
from workers.zoo.nasbench201 import OPS, parse_arch

warnings.filterwarnings("ignore")

DEVICES = {
    "raspi4": ("raspi4", 1),
    "fpga": ("zc706", 1),
    "1080ti_32": ("gtx-1080ti", 32),
    "gold_6240": ("xeon-gold-6240", 1),
}
SIZES = (10, 100, 900)
KINDS = ("calibrated-prior", "boosted-residual")


def load(n: int, data: Path | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """The first ``n`` NB201 archs and their latencies on every device (``data``: the table,
    default the shared one; see bench/nb201_data.py)."""
    archs, lat = read_nb201(nb201_csv(data))
    return archs[:n], {d: y[:n] for d, y in lat.items()}


def onehot(arch: str) -> np.ndarray:
    """The six edge ops in arch-string order, each one-hot over ``OPS``."""
    ops = [op for edges in parse_arch(arch) for op in edges]
    return np.array([1.0 if op == o else 0.0 for op in ops for o in OPS])


def inventories(archs: list[str], cache: Path) -> list[list[LayerSpec]]:
    """Trace every architecture once (cached as JSON: the traces take a few minutes)."""
    if cache.exists():
        raw = json.loads(cache.read_text())
        if len(raw) >= len(archs):
            return [[LayerSpec.from_dict(d) for d in layers] for layers in raw[: len(archs)]]
    out = []
    for arch in archs:
        out.append(prepare(f"nasbench201:{arch}", coupling=False).layers)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps([[layer.to_dict() for layer in layers] for layers in out]))
    return out


def trimmed(idx: np.ndarray, y: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(y[idx], [10, 90])
    return idx[(y[idx] >= lo) & (y[idx] <= hi)]


def fit_predict(
    name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, oh_tr: np.ndarray, oh_te: np.ndarray
) -> np.ndarray:
    if name in KINDS:
        return create_predictor(name).fit(x_tr, y_tr).predict(x_te)[0]
    if name in PROXIES:
        return proxy_baselines(x_tr, y_tr, x_te, FEATURE_NAMES.index("total_macs"))[PROXIES[name]]
    if name == "ridge_onehot":
        return Ridge(alpha=1.0).fit(oh_tr, y_tr).predict(oh_te)
    raise ValueError(name)


#: This bench's names of ``latency_models.proxy_baselines``' baselines.
PROXIES = {"macs_proxy": "macs_proxy", "linear_features": "linear"}


METHODS = (*KINDS, "macs_proxy", "ridge_onehot", "linear_features")


def nb201(n_networks: int, seeds: int, data: Path | None = None) -> dict[str, Any]:
    archs, lat = load(n_networks, data)
    layers = inventories(
        archs, Path(__file__).parent / "results" / ".cache" / f"nb201_inventories_{n_networks}.json"
    )
    oh = np.stack([onehot(a) for a in archs])
    out: dict[str, Any] = {}
    for device, (target_name, batch) in DEVICES.items():
        target = get_target(target_name)
        x = np.stack([network_features(target, inv, Plan(), batch) for inv in layers])
        y = lat[device]
        flagged = np.flatnonzero(y < 0.5)
        pool, test = trimmed(np.arange(0, 900), y), trimmed(np.arange(900, min(1900, len(y))), y)
        help_rows: dict[str, dict[str, float]] = {}
        for method in METHODS:
            help_rows[method] = {}
            for n in SIZES:
                tr = pool[:n]
                pred = fit_predict(method, x[tr], y[tr], x[test], oh[tr], oh[test])
                help_rows[method][str(n)] = float(spearmanr(pred, y[test])[0])
        help_rows["analytic_prior"] = {
            str(n): float(spearmanr(x[test, FEATURE_NAMES.index("prior_ms")], y[test])[0]) for n in SIZES
        }
        help_rows["macs_rank"] = {
            str(n): float(spearmanr(x[test, FEATURE_NAMES.index("total_macs")], y[test])[0]) for n in SIZES
        }
        random_rows: dict[str, dict[str, dict[str, float]]] = {}
        for method in METHODS:
            random_rows[method] = {}
            for n in SIZES:
                mapes, w10 = [], []
                for seed in range(seeds):
                    order = np.random.default_rng(seed).permutation(len(y))
                    tr, te = order[:n], order[n:]
                    pred = np.maximum(fit_predict(method, x[tr], y[tr], x[te], oh[tr], oh[te]), 1e-6)
                    m = metrics(pred, y[te])
                    mapes.append(m.mape)
                    w10.append(m.within_10pct)
                random_rows[method][str(n)] = {
                    "mape": float(np.mean(mapes)),
                    "within_10pct": float(np.mean(w10)),
                }
        out[device] = {
            "target": target_name,
            "batch": batch,
            "n_networks": len(y),
            "help_test": len(test),
            "help_pool": len(pool),
            "flagged_under_0_5ms": len(flagged),
            "help_spearman": help_rows,
            "random_splits": random_rows,
        }
        print(device, json.dumps(help_rows["boosted-residual"]), flush=True)
    return out


def throughput(n_plans: int) -> dict[str, Any]:
    layers = prepare("mobilenet-v2").layers
    space = Space.build(layers, rank_fractions=(0.25, 0.5), keep=(0.5, 0.75), wbits=(4, 8), abits=(8,))
    rng = np.random.default_rng(0)
    plans = [space.sample(rng) for _ in range(200)]
    encoded = np.repeat(np.stack([space.encode(p) for p in plans]), max(1, n_plans // 200), axis=0)
    target = get_target("zcu102")
    batch = BatchPredictor(target, space)
    start = time.perf_counter()
    batch.latency_ms(encoded)
    vec_s = time.perf_counter() - start
    start = time.perf_counter()
    for p in plans[:100]:
        predict(target, layers, p)
    loop_s = (time.perf_counter() - start) / 100
    return {
        "model": "mobilenet-v2",
        "layers": len(layers),
        "target": "zcu102",
        "plans": len(encoded),
        "batch_plans_per_s": len(encoded) / vec_s,
        "per_plan_predict_plans_per_s": 1 / loop_s,
        "threads": torch.get_num_threads(),
    }


HOST_MODELS = ("digits-cnn", "digits-vit", "minilm-l6", "mobilenet-v2")


def host(plans_per_model: int, seeds: int) -> dict[str, Any]:
    """host-cpu: measure this CPU, time compressed zoo models for real, fit on 2/3 of the
    networks and validate on the other third (5 random splits), with the raw per-plan medians
    beside the drift-corrected latencies that ``profile_networks`` reports."""
    import tempfile
    from dataclasses import replace

    from latency_models import proxy_baselines, read_network_measurements
    from workers.calibration import features_of
    from workers.profiling import measure_host_target, profile_networks, write_csv

    target = measure_host_target()
    t0 = time.time()
    rows = profile_networks(list(HOST_MODELS), plans_per_model, repeats=15)
    profile_s = time.time() - t0
    out: dict[str, Any] = {
        "models": list(HOST_MODELS),
        "plans_per_model": plans_per_model,
        "n_networks": len(rows),
        "profile_s": profile_s,
        "target": {k: v for k, v in target.to_dict().items() if k != "sources"},
    }
    folder = Path(tempfile.mkdtemp(prefix="hwsearch-host-"))
    for variant, table_rows in (
        ("drift_corrected", rows),
        ("raw_median", [replace(r, latency_ms=r.raw_ms) for r in rows]),
    ):
        path = write_csv(table_rows, folder / f"{variant}.csv")
        table = features_of(target, read_network_measurements(path))
        x, y = table.features, table.latency_ms
        per: dict[str, list[dict[str, float]]] = {}
        for seed in range(seeds):
            order = np.random.default_rng(seed).permutation(len(y))
            test, train = order[: len(y) // 3], order[len(y) // 3 :]
            preds = {k: create_predictor(k).fit(x[train], y[train]).predict(x[test])[0] for k in KINDS}
            preds.update(proxy_baselines(x[train], y[train], x[test], FEATURE_NAMES.index("total_macs")))
            preds["analytic_prior"] = x[test, FEATURE_NAMES.index("prior_ms")]
            for name, pred in preds.items():
                per.setdefault(name, []).append(metrics(pred, y[test]).to_dict())
        out[variant] = {
            name: {k: float(np.mean([m[k] for m in ms])) for k in ("mape", "within_10pct", "spearman")}
            for name, ms in per.items()
        }
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = []
    for device, d in res["nb201"].items():
        lines.append(
            f"\n**{device}** (target `{d['target']}`, batch {d['batch']}; {d['n_networks']} networks, "
            f"{d['flagged_under_0_5ms']} measured under 0.5 ms flagged and kept; HELP pool {d['help_pool']} "
            f"/ test {d['help_test']} after trimming)\n"
        )
        lines.append(
            "| method | Spearman @10 | @100 | @900 | MAPE @10 | @100 | @900 | ±10% @10 | @100 | @900 |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for method, sp in d["help_spearman"].items():
            rnd = d["random_splits"].get(method)
            cells = [f"{sp[str(n)]:.3f}" for n in SIZES]
            cells += [f"{rnd[str(n)]['mape']:.3f}" if rnd else "" for n in SIZES]
            cells += [f"{rnd[str(n)]['within_10pct']:.2f}" if rnd else "" for n in SIZES]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if "host" in res:
        h = res["host"]
        lines.append(
            f"\n**host-cpu** (this machine, measured; {h['n_networks']} compressed zoo networks: "
            f"{', '.join(h['models'])}, {h['plans_per_model']} plans each, the first uncompressed; "
            f"fit on 2/3, test on 1/3, 5 random splits)\n"
        )
        lines.append("| method | latencies | MAPE | within ±10% | Spearman |")
        lines.append("|---|---|---:|---:|---:|")
        for variant in ("drift_corrected", "raw_median"):
            for method, m in h[variant].items():
                lines.append(
                    f"| {method} | {variant.replace('_', ' ')} | {m['mape']:.3f} | "
                    f"{m['within_10pct']:.2f} | {m['spearman']:.3f} |"
                )
    t = res["throughput"]
    lines.append(
        f"\nThroughput on {t['model']} ({t['layers']} layers) → {t['target']}: "
        f"BatchPredictor {t['batch_plans_per_s']:,.0f} plans/s; per-plan predict "
        f"{t['per_plan_predict_plans_per_s']:,.0f} plans/s."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--networks", type=int, default=3000)
    parser.add_argument(
        "--data", type=Path, default=None, help="the NB201 latency table (default: see bench/nb201_data.py)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency.json"))
    parser.add_argument("--markdown", help="print the tables of a results JSON and exit")
    parser.add_argument(
        "--host-only", action="store_true", help="re-run only the host-cpu section and merge it into --out"
    )
    parser.add_argument("--host-plans", type=int, default=16, help="sampled plans per zoo model")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    torch.set_num_threads(1)
    started = time.time()
    if args.host_only:
        res = json.loads(Path(args.out).read_text())
        res["host"] = host(args.host_plans, 5)
        res["host"]["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        res["host"]["wall_s"] = time.time() - started
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(markdown(res))
        return
    load_start = os.getloadavg()[0]
    networks = 1900 if args.quick else args.networks
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_start": load_start,
        "nb201": nb201(networks, 2 if args.quick else 5, args.data),
        "throughput": throughput(20_000 if args.quick else 100_000),
        "host": host(6 if args.quick else args.host_plans, 5),
    }
    res["load_avg_end"] = os.getloadavg()[0]
    res["wall_s"] = time.time() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()
