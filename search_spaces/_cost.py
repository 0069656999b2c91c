"""Exact params, MACs and weight bytes of a plan, computed from the layer inventory alone.

No model is built: this is what samplers and latency predictors use to cost thousands of plans
per second. It mirrors what ``kernels.apply`` builds (pruned channel counts, low-rank factor
shapes, token counts after pruning, per-channel scales of quantized weights) and the tests
check it against ``kernels.count_cost`` on the compressed model, itself checked against
torch's FLOP counter.

Params and weight bytes are hwsearch's one accounting (docs/latency.md, "What weight bytes
count"), the same as ``kernels.count_cost``: the conv and linear layers, weights below 16 bits
at their bit width plus a float32 scale per output channel, 16-bit weights at 16 bits, biases
and float weights at 32 bits; the bits of the whole plan are rounded up to bytes once. Norms,
embedding tables and position/CLS parameters are not part of it (no knob compresses them).
MACs cover convs, linears and the two attention matmuls; pooling and elementwise work is free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._layer import GEMM_KINDS, LayerKind, LayerSpec, kept_channels, tokens_after_pruning
from ._plan import Choice, Plan


@dataclass(frozen=True)
class PlanCost:
    """Params, MACs and weight bytes of a plan (see the module's docstring for what counts)."""

    params: int
    macs: int
    weight_bytes: int


@dataclass(frozen=True)
class LayerCost:
    """The cost of one layer under a plan, with the shapes it ends up with. ``weight_bytes``
    is the layer's own ``weight_bits`` rounded up; a plan's total rounds the sum of the bits."""

    name: str
    in_channels: int
    out_channels: int
    rows: int
    rank: int | None
    params: int
    macs: int
    weight_bytes: int
    weight_bits: int = 0


def _weight_bytes(numel: int, out_channels: int, bits: int) -> int:
    # Quantized below 16 bits: per-output-channel float32 scales come with the weights.
    scale_bits = out_channels * 32 if bits < 16 else 0
    return numel * bits + scale_bits  # in bits; converted by the caller


def layer_costs(layers: Iterable[LayerSpec], plan: Plan) -> list[LayerCost]:
    """Per-layer costs of ``plan`` (validated against ``layers`` first)."""
    inventory = list(layers)
    plan.validate(inventory)
    group_keep: dict[str, float] = {}
    for layer in inventory:
        keep = plan[layer.name].keep
        if layer.group is not None and keep < 1.0:
            group_keep[layer.group] = keep

    def channels(count: int, group: str | None) -> int:
        if group is None or group not in group_keep:
            return count
        return kept_channels(count, group_keep[group], 1)

    # Token counts entering each attention block, in execution order.
    tokens_in: dict[str, int] = {}
    current: int | None = None
    for layer in inventory:
        if layer.kind is LayerKind.ATTENTION:
            n = layer.tokens if current is None else current
            tokens_in[layer.name] = n
            current = tokens_after_pruning(n, plan[layer.name].token_keep, layer.cls_token)

    out: list[LayerCost] = []
    for layer in inventory:
        choice: Choice = plan[layer.name]
        if layer.kind is LayerKind.ATTENTION:
            n = tokens_in[layer.name]
            out.append(
                LayerCost(
                    layer.name,
                    layer.in_channels,
                    layer.out_channels,
                    n,
                    None,
                    0,
                    2 * n * n * layer.out_channels,
                    0,
                )
            )
            continue
        if layer.kind not in GEMM_KINDS:
            continue
        c_out = channels(layer.out_channels, layer.group)
        c_in = channels(layer.in_channels, layer.in_group)
        groups = layer.groups
        if layer.kind is LayerKind.DEPTHWISE_CONV2D:
            c_in = groups = c_out
        bias = c_out if layer.bias else 0
        kh, kw = layer.kernel_size
        rows = layer.tokens
        if layer.block is not None and layer.block in tokens_in:
            rows = tokens_in[layer.block]
        spatial_out = layer.output_hw[0] * layer.output_hw[1]
        rank = choice.rank
        if layer.kind is LayerKind.LINEAR:
            if rank is None:
                weight, macs = c_in * c_out, rows * c_in * c_out
                wbits = _weight_bytes(weight, c_out, choice.wbits)
            else:
                rank = min(rank, c_in, c_out)
                weight, macs = rank * (c_in + c_out), rows * rank * (c_in + c_out)
                wbits = _weight_bytes(rank * c_in, rank, choice.wbits) + _weight_bytes(
                    rank * c_out, c_out, choice.wbits
                )
        elif rank is None:
            weight = c_out * (c_in // groups) * kh * kw
            macs = weight * spatial_out
            wbits = _weight_bytes(weight, c_out, choice.wbits)
        elif (kh, kw) == (1, 1):
            rank = min(rank, c_in, c_out)
            weight = rank * (c_in + c_out)
            macs = weight * spatial_out
            wbits = _weight_bytes(rank * c_in, rank, choice.wbits) + _weight_bytes(
                rank * c_out, c_out, choice.wbits
            )
        else:
            # Spatial SVD: kh×1 (stride along height only) then 1×kw (stride along width).
            rank = min(rank, c_in * kh, c_out * kw)
            first, second = rank * c_in * kh, c_out * rank * kw
            weight = first + second
            macs = first * layer.output_hw[0] * layer.input_hw[1] + second * spatial_out
            wbits = _weight_bytes(first, rank, choice.wbits) + _weight_bytes(second, c_out, choice.wbits)
        wbits += bias * 32
        out.append(
            LayerCost(layer.name, c_in, c_out, rows, rank, weight + bias, macs, (wbits + 7) // 8, wbits)
        )
    return out


def plan_cost(layers: Iterable[LayerSpec], plan: Plan) -> PlanCost:
    """Total params, MACs and weight bytes of the compressible layers under ``plan``."""
    costs = layer_costs(layers, plan)
    return PlanCost(
        params=sum(c.params for c in costs),
        macs=sum(c.macs for c in costs),
        weight_bytes=(sum(c.weight_bits for c in costs) + 7) // 8,
    )
