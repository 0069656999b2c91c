"""apply(model, plan, example_input): the one verb that compresses a model."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from search_spaces import LayerKind, Plan, SpaceError

from ._attention import is_token_block
from ._lowrank import full_rank, low_rank
from ._prune import prune_channels
from ._quant import quantize, to_int8_dynamic
from ._tokens import add_token_pruning
from ._trace import trace

Execution = Literal["simulate", "int8"]


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
    """
    if execution not in ("simulate", "int8"):
        raise SpaceError("execution", execution, "one of 'simulate', 'int8' is required")
    layers = trace(model, example_input, ignore=ignore)
    plan.validate(layers)
    by_name = {layer.name: layer for layer in layers}

    out = copy.deepcopy(model)
    out.eval()
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
