"""Quality of ImageNet classifiers without labelled data: agreement with the uncompressed model."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from workers.zoo._base import CalibrationSet, Quality, ZooModel, device_of
from workers.zoo._images import (
    CALIBRATION_PHOTOS,
    EVALUATION_PHOTOS,
    Normalization,
    calibration_images,
    photo,
)

METRIC = "top1_agreement"


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """``model``'s logits on ``images`` as a float32 CPU tensor, in eval mode and batches.

    The model runs on the device of its parameters; its train/eval mode is restored afterwards
    so that evaluating a model in the middle of fine-tuning does not silently freeze it.
    """
    was_training = model.training
    model.eval()
    device = device_of(model)
    try:
        chunks = [
            model(images[start : start + batch_size].to(device)).float().cpu()
            for start in range(0, images.shape[0], batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


class ReferenceAgreement:
    """Top-1 agreement (and KL divergence) of a model with an uncompressed reference model.

    The reference logits are computed once, on first use, and cached on the instance; the
    reference model is then released. Give it a model that nothing else modifies before that
    first use (e.g. a fresh ``ZooModel.build()``): compressing the reference in place first would
    make it agree with itself.
    """

    def __init__(self, reference: nn.Module, images: torch.Tensor, batch_size: int = 32) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty N×C×H×W batch, got shape {tuple(images.shape)}")
        self._reference: nn.Module | None = reference
        self.images = images
        self.batch_size = batch_size
        self._reference_log_probs: torch.Tensor | None = None

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def reference_log_probs(self) -> torch.Tensor:
        """Log-softmax of the reference logits (N×classes), computed once."""
        if self._reference_log_probs is None:
            assert self._reference is not None
            logits = predict_logits(self._reference, self.images, self.batch_size)
            self._reference_log_probs = F.log_softmax(logits.double(), dim=1)
            # Free the reference weights: only its outputs are needed from now on.
            self._reference = None
        return self._reference_log_probs

    def evaluate(self, model: nn.Module) -> Quality:
        """Fraction of the images on which ``model``'s top-1 class equals the reference's."""
        ref = self.reference_log_probs
        log_probs = F.log_softmax(predict_logits(model, self.images, self.batch_size).double(), dim=1)
        if log_probs.shape != ref.shape:
            raise ValueError(f"model outputs {tuple(log_probs.shape)}, reference {tuple(ref.shape)}")
        agreement = (log_probs.argmax(dim=1) == ref.argmax(dim=1)).double().mean().item()
        # KL(ref || model) = sum_c p_ref (log p_ref - log p_model), averaged over the images;
        # clamped because an identical model can give -1e-17 from rounding.
        kl = F.kl_div(log_probs, ref, log_target=True, reduction="sum").item() / self.n_images
        n = self.n_images
        return Quality(
            value=float(agreement),
            metric=METRIC,
            description=(
                "No labelled ImageNet data exists offline, so this is not accuracy: it is the "
                f"fraction of {n} augmented crops of real photos (from scikit-image and scikit-learn) on "
                "which the compressed model's top-1 ImageNet class equals the uncompressed "
                "model's (1.0 for the uncompressed model). The mean KL(uncompressed || "
                "compressed) of the class distributions, in nats, is in the Python API's "
                "Quality.extra only; the CLI and the service report the agreement."
            ),
            extra={"kl_divergence": max(0.0, kl), "n_images": n},
        )


class ImageNetAgreementModel(ZooModel):
    """Shared plumbing of ImageNet-1k classifiers evaluated by :class:`ReferenceAgreement`.

    Subclasses implement ``build()`` and set ``normalization`` to the input convention their
    weights were trained with; the reference is a fresh ``build()``, made on the first
    ``evaluate`` call and kept for the life of the instance.
    """

    metric: ClassVar[str] = METRIC
    task: ClassVar[str] = "image-classification (ImageNet-1k)"
    normalization: ClassVar[Normalization] = "imagenet"
    input_size: ClassVar[int] = 224
    #: How many crops of the evaluation photos quality is measured on (``quality_examples``).
    n_calibration_images: ClassVar[int] = 256
    #: How many crops of the calibration photos compressed models are calibrated on.
    n_calibration_inputs: ClassVar[int] = 32

    def example_input(self) -> torch.Tensor:
        """A real photo (scikit-image's astronaut), normalised as the model expects."""
        return photo("astronaut", self.input_size, self.normalization)

    def calibration_images(self) -> torch.Tensor:
        """The evaluation batch: augmented crops of ``EVALUATION_PHOTOS``, normalised as the
        model expects (the name is historical: these images are scored, never calibrated on)."""
        return calibration_images(
            self.n_calibration_images,
            self.input_size,
            normalization=self.normalization,
            sources=EVALUATION_PHOTOS,
        )

    def calibration_set(self) -> CalibrationSet:
        """Crops of ``CALIBRATION_PHOTOS`` (other photos than the evaluation's), in batches of 16."""
        images = calibration_images(
            self.n_calibration_inputs,
            self.input_size,
            seed=1,
            normalization=self.normalization,
            sources=CALIBRATION_PHOTOS,
        )
        return CalibrationSet(
            batches=list(images.split(16)),
            n_inputs=int(images.shape[0]),
            description=(
                f"{images.shape[0]} crops of {len(CALIBRATION_PHOTOS)} photos "
                f"({', '.join(CALIBRATION_PHOTOS)}) that the evaluation never uses"
            ),
        )

    def evaluate(self, model: nn.Module) -> Quality:
        agreement: ReferenceAgreement | None = getattr(self, "_agreement", None)
        if agreement is None:
            agreement = ReferenceAgreement(self.build(), self.calibration_images())
            self._agreement = agreement
        return agreement.evaluate(model)
