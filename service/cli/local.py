"""Commands that work on this machine, without the service: ``models``, ``inspect``,
``compress``, ``targets``, ``predict`` and ``search`` (on an embedded Ray, or RAY_ADDRESS).

Each imports ``workers``/``kernels`` inside the command, so importing the CLI stays free of
torch. Every zoo model is built through ``workers.zoo.prepare``, so the layers a model must
never compress are ignored in the inventory and in every compressed copy alike. The
functions are registered on the app by ``service.cli``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import (
    AbitsOpt,
    BudgetEvalOpt,
    ConcurrencyOpt,
    ConstraintOpt,
    DataOpt,
    EvalExamplesOpt,
    EvaluatorOpt,
    InputShapeOpt,
    JsonFlag,
    KeepOpt,
    ModelArgsOpt,
    ModelOpt,
    NoCalibrateOpt,
    RankOpt,
    RecoverFrontOpt,
    RecoveryStepsOpt,
    SeedOpt,
    StrategyOpt,
    TargetOpt,
    TokensOpt,
    WbitsOpt,
    WeightsOpt,
    fail,
    job_spec,
    plural,
    print_json,
    progress_bar,
    quiet_torch,
    ratio_cell,
    recovery_fields,
    rounded,
    source_fields,
)

__all__ = [
    "compress",
    "inspect",
    "models",
    "parse_uniform",
    "predict",
    "search",
    "targets",
    "uniform_plan",
]

_UNIFORM_KEYS = {"rank", "keep", "wbits", "abits", "tokens"}

PlanOption = Annotated[Path | None, typer.Option("--plan", help="Plan JSON file.")]
UniformOption = Annotated[
    str | None,
    typer.Option(help="Same compression on every layer, e.g. rank=0.5,keep=0.75,wbits=8,abits=8,tokens=0.7"),
]


def models(json_output: JsonFlag = False) -> None:
    """List the models one can name: the zoo, then installed plugins with their package and
    version (`hwsearch inspect --model NAME` lists a model's layers)."""
    quiet_torch()
    from workers.zoo import list_model_sources, list_models, model_class

    rows: list[dict[str, Any]] = []
    for name in list_models():
        cls = model_class(name)
        rows.append(
            {
                "name": name,
                "source": "zoo",
                "task": cls.task,
                "metric": cls.metric,
                "has_weights": cls.has_weights,
                "args": list(cls.args),
                "description": cls.description,
            }
        )
    # Zoo rows get their package from the same listing the API serves; plugins are imported to
    # read their task and metric (a plugin that does not load is listed with its error).
    sources = list_model_sources(load=True)
    packages = {r["name"]: (r["package"], r["version"]) for r in sources if r["source"] == "zoo"}
    for row in rows:
        row["package"], row["version"] = packages.get(row["name"], ("hwsearch", None))
    for plugin in (r for r in sources if r["source"] == "plugin"):
        rows.append(
            {
                "name": plugin["name"],
                "source": "plugin",
                "task": plugin["task"],
                "metric": plugin["metric"],
                "description": plugin["description"],
                "package": plugin["package"],
                "version": plugin["version"],
                "target": plugin["target"],
                **({"error": plugin["error"]} if plugin.get("error") else {}),
            }
        )
    if json_output:
        print_json(rows)
        return
    width = max(len(r["name"]) for r in rows)
    cells = [f"{r['package'] or '?'} {r['version'] or ''}".strip() for r in rows]
    pwidth = max(len(c) for c in cells)
    for r, package in zip(rows, cells, strict=True):
        what = f"error: {r['error']}" if r.get("error") else (r["task"] or "-")
        typer.echo(f"{r['name']:<{width}}  {r['metric'] or '-':<18} {package:<{pwidth}}  {what}")


def _knobs(layer: Any) -> str:
    parts = []
    if layer.decomposable:
        parts.append(f"rank≤{layer.full_rank}")
    if layer.prunable:
        parts.append("keep")
    if layer.kind.value in ("linear", "conv2d", "depthwise_conv2d", "grouped_conv2d"):
        parts.append("bits")
    if layer.kind.value == "attention":
        parts.append("tokens")
    return ",".join(parts) or "-"


def _shape(layer: Any) -> str:
    k = layer.kind.value
    if k == "linear":
        return f"{layer.in_channels}→{layer.out_channels} ×{layer.tokens}"
    if k == "attention":
        return f"{layer.tokens} tok ×{layer.in_channels}, {layer.heads} heads"
    kh, kw = layer.kernel_size
    h, w = layer.input_hw
    return f"{layer.in_channels}→{layer.out_channels} k{kh}x{kw} s{layer.stride[0]} g{layer.groups} @{h}x{w}"


# ------------------------------------------------------------- where a local command's model comes from
ModelArgument = Annotated[
    str | None,
    typer.Argument(
        help="Zoo name, plugin name or import path module:factory (or give it as --model).",
        show_default=False,
    ),
]
ModelFlag = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Zoo name or plugin name (see `hwsearch models`), or an import path module:factory.",
    ),
]


def _model_name(positional: str | None, flag: str | None) -> str:
    """The model named as MODEL or as --model (once)."""
    if positional is not None and flag is not None and positional != flag:
        fail(f"the model is given twice ({positional!r} and --model {flag!r}); give it once")
    model = flag if flag is not None else positional
    if not model:
        fail(
            "give a model: --model NAME (a zoo or plugin name, see `hwsearch models`) or an import "
            "path module:factory"
        )
    return model


def _check_model_name(model: str) -> None:
    """A name without ':' must be a zoo entry (registered in this process) or a plugin; the
    error lists both, and the import-path form."""
    from workers.model_refs import plugin_entry_points
    from workers.zoo import ZooError, list_models

    name = model.partition(":")[0]
    if ":" in model or name in list_models() or name in plugin_entry_points():
        return
    plugins = ", ".join(sorted(plugin_entry_points())) or "none installed"
    raise ZooError(
        "model",
        model,
        f"unknown model; valid names: {', '.join(list_models())}; plugins: {plugins}; or an import "
        "path package.module:factory (e.g. mypkg.nets:build_resnet)",
    )


def _local_spec(model: str, target: str, sources: dict[str, Any], known_targets: Any = None) -> Any:
    """The JobSpec a local command builds its model from (``job_entry``, as a search does), so
    the model and data flags are checked as for a search, naming the JobSpec's fields."""
    from workers.model_refs import ZOO_MODELS
    from workers.zoo import list_models

    _check_model_name(model)
    name = model.partition(":")[0]
    # A zoo entry registered in this process only is not in the torch-free list a JobSpec checks
    # names against: the spec is validated with a listed name, then resolve_model checks this one.
    registered_here = name in list_models() and name not in ZOO_MODELS
    space: dict[str, str | None] = {"rank": None, "keep": None, "wbits": None, "abits": None, "tokens": None}
    checked = ZOO_MODELS[0] if registered_here else model
    spec = job_spec(None, checked, [target], None, None, None, None, space, None, known_targets, sources)
    return spec.model_copy(update={"model": model}) if registered_here else spec


def _build(spec: Any) -> tuple[Any, Any]:
    """The entry of ``spec`` (``job_entry``: zoo, plugin or import path, weights, data or
    evaluator; registered datasets from this machine's data directory) and the model prepared
    (``workers.zoo.prepare``), checked against its data as a search checks it."""
    from workers.search._entry import job_entry
    from workers.search._problem import check_entry
    from workers.zoo import prepare

    entry = job_entry(spec)
    prepared = prepare(entry)
    check_entry(entry, prepared.model, prepared.example_input)
    return entry, prepared


def _source(entry: Any) -> Any:
    from workers.zoo import model_source

    return model_source(getattr(entry, "entry", entry))


def _data_summary(entry: Any) -> dict[str, Any] | None:
    """The data a command's model is judged on: its record (dataset or path, kind, split sizes,
    seed) with the class counts, or None without data or evaluator."""
    record = getattr(entry, "data_record", None)
    if not record:
        return None
    out = dict(record)
    dataset = getattr(entry, "dataset", None)
    if dataset is not None:
        out["n_classes"] = dataset.n_classes
        if dataset.labels is not None:
            counts = dict.fromkeys(dataset.classes, 0)
            for label in dataset.labels:
                counts[dataset.classes[label]] += 1
            out["class_counts"] = counts
    return out


def _data_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    if "n_total" in summary:
        where = f"dataset {summary['dataset']}" if summary.get("dataset") else str(summary.get("path"))
        counts: dict[str, int] = summary.get("class_counts") or {}
        classes = ""
        if counts:
            values = set(counts.values())
            each = (
                f"{values.pop()} each"
                if len(values) == 1
                else ", ".join(f"{name}: {n}" for name, n in list(counts.items())[:10])
                + (", …" if len(counts) > 10 else "")
            )
            classes = f" in {len(counts)} {'class' if len(counts) == 1 else 'classes'} ({each})"
        lines.append(f"data: {where} ({summary['kind']}): {plural(summary['n_total'], 'example')}{classes}")
        lines.append(
            f"  split (seed {summary['seed']}): {summary['n_calibration']:,} calibration, "
            f"{summary['n_evaluation']:,} evaluation, never overlapping"
        )
    if summary.get("evaluator"):
        lines.append(f"evaluator: {summary['evaluator']}")
    return lines


def _kept_layers(prepared: Any) -> list[dict[str, Any]]:
    """What hwsearch does not compress, and why (``kernels.kept_layers``)."""
    from kernels import kept_layers

    return kept_layers(prepared.model, prepared.layers, prepared.ignore)


def _kept_lines(kept: list[dict[str, Any]]) -> list[str]:
    if not kept:
        return []
    by_reason: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in kept:
        by_reason.setdefault((row["type"], row["reason"]), []).append(row)
    total = sum(row["params"] for row in kept)
    lines = [
        f"not compressed by hwsearch ({plural(len(kept), 'module')}, {total:,} params; kept in the model):"
    ]
    for (kind, reason), rows in by_reason.items():
        names = ", ".join(r["name"] for r in rows[:6]) + (
            f", … ({len(rows) - 6} more)" if len(rows) > 6 else ""
        )
        params = sum(r["params"] for r in rows)
        lines.append(f"  {names} ({kind}, {params:,} params): {reason}")
    return lines


def inspect(
    model: ModelArgument = None,
    model_option: ModelFlag = None,
    model_args: ModelArgsOpt = None,
    weights: WeightsOpt = None,
    input_shape: InputShapeOpt = None,
    data: DataOpt = None,
    evaluator: EvaluatorOpt = None,
    eval_examples: EvalExamplesOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """Print the layer inventory (name, kind, shapes, params, MACs, knobs, coupled group), what
    hwsearch keeps uncompressed and why, the model's source and, with --data, the data's split."""
    quiet_torch()
    sources = source_fields(
        model_args=model_args,
        weights=weights,
        input_shape=input_shape,
        data=data,
        evaluator=evaluator,
        eval_examples=eval_examples,
    )
    spec = _local_spec(_model_name(model, model_option), "host-cpu", sources)
    entry, prepared = _build(spec)
    layers = prepared.layers
    source = _source(entry)
    kept = _kept_layers(prepared)
    summary = _data_summary(entry)
    if json_output:
        print_json(
            {
                "model": prepared.entry.model_id,
                "source": source.to_dict(),
                "layers": [layer.to_dict() for layer in layers],
                "kept": kept,
                "data": summary,
            }
        )
        return
    typer.echo(f"source: {source.describe()}")
    typer.echo(f"{'name':<34} {'kind':<17} {'shape':<36} {'params':>9} {'MACs':>12}  {'knobs':<22} group")
    for layer in layers:
        typer.echo(
            f"{layer.name:<34} {layer.kind.value:<17} {_shape(layer):<36} {layer.params:>9,} "
            f"{layer.macs:>12,}  {_knobs(layer):<22} {layer.group or '-'}"
        )
    typer.echo(
        f"{plural(len(layers), 'layer')}, {sum(x.params for x in layers):,} params and "
        f"{sum(x.macs for x in layers):,} MACs in them"
    )
    for line in _kept_lines(kept) + (_data_lines(summary) if summary else []):
        typer.echo(line)


def parse_uniform(text: str) -> dict[str, float]:
    """Parse ``rank=0.5,keep=0.75,wbits=8,abits=8,tokens=0.7`` (rank as a fraction of full rank)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _UNIFORM_KEYS:
            raise ValueError(
                f"--uniform: {part!r} is not KEY=VALUE with KEY one of {sorted(_UNIFORM_KEYS)} "
                "(e.g. rank=0.5,keep=0.75,wbits=8,abits=8,tokens=0.7)"
            )
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"--uniform: {key}={value!r} is not a number") from None
    if not out:
        raise ValueError("--uniform: give at least one of rank, keep, wbits, abits, tokens")
    return out


def uniform_plan(layers: list[Any], spec: dict[str, float]) -> Any:
    """The same compression on every layer that offers it; rank is a fraction of each layer's full rank."""
    from search_spaces import ALLOWED_BITS, Choice, Plan, SpaceError

    for key in ("wbits", "abits"):
        if key in spec and (spec[key] != int(spec[key]) or int(spec[key]) not in ALLOWED_BITS):
            raise SpaceError(f"--uniform {key}", spec[key], f"one of {list(ALLOWED_BITS)} is required")
    for key in ("rank", "keep", "tokens"):
        if key in spec and not 0.0 < spec[key] <= 1.0:
            raise SpaceError(f"--uniform {key}", spec[key], "a fraction in (0, 1] is required")
    base = Choice(
        keep=spec.get("keep", 1.0),
        wbits=int(spec.get("wbits", 32)),
        abits=int(spec.get("abits", 32)),
        token_keep=spec.get("tokens", 1.0),
    )
    plan = Plan.uniform(layers, base)
    if "rank" in spec and spec["rank"] < 1.0:
        choices = dict(plan.choices)
        for layer in layers:
            if layer.decomposable:
                rank = max(1, round(spec["rank"] * layer.full_rank))
                c = plan[layer.name]
                choices[layer.name] = Choice(rank, c.keep, c.wbits, c.abits, c.token_keep)
        plan = Plan(choices)
    return plan


def _prepared_and_plan(spec: Any, plan_file: Path | None, uniform: str | None) -> tuple[Any, Any, Any]:
    """The entry of ``spec``, its prepared model (``workers.zoo.Prepared``) and the plan read for it.

    A plan that does not fit the model exits 2 with the model named; a bad model, weights file,
    dataset or evaluator raises an InputError (ZooError, DatasetError), which the app turns
    into exit 2.
    """
    if (plan_file is None) == (uniform is None):
        fail("give exactly one of --plan PLAN.json or --uniform KEY=VALUE,...")
    from search_spaces import Plan

    entry, prepared = _build(spec)
    layers = prepared.layers  # traced outside the try: a tracing error is not a bad plan
    try:
        if plan_file is not None:
            try:
                text = plan_file.read_text()
            except OSError as exc:
                fail(f"--plan: cannot read {str(plan_file)!r} ({exc.strerror}); give a readable JSON file")
            plan = Plan.from_json(text, layers)
        else:
            plan = uniform_plan(layers, parse_uniform(uniform or "")).validate(layers)
    except ValueError as exc:  # SpaceError (an InputError, so a ValueError) or parse_uniform's
        fail(f"invalid plan for {prepared.entry.model_id}: {exc}")
    return entry, prepared, plan


def _quality_detail(quality: Any) -> dict[str, Any]:
    """n and the 95% interval of a quality, when its evaluation gave them."""
    extra = quality.extra or {}
    out: dict[str, Any] = {}
    if "n" in extra:
        out["n"] = int(extra["n"])
    if "low" in extra and "high" in extra:
        out["low"], out["high"] = rounded(float(extra["low"])), rounded(float(extra["high"]))
    return out


def compress(
    model: ModelArgument = None,
    model_option: ModelFlag = None,
    plan_file: PlanOption = None,
    uniform: UniformOption = None,
    model_args: ModelArgsOpt = None,
    weights: WeightsOpt = None,
    input_shape: InputShapeOpt = None,
    data: DataOpt = None,
    evaluator: EvaluatorOpt = None,
    eval_examples: EvalExamplesOpt = None,
    measure: Annotated[bool, typer.Option(help="Also time both models on the host CPU.")] = False,
    repeats: Annotated[int, typer.Option(help="Timing rounds for --measure.", min=3)] = 30,
    no_calibrate: NoCalibrateOpt = False,
    recovery_steps: Annotated[
        int | None,
        typer.Option(
            "--recovery-steps",
            min=1,
            help="Fine-tune the compressed model by distillation for N steps on the calibration data.",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Apply a plan; print quality before and after (with n and a 95% interval on data),
    params, MACs, weight bytes (and latency). The delivered model is calibrated on the
    calibration data (unless --no-calibrate) and, with --recovery-steps, fine-tuned."""
    quiet_torch()
    from kernels import count_cost, time_model
    from workers.recovery import RecoveryRecipe, judge_plan, recover_plan

    sources = source_fields(
        model_args=model_args,
        weights=weights,
        input_shape=input_shape,
        data=data,
        evaluator=evaluator,
        eval_examples=eval_examples,
    )
    name = _model_name(model, model_option)
    if (plan_file is None) == (uniform is None):  # before the model is built
        fail("give exactly one of --plan PLAN.json or --uniform KEY=VALUE,...")
    entry, prepared, plan = _prepared_and_plan(_local_spec(name, "host-cpu", sources), plan_file, uniform)
    net, x = prepared.model, prepared.example_input
    before = prepared.entry.evaluate(net)
    plain = judge_plan(prepared, plan, calibrate=False)
    delivered = plain if no_calibrate else judge_plan(prepared, plan, calibrate=True)
    after = delivered.quality
    how = delivered.calibration["how"]
    recovery: dict[str, Any] | None = None
    if recovery_steps is not None:
        recovered = recover_plan(
            prepared, plan, RecoveryRecipe(steps=recovery_steps), calibrate=not no_calibrate
        )
        after = recovered.quality
        recovery = {k: v for k, v in recovered.record.items() if k not in ("weights", "quality_detail")}
        how = recovered.record["how"]
    # Costs of the plan's structure (as `predict` counts them): calibration folds BatchNorm into
    # the convolutions (a bias each), which is a deployment detail, not a cost of the plan.
    cost_before, cost_after = count_cost(net, x), count_cost(plain.model, x)
    quality: dict[str, Any] = {
        "metric": before.metric,
        "before": rounded(before.value),
        "after": rounded(after.value),
        "uncalibrated": rounded(plain.quality.value),
        "how": how,
        "description": before.description,
    }
    if not no_calibrate:
        quality["calibrated"] = rounded(delivered.quality.value)
        quality["calibration"] = delivered.calibration
    if recovery is not None:
        quality["recovery"] = recovery
    detail_before, detail_after = _quality_detail(before), _quality_detail(after)
    if "n" in detail_before:
        quality["n"] = detail_before["n"]
    if "low" in detail_before and "low" in detail_after:
        quality["interval_95"] = {
            "before": [detail_before["low"], detail_before["high"]],
            "after": [detail_after["low"], detail_after["high"]],
        }
    result: dict[str, Any] = {
        "model": prepared.entry.model_id,
        "source": _source(entry).to_dict(),
        "quality": quality,
        "params": {"before": cost_before.params, "after": cost_after.params},
        "macs": {"before": cost_before.macs, "after": cost_after.macs},
        "weight_bytes": {"before": cost_before.weight_bytes, "after": cost_after.weight_bytes},
        # Outside the accounting (docs/latency.md): float32 norms, embeddings, position/CLS.
        "other_param_bytes": {"before": cost_before.other_bytes, "after": cost_after.other_bytes},
    }
    summary = _data_summary(entry)
    if summary is not None:
        result["data"] = summary
    if measure:
        deployed = prepared.apply(plan, execution="int8")
        timing = time_model(deployed, x, reference=net, repeats=repeats, warmup=5, threads=1)
        result["latency_ms"] = {
            "before": timing.reference_median_ms,
            "after": timing.median_ms,
            "speedup": timing.speedup,
            "speedup_p10": timing.speedup_p10,
            "speedup_p90": timing.speedup_p90,
            "threads": 1,
            "repeats": repeats,
            "note": "median of interleaved rounds; int8 kernels for 8-bit Linear layers, float32 elsewhere",
        }
    if json_output:
        print_json(result)
        return
    q = result["quality"]
    from search_spaces import Choice

    changed = sum(1 for choice in plan.choices.values() if choice != Choice())
    typer.echo(f"{result['model']}: {plural(changed, 'layer')} compressed")
    on = f" on {q['n']:,} examples" if "n" in q else ""
    interval = q.get("interval_95")

    def cell(when: str) -> str:
        text = f"{q[when]:.4f}"
        if interval is not None:
            low, high = interval[when]
            text += f" (95% {low:.4f}–{high:.4f})"
        return text

    typer.echo(f"  quality ({q['metric']}{on}): {cell('before')} → {cell('after')}")
    typer.echo(f"    {q['how']}; uncalibrated: {q['uncalibrated']:.4f}")
    for key in ("params", "macs", "weight_bytes"):
        b, a = result[key]["before"], result[key]["after"]
        typer.echo(f"  {key:<13} {b:>12,} → {a:>12,}  ({a / b:.2f}×)")
    other = result["other_param_bytes"]
    if other["before"]:
        typer.echo(
            f"  (conv and linear layers; norms, embeddings, position/CLS add "
            f"{other['before']:,} → {other['after']:,} float32 bytes: docs/latency.md)"
        )
    if measure:
        lat = result["latency_ms"]
        typer.echo(
            f"  latency (host CPU, 1 thread): {lat['before']:.3f} ms → {lat['after']:.3f} ms, "
            f"speed-up {lat['speedup']:.2f}× (p10–p90 {lat['speedup_p10']:.2f}–{lat['speedup_p90']:.2f})"
        )


def targets(json_output: JsonFlag = False) -> None:
    """List the hardware targets: family, peak MAC/s per bit width, memory bandwidth, sources."""
    from latency_models import catalogue, list_targets

    cat = catalogue()  # the data dir's user targets (host-cpu, fitted ones), as the API and dashboard list
    rows = [cat.target(name).to_dict() for name in list_targets()]
    if json_output:
        print_json(rows)
        return
    for r in rows:
        peaks = ", ".join(f"{b}b {v / 1e12:.3g}T" for b, v in r["peak_macs_per_s"].items())
        typer.echo(
            f"{r['name']:<16} {r['family']:<7} MAC/s: {peaks:<44} {r['memory_bandwidth_gb_s']:>7.1f} GB/s  "
            f"{r['description']}"
        )


def predict(
    target: Annotated[str, typer.Option(help="Target name (see `hwsearch targets`).")],
    model: ModelArgument = None,
    model_option: ModelFlag = None,
    plan_file: PlanOption = None,
    uniform: UniformOption = None,
    model_args: ModelArgsOpt = None,
    weights: WeightsOpt = None,
    input_shape: InputShapeOpt = None,
    data: DataOpt = None,
    evaluator: EvaluatorOpt = None,
    eval_examples: EvalExamplesOpt = None,
    json_output: JsonFlag = False,
) -> None:
    """Predict latency, energy, FPGA resources and weight bytes of a plan on a target, with provenance."""
    quiet_torch()
    from latency_models import Coster, catalogue

    sources = source_fields(
        model_args=model_args,
        weights=weights,
        input_shape=input_shape,
        data=data,
        evaluator=evaluator,
        eval_examples=eval_examples,
    )
    name = _model_name(model, model_option)
    coster = Coster.active(catalogue(), target)  # an unknown target is checked before the model is built
    device = coster.target
    _, prepared, plan = _prepared_and_plan(_local_spec(name, device.name, sources), plan_file, uniform)
    model_id, layers = prepared.entry.model_id, prepared.layers
    # A fitted predictor replaces the prior; its interval and its validation travel with it.
    base, cost = coster.cost(layers, type(plan)()), coster.cost(layers, plan)
    latency = {"before": base["latency_ms"], "after": cost["latency_ms"]}
    if "latency_low_ms" in cost:
        latency.update(after_low=cost["latency_low_ms"], after_high=cost["latency_high_ms"])
    result: dict[str, Any] = {
        "model": model_id,
        "target": device.name,
        "provenance": coster.provenance,
        "predictor_version": device.predictor_version,
        "latency_ms": {**latency, "speedup": latency["before"] / latency["after"]},
        "macs": {"before": base["macs"], "after": cost["macs"]},
        "weight_bytes": {"before": base["weight_bytes"], "after": cost["weight_bytes"]},
        "energy_mj": {"before": base.get("energy_mj"), "after": cost.get("energy_mj")},
    }
    if device.fpga is not None:
        result["fpga"] = {
            "dsp": cost["dsp"],
            "lut": cost["lut"],
            "bram36": cost["bram36"],
            "feasible": cost["fits_board"],
            "board": {"dsp": device.fpga.dsp, "lut": device.fpga.lut, "bram36": device.fpga.bram36},
        }
    if json_output:
        print_json(result)
        return
    lat, macs, wbytes, energy = (result[k] for k in ("latency_ms", "macs", "weight_bytes", "energy_mj"))
    typer.echo(
        f"{model_id} on {device.name}: {lat['before']:.3f} ms → {lat['after']:.3f} ms "
        f"({lat['speedup']:.2f}×) [{coster.provenance}]"
    )
    typer.echo(
        f"  MACs {macs['before']:,} → {macs['after']:,}; "
        f"weight bytes {wbytes['before']:,} → {wbytes['after']:,}"
    )
    if energy["after"] is not None and energy["before"] is not None:
        typer.echo(
            f"  energy ≈ {energy['before']:.3f} → {energy['after']:.3f} mJ (typical board power × time)"
        )
    if device.fpga is not None:
        typer.echo(
            f"  FPGA: {cost['dsp']} DSP, {cost['lut']:,} LUT, {cost['bram36']} BRAM36 of {device.fpga.dsp}, "
            f"{device.fpga.lut:,}, {device.fpga.bram36}: {'fits' if cost['fits_board'] else 'DOES NOT FIT'}"
        )


def search(
    model: ModelOpt = None,
    target: TargetOpt = None,
    strategy: StrategyOpt = None,
    budget: BudgetEvalOpt = None,
    seed: SeedOpt = None,
    constraint: ConstraintOpt = None,
    rank: RankOpt = None,
    keep: KeepOpt = None,
    wbits: WbitsOpt = None,
    abits: AbitsOpt = None,
    tokens: TokensOpt = None,
    concurrency: ConcurrencyOpt = None,
    model_args: ModelArgsOpt = None,
    weights: WeightsOpt = None,
    input_shape: InputShapeOpt = None,
    data: DataOpt = None,
    evaluator: EvaluatorOpt = None,
    eval_examples: EvalExamplesOpt = None,
    no_calibrate: NoCalibrateOpt = False,
    recover_front: RecoverFrontOpt = None,
    recovery_steps: RecoveryStepsOpt = None,
    spec_file: Annotated[
        Path | None, typer.Option("--spec", help="A JobSpec JSON file instead of the flags above.")
    ] = None,
    trials_file: Annotated[
        Path | None,
        typer.Option(
            "--trials",
            help="JSON-lines file that keeps every trial as it finishes; run again with the same "
            "file (and the same search) to resume an interrupted search.",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Search per-layer compression plans on an embedded Ray (or RAY_ADDRESS) and print the front."""
    quiet_torch()
    from latency_models import catalogue, data_dir, list_targets
    from workers.search import JsonlSink, MemorySink, Trial, run_search

    sources = source_fields(
        model_args=model_args,
        weights=weights,
        input_shape=input_shape,
        data=data,
        evaluator=evaluator,
        eval_examples=eval_examples,
    )
    catalogue().load_targets()  # this machine's targets: an unknown one is one more field error
    spec = job_spec(
        spec_file,
        model,
        target,
        strategy,
        budget,
        seed,
        constraint,
        {"rank": rank, "keep": keep, "wbits": wbits, "abits": abits, "tokens": tokens},
        concurrency,
        known_targets=list_targets(),
        sources=sources,
        recovery=recovery_fields(no_calibrate, recover_front, recovery_steps),
    )
    job_id = spec.fingerprint()
    sink: MemorySink = MemorySink()
    stored: list[Trial] = []
    if trials_file is not None:
        try:
            sink = JsonlSink(trials_file)
        except (OSError, ValueError, TypeError) as exc:
            fail(f"--trials: {trials_file}: a JSON-lines file of hwsearch trials is required ({exc})")
        others = sorted({j for j, _ in sink.trials} - {job_id})
        if others:
            fail(
                f"--trials: {trials_file} holds trials of another search ({', '.join(others)}; this one is "
                f"{job_id}): use a new file, or the model, targets, space, objectives, constraints, "
                "strategy and seed of that search"
            )
        stored = sink.job_trials(job_id)
    progress: dict[str, Any] = {"bar": None, "done": 0}  # typer's bar, opened at the first report

    def on_progress(p: dict[str, Any]) -> None:
        # Where the model and the data came from, as the job records them (the API's "progress").
        for key in ("source", "data"):
            if p.get(key):
                progress[key] = p[key]
        if json_output:
            return
        if progress["bar"] is None:
            bar: Any = progress_bar(spec.budget.evaluations or 0)
            bar.__enter__()
            progress["bar"] = bar
        step = int(p.get("evaluations", 0)) - progress["done"]
        if step > 0:
            progress["bar"].update(step)
            progress["done"] += step

    try:
        # A SearchError (bad input found once the search starts) reaches the app: exit 2. Registered
        # datasets (--data ID) are this machine's (HWSEARCH_DATA_DIR).
        result = run_search(
            spec, sink, job_id=job_id, resume=stored, on_progress=on_progress, data_dir=data_dir()
        )
    finally:
        if progress["bar"] is not None:
            progress["bar"].__exit__(None, None, None)
    from workers.search import against_reference  # the API's front rows carry the same ratios

    by_number = {t.number: t for t in result.trials}
    reference = by_number.get(0)
    ref_costs = reference.costs if reference is not None and reference.status == "ok" else None
    names = spec.targets
    summary = result.summary()
    front_rows = []
    for t, row in zip(result.front, summary["front"], strict=True):
        vs = against_reference(t.costs, ref_costs, names)
        # quality_detail: n and the 95% interval of the quality, when the data gives them.
        front_rows.append(
            {
                **row,
                **vs,
                "is_reference": t.number == 0,
                "quality_detail": t.quality_detail,
                "calibration": t.calibration,
                "recovered": t.recovered,
            }
        )
    reference_row = None
    if reference is not None and ref_costs is not None:
        reference_row = {
            "number": 0,
            "quality": rounded(reference.quality),
            "quality_detail": reference.quality_detail,
            **{f"latency_ms@{n}": ref_costs[n]["latency_ms"] for n in names},
            "weight_bytes": ref_costs[names[0]].get("weight_bytes"),
            "note": "trial 0: the uncompressed model, the reference of every ratio",
        }
    if json_output:
        print_json(
            {
                "reference": reference_row,
                "front": [{**row, "quality": rounded(row["quality"])} for row in front_rows],
                "hypervolume": result.hypervolume,
                "trials": len(result.trials),
                "source": progress.get("source"),
                "data": progress.get("data") or None,
            }
        )
        return
    point = ", ".join(f"{v:.4g}" for v in result.reference_point)  # not -0.8999999999999998
    typer.echo(
        f"{plural(len(result.trials), 'trial')}, {len(result.front)} on the feasible front, "
        f"hypervolume {result.hypervolume:.4f} (reference point [{point}])"
    )
    typer.echo(
        f"{'trial':>9}  {'quality':>8}  "
        + "  ".join(f"{'ms@' + n:>16}  {'speed-up':>8}" for n in names)
        + f"  {'size':>6}  provenance"
    )
    shown = ([reference] if reference is not None and ref_costs is not None else []) + [
        t for t in result.front if t.number != 0
    ]
    for t in shown:
        vs = against_reference(t.costs, ref_costs, names)
        mark = "ref " if t.number == 0 else ""
        cells = "  ".join(
            f"{t.costs[n]['latency_ms']:>16.4f}  {ratio_cell(vs[f'speedup@{n}']):>8}" for n in names
        )
        measured = f"  measured {t.measured['latency_ms']:.4f} ms" if t.measured else ""
        if t.recovered is not None:
            measured += f"  recovered {t.recovered['quality']:.4f} ({t.recovered['steps']} steps)"
        on_front = "" if t.number != 0 or any(f.number == 0 for f in result.front) else "  (not on the front)"
        typer.echo(
            f"{mark + str(t.number):>9}  {t.quality:>8.4f}  {cells}  {ratio_cell(vs['size_ratio']):>6}  "
            f"{t.costs[names[0]]['provenance']}{measured}"
            + (f"  uncompressed reference{on_front}" if t.number == 0 else "")
        )
    how = next((t.calibration["how"] for t in result.front if t.number != 0 and t.calibration), None)
    if how is not None:
        typer.echo(f"quality: {how}")
    if progress.get("source"):
        from workers.zoo import ModelSource

        typer.echo(f"source: {ModelSource.from_dict(progress['source']).describe()}")
    if progress.get("data"):
        data_record = progress["data"]
        if "n_evaluation" in data_record:
            where = data_record.get("dataset") or data_record.get("path")
            typer.echo(
                f"data: {where} ({data_record.get('kind')}): quality on {data_record['n_evaluation']:,} "
                f"evaluation examples, {data_record.get('n_calibration', 0):,} kept for calibration"
            )
        if data_record.get("evaluator"):
            typer.echo(f"evaluator: {data_record['evaluator']}")
