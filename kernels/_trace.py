"""trace(model, example_input) → the layer inventory, with shapes from a real forward pass."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from search_spaces import LayerKind, LayerSpec

from ._attention import AttentionBlock, attention_linears, has_cls_token, is_token_block, probabilities_module
from ._graph import GraphRecorder

_POOLING = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _conv_kind(conv: nn.Conv2d) -> LayerKind:
    if conv.groups == 1:
        return LayerKind.CONV2D
    if conv.groups == conv.in_channels == conv.out_channels:
        return LayerKind.DEPTHWISE_CONV2D
    return LayerKind.GROUPED_CONV2D


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _record_forward(
    model: nn.Module,
    example_input: torch.Tensor,
    heads: dict[nn.Module, int] | None = None,
    graph: bool = False,
) -> tuple[list[tuple[str, nn.Module, Any, Any]], Any, GraphRecorder | None]:
    """Run the model once, recording (name, module, input, output) of the layers we care about
    and, into ``heads``, the head count of each marked user block (from its probabilities);
    with ``graph``, also the whole dataflow graph of the pass (a GraphRecorder)."""
    calls: list[tuple[str, nn.Module, Any, Any]] = []
    seen: set[str] = set()
    handles = []

    def heads_of(block: nn.Module) -> Any:
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if heads is not None and isinstance(output, torch.Tensor) and output.dim() == 4:
                heads.setdefault(block, int(output.shape[1]))

        return fn

    def hook(name: str) -> Any:
        def fn(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if name not in seen:  # a module called twice (weight sharing) is listed once
                seen.add(name)
                calls.append((name, module, args[0] if args else None, output))

        return fn

    traced: dict[nn.Module, str] = {}
    blocks: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, *_POOLING)) or is_token_block(module):
            handles.append(module.register_forward_hook(hook(name)))
            traced.setdefault(module, name)
            if is_token_block(module):
                blocks.setdefault(module, name)
        if (source := probabilities_module(module)) is not None:
            handles.append(source.register_forward_hook(heads_of(module)))
    recorder = GraphRecorder(model, traced, blocks) if graph else None
    try:
        with torch.no_grad():
            if recorder is None:
                output = model(example_input)
            else:
                with recorder:
                    output = model(example_input)
    finally:
        for h in handles:
            h.remove()
        if recorder is not None:
            recorder.remove_hooks()
    return calls, output, recorder


def _coupled_groups(
    model: nn.Module,
    example_input: torch.Tensor,
    output_layers: list[nn.Module],
    unsafe: set[nn.Module],
) -> tuple[dict[nn.Module, str], dict[nn.Module, str], set[str]]:
    """Coupled channel groups from Torch-Pruning's dependency graph.

    Returns (layer → group id for its output channels, layer → group id feeding its input
    channels, the ids of groups that may be pruned). The id is the name of the group's first
    conv/linear in module order. A group is not prunable when it touches attention
    projections (the residual stream of a transformer), a grouped (non-depthwise) conv, or
    an output layer's output channels.
    """
    names = {m: n for n, m in model.named_modules()}
    order = {m: i for i, (_, m) in enumerate(model.named_modules())}
    out_group: dict[nn.Module, str] = {}
    in_group: dict[nn.Module, str] = {}
    prunable: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Torch-Pruning warns about unwrapped parameters it leaves alone
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        groups = graph.get_all_groups(ignored_layers=output_layers, root_module_types=[nn.Conv2d, nn.Linear])
    for group in groups:
        outs: list[nn.Module] = []
        ins: list[nn.Module] = []
        for dep, _ in group:
            module = dep.target.module
            if not isinstance(module, nn.Conv2d | nn.Linear):
                continue
            fn = getattr(dep.handler, "__name__", "")
            if "out_channels" in fn and module not in outs:
                outs.append(module)
            elif "in_channels" in fn and module not in ins:
                ins.append(module)
        if not outs:
            continue
        gid = names[min(outs, key=lambda m: order[m])]
        for m in outs:
            out_group.setdefault(m, gid)
        for m in ins:
            in_group.setdefault(m, gid)
        # An output layer may lose input channels, never output channels.
        if not (set(outs) | set(ins)) & unsafe and not set(outs) & set(output_layers):
            prunable.add(gid)
    return out_group, in_group, prunable


def trace(
    model: nn.Module,
    example_input: torch.Tensor,
    ignore: Iterable[str] = (),
    *,
    coupling: bool = True,
    graph: bool = True,
) -> list[LayerSpec]:
    """The layer inventory of ``model`` in execution order.

    Every Conv2d, Linear, AttentionBlock and pooling layer that runs in a forward pass on
    ``example_input`` (batch 1) becomes a LayerSpec with the shapes it saw. Coupled channel
    groups come from Torch-Pruning's dependency graph. Layers named in ``ignore`` are listed
    but offer no knobs; the last Conv2d/Linear to run (the output layer) is never pruned.
    ``coupling=False`` skips the dependency graph (about 10× faster): shapes and MACs only,
    no groups and nothing marked prunable, for costing many architectures.

    ``graph=True`` also records the rest of the forward pass (kernels/_graph.py): the
    non-GEMM work (adds, activations, unfolded norms, concatenations, copies, functional
    pooling) as knob-free ``elementwise`` LayerSpecs, listed after the layers, whose ``extra``
    holds ``op_class``, ``count``, ``bytes``, ``ops`` and ``live``; and a layer none of whose
    outputs reaches the model output gets ``extra["live"] = False`` (live layers carry no mark).
    """
    was_training = model.training
    model.eval()
    try:
        heads: dict[nn.Module, int] = {}
        calls, output, recorder = _record_forward(model, example_input, heads, graph)
        ignored = set(ignore)
        blocks = [(n, m) for n, m in model.named_modules() if is_token_block(m)]
        unsafe: set[nn.Module] = set()
        for _, block_module in blocks:
            unsafe.update(attention_linears(block_module))
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d) and _conv_kind(module) is LayerKind.GROUPED_CONV2D:
                unsafe.add(module)
            if name in ignored:
                unsafe.add(module)
        gemms: list[nn.Module] = [m for _, m, _, _ in calls if isinstance(m, nn.Conv2d | nn.Linear)]
        output_layers = gemms[-1:]
        out_group: dict[nn.Module, str] = {}
        in_group: dict[nn.Module, str] = {}
        prunable_groups: set[str] = set()
        if coupling:
            out_group, in_group, prunable_groups = _coupled_groups(
                model, example_input, output_layers, unsafe
            )
    finally:
        model.train(was_training)

    specs: list[LayerSpec] = []
    for name, module, inp, out in calls:
        block = next((bn for bn, _ in blocks if name.startswith(bn + ".")), None)
        if is_token_block(module):
            ran = isinstance(module, AttentionBlock) or module in heads
            if not ran or not isinstance(inp, torch.Tensor) or inp.dim() != 3:
                continue  # a marked block that did not run as [batch, tokens, dim] with its attention
            tokens, dim = int(inp.shape[1]), int(inp.shape[2])
            specs.append(
                LayerSpec(
                    name=name,
                    kind=LayerKind.ATTENTION,
                    in_channels=dim,
                    out_channels=dim,
                    tokens=tokens,
                    heads=module.attn.heads if isinstance(module, AttentionBlock) else heads[module],
                    macs=2 * tokens * tokens * dim,
                    cls_token=has_cls_token(module),
                    block=name,
                    extra={"tokens_out": int(out.shape[1])},
                )
            )
            continue
        if isinstance(module, _POOLING):
            specs.append(
                LayerSpec(
                    name=name,
                    kind=LayerKind.POOLING,
                    in_channels=int(inp.shape[1]),
                    out_channels=int(out.shape[1]),
                    kernel_size=_pair(getattr(module, "kernel_size", 1)),
                    stride=_pair(getattr(module, "stride", 1) or 1),
                    input_hw=(int(inp.shape[-2]), int(inp.shape[-1])),
                    output_hw=(int(out.shape[-2]), int(out.shape[-1])),
                    block=block,
                )
            )
            continue
        gid = out_group.get(module)
        in_gid = in_group.get(module)
        can_prune = gid in prunable_groups and name not in ignored
        params = sum(p.numel() for p in module.parameters(recurse=False))
        has_bias = getattr(module, "bias", None) is not None
        if isinstance(module, nn.Linear):
            rows = int(inp.numel() // inp.shape[-1])
            specs.append(
                LayerSpec(
                    name=name,
                    kind=LayerKind.LINEAR,
                    in_channels=module.in_features,
                    out_channels=module.out_features,
                    tokens=rows,
                    params=params,
                    macs=rows * module.in_features * module.out_features,
                    bias=has_bias,
                    group=gid,
                    in_group=in_gid,
                    block=block,
                    prunable=can_prune,
                    decomposable=name not in ignored,
                )
            )
        elif isinstance(module, nn.Conv2d):
            kind = _conv_kind(module)
            kh, kw = _pair(module.kernel_size)
            oh, ow = int(out.shape[-2]), int(out.shape[-1])
            macs = module.out_channels * oh * ow * (module.in_channels // module.groups) * kh * kw
            specs.append(
                LayerSpec(
                    name=name,
                    kind=kind,
                    in_channels=module.in_channels,
                    out_channels=module.out_channels,
                    kernel_size=(kh, kw),
                    stride=_pair(module.stride),
                    groups=module.groups,
                    input_hw=(int(inp.shape[-2]), int(inp.shape[-1])),
                    output_hw=(oh, ow),
                    params=params,
                    macs=macs,
                    bias=has_bias,
                    group=gid,
                    in_group=in_gid,
                    block=block,
                    prunable=can_prune,
                    decomposable=kind is LayerKind.CONV2D
                    and name not in ignored
                    and not isinstance(module.padding, str),
                )
            )
    if recorder is None:
        return specs
    dead = recorder.dead_layers(output)
    specs = [replace(s, extra={**s.extra, "live": False}) if s.name in dead else s for s in specs]
    return specs + recorder.specs(output, {s.name for s in specs})
