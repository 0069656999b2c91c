"""Calibrated and recovered quality of compressed zoo models, side by side in one run (issue 17).

Run: ``.venv/bin/python bench/recovery.py [--cases all] [--steps N] [--lr LR] [--quick]
[--fidelity N] [--fidelity-model digits-cnn] [--out bench/results/recovery.json]`` and
``.venv/bin/python bench/recovery.py --markdown bench/results/recovery.json`` for the tables.

Per case (a model and a uniform plan) the same run measures, on the entry's evaluation data:

- *uncalibrated*: ``judge_plan(calibrate=False)``, the plan applied straight;
- *calibrated*: ``judge_plan(calibrate=True)``, calibrated on the entry's calibration set, which
  the evaluation never sees (digits: training split vs test split; ImageNet entries: crops of
  other photos; minilm: 50 vs 150 sentences);
- *recovered*: ``recover_plan`` (knowledge distillation from the uncompressed model on the
  calibration set, starting from the calibrated model) with the recipe recorded beside it.

Each quality carries its n and a 95% interval: Wilson for accuracy / agreement (n test images or
evaluation crops), a seeded percentile bootstrap over sentences for minilm's mean cosine. The
calibration seconds are set against the seconds of one evaluation of the uncompressed model.

``--fidelity N`` also samples N seeded random mixed plans of ``--fidelity-model`` (per plan a
density d in [0.1, 0.6]; each layer is compressed with probability d by a random choice of rank
fraction {0.25, 0.5, 0.75}, keep {0.5, 0.75} and weight bits {4, 8} among what the layer offers)
and reports the Spearman correlation of uncalibrated and of calibrated quality with recovered
quality: does the screening quality rank plans the way recovered quality does?

The results file is rewritten after every case and every fidelity plan, so a killed run keeps
what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from search_spaces import Plan
    from workers.zoo import Prepared, Quality

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "recovery.json"
#: Evaluation crops for ImageNet entries (the zoo's default is 256): halves each evaluation.
IMAGENET_EVAL_CROPS = 128


def _uniform(text: str) -> Callable[[Prepared], Plan]:
    def build(prepared: Prepared) -> Plan:
        from service.cli.local import parse_uniform, uniform_plan

        plan: Plan = uniform_plan(prepared.layers, parse_uniform(text))
        return plan

    return build


def ffn_keep_plan(prepared: Prepared, keep: float) -> Plan:
    """Keep ``keep`` of the hidden units of every transformer FFN (the prunable ``fc1`` /
    ``intermediate`` Linear of each block; its ``fc2`` loses the same inputs), nothing else."""
    from search_spaces import Choice, Plan

    names = [
        layer.name
        for layer in prepared.layers
        if layer.prunable and any(tag in layer.name for tag in ("fc1", "intermediate", "ffn"))
    ]
    if not names:
        raise ValueError(
            f"{prepared.entry.name}: no prunable FFN layer (fc1/intermediate/ffn) in its inventory"
        )
    return Plan({name: Choice(keep=keep) for name in names})


#: case → (zoo model, plan, how the plan is described, the issue's goals).
CASES: dict[str, dict[str, Any]] = {
    "digits-rank0.25": {
        "model": "digits-cnn",
        "plan": _uniform("rank=0.25"),
        "label": "digits-cnn, uniform rank 0.25",
        "goal": {"today": "drop 0.869", "calibrated": "drop <= 0.10", "recovered": "drop <= 0.01"},
        "check": {"calibrated": ("drop", 0.10), "recovered": ("drop", 0.01)},
    },
    "mnv2-rank0.5": {
        "model": "mobilenet-v2",
        "plan": _uniform("rank=0.5"),
        "label": "mobilenet-v2, uniform rank 50% of full",
        "goal": {"today": "agreement 0.000", "calibrated": ">= 0.50", "recovered": ">= 0.85"},
        "check": {"calibrated": ("min", 0.50), "recovered": ("min", 0.85)},
    },
    "mnv2-keep0.75": {
        "model": "mobilenet-v2",
        "plan": _uniform("keep=0.75"),
        "label": "mobilenet-v2, uniform keep 0.75",
        "goal": {"today": "agreement 0.000", "calibrated": "measure", "recovered": ">= 0.60"},
        "check": {"recovered": ("min", 0.60)},
    },
    "mnv2-w8a8": {
        "model": "mobilenet-v2",
        "plan": _uniform("wbits=8,abits=8"),
        "label": "mobilenet-v2, W8A8",
        "goal": {"today": "0.898", "calibrated": ">= 0.97", "recovered": "-"},
        "check": {"calibrated": ("min", 0.97)},
    },
    "mnv2-w4a8": {
        "model": "mobilenet-v2",
        "plan": _uniform("wbits=4,abits=8"),
        "label": "mobilenet-v2, W4A8",
        "goal": {"today": "measure", "calibrated": ">= 0.80", "recovered": ">= 0.90"},
        "check": {"calibrated": ("min", 0.80), "recovered": ("min", 0.90)},
        "lr": 1e-4,
    },
    "minilm-rank0.5": {
        "model": "minilm-l6",
        "plan": _uniform("rank=0.5"),
        "label": "minilm-l6, rank 50% on every Linear",
        "goal": {"today": "measure", "calibrated": "cosine >= 0.95", "recovered": ">= 0.98"},
        "check": {"calibrated": ("min", 0.95), "recovered": ("min", 0.98)},
    },
    "minilm-ffn-keep0.5": {
        "model": "minilm-l6",
        "plan": lambda prepared: ffn_keep_plan(prepared, 0.5),
        "label": "minilm-l6, FFN keep 0.5",
        "goal": {"today": "cosine 0.718", "calibrated": ">= 0.85", "recovered": ">= 0.95"},
        "check": {"calibrated": ("min", 0.85), "recovered": ("min", 0.95)},
    },
}

#: Recovery recipes per model: chosen so one recovery takes about 2-3 minutes on one shared core
#: here (calibration and the final evaluation included). ``--steps`` / ``--lr`` override them.
#: digits-cnn: at 1000 steps, lr 1e-4 gave 0.478, 1e-3 0.787, 3e-3 0.959 (rank 0.25, this bench).
#: Quantised cases use a lower lr (``CASES[...]["lr"]``): they start close to the model.
RECIPES: dict[str, dict[str, Any]] = {
    "digits-cnn": {"steps": 4000, "lr": 3e-3, "batch": 32},
    "mobilenet-v2": {"steps": 150, "lr": 1e-3, "batch": 16},
    "minilm-l6": {"steps": 300, "lr": 3e-4, "batch": 16},
}
QUICK_STEPS = 3
#: Recovery steps per plan in the ranking-fidelity part (``--fidelity-steps`` overrides): few,
#: so that 24 plans fit in minutes (minilm's calibration alone takes ~20 s a plan here).
FIDELITY_STEPS: dict[str, int] = {"digits-cnn": 500, "mobilenet-v2": 20, "minilm-l6": 30}


# ----------------------------------------------------------------------------- quality + interval
def _interval_dict(value: float, n: int, low: float, high: float, how: str) -> dict[str, Any]:
    return {"value": value, "n": n, "low": low, "high": high, "interval": how}


def quality_with_interval(prepared: Prepared, model: nn.Module, quality: Quality) -> dict[str, Any]:
    """``quality`` as a dict with its n and 95% interval.

    Accuracy (digits: n test images) and agreement (n evaluation crops): Wilson from the count.
    Mean cosine (minilm): seeded percentile bootstrap over the per-sentence cosines, computed
    again from ``model`` (the zoo's Quality keeps only the mean and the minimum).
    """
    from workers.datasets import accuracy_interval, bootstrap_interval

    extra = dict(quality.extra)
    if {"n", "low", "high"} <= extra.keys():
        return _interval_dict(quality.value, int(extra["n"]), extra["low"], extra["high"], "evaluator's")
    if quality.metric in ("top1_accuracy", "top1_agreement"):
        if "n_images" in extra:
            n = int(extra["n_images"])
        else:
            from workers.zoo.digits import digits_split

            n = int(digits_split()[3].shape[0])
        correct = round(quality.value * n)
        est = accuracy_interval(correct, n, metric=quality.metric)
        return _interval_dict(quality.value, n, float(est.low or 0.0), float(est.high or 0.0), "Wilson 95%")
    if "n_sentences" in extra:
        import torch
        from torch.nn import functional as F

        from workers.zoo.minilm import embed, evaluation_sentences

        entry: Any = prepared.entry
        with torch.no_grad():
            cosines = F.cosine_similarity(
                embed(model, evaluation_sentences()).double(), entry.reference_embeddings().double(), dim=1
            )
        est = bootstrap_interval(cosines.numpy(), seed=0, metric=quality.metric)
        if abs(est.value - quality.value) > 1e-6:
            raise RuntimeError(
                f"per-sentence cosine mean {est.value} differs from the evaluator's {quality.value}"
            )
        return _interval_dict(
            quality.value, int(est.n or 0), float(est.low or 0.0), float(est.high or 0.0), "bootstrap 95%"
        )
    return _interval_dict(quality.value, 0, math.nan, math.nan, "none (the evaluator reports no n)")


# ----------------------------------------------------------------------------- one case
def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def prepared_model(model_id: str, cache: dict[str, Any]) -> dict[str, Any]:
    """The prepared model, its base quality and the seconds of one evaluation (cached per id)."""
    if model_id in cache:
        return cache[model_id]
    from workers.zoo import prepare

    prepared = prepare(model_id)
    if hasattr(prepared.entry, "n_calibration_images"):
        prepared.entry.n_calibration_images = IMAGENET_EVAL_CROPS
    prepared.entry.evaluate(prepared.model)  # the first call builds the reference outputs
    base, seconds = _timed(lambda: prepared.entry.evaluate(prepared.model))
    calibration = prepared.calibration
    info = {
        "prepared": prepared,
        "base": quality_with_interval(prepared, prepared.model, base),
        "metric": base.metric,
        "eval_seconds": seconds,
        "calibration_data": calibration.description if calibration is not None else None,
        "n_calibration": calibration.n_inputs if calibration is not None else 0,
    }
    cache[model_id] = info
    return info


def recipe_for(model_id: str, args: argparse.Namespace, lr: float | None = None) -> dict[str, Any]:
    """The recovery recipe of ``model_id`` (with a case's own ``lr``) after ``--steps`` /
    ``--lr`` / ``--quick``."""
    recipe = dict(RECIPES.get(model_id, {"steps": 200, "lr": 1e-4, "batch": 16}))
    if lr is not None:
        recipe["lr"] = lr
    if args.quick:
        recipe["steps"] = QUICK_STEPS
    if args.steps is not None:
        recipe["steps"] = args.steps
    if args.lr is not None:
        recipe["lr"] = args.lr
    return recipe


def run_case(name: str, args: argparse.Namespace, cache: dict[str, Any]) -> dict[str, Any]:
    """Uncalibrated, calibrated and recovered quality of one case, with timings."""
    from workers.recovery import RecoveryRecipe, judge_plan, recover_plan

    case = CASES[name]
    info = prepared_model(case["model"], cache)
    prepared = info["prepared"]
    plan = case["plan"](prepared)
    plain, plain_s = _timed(lambda: judge_plan(prepared, plan, calibrate=False))
    calibrated, calibrated_s = _timed(lambda: judge_plan(prepared, plan, calibrate=True))
    row: dict[str, Any] = {
        "case": name,
        "label": case["label"],
        "model": case["model"],
        "metric": info["metric"],
        "compressed_layers": sum(1 for c in plan.choices.values() if not c.is_identity),
        "base": info["base"],
        "uncalibrated": quality_with_interval(prepared, plain.model, plain.quality),
        "calibrated": quality_with_interval(prepared, calibrated.model, calibrated.quality),
        "calibration": calibrated.calibration,
        "eval_seconds": round(info["eval_seconds"], 3),
        "calibration_seconds": calibrated.calibration.get("seconds"),
        "judge_seconds": {"uncalibrated": round(plain_s, 3), "calibrated": round(calibrated_s, 3)},
        "goal": case["goal"],
    }
    cal_s = row["calibration_seconds"]
    row["calibration_over_eval"] = round(cal_s / info["eval_seconds"], 2) if cal_s is not None else None
    if args.no_recover:
        row["recovered"] = None
        row["recovery"] = {"skipped": "--no-recover: recovery not run"}
    elif case["goal"]["recovered"] == "-" and not args.recover_all:
        row["recovered"] = None
        row["recovery"] = {"skipped": "the issue sets no recovery goal for this case (--recover-all runs it)"}
    else:
        recipe = recipe_for(case["model"], args, case.get("lr"))
        recovered = recover_plan(prepared, plan, RecoveryRecipe(**recipe, loss="kd"))
        row["recovered"] = quality_with_interval(prepared, recovered.model, recovered.quality)
        row["recovery"] = {
            **recovered.record,
            "weights": None,
            "includes": "calibration, distillation steps and the final evaluation",
        }
    row["gaps"] = gaps(row, case["check"])
    return row


def gaps(row: dict[str, Any], checks: dict[str, tuple[str, float]]) -> dict[str, Any]:
    """Each goal of the issue: met or not, and by how much it is missed (negative = short)."""
    base = row["base"]["value"]
    out: dict[str, Any] = {}
    for stage, (kind, bound) in checks.items():
        measured = row.get(stage)
        if measured is None:
            out[stage] = {"goal": f"{kind} {bound}", "status": "not measured"}
            continue
        value = measured["value"]
        if kind == "drop":
            drop = base - value
            out[stage] = {
                "goal": f"drop <= {bound}",
                "drop": round(drop, 4),
                "met": drop <= bound,
                "by": round(bound - drop, 4),
            }
        else:
            out[stage] = {
                "goal": f">= {bound}",
                "value": round(value, 4),
                "met": value >= bound,
                "by": round(value - bound, 4),
            }
    return out


# ----------------------------------------------------------------------------- ranking fidelity
def random_mixed_plans(prepared: Prepared, n: int, seed: int) -> list[Plan]:
    """``n`` seeded random mixed plans: per plan a density d ~ U[0.1, 0.6]; each layer is
    compressed with probability d by a random choice among rank fractions {0.25, 0.5, 0.75},
    keep {0.5, 0.75} and weight bits {4, 8} (``search_spaces.Space.sample``), else left as is."""
    import numpy as np

    from search_spaces import Choice, Plan, Space

    space = Space.build(prepared.layers, rank_fractions=(0.25, 0.5, 0.75), keep=(0.5, 0.75), wbits=(4, 8))
    rng = np.random.default_rng(seed)
    plans: list[Plan] = []
    while len(plans) < n:
        density = float(rng.uniform(0.1, 0.6))
        sampled = space.sample(rng)
        choices = {
            name: choice if rng.random() < density else Choice() for name, choice in sampled.choices.items()
        }
        plan = space.tie_groups(Plan(choices))
        if any(not c.is_identity for c in plan.choices.values()):
            plans.append(plan)
    return plans


def _spearman(a: list[float], b: list[float]) -> dict[str, Any]:
    import numpy as np
    from scipy.stats import spearmanr

    from workers.datasets import bootstrap_interval

    rho = float(spearmanr(a, b).statistic)
    pairs = np.column_stack([a, b])

    def stat(x: np.ndarray) -> float:
        return float(spearmanr(x[:, 0], x[:, 1]).statistic)

    try:
        est = bootstrap_interval(pairs, statistic=stat, seed=0, n_boot=500, metric="spearman")
        return {"rho": rho, "low": est.low, "high": est.high, "interval": "bootstrap 95% over plans"}
    except ValueError:
        return {"rho": rho, "low": None, "high": None, "interval": "undefined"}


def run_fidelity(
    model_id: str, args: argparse.Namespace, cache: dict[str, Any], save: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Spearman of uncalibrated and calibrated quality against recovered quality over
    ``args.fidelity`` random mixed plans of ``model_id``; ``save`` gets the result after each plan."""
    from workers.recovery import RecoveryRecipe, judge_plan, recover_plan

    info = prepared_model(model_id, cache)
    prepared = info["prepared"]
    recipe = recipe_for(model_id, args)
    if not args.quick:
        recipe["steps"] = args.fidelity_steps or FIDELITY_STEPS.get(model_id, recipe["steps"])
    result: dict[str, Any] = {
        "model": model_id,
        "n_plans": args.fidelity,
        "n_done": 0,
        "seed": args.seed,
        "recipe": {**recipe, "loss": "kd"},
        "sampling": " ".join((random_mixed_plans.__doc__ or "").split()),
        "plans": [],
    }
    for i, plan in enumerate(random_mixed_plans(prepared, args.fidelity, args.seed)):
        start = time.perf_counter()
        plain = judge_plan(prepared, plan, calibrate=False).quality.value
        calibrated = judge_plan(prepared, plan, calibrate=True).quality.value
        recovered = recover_plan(prepared, plan, RecoveryRecipe(**recipe, loss="kd", seed=i)).quality.value
        rows = result["plans"]
        rows.append(
            {
                "compressed_layers": sum(1 for c in plan.choices.values() if not c.is_identity),
                "uncalibrated": plain,
                "calibrated": calibrated,
                "recovered": recovered,
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        if len(rows) >= 3:
            rec = [r["recovered"] for r in rows]
            result["spearman_uncalibrated_vs_recovered"] = _spearman([r["uncalibrated"] for r in rows], rec)
            result["spearman_calibrated_vs_recovered"] = _spearman([r["calibrated"] for r in rows], rec)
        result["n_done"] = len(rows)
        save(result)
        last = rows[-1]
        print(
            f"fidelity {model_id} plan {i + 1}/{args.fidelity}: {last['uncalibrated']:.3f} / "
            f"{last['calibrated']:.3f} / {last['recovered']:.3f} ({last['seconds']} s)",
            flush=True,
        )
    return result


# ----------------------------------------------------------------------------- output
def _q(q: dict[str, Any] | None) -> str:
    if q is None:
        return "not run"
    if q.get("low") is None or (isinstance(q["low"], float) and math.isnan(q["low"])):
        return f"{q['value']:.3f}"
    return f"{q['value']:.3f} [{q['low']:.3f}, {q['high']:.3f}]"


def markdown(result: dict[str, Any]) -> str:
    """The tables of a results file, as docs/benchmarks.md shows them."""
    header = (
        "| case | metric (n) | base | uncalibrated | calibrated (goal) | recovered (goal) "
        "| calibration s / eval s | recovery s, recipe |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in result.get("cases", []):
        rec = row.get("recovery") or {}
        recipe = (
            f"{rec['seconds']:.0f} s, {rec['steps']} steps lr {rec['lr']:g} batch {rec['batch']}"
            if "steps" in rec
            else "not run"
        )
        cal = row.get("calibration_seconds")
        ratio = (
            f"{cal:.2f} / {row['eval_seconds']:.2f} = {row['calibration_over_eval']:.1f}×"
            if cal is not None
            else "-"
        )
        lines.append(
            f"| {row['label']} | {row['metric']} ({row['calibrated']['n']}) | {row['base']['value']:.3f} | "
            f"{_q(row['uncalibrated'])} | {_q(row['calibrated'])} ({row['goal']['calibrated']}) | "
            f"{_q(row.get('recovered'))} ({row['goal']['recovered']}) | {ratio} | {recipe} |"
        )
    for fid in (result.get("fidelity") or {}).values():
        lines.append("")
        r = fid.get("recipe", {})
        lines.append(
            f"Ranking fidelity: {fid.get('n_done', 0)} of {fid['n_plans']} random mixed plans of "
            f"{fid['model']} (seed {fid['seed']}), recovery {r.get('steps')} steps "
            f"lr {r.get('lr')} batch {r.get('batch')}."
        )
        for key, label in (
            ("spearman_uncalibrated_vs_recovered", "uncalibrated vs recovered"),
            ("spearman_calibrated_vs_recovered", "calibrated vs recovered"),
        ):
            s = fid.get(key)
            if s:
                interval = f" [{s['low']:.2f}, {s['high']:.2f}]" if s.get("low") is not None else ""
                lines.append(f"- Spearman {label}: {s['rho']:.2f}{interval}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the cases (and the fidelity part) and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases", default="all", help=f"comma-separated, from {list(CASES)}, 'all' or 'none'"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="recovery steps for every case (default per model)"
    )
    parser.add_argument("--lr", type=float, default=None, help="recovery learning rate for every case")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} recovery steps: a smoke run")
    parser.add_argument(
        "--recover-all", action="store_true", help="also recover cases without a recovery goal"
    )
    parser.add_argument("--no-recover", action="store_true", help="uncalibrated and calibrated only")
    parser.add_argument("--fidelity", type=int, default=0, help="N random mixed plans for ranking fidelity")
    parser.add_argument("--fidelity-model", default="digits-cnn", help="comma-separated zoo ids, run in turn")
    parser.add_argument("--fidelity-steps", type=int, default=None, help="recovery steps per fidelity plan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--markdown", type=Path, default=None, help="print the tables of a results file")
    args = parser.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text(encoding="utf-8"))))
        return 0
    if args.cases == "all":
        names = list(CASES)
    elif args.cases == "none":
        names = []
    else:
        names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; choose from {list(CASES)} or 'all' / 'none'")
    for name, value in (("--steps", args.steps), ("--fidelity-steps", args.fidelity_steps)):
        if value is not None and value < 1:
            parser.error(f"{name} {value}: give a whole number >= 1")
    if args.fidelity < 0:
        parser.error(f"--fidelity {args.fidelity}: give a number of plans >= 0")

    import torch

    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "command": "python bench/recovery.py "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": {"machine": platform.machine(), "torch_threads": torch.get_num_threads()},
        "imagenet_eval_crops": IMAGENET_EVAL_CROPS,
        "note": (
            f"ImageNet entries scored on {IMAGENET_EVAL_CROPS} evaluation crops (zoo default 256) "
            "to save time; recovery seconds include calibration and the final evaluation"
        ),
        "cases": [],
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")

    cache: dict[str, Any] = {}
    for name in names:
        start = time.perf_counter()
        row = run_case(name, args, cache)
        row["case_seconds"] = round(time.perf_counter() - start, 1)
        result["cases"].append(row)
        save()
        print(
            f"{name}: base {row['base']['value']:.3f} uncalibrated {_q(row['uncalibrated'])} calibrated "
            f"{_q(row['calibrated'])} recovered {_q(row.get('recovered'))} ({row['case_seconds']} s)",
            flush=True,
        )
    if args.fidelity:
        result["fidelity"] = {}

        def save_fidelity(fid: dict[str, Any]) -> None:
            result["fidelity"][fid["model"]] = fid
            save()

        for model_id in [m.strip() for m in args.fidelity_model.split(",") if m.strip()]:
            run_fidelity(model_id, args, cache, save_fidelity)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    save()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
