"""Profiling this machine: measure the host CPU's specs and time compressed zoo models for real.

Two runtimes, two targets (``latency_models.HOST_TARGETS``): ``host-cpu`` is this CPU running torch eager, and
``host-cpu-ort`` the same CPU running the exported ONNX model in ONNX Runtime. A plan's
speed-up differs between them (int8 convolutions exist only in ONNX Runtime here; torch eager
has int8 Linear only), so each has its own measurements and its own predictor.

``measure_host_target`` times a large float32 GEMM, an int8 GEMM, a large copy and a tiny op in
the runtime, and turns them into the Target (every number says it was measured, when and how).
``profile_networks`` samples plans (low-rank, pruned, int8, token-pruned) of zoo models, builds
them as a CPU deployment runs them (torch: ``execution="int8"``; ONNX Runtime: the calibrated
model exported by ``kernels.export_onnx``, int8 layers as QDQ) and times them against the
uncompressed model in the same loop; the rows are a per-network measurement table that
``workers.calibration.fit`` turns into the target's predictor.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernels import probe_torch_runtime, time_model
from latency_models import (
    HOST_TARGETS,
    RUNTIMES,
    Catalogue,
    LatencyModelError,
    Target,
    catalogue,
    measure_runtime_target,
    runtime_target,
)
from search_spaces import Plan, Space

HOST = "host-cpu"
HOST_ORT = "host-cpu-ort"
#: This machine's target per runtime (``latency_models.HOST_TARGETS`` turned around).
HOST_BY_RUNTIME: dict[str, str] = {runtime: name for name, runtime in HOST_TARGETS.items()}


def host_target_name(runtime: str) -> str:
    """The target that is this CPU running ``runtime``; an unknown runtime is an input error."""
    if runtime not in HOST_BY_RUNTIME:
        raise LatencyModelError("runtime", runtime, f"one of {list(RUNTIMES)} is required")
    return HOST_BY_RUNTIME[runtime]


def measure_host_target(repeats: int = 7, runtime: str = "torch") -> Target:
    """The host CPU as a Target, from micro-benchmarks on one thread (the profiling setting), in
    ``runtime``: ``host-cpu`` for torch, ``host-cpu-ort`` for ONNX Runtime."""
    if host_target_name(runtime) == HOST_ORT:
        return _measure_ort_target(repeats)
    probe = probe_torch_runtime(threads=1, repeats=repeats)
    when = time.strftime("%Y-%m-%d", time.gmtime())
    how = f"measured by workers.profiling on {when}, torch {torch.__version__}, 1 thread, median of {repeats}"
    n = probe["n"]
    return runtime_target(
        HOST,
        probe,
        runtime="torch",
        description="this machine's CPU, one thread, measured",
        sources={
            "peak_macs_per_s": f"{n}×{n}×{n} float32 matmul and int8 dynamic Linear, {how}",
            "memory_bandwidth_gb_s": f"32 MB tensor clone (read + write), {how}",
            "dispatch_overhead_ms": f"one 8-element add, {how}",
        },
    )


def _measure_ort_target(repeats: int) -> Target:
    """``host-cpu-ort``: the runtime micro-benchmarks a device agent runs too
    (``latency_models.measure_runtime_target``), here on this CPU."""
    return measure_runtime_target(
        HOST_ORT,
        repeats=repeats,
        description="this machine's CPU running ONNX Runtime, one thread, measured",
        measured_by="workers.profiling",
    )


@dataclass(frozen=True)
class Measured:
    """One timed plan. ``latency_ms`` is the drift-corrected latency (see ``profile_networks``);
    ``raw_ms`` the plan's own median and ``reference_ms`` the uncompressed model's median in
    the same rounds."""

    model: str
    plan_json: str
    latency_ms: float
    reference_ms: float
    speedup: float
    raw_ms: float = 0.0


#: The knobs profile_networks samples by default: every kind of compression a CPU runs faster.
PROFILE_SPACE: dict[str, tuple[float, ...]] = {
    "rank_fractions": (0.125, 0.25, 0.5),
    "keep": (0.25, 0.5, 0.75),
    "wbits": (8,),
    "abits": (8,),
    "token_keep": (0.5, 0.7),
}


def profile_networks(
    models: Sequence[str],
    plans_per_model: int,
    *,
    seed: int = 0,
    repeats: int = 15,
    space: Mapping[str, tuple[float, ...]] | None = None,
    runtime: str = "torch",
) -> list[Measured]:
    """Time ``plans_per_model`` sampled plans of each zoo model (batch 1, one thread) in
    ``runtime``: torch eager (``execution="int8"``), or ONNX Runtime (each plan calibrated and
    exported by ``kernels.export_onnx``, timed against the exported uncompressed model).

    Every plan runs interleaved with the uncompressed model, and its latency is reported as
    the median of all that model's reference timings divided by the plan's per-round speed-up.
    On a shared machine the load drifts between plans (the uncompressed digits-cnn measured
    0.29-0.35 ms across one run); the per-round ratio cancels the drift, and a held-out
    split's MAPE of a fitted host-cpu predictor fell from 18% to 9% with it (docs/latency.md).
    ``space`` names the knobs sampled (``Space.build`` keyword arguments; default
    ``PROFILE_SPACE``): a narrower one builds faster (low-rank factorisation of a transformer
    is the slow part).
    """
    from workers.zoo import prepare

    host_target_name(runtime)  # an unknown runtime fails before anything is built
    rng = np.random.default_rng(seed)
    out: list[Measured] = []
    for model_id in models:
        prepared = prepare(model_id)
        entry, net, x = prepared.entry, prepared.model, prepared.example_input
        knobs: dict[str, Any] = dict(PROFILE_SPACE if space is None else space)
        sampled = Space.build(prepared.layers, **knobs)
        first = len(out)
        timer = _OrtTimer(prepared) if runtime == "onnxruntime" else None
        for i in range(plans_per_model):
            plan = sampled.sample(rng) if i else Plan()  # the first row: the uncompressed model
            if timer is not None:
                timing = timer.time(plan, repeats)
            else:
                deployed = prepared.apply(plan, execution="int8")
                timing = time_model(deployed, x, reference=net, repeats=repeats, warmup=3, threads=1)
            out.append(
                Measured(
                    entry.model_id,
                    json.dumps(plan.to_dict()),
                    timing.median_ms,
                    timing.reference_median_ms or 0.0,
                    timing.speedup or 0.0,
                    timing.median_ms,
                )
            )
        ref_ms = float(np.median([m.reference_ms for m in out[first:]]))
        out[first:] = [
            replace(m, latency_ms=ref_ms / m.speedup if m.speedup > 0 else m.raw_ms) for m in out[first:]
        ]
    return out


class _OrtTimer:
    """Plans of one model timed in ONNX Runtime against the exported uncompressed model."""

    def __init__(self, prepared: Any) -> None:
        import tempfile

        self.prepared = prepared
        self._dir = tempfile.TemporaryDirectory(prefix="hwsearch-ort-")
        self.reference = Path(self._dir.name) / "reference.onnx"
        prepared.export_for("onnxruntime", None, self.reference)

    def time(self, plan: Plan, repeats: int) -> Any:
        from kernels import time_onnx

        path = Path(self._dir.name) / "plan.onnx"
        self.prepared.export_onnx(plan, path)
        return time_onnx(path, self.prepared.example_input, self.reference, repeats=repeats, warmup=3)


def write_csv(rows: Iterable[Measured], path: str | Path) -> Path:
    """Write rows in the per-network measurement format (model, plan, batch, latency_ms)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "plan", "batch", "latency_ms"])
        for row in rows:
            writer.writerow([row.model, row.plan_json, 1, f"{row.latency_ms:.6f}"])
    return p


def calibrate_host(
    models: Sequence[str],
    plans_per_model: int,
    *,
    repeats: int = 15,
    out: str | Path | None = None,
    cat: Catalogue | None = None,
    space: Mapping[str, tuple[float, ...]] | None = None,
    runtime: str = "torch",
) -> dict[str, object]:
    """Measure this CPU in ``runtime`` (the host-cpu target for torch, host-cpu-ort for ONNX
    Runtime), time compressed ``models`` on it and fit that target's predictor from them into
    ``cat`` (default: the data dir's catalogue); returns the fit's report with ``measurements``
    (the CSV written, under the catalogue's folder by default).

    What ``hwsearch latency profile-host`` and ``hwsearch serve --demo`` run, so the demo's
    host-cpu costs are learned from this machine's timings rather than the analytic prior.
    """
    from workers.calibration import fit

    name = host_target_name(runtime)
    cat = cat or catalogue()
    target = cat.add_target(measure_host_target(runtime=runtime))
    rows = profile_networks(models, plans_per_model, repeats=repeats, space=space, runtime=runtime)
    path = write_csv(rows, out or cat.root / "measurements" / f"{name}-{int(time.time())}.csv")
    report: dict[str, object] = fit(target.name, path, cat=cat)
    report["measurements"] = str(path)
    report["n_networks_timed"] = len(rows)
    timed = [r.latency_ms for r in rows]
    report["timed_span"] = max(timed) / min(timed) if timed and min(timed) > 0 else None
    return report


def designed_plans(
    space: Space, n: int, rng: np.random.Generator, values: Mapping[str, tuple[float, ...]] | None = None
) -> list[Plan]:
    """A designed measurement set of ``n`` plans of one model (issue 19): the uncompressed model,
    uniform plans across the range of each knob (every layer at rank 12.5/25/50%, keep
    25/50/75%, W8A8, token keep 50/70%: ``values``, default ``PROFILE_SPACE``), taking at most
    half of the rest with the knobs interleaved so that a small set still covers each one, then
    space-filling mixed plans: each the farthest, in ``Space.features``, from every plan chosen
    so far among 32 random candidates (greedy maximin). Distinct plans; fewer than ``n`` only
    when the space has fewer."""
    values = dict(PROFILE_SPACE if values is None else values)
    per_knob: list[list[Plan]] = [
        [space.nearest_uniform({"rank": v}) for v in sorted(values.get("rank_fractions", ()))[::-1]],
        [space.nearest_uniform({"keep": v}) for v in sorted(values.get("keep", ()))[::-1]],
        [space.nearest_uniform({"wbits": b, "abits": b}) for b in sorted(values.get("wbits", ()))[::-1]],
        [space.nearest_uniform({"token_keep": v}) for v in sorted(values.get("token_keep", ()))[::-1]],
    ]
    chosen: dict[Plan, None] = {Plan(): None}
    uniform_slots = (n - 1) // 2
    for i in range(max((len(k) for k in per_knob), default=0)):  # the knobs interleaved
        for plans in per_knob:
            if i < len(plans) and len(chosen) < 1 + uniform_slots:
                chosen.setdefault(plans[i])
    features = [space.features(p) for p in chosen]
    misses = 0
    while len(chosen) < n and misses < 8:
        candidates = [c for c in (space.sample(rng) for _ in range(32)) if c not in chosen]
        if not candidates:
            misses += 1  # a small space: every sample is taken already
            continue
        dist = [min(float(np.abs(space.features(c) - f).sum()) for f in features) for c in candidates]
        best = candidates[int(np.argmax(dist))]
        chosen.setdefault(best)
        features.append(space.features(best))
    return list(chosen)[:n]


def _suffix(runtime: str) -> str:
    """The file a device agent running ``runtime`` times: ONNX, or TorchScript for torch."""
    if runtime not in RUNTIMES:
        raise LatencyModelError("runtime", runtime, f"one of {list(RUNTIMES)} is required")
    return ".pt" if runtime == "torch" else ".onnx"


def prepare_device_tasks(
    models: Sequence[str],
    plans_per_model: int,
    out_dir: str | Path,
    *,
    root: str | Path,
    seed: int = 0,
    space: Mapping[str, tuple[float, ...]] | None = None,
    runtime: str = "onnxruntime",
) -> list[dict[str, Any]]:
    """The measurement tasks of a profile (issue 19): per model, ``plans_per_model`` plans of
    ``designed_plans`` (the uncompressed model first, uniform plans across each knob's range,
    space-filling mixed plans; knobs of ``PROFILE_SPACE``), each calibrated where the model has
    calibration data and exported for the agents' ``runtime`` (``Prepared.export_for``: ONNX with
    int8 layers as QDQ, or TorchScript), with the uncompressed model's file as every task's
    reference and the example input as ``.npy``.

    Files go under ``out_dir``; each task names them relative to ``root`` (the data dir), as the
    service serves them to the agent holding the task."""
    from workers.zoo import prepare

    suffix = _suffix(runtime)
    out = Path(out_dir)
    base = Path(root)
    rng = np.random.default_rng(seed)
    tasks: list[dict[str, Any]] = []
    for k, model_id in enumerate(models):
        prepared = prepare(model_id)
        x = prepared.example_input
        folder = out / f"m{k}"
        folder.mkdir(parents=True, exist_ok=True)
        reference = folder / f"reference{suffix}"
        prepared.export_for(runtime, None, reference)
        np.save(folder / "input.npy", x.numpy())
        knobs: dict[str, Any] = dict(PROFILE_SPACE if space is None else space)
        sampled = Space.build(prepared.layers, **knobs)
        for i, plan in enumerate(designed_plans(sampled, plans_per_model, rng, knobs)):
            path = folder / f"plan-{i}{suffix}"
            if i == 0:
                path.write_bytes(reference.read_bytes())
            else:
                prepared.export_for(runtime, plan, path)
            tasks.append(
                {
                    "model": prepared.entry.model_id,
                    "plan": plan.to_dict(),
                    "batch": int(x.shape[0]),
                    "runtime": runtime,
                    "files": {
                        "model": str(path.relative_to(base)),
                        "reference": str(reference.relative_to(base)),
                        "input": str((folder / "input.npy").relative_to(base)),
                    },
                }
            )
    return tasks


def prepare_front_tasks(
    job_spec: Mapping[str, Any],
    trials: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    root: str | Path,
    runtime: str = "onnxruntime",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measurement tasks that re-measure a job's front plans on a device (issue 19): the job's
    model built as the job built it (its source, weights and data), each plan calibrated as the
    job judged it and exported for the agents' ``runtime`` (``Prepared.export_for``), against the
    exported uncompressed model.

    Returns ``(tasks, skipped)``: a plan that fails to export is skipped with the reason (the
    others are still measured), as ``{"trial", "error"}``."""
    from workers.search import JobSpec
    from workers.search._entry import job_entry
    from workers.zoo import prepare

    out = Path(out_dir)
    base = Path(root)
    spec = JobSpec.model_validate(dict(job_spec))
    prepared = prepare(job_entry(spec, data_dir=base))
    x = prepared.example_input
    out.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(runtime)
    reference = out / f"reference{suffix}"
    prepared.export_for(runtime, None, reference)
    np.save(out / "input.npy", x.numpy())
    tasks: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for trial in trials:
        number = int(trial["number"])
        plan = Plan.from_dict(trial["plan"])
        path = out / f"trial-{number}{suffix}"
        try:
            prepared.export_for(runtime, plan, path, calibrate=spec.recovery.calibrate)
        except Exception as exc:  # one plan that does not export must not stop the rest
            skipped.append({"trial": number, "error": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        tasks.append(
            {
                "model": prepared.entry.model_id,
                "plan": plan.to_dict(),
                "batch": int(x.shape[0]),
                "runtime": runtime,
                "job_id": str(trial.get("job_id") or ""),
                "trial": number,
                "files": {
                    "model": str(path.relative_to(base)),
                    "reference": str(reference.relative_to(base)),
                    "input": str((out / "input.npy").relative_to(base)),
                },
            }
        )
    return tasks, skipped
