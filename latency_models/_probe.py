"""Measuring a runtime on a device without torch (issue 19): what a device agent runs.

``measure_runtime_target`` times ONNX graphs in ONNX Runtime (a float32 MatMul, an int8
MatMulInteger, a 32 MB elementwise pass and the per-op cost from chained tiny ops) and turns them
into a ``Target`` whose every number says how it was measured. ``interleaved_timing`` is the
project's timing method (a candidate and its reference back to back each round, the order
alternating, the speed-up the median of the per-round ratios) with nothing but the standard
library, so an agent on a board needs only onnxruntime, numpy and the hwsearch client.
``kernels.time_callable`` is the same method for torch models.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._target import Target

__all__ = [
    "RuntimeTiming",
    "interleaved_timing",
    "measure_runtime_target",
    "ort_session",
    "runtime_target",
]


class RuntimeTiming(dict[str, Any]):
    """``median_ms``, ``p10_ms``, ``p90_ms``, ``reference_median_ms``, ``speedup`` (reference /
    candidate, median of the per-round ratios), ``speedup_p10``, ``speedup_p90``, ``repeats``,
    ``inner``: a plain dict, so it goes into JSON as it is."""


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _round_ms(fn: Callable[[], Any], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) * 1000.0 / inner


def interleaved_timing(
    fn: Callable[[], Any],
    reference: Callable[[], Any] | None = None,
    *,
    repeats: int = 30,
    warmup: int = 5,
    inner: int = 1,
) -> RuntimeTiming:
    """Time ``fn`` (and ``reference``, interleaved) ``repeats`` rounds of ``inner`` calls each."""
    if repeats < 1 or warmup < 0 or inner < 1:
        raise ValueError(
            "`repeats >= 1, warmup >= 0, inner >= 1` must hold, but got "
            f"(repeats={repeats}, warmup={warmup}, inner={inner})"
        )
    cand: list[float] = []
    ref: list[float] = []
    ratios: list[float] = []
    for _ in range(warmup):
        fn()
        if reference is not None:
            reference()
    for i in range(repeats):
        if reference is None:
            cand.append(_round_ms(fn, inner))
            continue
        if i % 2 == 0:
            c, r = _round_ms(fn, inner), _round_ms(reference, inner)
        else:
            r, c = _round_ms(reference, inner), _round_ms(fn, inner)
        cand.append(c)
        ref.append(r)
        ratios.append(r / c)
    return RuntimeTiming(
        median_ms=statistics.median(cand),
        p10_ms=_quantile(cand, 0.1),
        p90_ms=_quantile(cand, 0.9),
        reference_median_ms=statistics.median(ref) if ref else None,
        speedup=statistics.median(ratios) if ratios else None,
        speedup_p10=_quantile(ratios, 0.1) if ratios else None,
        speedup_p90=_quantile(ratios, 0.9) if ratios else None,
        repeats=repeats,
        inner=inner,
    )


def ort_session(model: bytes | str, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _graph(build: Callable[[Any], tuple[list[Any], list[Any], list[Any], list[Any]]]) -> bytes:
    """A one-graph ONNX model (nodes, inputs, outputs, initializers from ``build(helper)``)."""
    import onnx
    from onnx import helper

    nodes, inputs, outputs, inits = build(helper)
    graph = helper.make_graph(nodes, "probe", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _median_ms(model: bytes, feed: dict[str, Any], repeats: int, threads: int) -> float:
    session = ort_session(model, threads)
    return float(interleaved_timing(lambda: session.run(None, feed), repeats=repeats, warmup=2)["median_ms"])


def measure_runtime_target(
    name: str,
    *,
    runtime: str = "onnxruntime",
    threads: int = 1,
    repeats: int = 7,
    description: str | None = None,
    measured_by: str = "an hwsearch agent",
) -> Target:
    """This device running ``runtime`` as a Target named ``name``: MatMul (float32) and
    MatMulInteger (uint8 × int8) 512³ peaks, the bandwidth of a 32 MB Mul by one, and the per-op
    cost from 64 chained 8-element Adds against one, on ``threads`` intra-op threads."""
    if runtime != "onnxruntime":
        from ._errors import LatencyModelError

        raise LatencyModelError("runtime", runtime, "only 'onnxruntime' can be probed without torch")
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    n = 512
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "b")
    b8 = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "b8")
    a8 = rng.integers(0, 256, (n, n), dtype=np.uint8)
    one = numpy_helper.from_array(np.ones(1, dtype=np.float32), "one")
    big_n = 32 * 1024 * 1024 // 4

    def io(h: Any, name: str, kind: int, shape: list[int]) -> Any:
        return h.make_tensor_value_info(name, kind, shape)

    f32, u8, i32 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT32
    fp32 = _graph(
        lambda h: (
            [h.make_node("MatMul", ["a", "b"], ["y"])],
            [io(h, "a", f32, [n, n])],
            [io(h, "y", f32, [n, n])],
            [b],
        )
    )
    int8 = _graph(
        lambda h: (
            [h.make_node("MatMulInteger", ["a", "b8"], ["y"])],
            [io(h, "a", u8, [n, n])],
            [io(h, "y", i32, [n, n])],
            [b8],
        )
    )
    copy = _graph(
        lambda h: (
            [h.make_node("Mul", ["x", "one"], ["y"])],
            [io(h, "x", f32, [big_n])],
            [io(h, "y", f32, [big_n])],
            [one],
        )
    )

    def chain(k: int) -> bytes:
        names = ["x"] + [f"t{i}" for i in range(k - 1)] + ["y"]
        return _graph(
            lambda h: (
                [h.make_node("Add", [names[i], "one"], [names[i + 1]]) for i in range(k)],
                [io(h, "x", f32, [8])],
                [io(h, "y", f32, [8])],
                [one],
            )
        )

    fp32_ms = _median_ms(fp32, {"a": a}, repeats, threads)
    int8_ms = _median_ms(int8, {"a": a8}, repeats, threads)
    copy_ms = _median_ms(copy, {"x": np.ones(big_n, dtype=np.float32)}, repeats, threads)
    tiny = {"x": np.ones(8, dtype=np.float32)}
    chained_ms = _median_ms(chain(64), tiny, repeats, threads) - _median_ms(chain(1), tiny, repeats, threads)
    when = time.strftime("%Y-%m-%d", time.gmtime())
    how = (
        f"measured by {measured_by} on {when}, onnxruntime {ort.__version__}, {threads} intra-op "
        f"thread{'s' if threads != 1 else ''}, median of {repeats}"
    )
    probe = {
        "n": n,
        "fp32_ms": fp32_ms,
        "int8_ms": int8_ms,
        "copy_bytes": big_n * 4,
        "copy_ms": copy_ms,
        "per_op_ms": chained_ms / 63,
    }
    return runtime_target(
        name,
        probe,
        runtime="onnxruntime",
        description=description
        or f"{platform.machine()} device running ONNX Runtime, {threads} thread(s), measured",
        sources={
            "peak_macs_per_s": f"{n}×{n}×{n} MatMul (float32) and MatMulInteger (uint8 × int8), {how}",
            "memory_bandwidth_gb_s": f"32 MB Mul by one (read + write), {how}",
            "dispatch_overhead_ms": f"64 chained 8-element Adds against one, per op, {how}",
        },
    )


def runtime_target(
    name: str,
    probe: Mapping[str, Any],
    *,
    runtime: str,
    description: str,
    sources: Mapping[str, str],
) -> Target:
    """A measured CPU target from its runtime's micro-benchmarks (``probe``): an ``n``³ float32
    and int8 GEMM (``fp32_ms``, ``int8_ms``), a copy of ``copy_bytes`` read and written
    (``copy_ms``) and the cost of one op (``per_op_ms``). ``sources`` says how each was measured.
    What every probe (ONNX Runtime here, torch in ``kernels.probe_torch_runtime``) turns its
    timings into."""
    n, fp32_ms, int8_ms = int(probe["n"]), float(probe["fp32_ms"]), float(probe["int8_ms"])
    copy_bytes, copy_ms, per_op_ms = (
        float(probe["copy_bytes"]),
        float(probe["copy_ms"]),
        float(probe["per_op_ms"]),
    )
    macs = n**3
    return Target.from_dict(
        {
            "name": name,
            "family": "cpu",
            "description": description,
            "peak_macs_per_s": {
                "32": macs / (fp32_ms / 1e3),
                # An int8 path slower than float (no int8 kernel) is no int8 peak: float runs it.
                "8": max(macs / (int8_ms / 1e3), macs / (fp32_ms / 1e3)),
            },
            "memory_bandwidth_gb_s": 2 * copy_bytes / (copy_ms / 1e3) / 1e9,
            "onchip_memory_mb": 1.0,
            "dispatch_overhead_ms": max(per_op_ms, 1e-6),
            "compute_efficiency": 1.0,
            "runtime": runtime,
            "sources": {
                **sources,
                "onchip_memory_mb": "not measured; placeholder",
                "compute_efficiency": "1.0: the peaks are themselves attained GEMM throughput",
            },
        }
    )
