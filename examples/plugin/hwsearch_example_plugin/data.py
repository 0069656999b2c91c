"""scikit-learn's digits as 8-bit grey images, split once (seeded) into training and held-out parts.

The images are stored as 8-bit pixels (``round(v * 255 / 16)`` of the 0..16 originals), exactly
what ``make_dataset.py`` writes as PNG, so the model sees the same numbers whether it reads this
split or the ImageFolder written from it. Preprocessing for the model: pixel / 255, then
``(x - MEAN) / STD``, one grey channel, 8×8.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

MEAN = 0.3
STD = 0.4
IMAGE_SIZE = 8
SPLIT_SEED = 0
HELD_OUT = 0.3

Split = Literal["train", "test", "all"]


@functools.lru_cache(maxsize=1)
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    pixels = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        pixels, data.target, test_size=HELD_OUT, random_state=SPLIT_SEED, stratify=data.target
    )
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


def digits(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×8×8, labels int64 N) of ``split``: ``train`` (70%), ``test`` (the 30%
    training never sees) or ``all``."""
    x_tr, y_tr, x_te, y_te = _split()
    if split == "train":
        return x_tr, y_tr
    if split == "test":
        return x_te, y_te
    if split == "all":
        return np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])
    raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")


def normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 images N×8×8 → float32 N×1×8×8, the model's input."""
    x = pixels.astype(np.float32) / 255.0
    return ((x - MEAN) / STD)[:, None, :, :]
