"""JobSpec: what one search is, as validated JSON (pydantic).

A spec names a zoo model, a search space, one or more targets, the objectives, hard
constraints, a strategy and a budget. Validation errors name the field (pydantic's ``loc``),
the value and what is allowed, all of a spec's errors at once; nothing here imports torch, so
the service can validate a spec without loading a model.

What a spec leaves out takes the defaults below, the same for the API, a spec file and the
CLI's flags (the CLI leaves out what the user did not type). Targets are checked against the
names in the validation context, ``JobSpec.model_validate(data, context={"targets": names})``,
when the caller has a catalogue (the service's, the CLI's); a spec alone cannot know a user's
targets.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: The zoo's model names, so a spec can be checked without importing the zoo (torch); a test
#: keeps this equal to ``workers.zoo.list_models()``.
ZOO_MODELS = (
    "digits-cnn",
    "digits-vit",
    "efficientnet-lite0",
    "fbnet",
    "minilm-l6",
    "mobilenet-v2",
    "nasbench201",
)
COST_METRICS = ("latency_ms", "weight_bytes", "energy_mj", "dsp", "lut", "bram36")
OBJECTIVES = ("quality", "latency_ms", "weight_bytes", "energy_mj")
#: The defaults of what a spec leaves out (one place: the API, spec files and the CLI's flags).
DEFAULT_SPACE: dict[str, list[float]] = {
    "rank_fractions": [0.25, 0.5, 0.75],
    "keep": [0.5, 0.75],
    "wbits": [4, 8],
}
DEFAULT_EVALUATIONS = 50
DEFAULT_STRATEGY = "guided"
DEFAULT_SEED = 0
DEFAULT_CONCURRENCY = 2
_CONSTRAINT = re.compile(r"^\s*([a-z_0-9]+)\s*(?:@\s*([A-Za-z0-9_.\-]+)\s*)?(<=|>=)\s*([-+0-9.eE]+)\s*$")


class SpaceSpec(BaseModel):
    """Knob values offered on every layer that supports them (``search_spaces.Space.build``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank_fractions: list[Annotated[float, Field(gt=0, le=1)]] = []
    keep: list[Annotated[float, Field(gt=0, le=1)]] = []
    wbits: list[Literal[2, 3, 4, 6, 8, 16, 32]] = []
    abits: list[Literal[2, 3, 4, 6, 8, 16, 32]] = []
    token_keep: list[Annotated[float, Field(gt=0, le=1)]] = []
    include: list[str] = []
    exclude: list[str] = []
    rank_multiple: int = Field(8, ge=1, le=256)
    channel_multiple: int = Field(8, ge=1, le=256)

    @model_validator(mode="after")
    def _not_empty(self) -> SpaceSpec:
        if not any((self.rank_fractions, self.keep, self.wbits, self.abits, self.token_keep)):
            raise ValueError(
                "the space offers no knob: set at least one of rank_fractions, keep, wbits, abits, token_keep"
            )
        return self

    def build_kwargs(self) -> dict[str, Any]:
        return self.model_dump()


class Constraint(BaseModel):
    """A hard constraint ``metric op value``; cost metrics apply per target (all when ``target`` is None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Literal["quality", "latency_ms", "weight_bytes", "energy_mj", "dsp", "lut", "bram36"]
    op: Literal["<=", ">="]
    value: float
    target: str | None = None

    @model_validator(mode="after")
    def _direction(self) -> Constraint:
        if self.metric == "quality" and self.op != ">=":
            raise ValueError(f"a quality constraint must be a floor (quality>=X), but got op={self.op!r}")
        if self.metric != "quality" and self.op != "<=":
            raise ValueError(
                f"a cost constraint must be a ceiling ({self.metric}<=X), but got op={self.op!r}"
            )
        if self.metric == "quality" and self.target is not None:
            raise ValueError("a quality constraint has no target")
        return self

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """``latency_ms<=5``, ``latency_ms@zcu102<=5``, ``dsp<=2000``, ``quality>=0.9``."""
        m = _CONSTRAINT.match(text)
        if m is None:
            raise ValueError(
                f"constraint {text!r} is not of the form METRIC[@TARGET]<=VALUE or quality>=VALUE, "
                f"e.g. latency_ms<=5 or dsp@zcu102<=2000"
            )
        metric, target, op, value = m.groups()
        return cls.model_validate({"metric": metric, "target": target, "op": op, "value": float(value)})

    def __str__(self) -> str:
        where = f"@{self.target}" if self.target else ""
        return f"{self.metric}{where}{self.op}{self.value:g}"


class Budget(BaseModel):
    """Stop after this many quality evaluations and/or this much wall time, whichever comes first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    evaluations: int | None = Field(DEFAULT_EVALUATIONS, ge=1, le=100_000)
    wall_time_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.evaluations is None and self.wall_time_s is None:
            raise ValueError("a budget needs evaluations or wall_time_s (or both)")
        return self


def _known_target(name: str, info: ValidationInfo) -> str:
    known: Collection[str] | None = (info.context or {}).get("targets")
    if known is not None and name not in known:
        raise ValueError(f"unknown target {name!r}; valid names: {', '.join(sorted(known))}")
    return name


TargetName = Annotated[str, AfterValidator(_known_target)]


class JobSpec(BaseModel):
    """One search. ``model`` is a zoo id (``hwsearch models``), ``targets`` are target names
    (``hwsearch targets``), ``strategy`` a registered strategy (``hwsearch search --help``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=400)
    targets: list[TargetName] = Field(min_length=1, max_length=8)
    space: SpaceSpec = SpaceSpec.model_validate(DEFAULT_SPACE)
    objectives: list[Literal["quality", "latency_ms", "weight_bytes", "energy_mj"]] = [
        "quality",
        "latency_ms",
    ]
    constraints: list[Constraint] = []
    strategy: str = DEFAULT_STRATEGY
    budget: Budget = Budget(evaluations=DEFAULT_EVALUATIONS, wall_time_s=None)
    seed: int = Field(DEFAULT_SEED, ge=0, le=2**31 - 1)
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=64)
    plans_per_task: int = Field(4, ge=1, le=64)
    quality_examples: int | None = Field(None, ge=8, le=100_000)

    @field_validator("constraints", mode="before")
    @classmethod
    def _parse_constraints(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Constraint.parse(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        name = value.partition(":")[0]
        if name not in ZOO_MODELS:
            raise ValueError(f"unknown model {name!r}; valid names: {', '.join(ZOO_MODELS)}")
        return value

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"targets must be distinct, but got {value}")
        return value

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if "quality" not in value:
            raise ValueError(f"objectives must include 'quality', but got {value}")
        if len(value) < 2:
            raise ValueError(f"objectives need quality and at least one cost, but got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"objectives must be distinct, but got {value}")
        return value

    # Field validators rather than one model validator: a model validator runs only once every
    # field is valid, so its errors would come one round after the others.
    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from ._strategy import list_strategies

        if value not in list_strategies():
            raise ValueError(f"unknown strategy {value!r}; valid names: {', '.join(list_strategies())}")
        return value

    @field_validator("constraints")
    @classmethod
    def _constraint_targets(cls, value: list[Constraint], info: ValidationInfo) -> list[Constraint]:
        targets = info.data.get("targets")  # absent when the targets are invalid themselves
        for c in value:
            if targets is not None and c.target is not None and c.target not in targets:
                raise ValueError(
                    f"constraint {c} names target {c.target!r}, which is not in targets {targets}"
                )
        return value

    def fingerprint(self) -> str:
        """12 hex digits naming the search this spec defines: everything but the budget and
        how it is run (concurrency, plans per task), so a resumed search may get more budget."""
        search = self.model_dump_json(exclude={"budget", "concurrency", "plans_per_task"})
        return hashlib.sha256(search.encode()).hexdigest()[:12]

    @property
    def quality_floor(self) -> float | None:
        floors = [c.value for c in self.constraints if c.metric == "quality"]
        return max(floors) if floors else None
