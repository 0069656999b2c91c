"""The model entry of a job: its source resolved, judged on the job's data or evaluator.

This module imports torch: import it where models are built, never in the API process.

One function, ``job_entry(spec)``, turns a JobSpec into the ``ZooModel`` every part of a search
uses (the driver's problem, each Ray evaluator, the CLI's commands): the model comes from
``workers.zoo.resolve_model`` (zoo, plugin or import path, weights loaded strictly), and, when
the spec names ``data`` or an ``evaluator``, its quality comes from there instead of the
entry's own evaluation. Data is split once, seeded by the job's seed, into a calibration and an
evaluation part (``workers.datasets.split``); only the evaluation part is scored, and every
quality carries its n and 95% interval in ``Quality.extra``.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.zoo import ZooModel

from ._spec import JobSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

    from workers.datasets import Dataset, Evaluator, ImportedEvaluator, Split
    from workers.zoo import CalibrationSet, Quality

__all__ = ["MAX_CALIBRATION_INPUTS", "JudgedModel", "allowed_modules_from_env", "job_entry"]

#: At most this many examples of the calibration split are used to calibrate a compressed model
#: (the first ones of the seeded split): the sequential low-rank fit runs them as one batch, and a
#: few dozen to a few hundred inputs is what calibration needs (SVD-LLM, GPTQ and AdaRound use
#: 32-1024).
MAX_CALIBRATION_INPUTS = 64


def allowed_modules_from_env(env: os._Environ[str] | dict[str, str] | None = None) -> frozenset[str]:
    """The packages of ``HWSEARCH_MODEL_MODULES`` (comma-separated; empty by default)."""
    from workers.model_refs import MODULES_SETTING

    raw = (env if env is not None else os.environ).get(MODULES_SETTING, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _data_path(spec: JobSpec, data_dir: Path | None) -> Path:
    from workers.datasets import dataset_path

    assert spec.data is not None
    if spec.data.dataset is None:
        return Path(spec.data.path or "")
    if data_dir is None:
        from latency_models import data_dir as default_data_dir

        data_dir = default_data_dir()
    return dataset_path(spec.data.dataset, data_dir)


def job_entry(
    spec: JobSpec,
    *,
    allowed_modules: Collection[str] | None = None,
    data_dir: Path | None = None,
) -> ZooModel:
    """The entry a search of ``spec`` builds, evaluates and compresses.

    ``allowed_modules`` limits import paths (the service's ``HWSEARCH_MODEL_MODULES``; None: any,
    as for a local CLI). ``data_dir`` locates registered datasets. Raises ``InputError``
    subclasses (``ZooError``, ``DatasetError``) naming the field, the value and the fix.
    """
    from workers.zoo import resolve_model

    entry = resolve_model(
        spec.model,
        model_args=dict(spec.model_args) or None,
        weights=spec.weights,
        input_shape=tuple(spec.input_shape) if spec.input_shape else None,
        allowed_modules=allowed_modules,
    )
    if spec.quality_examples is not None and hasattr(entry, "n_calibration_images"):
        entry.n_calibration_images = spec.quality_examples
    if spec.data is None and spec.evaluator is None:
        return entry
    return JudgedModel(entry, spec, data_dir=data_dir)


def _image_preprocessing(entry: ZooModel, spec: JobSpec, example: torch.Tensor) -> dict[str, Any]:
    """The spec's preprocessing, else the entry's ``preprocessing`` dict, else one that fits
    the example input: resize and centre crop to its side, its channels, ImageNet's mean and
    std for RGB and 0.5 / 0.5 for greyscale."""
    if spec.data is not None and spec.data.preprocessing is not None:
        return dict(spec.data.preprocessing)
    declared = getattr(entry, "preprocessing", None)
    hooks = getattr(entry, "_hooks_from", None)  # a bare nn.Module's factory module
    if declared is None and isinstance(hooks, str):
        import importlib

        declared = getattr(importlib.import_module(hooks), "PREPROCESSING", None)
    if isinstance(declared, dict):
        return dict(declared)
    from workers.datasets import IMAGENET_MEAN, IMAGENET_STD, DatasetError

    if example.dim() != 4 or example.shape[1] not in (1, 3):
        raise DatasetError(
            "data.preprocessing",
            None,
            f"the model's input has shape {tuple(example.shape)}, not 1×C×H×W with 1 or 3 channels; "
            "give data.preprocessing (resize, crop, mean, std, channels) or use an evaluator",
        )
    channels, height, width = (int(d) for d in example.shape[1:])
    side = min(height, width)
    grey = channels == 1
    return {
        "resize": side,
        "crop": side if height == width else None,
        "mean": [0.5] if grey else list(IMAGENET_MEAN),
        "std": [0.5] if grey else list(IMAGENET_STD),
        "channels": channels,
    }


class JudgedModel(ZooModel):
    """The entry of a job with data or an evaluator: the wrapped entry builds, feeds and names
    the model; its quality comes from the job's data (the evaluation split) or evaluator. The
    evaluator is made on first use (the uncompressed model is the reference of unlabelled data).
    Attributes it does not own (a model source, ``n_calibration_images``...) are the entry's."""

    task = "the wrapped entry's"
    description = "a model judged on the job's data or evaluator"

    def __init__(self, entry: ZooModel, spec: JobSpec, *, data_dir: Path | None = None) -> None:
        from workers.datasets import load_dataset, load_evaluator, split

        # ZooModel's class variables, per instance: the wrapped entry's name and arguments.
        vars(self)["name"] = entry.name
        vars(self)["task"] = entry.task
        self.kwargs = entry.kwargs
        self.entry = entry
        self._spec = spec
        self._evaluator: Evaluator | ImportedEvaluator | None = None
        self.dataset: Dataset | None = None
        self.split: Split | None = None
        self.data_record: dict[str, Any] = {}
        if spec.data is not None:
            path = _data_path(spec, data_dir)
            self.dataset = load_dataset(path)
            self.split = split(
                self.dataset,
                calibration_fraction=spec.data.calibration_fraction,
                seed=spec.seed,
                eval_examples=spec.eval_examples,
            )
            self.data_record = {
                "dataset": spec.data.dataset,
                "path": None if spec.data.dataset else str(path),
                "kind": self.dataset.kind,
                "classes": list(getattr(self.dataset, "classes", ()) or ()),
                **self.split.record,
            }
        metric = _METRICS.get(self.dataset.kind if self.dataset else "", "quality")
        if spec.evaluator is not None:
            self._evaluator = load_evaluator(spec.evaluator)
            self.data_record["evaluator"] = spec.evaluator
            metric = self._evaluator.default_metric
        vars(self)["metric"] = metric

    # ---- what the wrapped entry owns ------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this object does not have: the entry's own.
        if name == "entry":
            raise AttributeError(name)
        return getattr(self.entry, name)

    def build(self) -> nn.Module:
        return self.entry.build()

    def example_input(self) -> torch.Tensor:
        return self.entry.example_input()

    def ignore_layers(self, model: nn.Module) -> list[str]:
        return self.entry.ignore_layers(model)

    # ---- quality --------------------------------------------------------------------------
    def check(self, model: nn.Module, example_input: torch.Tensor) -> None:
        """Before any trial: labelled data must not have more classes than the model outputs."""
        import torch

        from workers.datasets import DatasetError

        if self.dataset is None or self._evaluator is not None or self.dataset.labels is None:
            return
        with torch.no_grad():
            outputs = model(example_input)
        if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
            return  # the evaluator names a bad output on its first call
        width = int(outputs.shape[1])
        if self.dataset.n_classes > width:
            raise DatasetError(
                "data",
                self._spec.data.describe() if self._spec.data else None,
                f"the dataset has {self.dataset.n_classes} classes but the model has {width} outputs; "
                f"use a model with at least {self.dataset.n_classes} outputs or data with at most "
                f"{width} classes",
            )

    def calibration_set(self) -> CalibrationSet | None:
        """Inputs from the calibration split (never evaluated on): at most
        ``MAX_CALIBRATION_INPUTS`` images preprocessed as the evaluation's, or texts tokenised by
        the source's ``tokenize`` hook. None with an evaluator alone (no data to calibrate on)
        or text without a tokenizer."""
        from workers.datasets import ImageDataset, ImagePreprocessing
        from workers.zoo import CalibrationSet

        if self.dataset is None or self.split is None or not self.split.calibration:
            return None
        indices = self.split.calibration[:MAX_CALIBRATION_INPUTS]
        where = self._spec.data.describe() if self._spec.data is not None else "the data"
        description = f"{len(indices)} examples of the calibration split of {where}"
        import torch

        if isinstance(self.dataset, ImageDataset):
            values = _image_preprocessing(self.entry, self._spec, self.entry.example_input())
            preprocessing = ImagePreprocessing.from_dict(values)
            images = torch.stack(
                [preprocessing(self.dataset.open(i), name=str(self.dataset.file_path(i))) for i in indices]
            )
            return CalibrationSet(
                list(images.split(16)), len(indices), description, labels=self._labels(indices)
            )
        tokenize = getattr(self.entry, "tokenize", None)
        if tokenize is None:
            return None
        texts = [self.dataset.texts[i] for i in indices]
        batches = [_as_list(tokenize([text])) for text in texts]
        if any(len(b) != 1 or not isinstance(b[0], torch.Tensor) for b in batches):
            return None  # a tokenizer whose output is not one tensor per text: nothing to calibrate on
        return CalibrationSet(
            [b[0] for b in batches], len(indices), description, labels=self._labels(indices)
        )

    def _labels(self, indices: list[int]) -> torch.Tensor | None:
        import torch

        labels = getattr(self.dataset, "labels", None)
        return None if labels is None else torch.tensor([labels[i] for i in indices], dtype=torch.long)

    def _make_evaluator(self) -> Evaluator | ImportedEvaluator:
        from workers.datasets import ImageDataset, ImagePreprocessing, make_evaluator

        if self._evaluator is not None:
            return self._evaluator
        assert self.dataset is not None and self.split is not None  # one of data/evaluator is set
        reference = self.entry.build()
        preprocessing = None
        if isinstance(self.dataset, ImageDataset):
            values = _image_preprocessing(self.entry, self._spec, self.entry.example_input())
            preprocessing = ImagePreprocessing.from_dict(values)
            self.data_record["preprocessing"] = preprocessing.to_dict()
        self._evaluator = make_evaluator(
            self.dataset,
            self.split.evaluation,
            reference=reference,
            preprocessing=preprocessing,
            tokenize=getattr(self.entry, "tokenize", None),
            embed=getattr(self.entry, "embed", None),
            seed=self._spec.seed,
        )
        return self._evaluator

    def evaluate(self, model: nn.Module) -> Quality:
        from workers.zoo import Quality

        estimate = self._make_evaluator()(model)
        extra: dict[str, float] = {k: float(v) for k, v in estimate.extra.items()}
        for key in ("n", "low", "high"):
            value = getattr(estimate, key)
            if value is not None:
                extra[key] = float(value)
        if self._spec.evaluator is not None:
            where = self._spec.evaluator
        else:
            where = self._spec.data.describe() if self._spec.data is not None else "the data"
        n = f" on {estimate.n} examples" if estimate.n is not None else ""
        return Quality(estimate.value, estimate.metric, f"{estimate.metric}{n} of {where}", extra)


def _as_list(inputs: Any) -> list[Any]:
    """A tokenizer's output as a list of model inputs (a list of tensors, or one batch tensor)."""
    return list(inputs) if isinstance(inputs, list | tuple) else [inputs]


_METRICS = {
    "image_labels": "top1_accuracy",
    "image_unlabelled": "top1_agreement",
    "text_labels": "top1_accuracy",
    "text_pairs": "spearman",
    "text": "embedding_cosine",
}
