"""digits-cnn and digits-vit: small models trained at first use on scikit-learn's digits.

The 1,797 8×8 digit images ship inside scikit-learn, so these models have real trained
weights and real labelled test data offline. Training is seeded and takes seconds; the
weights are cached (see ``_cache``). Quality is top-1 accuracy on a fixed, stratified
held-out 30% split that training never sees.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from kernels import AttentionBlock, SelfAttention

from ._base import CalibrationSet, Quality, ZooModel, register_model
from ._cache import cached_state

_SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); images 1×8×8 scaled to [0, 1] then standardised."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0 - 0.3) / 0.4
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, data.target, test_size=0.3, random_state=_SPLIT_SEED, stratify=data.target
    )
    return (
        torch.from_numpy(x_tr).unsqueeze(1),
        torch.from_numpy(y_tr).long(),
        torch.from_numpy(x_te).unsqueeze(1),
        torch.from_numpy(y_te).long(),
    )


def _train(model: nn.Module, epochs: int, lr: float, seed: int) -> None:
    x, y, _, _ = digits_split()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * ((len(x) + 63) // 64))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            xb = x[idx]
            # Light augmentation (±1 pixel shifts) so the small models generalise.
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def _accuracy(model: nn.Module) -> float:
    _, _, x, y = digits_split()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


class DigitsCNN(nn.Module):
    """Four 3×3 convs (one residual pair, so pruning meets a coupled group) and a 2-layer head."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(1, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * w)
        self.conv4 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.bn4 = nn.BatchNorm2d(2 * w)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(2 * w, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        y = torch.relu(self.bn3(self.conv3(x)))
        x = torch.relu(x + self.bn4(self.conv4(y)))
        x = self.gap(x).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


class ViTBlock(AttentionBlock):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.has_cls_token = True
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class DigitsViT(nn.Module):
    """A tiny ViT: 2×2-pixel patches (16 patch tokens + CLS), 4 pre-norm blocks of width 64."""

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128, patch: int = 2) -> None:
        super().__init__()
        self.patch_size = patch
        n_patches = (8 // patch) ** 2
        self.patch = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(dim, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p = x.shape[0], self.patch_size
        patches = x.unfold(2, p, p).unfold(3, p, p).reshape(b, -1, p * p)
        tokens = self.patch(patches)
        x = torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


class _DigitsEntry(ZooModel):
    task = "image-classification (scikit-learn digits, 10 classes)"
    metric = "top1_accuracy"
    description = (
        "top-1 accuracy on the fixed stratified 30% held-out split of scikit-learn's digits (540 images)"
    )

    def example_input(self) -> torch.Tensor:
        return digits_split()[2][:1].clone()

    def evaluate(self, model: nn.Module) -> Quality:
        return Quality(_accuracy(model), self.metric, self.description)

    def calibration_set(self) -> CalibrationSet:
        """256 training images (the model saw them in training; the evaluation never does)."""
        x_train = digits_split()[0]
        images = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1))[:256]]
        return CalibrationSet(
            batches=list(images.split(64)),
            n_inputs=int(images.shape[0]),
            description=f"{images.shape[0]} images of the digits training split (never evaluated on)",
        )


@register_model
class DigitsCNNEntry(_DigitsEntry):
    name = "digits-cnn"

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        return cached_state("digits-cnn-v1", DigitsCNN(), lambda m: _train(m, epochs=30, lr=3e-3, seed=0))


@register_model
class DigitsViTEntry(_DigitsEntry):
    name = "digits-vit"

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        return cached_state("digits-vit-v2", DigitsViT(), lambda m: _train(m, epochs=40, lr=3e-3, seed=0))
