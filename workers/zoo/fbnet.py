"""FBNet search-space networks for CIFAR-100 (32×32), as HW-NAS-Bench builds them; a cost-only entry.

Structure from HW-NAS-Bench (Li et al., ICLR 2021), ``hw_nas_bench_api/fbnet_models/model_infer.py``
(``FBNet_Infer`` with a CIFAR dataset): a 3×3 stride-1 stem (16 channels, BN-ReLU); 22 blocks in stages
of [1, 4, 4, 4, 4, 4, 1] blocks with [16, 24, 32, 64, 112, 184, 352] output channels and first-block
strides [1, 1, 2, 2, 1, 2, 1]; a 1×1 header to 1504 channels (BN-ReLU); global average pooling and a
100-way linear classifier. Each block is one of nine kinds (``KINDS``, in HW-NAS-Bench's ``op_idx``
order, so ``KINDS[i]`` converts its index lists). Initialisation follows ``FBNet_Infer.init_params``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from workers.zoo._base import ZooError, register_model
from workers.zoo._fidelity import CIFAR100_MEAN, CIFAR100_STD, CostOnlyModel

KINDS: tuple[str, ...] = (
    "k3_e1",
    "k3_e1_g2",
    "k3_e3",
    "k3_e6",
    "k5_e1",
    "k5_e1_g2",
    "k5_e3",
    "k5_e6",
    "skip",
)
"""The nine FBNet block kinds, in HW-NAS-Bench's op-index order."""

# kind -> (kernel, expansion, groups); 'skip' is handled separately.
_CONV_KINDS: dict[str, tuple[int, int, int]] = {
    "k3_e1": (3, 1, 1),
    "k3_e1_g2": (3, 1, 2),
    "k3_e3": (3, 3, 1),
    "k3_e6": (3, 6, 1),
    "k5_e1": (5, 1, 1),
    "k5_e1_g2": (5, 1, 2),
    "k5_e3": (5, 3, 1),
    "k5_e6": (5, 6, 1),
}

STAGE_BLOCKS: tuple[int, ...] = (1, 4, 4, 4, 4, 4, 1)
STAGE_CHANNELS: tuple[int, ...] = (16, 24, 32, 64, 112, 184, 352)
CIFAR_STRIDES: tuple[int, ...] = (1, 1, 2, 2, 1, 2, 1)
STEM_CHANNELS = 16
HEADER_CHANNELS = 1504
NUM_CLASSES = 100
N_BLOCKS = sum(STAGE_BLOCKS)  # 22

# FBNet-A (Wu et al., "FBNet", CVPR 2019, Fig. 4), as transcribed in MODEL_ARCH["fbnet_a"] of the
# fbnet_modeldef.py files of public FBNet re-implementations, whose "ir_kK_s2" blocks are the
# group-2 kK_e1_g2 kind here. It uses all nine kinds, so it exercises every block type.
DEFAULT_ARCH = "-".join(
    [
        "skip",
        *("k3_e3", "k3_e1", "skip", "skip"),
        *("k5_e6", "k3_e3", "k5_e1", "k3_e3"),
        *("k5_e6", "k5_e3", "k5_e1_g2", "k5_e6"),
        *("k3_e6", "k5_e1_g2", "k5_e1", "k3_e1_g2"),
        *("k5_e6", "k5_e6", "k5_e3", "k5_e6"),
        "k5_e6",
    ]
)
"""FBNet-A's block kinds, the entry's default ``arch``."""

_KIND = "(?:" + "|".join(re.escape(kind) for kind in KINDS) + ")"
ARCH_PATTERN = _KIND + f"(?:-{_KIND}){{{N_BLOCKS - 1}}}"
"""A regular expression every valid arch string fully matches (``parse_arch`` is the precise
check; this one lets the service check a model id without importing torch)."""

_FORMAT_HELP = (
    f"expected {N_BLOCKS} block kinds joined by '-', e.g. {DEFAULT_ARCH} (FBNet-A); "
    f"valid kinds: {', '.join(KINDS)}"
)


def parse_arch(arch: str) -> tuple[str, ...]:
    """Parse an FBNet arch string (22 kinds joined by '-') strictly; raise ZooError on any bad token.

    Surrounding whitespace is ignored; everything else must match exactly.
    """
    if not isinstance(arch, str):
        raise ZooError("fbnet.arch", arch, f"must be a string, got {type(arch).__name__}; {_FORMAT_HELP}")
    kinds = tuple(arch.strip().split("-"))
    for pos, kind in enumerate(kinds):
        if not kind:
            raise ZooError("fbnet.arch", arch, f"empty block kind at position {pos}; {_FORMAT_HELP}")
        if kind not in KINDS:
            raise ZooError(
                "fbnet.arch",
                arch,
                f"unknown block kind {kind!r} at position {pos}; valid kinds: {', '.join(KINDS)}",
            )
    if len(kinds) != N_BLOCKS:
        raise ZooError("fbnet.arch", arch, f"has {len(kinds)} block kinds, not {N_BLOCKS}; {_FORMAT_HELP}")
    return kinds


def format_arch(kinds: Sequence[str]) -> str:
    """The arch string of a sequence of block kinds (inverse of :func:`parse_arch`)."""
    return "-".join(kinds)


class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle: (N, g·c, H, W) → interleave the g groups' channels."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def extra_repr(self) -> str:
        return f"groups={self.groups}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # unflatten/transpose/flatten instead of view(n, g, c//g, h, w): no Python-side shape reads, so
        # torch.fx can trace it, and it exports to ONNX as plain reshape/transpose.
        return torch.flatten(torch.unflatten(x, 1, (self.groups, -1)).transpose(1, 2), 1, 2)


class FBNetBlock(nn.Module):
    """Inverted-residual block: 1×1 (groups g) → BN-ReLU [→ shuffle] → k×k depthwise (stride) →
    BN-ReLU → 1×1 (groups g) → BN, plus the input when stride is 1 and channels match."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, groups: int, stride: int) -> None:
        super().__init__()
        c_mid = c_in * expansion
        bad = [c for c in (c_in, c_mid, c_out) if c % groups]
        if bad:
            raise ZooError(
                "fbnet.block.channels",
                (c_in, c_mid, c_out),
                f"a groups={groups} block needs channel counts (c_in, c_mid, c_out) divisible by {groups}",
            )
        self.residual = stride == 1 and c_in == c_out
        self.conv1 = nn.Conv2d(c_in, c_mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.act1 = nn.ReLU(inplace=False)
        # Where HW-NAS-Bench shuffles: after the first 1×1 conv's BN-ReLU (per-channel ops, so it is the
        # same function as shuffling right after the conv, with BN parameters permuted).
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.conv2 = nn.Conv2d(
            c_mid, c_mid, kernel, stride=stride, padding=kernel // 2, groups=c_mid, bias=False
        )
        self.bn2 = nn.BatchNorm2d(c_mid)
        self.act2 = nn.ReLU(inplace=False)
        self.conv3 = nn.Conv2d(c_mid, c_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.shuffle(self.act1(self.bn1(self.conv1(x))))
        y = self.act2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return x + y if self.residual else y


class FBNetSkip(nn.Module):
    """The ``skip`` kind: identity when shapes match, else 1×1 conv (stride) → BN-ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.proj: nn.Module = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=False),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.proj(x)
        return y


def make_block(kind: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    """One block of the given kind."""
    if kind == "skip":
        return FBNetSkip(c_in, c_out, stride)
    if kind not in _CONV_KINDS:
        raise ZooError("fbnet.block", kind, f"unknown block kind; valid kinds: {', '.join(KINDS)}")
    kernel, expansion, groups = _CONV_KINDS[kind]
    return FBNetBlock(c_in, c_out, kernel, expansion, groups, stride)


class FBNetNet(nn.Module):
    """An FBNet-space network; defaults are HW-NAS-Bench's CIFAR-100 setting. Returns logits."""

    def __init__(
        self,
        kinds: Sequence[str],
        num_classes: int = NUM_CLASSES,
        strides: Sequence[int] = CIFAR_STRIDES,
        stem_stride: int = 1,
        header_channels: int = HEADER_CHANNELS,
    ) -> None:
        super().__init__()
        if len(kinds) != N_BLOCKS:
            raise ZooError("fbnet.arch", kinds, f"need {N_BLOCKS} block kinds, got {len(kinds)}")
        self.stem = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.ReLU(inplace=False),
        )
        blocks: list[nn.Module] = []
        c_in = STEM_CHANNELS
        pos = 0
        for n, c_out, stride in zip(STAGE_BLOCKS, STAGE_CHANNELS, strides, strict=True):
            for i in range(n):
                blocks.append(make_block(kinds[pos], c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
                pos += 1
        self.blocks = nn.Sequential(*blocks)
        self.header = nn.Sequential(
            nn.Conv2d(c_in, header_channels, 1, bias=False),
            nn.BatchNorm2d(header_channels),
            nn.ReLU(inplace=False),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(header_channels, num_classes)
        self._init_params()

    def _init_params(self) -> None:
        # HW-NAS-Bench's FBNet_Infer.init_params, so the random network matches theirs in distribution.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.header(self.blocks(self.stem(x)))
        logits: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits


@register_model
class FBNet(CostOnlyModel):
    """FBNet-space network (HW-NAS-Bench CIFAR-100 setting, 32×32) given as ``arch``; cost-only."""

    name: ClassVar[str] = "fbnet"
    description: ClassVar[str] = (
        "FBNet search-space network as HW-NAS-Bench builds it for 32×32 CIFAR-100 (stride-1 stem, 22 "
        "blocks at 16..352 channels, 1504-channel header, 100 classes), from 22 block kinds joined by "
        f"'-' (kinds: {', '.join(KINDS)}); default: FBNet-A, {DEFAULT_ARCH}. Cost-only: no trained "
        "weights exist, the network is seeded-random and serves to fit latency models on measured "
        "whole-network latencies. Quality is logit_cosine: fidelity of logits to the uncompressed random "
        "network, NOT accuracy."
    )
    default_arch: ClassVar[str] = DEFAULT_ARCH
    arg_pattern: ClassVar[str | None] = ARCH_PATTERN
    mean = CIFAR100_MEAN
    std = CIFAR100_STD

    def parse(self, arch: str) -> None:
        self.kinds = parse_arch(arch)

    @property
    def arch(self) -> str:
        """The canonical arch string of this entry."""
        return format_arch(self.kinds)

    def network(self) -> nn.Module:
        return FBNetNet(self.kinds)
