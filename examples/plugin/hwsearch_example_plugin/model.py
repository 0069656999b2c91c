"""A small ResNet for 8×8 digits, as an hwsearch plugin entry and as an import path.

Two ways in, both resolved by ``workers.zoo.resolve_model``:

- the plugin ``example-resnet`` (``ExampleResNet``, declared in pyproject.toml's entry points):
  a full entry that trains itself at first use (seeded, a few seconds, cached) and reports
  top-1 accuracy on the held-out 30% of scikit-learn's digits;
- the import path ``hwsearch_example_plugin.model:build_resnet`` (an untrained network, for use
  with a weights file) or ``...:trained_resnet``: a bare ``nn.Module``; the module-level
  ``example_input()`` and ``evaluate(model)`` below give it an input and a quality.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from workers.zoo import Quality, ZooError, ZooModel

from .data import MEAN, STD, Split, digits, normalise

NUM_CLASSES = 10
_TRAIN_SEED = 0
_EPOCHS = 10
_LR = 8e-3


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 projection) shortcut, as in ResNet-18."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class DigitsResNet(nn.Module):
    """Stem conv, a block at ``width`` channels (8×8), a strided block at 2·width (4×4), global
    average pooling and a linear classifier: ResNet's shape at the scale of 8×8 images."""

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def _tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = digits(split)
    return torch.from_numpy(normalise(pixels)), torch.from_numpy(labels)


def _train(model: nn.Module) -> None:
    """Seeded AdamW with a one-cycle schedule and ±1-pixel shifts; the same weights every run."""
    x, y = _tensors("train")
    generator = torch.Generator().manual_seed(_TRAIN_SEED)
    torch.manual_seed(_TRAIN_SEED)
    batch = 128
    steps = _EPOCHS * ((len(x) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=_LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=_LR, total_steps=steps)
    model.train()
    for _ in range(_EPOCHS):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            dy, dx = torch.randint(-1, 2, (2,), generator=generator).tolist()
            xb = torch.roll(x[idx], shifts=(int(dy), int(dx)), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def _cache_path(key: str) -> Path:
    """``$HWSEARCH_CACHE_DIR/plugins`` (as hwsearch's own cache) or the user cache dir."""
    import platformdirs

    root = os.environ.get("HWSEARCH_CACHE_DIR") or platformdirs.user_cache_dir("hwsearch")
    path = Path(root) / "plugins"
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{key}.pt"


def build_resnet(width: int = 16) -> DigitsResNet:
    """The untrained network (seeded initialisation); give it weights with ``--weights``."""
    if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 256:
        raise ValueError(f"width must be an integer in 1..256, not {width!r}")
    torch.manual_seed(0)
    return DigitsResNet(width).eval()


def trained_resnet(width: int = 16) -> DigitsResNet:
    """The network trained on the digits' training split, cached after the first call (the
    file is written to a temporary name and renamed, so parallel workers never read half)."""
    model = build_resnet(width)
    path = _cache_path(f"example-resnet-w{width}-v1")
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except (RuntimeError, EOFError, OSError, ValueError):
            path.unlink(missing_ok=True)  # a corrupt or stale file: train again
    _train(model)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval()


# ---- hooks an import path of this module uses (workers.zoo.resolve_model looks them up) ----
METRIC = "top1_accuracy"
TASK = "image-classification (scikit-learn digits, 10 classes)"
#: How an image of the user's data becomes this model's input (hwsearch's ``data.preprocessing``):
#: 8×8 grey, pixel / 255, then (x - MEAN) / STD, as the network was trained.
PREPROCESSING = {"resize": None, "crop": None, "mean": [MEAN], "std": [STD], "channels": 1}


def example_input() -> torch.Tensor:
    """One held-out image, batch first: 1×1×8×8."""
    x, _ = _tensors("test")
    return x[:1].clone()


def accuracy(model: nn.Module) -> float:
    """Top-1 accuracy on the held-out 30% (540 images) training never sees."""
    x, y = _tensors("test")
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((predicted == y).float().mean())


def evaluate(model: nn.Module) -> Quality:
    """The quality an import path of this module reports (the plugin entry reports the same)."""
    return Quality(accuracy(model), ExampleResNet.metric, ExampleResNet.description)


# ---- the plugin entry ----------------------------------------------------------------------
class ExampleResNet(ZooModel):
    """``example-resnet`` (or ``example-resnet:32`` for another width): a full hwsearch entry."""

    name = "example-resnet"
    task = TASK
    metric = METRIC
    description = "top-1 accuracy on the held-out 30% of scikit-learn's digits (540 images)"
    args: ClassVar[tuple[str, ...]] = ("width",)
    arg_pattern: ClassVar[str | None] = r"[1-9][0-9]{0,2}"
    preprocessing: ClassVar[dict[str, Any]] = PREPROCESSING

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        width = kwargs.get("width", 16)
        try:
            self.width = int(width)  # "example-resnet:32" passes it as text
        except (TypeError, ValueError):
            raise ZooError("model_args", kwargs, "width must be an integer, e.g. 16 or 32") from None
        if not 1 <= self.width <= 256:
            raise ZooError("model_args", kwargs, "width must be in 1..256")

    def build(self) -> nn.Module:
        return trained_resnet(self.width)

    def example_input(self) -> torch.Tensor:
        return example_input()

    def evaluate(self, model: nn.Module) -> Quality:
        return Quality(accuracy(model), self.metric, self.description)


__all__ = [
    "METRIC",
    "TASK",
    "BasicBlock",
    "DigitsResNet",
    "ExampleResNet",
    "accuracy",
    "build_resnet",
    "evaluate",
    "example_input",
    "trained_resnet",
]
