"""A compressed model as ONNX, checked against torch at export (issue 19).

``export_onnx`` writes what ``apply(..., execution="simulate")`` built as a model ONNX Runtime
runs:

- low rank and channel pruning are already smaller dense layers, exported as they are;
- token pruning is a top-k and a gather in the graph (torch.export traces it);
- quantised layers whose weights *and* inputs have at most 8 bits become int8 QDQ nodes through
  ONNX Runtime's static quantisation (``quantize_static``, per-channel int8 weights, uint8
  activations), calibrated on the calibration inputs given: ONNX Runtime runs them on its int8
  kernels. A layer with fewer than 8 bits runs at int8 there (no 4-bit conv kernel exists in ONNX
  Runtime), so the int8 model is checked for agreement with the simulated torch model rather than
  for equality. A weight-only quantised layer (inputs at 16 or 32 bits) stays float with its
  weights on their grid, and says so.

Every export is checked: the float graph against the torch model with the quantised layers
unwrapped (maximum absolute error, which must stay within tolerance, else ``ExportError``), and
the int8 graph against the simulated torch model (top-1 agreement and mean cosine). The file
is written atomically: a failed export leaves nothing at ``path``.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._bench import Timing, time_callable
from ._quant import QuantizedLayer, fold_batchnorm, is_dynamic_int8

__all__ = ["ExportError", "OnnxExport", "export_onnx", "onnx_session", "time_onnx"]

#: The ONNX opset written (torch.export's exporter; QDQ with per-channel axes needs >= 13).
OPSET = 18
#: The float graph must match torch within ``ATOL + RTOL * max|output|``.
ATOL = 1e-4
RTOL = 1e-3
#: At most this many calibration inputs feed ONNX Runtime's static quantisation.
MAX_CALIBRATION_INPUTS = 64
_GEMM_OPS = ("Conv", "Gemm", "MatMul")


class ExportError(RuntimeError):
    """The model could not be exported, or its ONNX graph does not compute what torch does."""


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote and how it checked it.

    ``max_abs_error`` is the float graph against torch (quantised layers unwrapped: weights on
    their grid, inputs not rounded), over ``n_check_inputs`` inputs, ``tolerance`` its bound.
    ``int8_layers`` run as int8 QDQ in ONNX Runtime; the int8 graph is compared with the
    simulated torch model by ``int8_agreement`` (share of rows with the same top-1 over the last
    dimension: the measure for class scores), ``int8_cosine`` (mean cosine of the output rows:
    the measure for embeddings) and ``int8_max_abs_error``.
    ``float_layers`` are quantised layers exported in float, with the reason in ``notes``."""

    path: str
    opset: int
    dynamic_batch: bool
    bytes: int
    seconds: float
    n_check_inputs: int
    max_abs_error: float
    tolerance: float
    int8_layers: tuple[str, ...] = ()
    int8_nodes: int = 0
    int8_agreement: float | None = None
    int8_cosine: float | None = None
    int8_max_abs_error: float | None = None
    float_layers: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for an artifact's ``onnx.json``)."""
        data = asdict(self)
        data["int8_layers"] = list(self.int8_layers)
        data["float_layers"] = list(self.float_layers)
        data["notes"] = list(self.notes)
        return data


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads (one by default,
    so checks and timings do not depend on the machine's core count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_onnx(
    path: str | Path,
    example_input: torch.Tensor,
    reference: str | Path | None = None,
    *,
    repeats: int = 30,
    warmup: int = 5,
    inner: int = 1,
    threads: int = 1,
) -> Timing:
    """Time the ONNX model at ``path`` in ONNX Runtime on ``example_input``, interleaved with the
    ONNX model at ``reference`` (the uncompressed model, typically) on the same input: the same
    harness and the same drift-cancelling ratio as ``time_model``, with ``threads`` intra-op
    threads in both sessions."""
    session = onnx_session(path, threads)
    feed = {session.get_inputs()[0].name: example_input.numpy()}
    ref_session = onnx_session(reference, threads) if reference is not None else None
    ref_feed = {ref_session.get_inputs()[0].name: example_input.numpy()} if ref_session is not None else {}
    return time_callable(
        lambda: session.run(None, feed),
        (lambda: ref_session.run(None, ref_feed)) if ref_session is not None else None,
        repeats=repeats,
        warmup=warmup,
        inner=inner,
        threads=threads,
    )


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple) and out:
        return _first_tensor(out[0])
    raise ExportError(f"the model's output is a {type(out).__name__}, not a tensor or a tuple of them")


def _unwrap_quantized(model: nn.Module) -> list[tuple[str, QuantizedLayer]]:
    """Replace every QuantizedLayer by its inner layer (weights already on their grid), in place;
    returns the replaced layers by name."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantizedLayer)]
    for name, layer in found:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.Sequential) and attr.isdigit():
            parent[int(attr)] = layer.inner
        else:
            setattr(parent, attr, layer.inner)
    return found


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx prints its progress to stdout and warns about the exporter's internals."""
    # onnxruntime.quantization logs its advice through the root logger; the exporter logs each
    # torchvision operator it cannot register (torchvision is not installed here, by design).
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_graph(model: nn.Module, example_input: torch.Tensor, path: Path, notes: list[str]) -> bool:
    """torch.export → ONNX at ``path``; a dynamic batch dimension where the model allows one.
    Returns whether the batch is dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    attempts: list[tuple[bool, Any]] = [(True, ({0: batch},)), (False, None)]
    last: Exception | None = None
    for dynamic, shapes in attempts:
        try:
            with _quiet(), torch.no_grad():
                torch.onnx.export(
                    model,
                    (example_input,),
                    str(path),
                    dynamo=True,
                    external_data=False,
                    opset_version=OPSET,
                    dynamic_shapes=shapes,
                    input_names=["input"],
                    output_names=["output"],
                )
            if not dynamic:
                notes.append(f"the batch dimension is fixed at {example_input.shape[0]}: {last}"[:300])
            return dynamic
        except Exception as exc:
            last = exc
    raise ExportError(f"torch.onnx.export failed: {_summary(last)}") from last


def _summary(exc: Exception | None) -> str:
    """The line of the exporter's error that names the cause (its "Exception summary"), without
    the terminal colours and the generic next steps around it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def _perturbed(example: torch.Tensor, n: int = 2) -> list[torch.Tensor]:
    """Inputs beside the example that a graph specialised to the example (a branch taken, a value
    folded to a constant) would get wrong: float inputs with seeded noise at their own scale,
    integer inputs (token ids) with their values shuffled, so every id stays valid."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        if example.is_floating_point():
            scale = float(example.float().std()) if example.numel() > 1 else 1.0
            noise = torch.randn(example.shape, generator=generator) * (0.5 * (scale or 1.0))
            out.append((example + noise.to(example.dtype)).contiguous())
        else:
            order = torch.randperm(example.numel(), generator=generator)
            out.append(example.flatten()[order].view_as(example).contiguous())
    return out


def _batches_for(inputs: Sequence[torch.Tensor], dynamic: bool, example: torch.Tensor) -> list[torch.Tensor]:
    """Inputs the graph accepts: as given when the batch is dynamic, else one row at a time
    padded to the example's fixed batch by repetition."""
    if dynamic:
        return [x for x in inputs if x.shape[1:] == example.shape[1:]]
    rows = [row.unsqueeze(0) for x in inputs if x.shape[1:] == example.shape[1:] for row in x]
    n = example.shape[0]
    return [row.expand(n, *row.shape[1:]).contiguous() for row in rows]


def _run(session: Any, x: torch.Tensor) -> torch.Tensor:
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _compare(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float | None, float | None]:
    """(max |a - b|, top-1 agreement over the last dimension, mean cosine per row). Agreement is
    what matters for class scores, cosine for embeddings; the caller knows which its model has."""
    if not a:
        return 0.0, None, None
    err = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    total = sum(x.argmax(-1).numel() for x in a)
    cosine = torch.nn.functional.cosine_similarity
    pairs = zip(a, b, strict=True)
    cos = [float(cosine(x.flatten(1).double(), y.flatten(1).double(), dim=1).mean()) for x, y in pairs]
    return err, same / max(total, 1), sum(cos) / len(cos)


def _scopes(node: Any) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                value = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [str(v) for v in value] if isinstance(value, list) else []
    return []


def _nodes_of(graph_path: Path, layers: Sequence[str]) -> list[str]:
    """The Conv / Gemm / MatMul nodes that the torch modules ``layers`` became (by the module
    path torch.export records on each node)."""
    import onnx

    wanted = set(layers)
    model = onnx.load(str(graph_path))
    return [n.name for n in model.graph.node if n.op_type in _GEMM_OPS and wanted & set(_scopes(n))]


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over tensors."""

    def __init__(self, name: str, batches: Sequence[torch.Tensor]) -> None:
        self._items = iter([{name: b.numpy()} for b in batches])

    def get_next(self) -> dict[str, Any] | None:
        return next(self._items, None)


def _quantize_static(
    float_path: Path, out_path: Path, nodes: list[str], batches: list[torch.Tensor], input_name: str
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet():
        quantize_static(
            str(float_path),
            str(out_path),
            _Reader(input_name, batches),
            quant_format=QuantFormat.QDQ,
            nodes_to_quantize=nodes,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    *,
    calibration: Sequence[torch.Tensor] | None = None,
    check_inputs: Sequence[torch.Tensor] | None = None,
) -> OnnxExport:
    """Write ``model`` (a compressed model from ``apply(..., execution="simulate")``, or any
    model) as ONNX at ``path`` and check it (see the module docstring).

    ``calibration``: inputs for ONNX Runtime's static quantisation of the int8 layers (the job's
    calibration split); without them those layers stay float, weights on their grid, and a note
    says so. ``check_inputs``: the inputs the graph is checked on (the evaluation inputs where
    the caller has them), else the calibration inputs; the example input and two perturbed
    copies of it are always added, so a graph specialised to the example is caught.

    Raises ``ExportError`` when torch cannot export the model or the float graph differs from
    torch beyond tolerance; nothing is left at ``path`` then.
    """
    start = time.perf_counter()
    if any(is_dynamic_int8(m) for m in model.modules()):
        raise ExportError(
            "the model holds torch's dynamic int8 Linear layers (execution='int8'); export the model "
            "apply(..., execution='simulate') built: its int8 layers become ONNX QDQ nodes"
        )
    out = Path(path)
    notes: list[str] = []
    float_model = copy.deepcopy(model).eval()
    quantized = _unwrap_quantized(float_model)
    int8 = [name for name, q in quantized if q.wbits <= 8 and q.abits <= 8]
    float_only = [name for name, q in quantized if name not in int8]
    for name, q in quantized:
        if name in int8 and (q.wbits < 8 or q.abits < 8):
            notes.append(f"{name}: W{q.wbits}A{q.abits} runs at W8A8 in ONNX Runtime (no lower-bit kernel)")
        elif name not in int8:
            notes.append(
                f"{name}: W{q.wbits}A{q.abits}: ONNX Runtime's int8 kernels need weights and inputs at <= 8 "
                "bits; exported in float, weights on their grid"
            )
    # Folded BatchNorms keep each conv's node tied to its module path (the exporter's own fusion
    # would name the fused node after the BatchNorm), which the int8 node selection relies on.
    fold_batchnorm(float_model, example_input)
    with torch.no_grad():
        float_model(example_input)  # fail here, with torch's error, before exporting

    calib = list(calibration or [])
    checks = [*(list(check_inputs) if check_inputs else calib[:8]), example_input, *_perturbed(example_input)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=out.parent) as tmp:
        float_path = Path(tmp) / "float.onnx"
        dynamic = _export_graph(float_model, example_input, float_path, notes)
        inputs = _batches_for(checks, dynamic, example_input) or [example_input]
        session = onnx_session(float_path)
        with torch.no_grad():
            want = [_first_tensor(float_model(x)) for x in inputs]
        got = [_run(session, x) for x in inputs]
        err, _, _ = _compare(got, want)
        scale = max(float(w.abs().max()) for w in want)
        tolerance = ATOL + RTOL * scale
        if not err <= tolerance:  # also catches NaN
            raise ExportError(
                f"the ONNX graph differs from torch by {err:.3g} (tolerance {tolerance:.3g}) on "
                f"{len(inputs)} inputs; the model uses an operator ONNX Runtime computes differently"
            )
        final = float_path
        int8_nodes: list[str] = []
        agreement = cosine = int8_err = None
        if int8 and not calib:
            notes.append("no calibration inputs: the int8 layers stay float, weights on their grid")
            float_only, int8 = float_only + int8, []
        elif int8:
            int8_nodes = _nodes_of(float_path, int8)
            if not int8_nodes:
                notes.append("no ONNX node could be tied to the quantised layers; exported in float")
                float_only, int8 = float_only + int8, []
            else:
                q_path = Path(tmp) / "int8.onnx"
                calib_in = _batches_for(calib, dynamic, example_input)[:MAX_CALIBRATION_INPUTS]
                _quantize_static(float_path, q_path, int8_nodes, calib_in, session.get_inputs()[0].name)
                q_session = onnx_session(q_path)
                with torch.no_grad():
                    simulated = [_first_tensor(model(x)) for x in inputs]
                int8_err, agreement, cosine = _compare([_run(q_session, x) for x in inputs], simulated)
                final = q_path
        staged = Path(tmp) / "final.onnx"
        os.replace(final, staged)
        os.replace(staged, out)
    return OnnxExport(
        path=str(out),
        opset=OPSET,
        dynamic_batch=dynamic,
        bytes=out.stat().st_size,
        seconds=round(time.perf_counter() - start, 2),
        n_check_inputs=sum(x.shape[0] for x in inputs),
        max_abs_error=err,
        tolerance=tolerance,
        int8_layers=tuple(int8),
        int8_nodes=len(int8_nodes),
        int8_agreement=agreement,
        int8_cosine=cosine,
        int8_max_abs_error=int8_err,
        float_layers=tuple(float_only),
        notes=tuple(notes),
    )
