"""Strategy: the extension point that proposes plans. A new strategy is one registered subclass.

Contract (tests/test_search.py runs it on every registered strategy):

- ``Strategy(problem, seed)`` may read anything on the Problem (space, predicted costs,
  constraints, the model's weights) but never evaluates quality itself.
- ``ask(n)`` returns at most ``n`` plans, each valid in ``problem.space`` (``space.validate_plan``
  accepts it). Returning ``[]`` means the strategy has nothing left to propose. It may return a
  plan it proposed before; the runner answers repeats from its cache without spending budget.
- ``tell(observations)`` receives results of plans, in any order, including ones the strategy
  never asked for (stored trials on resume: warm start) and failed ones (``objectives`` None).
- Same seed and same tells → same proposals.

This module holds the base and the registry only (no Problem at run time), so the JobSpec can
list strategy names without importing the problem, Optuna or torch.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np

from search_spaces import Plan, Registry

from ._errors import SearchError

if TYPE_CHECKING:
    from ._problem import Problem


@dataclass(frozen=True)
class Observation:
    """The outcome of one plan: normalised minimised objectives (None if the trial failed)."""

    plan: Plan
    objectives: tuple[float, ...] | None
    feasible: bool
    quality: float | None


class Strategy(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, problem: Problem, seed: int) -> None:
        self.problem = problem
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @abc.abstractmethod
    def ask(self, n: int) -> list[Plan]: ...

    @abc.abstractmethod
    def tell(self, observations: Sequence[Observation]) -> None: ...


def _importer(module: str) -> Callable[[], object]:
    return lambda: importlib.import_module(module, __package__)  # registers on import


#: Built-in strategies live in their own modules, some with heavy imports (Optuna; torch for
#: the sensitivity probes): each is imported when first created, so validating a JobSpec (the
#: API process) imports none of them.
STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy",
    SearchError,
    lazy={
        "random": _importer("._baselines"),
        "uniform": _importer("._baselines"),
        "nsga2": _importer("._optuna"),
        "tpe": _importer("._optuna"),
        "guided": _importer("._guided"),
    },
)
S = TypeVar("S", bound=type[Strategy])


def register_strategy(cls: S) -> S:
    """Class decorator: add a Strategy under ``cls.name``."""
    STRATEGIES.register(cls.name, cls)
    return cls


def list_strategies(pattern: str = "*") -> list[str]:
    """Registered strategy names (built-ins included, not imported) matching a glob, sorted."""
    return STRATEGIES.list(pattern)


def create_strategy(name: str, problem: Problem, seed: int) -> Strategy:
    """The strategy ``name``; the error lists the valid names."""
    return STRATEGIES.get(name)(problem, seed)
