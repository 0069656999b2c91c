"""Space: which knobs each layer offers, and plans as fixed-length vectors."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ._errors import SpaceError
from ._layer import LayerKind, LayerSpec, kept_channels, round_rank
from ._limits import MAX_CHOICES, MAX_PATTERN_CHARS, MAX_PATTERNS
from ._plan import ALLOWED_BITS, Choice, Plan, _bits, _fraction, _quantizable

KNOBS: tuple[str, ...] = ("rank", "keep", "wbits", "abits", "token_keep")


@dataclass(frozen=True)
class LayerKnobs:
    """The discrete options one layer offers for each knob; the first option of each is the default."""

    rank: tuple[int | None, ...] = (None,)
    keep: tuple[float, ...] = (1.0,)
    wbits: tuple[int, ...] = (32,)
    abits: tuple[int, ...] = (32,)
    token_keep: tuple[float, ...] = (1.0,)

    def options(self, knob: str) -> tuple[Any, ...]:
        return tuple(getattr(self, knob))

    @property
    def is_fixed(self) -> bool:
        return all(len(self.options(k)) == 1 for k in KNOBS)

    def to_dict(self) -> dict[str, list[Any]]:
        return {k: list(self.options(k)) for k in KNOBS}


@dataclass(frozen=True)
class Space:
    """The search space over one model: a LayerKnobs per layer of its inventory.

    Layers in one coupled ``group`` share the keep option (they are pruned together), so
    sampling, mutation and encoding keep them equal. Keep options are stored as exact
    fractions ``n / channels`` with ``n`` already rounded to ``channel_multiple``, so applying
    them needs no further rounding; ranks are rounded to ``rank_multiple`` likewise.
    """

    layers: tuple[LayerSpec, ...]
    knobs: Mapping[str, LayerKnobs]
    rank_multiple: int = 8
    channel_multiple: int = 8
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {layer.name: i for i, layer in enumerate(self.layers)})
        for name in self.knobs:
            if name not in self._index:
                raise SpaceError(
                    f"space.layers[{name!r}]", name, "unknown layer; run `hwsearch inspect` for names"
                )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        layers: Iterable[LayerSpec],
        *,
        rank_fractions: Sequence[float] = (),
        keep: Sequence[float] = (),
        wbits: Sequence[int] = (),
        abits: Sequence[int] = (),
        token_keep: Sequence[float] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        rank_multiple: int = 8,
        channel_multiple: int = 8,
    ) -> Space:
        """Offer the same knob values on every layer that supports them.

        ``rank_fractions`` are fractions of each layer's full rank (rounded to
        ``rank_multiple``); ``keep`` are channel keep ratios (rounded to ``channel_multiple``
        of each layer's channels). ``include``/``exclude`` are glob patterns on layer names:
        a layer not included, or excluded, offers only the uncompressed option.
        """
        layer_list = tuple(layers)
        for name, mult in (("rank_multiple", rank_multiple), ("channel_multiple", channel_multiple)):
            if isinstance(mult, bool) or not isinstance(mult, int) or mult < 1:
                raise SpaceError(f"space.{name}", mult, "a positive integer is required (1 = no rounding)")
        # Caps first: a huge list is refused before any of it is looked at.
        for name, values in (
            ("rank_fractions", rank_fractions),
            ("keep", keep),
            ("wbits", wbits),
            ("abits", abits),
            ("token_keep", token_keep),
        ):
            _capped(f"space.{name}", values, MAX_CHOICES)
        for name, patterns in (("include", include), ("exclude", exclude)):
            _capped(f"space.{name}", patterns, MAX_PATTERNS)
            for i, pattern in enumerate(patterns):
                if not isinstance(pattern, str):
                    raise SpaceError(f"space.{name}[{i}]", pattern, "a glob pattern (string) is required")
                if len(pattern) > MAX_PATTERN_CHARS:
                    raise SpaceError(
                        f"space.{name}[{i}]",
                        f"{pattern[:20]}... ({len(pattern)} characters)",
                        f"at most {MAX_PATTERN_CHARS} characters are allowed",
                    )
        for f in rank_fractions:
            _fraction(f, "space.rank_fractions[]")
        for k in keep:
            _fraction(k, "space.keep[]")
        for t in token_keep:
            _fraction(t, "space.token_keep[]")
        for b in wbits:
            _bits(b, "space.wbits[]")
        for b in abits:
            _bits(b, "space.abits[]")
        knobs: dict[str, LayerKnobs] = {}
        for layer in layer_list:
            if not _selected(layer.name, include, exclude):
                continue
            ranks: list[int | None] = [None]
            if layer.decomposable and layer.full_rank > 0:
                for f in rank_fractions:
                    r = round_rank(f * layer.full_rank, layer.full_rank, rank_multiple)
                    if r < layer.full_rank and r not in ranks:
                        ranks.append(r)
            keeps = [1.0]
            if layer.prunable:
                for k in keep:
                    n = kept_channels(layer.out_channels, k, channel_multiple)
                    frac = n / layer.out_channels
                    if frac not in keeps:
                        keeps.append(frac)
            quant = _quantizable(layer)
            knob = LayerKnobs(
                rank=tuple(ranks),
                keep=tuple(keeps),
                wbits=_with_default((32, *wbits) if quant else (32,), 32),
                abits=_with_default((32, *abits) if quant else (32,), 32),
                token_keep=_with_default(
                    (1.0, *token_keep) if layer.kind is LayerKind.ATTENTION else (1.0,), 1.0
                ),
            )
            if not knob.is_fixed:
                knobs[layer.name] = knob
        return cls(layer_list, knobs, rank_multiple, channel_multiple, tuple(include), tuple(exclude))

    # ---- queries ------------------------------------------------------------------------
    def knobs_of(self, name: str) -> LayerKnobs:
        if name not in self._index:
            raise SpaceError("layer", name, "unknown layer; run `hwsearch inspect` for names")
        return self.knobs.get(name, LayerKnobs())

    @property
    def size(self) -> float:
        """Number of distinct plans (groups counted once for their shared keep)."""
        total = 1.0
        seen_groups: set[str] = set()
        for layer in self.layers:
            kn = self.knobs_of(layer.name)
            for knob in KNOBS:
                n = len(kn.options(knob))
                if knob == "keep" and layer.group is not None:
                    if layer.group in seen_groups:
                        continue
                    seen_groups.add(layer.group)
                total *= n
        return total

    def validate_plan(self, plan: Plan) -> Plan:
        """A plan is in the space when it is valid for the layers and every value is an offered option."""
        plan.validate(self.layers)
        for name, choice in plan.choices.items():
            kn = self.knobs_of(name)
            for knob in KNOBS:
                value = getattr(choice, knob)
                if value not in kn.options(knob):
                    raise SpaceError(
                        f"plan.layers[{name!r}].{knob}", value, f"this space offers {list(kn.options(knob))}"
                    )
        return plan

    # ---- encoding -----------------------------------------------------------------------
    @property
    def vector_length(self) -> int:
        return len(KNOBS) * len(self.layers)

    def encode(self, plan: Plan) -> npt.NDArray[np.int64]:
        """Option indices, ``len(KNOBS)`` per layer in inventory order: an exact round trip."""
        self.validate_plan(plan)
        out = np.zeros(self.vector_length, dtype=np.int64)
        for i, layer in enumerate(self.layers):
            kn, choice = self.knobs_of(layer.name), plan[layer.name]
            for j, knob in enumerate(KNOBS):
                out[i * len(KNOBS) + j] = kn.options(knob).index(getattr(choice, knob))
        return out

    def decode(self, vector: Sequence[int] | npt.NDArray[np.integer[Any]]) -> Plan:
        """Inverse of ``encode``; index errors name the layer and knob."""
        values = [int(v) for v in vector]
        if len(values) != self.vector_length:
            raise SpaceError("vector", len(values), f"length {self.vector_length} is required for this space")
        choices: dict[str, Choice] = {}
        for i, layer in enumerate(self.layers):
            kn = self.knobs_of(layer.name)
            kwargs: dict[str, Any] = {}
            for j, knob in enumerate(KNOBS):
                opts, idx = kn.options(knob), values[i * len(KNOBS) + j]
                if not 0 <= idx < len(opts):
                    raise SpaceError(
                        f"vector[{i * len(KNOBS) + j}] ({layer.name}.{knob})",
                        idx,
                        f"an index in [0, {len(opts) - 1}] is required",
                    )
                kwargs[knob] = opts[idx]
            choices[layer.name] = Choice(**kwargs)
        return Plan(choices)

    def features(self, plan: Plan) -> npt.NDArray[np.float64]:
        """Numeric features for predictors: per layer rank fraction (1 = dense), keep, wbits/32,
        abits/32, token keep. Fixed length ``vector_length``."""
        out = np.ones(self.vector_length, dtype=np.float64)
        for i, layer in enumerate(self.layers):
            c = plan[layer.name]
            base = i * len(KNOBS)
            if c.rank is not None and layer.full_rank:
                out[base] = c.rank / layer.full_rank
            out[base + 1] = c.keep
            out[base + 2] = c.wbits / 32.0
            out[base + 3] = c.abits / 32.0
            out[base + 4] = c.token_keep
        return out

    def nearest_uniform(self, values: Mapping[str, Any]) -> Plan:
        """Every layer at its option nearest ``values`` (knob → value; rank as a fraction of the
        layer's full rank, None for no factorisation): the uniform plan of a space whose layers
        offer different options. A knob absent from ``values`` stays at each layer's first
        option (no compression); coupled groups share one keep."""
        choices: dict[str, Choice] = {}
        for layer in self.layers:
            kn = self.knobs_of(layer.name)
            pick: dict[str, Any] = {}
            for knob in KNOBS:
                opts = kn.options(knob)
                if knob not in values or len(opts) == 1:
                    pick[knob] = opts[0]
                    continue
                v = values[knob]
                if knob == "rank":
                    if v is None or not layer.full_rank:
                        pick[knob] = None if None in opts else opts[0]
                        continue
                    full = layer.full_rank
                    numeric = [(full if o is None else o) / full for o in opts]
                else:
                    numeric = [float(o) for o in opts]
                pick[knob] = opts[int(np.argmin([abs(f - float(v)) for f in numeric]))]
            choices[layer.name] = Choice(**pick)
        return self.tie_groups(Plan(choices))

    # ---- sampling -----------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Plan:
        """A uniformly random plan (coupled groups share one keep option)."""
        group_keep: dict[str, float] = {}
        choices: dict[str, Choice] = {}
        for layer in self.layers:
            kn = self.knobs_of(layer.name)
            pick = {knob: _pick(kn.options(knob), rng) for knob in KNOBS}
            if layer.group is not None and layer.prunable:
                pick["keep"] = group_keep.setdefault(layer.group, pick["keep"])
            choices[layer.name] = Choice(**pick)
        return self.tie_groups(Plan(choices))

    def mutate(self, plan: Plan, rng: np.random.Generator, rate: float = 0.1) -> Plan:
        """Resample each knob of each layer with probability ``rate``."""
        _fraction(rate, "rate")
        choices: dict[str, Choice] = {}
        for layer in self.layers:
            kn, old = self.knobs_of(layer.name), plan[layer.name]
            pick = {knob: getattr(old, knob) for knob in KNOBS}
            for knob in KNOBS:
                if rng.random() < rate:
                    pick[knob] = _pick(kn.options(knob), rng)
            choices[layer.name] = Choice(**pick)
        return self.tie_groups(Plan(choices))

    def tie_groups(self, plan: Plan) -> Plan:
        """``plan`` with every coupled group's keep set to its first member's (inventory order):
        layers pruned together must keep the same channels."""
        group_keep: dict[str, float] = {}
        choices = dict(plan.choices)
        for layer in self.layers:
            if layer.group is None or not layer.prunable:
                continue
            c = plan[layer.name]
            keep = group_keep.setdefault(layer.group, c.keep)
            if c.keep != keep:
                choices[layer.name] = Choice(c.rank, keep, c.wbits, c.abits, c.token_keep)
        return Plan(choices)

    # ---- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "rank_multiple": self.rank_multiple,
            "channel_multiple": self.channel_multiple,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "layers": {name: kn.to_dict() for name, kn in sorted(self.knobs.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any, layers: Iterable[LayerSpec]) -> Space:
        """Parse and validate a space against a layer inventory."""
        layer_list = tuple(layers)
        if not isinstance(data, Mapping):
            raise SpaceError("space", data, "a JSON object is required")
        allowed = {"rank_multiple", "channel_multiple", "include", "exclude", "layers"}
        extra = sorted(set(data) - allowed)
        if extra:
            raise SpaceError("space", extra, f"unknown keys; allowed: {sorted(allowed)}")
        by_name = {layer.name: layer for layer in layer_list}
        raw_layers = data.get("layers", {})
        if not isinstance(raw_layers, Mapping):
            raise SpaceError("space.layers", raw_layers, "a JSON object {layer name: knobs} is required")
        knobs: dict[str, LayerKnobs] = {}
        for name, raw in raw_layers.items():
            where = f"space.layers[{name!r}]"
            if name not in by_name:
                raise SpaceError(where, name, "unknown layer; run `hwsearch inspect MODEL` for the names")
            if not isinstance(raw, Mapping) or set(raw) - set(KNOBS):
                raise SpaceError(where, raw, f"a JSON object with keys from {list(KNOBS)} is required")
            kwargs: dict[str, tuple[Any, ...]] = {}
            for knob in KNOBS:
                opts = raw.get(knob, list(LayerKnobs().options(knob)))
                if not isinstance(opts, list) or not opts:
                    raise SpaceError(f"{where}.{knob}", opts, "a non-empty list of options is required")
                _capped(f"{where}.{knob}", opts, MAX_CHOICES)
                kwargs[knob] = tuple(opts)
            kn = LayerKnobs(**kwargs)
            # Every option must be a valid choice for this layer alone (group coupling is checked
            # below, on the whole space).
            alone = (replace(by_name[name], group=None),)
            for knob in KNOBS:
                for value in kn.options(knob):
                    try:
                        Plan({name: Choice.from_dict({knob: value}, "")}).validate(alone)
                    except SpaceError as exc:
                        raise SpaceError(f"{where}.{knob}", value, exc.allowed) from None
            knobs[name] = kn
        group_keeps: dict[str, tuple[str, tuple[float, ...]]] = {}
        for layer in layer_list:
            if layer.group is None or not layer.prunable:
                continue
            keeps = knobs[layer.name].keep if layer.name in knobs else (1.0,)
            first, expected = group_keeps.setdefault(layer.group, (layer.name, keeps))
            if keeps != expected:
                raise SpaceError(
                    f"space.layers[{layer.name!r}].keep",
                    list(keeps),
                    f"layers of coupled group {layer.group!r} must offer the same keep options as "
                    f"{first!r}: {list(expected)}",
                )
        for key in ("include", "exclude"):
            patterns = data.get(key, [])
            if not isinstance(patterns, list | tuple):
                raise SpaceError(f"space.{key}", patterns, "a list of glob patterns (strings) is required")
            _capped(f"space.{key}", patterns, MAX_PATTERNS)
            for i, pattern in enumerate(patterns):
                if not isinstance(pattern, str):
                    raise SpaceError(f"space.{key}[{i}]", pattern, "a glob pattern (string) is required")
        return cls(
            layer_list,
            knobs,
            int(data.get("rank_multiple", 8)),
            int(data.get("channel_multiple", 8)),
            tuple(data.get("include", ())),
            tuple(data.get("exclude", ())),
        )


def _capped(field: str, values: Sequence[Any], cap: int) -> None:
    """A list over ``cap`` is a SpaceError naming the field, its length and the cap."""
    if len(values) > cap:
        raise SpaceError(field, f"{len(values)} items", f"at most {cap} are allowed")


def _selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude)


def _with_default(options: Sequence[Any], default: Any) -> tuple[Any, ...]:
    out = [default]
    for o in options:
        if o not in out:
            out.append(o)
    return tuple(out)


def _pick(options: tuple[Any, ...], rng: np.random.Generator) -> Any:
    return options[int(rng.integers(len(options)))]


__all__ = ["ALLOWED_BITS", "KNOBS", "LayerKnobs", "Space"]
