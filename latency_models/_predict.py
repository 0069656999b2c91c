"""predict(target, layers, plan): the cost of a plan on a target, with where the number comes from."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from search_spaces import LayerSpec, Plan, plan_cost

from ._family import create_family
from ._gemm import graph_work, plan_gemms
from ._target import Target

ANALYTIC = "analytic prior (uncalibrated)"


@dataclass(frozen=True)
class CostPrediction:
    """Predicted cost of one plan on one target.

    ``provenance`` says where the latency comes from (DESIGN.md, "Honesty of numbers"): here
    always the analytic prior, until a learned predictor is fitted for the target.
    ``feasible`` is False when an FPGA design does not fit the board.
    """

    target: str
    latency_ms: float
    layer_latency_ms: dict[str, float]
    macs: int
    weight_bytes: int
    provenance: str
    dsp: int | None = None
    lut: int | None = None
    bram36: int | None = None
    feasible: bool = True
    energy_mj: float | None = None


def predict(target: Target, layers: Iterable[LayerSpec], plan: Plan) -> CostPrediction:
    """Predict the cost of ``plan`` over the inventory ``layers`` on ``target``."""
    inventory = list(layers)
    gemms = plan_gemms(inventory, plan)
    family = create_family(target.family)
    estimate = family.estimate(target, gemms)
    per_layer = np.zeros(len(inventory))
    np.add.at(per_layer, gemms.layer, estimate.latency_ms)
    # Pooling and the graph's non-GEMM work (adds, activations...): the memory-roofline term.
    work = graph_work(inventory)
    np.add.at(per_layer, work.layer, family.estimate_graph(target, work))
    totals = plan_cost(inventory, plan)
    latency = float(per_layer.sum())
    feasible = True
    if target.fpga is not None and estimate.dsp is not None:
        feasible = (
            estimate.dsp <= target.fpga.dsp
            and (estimate.lut or 0) <= target.fpga.lut
            and (estimate.bram36 or 0) <= target.fpga.bram36
        )
    return CostPrediction(
        target=target.name,
        latency_ms=latency,
        layer_latency_ms={
            layer.name: float(per_layer[i]) for i, layer in enumerate(inventory) if per_layer[i] > 0
        },
        macs=totals.macs,
        weight_bytes=totals.weight_bytes,
        provenance=ANALYTIC,
        dsp=estimate.dsp,
        lut=estimate.lut,
        bram36=estimate.bram36,
        feasible=feasible,
        # Energy at the board's typical power over the predicted time: a coarse upper bound.
        energy_mj=None if target.power_w is None else target.power_w * latency,
    )


def predict_latency_ms(
    target: Target, layers: Sequence[LayerSpec], plans: Sequence[Plan]
) -> npt.NDArray[np.float64]:
    """Predicted latency (ms) of each plan; one prior evaluation per plan."""
    family = create_family(target.family)
    graph_ms = float(family.estimate_graph(target, graph_work(layers)).sum())  # plan-independent
    out = np.empty(len(plans))
    for i, plan in enumerate(plans):
        out[i] = float(family.estimate(target, plan_gemms(layers, plan)).latency_ms.sum()) + graph_ms
    return out
