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

Speed: every step is a forward and a backward pass of the model at the input's full size, so
the cost is ``steps × n`` image passes (the forward stops after the last BatchNorm); see
``DEFAULT_STEPS`` for the measured budget. Optimising at half resolution first
(DeepInversion's multi-resolution schedule) was tried on mobilenet-v2 and dropped: 40 steps at
112×112 took the loss at 112 from 232 to 76 but, upsampled to 224, only from 210 to 187.

Only float inputs can be optimised, and only BatchNorm layers with running statistics guide the
optimisation: a text model (token ids) or a model without BatchNorm raises ``InputError`` on the
field ``"calibration"``; ``can_synthesize`` tells callers beforehand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from search_spaces import InputError

__all__ = [
    "SynthesizedInputs",
    "batchnorm_statistics_loss",
    "can_synthesize",
    "synthesize_inputs",
]

#: Adam steps per batch. Chosen for mobilenet-v2, n=32 at 224×224 on one CPU thread in under
#: a minute (one step of a batch of 16: a forward and a backward pass, ~1.5 s idle, ~2.5 s CPU
#: on a loaded 2-core machine). Measured there, batch of 16, seed 0, statistics loss of the
#: noise 229; after 14 steps: lr 0.05 → 107, 0.1 → 96, 0.1 with β₁ = 0.5 → 87, 0.15 → 101,
#: 0.2 → 122 (and 0.2, 0.4, 0.6 with cosine decay → 117, 138, 163). Real photos score ~61.
DEFAULT_STEPS = 15
DEFAULT_LR = 0.1
#: Adam's betas: the fast first-moment decay of DeepInversion (β₁ = 0.5) suits this short run.
BETAS = (0.5, 0.999)

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


class _ChannelMoments(torch.autograd.Function):
    """Per-channel (dim 1) mean and biased variance of a tensor, with a fused backward.

    Sums of x and x² (one pass each) are ~3x faster than ``mean`` + ``var`` over the non-channel
    dimensions of an NCHW tensor on CPU, and the one-``addcmul`` backward
    ``(g_mean + 2·g_var·(x − mean)) / count`` saves autograd's chain of broadcasts and products:
    a mobilenet-v2 step (batch of 16, 224×224, one thread) took 4.5 s against 4.8-6.2 s with
    plain autograd ops and 3.7-4.0 s with no statistics at all (measured on a loaded machine).
    float32 cancellation in ``E[x²] − mean²`` is harmless at the scales BatchNorm inputs have.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        mean = x.sum(dim=dims) / count
        var = ((x * x).sum(dim=dims) / count - mean * mean).clamp_min(0.0)
        ctx.save_for_backward(x, mean)
        ctx.count = count
        return mean, var

    @staticmethod
    def backward(ctx: Any, grad_mean: torch.Tensor, grad_var: torch.Tensor) -> torch.Tensor:
        x, mean = ctx.saved_tensors
        shape = [1] * x.dim()
        shape[1] = -1
        scale = (2.0 * grad_var / ctx.count).view(shape)
        offset = ((grad_mean - 2.0 * grad_var * mean) / ctx.count).view(shape)
        return torch.addcmul(offset, x, scale)


class _Stop(Exception):
    """Raised by the last BatchNorm's hook: nothing after it enters the loss."""


class _Probe:
    """Forward pre-hooks on BatchNorm layers adding up the ZeroQ statistics loss of their inputs."""

    def __init__(self, norms: Sequence[nn.modules.batchnorm._BatchNorm]) -> None:
        self.norms = list(norms)
        self.terms: list[torch.Tensor] = []
        self.seen: list[nn.Module] = []
        #: Stop the forward after this many BatchNorm calls (0: run it to the end).
        self.stop_after = 0

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        x = args[0]
        assert module.running_mean is not None and module.running_var is not None
        mean, var = _ChannelMoments.apply(x)
        std = (var + module.eps).sqrt()
        target_std = (module.running_var + module.eps).sqrt()
        self.terms.append(
            torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(std - target_std)
        )
        self.seen.append(module)
        if len(self.seen) == self.stop_after:
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
        with suppress(_Stop):
            model(x)
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


def _check_count(field: str, value: object, low: int, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(field, value, f"a whole number >= {low}, e.g. {example}")
    return value


def _check_positive(field: str, value: object, example: float, *, zero: bool = False) -> float:
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if not math.isfinite(number) or (number < 0 if zero else number <= 0):
        which = "a finite number >= 0" if zero else "a finite number > 0"
        raise InputError(field, value, f"{which}, e.g. {example}")
    return number


def synthesize_inputs(
    model: nn.Module,
    example_input: torch.Tensor,
    n: int = 32,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch: int = 16,
    seed: int = 0,
    tv_weight: float = 1e-4,
) -> SynthesizedInputs:
    """``n`` calibration inputs for ``model`` synthesised from its BatchNorm statistics (ZeroQ).

    The inputs are made ``batch`` at a time (each batch matches the statistics on its own, as a
    calibration batch does): standard normal noise of shape ``[b, *example_input.shape[1:]]``
    from a ``torch.Generator`` seeded with ``seed``, then ``steps`` Adam steps (learning rate
    ``lr``, betas ``BETAS``) on the loss in the module docstring (``tv_weight`` weighs the
    total-variation prior of 4-D inputs). The same arguments give the same inputs (on the same
    machine and thread count). The model is left exactly as it was. Cost: ``steps`` forward and
    backward passes over each batch (mobilenet-v2, ``n=32`` at 224×224: see ``DEFAULT_STEPS``).

    Raises ``InputError`` on the field ``"calibration"`` when the example input is not a float
    batch tensor or the model has no BatchNorm with running statistics (``can_synthesize``
    checks first), and on the argument's name for a bad ``n``, ``steps``, ``lr``, ``batch`` or
    ``tv_weight``.
    """
    start = time.perf_counter()
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        value = (
            example_input.dtype if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        )
        raise InputError("calibration", f"model input of type {value}", _FIX)
    if example_input.dim() < 2:
        raise InputError("calibration", f"model input of shape {tuple(example_input.shape)}", _FIX)
    norms = _norms(model)
    if not norms:
        raise InputError("calibration", f"{type(model).__name__} without BatchNorm running statistics", _FIX)
    n = _check_count("n", n, 1, 32)
    steps = _check_count("steps", steps, 1, DEFAULT_STEPS)
    batch = _check_count("batch", batch, 1, 16)
    lr = _check_positive("lr", lr, DEFAULT_LR)
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
        # One probing pass: which BatchNorms run, and which runs last (the forward stops there).
        x0 = torch.zeros((1, *shape), dtype=dtype, device=device)
        with torch.no_grad():
            probe.loss(model, x0)
        if not probe.seen:
            raise InputError("calibration", f"{type(model).__name__} whose forward uses no BatchNorm", _FIX)
        guided = len(set(probe.seen))
        probe.stop_after = len(probe.seen)
        for first in range(0, n, batch):
            b = min(batch, n - first)
            noise = torch.randn((b, *shape), generator=generator, dtype=torch.float32)
            x = noise.to(device=device, dtype=dtype).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=lr, betas=BETAS)
            for step in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss = probe.loss(model, x)
                if step == 0:
                    initial.append(float(loss.detach()))
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
    description = (
        f"{n} inputs synthesised from {guided} BatchNorm layers' statistics (ZeroQ), {steps} steps; "
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
