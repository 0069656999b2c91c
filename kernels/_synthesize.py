"""Data-free calibration inputs: synthesised from a model's own BatchNorm statistics.

Calibration (data-aware low rank, BatchNorm re-estimation, quantisation ranges) needs inputs.
When a user brings a model with no data at all, ``synthesize_inputs`` makes some (ZeroQ, Cai et
al. 2020): starting from standard normal noise, Adam optimises the inputs so that, at every
BatchNorm layer, the batch mean and standard deviation of that layer's input match the layer's
``running_mean`` and ``sqrt(running_var + eps)``:

    loss = Σ_BN ‖μ_batch − running_mean‖₂ + ‖σ_batch − sqrt(running_var + eps)‖₂
           + tv_weight · TV(x)                                   (4-D inputs only)

with ``TV`` the DeepInversion total-variation prior (per image, the L2 norms of the horizontal
and vertical neighbour differences, averaged over the batch). The statistics are taken by forward
pre-hooks on the BatchNorm modules; the forward stops after the last BatchNorm (nothing after it
enters the loss). The model runs in eval mode and is never changed: its parameters are switched
to ``requires_grad=False`` for the call (no gradient reaches them) and every module's mode and
every parameter's flag are restored afterwards.

Speed: most of the steps run at half the resolution when the model accepts it (a fully
convolutional trunk with global pooling, as ImageNet CNNs have): BatchNorm statistics are per
channel, so noise shaped at half resolution and upsampled is a good start for the last steps at
full resolution (DeepInversion's multi-resolution schedule). A model that rejects the smaller
input is optimised at full resolution throughout.

Only float inputs can be optimised, and only BatchNorm layers with running statistics guide the
optimisation: a text model (token ids) or a model without BatchNorm raises ``InputError`` on the
field ``"calibration"``; ``can_synthesize`` tells callers beforehand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from search_spaces import InputError

__all__ = [
    "SynthesizedInputs",
    "batchnorm_statistics_loss",
    "can_synthesize",
    "synthesize_inputs",
]

#: Fraction of the steps run at half resolution (when the model accepts it and the input is at
#: least ``COARSE_MIN_SIDE`` pixels on its shorter side).
COARSE_FRACTION = 0.75
COARSE_MIN_SIDE = 64

_FIX = (
    "synthesising calibration inputs needs a model with BatchNorm layers (running statistics) "
    "and floating-point inputs; give real calibration data instead (--data)"
)


@dataclass(frozen=True)
class SynthesizedInputs:
    """Inputs synthesised by ``synthesize_inputs``, with how they were made.

    ``batches``: tensors of shape ``[b, *example_input.shape[1:]]`` (``b <= batch``), on the
    example input's device and dtype, detached; ``n_inputs``: how many inputs in all;
    ``bn_layers``: the BatchNorm layers whose statistics guided them; ``initial_loss`` and
    ``final_loss``: the BatchNorm statistics loss (ZeroQ, summed over the layers, no TV term)
    of the starting noise and of the result, averaged over the batches; ``seconds``: wall time.
    """

    batches: list[torch.Tensor]
    n_inputs: int
    bn_layers: int
    initial_loss: float
    final_loss: float
    steps: int
    seconds: float
    description: str


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
        and m.running_var is not None
    ]


def can_synthesize(model: nn.Module, example_input: object) -> bool:
    """Whether ``synthesize_inputs`` can make inputs for ``model``: the example input is a
    floating-point batch tensor and the model has BatchNorm layers with running statistics."""
    return (
        isinstance(example_input, torch.Tensor)
        and example_input.is_floating_point()
        and example_input.dim() >= 2
        and bool(_norms(model))
    )


class _Stop(Exception):
    """Raised by the last BatchNorm's hook: nothing after it enters the loss."""


class _Probe:
    """Forward pre-hooks on BatchNorm layers adding up the ZeroQ statistics loss of their inputs."""

    def __init__(self, norms: Sequence[nn.modules.batchnorm._BatchNorm]) -> None:
        self.norms = list(norms)
        self.terms: list[torch.Tensor] = []
        self.seen: list[nn.Module] = []
        self.stop_after: nn.Module | None = None

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        x = args[0]
        assert module.running_mean is not None and module.running_var is not None
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        # Sums of x and x² (one pass each) are ~3x faster than mean + var over the non-channel
        # dimensions of an NCHW tensor on CPU; float32 cancellation is harmless at BN scales.
        mean = x.sum(dim=dims) / count
        var = ((x * x).sum(dim=dims) / count - mean * mean).clamp_min(0.0)
        std = (var + module.eps).sqrt()
        target_std = (module.running_var + module.eps).sqrt()
        self.terms.append(
            torch.linalg.vector_norm(mean - module.running_mean)
            + torch.linalg.vector_norm(std - target_std)
        )
        self.seen.append(module)
        if module is self.stop_after:
            raise _Stop

    @contextmanager
    def attached(self) -> Iterator[_Probe]:
        handles = [m.register_forward_pre_hook(self._hook) for m in self.norms]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def loss(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The statistics loss of ``x`` (a graph back to ``x`` when grad is on); hooks attached."""
        self.terms, self.seen = [], []
        try:
            model(x)
        except _Stop:
            pass
        if not self.terms:
            return x.new_zeros(())
        return torch.stack(self.terms).sum()


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on every parameter, both restored on exit."""
    modes = {m: m.training for m in model.modules()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.train(mode)


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per image, ‖horizontal differences‖₂ + ‖vertical differences‖₂, averaged over the batch."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).flatten(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).flatten(1)
    return (torch.linalg.vector_norm(dh, dim=1) + torch.linalg.vector_norm(dw, dim=1)).mean()


def _device(model: nn.Module, example_input: torch.Tensor) -> torch.device:
    for p in model.parameters():
        return p.device
    return example_input.device


def batchnorm_statistics_loss(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """The ZeroQ BatchNorm statistics loss of ``inputs`` (one batch, or the mean over batches):
    Σ over BatchNorm layers with running statistics of ‖μ_batch − running_mean‖₂ +
    ‖σ_batch − sqrt(running_var + eps)‖₂, each layer's input measured in eval mode, no grad.
    The model is not changed. 0.0 for a model without such layers."""
    batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if not batches:
        raise InputError("inputs", "[]", "at least one batch of model inputs")
    probe = _Probe(_norms(model))
    device = _device(model, batches[0])
    total = 0.0
    with _frozen(model), probe.attached(), torch.no_grad():
        for b in batches:
            total += float(probe.loss(model, b.to(device)))
    return total / len(batches)


def _accepts(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        return True
    except Exception:
        return False
    return True


def _check_count(field: str, value: object, low: int, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(field, value, f"a whole number >= {low}, e.g. {example}")
    return value


def _check_positive(field: str, value: object, example: float, *, zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value < 0 if zero else value <= 0):  # type: ignore[operator]
        which = "a finite number >= 0" if zero else "a finite number > 0"
        raise InputError(field, value, f"{which}, e.g. {example}")
    return float(value)  # type: ignore[arg-type]


def synthesize_inputs(
    model: nn.Module,
    example_input: torch.Tensor,
    n: int = 32,
    *,
    steps: int = 40,
    lr: float = 0.2,
    batch: int = 16,
    seed: int = 0,
    tv_weight: float = 1e-4,
) -> SynthesizedInputs:
    """``n`` calibration inputs for ``model`` synthesised from its BatchNorm statistics (ZeroQ).

    The inputs are made ``batch`` at a time (each batch matches the statistics on its own, as a
    calibration batch does): standard normal noise of shape ``[b, *example_input.shape[1:]]``
    from a ``torch.Generator`` seeded with ``seed``, then ``steps`` Adam steps (learning rate
    ``lr``) on the loss in the module docstring (``tv_weight`` weighs the total-variation prior
    of 4-D inputs). On a model that accepts half-resolution inputs, the first
    ``COARSE_FRACTION`` of the steps run at half resolution. The same arguments give the same
    inputs (on the same machine and thread count). The model is left exactly as it was.

    Raises ``InputError`` on the field ``"calibration"`` when the example input is not a float
    batch tensor or the model has no BatchNorm with running statistics (``can_synthesize``
    checks first), and on the argument's name for a bad ``n``, ``steps``, ``lr``, ``batch`` or
    ``tv_weight``.
    """
    start = time.perf_counter()
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        value = example_input.dtype if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise InputError("calibration", f"model input of type {value}", _FIX)
    if example_input.dim() < 2:
        raise InputError("calibration", f"model input of shape {tuple(example_input.shape)}", _FIX)
    norms = _norms(model)
    if not norms:
        raise InputError("calibration", f"{type(model).__name__} without BatchNorm running statistics", _FIX)
    n = _check_count("n", n, 1, 32)
    steps = _check_count("steps", steps, 1, 40)
    batch = _check_count("batch", batch, 1, 16)
    lr = _check_positive("lr", lr, 0.2)
    tv_weight = _check_positive("tv_weight", tv_weight, 1e-4, zero=True)

    device = _device(model, example_input)
    dtype = example_input.dtype
    shape = tuple(example_input.shape[1:])
    generator = torch.Generator().manual_seed(seed)
    probe = _Probe(norms)
    batches: list[torch.Tensor] = []
    initial: list[float] = []
    final: list[float] = []
    guided = 0
    with _frozen(model), probe.attached(), torch.enable_grad():
        # One probing pass: which BatchNorms run (and in which order), whether half size works.
        x0 = torch.zeros((1, *shape), dtype=dtype, device=device)
        with torch.no_grad():
            probe.loss(model, x0)
        if not probe.seen:
            raise InputError("calibration", f"{type(model).__name__} whose forward uses no BatchNorm", _FIX)
        guided = len(set(probe.seen))
        probe.stop_after = probe.seen[-1]
        coarse_steps = 0
        half: tuple[int, ...] = shape
        if len(shape) == 3 and min(shape[1:]) >= COARSE_MIN_SIDE:
            half = (shape[0], shape[1] // 2, shape[2] // 2)
            if _accepts(model, torch.zeros((2, *half), dtype=dtype, device=device)):
                coarse_steps = int(steps * COARSE_FRACTION)
        for first in range(0, n, batch):
            b = min(batch, n - first)
            size = half if coarse_steps else shape
            noise = torch.randn((b, *size), generator=generator, dtype=torch.float32)
            x = noise.to(device=device, dtype=dtype).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=lr)
            with torch.no_grad():
                start_x = F.interpolate(x, size=shape[1:], mode="bilinear") if coarse_steps else x
                initial.append(float(probe.loss(model, start_x)))
            for step in range(steps):
                if step == coarse_steps and coarse_steps:
                    up = F.interpolate(x.detach(), size=shape[1:], mode="bilinear", align_corners=False)
                    x = up.requires_grad_(True)
                    optimizer = torch.optim.Adam([x], lr=lr)
                optimizer.zero_grad(set_to_none=True)
                loss = probe.loss(model, x)
                if tv_weight and x.dim() == 4:
                    loss = loss + tv_weight * _total_variation(x)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                final.append(float(probe.loss(model, x)))
            batches.append(x.detach())
    seconds = time.perf_counter() - start
    initial_loss = sum(initial) / len(initial)
    final_loss = sum(final) / len(final)
    schedule = f"{steps} steps" + (f" ({coarse_steps} at half resolution)" if coarse_steps else "")
    description = (
        f"{n} inputs synthesised from {guided} BatchNorm layers' statistics (ZeroQ), {schedule}; "
        f"statistics loss {initial_loss:.3g} -> {final_loss:.3g}, {seconds:.1f} s"
    )
    return SynthesizedInputs(
        batches=batches,
        n_inputs=n,
        bn_layers=guided,
        initial_loss=initial_loss,
        final_loss=final_loss,
        steps=steps,
        seconds=seconds,
        description=description,
    )
