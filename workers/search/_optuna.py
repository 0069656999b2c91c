"""Optuna's multi-objective samplers (NSGA-II, TPE) as strategies, through ask-and-tell.

Why an Optuna study feeding Ray tasks rather than Ray Tune's OptunaSearch: Tune runs one
trial per Ray actor and costs about 1.5 s of overhead per trial on these machines; with
ask-and-tell the study lives in the driver, proposes a batch, and the runner evaluates the
batch on long-lived Ray evaluator actors (several plans per task), so no trial pays that
overhead and the samplers stay exactly Optuna's.

Each knob of each layer with more than one option is one categorical parameter over option
indices; a coupled group's keep is one parameter (on the group's first layer).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search_spaces import KNOBS, Choice, Plan

from ._problem import Problem
from ._strategy import Observation, Strategy, register_strategy

optuna.logging.set_verbosity(logging.WARNING)
# Optuna 5 deprecates constraints_func in favour of Trial.set_constraint, which ask-and-tell
# cannot reach for warm-started trials; the samplers still honour it until Optuna 7.
warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
_CONSTRAINTS = "constraints"


def _constraints(trial: FrozenTrial) -> Sequence[float]:
    return list(trial.user_attrs.get(_CONSTRAINTS, [1.0]))


class _OptunaStrategy(Strategy):
    def _sampler(self) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def __init__(self, problem: Problem, seed: int) -> None:
        super().__init__(problem, seed)
        n_obj = len(problem.objective_names)
        self.study = optuna.create_study(directions=["minimize"] * n_obj, sampler=self._sampler())
        self.params: dict[str, tuple[int, str]] = {}  # param name -> (layer index, knob)
        self.distributions: dict[str, BaseDistribution] = {}
        seen_groups: set[str] = set()
        for i, layer in enumerate(problem.space.layers):
            kn = problem.space.knobs_of(layer.name)
            for knob in KNOBS:
                n_opts = len(kn.options(knob))
                if n_opts < 2:
                    continue
                if knob == "keep" and layer.group is not None and layer.prunable:
                    if layer.group in seen_groups:
                        continue
                    seen_groups.add(layer.group)
                name = f"{layer.name}.{knob}"
                self.params[name] = (i, knob)
                self.distributions[name] = CategoricalDistribution(list(range(n_opts)))
        self.pending: dict[Plan, list[optuna.Trial]] = {}

    def _plan(self, values: dict[str, Any]) -> Plan:
        space = self.problem.space
        picks: list[dict[str, Any]] = [
            {knob: space.knobs_of(layer.name).options(knob)[0] for knob in KNOBS} for layer in space.layers
        ]
        for name, idx in values.items():
            i, knob = self.params[name]
            picks[i][knob] = space.knobs_of(space.layers[i].name).options(knob)[int(idx)]
        plan = Plan({layer.name: Choice(**p) for layer, p in zip(space.layers, picks, strict=True)})
        return space.tie_groups(plan)

    def _values(self, plan: Plan) -> dict[str, int]:
        space = self.problem.space
        out = {}
        for name, (i, knob) in self.params.items():
            layer = space.layers[i]
            out[name] = space.knobs_of(layer.name).options(knob).index(getattr(plan[layer.name], knob))
        return out

    def ask(self, n: int) -> list[Plan]:
        out = []
        for _ in range(n):
            trial = self.study.ask(self.distributions)
            plan = self._plan(trial.params)
            self.pending.setdefault(plan, []).append(trial)
            out.append(plan)
        return out

    def tell(self, observations: Sequence[Observation]) -> None:
        for obs in observations:
            trials = self.pending.pop(obs.plan, [])
            constraints = [0.0 if obs.feasible else 1.0]
            if not trials:  # a stored trial (resume) or someone else's proposal: warm start
                self._add(obs, constraints)
                continue
            for trial in trials:
                if obs.objectives is None:
                    self.study.tell(trial, state=TrialState.FAIL)
                else:
                    trial.set_user_attr(_CONSTRAINTS, constraints)
                    self.study.tell(trial, list(obs.objectives))

    def _add(self, obs: Observation, constraints: list[float]) -> None:
        try:
            values = self._values(obs.plan)
        except (ValueError, KeyError):
            return  # a plan outside this space (e.g. a failed malformed one) teaches nothing
        if obs.objectives is None:
            return
        self.study.add_trial(
            optuna.trial.create_trial(
                params=values,
                distributions={k: self.distributions[k] for k in values},
                values=list(obs.objectives),
                user_attrs={_CONSTRAINTS: constraints},
                system_attrs={_CONSTRAINTS: constraints},
            )
        )


@register_strategy
class NSGA2Strategy(_OptunaStrategy):
    name = "nsga2"
    description = "Optuna's NSGAIISampler (population 24), constraints as Optuna constraints"

    def _sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(
            population_size=24, seed=self.seed, constraints_func=_constraints
        )


@register_strategy
class TPEStrategy(_OptunaStrategy):
    name = "tpe"
    description = "Optuna's multi-objective TPESampler (10 random start-up trials), with constraints"

    def _sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            n_startup_trials=10, seed=self.seed, constraints_func=_constraints, multivariate=True
        )
