"""What a model keeps as it is, and why: the other half of the layer inventory.

``trace`` lists the layers hwsearch can cost and compress. A user's model may hold more: an
LSTM, an embedding table, torch's ``nn.MultiheadAttention``, a custom module with parameters of
its own, or a listed layer that offers fewer knobs (ignored by its source, a grouped
convolution). Those are kept unchanged, never an error; ``kept_layers`` names each with the
reason, so ``inspect`` can show it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from search_spaces import LayerKind, LayerSpec

__all__ = ["kept_layers"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _untraced_reason(module: nn.Module) -> str:
    """Why hwsearch keeps a module with weights that is not in the layer inventory."""
    kind = type(module).__name__
    if isinstance(module, _NORMS) or kind.endswith("Norm"):
        return "normalisation layer: not compressed, kept in float32"
    if isinstance(module, nn.MultiheadAttention):
        return (
            "torch's nn.MultiheadAttention uses its weights directly, so its projections cannot be "
            "replaced: kept as it is (attention with nn.Linear projections can be compressed)"
        )
    if isinstance(module, nn.Conv2d | nn.Linear):
        return (
            "not called as a module on the example input (unused, or its weight is used directly), "
            "so it is not in the inventory: kept as it is"
        )
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return "embedding table: hwsearch has no compressed operator for it, kept in float32"
    if isinstance(module, nn.RNNBase):
        return "recurrent layer: hwsearch has no compressed operator for it, kept as it is"
    if any(True for _ in module.children()):
        return (
            f"parameters held by {kind} itself (e.g. position embeddings, a class token), not by a "
            "layer hwsearch compresses: kept in float32"
        )
    return f"{kind}: hwsearch compresses Conv2d and Linear layers and attention blocks only; kept as it is"


def kept_layers(
    model: nn.Module, layers: Iterable[LayerSpec], ignore: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """``[{"name", "type", "params", "reason"}]``, in module order, for every module holding
    parameters of its own outside the inventory (kept as it is), every layer ``ignore`` names,
    and every grouped convolution (no low-rank or pruning operator)."""
    traced = {layer.name: layer for layer in layers}
    ignored = set(ignore)
    rows: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        params = sum(p.numel() for p in module.parameters(recurse=False))
        layer = traced.get(name)
        reason = None
        if layer is not None:
            if name in ignored:
                reason = "named by the model's ignore_layers: never pruned or factorised"
            elif layer.kind is LayerKind.GROUPED_CONV2D:
                reason = f"grouped convolution (groups={layer.groups}): no low-rank or pruning operator"
        elif params:
            reason = _untraced_reason(module)
        if reason is not None:
            rows.append(
                {"name": name or "(model)", "type": type(module).__name__, "params": params, "reason": reason}
            )
    return rows
