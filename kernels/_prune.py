"""Structured channel pruning that makes layers physically smaller.

Importance: the group L2 norm (Torch-Pruning's GroupMagnitudeImportance, p=2): for each
output channel of a coupled group, the squared L2 norms of every weight slice that channel
touches (the producers' output filters, BN scales, the consumers' input slices) are summed.
The lowest-scoring channels are removed from every layer of the group with Torch-Pruning's
dependency graph, so residual adds, depthwise convs and the consumers stay consistent and the
pruned model is a smaller dense model, not a masked one.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
import torch_pruning as tp
from torch import nn

from search_spaces import kept_channels


def prune_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    keep_by_layer: Mapping[str, float],
    ignored: list[nn.Module] | None = None,
) -> nn.Module:
    """Prune, in place, the output channels of the named layers (and everything coupled to them).

    ``keep_by_layer`` maps a Conv2d/Linear name to its keep ratio; each group is pruned once,
    to ``round(channels · keep)`` channels (at least one). Returns ``model``.
    """
    if not keep_by_layer:
        return model
    modules = dict(model.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        importance = tp.importance.GroupMagnitudeImportance(p=2)
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
            scores = importance(group)
            drop = torch.argsort(scores)[: channels - n_keep].tolist()
            for dep, _ in group:
                # Only layers whose *output* channels this group prunes are done; a consumer
                # that merely loses input channels may still have its own group to prune.
                if "out_channels" in getattr(dep.handler, "__name__", ""):
                    done.add(dep.target.module)
            if drop:
                graph.get_pruning_group(layer, handler, idxs=sorted(drop)).prune()
    return model
