"""Quantization: fake-quant for quality at any bit width, calibrated post-training quantisation,
and real int8 Linear execution on CPU.

Fake-quant (simulated) scheme, uncalibrated (``quantize``, what a plan gets without data):
- weights: per-output-channel symmetric, ``q = clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1)``
  with ``s = max|w_c| / (2^(b-1) - 1)``; quantized once, when the plan is applied;
- input activations: per-tensor affine (min/max of the tensor seen, ``2^b`` levels), on every
  forward; dynamic, so no calibration pass is needed and batch size 1 behaves like deployment;
- 16 bits means a float16 round trip, 32 bits means untouched.

Calibrated (``quantize_calibrated``, from a few batches of real inputs; ``QuantConfig`` says which
steps run), in this order on a model that is already pruned and factorised:
1. BatchNorm folding (``fold_batchnorm``): every eval-mode BatchNorm2d fed only by a Conv2d is
   folded into that conv's weight and bias (exact in float) and becomes ``nn.Identity``, so the
   per-channel weight scales see the weights that really run;
2. one pass of the float model over the calibration batches records, at the input of every
   quantised Linear/Conv2d (each factor of a low-rank operator on its own): the value histogram
   (activation observer) and the mean input (bias correction);
3. weights: per-channel scales minimising the squared error (``mse_weight_scale``); optionally
   (``QuantConfig.gptq``) rounded column by column with GPTQ error compensation (Frantar et al.,
   2023) on the Hessian ``XᵀX`` of each layer's unfolded input, taken in one more forward, layer
   after layer, from the partly quantised model;
4. bias correction: the bias absorbs the expected output shift ``E[x]·(W - W_q)ᵀ`` per output
   channel (Nagel et al., 2019), measured on the calibration inputs (zero padding included);
5. activations: a FIXED per-tensor range from the observer (percentile or MSE-optimal clip), so
   at run time the input is quantised with the calibrated scale and zero point, not its own
   min/max.
The observers are in ``_observers``; the calibration statistics come from the float model (after
pruning, low rank and folding), never from the evaluation data.

Real execution: ``to_int8_dynamic`` turns Linear layers into torch's dynamically quantized
int8 Linear (per-channel weights, activations quantized per tensor at run time), so int8
speed on CPU can be measured rather than only predicted. Convolutions have no such path here.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.nn import functional as F

from search_spaces import InputError

from ._observers import (
    ACT_OBSERVERS,
    WEIGHT_OBSERVERS,
    ActObserver,
    HistogramObserver,
    WeightObserver,
    affine_params,
    max_weight_scale,
    mse_weight_scale,
    quantize_with_scale,
    weight_qmax,
)


def fake_quant_weight(weight: torch.Tensor, bits: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Per-output-channel symmetric fake-quantization of a weight tensor.

    ``scale`` (one per output channel) defaults to ``max|w_c| / qmax``; pass a calibrated one
    (e.g. ``mse_weight_scale``) to clip.
    """
    if bits >= 32:
        return weight
    if bits == 16:
        return weight.half().to(weight.dtype)
    if scale is None:
        scale = max_weight_scale(weight, bits)
    return quantize_with_scale(weight, scale.to(weight.dtype), bits)


def fake_quant_activation(
    x: torch.Tensor, bits: int, act_range: tuple[float, float] | None = None
) -> torch.Tensor:
    """Per-tensor affine fake-quantization, from the tensor's own min and max (dynamic) or, with
    ``act_range``, from that fixed ``(lo, hi)`` range (static; values outside are clipped)."""
    if bits >= 32:
        return x
    if bits == 16:
        return x.half().to(x.dtype)
    if act_range is not None:
        scale, zero = affine_params(act_range[0], act_range[1], bits)
        return _fake_quant_static(x, bits, x.new_tensor(scale), x.new_tensor(zero))
    levels = 2**bits - 1
    lo = torch.clamp(x.min(), max=0.0)  # keep 0 exactly representable (ReLU outputs, padding)
    hi = torch.clamp(x.max(), min=0.0)
    scale_t = torch.clamp((hi - lo) / levels, min=1e-12)
    zero_t = torch.round(-lo / scale_t)
    q = torch.clamp(torch.round(x / scale_t) + zero_t, 0, levels)
    return (q - zero_t) * scale_t


def _fake_quant_static(x: torch.Tensor, bits: int, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    levels = 2**bits - 1
    q = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    return (q - zero) * scale


class QuantizedLayer(nn.Module):
    """A Linear or Conv2d whose weights are stored fake-quantized at ``wbits`` and whose input
    is fake-quantized at ``abits`` on every call.

    ``weight_scale`` (per output channel) replaces the max-|w| scale; ``act_range`` ``(lo, hi)``
    fixes the input's quantisation range (static, from calibration) instead of the input's own
    min/max (dynamic, the default). Both are optional: without them the layer behaves as the
    uncalibrated scheme.
    """

    act_scale: torch.Tensor | None
    act_zero: torch.Tensor | None

    def __init__(
        self,
        inner: nn.Module,
        wbits: int,
        abits: int,
        *,
        weight_scale: torch.Tensor | None = None,
        act_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(inner, nn.Linear | nn.Conv2d):
            raise TypeError(f"quantization supports nn.Linear and nn.Conv2d, got {type(inner).__name__}")
        self.inner = inner
        self.wbits = wbits
        self.abits = abits
        # Kept (not a buffer, so state dicts stay as they were) for training through the
        # quantiser: fine-tuning re-quantises the moving weights on this grid.
        self._weight_scale = weight_scale
        with torch.no_grad():
            inner.weight.copy_(fake_quant_weight(inner.weight, wbits, weight_scale))
        self.act_range = act_range if abits < 16 else None
        if self.act_range is not None:
            scale, zero = affine_params(self.act_range[0], self.act_range[1], abits)
            ref = inner.weight
            self.register_buffer("act_scale", torch.tensor(scale, dtype=ref.dtype, device=ref.device))
            self.register_buffer("act_zero", torch.tensor(zero, dtype=ref.dtype, device=ref.device))
        else:
            self.register_buffer("act_scale", None)
            self.register_buffer("act_zero", None)

    @property
    def static(self) -> bool:
        """Whether the input is quantised with a fixed, calibrated range."""
        return self.act_scale is not None

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the inner layer sees it: fake-quantised at ``abits``."""
        if self.act_scale is not None and self.act_zero is not None:
            return _fake_quant_static(x, self.abits, self.act_scale, self.act_zero)
        return fake_quant_activation(x, self.abits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.inner.weight.requires_grad and self.wbits < 16:
            return self._trained_forward(x)
        return self.inner(self.quantize_input(x))

    def _trained_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantisation-aware forward for fine-tuning: weights and input are quantised on the fly
        with the straight-through estimator (the rounding's gradient taken as identity), so the
        float weights move while the forward sees what the deployed layer computes."""
        weight = self.inner.weight
        scale = self._weight_scale.to(weight.device) if self._weight_scale is not None else None
        wq = weight + (fake_quant_weight(weight.detach(), self.wbits, scale) - weight).detach()
        xq = x + (self.quantize_input(x.detach()) - x).detach()
        if isinstance(self.inner, nn.Conv2d):
            return self.inner._conv_forward(xq, wq, self.inner.bias)
        return F.linear(xq, wq, self.inner.bias)

    def requantize(self) -> None:
        """Put the weights back on the quantisation grid (after fine-tuning moved them)."""
        with torch.no_grad():
            self.inner.weight.copy_(fake_quant_weight(self.inner.weight, self.wbits, self._weight_scale))

    def extra_repr(self) -> str:
        text = f"wbits={self.wbits}, abits={self.abits}"
        if self.act_range is not None:
            text += f", act_range=({self.act_range[0]:.4g}, {self.act_range[1]:.4g})"
        return text


def quantize(layer: nn.Module, wbits: int, abits: int) -> nn.Module:
    """Fake-quantize a Linear/Conv2d, or each factor of a low-rank operator (uncalibrated)."""
    if wbits >= 32 and abits >= 32:
        return layer
    if isinstance(layer, nn.Sequential):
        # Low-rank operator: each factor, so the activation feeding the second is quantized too.
        for i, child in enumerate(layer):
            layer[i] = quantize(child, wbits, abits)
        return layer
    return QuantizedLayer(layer, wbits, abits)


# --------------------------------------------------------------------------- BatchNorm folding


def _parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a model output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _tensors(v)


def _outputs_match(ref: Any, out: Any) -> bool:
    """Whether two model outputs agree up to float rounding (relative to the output's scale)."""
    a, b = list(_tensors(ref)), list(_tensors(out))
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape or not x.is_floating_point():
            if not torch.equal(x, y):
                return False
            continue
        rtol = 1e-3 if x.dtype in (torch.float32, torch.float64) else 3e-2
        scale = float(x.detach().abs().max()) if x.numel() else 0.0
        if x.numel() and float((x.detach() - y.detach()).abs().max()) > rtol * max(scale, 1e-6):
            return False
    return True


@contextmanager
def _full_precision() -> Iterator[None]:
    """No TF32 on CUDA while folding is checked: its rounding (1e-3) would hide a real change."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _conv_bn_candidates(model: nn.Module, example_input: Any) -> tuple[list[tuple[str, str]], Any]:
    """(conv, bn) pairs where the BN's input is the very tensor the conv returned, each module
    called once, found by hooks during one forward on ``example_input``; and that output."""
    names = {id(m): n for n, m in model.named_modules()}
    inside_quantized = {id(m) for q in model.modules() if isinstance(q, QuantizedLayer) for m in q.modules()}
    calls: dict[str, int] = {}
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    found: list[tuple[str, str]] = []

    def conv_hook(module: nn.Module, args: Any, output: Any) -> None:
        name = names[id(module)]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (name, output)  # keeps the tensor alive: ids stay unique

    def bn_hook(module: nn.Module, args: Any) -> None:
        name = names[id(module)]
        calls[name] = calls.get(name, 0) + 1
        x = args[0] if args else None
        hit = produced.get(id(x)) if isinstance(x, torch.Tensor) else None
        if hit is not None and hit[1] is x:
            found.append((hit[0], name))

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in inside_quantized:
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(bn_hook))
    try:
        with torch.no_grad():
            output = model(example_input)
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    pairs = []
    for conv_name, bn_name in found:
        conv, bn = modules[conv_name], modules[bn_name]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        if calls.get(conv_name) != 1 or calls.get(bn_name) != 1:
            continue  # a module used twice cannot be folded for one of its uses only
        if bn.training or bn.running_mean is None or bn.running_var is None:
            continue  # batch statistics (train mode, or no running statistics): not a fixed affine map
        if bn.num_features != conv.out_channels:
            continue
        pairs.append((conv_name, bn_name))
    return pairs, output


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    w = conv.weight.detach().double()
    g = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        g = g * bn.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(g)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(g)
    new_bias = (b - bn.running_mean.double()) * g + beta
    conv.weight.copy_((w * g.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
    else:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))


def fold_batchnorm(model: nn.Module, example_input: Any) -> list[tuple[str, str]]:
    """Fold every eval-mode BatchNorm2d that only a Conv2d feeds into that conv, in place.

    The pairs are found by one forward on ``example_input``: a BatchNorm2d whose input is exactly
    the tensor a Conv2d returned (so a conv inside a low-rank operator, or anywhere in the model,
    is found whatever the module nesting). The conv's weight becomes ``W · γ/σ`` and its bias
    ``(b - μ) · γ/σ + β`` (computed in float64); the BatchNorm is replaced by ``nn.Identity``.
    Folding must leave the model's output unchanged: the output on ``example_input`` is compared
    before and after, and a pair that changes it (e.g. a conv whose output is also used
    elsewhere) is left unfolded. A model without such a pair is not an error: returns ``[]``.
    BatchNorms in train mode are not folded (their statistics are the batch's).

    Returns the folded ``(conv name, batchnorm name)`` pairs.
    """
    with _full_precision():
        return _fold_batchnorm(model, example_input)


def _fold_batchnorm(model: nn.Module, example_input: Any) -> list[tuple[str, str]]:
    pairs, reference = _conv_bn_candidates(model, example_input)
    if not pairs:
        return []
    modules = dict(model.named_modules())
    saved = {conv: copy.deepcopy(modules[conv]) for conv, _ in pairs}

    def fold(pair: tuple[str, str]) -> None:
        conv, bn = modules[pair[0]], modules[pair[1]]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        _fold_pair(conv, bn)
        parent, attr = _parent_and_attr(model, pair[1])
        setattr(parent, attr, nn.Identity())

    def undo(pair: tuple[str, str]) -> None:
        for name, module in ((pair[0], saved[pair[0]]), (pair[1], modules[pair[1]])):
            parent, attr = _parent_and_attr(model, name)
            setattr(parent, attr, copy.deepcopy(module) if name == pair[0] else module)
        modules[pair[0]] = model.get_submodule(pair[0])

    def unchanged() -> bool:
        with torch.no_grad():
            return _outputs_match(reference, model(example_input))

    for pair in pairs:
        fold(pair)
    if unchanged():
        return pairs
    # Some fold changed the output: start again, one pair at a time, keeping those that do not.
    for pair in pairs:
        undo(pair)
    folded = []
    for pair in pairs:
        fold(pair)
        if unchanged():
            folded.append(pair)
        else:
            undo(pair)
    return folded


# --------------------------------------------------------------------------- calibrated quantisation

ActRule = Literal["percentile", "mse", "minmax", "dynamic"]
Quantizable = nn.Linear | nn.Conv2d


@dataclass(frozen=True)
class QuantConfig:
    """Which calibration steps ``quantize_calibrated`` runs, and their settings.

    - ``weight_observer``: ``"mse"`` (per-channel clip ratio on ``[weight_min_ratio, 1]`` minimising
      the squared error, ``weight_steps`` ratios) or ``"max"`` (max|w|, the uncalibrated rule);
    - ``act_observer``: ``"mse"`` (MSE-optimal clip of the calibration histogram),
      ``"percentile"`` (``[q_(100-p), q_p]`` with p = ``percentile``), ``"minmax"``, or
      ``"dynamic"`` (no static range: the input's own min/max at run time, as uncalibrated);
    - ``fold_bn``: fold Conv2d→BatchNorm2d pairs before anything is measured;
    - ``bias_correction``: each quantised layer's bias absorbs the expected shift of its output,
      ``E[x]·(W - W_q)ᵀ`` per output channel, ``E[x]`` measured on the float model's inputs;
    - ``gptq``: GPTQ error compensation (Frantar et al., 2023) on the calibration Hessian ``XᵀX``
      (``gptq_damp``: the damping, a fraction of the mean Hessian diagonal), on the
      ``weight_observer`` scales. With ``gptq_sequential`` the Hessian of each layer comes from
      the inputs of the partly quantised model (one extra forward, layer after layer, over the
      first ``gptq_max_inputs`` calibration inputs as one batch, so the batches must share a
      shape); otherwise, or when the batches differ in shape, from the float model's inputs.
      Off by default: on mobilenet-v2 (394 held-out crops) it lowered the KL divergence to the
      float model by 20-55 % but moved top-1 agreement both ways, at ~4× the calibration time.
    """

    weight_observer: WeightObserver = "mse"
    act_observer: ActRule = "mse"
    percentile: float = 99.99
    fold_bn: bool = True
    bias_correction: bool = True
    gptq: bool = False
    gptq_damp: float = 0.01
    gptq_sequential: bool = True
    gptq_max_inputs: int = 64
    weight_min_ratio: float = 0.5
    weight_steps: int = 100
    histogram_bins: int = 4096

    def __post_init__(self) -> None:
        if self.weight_observer not in WEIGHT_OBSERVERS:
            raise InputError(
                "weight_observer", self.weight_observer, f"use one of {', '.join(WEIGHT_OBSERVERS)}"
            )
        if self.act_observer not in (*ACT_OBSERVERS, "dynamic"):
            raise InputError(
                "act_observer", self.act_observer, f"use one of {', '.join((*ACT_OBSERVERS, 'dynamic'))}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise InputError("percentile", self.percentile, "a percentage in (50, 100], e.g. 99.99")
        if not 0.0 < self.gptq_damp < 1.0:
            raise InputError("gptq_damp", self.gptq_damp, "a fraction in (0, 1), e.g. 0.01")
        if not 0.0 < self.weight_min_ratio <= 1.0:
            raise InputError("weight_min_ratio", self.weight_min_ratio, "a ratio in (0, 1], e.g. 0.5")
        for name, value, low, example in (
            ("weight_steps", self.weight_steps, 1, 100),
            ("gptq_max_inputs", self.gptq_max_inputs, 1, 64),
            ("histogram_bins", self.histogram_bins, 8, 4096),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(name, value, f"a whole number >= {low}, e.g. {example}")
        if self.histogram_bins % 2:
            raise InputError("histogram_bins", self.histogram_bins, "an even number, e.g. 4096")


@dataclass
class LayerCalibration:
    """What calibration decided for one quantised Linear/Conv2d (a plan layer or one factor)."""

    name: str
    wbits: int
    abits: int
    act_range: tuple[float, float] | None = None
    weight_clip: float = 1.0  # mean ratio of the chosen weight scale to the max scale
    gptq: bool = False
    bias_shift: float = 0.0  # RMS over output channels of what the bias absorbed
    note: str = ""


@dataclass
class QuantReport:
    """What ``quantize_calibrated`` did: BN pairs folded, per-layer decisions, inputs, time."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    layers: dict[str, LayerCalibration] = field(default_factory=dict)
    n_batches: int = 0
    n_inputs: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class _Stats:
    """Per-leaf statistics gathered in the float calibration pass."""

    hist: HistogramObserver | None
    input_sums: dict[tuple[int, ...], list[Any]] = field(default_factory=dict)  # shape -> [sum, count]
    out_sum: torch.Tensor | None = None  # per output channel, float64
    out_count: int = 0
    hessian: torch.Tensor | None = None  # (groups, D, D), float64
    hessian_rows: int = 0
    gptq_skip: str = ""


def _check_bits(name: str, bits: Any, which: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not (2 <= bits <= 16 or bits == 32):
        raise InputError(
            f"plan_bits[{name!r}].{which}", bits, "a bit width from 2 to 16, or 32 (no quantisation)"
        )
    return bits


def _leaves(model: nn.Module, name: str) -> list[tuple[str, Quantizable]]:
    """The Linear/Conv2d modules a plan layer quantises: itself, or each low-rank factor."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise InputError(
            "plan_bits", name, "a module name of the model, as kernels.trace lists the layers"
        ) from None
    if isinstance(module, nn.Sequential):
        found: list[tuple[str, Quantizable]] = []
        for i, _ in enumerate(module):
            found += _leaves(model, f"{name}.{i}")
        return found
    if not isinstance(module, nn.Linear | nn.Conv2d):
        raise TypeError(
            "calibrated quantisation supports nn.Linear and nn.Conv2d (or low-rank operators of "
            f"them), got {type(module).__name__} at {name!r}"
        )
    return [(name, module)]


def _channel_sum(out: torch.Tensor, layer: Quantizable) -> tuple[torch.Tensor, int]:
    """Per-output-channel sum of a layer's output, and how many values each channel summed."""
    # Summed in the tensor's dtype (torch sums pairwise, accurate enough for a mean), then float64.
    if isinstance(layer, nn.Linear):
        return out.reshape(-1, layer.out_features).sum(dim=0).double(), out.numel() // layer.out_features
    return out.sum(dim=(0, 2, 3)).double(), out.numel() // out.shape[1]


def _hessian(layer: Quantizable, x: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """``Σ XᵀX`` of ``layer``'s unfolded input ``x``, grouped (G, D, D) in float64, and the rows."""
    if isinstance(layer, nn.Linear):
        rows = x.reshape(-1, layer.in_features).double()
        return (rows.T @ rows)[None], rows.shape[0]
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return None, 0
    kh, kw = layer.kernel_size
    groups, cols = layer.groups, layer.in_channels // layer.groups * kh * kw
    h = torch.zeros(groups, cols, cols, dtype=torch.float64, device=x.device)
    n = 0
    for image in x:  # one at a time: unfolded inputs of early layers are large
        patches = F.unfold(
            image[None].float(),
            layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,
            stride=layer.stride,
        )[0]
        p = patches.reshape(groups, cols, -1).double()
        h += p @ p.transpose(1, 2)
        n += p.shape[-1]
    return h, n


def _observe_input(layer: Quantizable, stats: _Stats, x: torch.Tensor, want_hessian: bool) -> None:
    x = x.detach()
    if stats.hist is not None:
        stats.hist.update(x)
    if isinstance(layer, nn.Linear):
        key: tuple[int, ...] = ()
        total, count = x.reshape(-1, layer.in_features).sum(dim=0).double(), x.numel() // layer.in_features
    else:
        key = tuple(x.shape[1:])
        total, count = x.sum(dim=0).double(), x.shape[0]
    entry = stats.input_sums.setdefault(key, [torch.zeros_like(total), 0])
    entry[0] += total
    entry[1] += count
    if want_hessian and not stats.gptq_skip:
        h, n = _hessian(layer, x)
        if h is None:
            stats.gptq_skip = "its padding mode is not supported by GPTQ"
            return
        stats.hessian = h if stats.hessian is None else stats.hessian + h
        stats.hessian_rows += n


def _observe_output(layer: Quantizable, stats: _Stats, out: torch.Tensor) -> None:
    total, count = _channel_sum(out.detach(), layer)
    stats.out_sum = total if stats.out_sum is None else stats.out_sum + total
    stats.out_count += count


def _expected_shift(layer: Quantizable, stats: _Stats, delta: torch.Tensor) -> torch.Tensor:
    """Per output channel: the mean over calibration inputs (and positions) of ``layer`` with
    weight ``delta`` and no bias, i.e. ``E[x]·deltaᵀ`` (zero padding counted where it applies)."""
    d = delta.double()
    total = torch.zeros(d.shape[0], dtype=torch.float64, device=d.device)
    positions = 0
    for summed, count in stats.input_sums.values():
        if isinstance(layer, nn.Linear):
            total += d.reshape(d.shape[0], -1) @ summed
            positions += count
        else:
            # Convolution is linear: the sum over images of conv(x_n) is conv(sum_n x_n).
            out = layer._conv_forward(summed[None].to(d.dtype), d, None)[0]
            total += out.sum(dim=(1, 2))
            positions += count * out.shape[1] * out.shape[2]
    return total / max(positions, 1)


def _gptq(
    weight: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, bits: int, damp: float
) -> torch.Tensor | None:
    """GPTQ rounding of ``weight`` (grouped as ``hessian``: (G, D, D)) on fixed per-channel
    ``scale``s, columns in decreasing Hessian-diagonal order; None if H cannot be factorised."""
    groups, cols = hessian.shape[0], hessian.shape[1]
    out_c = weight.shape[0]
    w = weight.detach().double().reshape(groups, out_c // groups, cols).clone()
    s = scale.double().reshape(groups, out_c // groups)
    h = hessian.clone()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag == 0
    diag[dead] = 1.0  # an input that is always zero: its weights do not matter
    w.masked_fill_(dead[:, None, :], 0.0)
    order = torch.argsort(diag, dim=1, descending=True)
    inverse = torch.argsort(order, dim=1)
    w = w.gather(2, order[:, None, :].expand_as(w))
    h = h.gather(1, order[:, :, None].expand_as(h)).gather(2, order[:, None, :].expand_as(h))
    eye = torch.eye(cols, dtype=h.dtype, device=h.device)
    mean_diag = torch.diagonal(h, dim1=1, dim2=2).mean(dim=1)
    upper = None
    for attempt in range(4):  # more damping if the Hessian is too ill-conditioned
        damped = h + (damp * 10**attempt) * mean_diag[:, None, None] * eye
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info.abs().max()) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info.abs().max()) == 0:
                break
            upper = None
    if upper is None:
        return None
    qmax = weight_qmax(bits)
    q = torch.empty_like(w)
    for i in range(cols):
        col = w[:, :, i]
        qc = torch.clamp(torch.round(col / s), -qmax, qmax) * s
        q[:, :, i] = qc
        err = (col - qc) / upper[:, i, i][:, None]
        w[:, :, i:] -= err[:, :, None] * upper[:, None, i, i:]
    q = q.gather(2, inverse[:, None, :].expand_as(q))
    return q.reshape(weight.shape).to(weight.dtype)


def weight_scale(layer: Quantizable, wbits: int, config: QuantConfig) -> torch.Tensor:
    """Per-output-channel scale of ``layer``'s weight at ``wbits`` by ``config.weight_observer``."""
    weight = layer.weight.detach()
    if config.weight_observer == "mse":
        return mse_weight_scale(weight, wbits, min_ratio=config.weight_min_ratio, steps=config.weight_steps)
    return max_weight_scale(weight, wbits)


def _one_batch(batches: Sequence[Any], limit: int) -> torch.Tensor | None:
    """The calibration batches as one batch of at most ``limit`` inputs, or None if they are not
    tensors of one shape (then the sequential GPTQ pass cannot run)."""
    tensors = [b for b in batches if isinstance(b, torch.Tensor) and b.ndim > 0]
    if len(tensors) != len(batches) or len({tuple(b.shape[1:]) for b in tensors}) != 1:
        return None
    out: list[torch.Tensor] = []
    left = limit
    for b in tensors:
        if left <= 0:
            break
        out.append(b[:left])
        left -= out[-1].shape[0]
    return torch.cat(out)


def quantize_calibrated(
    model: nn.Module,
    plan_bits: Mapping[str, tuple[int, int]],
    batches: Sequence[Any],
    example_input: Any,
    config: QuantConfig | None = None,
) -> QuantReport:
    """Calibrated fake quantisation of ``model``'s layers, in place.

    ``plan_bits`` maps a layer name (a Linear, a Conv2d or a low-rank operator of them, as
    ``apply`` leaves it after pruning and low rank) to ``(wbits, abits)``; 32 means untouched and
    16 a float16 round trip (no calibration needed). ``batches`` are real model inputs (the
    calibration split, never the evaluation data); ``example_input`` finds the
    Conv2d→BatchNorm2d pairs to fold. Steps and their order are in the module docstring;
    ``config`` (default ``QuantConfig()``) switches them. Each quantised Linear/Conv2d becomes a
    ``QuantizedLayer`` (with a static input range unless ``act_observer == "dynamic"``).
    Returns a ``QuantReport``.
    """
    config = config or QuantConfig()
    start = time.perf_counter()
    report = QuantReport()
    bits = {
        name: (_check_bits(name, wb, "wbits"), _check_bits(name, ab, "abits"))
        for name, (wb, ab) in plan_bits.items()
    }
    bits = {n: b for n, b in bits.items() if b[0] < 32 or b[1] < 32}
    if not bits:
        return report
    calibrated = any(wb < 16 or ab < 16 for wb, ab in bits.values())
    if calibrated and len(batches) == 0:
        raise InputError(
            "calibration", "[]", "at least one batch of real model inputs is needed to calibrate quantisation"
        )
    was_training = model.training
    model.eval()
    try:
        if config.fold_bn:
            report.folded = fold_batchnorm(model, example_input)
        leaves: dict[str, tuple[Quantizable, int, int]] = {}
        for name, (wb, ab) in bits.items():
            for leaf_name, leaf in _leaves(model, name):
                leaves[leaf_name] = (leaf, wb, ab)
        sequential = config.gptq and config.gptq_sequential and calibrated
        one = _one_batch(batches, config.gptq_max_inputs) if sequential else None
        if sequential and one is None:
            report.notes.append("calibration batches differ in shape: GPTQ uses the float model's inputs")
        stats = (
            _float_pass(model, leaves, batches, config, report, float_hessian=config.gptq and one is None)
            if calibrated
            else {}
        )
        quantized: dict[str, QuantizedLayer] = {}
        originals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for leaf_name, (leaf, wb, ab) in leaves.items():
            info = LayerCalibration(name=leaf_name, wbits=wb, abits=ab)
            report.layers[leaf_name] = info
            quantized[leaf_name] = _quantize_leaf(
                model, leaf_name, leaf, wb, ab, stats.get(leaf_name), config, info, originals
            )
        if one is not None:
            _sequential_gptq(model, quantized, originals, one, config, report)
        if config.bias_correction:
            for leaf_name, (original, _) in originals.items():
                st = stats.get(leaf_name)
                if st is not None and st.input_sums:
                    inner = quantized[leaf_name].inner
                    shift = _expected_shift(inner, st, original - inner.weight.detach())
                    _add_bias(inner, shift)
                    report.layers[leaf_name].bias_shift = float(shift.pow(2).mean().sqrt())
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    return report


def _float_pass(
    model: nn.Module,
    leaves: Mapping[str, tuple[Quantizable, int, int]],
    batches: Sequence[Any],
    config: QuantConfig,
    report: QuantReport,
    *,
    float_hessian: bool,
) -> dict[str, _Stats]:
    """One pass of the float model over the calibration batches: per quantised leaf, the input
    histogram, input sums, output channel sums and (if asked) the input Hessian."""
    stats: dict[str, _Stats] = {}
    hooks = []
    for name, (leaf, wb, ab) in leaves.items():
        if wb >= 16 and ab >= 16:
            continue
        want_hist = ab < 16 and config.act_observer != "dynamic"
        st = _Stats(hist=HistogramObserver(config.histogram_bins) if want_hist else None)
        stats[name] = st
        want_hessian = float_hessian and wb < 16

        def pre(module: nn.Module, args: Any, st: _Stats = st, want: bool = want_hessian) -> None:
            assert isinstance(module, nn.Linear | nn.Conv2d)
            _observe_input(module, st, args[0], want)

        def post(module: nn.Module, args: Any, out: Any, st: _Stats = st) -> None:
            assert isinstance(module, nn.Linear | nn.Conv2d)
            _observe_output(module, st, out)

        hooks += [leaf.register_forward_pre_hook(pre), leaf.register_forward_hook(post)]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch.to(device) if isinstance(batch, torch.Tensor) else batch)
                report.n_batches += 1
                report.n_inputs += (
                    int(batch.shape[0]) if isinstance(batch, torch.Tensor) and batch.ndim else 1
                )
    finally:
        for h in hooks:
            h.remove()
    return stats


@torch.no_grad()
def _quantize_leaf(
    model: nn.Module,
    name: str,
    leaf: Quantizable,
    wbits: int,
    abits: int,
    stats: _Stats | None,
    config: QuantConfig,
    info: LayerCalibration,
    originals: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> QuantizedLayer:
    """Quantise one leaf from the float statistics: weight scale (and GPTQ, if the float pass
    gathered a Hessian) and static input range; records the float weight and scale in
    ``originals`` and swaps in its QuantizedLayer."""
    scale = None
    if wbits < 16:
        original = leaf.weight.detach().clone()
        scale = weight_scale(leaf, wbits, config)
        originals[name] = (original, scale)
        q = quantize_with_scale(original, scale, wbits)
        if stats is not None and stats.hessian is not None:
            gptq = _gptq(original, stats.hessian / max(stats.hessian_rows, 1), scale, wbits, config.gptq_damp)
            if gptq is None:
                info.note = "GPTQ skipped: the calibration Hessian could not be factorised"
            else:
                q, info.gptq = gptq, True
        elif config.gptq and stats is not None and stats.gptq_skip:
            info.note = f"GPTQ skipped: {stats.gptq_skip}"
        info.weight_clip = float((scale / max_weight_scale(original, wbits)).mean())
        leaf.weight.copy_(q)
    act_range = None
    if abits < 16 and stats is not None and stats.hist is not None:
        if stats.hist.count == 0:
            info.note = (
                info.note + "; " if info.note else ""
            ) + "no calibration input reached it: dynamic range"
        else:
            act_range = stats.hist.range(cast(ActObserver, config.act_observer), abits, config.percentile)
    info.act_range = act_range
    layer = QuantizedLayer(leaf, wbits, abits, weight_scale=scale, act_range=act_range)
    parent, attr = _parent_and_attr(model, name)
    setattr(parent, attr, layer)
    return layer


def _add_bias(leaf: Quantizable, shift: torch.Tensor) -> None:
    with torch.no_grad():
        if leaf.bias is None:
            leaf.bias = nn.Parameter(shift.to(leaf.weight.dtype))
        else:
            leaf.bias.add_(shift.to(leaf.bias.dtype))


def _sequential_gptq(
    model: nn.Module,
    quantized: Mapping[str, QuantizedLayer],
    originals: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    batch: torch.Tensor,
    config: QuantConfig,
    report: QuantReport,
) -> None:
    """One forward of the quantised model on ``batch``: at each quantised leaf, in the order the
    forward reaches it, GPTQ on the Hessian of the input it now receives (quantised upstream and
    at its own ``abits``), before the leaf runs, so later layers see the compensated ones."""
    hooks = []
    done: set[str] = set()
    for name, layer in quantized.items():
        if name not in originals:
            continue
        info = report.layers[name]

        def pre(module: nn.Module, args: Any, name: str = name, info: LayerCalibration = info) -> None:
            assert isinstance(module, QuantizedLayer)
            if name in done:
                return
            done.add(name)
            original, scale = originals[name]
            h, rows = _hessian(module.inner, module.quantize_input(args[0]))
            if h is None:
                info.note = "GPTQ skipped: its padding mode is not supported by GPTQ"
                return
            q = _gptq(original, h / max(rows, 1), scale, module.wbits, config.gptq_damp)
            if q is None:
                info.note = "GPTQ skipped: the calibration Hessian could not be factorised"
                return
            with torch.no_grad():
                module.inner.weight.copy_(q)
            info.gptq = True

        hooks.append(layer.register_forward_pre_hook(pre))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            model(batch.to(device))
    finally:
        for h in hooks:
            h.remove()
    missed = [n for n in originals if n in quantized and n not in done]
    if missed:
        report.notes.append(f"the calibration forward never reached {', '.join(missed)}: no GPTQ there")


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
