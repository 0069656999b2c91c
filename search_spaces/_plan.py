"""Choice (the compression of one layer) and Plan (a Choice per layer name)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import SpaceError
from ._layer import GEMM_KINDS, LayerKind, LayerSpec

#: Bit widths a weight or activation may be stored at. 32 = float32 (no quantization),
#: 16 = float16 round trip, 2..8 = integer fake-quant.
ALLOWED_BITS: tuple[int, ...] = (2, 3, 4, 6, 8, 16, 32)

_CHOICE_FIELDS = ("rank", "keep", "wbits", "abits", "token_keep")


@dataclass(frozen=True)
class Choice:
    """How one layer is compressed. The default leaves the layer untouched.

    - ``rank``: rank of the low-rank factorisation, or ``None`` for the dense layer.
    - ``keep``: fraction of output channels kept by structured pruning, in (0, 1].
    - ``wbits`` / ``abits``: weight / input-activation bit width, one of ``ALLOWED_BITS``.
    - ``token_keep``: fraction of tokens an attention block passes on, in (0, 1]
      (attention blocks only).
    """

    rank: int | None = None
    keep: float = 1.0
    wbits: int = 32
    abits: int = 32
    token_keep: float = 1.0

    @property
    def is_identity(self) -> bool:
        return self == Choice()

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _CHOICE_FIELDS}

    @classmethod
    def from_dict(cls, data: Any, where: str = "choice") -> Choice:
        """Parse a JSON object, checking types (not layer limits: see ``Plan.validate``)."""
        if not isinstance(data, Mapping):
            raise SpaceError(where, data, f"a JSON object with keys from {list(_CHOICE_FIELDS)} is required")
        unknown = sorted(set(data) - set(_CHOICE_FIELDS))
        if unknown:
            raise SpaceError(where, unknown, f"unknown keys; allowed: {list(_CHOICE_FIELDS)}")
        rank = data.get("rank")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise SpaceError(f"{where}.rank", rank, "a positive integer or null (no low-rank) is required")
        keep = _fraction(data.get("keep", 1.0), f"{where}.keep")
        token_keep = _fraction(data.get("token_keep", 1.0), f"{where}.token_keep")
        wbits = _bits(data.get("wbits", 32), f"{where}.wbits")
        abits = _bits(data.get("abits", 32), f"{where}.abits")
        return cls(rank=rank, keep=keep, wbits=wbits, abits=abits, token_keep=token_keep)


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpaceError(where, value, "a number in (0, 1] is required")
    if not 0.0 < float(value) <= 1.0:
        raise SpaceError(where, value, "must lie in (0, 1]: 1.0 keeps everything")
    return float(value)


def _bits(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in ALLOWED_BITS:
        raise SpaceError(where, value, f"one of {list(ALLOWED_BITS)} is required")
    return int(value)


@dataclass(frozen=True)
class Plan:
    """A Choice per layer name; layers not named keep the default (uncompressed) Choice."""

    choices: Mapping[str, Choice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Drop identity entries so equal plans compare and hash equal.
        object.__setattr__(
            self, "choices", {k: v for k, v in sorted(self.choices.items()) if not v.is_identity}
        )

    def __getitem__(self, name: str) -> Choice:
        return self.choices.get(name, Choice())

    def __hash__(self) -> int:
        return hash(tuple(self.choices.items()))

    @classmethod
    def uniform(cls, layers: Iterable[LayerSpec], choice: Choice) -> Plan:
        """The same compression on every layer that offers it (the baseline per-layer search must beat)."""
        out: dict[str, Choice] = {}
        for layer in layers:
            rank = None
            if choice.rank is not None and layer.decomposable:
                rank = min(choice.rank, layer.full_rank)
            out[layer.name] = Choice(
                rank=rank,
                keep=choice.keep if layer.prunable else 1.0,
                wbits=choice.wbits if _quantizable(layer) else 32,
                abits=choice.abits if _quantizable(layer) else 32,
                token_keep=choice.token_keep if layer.kind is LayerKind.ATTENTION else 1.0,
            )
        return cls(out)

    def validate(self, layers: Iterable[LayerSpec]) -> Plan:
        """Check the plan against a layer inventory; raise SpaceError naming the first bad field."""
        by_name = {layer.name: layer for layer in layers}
        group_keep: dict[str, tuple[str, float]] = {}
        for name, choice in self.choices.items():
            where = f"plan.layers[{name!r}]"
            layer = by_name.get(name)
            if layer is None:
                raise SpaceError(where, name, f"unknown layer; known layers: {_short_list(by_name)}")
            if choice.rank is not None:
                if not layer.decomposable:
                    raise SpaceError(
                        f"{where}.rank", choice.rank, f"a {layer.kind.value} layer takes no rank; use null"
                    )
                if choice.rank > layer.full_rank:
                    raise SpaceError(
                        f"{where}.rank",
                        choice.rank,
                        f"must be at most the layer's full rank {layer.full_rank}, or null",
                    )
            if choice.keep != 1.0 and not layer.prunable:
                raise SpaceError(
                    f"{where}.keep", choice.keep, "this layer's channels cannot be pruned; use 1.0"
                )
            if (choice.wbits != 32 or choice.abits != 32) and not _quantizable(layer):
                raise SpaceError(
                    f"{where}.wbits", choice.wbits, f"a {layer.kind.value} layer is not quantized; use 32"
                )
            if choice.token_keep != 1.0 and layer.kind is not LayerKind.ATTENTION:
                raise SpaceError(
                    f"{where}.token_keep",
                    choice.token_keep,
                    f"token keep rates apply to attention blocks only, and {name!r} is "
                    f"{layer.kind.value}; use 1.0",
                )
            if layer.group is not None and choice.keep != 1.0:
                group_keep.setdefault(layer.group, (name, choice.keep))
        for name, layer in by_name.items():
            if layer.group in group_keep:
                first, keep = group_keep[layer.group]
                if self[name].keep != keep:
                    raise SpaceError(
                        f"plan.layers[{name!r}].keep",
                        self[name].keep,
                        f"layers of coupled group {layer.group!r} share one keep ratio; {first!r} has {keep}",
                    )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"layers": {name: c.to_dict() for name, c in self.choices.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, layers: Iterable[LayerSpec] | None = None) -> Plan:
        """Parse ``{"layers": {name: choice}}``; validate against ``layers`` when given."""
        if not isinstance(data, Mapping) or not isinstance(data.get("layers"), Mapping):
            raise SpaceError("plan", data, 'a JSON object {"layers": {layer name: choice}} is required')
        extra = sorted(set(data) - {"layers"})
        if extra:
            raise SpaceError("plan", extra, "unknown keys; only 'layers' is allowed")
        plan = cls(
            {str(name): Choice.from_dict(c, f"plan.layers[{name!r}]") for name, c in data["layers"].items()}
        )
        return plan.validate(layers) if layers is not None else plan

    @classmethod
    def from_json(cls, text: str, layers: Iterable[LayerSpec] | None = None) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpaceError(
                "plan", text[:60], f"valid JSON is required ({exc.msg} at line {exc.lineno})"
            ) from None
        return cls.from_dict(data, layers)


def _quantizable(layer: LayerSpec) -> bool:
    return layer.kind in GEMM_KINDS


def _short_list(names: Iterable[str], most: int = 12) -> str:
    items = list(names)
    shown = ", ".join(repr(n) for n in items[:most])
    return shown + (f", ... ({len(items)} in all)" if len(items) > most else "")
