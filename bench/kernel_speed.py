"""Speed-up against MAC ratio of hwsearch's compression kernels, measured on the host CPU.

Every row times a compressed candidate against its dense reference, interleaved round by
round in the same loop (``kernels.time_callable`` / ``kernels.time_model``), on 1 CPU thread,
and records the MACs before and after (``kernels.count_cost``). Two levels:

- layer: real layers cut out of mobilenet-v2 and minilm-l6, each run standalone on an input
  of the shape it sees inside the model (captured with a forward hook). Variants: low-rank at
  25 % and 50 % of full rank (``kernels.low_rank``), output channels pruned to 50 % (a smaller
  dense layer of the same kind, sliced from the weights: that is all a layer's own pruning
  does), input channels pruned to 50 % for layers the model can only shrink from the input
  side, and int8 dynamic quantization (``kernels.to_int8_dynamic``, Linear only).
- model: whole zoo models compressed by a Plan with ``kernels.apply`` (the ``"int8"``
  execution is timed; the ``"simulate"`` one is evaluated for quality), and the same plan in
  ONNX Runtime (issue 19): calibrated, exported by ``kernels.export_onnx`` (int8 layers as QDQ
  from onnxruntime's static quantisation) and timed by ``kernels.time_onnx`` against the
  exported uncompressed model, in the same run. ``--models-only`` skips the layer rows.

Run::

    .venv/bin/python bench/kernel_speed.py [--quick] [--out bench/results/kernels.json]
    .venv/bin/python bench/kernel_speed.py --markdown bench/results/kernels.json   # print the table
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kernels
from search_spaces import Choice, LayerSpec, Plan
from workers.zoo import Prepared, prepare

THREADS = 1
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "kernels.json"

#: (model, layer name, role) of the layers timed standalone.
LAYERS: tuple[tuple[str, str, str], ...] = (
    ("mobilenet-v2", "features.0.0", "3×3 stem conv, stride 2"),
    ("mobilenet-v2", "features.3.conv.0.0", "1×1 expand conv"),
    ("mobilenet-v2", "features.13.conv.2", "1×1 project conv"),
    ("mobilenet-v2", "classifier.1", "classifier Linear"),
    ("minilm-l6", "blocks.0.attn.q", "attention query Linear"),
    ("minilm-l6", "blocks.0.fc1", "FFN up Linear"),
    ("minilm-l6", "blocks.0.fc2", "FFN down Linear"),
)

#: Wall-clock length aimed at for one timed round (``inner`` calls), in milliseconds, so that
#: sub-millisecond layers are not timed at the resolution of one call.
LAYER_ROUND_MS = 2.0
MODEL_ROUND_MS = 10.0


@dataclass(frozen=True)
class Settings:
    """Repeats per row and whether to evaluate model quality."""

    layer_repeats: int
    model_repeats: int
    warmup: int
    quality: bool
    quick: bool
    models_only: bool = False
    onnxruntime: bool = True


# --------------------------------------------------------------------------------------------
# helpers


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_facts() -> dict[str, Any]:
    """What the timings depend on: library, threads, CPU, OS."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "quantized_engine": torch.backends.quantized.engine,
    }


def _inner_for(fn: Callable[[], Any], target_ms: float) -> int:
    """Calls per timed round so that a round lasts about ``target_ms``."""
    with torch.inference_mode():
        fn()
        start = time.perf_counter()
        fn()
        one = (time.perf_counter() - start) * 1000.0
    return max(1, math.ceil(target_ms / max(one, 1e-3)))


def _timing_fields(t: kernels.Timing, inner: int) -> dict[str, Any]:
    return {
        "speedup": t.speedup,
        "speedup_p10": t.speedup_p10,
        "speedup_p90": t.speedup_p90,
        "median_ms": t.median_ms,
        "reference_median_ms": t.reference_median_ms,
        "p10_ms": t.p10_ms,
        "p90_ms": t.p90_ms,
        "repeats": t.repeats,
        "inner": inner,
        "threads": t.threads,
    }


def _capture_input(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    """The input ``model.<name>`` receives on ``x`` (first call), detached and cloned."""
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not seen:
            seen.append(args[0].detach().clone())

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _kept_indices(weight: torch.Tensor, n_keep: int, dim: int) -> torch.Tensor:
    """Indices of the ``n_keep`` slices of ``weight`` along ``dim`` with the largest L2 norm, sorted."""
    norms = weight.detach().transpose(0, dim).reshape(weight.shape[dim], -1).norm(dim=1)
    return norms.topk(n_keep).indices.sort().values


def sliced_layer(layer: nn.Module, keep: float, side: str) -> tuple[nn.Module, torch.Tensor]:
    """A smaller dense copy of a Linear/Conv2d with ``keep`` of its output (or input) channels.

    This is what channel pruning makes of one layer: the same kind of layer, narrower, keeping
    the channels of largest L2 norm. Returns the layer and the kept channel indices (an
    input-side slice needs its input sliced the same way). Depthwise and grouped convs are
    not handled (not needed here).
    """
    if side not in ("out", "in"):
        raise ValueError(f"`side in ('out', 'in')` must hold, but got (side={side!r})")
    dim = 0 if side == "out" else 1
    if isinstance(layer, nn.Linear):
        total = layer.out_features if side == "out" else layer.in_features
        n = max(1, round(total * keep))
        idx = _kept_indices(layer.weight, n, dim)
        new_lin = nn.Linear(
            layer.in_features if side == "out" else n,
            n if side == "out" else layer.out_features,
            bias=layer.bias is not None,
        )
        with torch.no_grad():
            new_lin.weight.copy_(layer.weight.index_select(dim, idx))
            if layer.bias is not None:
                new_lin.bias.copy_(layer.bias[idx] if side == "out" else layer.bias)
        return new_lin.eval(), idx
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(f"`groups == 1` must hold for slicing, but got (groups={layer.groups})")
        total = layer.out_channels if side == "out" else layer.in_channels
        n = max(1, round(total * keep))
        idx = _kept_indices(layer.weight, n, dim)
        new_conv = nn.Conv2d(
            layer.in_channels if side == "out" else n,
            n if side == "out" else layer.out_channels,
            layer.kernel_size,  # type: ignore[arg-type]
            stride=layer.stride,  # type: ignore[arg-type]
            padding=layer.padding,  # type: ignore[arg-type]
            dilation=layer.dilation,  # type: ignore[arg-type]
            bias=layer.bias is not None,
        )
        with torch.no_grad():
            new_conv.weight.copy_(layer.weight.index_select(dim, idx))
            if layer.bias is not None:
                new_conv.bias.copy_(layer.bias[idx] if side == "out" else layer.bias)  # type: ignore[union-attr]
        return new_conv.eval(), idx
    raise TypeError(f"slicing supports nn.Linear and nn.Conv2d, got {type(layer).__name__}")


# --------------------------------------------------------------------------------------------
# layer level


@dataclass(frozen=True)
class LayerVariant:
    """A compressed stand-in for one layer and the input it runs on."""

    technique: str
    label: str
    module: nn.Module
    inp: torch.Tensor
    #: Whether its output approximates the dense layer's (not so for sliced-output variants).
    comparable: bool


def _layer_variants(
    layer: nn.Module, inp: torch.Tensor, spec: LayerSpec, by_name: dict[str, LayerSpec]
) -> list[LayerVariant]:
    """Every variant that applies to ``layer`` (which sees ``inp`` in the model)."""
    out: list[LayerVariant] = []
    full = kernels.full_rank(layer)
    for frac in (0.25, 0.5):
        rank = max(1, int(frac * full + 0.5))
        label = f"low-rank r={rank}/{full} ({frac:.0%})"
        out.append(LayerVariant("low-rank", label, kernels.low_rank(layer, rank).eval(), inp, True))
    sliced, _ = sliced_layer(layer, 0.5, "out")
    out.append(LayerVariant("prune", "out channels 50%", sliced, inp, False))
    in_group = by_name.get(spec.in_group) if spec.in_group else None
    if not spec.prunable and in_group is not None and in_group.prunable:
        # The model cannot prune this layer's outputs, but pruning its producer shrinks its input.
        sliced, idx = sliced_layer(layer, 0.5, "in")
        channel_dim = -1 if isinstance(layer, nn.Linear) else 1
        out.append(LayerVariant("prune", "in channels 50%", sliced, inp.index_select(channel_dim, idx), True))
    if isinstance(layer, nn.Linear):
        int8 = kernels.to_int8_dynamic(copy.deepcopy(layer)).eval()
        out.append(LayerVariant("int8", "int8 dynamic", int8, inp, True))
    return out


def bench_layers(settings: Settings, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Rows for every layer of ``LAYERS`` and each of its variants."""
    rows: list[dict[str, Any]] = []
    by_model: dict[str, list[tuple[str, str]]] = {}
    for model_id, name, role in LAYERS:
        by_model.setdefault(model_id, []).append((name, role))
    for model_id, names in by_model.items():
        prepared = prepare(model_id)
        model, x = prepared.model, prepared.example_input
        specs = {s.name: s for s in prepared.layers}
        for name, role in names:
            layer = copy.deepcopy(model.get_submodule(name)).eval()
            inp = _capture_input(model, x, name)
            spec = specs[name]
            before = kernels.count_cost(layer, inp)
            with torch.inference_mode():
                expected = layer(inp)
            for v in _layer_variants(layer, inp, spec, specs):
                after = kernels.count_cost(v.module, v.inp)
                rel_err = None
                if v.comparable:
                    with torch.inference_mode():
                        got = v.module(v.inp)
                    rel_err = float((got - expected).norm() / expected.norm().clamp_min(1e-12))

                def cand(m: nn.Module = v.module, a: torch.Tensor = v.inp) -> torch.Tensor:
                    return m(a)

                def ref(m: nn.Module = layer, a: torch.Tensor = inp) -> torch.Tensor:
                    return m(a)

                inner = _inner_for(ref, LAYER_ROUND_MS)
                t = kernels.time_callable(
                    cand,
                    ref,
                    repeats=settings.layer_repeats,
                    warmup=settings.warmup,
                    inner=inner,
                    threads=THREADS,
                )
                row = {
                    "level": "layer",
                    "model": model_id,
                    "name": f"{model_id} {name}",
                    "layer": name,
                    "role": role,
                    "technique": v.technique,
                    "variant": v.label,
                    "input_shape": list(inp.shape),
                    "macs_before": before.macs,
                    "macs_after": after.macs,
                    "mac_ratio": after.macs / before.macs,
                    "weight_bytes_before": before.weight_bytes,
                    "weight_bytes_after": after.weight_bytes,
                    "output_rel_error": rel_err,
                    **_timing_fields(t, inner),
                }
                rows.append(row)
                log(_row_line(row))
    return rows


# --------------------------------------------------------------------------------------------
# model level


@dataclass(frozen=True)
class ModelCase:
    """One whole-model row: a zoo model and a Plan built from its traced layers."""

    model_id: str
    technique: str
    variant: str
    plan: Callable[[list[LayerSpec]], Plan]


def _rank_plan(frac: float) -> Callable[[list[LayerSpec]], Plan]:
    def make(layers: list[LayerSpec]) -> Plan:
        return Plan(
            {
                s.name: Choice(rank=max(1, int(frac * s.full_rank + 0.5)))
                for s in layers
                if s.decomposable and s.full_rank > 0
            }
        )

    return make


def _uniform(choice: Choice) -> Callable[[list[LayerSpec]], Plan]:
    return lambda layers: Plan.uniform(layers, choice)


def _token_keep_at(blocks: tuple[str, ...], keep: float) -> Callable[[list[LayerSpec]], Plan]:
    return lambda layers: Plan({b: Choice(token_keep=keep) for b in blocks})


MODEL_CASES: tuple[ModelCase, ...] = (
    ModelCase("mobilenet-v2", "prune", "uniform keep 0.75", _uniform(Choice(keep=0.75))),
    ModelCase("mobilenet-v2", "low-rank", "rank 50% of full, every decomposable layer", _rank_plan(0.5)),
    ModelCase("mobilenet-v2", "low-rank", "rank 25% of full, every decomposable layer", _rank_plan(0.25)),
    ModelCase("mobilenet-v2", "int8", "W8A8, every layer", _uniform(Choice(wbits=8, abits=8))),
    ModelCase("minilm-l6", "int8", "int8 dynamic, every Linear", _uniform(Choice(wbits=8, abits=8))),
    ModelCase("minilm-l6", "prune", "FFN keep 0.5 (fc1 out / fc2 in)", _uniform(Choice(keep=0.5))),
    ModelCase("minilm-l6", "tokens", "token keep 0.5, every block", _uniform(Choice(token_keep=0.5))),
    ModelCase("minilm-l6", "tokens", "token keep 0.5, blocks.0 only", _token_keep_at(("blocks.0",), 0.5)),
    ModelCase("digits-vit", "tokens", "token keep 0.7, blocks.0 only", _token_keep_at(("blocks.0",), 0.7)),
)


def _tokens_seen(model: nn.Module, x: torch.Tensor) -> list[int]:
    """Tokens entering each AttentionBlock of ``model`` on ``x`` (empty for CNNs)."""
    seen: list[int] = []
    handles = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[1])))
        for m in model.modules()
        if isinstance(m, kernels.AttentionBlock)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def bench_models(settings: Settings, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Rows for every ``MODEL_CASES`` entry."""
    rows: list[dict[str, Any]] = []
    entries: dict[str, tuple[Prepared, Any]] = {}
    references: dict[str, Path] = {}
    for case in MODEL_CASES:
        if case.model_id not in entries:
            prepared = prepare(case.model_id)
            prepared.model.eval()
            base_quality = prepared.entry.evaluate(prepared.model) if settings.quality else None
            entries[case.model_id] = (prepared, base_quality)
        prepared, base_quality = entries[case.model_id]
        entry, original, x = prepared.entry, prepared.model, prepared.example_input
        plan = case.plan(prepared.layers)
        timed = prepared.apply(plan, execution="int8").eval()
        before = kernels.count_cost(original, x)
        after = kernels.count_cost(timed, x)
        inner = _inner_for(functools.partial(original, x), MODEL_ROUND_MS)
        t = kernels.time_model(
            timed,
            x,
            reference=original,
            repeats=settings.model_repeats,
            warmup=settings.warmup,
            inner=inner,
            threads=THREADS,
        )
        quality: dict[str, Any] | None = None
        if settings.quality:
            simulated = prepared.apply(plan, execution="simulate").eval()
            q = entry.evaluate(simulated)
            reference_value = base_quality.value if base_quality is not None else None
            quality = {
                "metric": q.metric,
                "value": q.value,
                "reference_value": reference_value,
                "extra": q.extra,
            }
            if case.technique == "int8":
                # The executed int8 model (torch's int8 kernels), not only the fake-quant simulation.
                quality["int8_executed_value"] = entry.evaluate(timed).value
        row = {
            "level": "model",
            "model": case.model_id,
            "name": case.model_id,
            "technique": case.technique,
            "variant": case.variant,
            "input_shape": list(x.shape),
            "plan_layers": len(plan.choices),
            "tokens_per_block": _tokens_seen(timed, x) or None,
            "macs_before": before.macs,
            "macs_after": after.macs,
            "mac_ratio": after.macs / before.macs,
            "weight_bytes_before": before.weight_bytes,
            "weight_bytes_after": after.weight_bytes,
            "quality": quality,
            **_timing_fields(t, inner),
        }
        if settings.onnxruntime:
            row["ort"] = _ort_row(prepared, plan, inner, settings, references)
        rows.append(row)
        log(_row_line(row))
    return rows


def _ort_row(
    prepared: Prepared, plan: Plan, inner: int, settings: Settings, references: dict[str, Path]
) -> dict[str, Any]:
    """The plan in ONNX Runtime: calibrated as a search judges it, exported, timed against the
    exported uncompressed model (one per model, kept in ``references``)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bench-ort-"))
    model_id = prepared.entry.model_id
    if model_id not in references:
        references[model_id] = folder / "reference.onnx"
        kernels.export_onnx(prepared.model, prepared.example_input, references[model_id])
    calibration = prepared.calibration
    batches = calibration.batches if calibration is not None else None
    compressed = prepared.apply(plan, calibrate=calibration is not None)
    start = time.perf_counter()
    report = kernels.export_onnx(
        compressed, prepared.example_input, folder / "plan.onnx", calibration=batches
    )
    export_s = time.perf_counter() - start
    t = kernels.time_onnx(
        folder / "plan.onnx",
        prepared.example_input,
        references[model_id],
        repeats=settings.model_repeats,
        warmup=settings.warmup,
        inner=inner,
    )
    return {
        **_timing_fields(t, inner),
        "export_s": round(export_s, 2),
        "int8_layers": len(report.int8_layers),
        "int8_agreement": report.int8_agreement,
        "int8_cosine": report.int8_cosine,
        "max_abs_error": report.max_abs_error,
        "calibrated": calibration is not None,
    }


# --------------------------------------------------------------------------------------------
# output


def _row_line(row: dict[str, Any]) -> str:
    q = row.get("quality")
    qs = f"  {q['metric']}={q['value']:.4f}" if q else ""
    ort = row.get("ort")
    os_ = (
        f"  ORT speed-up {ort['speedup']:.2f} ({ort['median_ms']:.3f}/{ort['reference_median_ms']:.3f} ms)"
        if ort
        else ""
    )
    return (
        f"[{row['level']}] {row['name']:<34} {row['variant']:<44} MACs×{row['mac_ratio']:.3f}  "
        f"speed-up {row['speedup']:.2f} ({row['speedup_p10']:.2f}-{row['speedup_p90']:.2f})  "
        f"{row['median_ms']:.3f}/{row['reference_median_ms']:.3f} ms{qs}{os_}"
    )


def runtime_table(result: dict[str, Any]) -> str:
    """Model rows in both runtimes side by side: torch eager against ONNX Runtime."""
    lines = [
        "| model | variant | MAC ratio | torch speed-up (p10–p90) | torch ms plan / dense "
        "| ONNX Runtime speed-up (p10–p90) | ORT ms plan / dense | ORT int8 layers (agreement, cosine) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        ort = row.get("ort")
        if row["level"] != "model" or not ort:
            continue
        int8 = str(ort["int8_layers"])
        if ort["int8_layers"]:
            int8 += f" ({ort['int8_agreement']:.3f}, {ort['int8_cosine']:.4f})"
        lines.append(
            f"| {row['name']} | {row['variant']} | {row['mac_ratio']:.2f} "
            f"| **{row['speedup']:.2f}** ({row['speedup_p10']:.2f}–{row['speedup_p90']:.2f}) "
            f"| {row['median_ms']:.3f} / {row['reference_median_ms']:.3f} "
            f"| **{ort['speedup']:.2f}** ({ort['speedup_p10']:.2f}–{ort['speedup_p90']:.2f}) "
            f"| {ort['median_ms']:.3f} / {ort['reference_median_ms']:.3f} | {int8} |"
        )
    return "\n".join(lines)


def _macs(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.0f}k"
    return str(n)


def _quality_cell(q: dict[str, Any] | None) -> str:
    if not q:
        return ""
    text = f"{q['metric']} {q['value']:.3f}"
    ref = q.get("reference_value")
    if ref is not None and abs(ref - 1.0) > 1e-6:
        text += f" (dense {ref:.3f})"
    if q.get("int8_executed_value") is not None:
        text += f" (int8 run: {q['int8_executed_value']:.3f})"
    return text


def markdown_table(result: dict[str, Any]) -> str:
    """The results as a markdown table (one row per measured variant)."""
    lines = [
        "| level | layer / model | input | variant | MACs before → after | MAC ratio | speed-up (p10–p90) "
        "| ms candidate / dense | quality (simulated) |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        where = row["name"] if row["level"] == "model" else f"{row['name']} ({row['role']})"
        shape = "×".join(str(d) for d in row["input_shape"])
        if row.get("tokens_per_block"):
            shape += " (tokens per block: " + ",".join(str(t) for t in row["tokens_per_block"]) + ")"
        lines.append(
            f"| {row['level']} | {where} | {shape} | {row['variant']} "
            f"| {_macs(row['macs_before'])} → {_macs(row['macs_after'])} | {row['mac_ratio']:.2f} "
            f"| **{row['speedup']:.2f}** ({row['speedup_p10']:.2f}–{row['speedup_p90']:.2f}) "
            f"| {row['median_ms']:.3f} / {row['reference_median_ms']:.3f} "
            f"| {_quality_cell(row.get('quality'))} |"
        )
    return "\n".join(lines)


def run(settings: Settings) -> dict[str, Any]:
    """Run every layer and model row; return the JSON-ready result."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    started = time.perf_counter()
    load_start = _load1()
    facts = machine_facts()
    print(
        f"bench/kernel_speed.py: torch {facts['torch']}, {THREADS} CPU thread "
        f"(torch.set_num_threads({THREADS})), "
        f"os.cpu_count()={facts['cpu_count']}, {facts['cpu_model'] or facts['processor']}, "
        f"load average (1 min) {load_start}",
        flush=True,
    )

    def log(line: str) -> None:
        print(line, flush=True)

    rows = ([] if settings.models_only else bench_layers(settings, log)) + bench_models(settings, log)
    wall = time.perf_counter() - started
    load_end = _load1()
    print(f"done in {wall:.0f} s; load average (1 min) {load_start} at start, {load_end} at end", flush=True)
    return {
        "benchmark": "bench/kernel_speed.py",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {**facts, "loadavg_1min_start": load_start, "loadavg_1min_end": load_end},
        "settings": {
            "threads": THREADS,
            "layer_repeats": settings.layer_repeats,
            "model_repeats": settings.model_repeats,
            "warmup": settings.warmup,
            "layer_round_ms": LAYER_ROUND_MS,
            "model_round_ms": MODEL_ROUND_MS,
            "quick": settings.quick,
            "quality": settings.quality,
            "timed_execution": "int8",
            "onnxruntime": settings.onnxruntime,
            "models_only": settings.models_only,
            "quality_execution": "simulate",
        },
        "wall_s": round(wall, 1),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats and no quality: a smoke test")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT}; none with --quick)"
    )
    parser.add_argument("--layer-repeats", type=int, default=None, help="rounds per layer row (default 60)")
    parser.add_argument("--model-repeats", type=int, default=None, help="rounds per model row (default 30)")
    parser.add_argument("--no-quality", action="store_true", help="skip the quality evaluation of model rows")
    parser.add_argument("--models-only", action="store_true", help="skip the layer rows")
    parser.add_argument("--no-onnxruntime", action="store_true", help="skip the ONNX Runtime columns")
    parser.add_argument(
        "--markdown", type=Path, metavar="JSON", help="print the table of a results file and exit"
    )
    args = parser.parse_args(argv)
    if args.markdown is not None:
        loaded = json.loads(args.markdown.read_text(encoding="utf-8"))
        print(markdown_table(loaded))
        print()
        print(runtime_table(loaded))
        return 0
    settings = Settings(
        layer_repeats=args.layer_repeats or (5 if args.quick else 60),
        model_repeats=args.model_repeats or (3 if args.quick else 30),
        warmup=1 if args.quick else 5,
        quality=not (args.quick or args.no_quality),
        quick=args.quick,
        models_only=args.models_only,
        onnxruntime=not args.no_onnxruntime,
    )
    result = run(settings)
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    print()
    print(markdown_table(result))
    print()
    print(runtime_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
