"""Quantization: fake-quant for quality at any bit width, and real int8 Linear execution on CPU.

Fake-quant (simulated) scheme:
- weights: per-output-channel symmetric, ``q = clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1)``
  with ``s = max|w_c| / (2^(b-1) - 1)``; quantized once, when the plan is applied;
- input activations: per-tensor affine (min/max of the tensor seen, ``2^b`` levels), on every
  forward; dynamic, so no calibration pass is needed and batch size 1 behaves like deployment;
- 16 bits means a float16 round trip, 32 bits means untouched.

Real execution: ``to_int8_dynamic`` turns Linear layers into torch's dynamically quantized
int8 Linear (per-channel weights, activations quantized per tensor at run time), so int8
speed on CPU can be measured rather than only predicted. Convolutions have no such path here.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def fake_quant_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric fake-quantization of a weight tensor."""
    if bits >= 32:
        return weight
    if bits == 16:
        return weight.half().to(weight.dtype)
    qmax = 2 ** (bits - 1) - 1
    flat = weight.reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / qmax
    q = torch.clamp(torch.round(flat / scale[:, None]), -qmax, qmax)
    return (q * scale[:, None]).reshape(weight.shape)


def fake_quant_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor affine fake-quantization from the tensor's own min and max."""
    if bits >= 32:
        return x
    if bits == 16:
        return x.half().to(x.dtype)
    levels = 2**bits - 1
    lo = torch.clamp(x.min(), max=0.0)  # keep 0 exactly representable (ReLU outputs, padding)
    hi = torch.clamp(x.max(), min=0.0)
    scale = torch.clamp((hi - lo) / levels, min=1e-12)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    return (q - zero) * scale


class QuantizedLayer(nn.Module):
    """A Linear or Conv2d whose weights are stored fake-quantized at ``wbits`` and whose input
    is fake-quantized at ``abits`` on every call."""

    def __init__(self, inner: nn.Module, wbits: int, abits: int) -> None:
        super().__init__()
        if not isinstance(inner, nn.Linear | nn.Conv2d):
            raise TypeError(f"quantization supports nn.Linear and nn.Conv2d, got {type(inner).__name__}")
        self.inner = inner
        self.wbits = wbits
        self.abits = abits
        with torch.no_grad():
            inner.weight.copy_(fake_quant_weight(inner.weight, wbits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(fake_quant_activation(x, self.abits))

    def extra_repr(self) -> str:
        return f"wbits={self.wbits}, abits={self.abits}"


def quantize(layer: nn.Module, wbits: int, abits: int) -> nn.Module:
    """Fake-quantize a Linear/Conv2d, or each factor of a low-rank operator."""
    if wbits >= 32 and abits >= 32:
        return layer
    if isinstance(layer, nn.Sequential):
        # Low-rank operator: each factor, so the activation feeding the second is quantized too.
        for i, child in enumerate(layer):
            layer[i] = quantize(child, wbits, abits)
        return layer
    return QuantizedLayer(layer, wbits, abits)


def _dynamic_linear(layer: nn.Linear) -> nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, but it is the int8 CPU
        # path that ships with torch 2.13 and needs no extra package.
        warnings.simplefilter("ignore")
        wrapped = quantize_dynamic(nn.Sequential(layer), {nn.Linear: per_channel_dynamic_qconfig})
    return wrapped[0]


def to_int8_dynamic(layer: nn.Module) -> nn.Module:
    """Real int8 execution of a Linear (or each Linear factor of a low-rank Linear)."""
    if isinstance(layer, nn.Sequential):
        for i, child in enumerate(layer):
            layer[i] = to_int8_dynamic(child)
        return layer
    if isinstance(layer, nn.Linear):
        return _dynamic_linear(layer)
    raise TypeError(f"int8 execution supports nn.Linear only, got {type(layer).__name__}")


def is_dynamic_int8(module: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return isinstance(module, DynamicLinear)
