"""Structured channel pruning that makes layers physically smaller.

Importance, without calibration data (``importance="weight"``): the group L2 norm
(Torch-Pruning's GroupMagnitudeImportance, p=2): for each output channel of a coupled group,
the squared L2 norms of every weight slice that channel touches (the producers' output
filters, BN scales, the consumers' input slices) are summed.

With calibration batches (``importance="activation"``, the default when ``calibration`` is
given): one forward pass records, at the input of every Conv2d / Linear, each channel's mean
and variance on real inputs. Removing channel c from a consumer with weight ``W`` changes its
output by ``W[:, c] · a_c``; once the mean ``W[:, c] · E[a_c]`` is put back (below), what is lost
is ``||W[:, c]||² · Var(a_c)`` (summed over the kernel for a conv), so a channel's importance is
that sum over every consumer in its group (its second moment ``E[a_c²]`` instead where the mean
cannot be put back). Channels that are large but constant on real data, or large in weight but
silent, are ranked for what they contribute to the next layer's output.

The lowest-scoring channels are removed from every layer of the group with Torch-Pruning's
dependency graph, so residual adds, depthwise convs and the consumers stay consistent and the
pruned model is a smaller dense model, not a masked one.

Mean compensation (with calibration): for each consumer that loses input channels, the mean
of what was removed, ``shift = Σ_removed W[:, c] · E[a_c]`` (summed over the kernel for a conv;
exact away from the zero-padded border), is added to the consumer's bias, or, for a consumer
without a bias whose output feeds a BatchNorm directly, subtracted from that BatchNorm's running
mean (the same thing; adaptive BN re-estimates it afterwards anyway). A consumer with neither (or
a grouped conv) is left uncompensated and ``notes`` says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import nn

from search_spaces import kept_channels

Importance = Literal["weight", "activation"]


class _ChannelStats:
    """Per-input-channel count, sum and sum of squares at one Conv2d / Linear input."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.sum = torch.zeros(channels, dtype=torch.float64)
        self.sq = torch.zeros(channels, dtype=torch.float64)

    def update(self, x: torch.Tensor, channel_dim: int) -> None:
        x = x.detach().float().movedim(channel_dim, 0)
        x = x.reshape(x.shape[0], -1)
        self.count += int(x.shape[1])
        self.sum += x.sum(1).double().cpu()
        self.sq += (x * x).sum(1).double().cpu()

    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    def second_moment(self) -> torch.Tensor:
        return self.sq / max(self.count, 1)

    def variance(self) -> torch.Tensor:
        return (self.second_moment() - self.mean() ** 2).clamp_min(0.0)


@torch.no_grad()
def _input_channel_stats(model: nn.Module, batches: list[torch.Tensor]) -> dict[nn.Module, _ChannelStats]:
    stats: dict[nn.Module, _ChannelStats] = {}
    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            channels = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
            stats[module] = _ChannelStats(channels)
            dim = 1 if isinstance(module, nn.Conv2d) else -1

            def hook(mod: nn.Module, args: tuple[torch.Tensor, ...], dim: int = dim) -> None:
                stats[mod].update(args[0], dim)

            handles.append(module.register_forward_pre_hook(hook))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            model(b.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def _column_energy(layer: nn.Conv2d | nn.Linear, idxs: list[int]) -> torch.Tensor:
    """``||W[:, c]||²`` (over outputs and kernel) for each input channel c in ``idxs``."""
    w = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        return w[:, idxs].pow(2).sum(0).cpu()
    if layer.groups == 1:
        return w[:, idxs].pow(2).sum((0, 2, 3)).cpu()
    # Grouped: input channel c is column c % (in/groups) of its group's output filters.
    per_group_in = layer.in_channels // layer.groups
    per_group_out = layer.out_channels // layer.groups
    out = []
    for c in idxs:
        g, j = divmod(c, per_group_in)
        out.append(w[g * per_group_out : (g + 1) * per_group_out, j].pow(2).sum())
    return torch.stack(out).cpu() if out else torch.zeros(0, dtype=torch.float64)


def _column_sum(layer: nn.Conv2d | nn.Linear, idxs: list[int]) -> torch.Tensor:
    """``Σ_kernel W[:, c]`` (out × len(idxs)): a constant input on channel c adds column c."""
    w = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        return w[:, idxs]
    return w[:, idxs].sum((2, 3))


def _bn_after(graph: Any, layer: nn.Module) -> nn.modules.batchnorm._BatchNorm | None:
    """The BatchNorm that alone consumes ``layer``'s output, if there is one."""
    node = graph.module2node.get(layer)
    if node is None or len(node.outputs) != 1:
        return None
    nxt = node.outputs[0].module
    return nxt if isinstance(nxt, nn.modules.batchnorm._BatchNorm) else None


def _is_in_channels(dep: Any) -> bool:
    return "in_channels" in getattr(dep.handler, "__name__", "")


def prune_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    keep_by_layer: Mapping[str, float],
    ignored: list[nn.Module] | None = None,
    *,
    calibration: Iterable[torch.Tensor] | None = None,
    importance: Importance | None = None,
    compensate: bool = True,
    notes: list[str] | None = None,
) -> nn.Module:
    """Prune, in place, the output channels of the named layers (and everything coupled to them).

    ``keep_by_layer`` maps a Conv2d/Linear name to its keep ratio; each group is pruned once,
    to ``round(channels · keep)`` channels (at least one). ``calibration``: batches of real model
    inputs; with them the importance defaults to ``"activation"`` and, if ``compensate``, the
    mean of what is removed is put back into the consumers (see the module docstring).
    ``notes`` receives what could not be compensated. Returns ``model``.
    """
    if importance is None:
        importance = "weight" if calibration is None else "activation"
    if importance not in ("weight", "activation"):
        raise ValueError(f"`importance` must be 'weight' or 'activation', but got {importance!r}")
    batches = list(calibration) if calibration is not None else None
    if batches is not None and not batches:
        raise ValueError("`calibration` must hold at least one batch of model inputs, but got none")
    if importance == "activation" and batches is None:
        raise ValueError("`importance='activation'` needs `calibration` batches of real model inputs")
    if not keep_by_layer:
        return model
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    stats = _input_channel_stats(model, batches) if batches is not None else {}
    # Current input index → index at the time the statistics were taken, per consumer.
    in_map: dict[nn.Module, list[int]] = {m: list(range(s.sum.numel())) for m, s in stats.items()}
    uncompensated: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        magnitude = tp.importance.GroupMagnitudeImportance(p=2)
        done: set[nn.Module] = set()
        for name, keep in keep_by_layer.items():
            layer = modules[name]
            if layer in done or keep >= 1.0:
                continue
            channels = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            n_keep = kept_channels(channels, keep, 1)
            handler = (
                tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
            )
            group = graph.get_pruning_group(layer, handler, idxs=list(range(channels)))
            consumers = [
                (item.dep.target.module, [int(i) for i in item.idxs], [int(r) for r in item.root_idxs])
                for item in group
                if _is_in_channels(item.dep) and item.dep.target.module in stats
            ]
            scores = None
            if importance == "activation" and consumers:
                scores = torch.zeros(channels, dtype=torch.float64)
                for consumer, idxs, roots in consumers:
                    s = stats[consumer]
                    orig = [in_map[consumer][i] for i in idxs]
                    can_shift = compensate and (
                        getattr(consumer, "bias", None) is not None or _bn_after(graph, consumer) is not None
                    )
                    spread = s.variance()[orig] if can_shift else s.second_moment()[orig]
                    local = _column_energy(consumer, idxs) * spread
                    scores.index_add_(0, torch.tensor(roots), local)
            if scores is None:
                scores = magnitude(group).double().cpu()
            drop = torch.argsort(scores)[: channels - n_keep].tolist()
            for dep, _ in group:
                # Only layers whose *output* channels this group prunes are done; a consumer
                # that merely loses input channels may still have its own group to prune.
                if "out_channels" in getattr(dep.handler, "__name__", ""):
                    done.add(dep.target.module)
            if not drop:
                continue
            dropped = set(drop)
            if compensate and batches is not None:
                for consumer, idxs, roots in consumers:
                    removed = [i for i, r in zip(idxs, roots, strict=True) if r in dropped]
                    if removed and not _compensate(
                        graph, consumer, removed, stats[consumer], in_map[consumer]
                    ):
                        uncompensated.add(names.get(consumer, type(consumer).__name__))
            pruning = graph.get_pruning_group(layer, handler, idxs=sorted(drop))
            for item in pruning:
                consumer = item.dep.target.module
                if _is_in_channels(item.dep) and consumer in in_map:
                    gone = {int(i) for i in item.idxs}
                    in_map[consumer] = [o for j, o in enumerate(in_map[consumer]) if j not in gone]
            pruning.prune()
    if uncompensated and notes is not None:
        notes.append(
            "pruning: the mean of the removed channels could not be put back into "
            f"{', '.join(sorted(uncompensated))} (no bias and no BatchNorm right after, or a grouped conv)"
        )
    return model


@torch.no_grad()
def _compensate(
    graph: Any, consumer: nn.Module, removed: list[int], stats: _ChannelStats, orig: list[int]
) -> bool:
    """Put the mean contribution of the ``removed`` input channels back; False where it cannot."""
    if not isinstance(consumer, nn.Conv2d | nn.Linear):
        return False
    if isinstance(consumer, nn.Conv2d) and consumer.groups != 1:
        return False
    mu = stats.mean()[[orig[i] for i in removed]]
    shift = _column_sum(consumer, removed) @ mu
    bias = getattr(consumer, "bias", None)
    if bias is not None:
        bias.add_(shift.to(bias.dtype).to(bias.device))
        return True
    bn = _bn_after(graph, consumer)
    if bn is not None and bn.running_mean is not None:
        bn.running_mean.sub_(shift.to(bn.running_mean.dtype).to(bn.running_mean.device))
        return True
    return False
