"""Multi-objective search on Ray: JobSpec, strategies, Pareto fronts and hypervolume.

``run_search(spec, sink)`` evaluates plans of a zoo model for quality on Ray evaluator actors
and predicts their costs on every target; strategies are registered by name
(``list_strategies()``: random, uniform, nsga2, tpe, guided); the front and hypervolume come
from moocore on normalised objectives with a reference point fixed by the problem.
"""

from __future__ import annotations

from ._errors import SearchError, SearchStalled
from ._objectives import Objectives, against_reference, ratio
from ._pareto import front_mask, hypervolume
from ._problem import Problem
from ._runner import SearchResult, ensure_ray, measure_on_host, run_search
from ._spec import Budget, Constraint, FinetuneSpec, JobSpec, RecoverySpec, SpaceSpec
from ._strategy import Observation, Strategy, create_strategy, list_strategies, register_strategy
from ._trial import JsonlSink, MemorySink, Sink, Trial

__all__ = [
    "Budget",
    "Constraint",
    "FinetuneSpec",
    "JobSpec",
    "JsonlSink",
    "MemorySink",
    "Objectives",
    "Observation",
    "Problem",
    "RecoverySpec",
    "SearchError",
    "SearchResult",
    "SearchStalled",
    "Sink",
    "SpaceSpec",
    "Strategy",
    "Trial",
    "against_reference",
    "create_strategy",
    "ensure_ray",
    "front_mask",
    "hypervolume",
    "list_strategies",
    "measure_on_host",
    "ratio",
    "register_strategy",
    "run_search",
]
