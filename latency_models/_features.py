"""Network features for learned predictors, built from the layer vocabulary (any search space).

For each kind of layer (k×k conv, 1×1 conv, depthwise conv, grouped conv, linear, attention
matmuls) a network contributes: the number of GEMMs, their MACs, the bytes they move and the
analytic prior's latency of them on the target. The prior's total is a feature too, so a
learned model only has to learn the device's departure from the roofline/FPGA model (the
nn-Meter decomposition: a network costs the sum of its kernels plus an overhead).

A measured layer (a per-layer table row) is costed as a one-layer network in the same
vocabulary (``layer_features``), so every feature of a network is the sum of its layers'
features (batch aside), and a predictor that is additive in them (``Predictor.fit_layers``)
fitted on layers predicts networks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from search_spaces import LayerKind, LayerSpec, Plan, SpaceError

from ._family import create_family
from ._gemm import GRAPH_CLASSES, Gemms, GraphWork, graph_work, plan_gemms
from ._measurements import LayerMeasurement, choice_error
from ._target import Target

GROUPS: tuple[str, ...] = ("conv_kxk", "conv_1x1", "depthwise", "grouped", "linear", "attention")
PER_GROUP: tuple[str, ...] = ("count", "macs", "bytes", "prior_ms")
FEATURE_NAMES: tuple[str, ...] = (
    *(f"{g}_{f}" for g in GROUPS for f in PER_GROUP),
    "pooling_count",
    "total_macs",
    "total_bytes",
    "prior_ms",
    "batch",
)
#: Non-GEMM work of the whole graph (kernels' graph trace; pooling layers too), appended after
#: the GEMM features so that the historical names keep their columns: per op class its op
#: count, bytes and memory-roofline prior; then the dead work (GEMMs of layers and graph ops
#: none of whose outputs reaches the model output): its GEMM plus op count, GEMM MACs and prior.
#: The dead work is also inside the per-group and per-class columns (it runs all the same).
GRAPH_PER_CLASS: tuple[str, ...] = ("count", "bytes", "prior_ms")
GRAPH_FEATURES: tuple[str, ...] = (
    *(f"graph_{c}_{f}" for c in GRAPH_CLASSES for f in GRAPH_PER_CLASS),
    "graph_dead_count",
    "graph_dead_macs",
    "graph_dead_prior_ms",
)
FEATURE_NAMES = (*FEATURE_NAMES, *GRAPH_FEATURES)


def _group_of(layer: LayerSpec) -> int:
    if layer.kind is LayerKind.ATTENTION:
        return GROUPS.index("attention")
    if layer.kind is LayerKind.LINEAR:
        return GROUPS.index("linear")
    if layer.kind is LayerKind.DEPTHWISE_CONV2D:
        return GROUPS.index("depthwise")
    if layer.kind is LayerKind.GROUPED_CONV2D:
        return GROUPS.index("grouped")
    if layer.kernel_size == (1, 1):
        return GROUPS.index("conv_1x1")
    return GROUPS.index("conv_kxk")


def network_features(
    target: Target, layers: Sequence[LayerSpec], plan: Plan, batch: int = 1
) -> npt.NDArray[np.float64]:
    """One row of ``FEATURE_NAMES`` for ``plan`` over ``layers`` on ``target``.

    Batch scales MACs, bytes of activations and the prior (weights are read once per batch).
    """
    gemms = plan_gemms(layers, plan)
    family = create_family(target.family)
    prior = family.estimate(target, _batched(gemms, batch)).latency_ms
    work = _batched_work(graph_work(layers), batch)
    work_prior = family.estimate_graph(target, work)
    kinds = np.array([_group_of(layers[i]) for i in gemms.layer], dtype=np.int64)
    macs = gemms.macs * batch
    moved = gemms.weight_bytes + (gemms.in_bytes + gemms.out_bytes) * batch
    row = np.zeros(len(FEATURE_NAMES))
    for g in range(len(GROUPS)):
        mask = kinds == g
        base = g * len(PER_GROUP)
        row[base : base + 4] = (mask.sum(), macs[mask].sum(), moved[mask].sum(), prior[mask].sum())
    tail = len(GROUPS) * len(PER_GROUP)
    row[tail] = sum(1 for layer in layers if layer.kind is LayerKind.POOLING)
    row[tail + 1 : tail + 5] = (macs.sum(), moved.sum(), prior.sum() + work_prior.sum(), batch)
    base = FEATURE_NAMES.index(GRAPH_FEATURES[0])
    for c in range(len(GRAPH_CLASSES)):
        mask = work.op_class == c
        at = base + c * len(GRAPH_PER_CLASS)
        row[at : at + 3] = (work.count[mask].sum(), work.bytes[mask].sum(), work_prior[mask].sum())
    dead_gemm = np.array([layers[i].extra.get("live", True) is False for i in gemms.layer], dtype=bool)
    dead_work = ~work.live
    row[FEATURE_NAMES.index("graph_dead_count") :] = (
        dead_gemm.sum() + work.count[dead_work].sum(),
        macs[dead_gemm].sum(),
        prior[dead_gemm].sum() + work_prior[dead_work].sum(),
    )
    return row


def layer_features(target: Target, rows: Sequence[LayerMeasurement]) -> npt.NDArray[np.float64]:
    """One row of ``FEATURE_NAMES`` per measured layer: the layer alone as a network, under a
    one-layer plan of its Choice (batch 1). A row that does not cost names its CSV row
    (1-based, header = row 1)."""
    out = np.zeros((len(rows), len(FEATURE_NAMES)))
    for i, row in enumerate(rows):
        try:
            out[i] = network_features(target, [row.layer], Plan({row.layer.name: row.choice}))
        except SpaceError as exc:
            raise choice_error(i + 2, exc) from None
    return out


def _batched_work(work: GraphWork, batch: int) -> GraphWork:
    """The same non-GEMM work for ``batch`` examples: bytes scale, op counts do not."""
    return work if batch == 1 else replace(work, bytes=work.bytes * batch)


def _batched(gemms: Gemms, batch: int) -> Gemms:
    """The same GEMMs for ``batch`` examples: rows and activations scale, weights do not."""
    if batch == 1:
        return gemms
    return replace(
        gemms, m=gemms.m * batch, in_bytes=gemms.in_bytes * batch, out_bytes=gemms.out_bytes * batch
    )
