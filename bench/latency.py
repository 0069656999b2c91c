"""Latency-model validation tables, validation speed and predictor throughput (issues 3 and 18).

Run: ``.venv/bin/python bench/latency.py [--quick] [--kinds K1,K2] [--networks N] [--no-host]
[--data FILE] [--out bench/results/latency.json]``.

The one source of the library's NAS-Bench-201 rows (bench/latency_nb201.py, the predictor
study, reports only its own experimental methods and points here):

- NAS-Bench-201 on four real devices (``shared/data/nb201_latency_dev.csv.gz`` beside the
  checkout, ``$HWSEARCH_SHARED_DATA`` or ``--data``; bench/nb201_data.py): features come
  from hwsearch's own pipeline (zoo → ``kernels.trace`` through the inventory cache
  workers/_inventories.py, as ``hwsearch latency fit`` gets them → ``network_features`` on the
  matching target), for the first ``--networks`` NB201 indices (HELP's protocol needs 0–1899).
  * HELP's protocol: train pool = indices 0–899, test = 900–1899, each trimmed as HELP's loader
    does (sort by latency, keep [int(0.1 n), int(0.9 n))); Spearman for the first 10 / 100 pool
    networks (index order), mean ± sd over 5 random draws of 10 / 100 (seeds 0–4), and the
    whole trimmed pool; "transfer from S @10" rows per other dev device S and for ``--from auto``
    (:func:`transfer_at_10`).
  * Random splits (seeds 0–4): 10 / 100 / 900 training networks, test = the rest of the sample;
    MAPE, share within ±10 % and Spearman.
  Baselines on the same splits: MACs (FLOPs proxy) and a linear model on the same features
  (``latency_models.proxy_baselines``), ridge on a one-hot encoding of the six cell ops (the
  issue's anchor), and the analytic prior.
- ``validate_1000_seconds``: ``workers.calibration.validate`` on 1,000 NB201 networks, cold (a
  fresh data dir) and warm (the same table again).
- Throughput: plans per second of ``BatchPredictor`` (vectorised) and of per-plan ``predict``
  on mobilenet-v2 (53 compressible layers) on zcu102.
- host-cpu (skipped with ``--no-host``, then kept from the previous results file).
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
    TransferPredictor,
    create_predictor,
    get_target,
    loo_transfer_spearman,
    metrics,
    network_features,
    predict,
    proxy_baselines,
    select_predictor,
)
from search_spaces import LayerSpec, Plan, Space
from workers._inventories import InventoryCache
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
KINDS = ("auto", "calibrated-prior", "boosted-residual", "scaled-prior")


def load(n: int, data: Path | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """The first ``n`` NB201 archs and their latencies on every device (``data``: the table,
    default the shared one; see bench/nb201_data.py)."""
    archs, lat = read_nb201(nb201_csv(data))
    return archs[:n], {d: y[:n] for d, y in lat.items()}


def onehot(arch: str) -> np.ndarray:
    """The six edge ops in arch-string order, each one-hot over ``OPS``."""
    ops = [op for edges in parse_arch(arch) for op in edges]
    return np.array([1.0 if op == o else 0.0 for op in ops for o in OPS])


#: The traced inventories, kept between runs by the library's own inventory cache (keyed by
#: the tracer's code, so a tracer change is never served stale inventories, which the former
#: one-JSON cache of this bench could not tell).
INVENTORY_DIR = Path(__file__).parent / "results" / ".cache" / "inventories"


def inventories(archs: list[str], cache_dir: Path = INVENTORY_DIR) -> list[list[LayerSpec]]:
    """Every architecture's inventory, as ``hwsearch latency fit`` gets it (coupling off)."""
    cache = InventoryCache(cache_dir)
    return [cache.get(f"nasbench201:{arch}", False) for arch in archs]


def trimmed(idx: np.ndarray, y: np.ndarray) -> np.ndarray:
    """HELP's outlier removal (its loader): sort by latency, keep [int(0.1 n), int(0.9 n)),
    returned in NB201 index order (the first-N rows are the first N indices)."""
    order = idx[np.argsort(y[idx], kind="stable")]
    n = len(idx)
    return np.sort(order[int(n * 0.1) : int(n * 0.9)])


def fit_predict(
    name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, oh_tr: np.ndarray, oh_te: np.ndarray
) -> np.ndarray:
    """Fit method ``name`` on the training rows and predict the test rows (ms)."""
    if name in PROXIES:
        return proxy_baselines(x_tr, y_tr, x_te, FEATURE_NAMES.index("total_macs"))[PROXIES[name]]
    if name == "ridge_onehot":
        return Ridge(alpha=1.0).fit(oh_tr, y_tr).predict(oh_te)
    if name == "auto":
        # what `hwsearch latency fit` does by default: every kind scored by k-fold held-out
        # Spearman on the training rows, the best refitted on all of them
        name = select_predictor(x_tr, y_tr).chosen
    return create_predictor(name).fit(x_tr, y_tr).predict(x_te)[0]


#: This bench's names of ``latency_models.proxy_baselines``' baselines.
PROXIES = {"macs_proxy": "macs_proxy", "linear_features": "linear"}
BASELINES = ("macs_proxy", "ridge_onehot", "linear_features")
#: HELP's draws and the random splits: numpy default_rng(seed) for these seeds.
SEEDS = (0, 1, 2, 3, 4)


def transfer_at_10(
    device: str, x: dict[str, np.ndarray], y: dict[str, np.ndarray], pool: np.ndarray, test: np.ndarray
) -> dict[str, Any]:
    """Spearman on ``test`` of ``device`` after 10 of its networks, by the transfer kind
    (``latency fit --from``): a boosted-residual predictor fitted on another dev device's
    trimmed HELP pool (its own 0-899 networks, never ``device``'s test networks' latencies),
    its prediction a feature, corrected on the 10 rows. Per source, the first 10 and 5 random
    draws of 10 (seeds 0-4); "auto" picks the source per draw as ``--from auto`` does (best
    leave-one-out Spearman of the corrected transfer on the 10 rows)."""
    picks = [pool[:10]] + [
        np.sort(np.random.default_rng(seed).choice(pool, size=10, replace=False)) for seed in SEEDS
    ]
    sources = [d for d in DEVICES if d != device]
    columns: dict[str, np.ndarray] = {}
    for source in sources:
        src_pool = trimmed(np.arange(0, 900), y[source])
        fitted = create_predictor("boosted-residual").fit(x[source][src_pool], y[source][src_pool])
        columns[source] = fitted.predict(x[source])[0]

    def rho(rows: np.ndarray, pick: np.ndarray) -> float:
        model = TransferPredictor().fit(rows[pick], y[device][pick])
        return _spearman(model.predict(rows[test])[0], y[device][test])

    out: dict[str, Any] = {}
    for source in sources:
        rows = np.concatenate([x[device], columns[source][:, None]], axis=1)
        rhos = [
            _spearman(
                TransferPredictor().fit(rows[pick], y[device][pick]).predict(rows[test])[0], y[device][test]
            )
            for pick in picks
        ]
        out[source] = {"10": rhos[0], "10_draws": _summary(rhos[1:])}
    auto = []
    for pick in picks:
        best = max(
            sources,
            key=lambda s: loo_transfer_spearman(
                np.concatenate([x[device][pick], columns[s][pick, None]], axis=1), y[device][pick]
            ),
        )
        rows = np.concatenate([x[device], columns[best][:, None]], axis=1)
        auto.append(
            _spearman(
                TransferPredictor().fit(rows[pick], y[device][pick]).predict(rows[test])[0], y[device][test]
            )
        )
    out["auto"] = {"10": auto[0], "10_draws": _summary(auto[1:])}
    out["fit --from auto"] = fit_from_auto(device, x, y, columns, picks, test)
    return out


def fit_from_auto(
    device: str,
    x: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    columns: dict[str, np.ndarray],
    picks: list[np.ndarray],
    test: np.ndarray,
) -> dict[str, Any]:
    """What ``latency fit --from auto`` keeps on 10 rows: the source by leave-one-out, then the
    transfer against every from-scratch kind by the same cross-validation (``select_predictor``
    with the transfer as a candidate), the winner refitted on the 10 rows. (The fit's gate on a
    held-out split is not applied below 3 held-out rows, so 10 rows never reach it.)"""
    rhos, chosen = [], []
    width = len(FEATURE_NAMES)
    for pick in picks:
        best = max(
            columns,
            key=lambda s: loo_transfer_spearman(
                np.concatenate([x[device][pick], columns[s][pick, None]], axis=1), y[device][pick]
            ),
        )
        rows = np.concatenate([x[device], columns[best][:, None]], axis=1)
        kind = select_predictor(
            rows[pick], y[device][pick], candidates={"transfer": TransferPredictor}
        ).chosen
        if kind == "transfer":
            model = TransferPredictor().fit(rows[pick], y[device][pick])
            pred = model.predict(rows[test])[0]
        else:
            pred = (
                create_predictor(kind)
                .fit(rows[pick][:, :width], y[device][pick])
                .predict(rows[test][:, :width])[0]
            )
        rhos.append(_spearman(pred, y[device][test]))
        chosen.append(kind if kind != "transfer" else f"transfer from {best}")
    return {"10": rhos[0], "10_draws": _summary(rhos[1:]), "chosen": chosen}


def _spearman(pred: np.ndarray, y: np.ndarray) -> float:
    return float(spearmanr(pred, y)[0])


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values))}


def help_protocol(
    methods: tuple[str, ...], x: np.ndarray, y: np.ndarray, oh: np.ndarray
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """HELP's split: pool 0-899 / test 900-1899, each trimmed; Spearman on the test set for the
    first 10 / 100 of the pool (index order), the mean ± sd of 5 random draws of 10 / 100
    (seeds 0-4), and the whole trimmed pool ("900")."""
    pool, test = trimmed(np.arange(0, 900), y), trimmed(np.arange(900, min(1900, len(y))), y)
    rows: dict[str, Any] = {}
    for method in methods:
        row: dict[str, Any] = {}
        for n in (10, 100):
            first = pool[:n]
            row[str(n)] = _spearman(
                fit_predict(method, x[first], y[first], x[test], oh[first], oh[test]), y[test]
            )
            draws = []
            for seed in SEEDS:
                pick = np.sort(np.random.default_rng(seed).choice(pool, size=n, replace=False))
                pred = fit_predict(method, x[pick], y[pick], x[test], oh[pick], oh[test])
                draws.append(_spearman(pred, y[test]))
            row[f"{n}_draws"] = _summary(draws)
        row["900"] = _spearman(fit_predict(method, x[pool], y[pool], x[test], oh[pool], oh[test]), y[test])
        rows[method] = row
    for name, column in (("analytic_prior", "prior_ms"), ("macs_rank", "total_macs")):
        rho = _spearman(x[test, FEATURE_NAMES.index(column)], y[test])  # no fit: same at every size
        rows[name] = {"10": rho, "100": rho, "900": rho}
    return rows, pool, test


def random_splits(methods: tuple[str, ...], x: np.ndarray, y: np.ndarray, oh: np.ndarray) -> dict[str, Any]:
    """5 random splits (seeds 0-4): train on 10 / 100 / 900, test on the rest; MAPE, share
    within ±10 % and Spearman, mean ± sd over the seeds."""
    rows: dict[str, Any] = {}
    for method in (*methods, "analytic_prior"):
        rows[method] = {}
        for n in SIZES:
            per: dict[str, list[float]] = {"mape": [], "within_10pct": [], "spearman": []}
            for seed in SEEDS:
                order = np.random.default_rng(seed).permutation(len(y))
                tr, te = order[:n], order[n:]
                if method == "analytic_prior":
                    pred = x[te, FEATURE_NAMES.index("prior_ms")]
                else:
                    pred = fit_predict(method, x[tr], y[tr], x[te], oh[tr], oh[te])
                m = metrics(np.maximum(pred, 1e-6), y[te])
                per["mape"].append(m.mape)
                per["within_10pct"].append(m.within_10pct)
                per["spearman"].append(m.spearman)
            rows[method][str(n)] = {k: _summary(v) for k, v in per.items()}
    return rows


def nb201(n_networks: int, kinds: tuple[str, ...], data: Path | None = None) -> dict[str, Any]:
    """The library's rows (and the baselines) on the four dev devices."""
    archs, lat = load(n_networks, data)
    started = time.perf_counter()
    layers = inventories(archs)
    inventory_s = time.perf_counter() - started
    oh = np.stack([onehot(a) for a in archs])
    methods = (*kinds, *BASELINES)
    xs = {
        device: np.stack([network_features(get_target(t), inv, Plan(), b) for inv in layers])
        for device, (t, b) in DEVICES.items()
    }
    out: dict[str, Any] = {"inventory_s": inventory_s}
    for device, (target_name, batch) in DEVICES.items():
        x, y = xs[device], lat[device]
        help_rows, pool, test = help_protocol(methods, x, y, oh)
        help_rows["transfer@10"] = transfer_at_10(device, xs, lat, pool, test)
        out[device] = {
            "target": target_name,
            "batch": batch,
            "n_networks": len(y),
            "help_test": len(test),
            "help_pool": len(pool),
            "flagged_under_0_5ms": int((y < 0.5).sum()),
            "help_spearman": help_rows,
            "random_splits": random_splits(methods, x, y, oh),
        }
        print(device, json.dumps({k: help_rows[k]["10"] for k in kinds}), flush=True)
    return out


def validate_seconds(n: int, data: Path | None = None) -> dict[str, Any]:
    """Seconds for ``workers.calibration.validate`` on ``n`` NB201 networks (raspi4 latencies),
    cold (a fresh data dir: every network built and traced) and warm (the same table again:
    inventories from the data dir's cache); the predictor is fitted first on 20 other networks."""
    import tempfile

    from latency_models import catalogue
    from workers.calibration import fit, validate

    archs, lat = load(max(n + 20, 1900), data)
    y = lat["raspi4"]
    folder = Path(tempfile.mkdtemp(prefix="hwsearch-validate-"))
    for name, rows in (("fit", range(n, n + 20)), ("validate", range(n))):
        with (folder / f"{name}.csv").open("w") as f:
            f.write("model,plan,batch,latency_ms\n")
            f.writelines(f"nasbench201:{archs[i]},,1,{float(y[i])!r}\n" for i in rows)
    old = os.environ.get("HWSEARCH_DATA_DIR")
    os.environ["HWSEARCH_DATA_DIR"] = str(folder / "data")
    try:
        cat = catalogue(folder / "data")
        fit("raspi4", folder / "fit.csv", kind="calibrated-prior", test_fraction=0.0, cat=cat)
        out: dict[str, Any] = {"networks": n}
        for label in ("cold", "warm"):
            started = time.perf_counter()
            report = validate("raspi4", folder / "validate.csv", cat=cat)
            out[label] = time.perf_counter() - started
        out["n_test"] = report["n_test"]
        print(f"validate {n} networks: cold {out['cold']:.1f} s, warm {out['warm']:.1f} s", flush=True)
    finally:
        if old is None:
            os.environ.pop("HWSEARCH_DATA_DIR", None)
        else:
            os.environ["HWSEARCH_DATA_DIR"] = old
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
            none = np.zeros((len(y), 0))
            preds = {k: fit_predict(k, x[train], y[train], x[test], none[train], none[test]) for k in KINDS}
            preds.update(proxy_baselines(x[train], y[train], x[test], FEATURE_NAMES.index("total_macs")))
            preds["analytic_prior"] = x[test, FEATURE_NAMES.index("prior_ms")]
            for name, pred in preds.items():
                per.setdefault(name, []).append(metrics(pred, y[test]).to_dict())
        out[variant] = {
            name: {k: float(np.mean([m[k] for m in ms])) for k in ("mape", "within_10pct", "spearman")}
            for name, ms in per.items()
        }
    return out


def _cell(value: Any, fmt: str = ".3f") -> str:
    return "—" if value is None else format(value, fmt)


def _draws(d: dict[str, float] | None) -> str:
    return "—" if d is None else f"{d['mean']:.3f} ± {d['sd']:.3f}"


def markdown(res: dict[str, Any]) -> str:
    """The tables of a results JSON (the library's rows are the source of docs/benchmarks.md)."""
    lines = []
    for device, d in res["nb201"].items():
        if not isinstance(d, dict) or "help_spearman" not in d:
            continue
        lines.append(
            f"\n**{device}** (target `{d['target']}`, batch {d['batch']}; {d['n_networks']} networks, "
            f"{d['flagged_under_0_5ms']} measured under 0.5 ms flagged and kept; HELP pool {d['help_pool']} "
            f"/ test {d['help_test']} after trimming)\n"
        )
        lines.append("HELP protocol, Spearman (first N of the pool | mean ± sd of 5 random draws):\n")
        lines.append("| method | @10 first | @10 draws | @100 first | @100 draws | whole pool |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for method, sp in d["help_spearman"].items():
            if method == "transfer@10":
                continue
            lines.append(
                f"| {method} | {_cell(sp['10'])} | {_draws(sp.get('10_draws'))} | {_cell(sp['100'])} | "
                f"{_draws(sp.get('100_draws'))} | {_cell(sp['900'])} |"
            )
        for source, sp in d["help_spearman"].get("transfer@10", {}).items():
            label = source if source.startswith("fit ") else f"transfer from {source}"
            lines.append(f"| {label} @10 | {_cell(sp['10'])} | {_draws(sp.get('10_draws'))} | — | — | — |")
        lines.append("\nRandom splits (5 seeds; train on N, test on the rest), mean over seeds:\n")
        lines.append(
            "| method | MAPE @10 | @100 | @900 | ±10% @10 | @100 | @900 | Spearman @10 | @100 | @900 |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for method, rnd in d["random_splits"].items():
            cells = [f"{rnd[str(n)]['mape']['mean']:.3f}" for n in SIZES]
            cells += [f"{rnd[str(n)]['within_10pct']['mean']:.2f}" for n in SIZES]
            cells += [f"{rnd[str(n)]['spearman']['mean']:.3f}" for n in SIZES]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if "validate_1000_seconds" in res:
        v = res["validate_1000_seconds"]
        lines.append(
            f"\n`workers.calibration.validate` on {v['networks']} NB201 networks: cold (fresh data dir, "
            f"every network built and traced) {v['cold']:.1f} s, warm (inventories cached) {v['warm']:.1f} s."
        )
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
    parser.add_argument(
        "--transfer-only",
        action="store_true",
        help="re-run only the transfer @10 rows (with the `fit --from auto` choice), merged into --out",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="comma-separated predictor kinds (latency_models.create_predictor)",
    )
    parser.add_argument(
        "--no-host", action="store_true", help="skip the host-cpu section (it measures this CPU)"
    )
    parser.add_argument(
        "--validate-networks", type=int, default=1000, help="networks for the validate timing"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    torch.set_num_threads(1)
    started = time.time()
    if args.host_only:
        res: dict[str, Any] = json.loads(Path(args.out).read_text())
        res["host"] = host(args.host_plans, 5)
        res["host"]["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        res["host"]["wall_s"] = time.time() - started
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(markdown(res))
        return
    if args.transfer_only:
        res = json.loads(Path(args.out).read_text())
        archs, lat = load(1900, args.data)
        layers = inventories(archs)
        xs = {
            device: np.stack([network_features(get_target(t), inv, Plan(), b) for inv in layers])
            for device, (t, b) in DEVICES.items()
        }
        for device in DEVICES:
            y = lat[device]
            pool, test = trimmed(np.arange(0, 900), y), trimmed(np.arange(900, min(1900, len(y))), y)
            rows = transfer_at_10(device, xs, lat, pool, test)
            res["nb201"][device]["help_spearman"]["transfer@10"] = rows
            print(device, json.dumps(rows["fit --from auto"]), flush=True)
        res["transfer_date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(markdown(res))
        return
    load_start = os.getloadavg()[0]
    networks = 1900 if args.quick else args.networks
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    for kind in kinds:
        if kind != "auto":  # "auto": model choice by cross-validation (select_predictor)
            create_predictor(kind)  # an unknown kind fails now, not after the traces
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_start": load_start,
        "kinds": list(kinds),
        "help_protocol": "pool 0-899 / test 900-1899, each trimmed to [int(0.1n), int(0.9n)) of its "
        "latency-sorted order (HELP loader); first N of the trimmed pool in index order, and 5 random "
        "draws (numpy default_rng(seed).choice without replacement, seeds 0-4); '900' = whole trimmed pool",
        "random_protocol": "numpy default_rng(seed).permutation, seeds 0-4; train = first N, test = the rest",
        "validate_1000_seconds": validate_seconds(args.validate_networks, args.data),
        "nb201": nb201(networks, kinds, args.data),
        "throughput": throughput(20_000 if args.quick else 100_000),
    }
    if not args.no_host:
        res["host"] = host(6 if args.quick else args.host_plans, 5)
    elif Path(args.out).is_file():  # keep the previous host-cpu measurement, marked as such
        previous = json.loads(Path(args.out).read_text())
        if "host" in previous:
            res["host"] = {**previous["host"], "from_run_of": previous.get("date")}
    res["load_avg_end"] = os.getloadavg()[0]
    res["wall_s"] = time.time() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()
