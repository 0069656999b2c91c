"""The objectives of a job, in one place: which costs are objectives, how a trial's quality and
costs become a normalised, minimised vector, which trials are feasible, the reference point and
the hypervolume.

Torch-free: the search (``Problem``), the API's front, the front cache and the dashboard's job
view all build the same ``Objectives`` from a JobSpec and the uncompressed model (trial 0), so
the dashboard's hypervolume curve ends at the search's hypervolume and the API's front is the
search's front, whatever ``spec.objectives`` says.

Normalisation: quality is ``-quality / q_ref`` and each cost ``cost / cost of the uncompressed
model`` on its target, so the reference point ``(-quality floor / q_ref, 1, 1, ...)`` is a
property of the problem, never of the trials. A reference that is not known (trial 0 failed or
has not run) counts as 1: dominance, and so the front, is the same either way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ._pareto import front_mask, hypervolume
from ._spec import JobSpec

__all__ = ["Objectives", "against_reference", "ratio"]

Costs = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Objectives:
    """The objective vector of a job's trials (see the module's docstring).

    ``reference_quality`` is the uncompressed model's quality (None: not known yet);
    ``reference_costs`` its costs per target name, as a trial stores them.
    """

    spec: JobSpec
    reference_quality: float | None = None
    reference_costs: Costs = field(default_factory=dict)

    @classmethod
    def from_trials(cls, spec: JobSpec, trials: Iterable[Mapping[str, Any]]) -> Objectives:
        """The objectives with trial 0 (the uncompressed model) as the reference, if it is there."""
        zero = next((t for t in trials if int(t["number"]) == 0), None)
        if zero is None:
            return cls(spec)
        quality = zero.get("quality")
        return cls(spec, None if quality is None else float(quality), zero.get("costs") or {})

    # ---- which objectives -------------------------------------------------------------------
    @functools.cached_property
    def costs(self) -> list[tuple[str, str]]:
        """(metric, target name) of every cost objective, in objective order. Weight bytes are
        the same on every target, so they are one objective (read on the first target)."""
        targets = list(self.spec.targets)
        out: list[tuple[str, str]] = []
        for metric in self.spec.objectives:
            if metric == "quality":
                continue
            out.extend((metric, t) for t in (targets[:1] if metric == "weight_bytes" else targets))
        return out

    @property
    def names(self) -> list[str]:
        """``quality``, then ``metric@target`` per cost objective (``weight_bytes`` alone)."""
        return ["quality"] + [m if m == "weight_bytes" else f"{m}@{t}" for m, t in self.costs]

    # ---- normalisation ----------------------------------------------------------------------
    def _q_ref(self) -> float:
        return self.reference_quality or 1.0

    def reference_point(self) -> list[float]:
        """Normalised, minimised: (-quality floor / q_ref, 1, 1, ...): the uncompressed model's cost."""
        floor = self.spec.quality_floor
        return [0.0 if floor is None else -floor / self._q_ref()] + [1.0] * len(self.costs)

    @functools.cached_property
    def _scales(self) -> list[tuple[str, str, float]]:
        # (metric, target, the uncompressed model's value) per cost objective, computed once:
        # ``vector`` runs for every trial of every front read.
        return [(m, t, float((self.reference_costs.get(t) or {}).get(m) or 1.0)) for m, t in self.costs]

    def vector(self, quality: float, costs: Costs) -> list[float]:
        """The normalised, minimised objectives of one trial (a missing cost is +inf)."""
        out = [-float(quality) / self._q_ref()]
        for metric, target, ref in self._scales:
            value = (costs.get(target) or {}).get(metric)
            out.append(math.inf if value is None else float(value) / ref)
        return out

    # ---- feasibility ------------------------------------------------------------------------
    def violations(self, quality: float | None, costs: Costs) -> list[str]:
        """Hard constraints a trial breaks (FPGA designs must also fit their board)."""
        out = []
        for name, cost in costs.items():
            if cost.get("fits_board") is False:
                out.append(
                    f"design does not fit {name} "
                    f"(dsp {cost['dsp']}, lut {cost['lut']}, bram36 {cost['bram36']})"
                )
        for c in self.spec.constraints:
            if c.metric == "quality":
                if quality is not None and quality < c.value:
                    out.append(f"quality {quality:.4g} < {c.value:g}")
                continue
            for name, cost in costs.items():
                if c.target not in (None, name) or cost.get(c.metric) is None:
                    continue
                if float(cost[c.metric]) > c.value:
                    out.append(f"{c.metric}@{name} {float(cost[c.metric]):.4g} > {c.value:g}")
        return out

    # ---- fronts and hypervolume -------------------------------------------------------------
    def hypervolume(self, vectors: npt.ArrayLike) -> float:
        """Hypervolume of normalised vectors (feasible trials only) up to the reference point."""
        ref = self.reference_point()
        table = np.asarray(vectors, dtype=np.float64).reshape(-1, len(ref))
        return hypervolume(table, ref) if len(table) else 0.0

    def front(self, trials: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The non-dominated feasible trials (stored as dicts), best quality first."""
        ok = [t for t in trials if t.get("feasible") and t.get("quality") is not None]
        if not ok:
            return []
        mask = front_mask([self.vector(float(t["quality"]), t["costs"]) for t in ok])
        front = [t for t, m in zip(ok, mask, strict=True) if m]
        return sorted(front, key=lambda t: -float(t["quality"]))


# ---- against the uncompressed model ---------------------------------------------------------
def ratio(numerator: Any, denominator: Any) -> float | None:
    """``numerator / denominator``, or None where either is unknown or the denominator is not > 0."""
    if numerator is None or denominator is None or not float(denominator) > 0:
        return None
    return float(numerator) / float(denominator)


def against_reference(
    costs: Costs, reference: Costs | None, targets: Sequence[str]
) -> dict[str, float | None]:
    """``speedup@<target>`` (the reference's latency / this latency) per target and ``size_ratio``
    (weight bytes / the reference's; the same on every target, read on the first); None where a
    number is missing. The reference is trial 0, the uncompressed model. The CLI, the API's front
    and the dashboard all show these."""
    ref = reference or {}
    out = {
        f"speedup@{t}": ratio((ref.get(t) or {}).get("latency_ms"), (costs.get(t) or {}).get("latency_ms"))
        for t in targets
    }
    first = targets[0] if targets else ""
    out["size_ratio"] = ratio(
        (costs.get(first) or {}).get("weight_bytes"), (ref.get(first) or {}).get("weight_bytes")
    )
    return out
