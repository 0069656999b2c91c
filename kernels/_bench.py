"""Micro-benchmark harness: time an operator or a model against a dense reference, interleaved.

Single timings on shared machines drift 20-45% between rounds; the ratio to a reference
measured in the same loop is far steadier (within about 5%). Every round times the candidate
and the reference back to back (alternating which goes first, so neither always runs on a
warm cache), and the result reports both the absolute medians and the median of the
per-round ratios.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Timing:
    """Medians and spread in milliseconds; ``speedup`` = reference / candidate (per-round median)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    reference_median_ms: float | None
    speedup: float | None
    speedup_p10: float | None
    speedup_p90: float | None
    repeats: int
    threads: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def _timer(fn: Callable[[], Any], device: str, inner: int) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000.0 / inner


def time_callable(
    fn: Callable[[], Any],
    reference: Callable[[], Any] | None = None,
    *,
    repeats: int = 30,
    warmup: int = 5,
    inner: int = 1,
    threads: int = 1,
    device: str = "cpu",
) -> Timing:
    """Time ``fn`` (and ``reference``, interleaved) ``repeats`` rounds of ``inner`` calls each."""
    if repeats < 1 or warmup < 0 or inner < 1 or threads < 1:
        raise ValueError(
            "`repeats >= 1, warmup >= 0, inner >= 1, threads >= 1` must hold, but got "
            f"(repeats={repeats}, warmup={warmup}, inner={inner}, threads={threads})"
        )
    cand: list[float] = []
    ref: list[float] = []
    ratios: list[float] = []
    with _threads(threads), torch.inference_mode():
        for _ in range(warmup):
            fn()
            if reference is not None:
                reference()
        for i in range(repeats):
            if reference is None:
                cand.append(_timer(fn, device, inner))
                continue
            if i % 2 == 0:
                c = _timer(fn, device, inner)
                r = _timer(reference, device, inner)
            else:
                r = _timer(reference, device, inner)
                c = _timer(fn, device, inner)
            cand.append(c)
            ref.append(r)
            ratios.append(r / c)
    return Timing(
        median_ms=statistics.median(cand),
        p10_ms=_quantile(cand, 0.1),
        p90_ms=_quantile(cand, 0.9),
        reference_median_ms=statistics.median(ref) if ref else None,
        speedup=statistics.median(ratios) if ratios else None,
        speedup_p10=_quantile(ratios, 0.1) if ratios else None,
        speedup_p90=_quantile(ratios, 0.9) if ratios else None,
        repeats=repeats,
        threads=threads,
        device=device,
    )


def time_model(
    model: nn.Module,
    example_input: torch.Tensor,
    reference: nn.Module | None = None,
    **kwargs: Any,
) -> Timing:
    """Time ``model(example_input)`` in eval mode, against ``reference`` on the same input."""
    device = kwargs.pop("device", "cuda" if example_input.is_cuda else "cpu")
    model.eval()
    if reference is not None:
        reference.eval()
    return time_callable(
        lambda: model(example_input),
        (lambda: reference(example_input)) if reference is not None else None,
        device=device,
        **kwargs,
    )
