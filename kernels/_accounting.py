"""Exact params, MACs and weight bytes of a (compressed) model, counted in a real forward pass.

MACs count multiply-accumulates of convolutions, linear layers (float, fake-quant or int8) and
the two attention matmuls; they equal half of torch.utils.flop_counter's FLOPs for float
models (the tests check this). Weight bytes store every parameter at 32 bits except the
weights of quantized layers, stored at their bit width plus one float32 scale per output
channel (per-channel quantization; 16-bit weights need no scale). Buffers (BN running
statistics) are not weights and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._attention import SelfAttention
from ._quant import QuantizedLayer, is_dynamic_int8


@dataclass(frozen=True)
class Cost:
    """Whole-model counts, plus the part in conv/linear layers (what ``search_spaces.plan_cost``
    computes from the inventory without building the model)."""

    params: int
    macs: int
    weight_bytes: int
    layer_params: int
    layer_weight_bytes: int


def _dynamic_weight(module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight, bias = module._packed_params._weight_bias()
    return weight, bias


def count_cost(model: nn.Module, example_input: torch.Tensor) -> Cost:
    """Count params, MACs (one forward on ``example_input``) and weight bytes of ``model``."""
    macs = 0
    handles = []

    def on_gemm(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:  # Linear, float or int8
            macs += (output.numel() // module.out_features) * module.in_features * module.out_features

    def on_attention(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        nonlocal macs
        b, n, d = args[0].shape
        macs += 2 * b * n * n * d

    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear) or is_dynamic_int8(module):
            handles.append(module.register_forward_hook(on_gemm))
        elif isinstance(module, SelfAttention):
            handles.append(module.register_forward_hook(on_attention))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()

    params = layer_params = 0
    weight_bits = layer_bits = 0
    quantized_weights: dict[int, int] = {}
    in_layers: set[int] = set()
    for module in model.modules():
        if isinstance(module, QuantizedLayer):
            quantized_weights[id(module.inner.weight)] = module.wbits
        elif isinstance(module, nn.Conv2d | nn.Linear):
            in_layers.update(id(p) for p in module.parameters(recurse=False))
        elif is_dynamic_int8(module):
            w, b = _dynamic_weight(module)
            n = w.numel() + (b.numel() if b is not None else 0)
            bits = w.numel() * 8 + w.shape[0] * 32 + (b.numel() * 32 if b is not None else 0)
            params, layer_params = params + n, layer_params + n
            weight_bits, layer_bits = weight_bits + bits, layer_bits + bits
    for p in model.parameters():
        wbits = quantized_weights.get(id(p), 32)
        bits = p.numel() * wbits + (p.shape[0] * 32 if wbits < 16 else 0)
        params += p.numel()
        weight_bits += bits
        if id(p) in in_layers:
            layer_params += p.numel()
            layer_bits += bits
    return Cost(
        params=params,
        macs=macs,
        weight_bytes=(weight_bits + 7) // 8,
        layer_params=layer_params,
        layer_weight_bytes=(layer_bits + 7) // 8,
    )
