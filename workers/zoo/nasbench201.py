"""NAS-Bench-201 networks for CIFAR-10 (32×32), as a cost-only zoo entry.

The network follows NAS-Bench-201's ``TinyNetwork`` (Dong & Yang, ICLR 2020; AutoDL-Projects
``lib/models/cell_infers/tiny_network.py`` and ``cell_operations.py``) with C=16, N=5: a 3×3 stem,
three stages of five identical cells at 16/32/64 channels separated by stride-2 ResNet basic blocks,
then BN-ReLU, global average pooling and a 10-way linear classifier. Parameter counts and conv/linear
MACs equal the benchmark's published ``params``/``flop`` values (tests/test_zoo_costonly.py).

One deliberate difference: NAS-Bench-201 implements ``none`` as a module computing ``x * 0``; here a
``none`` edge has no module and is simply left out of its node's sum, so it costs nothing. A node with
no incoming non-``none`` edge is zero; it is only materialised (``zeros_like``) when a later op reads it,
so such ops still exist and run, as they did in the benchmark's measured networks.
"""

from __future__ import annotations

import re
from typing import ClassVar

import torch
from torch import nn

from workers.zoo._base import ZooError, register_model
from workers.zoo._fidelity import CIFAR10_MEAN, CIFAR10_STD, CostOnlyModel

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
"""The five NAS-Bench-201 edge operations, in the benchmark's own order."""

N_NODES = 4
CELL_CHANNELS: tuple[int, ...] = (16, 32, 64)
CELLS_PER_STAGE = 5
NUM_CLASSES = 10

DEFAULT_ARCH = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
)
"""Best CIFAR-10 cell of NAS-Bench-201 (used when no ``arch`` is given)."""

_FORMAT_HELP = (
    "expected '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|': three '+'-separated groups, group k listing the "
    "edges into node k+1 from nodes 0..k in order, e.g. " + DEFAULT_ARCH + f"; valid ops: {', '.join(OPS)}"
)

_OP = "(?:" + "|".join(re.escape(op) for op in OPS) + ")"
ARCH_PATTERN = r"\+".join(
    r"\|" + r"\|".join(f"{_OP}~{i}" for i in range(k + 1)) + r"\|" for k in range(N_NODES - 1)
)
"""A regular expression every canonical arch string fully matches (``parse_arch`` is the
precise check; this one lets the service check a model id without importing torch)."""

Genotype = tuple[tuple[str, ...], ...]
"""Parsed cell: ``genotype[j-1][i]`` is the op on the edge from node ``i`` into node ``j``."""


def parse_arch(arch: str) -> Genotype:
    """Parse a NAS-Bench-201 arch string strictly; raise ZooError naming the bad token.

    Surrounding whitespace is ignored; everything else must match the canonical format exactly.
    """
    if not isinstance(arch, str):
        raise ZooError(
            "nasbench201.arch", arch, f"must be a string, got {type(arch).__name__}; {_FORMAT_HELP}"
        )
    groups = arch.strip().split("+")
    if len(groups) != N_NODES - 1:
        raise ZooError(
            "nasbench201.arch",
            arch,
            f"has {len(groups)} '+'-separated groups, not {N_NODES - 1}; {_FORMAT_HELP}",
        )
    genotype: list[tuple[str, ...]] = []
    for k, group in enumerate(groups):
        if len(group) < 2 or not group.startswith("|") or not group.endswith("|"):
            raise ZooError(
                "nasbench201.arch", arch, f"group {group!r} must start and end with '|'; {_FORMAT_HELP}"
            )
        tokens = group[1:-1].split("|")
        if len(tokens) != k + 1:
            raise ZooError(
                "nasbench201.arch",
                arch,
                f"group {group!r} (edges into node {k + 1}) must list {k + 1} edge(s), "
                f"got {len(tokens)}; {_FORMAT_HELP}",
            )
        ops: list[str] = []
        for i, token in enumerate(tokens):
            op, sep, src = token.partition("~")
            if not sep or src != str(i):
                raise ZooError(
                    "nasbench201.arch",
                    arch,
                    f"bad edge token {token!r} in group {group!r}: expected 'op~{i}' "
                    f"(edge {i} -> {k + 1}); {_FORMAT_HELP}",
                )
            if op not in OPS:
                raise ZooError(
                    "nasbench201.arch",
                    arch,
                    f"unknown op {op!r} in token {token!r}; valid ops: {', '.join(OPS)}",
                )
            ops.append(op)
        genotype.append(tuple(ops))
    return tuple(genotype)


def format_arch(genotype: Genotype) -> str:
    """The canonical arch string of a parsed genotype (inverse of :func:`parse_arch`)."""
    return "+".join("|" + "|".join(f"{op}~{i}" for i, op in enumerate(ops)) + "|" for ops in genotype)


class ReLUConvBN(nn.Sequential):
    """ReLU → conv (no bias) → BN: NAS-Bench-201's ``nor_conv_*`` op and basic-block branch."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        # ReLU is not in-place: the cell input feeds several edges.
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


def _edge_op(op: str, channels: int) -> nn.Module:
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1)
    if op == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ZooError(
        "nasbench201.op", op, f"no module for it; valid ops: {', '.join(OPS)}"
    )  # 'none' never gets here


class Cell(nn.Module):
    """A NAS-Bench-201 cell: node j = sum over i < j of op_ij(node i); the output is node 3.

    Edges are registered as ``edge_<j>_<i>`` (into node j from node i); ``none`` edges have none.
    """

    def __init__(self, genotype: Genotype, channels: int) -> None:
        super().__init__()
        self.genotype = genotype
        self.edges = nn.ModuleDict()
        self._inputs: list[list[tuple[int, str]]] = []  # per node j >= 1: (source node, edge key)
        for j, ops in enumerate(genotype, start=1):
            live = []
            for i, op in enumerate(ops):
                if op == "none":
                    continue
                key = f"edge_{j}_{i}"
                self.edges[key] = _edge_op(op, channels)
                live.append((i, key))
            self._inputs.append(live)

    def extra_repr(self) -> str:
        return format_arch(self.genotype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # None marks a node that is identically zero (no non-'none' edge reaches it).
        nodes: list[torch.Tensor | None] = [x]
        for live in self._inputs:
            acc: torch.Tensor | None = None
            for i, key in live:
                src = nodes[i]
                y = self.edges[key](torch.zeros_like(x) if src is None else src)
                acc = y if acc is None else acc + y
            nodes.append(acc)
        out = nodes[-1]
        return torch.zeros_like(x) if out is None else out


class ResNetBasicBlock(nn.Module):
    """NAS-Bench-201's stride-2 reduction block: ReLUConvBN(s2) → ReLUConvBN, plus pooled 1×1 shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(c_in, c_out, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut: torch.Tensor = self.downsample(x)
        branch: torch.Tensor = self.conv_b(self.conv_a(x))
        return shortcut + branch


class NASBench201Net(nn.Module):
    """The NAS-Bench-201 CIFAR network for one cell genotype; ``forward`` returns logits only."""

    def __init__(self, genotype: Genotype, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c0 = CELL_CHANNELS[0]
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0))
        cells: list[nn.Module] = []
        c_prev = c0
        for stage, c in enumerate(CELL_CHANNELS):
            if stage > 0:
                cells.append(ResNetBasicBlock(c_prev, c))
            cells.extend(Cell(genotype, c) for _ in range(CELLS_PER_STAGE))
            c_prev = c
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        x = self.global_pooling(self.lastact(x))
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits


@register_model
class NASBench201(CostOnlyModel):
    """NAS-Bench-201 network (CIFAR-10, 32×32) for a cell given as ``arch``; cost-only, no weights."""

    name: ClassVar[str] = "nasbench201"
    description: ClassVar[str] = (
        "NAS-Bench-201 cell network for 32×32 CIFAR-10 input (stem, 3 stages × 5 cells at 16/32/64 "
        "channels, ResNet reductions, 10 classes), built from an arch string such as "
        f"{DEFAULT_ARCH} (the default: the best CIFAR-10 cell). Cost-only: no trained weights exist, the "
        "network is seeded-random and serves to fit latency models on measured whole-network latencies. "
        "Quality is logit_cosine: fidelity of logits to the uncompressed random network, NOT accuracy."
    )
    default_arch: ClassVar[str] = DEFAULT_ARCH
    arg_pattern: ClassVar[str | None] = ARCH_PATTERN
    mean = CIFAR10_MEAN
    std = CIFAR10_STD

    def parse(self, arch: str) -> None:
        self.genotype = parse_arch(arch)

    @property
    def arch(self) -> str:
        """The canonical arch string of this entry."""
        return format_arch(self.genotype)

    def network(self) -> nn.Module:
        return NASBench201Net(self.genotype)
