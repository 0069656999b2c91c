"""apply(model, plan, example_input): the one verb that compresses a model."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from search_spaces import LayerKind, LayerSpec, Plan, SpaceError

from ._attention import is_token_block
from ._calibrate import recalibrate_batchnorm
from ._lowrank import calibrate_low_rank, full_rank, low_rank
from ._prune import prune_channels
from ._quant import quantize, quantize_calibrated, to_int8_dynamic
from ._tokens import add_token_pruning
from ._trace import trace

Execution = Literal["simulate", "int8"]


@dataclass
class CalibrationReport:
    """What a calibrated ``apply`` did: the steps it ran (one line each), what it had to
    regularise, skip or fall back on (``notes``), on how many inputs, and how long it took."""

    n_inputs: int = 0
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "n_inputs": self.n_inputs,
            "seconds": round(self.seconds, 4),
            "steps": list(self.steps),
            "notes": list(self.notes),
        }


def _n_inputs(batches: Sequence[torch.Tensor]) -> int:
    return sum(int(b.shape[0]) if b.dim() > 0 else 1 for b in batches)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply(
    model: nn.Module,
    plan: Plan,
    example_input: torch.Tensor,
    *,
    execution: Execution = "simulate",
    ignore: tuple[str, ...] = (),
    calibration: Sequence[torch.Tensor] | None = None,
    report: CalibrationReport | None = None,
) -> nn.Module:
    """Return a compressed copy of ``model``; the original is left untouched.

    Order: channel pruning (on the original structure, coupled groups together), then
    low-rank factorisation (a rank above the pruned layer's full rank is clamped to it), then
    quantization, then token pruning. ``execution="simulate"`` fake-quantizes every layer at its
    bits (for quality). ``"int8"`` builds what a CPU deployment runs (for measured speed):
    Linear layers with ``wbits == 8`` on torch's real int8 kernels, every other layer in
    float32, since no real low-bit kernel exists for it here and fake-quant would only add
    simulation overhead. The plan is validated
    against the traced inventory first; an invalid plan raises SpaceError and builds nothing.

    ``calibration``: batches of real model inputs (a calibration split, never the data the
    result is scored on). With them every knob is calibrated (docs/calibration.md):
    channels are ranked by what they contribute on those inputs and the mean of what is removed
    is put back (``prune_channels``), BatchNorm statistics are re-estimated after pruning
    (adaptive BN), low-rank factors minimise each layer's output error against the uncompressed
    layer's output, sequentially (``calibrate_low_rank``), and quantisation folds BatchNorm,
    picks MSE weight scales and static activation ranges and corrects the bias
    (``quantize_calibrated``; simulate only). ``report`` receives the steps, notes and time.
    """
    if execution not in ("simulate", "int8"):
        raise SpaceError("execution", execution, "one of 'simulate', 'int8' is required")
    layers = trace(model, example_input, ignore=ignore)
    plan.validate(layers)
    by_name = {layer.name: layer for layer in layers}

    out = copy.deepcopy(model)
    out.eval()
    if calibration is not None:
        batches = list(calibration)
        if not batches:
            raise SpaceError("calibration", "[]", "give at least one batch of real model inputs, or None")
        return _apply_calibrated(out, plan, example_input, by_name, batches, execution, report)
    keep = {n: c.keep for n, c in plan.choices.items() if c.keep < 1.0}
    if keep:
        prune_channels(out, example_input, keep)

    modules = dict(out.named_modules())
    for name, choice in plan.choices.items():
        spec = by_name[name]
        if spec.kind is LayerKind.ATTENTION:
            block = modules[name]
            if is_token_block(block):
                add_token_pruning(block, choice.token_keep)
            continue
        layer = modules[name]
        new: nn.Module = layer
        if choice.rank is not None:
            new = low_rank(layer, min(choice.rank, full_rank(layer)))
        if execution == "int8":
            if spec.kind is LayerKind.LINEAR and choice.wbits == 8:
                new = to_int8_dynamic(new)
        else:
            new = quantize(new, choice.wbits, choice.abits)
        if new is not layer:
            _set_module(out, name, new)
    return out


def _apply_calibrated(
    out: nn.Module,
    plan: Plan,
    example_input: torch.Tensor,
    by_name: dict[str, LayerSpec],
    batches: list[torch.Tensor],
    execution: Execution,
    report: CalibrationReport | None,
) -> nn.Module:
    """The calibrated order: prune → adaptive BN → low rank (sequential) → quantise → tokens.

    BatchNorm is re-estimated only after pruning changed what feeds it: the trained statistics
    of an unpruned model are better than any estimate from a few hundred inputs, and the
    sequential low-rank fit already matches the uncompressed layers' outputs (re-estimating on
    top of it undoes part of that). Quantisation comes last among the weights because it folds
    BatchNorm into the convolutions, so the statistics must be final by then."""
    start = time.perf_counter()
    rep = report if report is not None else CalibrationReport()
    rep.n_inputs = _n_inputs(batches)
    keep = {n: c.keep for n, c in plan.choices.items() if c.keep < 1.0}
    if keep:
        prune_channels(out, example_input, keep, calibration=batches, notes=rep.notes)
        rep.steps.append(f"pruning: activation importance and mean compensation on {rep.n_inputs} inputs")
        n_bn = recalibrate_batchnorm(out, batches)
        if n_bn:
            rep.steps.append(f"batchnorm: {n_bn} layers re-estimated after pruning")
        else:
            rep.notes.append("batchnorm: the model has no BatchNorm to re-estimate (skipped)")
    modules = dict(out.named_modules())
    ranks = {
        n: min(int(c.rank), full_rank(modules[n]))
        for n, c in plan.choices.items()
        if c.rank is not None and by_name[n].kind is not LayerKind.ATTENTION
    }
    if ranks:
        reference = copy.deepcopy(out)
        calibrate_low_rank(out, ranks, batches, reference=reference, notes=rep.notes)
        del reference
        rep.steps.append(
            f"low rank: {len(ranks)} layers fitted to the uncompressed outputs (whitened, sequential)"
        )
    modules = dict(out.named_modules())
    bits = {
        n: (c.wbits, c.abits)
        for n, c in plan.choices.items()
        if by_name[n].kind is not LayerKind.ATTENTION and (c.wbits < 32 or c.abits < 32)
    }
    if execution == "int8":
        for n, c in plan.choices.items():
            if by_name[n].kind is LayerKind.LINEAR and c.wbits == 8:
                _set_module(out, n, to_int8_dynamic(modules[n]))
    elif bits:
        quant = quantize_calibrated(out, bits, batches, example_input)
        rep.notes.extend(quant.notes)
        folded = f", {len(quant.folded)} BatchNorms folded" if quant.folded else ""
        rep.steps.append(
            f"quantisation: {len(quant.layers)} layers with MSE weight scales, static activation "
            f"ranges and bias correction{folded}"
        )
    modules = dict(out.named_modules())
    for name, choice in plan.choices.items():
        if by_name[name].kind is LayerKind.ATTENTION and is_token_block(modules[name]):
            add_token_pruning(modules[name], choice.token_keep)
    rep.seconds = time.perf_counter() - start
    return out
