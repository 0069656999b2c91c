"""What a model keeps as it is, and why: the other half of the layer inventory.

``trace`` lists the layers hwsearch can cost and compress. A user's model may hold more: an
LSTM, an embedding table, a custom operator with its own parameters, or a listed layer that
offers no knob (ignored, an output layer, a grouped convolution). Those are kept unchanged, never
an error; ``kept_layers`` names each with the reason, so ``inspect`` can show it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from search_spaces import LayerKind, LayerSpec

from ._attention import is_token_block

__all__ = ["kept_layers"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def kept_layers(
    model: nn.Module, layers: Iterable[LayerSpec], ignore: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """``[{"name", "type", "params", "reason"}]`` for every module with parameters of its own
    that no plan changes, and every listed layer without a knob, in module order."""
    listed = {layer.name: layer for layer in layers}
    ignored = set(ignore)
    blocks = [name for name, m in model.named_modules() if name and is_token_block(m)]
    kept: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        if not name:
            continue
        own = sum(p.numel() for p in module.parameters(recurse=False))
        layer = listed.get(name)
        reason: str | None = None
        if layer is not None:
            reason = _why_fixed(layer, name in ignored)
        elif own and not isinstance(module, _NORMS):
            inside = next((b for b in blocks if name.startswith(b + ".")), None)
            if isinstance(module, nn.Conv2d | nn.Linear):
                reason = "did not run on the example input (its shapes are unknown)"
            elif inside is not None:
                reason = f"parameters of transformer block {inside!r} outside its layers (kept)"
            else:
                reason = (
                    f"{type(module).__name__} is not an operator hwsearch compresses (Conv2d, Linear, "
                    "attention blocks); it runs unchanged"
                )
        if reason is not None:
            kept.append({"name": name, "type": type(module).__name__, "params": own, "reason": reason})
    return kept


def _why_fixed(layer: LayerSpec, ignored: bool) -> str | None:
    """Why a listed layer is limited (None when every knob of its kind applies)."""
    if ignored:
        return "ignored by its model source (ignore_layers): never compressed"
    if layer.kind is LayerKind.GROUPED_CONV2D:
        return "grouped convolution: its channels cannot be pruned or factorised separately; quantised only"
    return None
