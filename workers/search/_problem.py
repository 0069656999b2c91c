"""A search problem: the model, its space, the targets' cost models, objectives and constraints.

Built once per job on the driver. Costs are predicted here (cheap); quality is evaluated by
Ray workers (``_runner``). Objectives are normalised and minimised: ``-quality / q_ref`` and
``cost / cost of the uncompressed model`` per target, so the hypervolume reference point is a
property of the problem (the uncompressed model's cost, the quality floor), never of the trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from latency_models import BatchPredictor, Catalogue, Coster, LatencyModelError, catalogue, predict
from search_spaces import LayerSpec, Plan, Space, SpaceError

from ._errors import SearchError
from ._objectives import Objectives
from ._spec import JobSpec


def check_entry(entry: Any, model: Any, example_input: Any) -> None:
    """Checks a job's data against its model before any trial: a labelled dataset must not
    have more classes than the model has outputs (``JudgedModel.check``)."""
    check = getattr(entry, "check", None)
    if callable(check):
        check(model, example_input)


Array = npt.NDArray[np.float64]

#: Relative latency uncertainty assumed for an uncalibrated analytic prior when screening
#: near a budget (the prior's median error on the NB201 devices was far larger; this only
#: sets how cautious screening is, and every stored trial carries the real provenance).
PRIOR_RELATIVE_SIGMA = 0.15


@dataclass
class Problem:
    """Everything a strategy may know about the job (no torch objects here except in ``model``)."""

    spec: JobSpec
    layers: list[LayerSpec]
    space: Space
    costers: list[Coster]
    quality_metric: str
    #: The job's objectives, the uncompressed model's costs per target their reference; its
    #: reference quality is set once trial 0 has been evaluated.
    goals: Objectives
    #: The torch model and its example input (for strategies that probe weights, e.g. guided).
    model: Any = None
    example_input: Any = None
    ignore: tuple[str, ...] = ()
    #: Where the model came from (``workers.zoo.ModelSource.to_dict``) and the data it is judged
    #: on (the dataset, its split record, the preprocessing), as the job records them.
    source: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    #: The prepared model (``workers.zoo.Prepared``): its calibration inputs calibrate and
    #: int8-quantise a front plan exported for ONNX Runtime when the front is measured there.
    prepared: Any = field(default=None, repr=False)
    _batch: list[BatchPredictor] = field(default_factory=list, repr=False)
    _scale: list[float] = field(default_factory=list, repr=False)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, spec: JobSpec, cat: Catalogue | None = None, *, data_dir: Path | None = None) -> Problem:
        """The problem of ``spec``, its targets' cost models read from ``cat`` (default: the
        catalogue of ``latency_models.data_dir()``; the service passes its own), its registered
        datasets from ``data_dir`` (default: the same data directory)."""
        cat = cat or catalogue()
        from search_spaces import InputError
        from workers.zoo import model_source, prepare

        from ._entry import job_entry

        try:
            entry = job_entry(spec, data_dir=data_dir)
            prepared = prepare(entry)
            check_entry(entry, prepared.model, prepared.example_input)
        except InputError as exc:
            # The error names its own field (model, weights, data...): the job fails with it.
            raise SearchError(exc.field, exc.value, exc.hint) from None
        if spec.quality_examples is not None and not hasattr(entry, "n_calibration_images"):
            raise SearchError(
                "quality_examples",
                spec.quality_examples,
                f"model {spec.model!r} evaluates on a fixed set; leave quality_examples unset",
            )
        costers = []
        for i, name in enumerate(spec.targets):
            try:
                costers.append(Coster.active(cat, name))
            except LatencyModelError as exc:
                raise SearchError(f"targets[{i}]", name, str(exc)) from None
        layers = prepared.layers
        try:
            space = Space.build(layers, **spec.space.build_kwargs())
        except SpaceError as exc:
            raise SearchError("space", spec.space.model_dump(exclude_defaults=True), str(exc)) from None
        if not space.knobs:
            raise SearchError(
                "space",
                spec.space.model_dump(exclude_defaults=True),
                "no layer of the model offers these knobs",
            )
        identity = Plan()
        reference_costs = [c.cost(layers, identity) for c in costers]
        problem = cls(
            spec=spec,
            layers=layers,
            space=space,
            costers=costers,
            quality_metric=entry.metric,
            goals=Objectives(
                spec, None, {c.target.name: r for c, r in zip(costers, reference_costs, strict=True)}
            ),
            model=prepared.model,
            example_input=prepared.example_input,
            ignore=prepared.ignore,
            source=model_source(getattr(entry, "entry", entry)).to_dict(),
            data=dict(getattr(entry, "data_record", {}) or {}),
            prepared=prepared,
        )
        return problem

    # ---- objectives (owned by Objectives; the uncompressed model is the reference) ----------
    @property
    def reference_costs(self) -> list[dict[str, Any]]:
        """The uncompressed model's costs, one dict per target in ``costers`` order."""
        return [dict(self.goals.reference_costs[c.target.name]) for c in self.costers]

    @property
    def reference_quality(self) -> float | None:
        """The uncompressed model's quality (trial 0), once it is known."""
        return self.goals.reference_quality

    @reference_quality.setter
    def reference_quality(self, value: float | None) -> None:
        self.goals = replace(self.goals, reference_quality=value)

    @property
    def objective_names(self) -> list[str]:
        return self.goals.names

    def reference_point(self) -> list[float]:
        return self.goals.reference_point()

    def objectives(self, quality: float, costs: dict[str, dict[str, Any]]) -> list[float]:
        return self.goals.vector(quality, costs)

    def violations(self, quality: float | None, costs: dict[str, dict[str, Any]]) -> list[str]:
        return self.goals.violations(quality, costs)

    # ---- costs and constraints ----------------------------------------------------------
    def layer_summary(self) -> list[dict[str, Any]]:
        """The searched layers as the dashboard's plan heatmap needs them (a rank as a fraction of
        ``full_rank``, the channels a keep ratio applies to), in model order."""
        searched = set(self.space.knobs)  # layers with at least one knob to search
        return [
            {
                "name": layer.name,
                "kind": layer.kind.value,
                "full_rank": layer.full_rank,
                "out_channels": layer.out_channels,
            }
            for layer in self.layers
            if layer.name in searched
        ]

    def costs(self, plan: Plan) -> dict[str, dict[str, Any]]:
        return {c.target.name: c.cost(self.layers, plan) for c in self.costers}

    # ---- vectorised screening (no torch, no per-plan loops) ------------------------------
    def screen_latency_ms(self, encoded: npt.NDArray[np.int64]) -> Array:
        """Predicted latency (ms) of encoded plans on every target, shape (n, n_targets).

        The batch path tabulates the analytic prior per layer; where a target has a learned
        predictor, the prior is scaled by learned / prior on the uncompressed model, so the
        screen matches the stored costs at the reference and ranks plans by the prior.
        """
        if not self._batch:
            identity = Plan()
            for c in self.costers:
                self._batch.append(BatchPredictor(c.target, self.space))
                prior = predict(c.target, self.layers, identity).latency_ms
                self._scale.append(self.reference_costs[len(self._scale)]["latency_ms"] / prior)
        return np.stack(
            [b.latency_ms(encoded) * s for b, s in zip(self._batch, self._scale, strict=True)], axis=1
        )

    def latency_sigma(self, i: int) -> float:
        """Relative uncertainty of target i's latency, for screening near a budget."""
        c = self.costers[i]
        if c.learned is None:
            return PRIOR_RELATIVE_SIGMA
        ref = self.reference_costs[i]
        lo, hi = ref.get("latency_low_ms"), ref.get("latency_high_ms")
        if lo is None or hi is None or ref["latency_ms"] <= 0:
            return PRIOR_RELATIVE_SIGMA
        # An 80% interval spans about ±1.28 sigma.
        return float((hi - lo) / (2 * 1.28 * ref["latency_ms"]))

    def latency_budgets_ms(self) -> list[float | None]:
        """The tightest latency ceiling per target (None: unconstrained)."""
        out: list[float | None] = []
        for c in self.costers:
            ceilings = [
                k.value
                for k in self.spec.constraints
                if k.metric == "latency_ms" and k.target in (None, c.target.name)
            ]
            out.append(min(ceilings) if ceilings else None)
        return out
