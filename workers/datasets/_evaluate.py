"""Scoring a model (compressed or not) on a user's dataset, one evaluator per kind of data.

| data                         | evaluator      | metric                                                 |
|------------------------------|----------------|--------------------------------------------------------|
| ImageFolder (labelled)       | ImageAccuracy  | ``top1_accuracy`` against the labels                   |
| flat image folder            | ImageAgreement | ``top1_agreement`` with the reference (KL in ``extra``) |
| JSONL text + label           | TextAccuracy   | ``top1_accuracy``                                      |
| JSONL text + text_pair+score | TextSimilarity | ``spearman`` of embedding cosine vs score              |
| JSONL text alone             | TextAgreement  | ``embedding_cosine`` to the reference model            |

An evaluator is built once per job on the evaluation indices of the split and then called on
every candidate model; it caches what does not depend on the model (preprocessed images up to
a memory bound, tokenised text, the reference model's outputs). Every call returns a
QualityEstimate with n and a 95% interval (Wilson for accuracies and agreements, a seeded
bootstrap otherwise). Models run in eval mode under no_grad, on the device of their
parameters, and their train/eval mode is restored afterwards.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn
from torch.nn import functional as F

from ._errors import DatasetError
from ._load import Dataset, ImageDataset, TextDataset
from ._preprocess import ImagePreprocessing
from ._quality import QualityEstimate, accuracy_interval, bootstrap_interval

__all__ = [
    "DEFAULT_CACHE_BYTES",
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
]

#: ``tokenize(texts) -> inputs`` for the model (a tensor, a tuple of them, or a dict of them).
Tokenize = Callable[[list[str]], Any]
#: ``forward(model, inputs) -> B×C logits`` (classification).
Forward = Callable[[nn.Module, Any], torch.Tensor]
#: ``embed(model, inputs) -> B×D embeddings`` (similarity and agreement of text).
Embed = Callable[[nn.Module, Any], torch.Tensor]

#: Preprocessed images kept in memory between calls (a search calls an evaluator many times);
#: beyond this they are decoded again on each call.
DEFAULT_CACHE_BYTES = 512 * 2**20
_IMAGE_BATCH = 64
_TEXT_BATCH = 32
_N_BOOT = 1000


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple or list, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def _to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {key: _to_device(value, device) for key, value in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(_to_device(value, device) for value in inputs)
    return inputs


def _device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode and no_grad for the block; the model's own mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield _device(model)
    finally:
        model.train(was_training)


def _source(dataset: Dataset) -> str:
    return str(dataset.root if isinstance(dataset, ImageDataset) else dataset.path)


def _check_indices(dataset: Dataset, indices: Sequence[int]) -> list[int]:
    chosen = [int(i) for i in indices]
    if not chosen:
        raise ValueError("an evaluator needs at least one example index")
    if min(chosen) < 0 or max(chosen) >= len(dataset):
        raise ValueError(f"example indices must lie in [0, {len(dataset)}), got {min(chosen)}..{max(chosen)}")
    return chosen


def _check_outputs(outputs: Any, rows: int, what: str) -> torch.Tensor:
    """``outputs`` as a float B×K tensor, or a DatasetError naming what returned it."""
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2 or outputs.shape[0] != rows:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise DatasetError(
            what,
            shape,
            f"expected a {rows}×K tensor for a batch of {rows} examples; make it return one row per example",
        )
    return outputs.float()


def _check_width(dataset: Dataset, width: int) -> None:
    """Refuse labels the model cannot predict: a class index past its last output."""
    if dataset.n_classes > width:
        raise DatasetError(
            "data",
            _source(dataset),
            f"the dataset has {dataset.n_classes} classes but the model has {width} outputs; use a model "
            f"with at least {dataset.n_classes} outputs or data with at most {width} classes",
        )


def _labels_of(dataset: Dataset, indices: list[int]) -> torch.Tensor:
    if dataset.labels is None:
        raise ValueError(f"{_source(dataset)} has no labels")
    return torch.tensor([dataset.labels[i] for i in indices], dtype=torch.long)


class Evaluator(abc.ABC):
    """Scores a model on fixed examples of a dataset: ``evaluator(model) -> QualityEstimate``."""

    metric: ClassVar[str]

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = _check_indices(dataset, indices)

    @property
    def n(self) -> int:
        """The number of examples every call scores."""
        return len(self.indices)

    @abc.abstractmethod
    def __call__(self, model: nn.Module) -> QualityEstimate:
        """``model``'s quality on the examples (the model is left as it was given)."""


# ---------------------------------------------------------------------------------- images
class _ImageBatches:
    """Preprocessed image batches of fixed examples, cached while they fit in ``cache_bytes``."""

    def __init__(
        self,
        dataset: ImageDataset,
        indices: list[int],
        preprocessing: ImagePreprocessing,
        batch_size: int,
        cache_bytes: int,
    ) -> None:
        self.dataset, self.indices, self.preprocessing = dataset, indices, preprocessing
        self.batch_size, self.cache_bytes = batch_size, cache_bytes
        self._cache: list[torch.Tensor] | None = None

    def _batch(self, chunk: list[int]) -> torch.Tensor:
        tensors = [
            self.preprocessing(self.dataset.open(i), name=str(self.dataset.file_path(i))) for i in chunk
        ]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            first = next(j for j, t in enumerate(tensors) if t.shape != tensors[0].shape)
            raise DatasetError(
                "preprocessing.crop",
                self.preprocessing.crop,
                f"images come out in different sizes ({self.dataset.files[chunk[0]]}: "
                f"{tuple(tensors[0].shape)}, {self.dataset.files[chunk[first]]}: "
                f"{tuple(tensors[first].shape)}); "
                "set preprocessing.resize and preprocessing.crop so that every image has one size",
            )
        return torch.stack(tensors)

    def __iter__(self) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(positions in indices, batch)`` pairs, in order."""
        starts = range(0, len(self.indices), self.batch_size)
        if self._cache is not None:
            for start, batch in zip(starts, self._cache, strict=True):
                yield slice(start, start + batch.shape[0]), batch
            return
        kept: list[torch.Tensor] | None = []
        total_bytes = 0
        for start in starts:
            batch = self._batch(self.indices[start : start + self.batch_size])
            total_bytes += batch.numel() * batch.element_size()
            if kept is not None and total_bytes <= self.cache_bytes:
                kept.append(batch)
            else:
                kept = None  # over the bound: decode again on every call
            yield slice(start, start + batch.shape[0]), batch
        self._cache = kept


def _predict(model: nn.Module, batches: _ImageBatches, forward: Forward, dataset: Dataset) -> torch.Tensor:
    """The model's N×C logits on every batch (CPU float32); the width is checked on the first."""
    chunks: list[torch.Tensor] = []
    with _evaluating(model) as device:
        for _, batch in batches:
            logits = _check_outputs(forward(model, batch.to(device)), batch.shape[0], "model output")
            if not chunks:
                _check_width(dataset, logits.shape[1])
            chunks.append(logits.cpu())
    return torch.cat(chunks)


class ImageAccuracy(Evaluator):
    """Top-1 accuracy on labelled images (an ImageFolder), with its Wilson 95% interval."""

    metric = "top1_accuracy"

    def __init__(
        self,
        dataset: ImageDataset,
        indices: Sequence[int],
        preprocessing: ImagePreprocessing,
        batch_size: int = _IMAGE_BATCH,
        forward: Forward = call_model,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        super().__init__(dataset, indices)
        self.labels = _labels_of(dataset, self.indices)
        self.forward = forward
        self._batches = _ImageBatches(dataset, self.indices, preprocessing, batch_size, cache_bytes)

    def __call__(self, model: nn.Module) -> QualityEstimate:
        logits = _predict(model, self._batches, self.forward, self.dataset)
        correct = int((logits.argmax(dim=1) == self.labels).sum())
        return accuracy_interval(correct, self.n, metric=self.metric)


class ImageAgreement(Evaluator):
    """Top-1 agreement of a model with the uncompressed ``reference`` on unlabelled images.

    The Wilson interval is that of the agreement; ``extra["kl_divergence"]`` is the mean
    KL(reference ‖ model) of the class distributions, in nats. The reference outputs are
    computed on the first call and the reference is then released: give a model that nothing
    compresses in place before that call.
    """

    metric = "top1_agreement"

    def __init__(
        self,
        reference: nn.Module,
        dataset: ImageDataset,
        indices: Sequence[int],
        preprocessing: ImagePreprocessing,
        batch_size: int = _IMAGE_BATCH,
        forward: Forward = call_model,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        super().__init__(dataset, indices)
        self._reference: nn.Module | None = reference
        self._reference_log_probs: torch.Tensor | None = None
        self.forward = forward
        self._batches = _ImageBatches(dataset, self.indices, preprocessing, batch_size, cache_bytes)

    def _reference_outputs(self) -> torch.Tensor:
        if self._reference_log_probs is None:
            if self._reference is None:
                raise RuntimeError("reference model released before its outputs were computed")
            logits = _predict(self._reference, self._batches, self.forward, self.dataset)
            self._reference_log_probs = F.log_softmax(logits.double(), dim=1)
            self._reference = None  # only its outputs are needed from now on
        return self._reference_log_probs

    def __call__(self, model: nn.Module) -> QualityEstimate:
        reference = self._reference_outputs()
        log_probs = F.log_softmax(_predict(model, self._batches, self.forward, self.dataset).double(), dim=1)
        if log_probs.shape != reference.shape:
            raise ValueError(f"model outputs {tuple(log_probs.shape)}, reference {tuple(reference.shape)}")
        agree = int((log_probs.argmax(dim=1) == reference.argmax(dim=1)).sum())
        # KL(ref ‖ model) = Σ p_ref (log p_ref − log p_model); clamped at 0 against rounding.
        kl = F.kl_div(log_probs, reference, log_target=True, reduction="sum").item() / self.n
        return accuracy_interval(agree, self.n, metric=self.metric, extra={"kl_divergence": max(0.0, kl)})


# ------------------------------------------------------------------------------------ text
class _TextBatches:
    """Tokenised batches of fixed texts, tokenised once."""

    def __init__(self, texts: list[str], tokenize: Tokenize, batch_size: int) -> None:
        self.sizes = [len(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
        self.inputs = [
            tokenize(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)
        ]

    def outputs(
        self, model: nn.Module, function: Forward, what: str, dataset: Dataset | None = None
    ) -> torch.Tensor:
        """``function(model, inputs)`` on every batch, as one N×K CPU tensor."""
        chunks: list[torch.Tensor] = []
        with _evaluating(model) as device:
            for size, inputs in zip(self.sizes, self.inputs, strict=True):
                out = _check_outputs(function(model, _to_device(inputs, device)), size, what)
                if dataset is not None and not chunks:
                    _check_width(dataset, out.shape[1])
                chunks.append(out.cpu())
        return torch.cat(chunks)


def _text_dataset(dataset: Dataset, kind: str, evaluator: str) -> TextDataset:
    if not isinstance(dataset, TextDataset) or dataset.kind != kind:
        raise ValueError(f"{evaluator} needs a {kind!r} dataset, got {dataset.kind!r}")
    return dataset


class TextAccuracy(Evaluator):
    """Top-1 accuracy on labelled text rows; ``logits(model, tokenize(texts))`` gives B×C logits."""

    metric = "top1_accuracy"

    def __init__(
        self,
        dataset: TextDataset,
        indices: Sequence[int],
        tokenize: Tokenize,
        logits: Forward = call_model,
        batch_size: int = _TEXT_BATCH,
    ) -> None:
        super().__init__(_text_dataset(dataset, "text_labels", "TextAccuracy"), indices)
        self.labels = _labels_of(dataset, self.indices)
        self.logits = logits
        self._batches = _TextBatches([dataset.texts[i] for i in self.indices], tokenize, batch_size)

    def __call__(self, model: nn.Module) -> QualityEstimate:
        logits = self._batches.outputs(model, self.logits, "logits", self.dataset)
        correct = int((logits.argmax(dim=1) == self.labels).sum())
        return accuracy_interval(correct, self.n, metric=self.metric)


def _spearman(data: np.ndarray) -> float:
    """Spearman's rank correlation of column 0 (predictions) with column 1 (scores).

    Undefined (NaN) when the scores are all equal; 0 when the predictions are (a collapsed model
    ranks nothing, which is no correlation, and must not make the quality undefined).
    """
    predicted, score = data[:, 0], data[:, 1]
    if np.ptp(score) == 0:
        return math.nan
    if np.ptp(predicted) == 0:
        return 0.0
    return float(np.corrcoef(rankdata(predicted), rankdata(score))[0, 1])


class TextSimilarity(Evaluator):
    """Spearman correlation of the cosine of the two texts' embeddings with the rows' scores.

    The interval is a seeded bootstrap over the pairs (``n_boot`` resamples).
    """

    metric = "spearman"

    def __init__(
        self,
        dataset: TextDataset,
        indices: Sequence[int],
        tokenize: Tokenize,
        embed: Embed,
        batch_size: int = _TEXT_BATCH,
        seed: int = 0,
        n_boot: int = _N_BOOT,
    ) -> None:
        super().__init__(_text_dataset(dataset, "text_pairs", "TextSimilarity"), indices)
        if dataset.scores is None or dataset.text_pairs is None:
            raise ValueError("a 'text_pairs' dataset without scores or pairs")
        self.scores = np.array([dataset.scores[i] for i in self.indices])
        if self.n < 2 or np.ptp(self.scores) == 0:
            raise DatasetError(
                "data",
                _source(dataset),
                f"the {self.n} evaluated pair(s) all have score {self.scores[0]}: a rank correlation "
                "needs at least two different scores; add pairs with other scores or evaluate more examples",
            )
        self.embed, self.seed, self.n_boot = embed, seed, n_boot
        self._first = _TextBatches([dataset.texts[i] for i in self.indices], tokenize, batch_size)
        self._second = _TextBatches([dataset.text_pairs[i] for i in self.indices], tokenize, batch_size)

    def cosines(self, model: nn.Module) -> np.ndarray:
        """The cosine similarity of each pair's embeddings under ``model``."""
        first = self._first.outputs(model, self.embed, "embed")
        second = self._second.outputs(model, self.embed, "embed")
        return F.cosine_similarity(first.double(), second.double(), dim=1).numpy()

    def __call__(self, model: nn.Module) -> QualityEstimate:
        data = np.stack([self.cosines(model), self.scores], axis=1)
        return bootstrap_interval(data, _spearman, seed=self.seed, n_boot=self.n_boot, metric=self.metric)


class TextAgreement(Evaluator):
    """Mean cosine of a model's text embeddings with the uncompressed ``reference``'s.

    1.0 for the reference itself; the interval is a seeded bootstrap over the texts. The
    reference embeddings are computed on the first call and the reference is then released.
    """

    metric = "embedding_cosine"

    def __init__(
        self,
        reference: nn.Module,
        dataset: TextDataset,
        indices: Sequence[int],
        tokenize: Tokenize,
        embed: Embed,
        batch_size: int = _TEXT_BATCH,
        seed: int = 0,
        n_boot: int = _N_BOOT,
    ) -> None:
        super().__init__(_text_dataset(dataset, "text", "TextAgreement"), indices)
        self._reference: nn.Module | None = reference
        self._reference_embeddings: torch.Tensor | None = None
        self.embed, self.seed, self.n_boot = embed, seed, n_boot
        self._batches = _TextBatches([dataset.texts[i] for i in self.indices], tokenize, batch_size)

    def _reference_outputs(self) -> torch.Tensor:
        if self._reference_embeddings is None:
            if self._reference is None:
                raise RuntimeError("reference model released before its outputs were computed")
            self._reference_embeddings = self._batches.outputs(self._reference, self.embed, "embed").double()
            self._reference = None
        return self._reference_embeddings

    def __call__(self, model: nn.Module) -> QualityEstimate:
        reference = self._reference_outputs()
        embeddings = self._batches.outputs(model, self.embed, "embed").double()
        if embeddings.shape != reference.shape:
            raise ValueError(
                f"model embeddings {tuple(embeddings.shape)}, reference {tuple(reference.shape)}"
            )
        cosines = F.cosine_similarity(embeddings, reference, dim=1).numpy()
        return bootstrap_interval(cosines, np.mean, seed=self.seed, n_boot=self.n_boot, metric=self.metric)


def make_evaluator(
    dataset: Dataset,
    indices: Sequence[int],
    *,
    reference: nn.Module | None = None,
    preprocessing: ImagePreprocessing | None = None,
    tokenize: Tokenize | None = None,
    embed: Embed | None = None,
    logits: Forward = call_model,
    seed: int = 0,
) -> Evaluator:
    """The evaluator for ``dataset``'s kind (see the module docstring), on ``indices``.

    ``reference`` (the uncompressed model) is needed for unlabelled data, ``preprocessing``
    for images (default: ImageNet's), ``tokenize`` for text and ``embed`` for text without
    labels; text without a tokenizer, or similarity text without ``embed``, is a DatasetError.
    """
    if isinstance(dataset, ImageDataset):
        prep = preprocessing or ImagePreprocessing()
        if dataset.kind == "image_labels":
            return ImageAccuracy(dataset, indices, prep, forward=logits)
        if reference is None:
            raise ValueError("unlabelled images are scored against a reference model: pass reference=")
        return ImageAgreement(reference, dataset, indices, prep, forward=logits)
    if tokenize is None:
        raise DatasetError(
            "data",
            _source(dataset),
            "text data needs a model whose source provides a tokenizer; use image data",
        )
    if dataset.kind == "text_labels":
        return TextAccuracy(dataset, indices, tokenize, logits)
    if embed is None:
        raise DatasetError(
            "data",
            _source(dataset),
            "text without labels is scored by embeddings: the model's source must provide an embed hook",
        )
    if dataset.kind == "text_pairs":
        return TextSimilarity(dataset, indices, tokenize, embed, seed=seed)
    if reference is None:
        raise ValueError("unlabelled text is scored against a reference model: pass reference=")
    return TextAgreement(reference, dataset, indices, tokenize, embed, seed=seed)
