"""Exact params, MACs and weight bytes of a (compressed) model, counted in a real forward pass.

MACs count multiply-accumulates of convolutions, linear layers (float, fake-quant or int8) and
the two attention matmuls; they equal half of torch.utils.flop_counter's FLOPs for float
models (the tests check this).

Params and weight bytes follow the one accounting of hwsearch (docs/latency.md, "What weight
bytes count"), the same as ``search_spaces.plan_cost`` computes from the inventory: the conv
and linear layers, the layers a plan compresses. A weight below 16 bits is stored at its bit
width plus one float32 scale per output channel (per-channel quantization), a 16-bit weight at
16 bits, everything else (biases, float weights) at 32 bits. Parameters outside conv and linear
layers (BatchNorm and LayerNorm affine parameters, embedding tables, position and CLS
parameters) are not part of it; ``model_params`` and ``other_bytes`` report them apart. Buffers
(BN running statistics) are not parameters and are counted nowhere.
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
    """The cost of a model in hwsearch's one accounting (what ``search_spaces.plan_cost``
    computes from the inventory without building the model), plus the rest of its parameters.

    ``params`` / ``weight_bytes``: parameters and bytes of the conv and linear layers.
    ``model_params``: every parameter of the model (torch's count). ``other_bytes``: the float32
    bytes of the parameters outside conv and linear layers (norms, embeddings, position/CLS).
    """

    params: int
    macs: int
    weight_bytes: int
    model_params: int
    other_bytes: int


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
        params=layer_params,
        macs=macs,
        weight_bytes=(layer_bits + 7) // 8,
        model_params=params,
        other_bytes=(weight_bits - layer_bits + 7) // 8,
    )
