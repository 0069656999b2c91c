"""Calibration on real inputs: layer input statistics for data-aware low rank, and adaptive BatchNorm.

``input_statistics`` runs a model over calibration batches once and accumulates, for each named
Conv2d / Linear, the second moments of its input *as that layer's low-rank factorisation sees
it* (``InputStats``):

- ``nn.Linear``: the rows of the input (every leading position is one sample),
  ``C = XᵀX / n`` over the ``in`` features.
- ``nn.Conv2d`` 1×1: the per-pixel channel vectors at the positions the conv reads (stride and
  zero padding applied), ``C`` over the ``in`` channels.
- ``nn.Conv2d`` k×k (spatial SVD, ``kh×1`` then ``1×kw``): the first factor reads column patches
  of ``kh`` rows, so ``C`` is the covariance of the unfolded ``(in·kh)`` column patches, averaged
  over the ``kw`` column offsets the conv reads; beside it the ``kw×kw`` Gram ``G`` of the patches
  at different column offsets (``G[x, x'] = E⟨p_x, p_x'⟩``), since neighbouring columns of real
  inputs are strongly correlated (see ``_lowrank`` for how both are used).

``whitening`` turns an ``InputStats`` into the Cholesky factor of the (regularised) covariance,
with a note when the regulariser had to grow because the calibration set is too small for the
layer's width. ``recalibrate_batchnorm`` re-estimates BatchNorm statistics (EagleEye / NNCF
adaptive BN).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["InputStats", "Whitening", "input_statistics", "recalibrate_batchnorm", "whitening"]

#: The ridge added to every covariance, relative to its mean eigenvalue (``trace / dim``).
BASE_RIDGE = 1e-4
#: The ridge of a paired (sequential) fit, which maps the compressed model's inputs to the
#: reference's outputs: a regression, so it needs more shrinkage (towards the layer's own
#: weights) to carry over from the calibration inputs to held-out ones. Measured on
#: mobilenet-v2 with calibration and evaluation split by source photo: 1e-2 overfits the
#: calibration photos (agreement 1.0 there, 0.15 held out at rank 75 %), 1e-1 does best (0.33).
PAIRED_RIDGE = 1e-1
#: The ridge when the calibration set has fewer samples than the layer's input width, times
#: ``width / samples`` (at most 1, where whitening is halfway to plain SVD): the covariance is
#: then singular, and directions the calibration set never saw would get (almost) no weight in
#: the factorisation, which held-out inputs do not forgive.
SMALL_SET_RIDGE = 1e-1


def _conv_geometry(layer: nn.Conv2d) -> tuple[int, int, int, int, int, int, int, int]:
    if layer.groups != 1:
        raise ValueError(f"`groups == 1` must hold for a low-rank conv, but got (groups={layer.groups})")
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError("low-rank conv supports zero padding given as integers only")
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    ph, pw = layer.padding
    dh, dw = layer.dilation
    return kh, kw, sh, sw, ph, pw, dh, dw


class InputStats:
    """Accumulated second moments of one layer's inputs (see the module docstring).

    ``n`` counts rows (samples of the factorised input: tokens, pixels or column patches),
    ``seen`` the batch items that produced them. ``moment`` is ``Σ xxᵀ`` (float64, ``dim×dim``;
    averaged over the column offsets for a k×k conv), ``sums`` ``Σ x`` per column offset, and
    ``gram`` the ``kw×kw`` column-offset Gram for a k×k conv (``None`` otherwise).

    Paired (``update(x, reference=x_ref)``): ``x`` is what the layer receives in the model being
    compressed, ``x_ref`` what the same layer receives in the reference model on the same inputs;
    ``cross`` is then ``Σ x x_refᵀ`` and ``ref_sums`` ``Σ x_ref``, so that the factorisation can
    fit the reference layer's output from the compressed model's input (compensating the error
    of the layers before it).
    """

    def __init__(self, layer: nn.Module) -> None:
        if isinstance(layer, nn.Linear):
            self.kind = "linear"
            self.dim = layer.in_features
            self.kw = 1
        elif isinstance(layer, nn.Conv2d):
            kh, kw, *_ = _conv_geometry(layer)
            self.kind = "pointwise" if (kh, kw) == (1, 1) else "spatial"
            self.dim = layer.in_channels * kh
            self.kw = kw
        else:
            raise TypeError(f"input statistics support nn.Linear and nn.Conv2d, got {type(layer).__name__}")
        self.layer_shape = tuple(layer.weight.shape)
        self.has_bias = getattr(layer, "bias", None) is not None
        self._geometry = _conv_geometry(layer) if isinstance(layer, nn.Conv2d) else None
        self.n = 0
        self.seen = 0
        self.moment = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        self.sums = torch.zeros(self.kw, self.dim, dtype=torch.float64)
        self.gram: torch.Tensor | None = (
            torch.zeros(self.kw, self.kw, dtype=torch.float64) if self.kind == "spatial" else None
        )
        self.cross: torch.Tensor | None = None
        self.ref_sums: torch.Tensor | None = None

    @classmethod
    def of(cls, layer: nn.Module, inputs: torch.Tensor) -> InputStats:
        """The statistics of ``layer`` on one input tensor (as the layer's forward receives it)."""
        stats = cls(layer)
        stats.update(inputs)
        return stats

    @property
    def paired(self) -> bool:
        return self.cross is not None

    def _rows(self, x: torch.Tensor, field: str) -> list[torch.Tensor]:
        """The factorised input's rows, one matrix per column offset (one for Linear / 1×1)."""
        x = x.detach().float()
        if self.kind == "linear":
            if x.shape[-1] != self.dim:
                raise ValueError(
                    f"`{field}` has width {x.shape[-1]}, but the Linear has in_features={self.dim}"
                )
            return [x.reshape(-1, self.dim)]
        if x.dim() != 4:
            raise ValueError(f"`{field}` of a Conv2d must be N×C×H×W, got shape {tuple(x.shape)}")
        assert self._geometry is not None  # set for every conv in __init__
        kh, kw, sh, sw, ph, pw, dh, dw = self._geometry
        in_c = self.dim // kh
        if x.shape[1] != in_c:
            raise ValueError(f"`{field}` has {x.shape[1]} channels, but the Conv2d has in_channels={in_c}")
        if self.kind == "pointwise":
            x = F.pad(x, (pw, pw, ph, ph))[:, :, ::sh, ::sw]
            return [x.permute(0, 2, 3, 1).reshape(-1, in_c)]
        # Column patches: (N, in·kh, H_out, W_padded), channel order (i, y) as the factorisation's
        # row index i·kh + y; then the columns each of the kw offsets reads.
        xp = F.pad(x, (pw, pw, 0, 0))
        cols = F.unfold(xp, (kh, 1), dilation=(dh, 1), padding=(ph, 0), stride=(sh, 1))
        h_out = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        w_pad = xp.shape[3]
        w_out = (w_pad - dw * (kw - 1) - 1) // sw + 1
        cols = cols.reshape(x.shape[0], self.dim, h_out, w_pad)
        return [
            cols[..., o * dw : o * dw + sw * (w_out - 1) + 1 : sw].permute(0, 2, 3, 1).reshape(-1, self.dim)
            for o in range(kw)
        ]

    @torch.no_grad()
    def update(self, x: torch.Tensor, reference: torch.Tensor | None = None) -> None:
        """Add one input batch (the tensor the layer's forward receives), paired with the
        reference model's input to the same layer on the same batch if given."""
        if reference is None and self.paired:
            raise ValueError("these statistics are paired: every batch needs its `reference` input")
        if reference is not None and self.n > 0 and not self.paired:
            raise ValueError("these statistics are unpaired: a `reference` input cannot be added now")
        rows = self._rows(x, "inputs")
        refs = self._rows(reference, "reference") if reference is not None else None
        if refs is not None and refs[0].shape != rows[0].shape:
            raise ValueError(
                f"`reference` gives {tuple(refs[0].shape)} rows, the inputs {tuple(rows[0].shape)}: "
                "pass the reference model's input to the same layer on the same batch"
            )
        # float32 products per batch (fast), accumulated in float64 on the CPU; averaged over
        # the kw offsets (every output position reads one row per offset).
        kw = len(rows)
        moment = sum((r.T @ r for r in rows), torch.zeros(()))
        self.moment += moment.double().cpu() / kw
        self.sums += torch.stack([r.sum(0) for r in rows]).double().cpu()
        if refs is not None:
            if self.cross is None or self.ref_sums is None:
                self.cross = torch.zeros(self.dim, self.dim, dtype=torch.float64)
                self.ref_sums = torch.zeros(self.kw, self.dim, dtype=torch.float64)
            cross = sum((r.T @ q for r, q in zip(rows, refs, strict=True)), torch.zeros(()))
            self.cross += cross.double().cpu() / kw
            self.ref_sums += torch.stack([q.sum(0) for q in refs]).double().cpu()
        if self.gram is not None:
            self.gram += (
                torch.stack([torch.stack([(a * b).sum() for b in rows]) for a in rows]).double().cpu()
            )
        self.n += int(rows[0].shape[0])
        self.seen += int(x.shape[0]) if x.dim() > 1 else 1

    def _check(self) -> None:
        if self.n == 0:
            raise ValueError("no calibration inputs reached this layer")

    def mean(self) -> torch.Tensor:
        """The mean input row per column offset (``kw × dim``; one row but for a k×k conv)."""
        self._check()
        return self.sums / self.n

    def ref_mean(self) -> torch.Tensor:
        """The reference model's mean input row per column offset (paired statistics only)."""
        self._check()
        if self.ref_sums is None:
            raise ValueError("only paired statistics have a reference mean")
        return self.ref_sums / self.n

    def covariance(self, centered: bool = False) -> torch.Tensor:
        """``XᵀX / n``, or, ``centered``, the covariance about the mean (averaged over offsets)."""
        self._check()
        c = self.moment / self.n
        if centered:
            mu = self.mean()
            c = c - mu.T @ mu / self.kw
        return c

    def cross_covariance(self, centered: bool = False) -> torch.Tensor:
        """``Xᵀ X_ref / n`` (paired statistics only), about the means if ``centered``."""
        self._check()
        if self.cross is None:
            raise ValueError("only paired statistics have a cross-covariance")
        c = self.cross / self.n
        if centered:
            c = c - self.mean().T @ self.ref_mean() / self.kw
        return c

    def column_gram(self, centered: bool = False) -> torch.Tensor:
        """The k×k conv's ``kw×kw`` column-offset Gram ``E⟨p_x, p_x'⟩`` (about the mean if
        ``centered``), normalised to a unit mean diagonal."""
        if self.gram is None:
            raise ValueError("only a k×k conv has a column-offset Gram")
        self._check()
        g = self.gram / self.n
        if centered:
            mu = self.mean()
            g = g - mu @ mu.T
        return g / max(float(g.diagonal().mean()), 1e-300)


@dataclass(frozen=True)
class Whitening:
    """Lower Cholesky factor ``factor`` of ``C + ridge·I``, and what was done to get it."""

    factor: torch.Tensor
    ridge: float
    note: str | None


def whitening(
    covariance: torch.Tensor, samples: int, what: str = "the layer's input", minimum: float | None = None
) -> Whitening:
    """Cholesky factor of the regularised covariance of ``samples`` calibration rows.

    The ridge is ``minimum`` (default ``BASE_RIDGE``) times the mean eigenvalue; it grows to
    ``SMALL_SET_RIDGE · width / samples`` (at most 1) times the mean eigenvalue when ``samples``
    is below the width (the covariance is then singular), and ×10 again while the Cholesky
    factorisation fails; either way the note says so.
    """
    c = covariance.double()
    dim = c.shape[0]
    scale = float(c.diagonal().mean())
    if not scale > 0.0 or not torch.isfinite(c).all():
        # All-zero (or broken) inputs: nothing to weight by; the identity keeps plain SVD.
        return Whitening(
            torch.eye(dim, dtype=torch.float64),
            1.0,
            f"{what}: calibration inputs are all zero or not finite; plain SVD used",
        )
    base = BASE_RIDGE if minimum is None else minimum
    relative = base
    note = None
    if samples < dim:
        relative = max(base, min(1.0, SMALL_SET_RIDGE * dim / max(samples, 1)))
        note = (
            f"{what}: {samples} calibration samples for an input width of {dim} (fewer samples "
            f"than the width); whitening regulariser grown from {base:g} to {relative:g} "
            "of the mean input variance"
        )
    eye = torch.eye(dim, dtype=torch.float64)
    for _ in range(8):
        factor, info = torch.linalg.cholesky_ex(c + relative * scale * eye)
        if int(info) == 0:
            return Whitening(factor, relative * scale, note)
        relative *= 10.0
        note = (
            f"{what}: the input covariance is numerically singular; whitening regulariser grown "
            f"to {relative:g} of the mean input variance"
        )
    return Whitening(eye, 1.0, f"{what}: the input covariance could not be factorised; plain SVD used")


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _batches(batches: Iterable[torch.Tensor], field: str) -> list[torch.Tensor]:
    out = list(batches)
    if not out:
        raise ValueError(f"`{field}` must hold at least one batch of model inputs, but got none")
    for i, b in enumerate(out):
        if not isinstance(b, torch.Tensor) or b.dim() == 0 or b.shape[0] == 0:
            raise ValueError(
                f"`{field}[{i}]` must be a non-empty batch tensor of model inputs, got "
                f"{type(b).__name__} {tuple(b.shape) if isinstance(b, torch.Tensor) else ''}".rstrip()
            )
    return out


@torch.no_grad()
def input_statistics(
    model: nn.Module, layers: Sequence[str] | Mapping[str, nn.Module], batches: Iterable[torch.Tensor]
) -> dict[str, InputStats]:
    """One pass of ``model`` (eval mode, no grad) over ``batches`` that accumulates the
    ``InputStats`` of every named layer (names as in ``model.named_modules()``)."""
    data = _batches(batches, "calibration")
    modules = dict(model.named_modules())
    names = list(layers)
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"`layers` names modules the model does not have: {missing}")
    stats = {n: InputStats(modules[n]) for n in names}
    handles = []
    for n in names:

        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], name: str = n) -> None:
            stats[name].update(args[0])

        handles.append(modules[n].register_forward_pre_hook(hook))
    was_training = model.training
    device = _device(model)
    model.eval()
    try:
        for b in data:
            model(b.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate, in place, every BatchNorm's running mean and variance on ``batches``.

    Adaptive BatchNorm (EagleEye; NNCF's BN adaptation): the statistics are reset and replaced by
    the cumulative average over the batches (``momentum=None``); only the BatchNorm layers run in
    train mode, everything else (dropout, ...) stays in eval mode, and no gradient is taken. The
    modes and momenta are restored afterwards. BatchNorms without running statistics are left
    alone. Returns how many BatchNorm layers were updated: 0 for a model without one, which is
    not an error (the caller reports the step as skipped).
    """
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return 0
    data = _batches(batches, "calibration")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    device = _device(model)
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for b in data:
            model(b.to(device))
    finally:
        for module, mode in modes.items():
            module.training = mode
        for norm, momentum in momenta.items():
            norm.momentum = momentum
    return len(norms)
