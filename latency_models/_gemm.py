"""The GEMMs a plan runs: every layer of an inventory, after the plan, as (G, M, N, K) matmuls.

A Linear is one GEMM (M rows, K inputs, N outputs); a conv is an implicit GEMM with M output
positions, K = in/groups · kh · kw and G groups; a low-rank layer is two GEMMs; an attention
block is two batched GEMMs per head (QK^T and AV). Shapes come from
``search_spaces.layer_costs``, which mirrors exactly what ``kernels.apply`` builds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from search_spaces import LayerKind, LayerSpec, Plan, layer_costs

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Gemms:
    """Column arrays, one entry per GEMM; ``layer`` indexes the inventory."""

    layer: npt.NDArray[np.int64]
    groups: Array
    m: Array
    n: Array
    k: Array
    wbits: Array
    abits: Array
    in_bytes: Array
    out_bytes: Array

    @property
    def macs(self) -> Array:
        return self.groups * self.m * self.n * self.k

    @property
    def weight_bytes(self) -> Array:
        return self.groups * self.n * self.k * self.wbits / 8.0

    def __len__(self) -> int:
        return len(self.layer)


def plan_gemms(layers: Iterable[LayerSpec], plan: Plan) -> Gemms:
    """The GEMMs of ``plan`` over ``layers`` (validated)."""
    inventory = list(layers)
    costs = {c.name: c for c in layer_costs(inventory, plan)}
    rows: list[tuple[int, float, float, float, float, float, float, float, float]] = []
    for index, layer in enumerate(inventory):
        cost = costs.get(layer.name)
        if cost is None:
            continue
        choice = plan[layer.name]
        wb, ab = float(choice.wbits), float(choice.abits)
        out_bits = 32.0
        if layer.kind is LayerKind.ATTENTION:
            n, d, h = cost.rows, layer.out_channels, max(1, layer.heads)
            act = n * d * 4.0
            rows.append((index, h, n, n, d / h, 32.0, 32.0, 2 * act, n * n * h * 4.0))
            rows.append((index, h, n, d / h, n, 32.0, 32.0, act + n * n * h * 4.0, act))
            continue
        c_in, c_out, rank = cost.in_channels, cost.out_channels, cost.rank
        if layer.kind is LayerKind.LINEAR:
            m = float(cost.rows)
            in_b, out_b = m * c_in * ab / 8, m * c_out * out_bits / 8
            if rank is None:
                rows.append((index, 1, m, c_out, c_in, wb, ab, in_b, out_b))
            else:
                rows.append((index, 1, m, rank, c_in, wb, ab, in_b, m * rank * out_bits / 8))
                rows.append((index, 1, m, c_out, rank, wb, ab, m * rank * ab / 8, out_b))
            continue
        kh, kw = layer.kernel_size
        oh, ow = layer.output_hw
        ih, iw = layer.input_hw
        groups = c_out if layer.kind is LayerKind.DEPTHWISE_CONV2D else layer.groups
        in_b, out_b = c_in * ih * iw * ab / 8, c_out * oh * ow * out_bits / 8
        if rank is None:
            rows.append(
                (index, groups, oh * ow, c_out / groups, (c_in / groups) * kh * kw, wb, ab, in_b, out_b)
            )
        elif (kh, kw) == (1, 1):
            mid = rank * oh * ow
            rows.append((index, 1, oh * ow, rank, c_in, wb, ab, in_b, mid * out_bits / 8))
            rows.append((index, 1, oh * ow, c_out, rank, wb, ab, mid * ab / 8, out_b))
        else:
            mid = rank * oh * iw
            rows.append((index, 1, oh * iw, rank, c_in * kh, wb, ab, in_b, mid * out_bits / 8))
            rows.append((index, 1, oh * ow, c_out, rank * kw, wb, ab, mid * ab / 8, out_b))
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 9)
    return Gemms(
        layer=table[:, 0].astype(np.int64),
        groups=table[:, 1],
        m=table[:, 2],
        n=table[:, 3],
        k=table[:, 4],
        wbits=table[:, 5],
        abits=table[:, 6],
        in_bytes=table[:, 7],
        out_bytes=table[:, 8],
    )


#: Op classes of non-GEMM work (kernels' graph trace), in feature order.
GRAPH_CLASSES: tuple[str, ...] = ("elementwise", "activation", "norm", "concat", "copy", "pooling")


@dataclass(frozen=True)
class GraphWork:
    """The non-GEMM entries of an inventory: one per pooling or elementwise LayerSpec.

    ``op_class`` indexes ``GRAPH_CLASSES``; ``count`` is the number of ops the entry folds
    (each pays the target's dispatch overhead); ``bytes`` the float32 bytes they read and write
    at batch 1; ``live`` False for dead work (it still runs, so it is still priced). The work is
    the same under every plan: pruning a coupled group shrinks the adds on it, which this
    ignores (a small over-estimate for pruned plans).
    """

    layer: npt.NDArray[np.int64]
    op_class: npt.NDArray[np.int64]
    count: Array
    bytes: Array
    live: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.layer)


def graph_work(layers: Iterable[LayerSpec]) -> GraphWork:
    """The pooling and elementwise entries of ``layers`` as memory-bound work."""
    rows: list[tuple[int, int, float, float, bool]] = []
    for index, layer in enumerate(layers):
        live = layer.extra.get("live", True) is not False
        if layer.kind is LayerKind.POOLING:
            ih, iw = layer.input_hw
            oh, ow = layer.output_hw
            moved = 4.0 * (layer.in_channels * ih * iw + layer.out_channels * oh * ow)
            rows.append((index, GRAPH_CLASSES.index("pooling"), 1.0, moved, live))
        elif layer.kind is LayerKind.ELEMENTWISE:
            cls = str(layer.extra.get("op_class", "elementwise"))
            cls_index = GRAPH_CLASSES.index(cls) if cls in GRAPH_CLASSES else 0
            count = float(layer.extra.get("count", 1))
            moved = float(layer.extra.get("bytes", 0.0))
            rows.append((index, cls_index, count, moved, live))
    return GraphWork(
        layer=np.array([r[0] for r in rows], dtype=np.int64),
        op_class=np.array([r[1] for r in rows], dtype=np.int64),
        count=np.array([r[2] for r in rows], dtype=np.float64),
        bytes=np.array([r[3] for r in rows], dtype=np.float64),
        live=np.array([r[4] for r in rows], dtype=bool),
    )
