"""LayerSpec: the shapes and costs of one compressible layer, as seen in a real forward pass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from ._errors import SpaceError


class LayerKind(StrEnum):
    """What a layer computes; decides which knobs it can offer."""

    LINEAR = "linear"
    CONV2D = "conv2d"
    DEPTHWISE_CONV2D = "depthwise_conv2d"
    GROUPED_CONV2D = "grouped_conv2d"
    ATTENTION = "attention"
    POOLING = "pooling"
    ELEMENTWISE = "elementwise"


#: Kinds computed as (grouped) matrix multiplications: they take ranks, pruning and bits.
GEMM_KINDS: frozenset[LayerKind] = frozenset(
    {LayerKind.LINEAR, LayerKind.CONV2D, LayerKind.DEPTHWISE_CONV2D, LayerKind.GROUPED_CONV2D}
)


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a model, with the shapes it had in a traced forward pass (batch 1).

    For ``linear`` layers ``in_channels``/``out_channels`` are the features and ``tokens`` the
    number of rows the layer sees per example (sequence length, or 1). For convolutions
    ``input_hw``/``output_hw`` are spatial sizes. For ``attention`` blocks ``tokens`` is the
    sequence length entering the block, ``out_channels`` the embedding width and ``heads`` the
    number of heads; its ``macs`` count only the two attention matmuls (QK^T and AV): the
    projections are separate ``linear`` LayerSpecs whose ``block`` names the attention block.

    ``group`` names a set of layers whose output channels are coupled (a residual add, a
    depthwise conv after a pointwise conv...): they must share one channel keep ratio.
    ``in_group`` names the group whose pruning shrinks this layer's input channels. ``block``
    names the attention block a layer belongs to; ``cls_token`` says whether an attention
    block's token 0 is a classification token (never pruned).
    ``prunable``/``decomposable`` say whether the channel-keep and rank knobs make sense.

    ``pooling`` and ``elementwise`` entries have no MACs and never offer knobs. An
    ``elementwise`` entry (kernels.trace with ``graph=True``) folds the non-GEMM ops one module
    ran: ``extra`` holds ``op_class`` (elementwise, activation, norm, concat, copy, pooling),
    ``count`` (ops), ``bytes`` (float32 bytes read and written at batch 1), ``ops`` (aten op
    name → count) and ``live``. ``extra["live"] = False`` on any entry marks dead work: none of
    its outputs reaches the model output, or it computes a constant; absent means live, so
    stored inventories without the mark still load.
    """

    name: str
    kind: LayerKind
    in_channels: int = 0
    out_channels: int = 0
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    input_hw: tuple[int, int] = (1, 1)
    output_hw: tuple[int, int] = (1, 1)
    tokens: int = 1
    heads: int = 0
    params: int = 0
    macs: int = 0
    bias: bool = False
    group: str | None = None
    in_group: str | None = None
    block: str | None = None
    cls_token: bool = False
    prunable: bool = False
    decomposable: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def full_rank(self) -> int:
        """Largest useful rank: the rank of the weight matrix the low-rank operator factorises.

        Linear and 1×1 conv: min(in, out). k×k conv (spatial SVD, W reshaped to
        (in·kh) × (out·kw)): min(in·kh, out·kw). Layers that cannot be decomposed: 0.
        """
        if not self.decomposable:
            return 0
        kh, kw = self.kernel_size
        if self.kind is LayerKind.LINEAR or (kh, kw) == (1, 1):
            return min(self.in_channels, self.out_channels)
        return min(self.in_channels * kh, self.out_channels * kw)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["kernel_size"] = list(self.kernel_size)
        data["stride"] = list(self.stride)
        data["input_hw"] = list(self.input_hw)
        data["output_hw"] = list(self.output_hw)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpec:
        if not isinstance(data, dict):
            raise SpaceError("layer", data, "a JSON object with at least 'name' and 'kind' is required")
        try:
            kind = LayerKind(str(data.get("kind")))
        except ValueError:
            raise SpaceError(
                f"layer[{data.get('name')!r}].kind",
                data.get("kind"),
                f"one of {[k.value for k in LayerKind]} is required",
            ) from None
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpaceError(
                f"layer[{data.get('name')!r}]", unknown, f"unknown fields; allowed: {sorted(known)}"
            )
        kwargs = dict(data)
        kwargs["kind"] = kind
        for key in ("kernel_size", "stride", "input_hw", "output_hw"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def kept_channels(channels: int, keep: float, multiple: int = 1) -> int:
    """Number of output channels a keep ratio leaves, rounded to ``multiple``.

    Rounds to the nearest multiple (users of pruning tools report that odd channel counts
    run slower than the next multiple), never below one multiple (or 1) and never above the
    original count.
    """
    if keep >= 1.0 or channels <= 0:
        return channels
    step = max(1, multiple)
    n = round(channels * keep / step) * step
    return max(min(step, channels), min(channels, n))


def round_rank(rank: float, full_rank: int, multiple: int = 1) -> int:
    """Round a rank to a multiple, within [1 or one multiple, full_rank]."""
    step = max(1, multiple)
    r = math.ceil(rank / step) * step
    return max(min(step, full_rank), min(full_rank, r))


def tokens_after_pruning(tokens: int, keep: float, cls_token: bool) -> int:
    """Tokens an attention block passes on at a token keep rate (EViT-style fusion).

    The top ``round(keep * candidates)`` tokens are kept (at least one), where the
    candidates are all tokens but a CLS token; the rest are fused into one extra token.
    Keep 1.0 is the identity.
    """
    start = 1 if cls_token else 0
    candidates = tokens - start
    if keep >= 1.0 or candidates <= 1:
        return tokens
    kept = max(1, round(keep * candidates))
    if kept >= candidates:
        return tokens
    return start + kept + 1
