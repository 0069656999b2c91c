"""Offline calibration photos for ImageNet-style models.

No labelled ImageNet data is available offline, so ImageNet zoo entries measure quality on
real photographs that ship inside installed packages (scikit-image and scikit-learn): the
photos are cut into deterministic, ImageNet-style augmented crops and normalised the way the
model expects.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

Normalization = Literal["imagenet", "inception"]

# torchvision's ImageNet statistics (RGB, for inputs scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Photos bundled inside the scikit-image wheel (skimage/data/*.png|jpg) that load without
# pooch or network; skimage.data entries such as kidney, lily, skin, eagle and human_mitosis
# need a pooch download and are deliberately absent. Synthetic or non-photographic images
# (horse silhouette, logo, text, page, binary_blobs, colorwheel, checkerboards) are left out, and
# so are the bundled texture and moon photos (brick, grass, gravel, moon): on them ImageNet
# models are unconfident (mean top-1 probability 0.1-0.3) and their top-1 flips under any
# perturbation, which would add noise, not signal, to a top-1 agreement measurement.
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
    "coins",
    "retina",
    "motorcycle_left",
    "clock",
)
# Photos bundled inside the scikit-learn wheel (sklearn/datasets/images/).
SKLEARN_PHOTOS: tuple[str, ...] = ("china", "flower")
SOURCE_PHOTOS: tuple[str, ...] = SKIMAGE_PHOTOS + SKLEARN_PHOTOS
# Compressed models are calibrated on crops of some photos and scored on crops of the others,
# split by source photo (one in three, from the second): crops of one photo are too alike for
# calibration on some of them to say anything about the rest.
CALIBRATION_PHOTOS: tuple[str, ...] = SOURCE_PHOTOS[1::3]
EVALUATION_PHOTOS: tuple[str, ...] = tuple(p for p in SOURCE_PHOTOS if p not in CALIBRATION_PHOTOS)

# Standard ImageNet evaluation crop: resize the short side to size / 0.875, centre-crop size.
_EVAL_CROP_FRACTION = 0.875
# RandomResizedCrop-style ranges. The smallest area fraction is 0.2 rather than torchvision's
# 0.08: the reference model, not a label, defines the "correct" class here, and crops that
# small of these few photos are mostly texture, on which even the uncompressed model's top-1
# is a coin toss, which would only add noise to the agreement measurement.
_SCALE_RANGE = (0.2, 1.0)
_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)


def _load_photo(name: str) -> np.ndarray:
    """One source photo as an H×W×3 uint8 RGB array (grey photos are repeated over 3 channels)."""
    if name in SKIMAGE_PHOTOS:
        import skimage.data

        if name == "motorcycle_left":
            # Only reachable through stereo_motorcycle(); it returns (left, right, disparity).
            image = getattr(skimage.data, "stereo_motorcycle")()[0]  # noqa: B009 (untyped in skimage)
        else:
            image = getattr(skimage.data, name)()
    elif name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    else:
        raise ValueError(f"unknown calibration photo {name!r}; known: {', '.join(SOURCE_PHOTOS)}")
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"photo {name!r} is not an RGB uint8 image: {image.dtype} {image.shape}")
    return image


@functools.cache
def _photo_tensor(name: str) -> torch.Tensor:
    """A source photo as a 3×H×W float32 tensor in [0, 1] (cached: decoding is the slow part)."""
    # copy(): skimage hands out read-only arrays, which torch.from_numpy warns about.
    return torch.from_numpy(_load_photo(name).copy()).permute(2, 0, 1).float().div_(255.0).contiguous()


def normalize(images: torch.Tensor, normalization: Normalization = "imagenet") -> torch.Tensor:
    """Normalise ``[0, 1]`` RGB images (…×3×H×W) for a model.

    ``"imagenet"``: ``(x - mean) / std`` with the torchvision ImageNet statistics.
    ``"inception"``: ``(255 x - 127) / 128``, i.e. about ``[-1, 1]``, the input convention of
    TensorFlow's Inception, MobileNet and EfficientNet-Lite checkpoints.
    """
    if normalization == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=images.dtype).view(3, 1, 1)
        return (images - mean) / std
    if normalization == "inception":
        return (images * 255.0 - 127.0) / 128.0
    raise ValueError(f"unknown normalization {normalization!r}; use 'imagenet' or 'inception'")


def _resize(crop: torch.Tensor, size: int) -> torch.Tensor:
    # antialias=True: downscaling by up to ~6× without it aliases badly and shifts predictions.
    return F.interpolate(
        crop.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    ).squeeze(0)


def _center_crop(photo: torch.Tensor, size: int) -> torch.Tensor:
    """Standard ImageNet evaluation view: centred square of side short_side · 0.875, resized."""
    _, height, width = photo.shape
    side = max(1, round(min(height, width) * _EVAL_CROP_FRACTION))
    top, left = (height - side) // 2, (width - side) // 2
    return _resize(photo[:, top : top + side, left : left + side], size)


def _random_resized_crop(photo: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """torchvision RandomResizedCrop semantics (area fraction and aspect ratio), seeded by ``rng``."""
    _, height, width = photo.shape
    area = height * width
    log_ratio = (math.log(_RATIO_RANGE[0]), math.log(_RATIO_RANGE[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*_SCALE_RANGE)
        ratio = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target_area * ratio))
        crop_h = round(math.sqrt(target_area / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return _resize(photo[:, top : top + crop_h, left : left + crop_w], size)
    # Same fallback as torchvision: the whole photo's central square.
    return _center_crop(photo, size)


def photo(name: str, size: int = 224, normalization: Normalization = "imagenet") -> torch.Tensor:
    """One source photo as a 1×3×size×size model input (standard ImageNet centre crop).

    ``name`` is one of ``SOURCE_PHOTOS`` (e.g. ``"chelsea"``, a tabby cat).
    """
    return normalize(_center_crop(_photo_tensor(name), size), normalization).unsqueeze(0)


def calibration_images(
    n: int = 256,
    size: int = 224,
    seed: int = 0,
    normalization: Normalization = "imagenet",
    sources: tuple[str, ...] = SOURCE_PHOTOS,
) -> torch.Tensor:
    """``n`` real photos as a deterministic n×3×size×size float32 batch for ImageNet models.

    Sources (all bundled in installed wheels, nothing is downloaded): from scikit-image's
    ``skimage.data``: astronaut, chelsea (cat), coffee, rocket, camera (grey), hubble_deep_field,
    immunohistochemistry, coins (grey), retina, motorcycle_left (from stereo_motorcycle) and clock
    (grey); from scikit-learn's ``load_sample_images``: china.jpg and flower.jpg. Grey photos are
    repeated over 3 channels.

    ``sources`` (default: all 13) limits the photos: the zoo scores models on
    ``EVALUATION_PHOTOS`` and calibrates them on ``CALIBRATION_PHOTOS``, which never overlap.
    Image ``i`` comes from source ``i % len(sources)``, so the sources are equally represented.
    The first ``len(sources)`` images are the standard evaluation view (centre crop of 87.5 % of
    the short side); the rest are RandomResizedCrop-style crops (area 20-100 % of the photo,
    aspect ratio 3/4-4/3) drawn from ``numpy.random.default_rng(seed)``, each horizontally
    flipped with probability 1/2. Crops are resized with antialiased bilinear interpolation and
    normalised with :func:`normalize` (``"imagenet"`` mean/std by default, ``"inception"`` for [-1, 1]
    models).

    The result is cached per argument tuple and shared between callers: do not modify it in
    place.
    """
    # Positional call so that f(256) and f(n=256) share one cache entry.
    unknown = [s for s in sources if s not in SOURCE_PHOTOS]
    if unknown or not sources:
        raise ValueError(f"sources must be a non-empty subset of {SOURCE_PHOTOS}, but got {sources}")
    return _calibration_images(n, size, seed, normalization, tuple(sources))


# Each entry of the default size is 154 MB; a few (e.g. both normalizations) are plenty.
@functools.lru_cache(maxsize=4)
def _calibration_images(
    n: int, size: int, seed: int, normalization: Normalization, sources: tuple[str, ...]
) -> torch.Tensor:
    return normalize(_calibration_crops(n, size, seed, sources), normalization)


# Models with different normalizations evaluate on the same crops: keep the latest [0, 1] batch
# so that the second normalization does not redo the cropping and resizing.
@functools.lru_cache(maxsize=2)
def _calibration_crops(n: int, size: int, seed: int, sources: tuple[str, ...]) -> torch.Tensor:
    if n < 1 or size < 1:
        raise ValueError(f"calibration_images needs n >= 1 and size >= 1, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    out = torch.empty(n, 3, size, size, dtype=torch.float32)
    for i in range(n):
        source = _photo_tensor(sources[i % len(sources)])
        if i < len(sources):
            crop = _center_crop(source, size)
        else:
            crop = _random_resized_crop(source, size, rng)
            if rng.random() < 0.5:
                crop = crop.flip(-1)
        out[i] = crop
    return out
