"""A target's cost model in use, and how its numbers are labelled.

``Coster`` costs plans on one target with its active learned predictor when the catalogue has
one (latency with its 80% interval), else with the analytic prior; every cost carries its
provenance (DESIGN.md, "Honesty of numbers"): ``ANALYTIC`` or ``learned_provenance(report)``.
"""

from __future__ import annotations

from typing import Any

from search_spaces import LayerSpec, Plan

from ._catalogue import Catalogue
from ._predict import ANALYTIC, predict
from ._predictor import Predictor
from ._target import Target

__all__ = ["Coster", "learned_provenance"]


def learned_provenance(report: dict[str, Any]) -> str:
    """How a fitted predictor's numbers are labelled, from its validation report: how many rows it
    was fitted on, its held-out MAPE and its held-out Spearman rank correlation (a search only
    compares plans, so how well it ranks them matters as much as how close it is)."""
    mape, rho = report.get("mape"), report.get("spearman")
    scores = (f", validation MAPE {100 * mape:.1f}%" if mape is not None else "") + (
        f", Spearman {rho:.2f}" if rho is not None and rho == rho else ""  # rho != rho: NaN
    )
    selection = report.get("selection")
    if isinstance(selection, dict) and selection.get("chosen"):
        rho_cv = selection.get("spearman")
        source = report.get("transfer", {}).get("source") if selection["chosen"] == "transfer" else None
        scores += (
            f"; {selection['chosen']}"
            + (f" from {source}" if source else "")
            + (
                f" chosen by {selection.get('folds')}-fold cross-validation, held-out Spearman {rho_cv:.2f}"
                if rho_cv is not None
                else " chosen by cross-validation"
            )
        )
    if report.get("format") == "layer":
        return (
            f"learned (fitted on {report.get('n_fit')} layer measurements"
            + (scores + " per layer" if scores else "")
            + "; a network is the sum of its layers, no per-network overhead)"
        )
    return f"learned (fitted on {report.get('n_fit')} measurements{scores})"


class Coster:
    """Predicted costs of plans on one target: its active learned predictor when there is one
    (latency with its 80% interval), else the analytic prior; ``provenance`` says which."""

    def __init__(self, target: Target, learned: tuple[Predictor, dict[str, Any]] | None) -> None:
        self.target = target
        self.learned = learned
        self.provenance = ANALYTIC if learned is None else learned_provenance(learned[1])

    @classmethod
    def active(cls, cat: Catalogue, name: str) -> Coster:
        """The target ``name`` of the catalogue with its active predictor (LatencyModelError if unknown)."""
        target = cat.target(name)
        return cls(target, cat.predictor(target.name))

    def cost(self, layers: list[LayerSpec], plan: Plan) -> dict[str, Any]:
        """``latency_ms`` (+ ``latency_low_ms`` / ``latency_high_ms`` when learned), ``provenance``,
        ``weight_bytes``, ``macs``, ``energy_mj`` (board power × latency, where the power is
        known) and, on FPGA targets, ``dsp`` / ``lut`` / ``bram36`` / ``fits_board``."""
        p = predict(self.target, layers, plan)
        out: dict[str, Any] = {
            "latency_ms": p.latency_ms,
            "provenance": self.provenance,
            "weight_bytes": p.weight_bytes,
            "macs": p.macs,
        }
        if self.learned is not None:
            predictor = self.learned[0]
            # the predictor's own rows: a transfer appends its source's prediction
            mid, lo, hi = predictor.predict(predictor.features(self.target, layers, plan)[None, :])
            out.update(latency_ms=float(mid[0]), latency_low_ms=float(lo[0]), latency_high_ms=float(hi[0]))
        if self.target.power_w is not None:
            out["energy_mj"] = self.target.power_w * out["latency_ms"]
        if p.dsp is not None:
            out.update(dsp=p.dsp, lut=p.lut, bram36=p.bram36, fits_board=p.feasible)
        return out
