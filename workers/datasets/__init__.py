"""Data sources: a user's own data, split once, and the evaluators that score a model on it.

- ``load_dataset(path)``: an ImageFolder directory (labelled images), a flat image folder
  (unlabelled images) or a ``.jsonl`` file (text with labels, pairs with scores, or text alone),
  told apart by layout; every image decodes or the load fails naming the file.
- ``ImagePreprocessing``: resize, centre crop, channels, mean and std, image → C×H×W tensor.
- ``split(dataset, ...)``: the seeded, recorded, stratified calibration / evaluation split,
  never overlapping; ``check_split`` remakes it from its record and detects changed data.
- ``QualityEstimate`` with ``accuracy_interval`` (Wilson) and ``bootstrap_interval``: every
  quality value has its n and a 95% interval.
- Evaluators per kind (``make_evaluator`` picks one): accuracy, agreement + KL with the
  uncompressed model, Spearman of embedding cosine, embedding cosine to the reference.
- ``load_evaluator("pkg.mod:function")``: a user's evaluator for any other task.
- ``unpack_dataset_zip``: an uploaded zip checked (zip slip, symlinks, size and file caps,
  layout) and stored atomically, or nothing stored.

Every error a user can cause is a ``DatasetError`` naming the field, the value and the fix.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._custom import EVALUATOR_HINT, ImportedEvaluator, load_evaluator
from ._errors import DatasetError
from ._load import CLASSES_FILE, IMAGE_SUFFIXES, Dataset, DatasetKind, ImageDataset, TextDataset, load_dataset
from ._preprocess import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing
from ._quality import Z_95, QualityEstimate, accuracy_interval, bootstrap_interval
from ._registry import DATASETS_DIR, MANIFEST, dataset_path, register_dataset_zip, remove_dataset
from ._split import DEFAULT_CALIBRATION_FRACTION, SPLIT_METHOD, Split, check_split, split
from ._zip import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, unpack_dataset_zip

if TYPE_CHECKING:
    from ._evaluate import (
        Embed,
        Evaluator,
        Forward,
        ImageAccuracy,
        ImageAgreement,
        TextAccuracy,
        TextAgreement,
        TextSimilarity,
        Tokenize,
        call_model,
        make_evaluator,
    )

# The evaluators need torch; reading, checking and splitting data do not. The service checks an
# uploaded dataset in its API process, which never imports torch (DESIGN.md), so the evaluators
# are imported on first use.
_LAZY = frozenset(
    {
        "Embed",
        "Evaluator",
        "Forward",
        "ImageAccuracy",
        "ImageAgreement",
        "TextAccuracy",
        "TextAgreement",
        "TextSimilarity",
        "Tokenize",
        "call_model",
        "make_evaluator",
    }
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("._evaluate", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CLASSES_FILE",
    "DATASETS_DIR",
    "DEFAULT_CALIBRATION_FRACTION",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FILES",
    "EVALUATOR_HINT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "MANIFEST",
    "SPLIT_METHOD",
    "Z_95",
    "Dataset",
    "DatasetError",
    "DatasetKind",
    "Embed",
    "Evaluator",
    "Forward",
    "ImageAccuracy",
    "ImageAgreement",
    "ImageDataset",
    "ImagePreprocessing",
    "ImportedEvaluator",
    "QualityEstimate",
    "Split",
    "TextAccuracy",
    "TextAgreement",
    "TextDataset",
    "TextSimilarity",
    "Tokenize",
    "accuracy_interval",
    "bootstrap_interval",
    "call_model",
    "check_split",
    "dataset_path",
    "load_dataset",
    "load_evaluator",
    "make_evaluator",
    "register_dataset_zip",
    "remove_dataset",
    "split",
    "unpack_dataset_zip",
]
