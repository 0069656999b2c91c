"""Logit fidelity: the quality measure shared by cost-only zoo entries.

Cost-only entries (NAS-Bench-201, FBNet) have no trained weights offline; they exist so that latency
models can be fitted on measured whole-network latencies. Their "quality" therefore cannot be accuracy.
What compression can still be judged on is how far it moves the network away from the uncompressed one:
this module measures the mean cosine similarity between a model's logits and the logits of the
uncompressed, seeded, randomly initialised network on a fixed set of 64 real photo patches.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.zoo._base import Quality, ZooError, ZooModel

METRIC = "logit_cosine"
N_INPUTS = 64
SIZE = 32
# Crops are area-downscaled by an integer factor (3) to 32×32, so a patch shows a whole object part or
# texture like a CIFAR image does, rather than an almost flat 32-pixel window of a 640-pixel photo.
_CROP = 3 * SIZE
_GRID_ROWS = 4

DESCRIPTION = (
    "No trained weights exist for this cost-only entry: quality is the mean cosine similarity between "
    "the model's logits and those of the uncompressed, randomly initialised (seeded) network on 64 fixed "
    "32×32 patches of scikit-learn's sample photos. It measures fidelity to that random network, "
    "not accuracy; 1.0 means unchanged outputs."
)

# Per-channel normalisation of the datasets these networks were benchmarked on, as the NAS-Bench-201
# training code (AutoDL-Projects) defines them, in [0, 1] units.
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)


@functools.lru_cache(maxsize=1)
def _photo_patches() -> torch.Tensor:
    """64×3×32×32 float32 patches in [0, 1], cut on a fixed grid from sklearn's two sample photos."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:  # pragma: no cover - scikit-learn is a declared dependency
        raise ZooError("evaluator", "logit-fidelity", "needs scikit-learn: pip install scikit-learn") from exc
    try:
        images = load_sample_images().images  # china.jpg, flower.jpg, shipped inside scikit-learn
    except ImportError as exc:  # pragma: no cover - sklearn reads the JPEGs with Pillow
        raise ZooError(
            "evaluator", "logit-fidelity", "needs Pillow to read sklearn's photos: pip install pillow"
        ) from exc
    per_image = N_INPUTS // len(images)
    cols = per_image // _GRID_ROWS
    patches = []
    for img in images:
        h, w, _ = img.shape
        # Evenly spread, possibly overlapping, crops: deterministic and covering the whole photo.
        for top in np.linspace(0, h - _CROP, _GRID_ROWS).round().astype(int):
            for left in np.linspace(0, w - _CROP, cols).round().astype(int):
                crop = img[top : top + _CROP, left : left + _CROP].astype(np.float64) / 255.0
                small = crop.reshape(SIZE, 3, SIZE, 3, 3).mean(axis=(1, 3))  # 3×3 area average
                patches.append(small.transpose(2, 0, 1))
    batch = torch.from_numpy(np.stack(patches).astype(np.float32))
    assert batch.shape == (N_INPUTS, 3, SIZE, SIZE), batch.shape
    return batch


def photo_batch(mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The 64 fixed photo patches, normalised with per-channel ``mean`` and ``std`` (a fresh tensor)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (_photo_patches() - m) / s


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode, no-grad logits of ``model`` on ``x`` as float64 on the CPU; the model's mode is restored."""
    # Feed the inputs where and how the model keeps its weights (a compressed model may live on a GPU or
    # in half precision); a model without floating-point parameters gets CPU float32.
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(device=device, dtype=dtype))
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ZooError("model output shape", shape, f"expected logits of shape ({x.shape[0]}, classes)")
    return out.detach().to(device="cpu", dtype=torch.float64)


class LogitFidelity:
    """Scores models by the cosine similarity of their logits to a reference network's logits.

    The reference network comes from ``build_reference`` (the zoo entry's seeded ``build``); it is built
    and run once, on first use, and only its logits are kept.
    """

    def __init__(
        self, build_reference: Callable[[], nn.Module], mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self._build_reference = build_reference
        self._mean = tuple(mean)
        self._std = tuple(std)
        self._reference: torch.Tensor | None = None

    def inputs(self) -> torch.Tensor:
        """The normalised 64×3×32×32 evaluation batch."""
        return photo_batch(self._mean, self._std)

    def reference_logits(self) -> torch.Tensor:
        """Logits of the uncompressed reference network (computed once per instance)."""
        if self._reference is None:
            self._reference = _logits(self._build_reference(), self.inputs())
        return self._reference

    def evaluate(self, model: nn.Module) -> Quality:
        """Mean cosine similarity of ``model``'s logits to the reference logits, as a Quality."""
        ref = self.reference_logits()
        out = _logits(model, self.inputs())
        if out.shape != ref.shape:
            raise ZooError(
                "model output shape", tuple(out.shape), f"expected logits of shape {tuple(ref.shape)}"
            )
        # float64 so that the uncompressed model scores 1.0 to ~1e-15, not to float32 rounding.
        cos = F.cosine_similarity(out, ref, dim=1, eps=1e-12).clamp(-1.0, 1.0)
        agreement = (out.argmax(dim=1) == ref.argmax(dim=1)).double().mean()
        return Quality(
            value=float(cos.mean()),
            metric=METRIC,
            description=DESCRIPTION,
            extra={
                "min_cosine": float(cos.min()),
                "top1_agreement": float(agreement),
                "n_inputs": float(out.shape[0]),
            },
        )


class CostOnlyModel(ZooModel):
    """Base of the cost-only entries built from an architecture string (no trained weights).

    Subclasses set ``mean``/``std`` (input normalisation), ``default_arch`` and implement
    ``parse(arch)`` (raising ZooError on a bad string) and ``network()``. The arch is parsed
    in ``__init__`` so a bad one fails at ``create_model`` rather than at ``build``.
    """

    task: ClassVar[str] = "image-classification (CIFAR-10 / CIFAR-100), cost-only"
    metric: ClassVar[str] = METRIC
    has_weights: ClassVar[bool] = False
    args: ClassVar[tuple[str, ...]] = ("arch",)
    default_arch: ClassVar[str]
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.parse(self.kwargs.get("arch", self.default_arch))
        self._fidelity = LogitFidelity(self.build, self.mean, self.std)

    @abc.abstractmethod
    def parse(self, arch: str) -> None:
        """Parse and keep the architecture; raise ZooError naming the bad token."""

    @abc.abstractmethod
    def network(self) -> nn.Module:
        """A fresh network for the parsed architecture (called under a fixed seed)."""

    def build(self) -> nn.Module:
        """The network, seeded (``torch.manual_seed(0)``) and in eval mode; the global RNG is restored."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = self.network()
        return model.eval()

    def example_input(self) -> torch.Tensor:
        return self._fidelity.inputs()[:1].clone()

    def evaluate(self, model: nn.Module) -> Quality:
        return self._fidelity.evaluate(model)
