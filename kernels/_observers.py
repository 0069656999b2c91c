"""Observers: how quantisation ranges are chosen, for weights and for activations.

Weights (per output channel, symmetric, data-free):
- ``max_weight_scale``: ``s_c = max|w_c| / qmax``, nothing is clipped (the uncalibrated rule);
- ``mse_weight_scale``: ``s_c = r_c · max|w_c| / qmax`` with the ratio ``r_c`` from a grid on
  ``[min_ratio, 1]`` that minimises the channel's squared quantisation error ``‖w_c - q(w_c)‖²``.
  The grid holds 1.0, so the MSE scale is never worse than the max scale on any channel.

Activations (per tensor, affine, from calibration data): :class:`HistogramObserver` records every
value a layer's input takes over the calibration batches in one pass (a histogram whose range
doubles, by merging bin pairs exactly, when a batch exceeds it; the exact min and max beside it),
and then fixes a static range:
- ``"percentile"``: ``[q_(1-p), q_p]`` (e.g. p = 99.99 %) of the recorded values;
- ``"mse"``: the range ``α · [min, max]`` whose expected squared error (rounding noise
  ``Δ²/12`` inside the range plus the clipping error outside it, over the histogram) is least;
- ``"minmax"``: the recorded ``[min, max]``.
Every range keeps 0 inside, so ReLU outputs and zero padding stay exact.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

ActObserver = Literal["percentile", "mse", "minmax"]
WeightObserver = Literal["max", "mse"]

ACT_OBSERVERS: tuple[str, ...] = ("percentile", "mse", "minmax")
WEIGHT_OBSERVERS: tuple[str, ...] = ("max", "mse")


def weight_qmax(bits: int) -> int:
    """Largest level of a symmetric ``bits``-bit weight grid (``2^(b-1) - 1``)."""
    return 2 ** (bits - 1) - 1


def _per_channel(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1)


def max_weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric scale from ``max|w_c|`` (nothing clipped)."""
    return _per_channel(weight).abs().amax(dim=1).clamp_min(1e-12) / weight_qmax(bits)


def quantize_with_scale(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric fake-quantisation of ``weight`` with one scale per output channel."""
    qmax = weight_qmax(bits)
    flat = weight.reshape(weight.shape[0], -1)
    q = torch.clamp(torch.round(flat / scale[:, None]), -qmax, qmax)
    return (q * scale[:, None]).reshape(weight.shape)


def weight_quant_error(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel squared error ``‖w_c - q(w_c)‖²`` of quantising with ``scale``."""
    w = weight.detach()
    return _per_channel(quantize_with_scale(w, scale, bits) - w).pow(2).sum(dim=1)


def mse_weight_scale(
    weight: torch.Tensor, bits: int, *, min_ratio: float = 0.5, steps: int = 100
) -> torch.Tensor:
    """Per-output-channel symmetric scale minimising the channel's squared quantisation error.

    Searches ``s_c = r · max|w_c| / qmax`` for ratios ``r`` on ``[min_ratio, 1]`` at the
    resolution of ``steps`` evenly spaced ratios (1 included, so no channel is ever worse than
    with the max scale): a coarse grid of about ``sqrt(steps)`` ratios, then, per channel, the
    same number around the best coarse one.
    """
    if not 0.0 < min_ratio <= 1.0:
        raise ValueError(f"`0 < min_ratio <= 1` must hold, but got (min_ratio={min_ratio})")
    if steps < 1:
        raise ValueError(f"`steps >= 1` must hold, but got (steps={steps})")
    w = _per_channel(weight).float()
    full = max_weight_scale(weight, bits).float()
    best_ratio = torch.ones_like(full)
    best_err = weight_quant_error(w, full, bits)
    if steps == 1 or min_ratio == 1.0:
        return full.to(weight.dtype)
    fine = (1.0 - min_ratio) / (steps - 1)  # the grid spacing asked for
    coarse_n = max(2, math.ceil(math.sqrt(steps)))
    coarse = (1.0 - min_ratio) / (coarse_n - 1)

    qmax = weight_qmax(bits)
    buf = torch.empty_like(w)

    def consider(ratio: torch.Tensor) -> None:
        nonlocal best_err, best_ratio
        ratio = ratio.clamp(min_ratio, 1.0)
        scale = (full * ratio)[:, None]
        # In place on one buffer: this loop is most of the cost of calibrating a large model.
        torch.div(w, scale, out=buf)
        buf.round_().clamp_(-qmax, qmax).mul_(scale).sub_(w).square_()
        err = buf.sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, ratio, best_ratio)

    for k in range(1, coarse_n):
        consider(torch.full_like(full, 1.0 - k * coarse))
    centre = best_ratio.clone()
    half = math.ceil(coarse / fine)
    for k in range(-half, half + 1):
        if k:
            consider(centre + k * fine)
    return (full * best_ratio).to(weight.dtype)


def act_levels(bits: int) -> int:
    """Number of steps of an unsigned ``bits``-bit activation grid (``2^b - 1``)."""
    return 2**bits - 1


def affine_params(lo: float, hi: float, bits: int) -> tuple[float, float]:
    """``(scale, zero_point)`` of the ``bits``-bit affine grid over ``[lo, hi]`` (0 kept inside)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / act_levels(bits), 1e-12)
    return scale, float(round(-lo / scale))


class HistogramObserver:
    """The distribution of a tensor's values over many batches, in one pass.

    ``bins`` equal bins cover ``[-bound, bound]``; the bound starts at the first batch's
    ``max|x|`` and doubles (adjacent bins merged, exactly) whenever a batch exceeds it, so at
    least a quarter of the bins always span the larger side of the data. ``min``/``max`` are exact;
    a batch of more than ``max_samples`` values is binned from an evenly strided sample of it.
    """

    def __init__(self, bins: int = 4096, max_samples: int = 1 << 21) -> None:
        if bins < 8 or bins % 2:
            raise ValueError(f"`bins` must be an even number >= 8, but got (bins={bins})")
        if max_samples < 1:
            raise ValueError(f"`max_samples >= 1` must hold, but got (max_samples={max_samples})")
        self.bins = bins
        self.max_samples = max_samples
        self.bound = 0.0
        self.hist: torch.Tensor | None = None
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        lo, hi = x.aminmax()
        lo_f, hi_f = float(lo), float(hi)
        if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
            raise ValueError("activation observer: the calibration inputs give non-finite activations")
        self.min, self.max = min(self.min, lo_f), max(self.max, hi_f)
        self.count += x.numel()
        needed = max(abs(lo_f), abs(hi_f), 1e-12)
        if self.hist is None:
            self.bound = needed
            self.hist = torch.zeros(self.bins, dtype=torch.float64, device=x.device)
        while needed > self.bound:
            self._double()
        # Binning costs more than the layer's own forward on large activations: past
        # max_samples values, every k-th value (k odd, so it does not follow a power-of-two
        # image layout) stands for k values. min/max above stay exact.
        step = 1 if x.numel() <= self.max_samples else (x.numel() // self.max_samples) | 1
        hist = torch.histc(x[::step], bins=self.bins, min=-self.bound, max=self.bound)
        self.hist += hist.double() * step

    def _double(self) -> None:
        assert self.hist is not None
        merged = self.hist.reshape(-1, 2).sum(dim=1)  # bins/2 bins of twice the width
        pad = self.bins // 4
        self.hist = torch.cat([merged.new_zeros(pad), merged, merged.new_zeros(pad)])
        self.bound *= 2.0

    def _edges(self) -> torch.Tensor:
        assert self.hist is not None
        return torch.linspace(
            -self.bound, self.bound, self.bins + 1, dtype=torch.float64, device=self.hist.device
        )

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (``0 <= q <= 1``), linear inside a bin, clamped to the exact min/max."""
        if self.hist is None or self.count == 0:
            raise ValueError("activation observer: no values recorded (no calibration batch ran)")
        cdf = torch.cumsum(self.hist, 0)
        total = float(cdf[-1])
        target = q * total
        i = int(torch.searchsorted(cdf, torch.tensor(target, dtype=cdf.dtype, device=cdf.device)))
        i = min(i, self.bins - 1)
        below = float(cdf[i - 1]) if i > 0 else 0.0
        inside = float(self.hist[i])
        frac = (target - below) / inside if inside > 0 else 0.0
        width = 2.0 * self.bound / self.bins
        value = -self.bound + (i + min(max(frac, 0.0), 1.0)) * width
        return min(max(value, self.min), self.max)

    def percentile_range(self, percentile: float) -> tuple[float, float]:
        """``[q_(1-p), q_p]`` for ``percentile`` p in percent (e.g. 99.99)."""
        p = percentile / 100.0
        return self.quantile(1.0 - p), self.quantile(p)

    def minmax_range(self) -> tuple[float, float]:
        return self.min, self.max

    def mse_range(self, bits: int, steps: int = 200) -> tuple[float, float]:
        """The range ``α · [min, max]`` (``α`` on a grid over (0, 1]) of least expected squared
        error at ``bits``: rounding noise ``Δ²/12`` for values inside, ``(x - clip)²`` outside."""
        if self.hist is None or self.count == 0:
            raise ValueError("activation observer: no values recorded (no calibration batch ran)")
        edges = self._edges()
        centres = (edges[:-1] + edges[1:]) / 2
        counts = self.hist
        lo0, hi0 = min(self.min, 0.0), max(self.max, 0.0)
        levels = act_levels(bits)
        alphas = torch.arange(steps, 0, -1, dtype=torch.float64, device=counts.device) / steps
        # The grid each α gives (as affine_params builds it): levels at (q - zero)·scale.
        scale = ((alphas * (hi0 - lo0)) / levels).clamp_min(1e-12)
        zero = torch.round(-(alphas * lo0) / scale)
        q_lo, q_hi = (-zero * scale)[:, None], ((levels - zero) * scale)[:, None]
        clipped = torch.minimum(torch.maximum(centres[None, :], q_lo), q_hi)
        inside = (centres[None, :] >= q_lo) & (centres[None, :] <= q_hi)
        err = (counts * (centres - clipped).pow(2)).sum(dim=1) + (counts * inside).sum(dim=1) * scale.pow(
            2
        ) / 12.0
        best = int(torch.argmin(err))  # the first (largest α) of equal errors
        alpha = float(alphas[best])
        return alpha * lo0, alpha * hi0

    def range(self, observer: ActObserver, bits: int, percentile: float = 99.99) -> tuple[float, float]:
        """The static range this observer's rule fixes for a ``bits``-bit input."""
        if observer == "percentile":
            return self.percentile_range(percentile)
        if observer == "mse":
            return self.mse_range(bits)
        if observer == "minmax":
            return self.minmax_range()
        raise ValueError(f"unknown activation observer {observer!r}; use one of {', '.join(ACT_OBSERVERS)}")
