"""A compressed model as TorchScript, and the torch runtime's micro-benchmarks, for a device agent
that measures in torch (``hwsearch agent --runtime torch``, issue 19).

An agent on a board cannot rebuild the compressed model (it has neither the model's code, its
weights nor the user's data), so the service sends it the model as a file that torch alone
runs. ``torch.export`` cannot serialise torch's dynamic int8 Linear (its packed weights are a
TorchBind object without ``__obj_flatten__``: ``torch.export.save`` raised on every int8 plan
of digits-cnn, minilm-l6 and mobilenet-v2 with torch 2.13), so the file is a TorchScript trace
of the model as a CPU deployment runs it (``apply(..., execution="int8")``: int8 Linear layers
on torch's int8 kernels). torch marks TorchScript deprecated; it is still the one torch format
that carries those layers. A trace is specialised to the example input's shapes (the token count
of a token-pruned block is a constant in it), which is what a latency measurement times.

Every trace is checked against the eager model on the example input and two perturbed copies
(maximum error within ``ATOL + RTOL * max|output|``, else ``ExportError``) and written
atomically. TorchScript's interpreter skips Python's per-module overhead, so a model measured
this way pays less per op than in eager torch (``host-cpu``): ``probe_torch_runtime(scripted=
True)`` measures that per-op cost the same way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._bench import time_callable
from ._onnx import ExportError, _first_tensor, _perturbed

__all__ = ["TorchScriptExport", "export_torchscript", "load_torchscript", "probe_torch_runtime"]

#: The trace must match the eager model within ``ATOL + RTOL * max|output|``.
ATOL = 1e-4
RTOL = 1e-3


@dataclass(frozen=True)
class TorchScriptExport:
    """What ``export_torchscript`` wrote and how well the trace matches the eager model."""

    path: str
    file_bytes: int
    max_abs_error: float
    tolerance: float
    n_checked: int
    torch_version: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # Tracing warns on every Python int taken from a tensor (the shapes it specialises, by
    # design) and on TorchScript's deprecation.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_torchscript(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    *,
    check_inputs: Sequence[torch.Tensor] = (),
) -> TorchScriptExport:
    """Trace ``model`` (eval mode) on ``example_input`` and write it as TorchScript at ``path``,
    checked against the eager model (see the module docstring). ``ExportError`` when torch
    cannot trace it or the trace differs; nothing is left at ``path`` then."""
    start = time.perf_counter()
    out = Path(path)
    model = model.eval()
    inputs = [example_input, *_perturbed(example_input), *check_inputs]
    try:
        with _quiet(), torch.inference_mode():
            traced = torch.jit.trace(model, example_input, check_trace=False)
            expected = [_first_tensor(model(x)) for x in inputs]
            got = [_first_tensor(traced(x)) for x in inputs]
    except ExportError:
        raise
    except Exception as exc:  # torch's tracer raises many kinds; the message names the op
        raise ExportError(f"torch could not trace the model: {type(exc).__name__}: {exc}") from exc
    err = max(float((a.float() - b.float()).abs().max()) for a, b in zip(expected, got, strict=True))
    tolerance = ATOL + RTOL * max(float(e.float().abs().max()) for e in expected)
    if not err <= tolerance:
        raise ExportError(
            f"the TorchScript trace differs from the eager model by {err:.3g} (tolerance {tolerance:.3g}): "
            "the model's control flow depends on its input, which a trace cannot follow"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        with _quiet():
            torch.jit.save(traced, staged)
        os.replace(staged, out)
    finally:
        Path(staged).unlink(missing_ok=True)
    return TorchScriptExport(
        path=str(out),
        file_bytes=out.stat().st_size,
        max_abs_error=err,
        tolerance=tolerance,
        n_checked=len(inputs),
        torch_version=torch.__version__,
        seconds=time.perf_counter() - start,
    )


def load_torchscript(path: str | Path) -> Any:
    """A TorchScript file, loaded on the CPU for inference (what the torch agent times)."""
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu").eval()


def probe_torch_runtime(*, threads: int = 1, repeats: int = 7, scripted: bool = False) -> dict[str, Any]:
    """The torch runtime's micro-benchmarks on this machine, on ``threads`` threads (medians, ms):
    ``fp32_ms`` a 512³ float32 matmul, ``int8_ms`` torch's dynamic int8 Linear of the same size,
    ``copy_ms`` a 32 MB clone (``copy_bytes``), ``per_op_ms`` one op's cost: one eager
    8-element add, or (``scripted``) 64 chained adds in a TorchScript function against one, per op,
    as a TorchScript model pays it. ``latency_models.runtime_target`` turns them into a target."""
    from ._quant import to_int8_dynamic

    def median_ms(fn: Any) -> float:
        return time_callable(fn, repeats=repeats, warmup=2, threads=threads).median_ms

    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    linear = to_int8_dynamic(nn.Linear(n, n, bias=False).eval())
    big = torch.empty(32 * 1024 * 1024 // 4)  # 32 MB: beyond any cache here
    tiny = torch.randn(8)
    probe: dict[str, Any] = {
        "n": n,
        "fp32_ms": median_ms(lambda: a @ b),
        "int8_ms": median_ms(lambda: linear(a)),
        "copy_bytes": big.numel() * 4,
        "copy_ms": median_ms(lambda: big.clone()),
        "threads": threads,
        "torch": torch.__version__,
    }
    if scripted:
        with _quiet():
            one = torch.jit.trace(lambda x: x + 1, tiny)
            chained = torch.jit.trace(_chain64, tiny)
        probe["per_op_ms"] = max(median_ms(lambda: chained(tiny)) - median_ms(lambda: one(tiny)), 0.0) / 63
    else:
        probe["per_op_ms"] = median_ms(lambda: tiny + 1)
    return probe


def _chain64(x: torch.Tensor) -> torch.Tensor:
    for _ in range(64):
        x = x + 1
    return x
