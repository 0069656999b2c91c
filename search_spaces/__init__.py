"""The shared vocabulary of hwsearch: layers, per-layer choices, plans and search spaces.

No torch here: the service, latency models and samplers use this package without loading a
deep-learning framework.
"""

from __future__ import annotations

from ._cost import LayerCost, PlanCost, layer_costs, plan_cost
from ._errors import InputError, SpaceError
from ._layer import GEMM_KINDS, LayerKind, LayerSpec, kept_channels, round_rank, tokens_after_pruning
from ._limits import (
    MAX_CHOICES,
    MAX_CONSTRAINTS,
    MAX_NAME_CHARS,
    MAX_PATTERN_CHARS,
    MAX_PATTERNS,
    MAX_TARGETS,
    MAX_TEXT_CHARS,
    MAX_WALL_TIME_S,
    NAME_HINT,
    NAME_PATTERN,
    BadName,
    LimitError,
    check_finite,
    check_length,
    check_name,
    is_name,
)
from ._plan import ALLOWED_BITS, Choice, Plan
from ._registry import Registry
from ._space import KNOBS, LayerKnobs, Space

__all__ = [
    "ALLOWED_BITS",
    "GEMM_KINDS",
    "KNOBS",
    "MAX_CHOICES",
    "MAX_CONSTRAINTS",
    "MAX_NAME_CHARS",
    "MAX_PATTERNS",
    "MAX_PATTERN_CHARS",
    "MAX_TARGETS",
    "MAX_TEXT_CHARS",
    "MAX_WALL_TIME_S",
    "NAME_HINT",
    "NAME_PATTERN",
    "BadName",
    "Choice",
    "InputError",
    "LayerCost",
    "LayerKind",
    "LayerKnobs",
    "LayerSpec",
    "LimitError",
    "Plan",
    "PlanCost",
    "Registry",
    "Space",
    "SpaceError",
    "check_finite",
    "check_length",
    "check_name",
    "is_name",
    "kept_channels",
    "layer_costs",
    "plan_cost",
    "round_rank",
    "tokens_after_pruning",
]
