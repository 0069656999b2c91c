"""``hwsearch latency fit | validate | profile-host``: fit and score latency predictors from
measurements. ``app`` is the sub-group ``service.cli`` mounts under ``latency``.

A bad table or an unknown target raises LatencyModelError (an InputError), which the app
turns into exit 2; nothing is written then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import JsonFlag, print_json, quiet_torch

__all__ = ["app"]

app = typer.Typer(
    help="Fit and validate latency predictors from measurements.", no_args_is_help=True, rich_markup_mode=None
)

BudgetOption = Annotated[float | None, typer.Option(help="Latency budget for the false-feasible rate.")]
MeasurementsOption = Annotated[
    Path,
    typer.Option(
        help="Measurements CSV, per network (columns model, plan, batch, latency_ms) or per layer "
        "(name, kind, shapes, rank/keep/wbits/abits, latency_ms), told apart by the header; "
        "see docs/latency.md."
    ),
]


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
    lines += _selection_lines(report)
    return lines


def _selection_lines(report: dict[str, Any]) -> list[str]:
    """The model-choice table of a fit (every kind's held-out scores, or why it was skipped)."""
    selection = report.get("selection")
    if not selection:
        return []
    lines = [f"  model choice ({selection['folds']}-fold cross-validation on the rows):"]
    for kind, row in selection["table"].items():
        mark = "*" if kind == report.get("kind") else " "
        if "skipped" in row:
            lines.append(f"   {mark}{kind:<18} skipped: {row['skipped']}")
            continue
        rho = row["spearman"]
        lines.append(
            f"   {mark}{kind:<18} Spearman {'n/a' if rho is None else f'{rho:.3f}'}  MAPE {row['mape']:.3f}  "
            f"±10% {row['within_10pct']:.2f}"
        )
    prior = selection.get("prior_spearman")
    lines.append(
        f"  kept {report.get('kind')} (analytic prior's Spearman "
        f"{'n/a' if prior is None else f'{prior:.3f}'})"
    )
    transfer = report.get("transfer")
    if transfer:
        scores = ", ".join(
            f"{name} {'n/a' if v is None else f'{v:.3f}'}" for name, v in transfer["loo_spearman"].items()
        )
        lines.append(f"  transfer source {transfer['source']} (leave-one-out Spearman: {scores})")
    if selection.get("worst_rows"):
        lines.append("  worst held-out rows (CSV row, name, measured → predicted ms):")
        lines += [
            f"    row {w['row']} {w['name']}: {w['measured_ms']:.3f} → {w['predicted_ms']:.3f}"
            for w in selection["worst_rows"]
        ]
    return lines


def _emit_report(report: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(report)
        return
    for line in _report_lines(report):
        typer.echo(line)


@app.command("fit")
def latency_fit(
    target: Annotated[str, typer.Option(help="Target to calibrate (created when --family is given).")],
    measurements: MeasurementsOption,
    family: Annotated[str | None, typer.Option(help="gpu, cpu, mobile or fpga: create the target.")] = None,
    kind: Annotated[
        str,
        typer.Option(
            help="Predictor kind, or auto: fit every kind, keep the best held-out Spearman (k-fold)."
        ),
    ] = "auto",
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Transfer from this target's learned predictor (or auto: the catalogue target "
            "that ranks these rows best by leave-one-out); for a new device with few rows.",
        ),
    ] = None,
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
    quiet_torch()
    from workers.calibration import fit

    report = fit(
        target,
        measurements,
        family=family,
        kind=kind,
        source=source,
        test_fraction=test_fraction,
        budget_ms=budget_ms,
    )
    _emit_report(report, json_output)


@app.command("validate")
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
    quiet_torch()
    from workers.calibration import validate

    _emit_report(validate(target, measurements, budget_ms=budget_ms), json_output)


@app.command("profile-host")
def latency_profile_host(
    models: Annotated[
        str, typer.Option(help="Comma-separated zoo models to time.")
    ] = "digits-cnn,digits-vit,minilm-l6",
    plans: Annotated[
        int, typer.Option(help="Sampled plans per model (the first is uncompressed).", min=3)
    ] = 12,
    repeats: Annotated[int, typer.Option(help="Timing rounds per plan.", min=3)] = 15,
    out: Annotated[Path | None, typer.Option(help="Where to write the measurements CSV.")] = None,
    runtime: Annotated[
        str,
        typer.Option(
            help="What runs the models: torch (eager; target host-cpu) or onnxruntime (the exported "
            "ONNX model; target host-cpu-ort)."
        ),
    ] = "torch",
    json_output: JsonFlag = False,
) -> None:
    """Measure this CPU, time compressed zoo models on it, and fit the predictor of host-cpu (torch)
    or host-cpu-ort (ONNX Runtime)."""
    quiet_torch()
    from latency_models import get_target
    from workers.profiling import calibrate_host, host_target_name
    from workers.zoo import create_model

    name = host_target_name(runtime)  # an unknown runtime exits 2 before any timing
    names = [m.strip() for m in models.split(",") if m.strip()]
    for model in names:
        create_model(model)  # an unknown name raises ZooError (exit 2) before any timing
    report = calibrate_host(names, plans, repeats=repeats, out=out, runtime=runtime)
    target = get_target(name)
    path = report["measurements"]
    rows = report["n_networks_timed"]
    if not json_output:
        typer.echo(
            f"{name}: {target.peak_macs_per_s[32] / 1e9:.1f} G MAC/s fp32 (1 thread), "
            f"{target.memory_bandwidth_gb_s:.1f} GB/s; {rows} networks timed → {path}"
        )
    _emit_report(report, json_output)
