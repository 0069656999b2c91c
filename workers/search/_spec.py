"""JobSpec: what one search is, as validated JSON (pydantic).

A spec names a zoo model, a search space, one or more targets, the objectives, hard
constraints, a strategy and a budget. Validation errors name the field (pydantic's ``loc``),
the value and what is allowed, all of a spec's errors at once; nothing here imports torch, so
the service can validate a spec without loading a model.

Everything is bounded before any work is queued (issue 14): every list has a cap and every
number must be finite (``allow_inf_nan=False``, the caps in ``search_spaces._limits``), a
budget always ends (``wall_time_s`` at most ``MAX_WALL_TIME_S``), target names follow the one
strict name pattern, and a model's ``:argument`` is checked against ``ZOO_ARGUMENTS``.

What a spec leaves out takes the defaults below, the same for the API, a spec file and the
CLI's flags (the CLI leaves out what the user did not type). Targets are checked against the
names in the validation context, ``JobSpec.model_validate(data, context={"targets": names})``,
when the caller has a catalogue (the service's, the CLI's); a spec alone cannot know a user's
targets.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from search_spaces import (
    MAX_CHOICES,
    MAX_CONSTRAINTS,
    MAX_PATTERN_CHARS,
    MAX_PATTERNS,
    MAX_TARGETS,
    MAX_WALL_TIME_S,
    BadName,
    check_name,
)
from workers.model_refs import ZOO_MODELS as ZOO_MODELS  # re-exported: the spec's vocabulary
from workers.model_refs import ModelRefError, check_import_path, model_kind


class ModelArgument(NamedTuple):
    """What the ``name:argument`` form of a zoo model id accepts after the ':'."""

    keyword: str  # the constructor argument it sets (the entry's ``args[0]``)
    pattern: str  # a regular expression the whole argument must match (the entry's ``arg_pattern``)
    example: str  # a valid argument (the entry's default), for error messages


# Torch-free copies of the vocabularies of the zoo's arch strings (workers/zoo/nasbench201.py
# OPS, workers/zoo/fbnet.py KINDS); the patterns are built exactly as the zoo builds its own.
_NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
_NB201_OP = "(?:" + "|".join(re.escape(op) for op in _NB201_OPS) + ")"
_NB201_ARCH = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
)
_FBNET_KINDS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
_FBNET_KIND = "(?:" + "|".join(re.escape(kind) for kind in _FBNET_KINDS) + ")"
_FBNET_ARCH = (
    "skip-k3_e3-k3_e1-skip-skip-k5_e6-k3_e3-k5_e1-k3_e3-k5_e6-k5_e3-k5_e1_g2-k5_e6-k3_e6-k5_e1_g2-"
    "k5_e1-k3_e1_g2-k5_e6-k5_e6-k5_e3-k5_e6-k5_e6"
)
#: The argument each zoo entry with one accepts (entries not listed take none), so a spec's
#: ``model`` is checked at submission, not in the worker; a test keeps this equal to the
#: registry (each entry's ``args[0]``, ``arg_pattern`` and ``default_arch``).
ZOO_ARGUMENTS: dict[str, ModelArgument] = {
    "fbnet": ModelArgument("arch", _FBNET_KIND + f"(?:-{_FBNET_KIND}){{21}}", _FBNET_ARCH),
    "nasbench201": ModelArgument(
        "arch",
        r"\+".join(r"\|" + r"\|".join(f"{_NB201_OP}~{i}" for i in range(k + 1)) + r"\|" for k in range(3)),
        _NB201_ARCH,
    ),
}
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
#: The share of a user's dataset that goes to calibration (the rest is evaluated).
DEFAULT_CALIBRATION_FRACTION = 0.25
#: The setting listing the folders whose files (weights, data paths) a job given to the service
#: may name; the service passes it as the validation context's ``file_roots``.
FILE_ROOTS_SETTING = "HWSEARCH_FILE_ROOTS"
MAX_PATH_CHARS = 4096
MAX_MODEL_ARGS_CHARS = 4096
#: Fields added after specs were first stored: left out of the fingerprint at their default, so
#: a stored job's fingerprint does not change.
_LATER_FIELDS = ("model_args", "weights", "input_shape", "data", "evaluator", "eval_examples")
#: A knob's fraction: finite (NaN and Infinity are refused), in (0, 1].
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Bits = Literal[2, 3, 4, 6, 8, 16, 32]
#: A glob pattern on layer names.
Pattern = Annotated[str, Field(max_length=MAX_PATTERN_CHARS)]
_CONSTRAINT = re.compile(r"^\s*([a-z_0-9]+)\s*(?:@\s*([A-Za-z0-9_.\-]+)\s*)?(<=|>=)\s*([-+0-9.eE]+)\s*$")
_MAX_CONSTRAINT_CHARS = 200


def _valid_name(value: str) -> str:
    """A target name: the one name pattern of search_spaces (it becomes a catalogue folder)."""
    try:
        return check_name("target", value)
    except BadName as exc:  # pydantic's location names the field: the message need not
        raise ValueError(f"{exc.value!r} is not a valid target name: {exc.hint}") from None


class SpaceSpec(BaseModel):
    """Knob values offered on every layer that supports them (``search_spaces.Space.build``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    rank_fractions: Annotated[list[Fraction], Field(max_length=MAX_CHOICES)] = []
    keep: Annotated[list[Fraction], Field(max_length=MAX_CHOICES)] = []
    wbits: Annotated[list[Bits], Field(max_length=MAX_CHOICES)] = []
    abits: Annotated[list[Bits], Field(max_length=MAX_CHOICES)] = []
    token_keep: Annotated[list[Fraction], Field(max_length=MAX_CHOICES)] = []
    include: Annotated[list[Pattern], Field(max_length=MAX_PATTERNS)] = []
    exclude: Annotated[list[Pattern], Field(max_length=MAX_PATTERNS)] = []
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

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    metric: Literal["quality", "latency_ms", "weight_bytes", "energy_mj", "dsp", "lut", "bram36"]
    op: Literal["<=", ">="]
    value: float
    target: Annotated[str, AfterValidator(_valid_name)] | None = None

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
        return cls.model_validate(cls.fields_of(text))

    @staticmethod
    def fields_of(text: str) -> dict[str, Any]:
        """The fields of a constraint written as text (``parse``), not yet validated: a spec
        validates them in place, so an error names the constraint's index and field."""
        # The length first: the message echoes the text, and a regex need not scan megabytes.
        if len(text) > _MAX_CONSTRAINT_CHARS:
            raise ValueError(
                f"a constraint has at most {_MAX_CONSTRAINT_CHARS} characters, but got {len(text)}"
            )
        m = _CONSTRAINT.match(text)
        if m is None:
            raise ValueError(
                f"constraint {text!r} is not of the form METRIC[@TARGET]<=VALUE or quality>=VALUE, "
                f"e.g. latency_ms<=5 or dsp@zcu102<=2000"
            )
        metric, target, op, value = m.groups()
        # The value stays text: pydantic parses it, refusing what is not a finite number.
        return {"metric": metric, "target": target, "op": op, "value": value}

    def __str__(self) -> str:
        where = f"@{self.target}" if self.target else ""
        return f"{self.metric}{where}{self.op}{self.value:g}"


class Budget(BaseModel):
    """Stop after this many quality evaluations and/or this much wall time, whichever comes first."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    evaluations: int | None = Field(DEFAULT_EVALUATIONS, ge=1, le=100_000)
    # Finite and at most 7 days: with evaluations None it is the only thing ending the search.
    wall_time_s: float | None = Field(None, gt=0, le=MAX_WALL_TIME_S, allow_inf_nan=False)

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.evaluations is None and self.wall_time_s is None:
            raise ValueError("a budget needs evaluations or wall_time_s (or both)")
        return self


def _known_target(name: str, info: ValidationInfo) -> str:
    _valid_name(name)
    known: Collection[str] | None = (info.context or {}).get("targets")
    if known is not None and name not in known:
        raise ValueError(f"unknown target {name!r}; valid names: {', '.join(sorted(known))}")
    return name


TargetName = Annotated[str, AfterValidator(_known_target)]


def _check_model(value: str, info: ValidationInfo) -> str:
    """A model id: a zoo id (``name`` or ``name:argument`` with the argument the entry accepts),
    an installed plugin's name, or an import path ``module:factory`` whose package the caller
    allows (the validation context's ``model_modules``; absent: any)."""
    try:
        kind = model_kind(value, _allowed_modules(info))
    except ModelRefError as exc:
        raise ValueError(str(exc)) from None
    if kind != "zoo":
        return value
    name, sep, arg = value.partition(":")
    if not sep:
        return value
    accepted = ZOO_ARGUMENTS.get(name)
    if accepted is None:
        raise ValueError(f"{name!r} takes no argument, but got {arg!r} after ':'; use {name!r}")
    if re.fullmatch(accepted.pattern, arg) is None:
        raise ValueError(
            f"{arg!r} is not a valid {accepted.keyword} for {name!r} (see `hwsearch models`), "
            f"e.g. {name}:{accepted.example}"
        )
    return value


def _allowed_modules(info: ValidationInfo) -> Collection[str] | None:
    allowed: Collection[str] | None = (info.context or {}).get("model_modules")
    return allowed


def _check_file(value: str, info: ValidationInfo) -> str:
    """A file or folder path the workers read. Where the validation context has ``file_roots``
    (the service), it must lie inside one of them: a token must not let anyone probe the
    server's file system."""
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character")
    roots: Collection[str] | None = (info.context or {}).get("file_roots")
    if roots is None:
        return value
    path = PurePosixPath(value)
    listed = ", ".join(sorted(roots)) or "empty"
    if not path.is_absolute() or ".." in path.parts or not any(path.is_relative_to(r) for r in roots):
        raise ValueError(
            f"the service reads only files under the folders of the setting {FILE_ROOTS_SETTING} "
            f"({listed}), as absolute paths without '..'; upload the data as a dataset "
            "(hwsearch dataset add) or ask the operator to add the folder"
        )
    return value


FilePath = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS), AfterValidator(_check_file)]
#: A JSON value in ``model_args``: what a factory's keyword arguments can be.
ArgValue = StrictBool | StrictInt | Annotated[float, Field(allow_inf_nan=False)] | str | None | list[Any]
InputShape = Annotated[list[Annotated[int, Field(ge=1, le=1 << 20)]], Field(min_length=1, max_length=8)]
DatasetId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class DataSpec(BaseModel):
    """The user's data a job is judged on: a registered dataset (``hwsearch dataset add``) or a
    path the workers can read (an ImageFolder, a flat image folder or a ``.jsonl`` file), how its
    images are preprocessed, and the share that goes to calibration (split once, seeded by the
    job's seed, never overlapping the evaluation part)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dataset: DatasetId | None = None
    path: FilePath | None = None
    preprocessing: dict[str, Any] | None = None
    calibration_fraction: float = Field(DEFAULT_CALIBRATION_FRACTION, gt=0, lt=1)

    @field_validator("preprocessing")
    @classmethod
    def _preprocessing(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        from workers.datasets import DatasetError, ImagePreprocessing

        try:
            return ImagePreprocessing.from_dict(value).to_dict()
        except DatasetError as exc:
            raise ValueError(str(exc)) from None
        except TypeError as exc:
            raise ValueError(f"preprocessing: {exc}") from None

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.dataset is None) == (self.path is None):
            raise ValueError(
                "give exactly one of dataset (an id from `hwsearch dataset list`) and path "
                f"(a folder or .jsonl file the workers can read), but got dataset={self.dataset!r}, "
                f"path={self.path!r}"
            )
        return self

    def describe(self) -> str:
        return f"dataset {self.dataset}" if self.dataset else f"path {self.path}"


#: Defaults of the recovery stage (``recovery.finetune``).
DEFAULT_RECOVERY_PLANS = 3
DEFAULT_RECOVERY_STEPS = 200
DEFAULT_RECOVERY_LR = 1e-3
DEFAULT_RECOVERY_BATCH = 16


class FinetuneSpec(BaseModel):
    """The recovery stage: after the search, the ``plans`` front plans that add most to the
    front are fine-tuned by distillation from the uncompressed model on the calibration data,
    ``steps`` optimiser steps of ``batch`` inputs at learning rate ``lr`` each, and scored again
    on the evaluation data. ``loss``: ``"kd"`` (KL to the uncompressed model's outputs; no labels
    needed) or ``"kd+ce"`` (plus cross-entropy on the labels of the job's labelled data)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    plans: int = Field(DEFAULT_RECOVERY_PLANS, ge=1, le=64)
    steps: int = Field(DEFAULT_RECOVERY_STEPS, ge=1, le=100_000)
    lr: float = Field(DEFAULT_RECOVERY_LR, gt=0, le=1)
    batch: int = Field(DEFAULT_RECOVERY_BATCH, ge=1, le=1024)
    loss: Literal["kd", "kd+ce"] = "kd"


class RecoverySpec(BaseModel):
    """How quality survives compression: ``calibrate`` (on by default) calibrates every
    evaluated plan on the calibration data before it is scored; ``finetune`` (off by default)
    adds the recovery stage for the front."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    calibrate: StrictBool = True
    finetune: FinetuneSpec | None = None


class JobSpec(BaseModel):
    """One search. ``model`` is a zoo id or plugin name (``hwsearch models``) or an import path
    ``module:factory`` (built with ``model_args``; ``weights`` loaded strictly on top;
    ``input_shape`` gives a bare ``nn.Module`` its example input). ``data`` is the user's data the
    plans are judged on (``eval_examples`` bounds it), ``evaluator`` an import path
    ``module:function`` returning the quality of a model. ``targets`` are target names
    (``hwsearch targets``), ``strategy`` a registered strategy (``hwsearch search --help``).

    The validation context may hold ``targets`` (the valid target names), ``model_modules`` (the
    packages import paths may name) and ``file_roots`` (the folders paths may lie in); the
    service passes all three, a local CLI only its targets."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=400)
    model_args: dict[str, ArgValue] = {}
    weights: FilePath | None = None
    input_shape: InputShape | None = None
    data: DataSpec | None = None
    evaluator: Annotated[str, Field(max_length=400)] | None = None
    eval_examples: int | None = Field(None, ge=1, le=1_000_000)
    targets: list[TargetName] = Field(min_length=1, max_length=MAX_TARGETS)
    space: SpaceSpec = SpaceSpec.model_validate(DEFAULT_SPACE)
    objectives: Annotated[
        list[Literal["quality", "latency_ms", "weight_bytes", "energy_mj"]], Field(max_length=len(OBJECTIVES))
    ] = ["quality", "latency_ms"]
    constraints: Annotated[list[Constraint], Field(max_length=MAX_CONSTRAINTS)] = []
    strategy: str = Field(DEFAULT_STRATEGY, max_length=MAX_PATTERN_CHARS)
    budget: Budget = Budget(evaluations=DEFAULT_EVALUATIONS, wall_time_s=None)
    seed: int = Field(DEFAULT_SEED, ge=0, le=2**31 - 1)
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=64)
    plans_per_task: int = Field(4, ge=1, le=64)
    quality_examples: int | None = Field(None, ge=8, le=100_000)
    recovery: RecoverySpec = RecoverySpec()

    @field_validator("constraints", mode="before")
    @classmethod
    def _parse_constraints(cls, value: Any) -> Any:
        # Capped here too: this runs before the field's own max_length, on every item.
        if isinstance(value, list) and len(value) <= MAX_CONSTRAINTS:
            return [Constraint.fields_of(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str, info: ValidationInfo) -> str:
        return _check_model(value, info)

    @field_validator("model_args")
    @classmethod
    def _small_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value))
        if size > MAX_MODEL_ARGS_CHARS:
            raise ValueError(
                f"model_args has at most {MAX_MODEL_ARGS_CHARS} characters as JSON, but got {size}"
            )
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(f"model_args keys are keyword-argument names, but got {bad[0]!r}")
        return value

    @field_validator("input_shape")
    @classmethod
    def _batch_one(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and value[0] != 1:
            raise ValueError(
                f"the first dimension is the batch and must be 1, but got {value}; e.g. 1,3,32,32"
            )
        return value

    @field_validator("evaluator")
    @classmethod
    def _evaluator_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            return check_import_path(value, "an evaluator", _allowed_modules(info))
        except ModelRefError as exc:
            raise ValueError(str(exc)) from None

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

    @model_validator(mode="after")
    def _examples_of_data(self) -> JobSpec:
        if self.eval_examples is not None and self.data is None:
            raise ValueError(
                f"eval_examples={self.eval_examples} bounds how much of the job's data is evaluated, "
                "but the job has no data; give data or leave eval_examples out"
            )
        if self.quality_examples is not None and (self.data is not None or self.evaluator is not None):
            raise ValueError(
                "quality_examples sizes a zoo model's own evaluation set; with data or an evaluator "
                "use eval_examples instead"
            )
        finetune = self.recovery.finetune
        if finetune is not None:
            if self.budget.evaluations is not None and finetune.plans > self.budget.evaluations:
                raise ValueError(
                    f"recovery.finetune.plans={finetune.plans} is more than the budget of "
                    f"{self.budget.evaluations} evaluations can put on the front; give at most "
                    f"{self.budget.evaluations}"
                )
            if finetune.loss == "kd+ce" and self.data is None:
                raise ValueError(
                    "recovery.finetune.loss='kd+ce' needs labelled data (data with classes), but the "
                    "job has no data; use loss 'kd' or give data"
                )
        return self

    def fingerprint(self) -> str:
        """12 hex digits naming the search this spec defines: everything but the budget and
        how it is run (concurrency, plans per task), so a resumed search may get more budget."""
        exclude: set[str] = {"budget", "concurrency", "plans_per_task", "recovery"}
        exclude |= {f for f in _LATER_FIELDS if getattr(self, f) == type(self).model_fields[f].default}
        search = self.model_dump_json(exclude=exclude)
        # The recovery stage comes after the search and leaves it as it is; calibration changes
        # every quality, so a search without it is another search (with it, the default, the
        # fingerprint stays what it was before calibration existed).
        if not self.recovery.calibrate:
            search += '{"calibrate":false}'

        return hashlib.sha256(search.encode()).hexdigest()[:12]

    @property
    def quality_floor(self) -> float | None:
        floors = [c.value for c in self.constraints if c.metric == "quality"]
        return max(floors) if floors else None
