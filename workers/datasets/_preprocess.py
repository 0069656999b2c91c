"""How a decoded image becomes a model input: resize, centre crop, channels, mean and std."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from ._errors import DatasetError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImagePreprocessing"]

# torchvision's ImageNet statistics (RGB, for pixels scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Larger sides than this are surely a typo (and would allocate gigabytes per batch).
_MAX_SIDE_PX = 4096
_FIELD = "preprocessing"


def _side(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SIDE_PX:
        raise DatasetError(
            f"{_FIELD}.{name}", value, f"a whole number of pixels from 1 to {_MAX_SIDE_PX}, or null"
        )
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _floats(name: str, value: Any, channels: int, positive: bool) -> tuple[float, ...]:
    items = [value] if _is_number(value) else value
    if (
        not isinstance(items, list | tuple)
        or not items
        or not all(_is_number(v) and (v > 0 or not positive) for v in items)
    ):
        what = "positive finite numbers" if positive else "finite numbers"
        raise DatasetError(f"{_FIELD}.{name}", value, f"{what}, one per channel ({channels}) or one for all")
    numbers = tuple(float(v) for v in items)
    if len(numbers) == 1:
        numbers = numbers * channels  # one value for every channel
    if len(numbers) != channels:
        raise DatasetError(
            f"{_FIELD}.{name}",
            value,
            f"{len(numbers)} values for {channels} channel(s): give one value per channel, or a single value",
        )
    return numbers


@dataclass(frozen=True)
class ImagePreprocessing:
    """Turns a Pillow image into a float32 C×H×W tensor, as torchvision's eval transforms do.

    ``resize`` scales the image so that its shorter side has that many pixels (bilinear, aspect
    ratio kept; None keeps the size); ``crop`` then cuts the central ``crop`` × ``crop`` square
    (None keeps the whole image). Pixels are converted to ``channels`` (1: greyscale, 3: RGB),
    scaled to [0, 1], and normalised per channel: ``(x - mean) / std``. ``mean`` and ``std``
    take one value per channel, or a single value for all. Validated on construction: a bad
    value raises DatasetError naming ``preprocessing.<field>``.
    """

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3

    def __post_init__(self) -> None:
        if type(self.channels) is not int or self.channels not in (1, 3):  # not True, not 3.0
            raise DatasetError(f"{_FIELD}.channels", self.channels, "1 (greyscale) or 3 (RGB)")
        _side("resize", self.resize)
        _side("crop", self.crop)
        if self.resize is not None and self.crop is not None and self.crop > self.resize:
            raise DatasetError(
                f"{_FIELD}.crop",
                self.crop,
                f"larger than the resized shorter side ({self.resize} px); use a crop <= resize",
            )
        # object.__setattr__: a frozen dataclass normalises its own fields once, here.
        object.__setattr__(self, "mean", _floats("mean", self.mean, self.channels, positive=False))
        object.__setattr__(self, "std", _floats("std", self.std, self.channels, positive=True))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ImagePreprocessing:
        """From a spec's JSON object; unknown keys are an error (a typo would be ignored)."""
        if not isinstance(values, Mapping):
            raise DatasetError(_FIELD, values, "an object with resize, crop, mean, std and channels")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DatasetError(
                f"{_FIELD}.{unknown[0]}", values[unknown[0]], f"unknown key; known: {sorted(known)}"
            )
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, which ``from_dict`` reads back."""
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    def __call__(self, image: Image.Image, name: str = "image") -> torch.Tensor:
        """``image`` as a float32 tensor of shape ``channels`` × H × W.

        ``name`` (the file) is named in the error when the image is smaller than the crop.
        """
        import numpy as np
        import torch
        from PIL import Image

        image = image.convert("L" if self.channels == 1 else "RGB")
        if self.resize is not None:
            width, height = image.size
            # torchvision's rounding: the shorter side becomes exactly ``resize``, the longer one
            # is scaled and truncated.
            if width <= height:
                size = (self.resize, int(self.resize * height / width))
            else:
                size = (int(self.resize * width / height), self.resize)
            if size != image.size:
                image = image.resize(size, Image.Resampling.BILINEAR)
        if self.crop is not None:
            width, height = image.size
            if self.crop > min(width, height):
                raise DatasetError(
                    f"{_FIELD}.crop",
                    self.crop,
                    f"{name} is {width}x{height} px, smaller than the crop; set preprocessing.resize "
                    f"to at least {self.crop} or use a smaller crop",
                )
            left = round((width - self.crop) / 2.0)
            top = round((height - self.crop) / 2.0)
            image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (tensor - mean) / std
