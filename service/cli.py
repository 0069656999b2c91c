"""The ``hwsearch`` command line.

Commands that work locally (models, inspect, compress) import ``workers`` inside the
command, so ``import service`` stays free of torch. Bad input exits with code 2 and a
one-paragraph message, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    name="hwsearch",
    help="Hardware-aware search of per-layer ranks, pruning, bit widths and token keep rates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]

_UNIFORM_KEYS = {"rank", "keep", "wbits", "abits", "tokens"}


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _load_model(model_id: str) -> Any:
    from workers.zoo import ZooError, create_model

    try:
        return create_model(model_id)
    except ZooError as exc:
        _fail(str(exc))


def _quiet_torch() -> None:
    import warnings

    # torch.ao / torch-pruning deprecation chatter is not for end users.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


@app.command()
def models(json_output: JsonFlag = False) -> None:
    """List the model zoo: name, task, quality metric and compressible layers."""
    _quiet_torch()
    from workers.zoo import list_models, model_class

    rows: list[dict[str, Any]] = []
    for name in list_models():
        cls = model_class(name)
        rows.append(
            {
                "name": name,
                "task": cls.task,
                "metric": cls.metric,
                "has_weights": cls.has_weights,
                "args": list(cls.args),
                "description": cls.description,
            }
        )
    if json_output:
        _print_json(rows)
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['name']:<{width}}  {r['metric']:<18} {r['task']}")


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


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="Zoo model name, e.g. digits-cnn or nasbench201:<arch>.")],
    json_output: JsonFlag = False,
) -> None:
    """Print the layer inventory: name, kind, shapes, params, MACs, knobs and coupled group."""
    _quiet_torch()
    from kernels import trace

    entry = _load_model(model)
    net = entry.build()
    layers = trace(net, entry.example_input(), ignore=entry.ignore_layers(net))
    if json_output:
        _print_json({"model": entry.model_id, "layers": [layer.to_dict() for layer in layers]})
        return
    typer.echo(f"{'name':<34} {'kind':<17} {'shape':<36} {'params':>9} {'MACs':>12}  {'knobs':<22} group")
    for layer in layers:
        typer.echo(
            f"{layer.name:<34} {layer.kind.value:<17} {_shape(layer):<36} {layer.params:>9,} "
            f"{layer.macs:>12,}  {_knobs(layer):<22} {layer.group or '-'}"
        )
    typer.echo(
        f"{len(layers)} layers, {sum(x.params for x in layers):,} params and "
        f"{sum(x.macs for x in layers):,} MACs in them"
    )


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


def _model_and_plan(
    model_id: str, plan_file: Path | None, uniform: str | None
) -> tuple[Any, Any, Any, Any, Any]:
    """Build the zoo model, trace it and read the plan; bad input exits 2 with a message."""
    if (plan_file is None) == (uniform is None):
        _fail("give exactly one of --plan PLAN.json or --uniform KEY=VALUE,...")
    from search_spaces import Plan, SpaceError

    entry = _load_model(model_id)
    from kernels import trace

    net = entry.build()
    x = entry.example_input()
    layers = trace(net, x, ignore=tuple(entry.ignore_layers(net)))
    try:
        if plan_file is not None:
            try:
                text = plan_file.read_text()
            except OSError as exc:
                _fail(f"--plan: cannot read {str(plan_file)!r} ({exc.strerror}); give a readable JSON file")
            plan = Plan.from_json(text, layers)
        else:
            plan = uniform_plan(layers, parse_uniform(uniform or "")).validate(layers)
    except (SpaceError, ValueError) as exc:
        _fail(f"invalid plan for {entry.model_id}: {exc}")
    return entry, net, x, layers, plan


PlanOption = Annotated[Path | None, typer.Option("--plan", help="Plan JSON file.")]
UniformOption = Annotated[
    str | None,
    typer.Option(help="Same compression on every layer, e.g. rank=0.5,keep=0.75,wbits=8,abits=8,tokens=0.7"),
]


@app.command()
def compress(
    model: Annotated[str, typer.Argument(help="Zoo model name.")],
    plan_file: Annotated[Path | None, typer.Option("--plan", help="Plan JSON file.")] = None,
    uniform: Annotated[
        str | None,
        typer.Option(
            help="Same compression on every layer, e.g. rank=0.5,keep=0.75,wbits=8,abits=8,tokens=0.7"
        ),
    ] = None,
    measure: Annotated[bool, typer.Option(help="Also time both models on the host CPU.")] = False,
    repeats: Annotated[int, typer.Option(help="Timing rounds for --measure.", min=3)] = 30,
    json_output: JsonFlag = False,
) -> None:
    """Apply a plan; print quality before and after, params, MACs, weight bytes (and latency)."""
    _quiet_torch()
    from kernels import apply, count_cost, time_model

    entry, net, x, _, plan = _model_and_plan(model, plan_file, uniform)
    ignore = tuple(entry.ignore_layers(net))
    compressed = apply(net, plan, x, ignore=ignore)
    before, after = entry.evaluate(net), entry.evaluate(compressed)
    cost_before, cost_after = count_cost(net, x), count_cost(compressed, x)
    result: dict[str, Any] = {
        "model": entry.model_id,
        "quality": {
            "metric": before.metric,
            "before": before.value,
            "after": after.value,
            "description": before.description,
        },
        "params": {"before": cost_before.params, "after": cost_after.params},
        "macs": {"before": cost_before.macs, "after": cost_after.macs},
        "weight_bytes": {"before": cost_before.weight_bytes, "after": cost_after.weight_bytes},
    }
    if measure:
        deployed = apply(net, plan, x, execution="int8", ignore=ignore)
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
        _print_json(result)
        return
    q = result["quality"]
    typer.echo(f"{entry.model_id}: {len(plan.choices)} layers compressed")
    typer.echo(f"  quality ({q['metric']}): {q['before']:.4f} → {q['after']:.4f}")
    for key in ("params", "macs", "weight_bytes"):
        b, a = result[key]["before"], result[key]["after"]
        typer.echo(f"  {key:<13} {b:>12,} → {a:>12,}  ({a / b:.2f}×)")
    if measure:
        lat = result["latency_ms"]
        typer.echo(
            f"  latency (host CPU, 1 thread): {lat['before']:.3f} ms → {lat['after']:.3f} ms, "
            f"speed-up {lat['speedup']:.2f}× (p10–p90 {lat['speedup_p10']:.2f}–{lat['speedup_p90']:.2f})"
        )


@app.command()
def targets(json_output: JsonFlag = False) -> None:
    """List the hardware targets: family, peak MAC/s per bit width, memory bandwidth, sources."""
    from latency_models import get_target, list_targets

    rows = [get_target(name).to_dict() for name in list_targets()]
    if json_output:
        _print_json(rows)
        return
    for r in rows:
        peaks = ", ".join(f"{b}b {v / 1e12:.3g}T" for b, v in r["peak_macs_per_s"].items())
        typer.echo(
            f"{r['name']:<16} {r['family']:<7} MAC/s: {peaks:<44} {r['memory_bandwidth_gb_s']:>7.1f} GB/s  "
            f"{r['description']}"
        )


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Zoo model name.")],
    target: Annotated[str, typer.Option(help="Target name (see `hwsearch targets`).")],
    plan_file: PlanOption = None,
    uniform: UniformOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Predict latency, energy, FPGA resources and weight bytes of a plan on a target, with provenance."""
    _quiet_torch()
    from latency_models import LatencyModelError
    from workers.calibration import Coster, catalogue

    try:
        coster = Coster.active(catalogue(), target)
    except LatencyModelError as exc:
        _fail(str(exc))
    device = coster.target
    entry, _, _, layers, plan = _model_and_plan(model, plan_file, uniform)
    # A fitted predictor replaces the prior; its interval and its validation travel with it.
    base, cost = coster.cost(layers, type(plan)()), coster.cost(layers, plan)
    latency = {"before": base["latency_ms"], "after": cost["latency_ms"]}
    if "latency_low_ms" in cost:
        latency.update(after_low=cost["latency_low_ms"], after_high=cost["latency_high_ms"])
    result: dict[str, Any] = {
        "model": entry.model_id,
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
        _print_json(result)
        return
    lat, macs, wbytes, energy = (result[k] for k in ("latency_ms", "macs", "weight_bytes", "energy_mj"))
    typer.echo(
        f"{entry.model_id} on {device.name}: {lat['before']:.3f} ms → {lat['after']:.3f} ms "
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


latency_app = typer.Typer(help="Fit and validate latency predictors from measurements.", no_args_is_help=True)
app.add_typer(latency_app, name="latency")


def _metrics_line(name: str, m: dict[str, Any]) -> str:
    coverage = m.get("interval_coverage")
    return (
        f"  {name:<16} MAPE {m['mape']:.3f}  ±5% {m['within_5pct']:.2f}  ±10% {m['within_10pct']:.2f}  "
        f"Spearman {m['spearman']:.3f}  Kendall {m['kendall']:.3f}"
        + (f"  in 80% interval {coverage:.2f}" if coverage is not None else "")
    )


def _report_lines(report: dict[str, Any]) -> list[str]:
    version = f", version {report['version']}" if report.get("version") else ""
    unit = "layer" if report.get("format") == "layer" else "network"
    lines = [
        f"target {report['target']}: {report.get('n_train')} train, {report.get('n_test')} test "
        f"{unit} rows{version}"
    ]
    if report.get("note"):
        lines.append(f"  note: {report['note']}")
    if "mape" in report:
        lines.append(_metrics_line("predictor", report))
        lines += [_metrics_line(name, m) for name, m in report.get("baselines", {}).items()]
    return lines


BudgetOption = Annotated[float | None, typer.Option(help="Latency budget for the false-feasible rate.")]


def _emit_report(report: dict[str, Any], json_output: bool) -> None:
    if json_output:
        _print_json(report)
        return
    for line in _report_lines(report):
        typer.echo(line)


MeasurementsOption = Annotated[
    Path,
    typer.Option(
        help="Measurements CSV, per network (columns model, plan, batch, latency_ms) or per layer "
        "(name, kind, shapes, rank/keep/wbits/abits, latency_ms), told apart by the header; "
        "see docs/latency.md."
    ),
]


@latency_app.command("fit")
def latency_fit(
    target: Annotated[str, typer.Option(help="Target to calibrate (created when --family is given).")],
    measurements: MeasurementsOption,
    family: Annotated[str | None, typer.Option(help="gpu, cpu, mobile or fpga: create the target.")] = None,
    kind: Annotated[str, typer.Option(help="Predictor kind.")] = "boosted-residual",
    test_fraction: Annotated[float, typer.Option(help="Share of rows held out for the report.")] = 0.2,
    budget_ms: BudgetOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Fit a new predictor version for TARGET from measurements and print its validation report.

    A per-network table fits network latency directly. A per-layer table (single kernels
    profiled on the device, nn-Meter style) fits an additive model: a network is predicted as
    the sum of its layers, without a per-network overhead; boosted-residual then keeps its
    calibrated prior only. A bad table exits 2 naming the row and column; nothing is written.
    """
    _quiet_torch()
    from latency_models import LatencyModelError
    from workers.calibration import fit

    try:
        report = fit(
            target, measurements, family=family, kind=kind, test_fraction=test_fraction, budget_ms=budget_ms
        )
    except LatencyModelError as exc:
        _fail(str(exc))
    _emit_report(report, json_output)


@latency_app.command("validate")
def latency_validate(
    target: Annotated[str, typer.Option(help="Target whose active predictor is scored.")],
    measurements: MeasurementsOption,
    budget_ms: BudgetOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Score TARGET's active predictor on measurements: MAPE, ±5/±10%, Spearman, Kendall.

    A per-network table scores any predictor; a per-layer table scores a predictor fitted
    per layer.
    """
    _quiet_torch()
    from latency_models import LatencyModelError
    from workers.calibration import validate

    try:
        report = validate(target, measurements, budget_ms=budget_ms)
    except LatencyModelError as exc:
        _fail(str(exc))
    _emit_report(report, json_output)


@latency_app.command("profile-host")
def latency_profile_host(
    models: Annotated[
        str, typer.Option(help="Comma-separated zoo models to time.")
    ] = "digits-cnn,digits-vit,minilm-l6",
    plans: Annotated[
        int, typer.Option(help="Sampled plans per model (the first is uncompressed).", min=3)
    ] = 12,
    repeats: Annotated[int, typer.Option(help="Timing rounds per plan.", min=3)] = 15,
    out: Annotated[Path | None, typer.Option(help="Where to write the measurements CSV.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Measure this CPU, time compressed zoo models on it, and fit the host-cpu predictor."""
    _quiet_torch()
    from latency_models import LatencyModelError, get_target
    from workers.profiling import HOST, calibrate_host

    names = [m.strip() for m in models.split(",") if m.strip()]
    for name in names:
        _load_model(name)  # unknown names exit 2 before any timing
    try:
        report = calibrate_host(names, plans, repeats=repeats, out=out)
    except LatencyModelError as exc:
        _fail(str(exc))
    target = get_target(HOST)
    path = report["measurements"]
    rows = report["n_networks_timed"]
    if not json_output:
        typer.echo(
            f"host-cpu: {target.peak_macs_per_s[32] / 1e9:.1f} G MAC/s fp32 (1 thread), "
            f"{target.memory_bandwidth_gb_s:.1f} GB/s; {rows} networks timed → {path}"
        )
    _emit_report(report, json_output)


def _floats(text: str | None, flag: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"{flag}: {text!r} is not a comma-separated list of numbers, e.g. {flag} 0.25,0.5")


# Options shared by `search` (local) and `submit` (to the service): one JobSpec either way.
ModelOpt = Annotated[str | None, typer.Option(help="Zoo model (see `hwsearch models`).")]
TargetOpt = Annotated[
    list[str] | None, typer.Option(help="Target (see `hwsearch targets`); repeat for several.")
]
StrategyOpt = Annotated[str, typer.Option(help="random, uniform, nsga2, tpe or guided.")]
BudgetEvalOpt = Annotated[
    int, typer.Option(help="Quality evaluations (trial 0, the uncompressed model, counts).")
]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
ConstraintOpt = Annotated[
    list[str] | None,
    typer.Option(help="Hard constraint, e.g. latency_ms<=5, dsp@zcu102<=2000, quality>=0.9; repeatable."),
]
RankOpt = Annotated[str | None, typer.Option(help="Rank fractions offered, e.g. 0.25,0.5.")]
KeepOpt = Annotated[str | None, typer.Option(help="Channel keep ratios offered, e.g. 0.5,0.75.")]
WbitsOpt = Annotated[str | None, typer.Option(help="Weight bit widths offered, e.g. 4,8.")]
AbitsOpt = Annotated[str | None, typer.Option(help="Activation bit widths offered, e.g. 8.")]
TokensOpt = Annotated[str | None, typer.Option(help="Token keep rates offered, e.g. 0.5,0.7.")]
ConcurrencyOpt = Annotated[int, typer.Option(help="Ray evaluator actors.", min=1)]


def job_spec(
    spec_file: Path | None,
    model: str | None,
    target: list[str] | None,
    strategy: str,
    budget: int,
    seed: int,
    constraint: list[str] | None,
    space_flags: dict[str, str | None],
    concurrency: int,
) -> Any:
    """The JobSpec of a spec file or of the search flags; bad input exits 2 naming the field."""
    from pydantic import ValidationError

    from workers.search import JobSpec

    try:
        if spec_file is not None:
            try:
                data = json.loads(spec_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                _fail(f"--spec: {spec_file}: a readable JobSpec JSON file is required ({exc})")
            return JobSpec.model_validate(data)
        if not model or not target:
            _fail("--model and --target are required (or a JobSpec file)")
        space: dict[str, Any] = {
            "rank_fractions": _floats(space_flags["rank"], "--rank"),
            "keep": _floats(space_flags["keep"], "--keep"),
            "wbits": [int(b) for b in _floats(space_flags["wbits"], "--wbits")],
            "abits": [int(b) for b in _floats(space_flags["abits"], "--abits")],
            "token_keep": _floats(space_flags["tokens"], "--tokens"),
        }
        if not any(space.values()):
            space = {"rank_fractions": [0.25, 0.5, 0.75], "keep": [0.5, 0.75], "wbits": [4, 8]}
        return JobSpec.model_validate(
            {
                "model": model,
                "targets": target,
                "space": space,
                "strategy": strategy,
                "budget": {"evaluations": budget},
                "seed": seed,
                "constraints": constraint or [],
                "concurrency": concurrency,
            }
        )
    except ValidationError as exc:
        _fail(_validation_message(exc))


@app.command()
def search(
    model: ModelOpt = None,
    target: TargetOpt = None,
    strategy: StrategyOpt = "guided",
    budget: BudgetEvalOpt = 50,
    seed: SeedOpt = 0,
    constraint: ConstraintOpt = None,
    rank: RankOpt = None,
    keep: KeepOpt = None,
    wbits: WbitsOpt = None,
    abits: AbitsOpt = None,
    tokens: TokensOpt = None,
    concurrency: ConcurrencyOpt = 2,
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
    _quiet_torch()
    from workers.search import JsonlSink, MemorySink, SearchError, Trial, run_search

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
    )
    job_id = spec.fingerprint()
    sink: MemorySink = MemorySink()
    stored: list[Trial] = []
    if trials_file is not None:
        try:
            sink = JsonlSink(trials_file)
        except (OSError, ValueError, TypeError) as exc:
            _fail(f"--trials: {trials_file}: a JSON-lines file of hwsearch trials is required ({exc})")
        others = sorted({j for j, _ in sink.trials} - {job_id})
        if others:
            _fail(
                f"--trials: {trials_file} holds trials of another search ({', '.join(others)}; this one is "
                f"{job_id}): use a new file, or the model, targets, space, objectives, constraints, "
                "strategy and seed of that search"
            )
        stored = sink.job_trials(job_id)
    progress: dict[str, Any] = {"bar": None, "done": 0}  # typer's bar, opened at the first report

    def on_progress(p: dict[str, Any]) -> None:
        if json_output:
            return
        if progress["bar"] is None:
            bar: Any = typer.progressbar(length=spec.budget.evaluations or 0, label="evaluations")
            bar.__enter__()
            progress["bar"] = bar
        step = int(p.get("evaluations", 0)) - progress["done"]
        if step > 0:
            progress["bar"].update(step)
            progress["done"] += step

    try:
        result = run_search(spec, sink, job_id=job_id, resume=stored, on_progress=on_progress)
    except SearchError as exc:
        _fail(str(exc))
    finally:
        if progress["bar"] is not None:
            progress["bar"].__exit__(None, None, None)
    if json_output:
        summary = result.summary()
        _print_json(
            {"front": summary["front"], "hypervolume": result.hypervolume, "trials": len(result.trials)}
        )
        return
    typer.echo(
        f"{len(result.trials)} trials, {len(result.front)} on the feasible front, "
        f"hypervolume {result.hypervolume:.4f} (reference point {result.reference_point})"
    )
    names = spec.targets
    typer.echo(
        f"{'trial':>5}  {'quality':>8}  " + "  ".join(f"{'ms@' + n:>16}" for n in names) + "  provenance"
    )
    for t in result.front:
        cells = "  ".join(f"{t.costs[n]['latency_ms']:>16.4f}" for n in names)
        measured = f"  measured {t.measured['latency_ms']:.4f} ms" if t.measured else ""
        typer.echo(f"{t.number:>5}  {t.quality:>8.4f}  {cells}  {t.costs[names[0]]['provenance']}{measured}")


def _validation_message(exc: Any) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


# The service's commands (serve, token, submit, status, front, cancel) register on `app`.
from . import cli_remote  # noqa: E402, F401


def main() -> None:
    """Entry point of the ``hwsearch`` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
