"""Search strategies compared on hypervolume per quality evaluation (issue 4's bench).

Run: ``.venv/bin/python bench/search.py [--seeds 5] [--budget 250] [--out bench/results/search.json]``
and ``.venv/bin/python bench/search.py --markdown bench/results/search.json`` for the tables.

Every strategy runs the same problem with the same seeds on the same embedded Ray (2 evaluator
actors, 4 plans per task). The hypervolume after 50 / 100 / 250 quality evaluations is read off
each run's history (trial 0, the uncompressed model, counts as one evaluation). A one-sided
Mann-Whitney U test (scipy, alternative="greater", alpha 0.10) compares guided with each
other strategy per problem and budget. The research claim is checked per problem: for each
feasible uniform plan, the best plan any per-layer strategy found at equal or lower predicted
latency on the problem's target, quality against quality.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

STRATEGIES = ("random", "uniform", "nsga2", "tpe", "guided")
CHECKPOINTS = (50, 100, 250)


def problems(host_ref_ms: float | None) -> dict[str, dict[str, Any]]:
    return {
        "digits-cnn@host-cpu": {
            "model": "digits-cnn",
            "targets": ["host-cpu"],
            "space": {"rank_fractions": [0.25, 0.5, 0.75], "keep": [0.5, 0.75], "wbits": [4, 6, 8]},
            "constraints": [f"latency_ms<={0.7 * (host_ref_ms or 1.0):.6f}"],
        },
        "mobilenet-v2@zcu102": {
            "model": "mobilenet-v2",
            "targets": ["zcu102"],
            "space": {"keep": [0.5, 0.75, 0.875], "wbits": [4, 6, 8], "abits": [4, 6, 8]},
            # int8 everywhere predicts 16.05 ms (uncompressed 17.46 ms): the ceiling needs low bits
            # on most layers or some pruning. The DSP / LUT ceilings are the board's.
            "constraints": ["latency_ms<=16.5", "dsp<=2520", "lut<=274080"],
            # 16 calibration images: about 2 s per evaluation on one core (32 took 3-5 s).
            "quality_examples": 16,
        },
        "digits-vit@cortex-a76": {
            "model": "digits-vit",
            "targets": ["cortex-a76"],
            "space": {"rank_fractions": [0.25, 0.5, 0.75], "token_keep": [0.5, 0.7, 0.85]},
            # 0.9 × the uncompressed 0.345 ms: on this prior the tiny ViT is launch-bound (a low-rank
            # layer adds a GEMM), so only token keep, alone or with few factorised layers, gets there.
            "constraints": ["latency_ms<=0.31"],
        },
    }


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from latency_models import catalogue, list_targets
    from workers.profiling import measure_host_target
    from workers.search import JobSpec, MemorySink, Problem, ensure_ray, run_search

    # A throw-away catalogue: the host target measured here must not land in the user's.
    cat = catalogue(tempfile.mkdtemp(prefix="hwsearch-bench-search-"))
    if "host-cpu" not in list_targets():
        cat.add_target(measure_host_target())
    probe = Problem.build(
        JobSpec(model="digits-cnn", targets=["host-cpu"], space={"wbits": [8]}, budget={"evaluations": 1}),
        cat,
    )
    specs = problems(probe.reference_costs[0]["latency_ms"])
    out_path = Path(args.out)
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() and args.resume else {}
    results.setdefault("runs", [])
    # On --resume the stored runs keep the problem they ran (host-cpu's ceiling is re-measured).
    results["problems"] = {**specs, **results.get("problems", {})}
    specs = results["problems"]
    results["started"] = results.get("started") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    done = {(r["problem"], r["strategy"], r["seed"]) for r in results["runs"]}
    ensure_ray()
    for name, base in specs.items():
        if args.problems and name not in args.problems:
            continue
        problem = None
        for seed in range(args.seeds):
            for strategy in args.strategies or STRATEGIES:
                if (name, strategy, seed) in done:
                    continue
                spec = JobSpec(
                    **base,
                    strategy=strategy,
                    seed=seed,
                    budget={"evaluations": args.budget},
                    concurrency=2,
                    recovery={"calibrate": not args.no_calibrate},
                )
                problem = problem or Problem.build(spec, cat)
                problem.spec = spec
                t0 = time.monotonic()
                result = run_search(spec, MemorySink(), problem=problem, measure_front=False)
                wall = time.monotonic() - t0
                hv_at = {}
                for budget in CHECKPOINTS:
                    reached = [hv for n, hv in result.history if n <= budget]
                    hv_at[str(budget)] = reached[-1] if reached else 0.0
                target = spec.targets[0]
                points = [
                    {
                        "quality": t.quality,
                        "latency_ms": t.costs[target]["latency_ms"],
                        "feasible": t.feasible,
                        # What the plan does beyond quantisation (the front's share, issue 17).
                        "prunes": any(
                            c.get("keep", 1.0) < 1.0 for c in (t.plan.get("layers") or {}).values()
                        ),
                        "factorises": any(
                            c.get("rank") is not None for c in (t.plan.get("layers") or {}).values()
                        ),
                    }
                    for t in result.trials
                    if t.quality is not None
                ]
                results["runs"].append(
                    {
                        "problem": name,
                        "strategy": strategy,
                        "seed": seed,
                        "evaluations": len(result.trials),
                        "calibrate": not args.no_calibrate,
                        "failed": sum(t.status != "ok" for t in result.trials),
                        "hypervolume": hv_at,
                        "final_hypervolume": result.hypervolume,
                        "reference_point": result.reference_point,
                        "reference_quality": problem.reference_quality,
                        "wall_s": wall,
                        "eval_s": sum(t.eval_s for t in result.trials),
                        "points": points,
                    }
                )
                print(
                    f"{name} {strategy} seed {seed}: {len(result.trials)} evals, HV {hv_at} ({wall:.0f} s)",
                    flush=True,
                )
                out_path.parent.mkdir(parents=True, exist_ok=True)
                results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                out_path.write_text(json.dumps(results))


def markdown(path: str) -> str:
    import numpy as np
    from scipy.stats import mannwhitneyu

    data = json.loads(Path(path).read_text())
    runs = data["runs"]
    lines = []
    for name in data["problems"]:
        rows = [r for r in runs if r["problem"] == name]
        if not rows:
            continue
        seeds = sorted({r["seed"] for r in rows})
        lines += [
            f"**{name}** ({len(seeds)} seeds; constraints "
            f"{', '.join(data['problems'][name]['constraints'])})",
            "",
            "| strategy | HV @50 | @100 | @250 | p (guided > this) @50 | @100 | @250 "
            "| evaluations | wall s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        by = {s: [r for r in rows if r["strategy"] == s] for s in STRATEGIES}
        for s in STRATEGIES:
            rs = by[s]
            if not rs:
                continue
            cells = []
            for b in CHECKPOINTS:
                v = np.array([r["hypervolume"][str(b)] for r in rs])
                cells.append(f"{v.mean():.4f} ± {v.std():.4f}")
            ps = []
            for b in CHECKPOINTS:
                if s == "guided" or not by["guided"]:
                    ps.append("")
                    continue
                g = [r["hypervolume"][str(b)] for r in by["guided"]]
                o = [r["hypervolume"][str(b)] for r in rs]
                ps.append(f"{mannwhitneyu(g, o, alternative='greater').pvalue:.3f}")
            ev = np.mean([r["evaluations"] for r in rs])
            wall = np.mean([r["wall_s"] for r in rs])
            lines.append(f"| {s} | {' | '.join(cells)} | {' | '.join(ps)} | {ev:.0f} | {wall:.0f} |")
        lines.append("")
        # The research claim: per-layer plans against uniform plans at equal predicted latency.
        gains = {s: [] for s in STRATEGIES if s != "uniform"}
        for seed in seeds:
            uni = [r for r in by["uniform"] if r["seed"] == seed]
            if not uni:
                continue
            for u in [p for p in uni[0]["points"] if p["feasible"]]:
                for s in gains:
                    run_ = [r for r in by[s] if r["seed"] == seed]
                    if not run_:
                        continue
                    better = [
                        p["quality"]
                        for p in run_[0]["points"]
                        if p["feasible"] and p["latency_ms"] <= u["latency_ms"] * (1 + 1e-9)
                    ]
                    if better:
                        gains[s].append(max(better) - u["quality"])
        shares = []
        for s in STRATEGIES:
            fronts = [_front(r["points"]) for r in by[s] if r["points"] and "prunes" in r["points"][0]]
            if fronts:
                n = sum(len(f) for f in fronts)
                k = sum(p["prunes"] or p["factorises"] for f in fronts for p in f)
                shares.append(f"{s}: {k} of {n} ({k / max(n, 1):.0%})")
        if shares:
            lines.append(
                "Front plans that prune or factorise (feasible fronts, all seeds): " + "; ".join(shares) + "."
            )
            lines.append("")
        cells = [
            f"{s}: median {np.median(v):+.4f}, wins {np.mean(np.array(v) > 0):.0%}, "
            f"ties {np.mean(np.array(v) == 0):.0%} (n={len(v)})"
            for s, v in gains.items()
            if v
        ]
        if cells:
            lines.append(
                "Best per-layer plan at ≤ the uniform plan's predicted latency, "
                "quality minus the uniform plan's: " + "; ".join(cells) + "."
            )
            lines.append("")
    return "\n".join(lines)


def _front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The feasible points no other feasible point beats on both quality and latency (one of
    each group of equal points: a front of ten plans at the same cost and quality is one point)."""
    unique: dict[tuple[float, float], dict[str, Any]] = {}
    for p in points:
        if p["feasible"] and p["quality"] is not None:
            unique.setdefault((p["quality"], p["latency_ms"]), p)
    ok = list(unique.values())
    return [
        p
        for p in ok
        if not any(
            q["quality"] >= p["quality"]
            and q["latency_ms"] <= p["latency_ms"]
            and (q["quality"] > p["quality"] or q["latency_ms"] < p["latency_ms"])
            for q in ok
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=250)
    parser.add_argument("--problems", nargs="*", default=[])
    parser.add_argument("--out", default="bench/results/search.json")
    parser.add_argument("--resume", action="store_true", help="skip runs already in --out")
    parser.add_argument("--strategies", nargs="*", default=[], help=f"a subset of {STRATEGIES}")
    parser.add_argument(
        "--no-calibrate", action="store_true", help="judge plans uncalibrated (recovery.calibrate false)"
    )
    parser.add_argument("--markdown", metavar="JSON", help="print the tables of a results file and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return
    run(args)


if __name__ == "__main__":
    main()
