"""Data sources (issue 16): a user's ImageFolder, flat image folder or JSONL file, split once and
scored with n and a 95% interval; a user's evaluator by import path; dataset zips checked.

Datasets are real files written into tmp_path (scikit-learn's digits as 16×16 PNGs, JSON lines),
models are real (tiny) torch modules, trained for a few steps or with weights set by hand so that
the expected quality is known independently of the code under test.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import sys
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from search_spaces import InputError
from workers.datasets import (
    DatasetError,
    ImageAccuracy,
    ImageAgreement,
    ImageDataset,
    ImagePreprocessing,
    QualityEstimate,
    TextAccuracy,
    TextAgreement,
    TextDataset,
    TextSimilarity,
    accuracy_interval,
    bootstrap_interval,
    check_split,
    load_dataset,
    load_evaluator,
    make_evaluator,
    split,
    unpack_dataset_zip,
)

# Digits are 16×16 greyscale; normalised to [-1, 1] the way the independent reader below does.
DIGITS_PREP = ImagePreprocessing(resize=None, crop=None, mean=(0.5,), std=(0.5,), channels=1)
PER_CLASS = 30
CLASSES = ("0", "1", "2")


# ------------------------------------------------------------------------------- fixtures
def _digit_png(image_8x8: np.ndarray) -> bytes:
    """A scikit-learn digit (values 0..16) as a 16×16 greyscale PNG."""
    pixels = np.kron(image_8x8 * (255.0 / 16.0), np.ones((2, 2))).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digit_pngs() -> dict[str, list[bytes]]:
    """PER_CLASS PNGs of each digit class in CLASSES."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return {
        name: [_digit_png(image) for image in digits.images[digits.target == int(name)][:PER_CLASS]]
        for name in CLASSES
    }


def _write_image_folder(root: Path, pngs: dict[str, list[bytes]]) -> Path:
    for name, images in pngs.items():
        (root / name).mkdir(parents=True)
        for i, data in enumerate(images):
            (root / name / f"{i:03d}.png").write_bytes(data)
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory, digit_pngs: dict[str, list[bytes]]) -> Path:
    return _write_image_folder(tmp_path_factory.mktemp("folder") / "digits", digit_pngs)


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory: pytest.TempPathFactory, digit_pngs: dict[str, list[bytes]]) -> Path:
    root = tmp_path_factory.mktemp("flat") / "photos"
    root.mkdir()
    for name, images in digit_pngs.items():
        for i, data in enumerate(images[:12]):
            (root / f"{name}_{i:02d}.png").write_bytes(data)
    return root


def _pixels(path: Path) -> torch.Tensor:
    """An image read and normalised without the code under test (as DIGITS_PREP should)."""
    array = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((array - 0.5) / 0.5)[None]


def _stack(dataset: ImageDataset, indices: list[int]) -> torch.Tensor:
    return torch.stack([_pixels(dataset.file_path(i)) for i in indices])


@pytest.fixture(scope="module")
def trained(image_folder: Path) -> tuple[nn.Module, ImageDataset, list[int], list[int]]:
    """A linear classifier over the 256 pixels, trained on the calibration part only."""
    dataset = load_dataset(image_folder)
    assert isinstance(dataset, ImageDataset)
    calibration, evaluation, _ = split(dataset, calibration_fraction=0.5, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, len(CLASSES)))
    inputs = _stack(dataset, calibration)
    labels = torch.tensor([dataset.labels[i] for i in calibration])  # type: ignore[index]
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimiser.step()
    return model.eval(), dataset, calibration, evaluation


def _always(n_in: int, n_out: int, winner: int = 0) -> nn.Module:
    """A model whose top-1 class is always ``winner`` (weights set by hand)."""
    linear = nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.bias[winner] = 1.0
    return nn.Sequential(nn.Flatten(), linear)


def _wilson(correct: int, n: int) -> tuple[float, float]:
    """The Wilson score 95% interval, from its textbook formula."""
    z = 1.959963984540054
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _assert_error(error: pytest.ExceptionInfo[DatasetError], field: str, *fragments: str) -> None:
    assert isinstance(error.value, InputError)
    assert error.value.field == field, str(error.value)
    text = str(error.value)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


# ------------------------------------------------------------------------------- loading
def test_image_folder_loads_labelled_in_sorted_class_order(image_folder: Path) -> None:
    dataset = load_dataset(image_folder)
    assert isinstance(dataset, ImageDataset)
    assert dataset.kind == "image_labels"
    assert dataset.classes == CLASSES
    assert len(dataset) == PER_CLASS * len(CLASSES)
    assert Counter(dataset.labels) == {0: PER_CLASS, 1: PER_CLASS, 2: PER_CLASS}
    for i in (0, PER_CLASS, len(dataset) - 1):
        assert dataset.file_path(i).parent.name == CLASSES[dataset.labels[i]]  # type: ignore[index]
    assert len(set(dataset.identities())) == len(dataset)


def test_classes_txt_sets_the_class_order(tmp_path: Path, digit_pngs: dict[str, list[bytes]]) -> None:
    root = _write_image_folder(tmp_path / "d", {k: v[:3] for k, v in digit_pngs.items()})
    (root / "classes.txt").write_text("2\n\n0\n1\nspare\n")
    dataset = load_dataset(root)
    assert isinstance(dataset, ImageDataset)
    assert dataset.classes == ("2", "0", "1", "spare")  # a listed class without images still counts
    assert dataset.n_classes == 4
    label_of = {dataset.file_path(i).parent.name: dataset.labels[i] for i in range(len(dataset))}  # type: ignore[index]
    assert label_of == {"2": 0, "0": 1, "1": 2}


def test_flat_folder_loads_unlabelled(flat_folder: Path) -> None:
    (flat_folder / "notes.txt").write_text("not an image, skipped")
    dataset = load_dataset(flat_folder)
    assert isinstance(dataset, ImageDataset)
    assert dataset.kind == "image_unlabelled" and dataset.labels is None
    assert len(dataset) == 12 * len(CLASSES)


def _write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_kinds(tmp_path: Path) -> None:
    labelled = load_dataset(
        _write_jsonl(
            tmp_path / "a.jsonl", [{"text": "x", "label": "pos"}, {"text": "y", "label": "neg", "id": 7}]
        )
    )
    assert isinstance(labelled, TextDataset) and labelled.kind == "text_labels"
    assert labelled.classes == ("neg", "pos") and labelled.labels == (1, 0)

    indexed = load_dataset(
        _write_jsonl(tmp_path / "b.jsonl", [{"text": "x", "label": 3}, {"text": "y", "label": 0}])
    )
    assert indexed.labels == (3, 0) and indexed.n_classes == 4

    pairs = load_dataset(
        _write_jsonl(
            tmp_path / "c.jsonl",
            [{"text": "a", "text_pair": "b", "score": 4}, {"text": "c", "text_pair": "d", "score": 0.5}],
        )
    )
    assert isinstance(pairs, TextDataset) and pairs.kind == "text_pairs"
    assert pairs.scores == (4.0, 0.5) and pairs.text_pairs == ("b", "d")

    (tmp_path / "d.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    plain = load_dataset(tmp_path / "d.jsonl")
    assert isinstance(plain, TextDataset) and plain.kind == "text" and plain.labels is None
    assert plain.lines == (1, 3)  # blank lines skipped, numbers kept for messages and identities


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path / "missing")
    _assert_error(error, "data", "missing", "no such file")
    (tmp_path / "rows.csv").write_text("text,label\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path / "rows.csv")
    _assert_error(error, "data", "rows.csv", ".jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path / "empty")
    _assert_error(error, "data", "empty", "no images")


def test_bad_image_folders(tmp_path: Path, digit_pngs: dict[str, list[bytes]]) -> None:
    one = _write_image_folder(tmp_path / "one", {"0": digit_pngs["0"][:4]})
    (one / "1").mkdir()  # a second class folder, but empty
    with pytest.raises(DatasetError) as error:
        load_dataset(one)
    _assert_error(error, "data", "only one class", "'0'", "at least two classes")

    no_images = tmp_path / "no_images"
    (no_images / "a").mkdir(parents=True)
    (no_images / "b").mkdir()
    with pytest.raises(DatasetError) as error:
        load_dataset(no_images)
    _assert_error(error, "data", "no images")

    loose = _write_image_folder(tmp_path / "loose", {k: v[:2] for k, v in digit_pngs.items()})
    (loose / "stray.png").write_bytes(digit_pngs["0"][0])
    with pytest.raises(DatasetError) as error:
        load_dataset(loose)
    _assert_error(error, "data", "stray.png", "class folder")

    unlisted = _write_image_folder(tmp_path / "unlisted", {k: v[:2] for k, v in digit_pngs.items()})
    (unlisted / "classes.txt").write_text("0\n1\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(unlisted)
    _assert_error(error, "data/classes.txt", "'2'")
    (unlisted / "classes.txt").write_text("0\n1\n2\n1\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(unlisted)
    _assert_error(error, "data/classes.txt", "listed twice")
    (unlisted / "classes.txt").write_text("0\n1\n2\n../elsewhere\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(unlisted)
    _assert_error(error, "data/classes.txt", "../elsewhere", "not a folder name")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_named(tmp_path: Path, digit_pngs: dict[str, list[bytes]], damage: str) -> None:
    root = _write_image_folder(tmp_path / "d", {k: v[:3] for k, v in digit_pngs.items()})
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(big, "PNG")
    # Garbage fails at the header; a truncated PNG only when its pixels are decoded.
    data = b"not an image at all" if damage == "garbage" else big.getvalue()[: len(big.getvalue()) // 2]
    (root / "1" / "broken.png").write_bytes(data)
    with pytest.raises(DatasetError) as error:
        load_dataset(root)
    _assert_error(error, "data", "broken.png", "does not decode")
    assert error.value.value == str(root / "1" / "broken.png")


@pytest.mark.parametrize(
    "lines,line,fragment",
    [
        (['{"text": "a"}', '{"text": "b"}', '{"text": oops}'], 3, "not valid JSON"),
        (['{"text": "a"}', "[1, 2]"], 2, "JSON object"),
        (['{"text": "a", "label": 0}', '{"text": "b", "text_pair": "c", "score": 1}'], 2, "different kinds"),
        (['{"text": "a", "label": 0}', '{"text": "b"}'], 2, "different kinds"),
        (
            ['{"text": "a", "label": 0}', '{"text": "b", "label": "cat"}'],
            2,
            "mix class indices and class names",
        ),
        (['{"text": "a", "label": true}'], 1, "'label'"),
        (['{"text": "a", "label": -1}'], 1, "'label'"),
        (['{"text": "a", "text_pair": "b"}'], 1, "go together"),
        (['{"text": "a", "text_pair": "b", "score": NaN}'], 1, "finite number"),
        (['{"text": "a", "text_pair": "b", "score": "high"}'], 1, "finite number"),
        (['{"text": "a", "label": 0, "text_pair": "b", "score": 1}'], 1, "not both"),
        (['{"text": ""}'], 1, "non-empty string"),
        (['{"body": "a"}'], 1, "needs a 'text' field"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path: Path, lines: list[str], line: int, fragment: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    _assert_error(error, "data", f"line {line}", fragment)
    assert error.value.value == f"{path}:{line}"


def test_jsonl_without_rows_or_with_one_label(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path / "empty.jsonl")
    _assert_error(error, "data", "no rows")
    one = _write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    with pytest.raises(DatasetError) as error:
        load_dataset(one)
    _assert_error(error, "data", "'x'", "at least two classes")


# ----------------------------------------------------------------------------- preprocessing
def test_preprocessing_resizes_the_shorter_side_and_crops_the_centre() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 51))  # width 40, height 20
    tensor = ImagePreprocessing(resize=10, crop=8, mean=(0.5,), std=(0.5,))(image)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, 8, 8)
    # (x / 255 - 0.5) / 0.5 per channel, for a uniform colour (bilinear keeps it uniform).
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([1.0, -1.0, 0.2 / 0.5 - 1.0]), atol=1e-6)

    ramp = Image.fromarray(np.tile(np.arange(0, 250, 50, dtype=np.uint8), (5, 1)), mode="L")  # x * 50
    crop = ImagePreprocessing(resize=None, crop=3, mean=(0.0,), std=(1.0,), channels=1)(ramp)
    assert tuple(crop.shape) == (1, 3, 3)
    assert torch.allclose(crop[0, 0], torch.tensor([50.0, 100.0, 150.0]) / 255.0)

    rgb_to_grey = ImagePreprocessing(resize=12, crop=None, mean=(0.0,), std=(1.0,), channels=1)(image)
    assert tuple(rgb_to_grey.shape) == (1, 12, 24)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"channels": 2}, "preprocessing.channels"),
        ({"channels": True}, "preprocessing.channels"),
        ({"resize": 0}, "preprocessing.resize"),
        ({"crop": 2.5}, "preprocessing.crop"),
        ({"resize": 100, "crop": 224}, "preprocessing.crop"),
        ({"mean": (0.5, 0.5)}, "preprocessing.mean"),
        ({"std": (0.2, 0.0, 0.2)}, "preprocessing.std"),
        ({"std": "wide"}, "preprocessing.std"),
        ({"mean": (math.nan,) * 3}, "preprocessing.mean"),
    ],
)
def test_preprocessing_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(DatasetError) as error:
        ImagePreprocessing(**kwargs)  # type: ignore[arg-type]
    _assert_error(error, field)


def test_preprocessing_dict_round_trip_and_small_images() -> None:
    prep = ImagePreprocessing(resize=32, crop=28, mean=(0.1,), std=(0.3,), channels=1)
    assert ImagePreprocessing.from_dict(prep.to_dict()) == prep
    assert prep.mean == (0.1,) and ImagePreprocessing(mean=0.5).mean == (0.5, 0.5, 0.5)  # type: ignore[arg-type]
    with pytest.raises(DatasetError) as error:
        ImagePreprocessing.from_dict({"resize": 32, "size": 28})
    _assert_error(error, "preprocessing.size", "unknown key")
    with pytest.raises(DatasetError) as error:
        ImagePreprocessing(resize=None, crop=32)(Image.new("RGB", (20, 20)), name="tiny.png")
    _assert_error(error, "preprocessing.crop", "tiny.png", "20x20")


# ------------------------------------------------------------------------------------ split
def test_split_never_overlaps_is_seeded_and_stratified(image_folder: Path) -> None:
    dataset = load_dataset(image_folder)
    n = len(dataset)
    calibration, evaluation, record = split(dataset, calibration_fraction=0.3, seed=7)
    assert not set(calibration) & set(evaluation)
    assert sorted(calibration + evaluation) == list(range(n))
    assert len(calibration) == round(0.3 * n)
    labels = dataset.labels
    assert labels is not None
    per_class = Counter(labels[i] for i in calibration)
    assert all(abs(per_class[c] - 0.3 * PER_CLASS) <= 1 for c in range(len(CLASSES)))
    assert record["seed"] == 7 and record["stratified"] is True
    assert (record["n_calibration"], record["n_evaluation"], record["n_total"]) == (
        len(calibration),
        len(evaluation),
        n,
    )
    assert len(record["examples_sha256"]) == 64

    again = split(dataset, calibration_fraction=0.3, seed=7)
    assert again.calibration == calibration and again.record == record
    other = split(dataset, calibration_fraction=0.3, seed=8)
    assert other.calibration != calibration and other.record["examples_sha256"] != record["examples_sha256"]


def test_eval_examples_bounds_the_evaluation_part(image_folder: Path) -> None:
    dataset = load_dataset(image_folder)
    full = split(dataset, calibration_fraction=0.25, seed=3)
    bounded = split(dataset, calibration_fraction=0.25, seed=3, eval_examples=12)
    assert bounded.calibration == full.calibration  # the bound only cuts the evaluation part
    assert len(bounded.evaluation) == 12 and set(bounded.evaluation) <= set(full.evaluation)
    assert bounded.record["eval_examples"] == 12 and bounded.record["n_evaluation"] == 12
    labels = dataset.labels
    assert labels is not None
    per_class = Counter(labels[i] for i in bounded.evaluation)
    assert all(abs(per_class[c] - 4) <= 2 for c in range(len(CLASSES))), per_class


def test_split_of_unlabelled_and_text(flat_folder: Path, tmp_path: Path) -> None:
    images = split(load_dataset(flat_folder), calibration_fraction=0.5, seed=1)
    assert images.record["stratified"] is False and not set(images.calibration) & set(images.evaluation)
    text = load_dataset(_write_jsonl(tmp_path / "t.jsonl", [{"text": f"row {i}"} for i in range(5)]))
    parts = split(text, calibration_fraction=0.01, seed=0)
    assert len(parts.calibration) == 1 and len(parts.evaluation) == 4  # both parts get an example


def test_check_split_detects_changed_data(tmp_path: Path, digit_pngs: dict[str, list[bytes]]) -> None:
    root = _write_image_folder(tmp_path / "d", {k: v[:6] for k, v in digit_pngs.items()})
    dataset = load_dataset(root)
    made = split(dataset, calibration_fraction=0.5, seed=2, eval_examples=5)
    assert check_split(load_dataset(root), made.record) == made
    (root / "2" / "000.png").write_bytes(digit_pngs["1"][0])  # same name, other content
    with pytest.raises(DatasetError) as error:
        check_split(load_dataset(root), made.record)
    _assert_error(error, "data", "differ from those recorded")


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"calibration_fraction": 0}, "calibration_fraction"),
        ({"calibration_fraction": 1.0}, "calibration_fraction"),
        ({"calibration_fraction": math.nan}, "calibration_fraction"),
        ({"calibration_fraction": True}, "calibration_fraction"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"eval_examples": 0}, "eval_examples"),
    ],
)
def test_split_arguments(flat_folder: Path, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(DatasetError) as error:
        split(load_dataset(flat_folder), **kwargs)  # type: ignore[arg-type]
    _assert_error(error, field, repr(next(iter(kwargs.values()))))


# -------------------------------------------------------------------------------- intervals
def test_wilson_interval_matches_the_formula() -> None:
    estimate = accuracy_interval(8, 10)
    low, high = _wilson(8, 10)
    assert estimate.value == 0.8 and estimate.n == 10 and estimate.metric == "top1_accuracy"
    assert abs(estimate.low - low) < 1e-3 and abs(estimate.high - high) < 1e-3  # type: ignore[operator]
    assert abs(estimate.low - 0.4902) < 1e-3 and abs(estimate.high - 0.9433) < 1e-3  # type: ignore[operator]
    none_right, all_right = accuracy_interval(0, 10), accuracy_interval(10, 10)
    assert none_right.low == 0.0 and abs(none_right.high - _wilson(0, 10)[1]) < 1e-9  # type: ignore[operator]
    assert all_right.high == 1.0 and abs(all_right.low - _wilson(10, 10)[0]) < 1e-9  # type: ignore[operator]
    with pytest.raises(ValueError):
        accuracy_interval(11, 10)


def test_bootstrap_interval_is_seeded_and_of_the_right_width() -> None:
    values = np.random.default_rng(0).normal(2.0, 1.0, size=400)
    estimate = bootstrap_interval(values, np.mean, seed=5, n_boot=500, metric="mean_cosine")
    assert estimate.value == pytest.approx(values.mean()) and estimate.n == 400
    assert estimate.low < estimate.value < estimate.high  # type: ignore[operator]
    # The normal-theory 95% width of a mean is 2 × 1.96 × sd / sqrt(n); the bootstrap is close.
    expected = 2 * 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert estimate.high - estimate.low == pytest.approx(expected, rel=0.2)  # type: ignore[operator]
    assert bootstrap_interval(values, np.mean, seed=5, n_boot=500) == QualityEstimate(
        estimate.value, 400, estimate.low, estimate.high, "mean"
    )
    assert bootstrap_interval(values, np.mean, seed=6, n_boot=500).low != estimate.low
    with pytest.raises(ValueError):
        QualityEstimate(math.nan, 3, 0.0, 1.0, "x")


# ----------------------------------------------------------------------- image evaluators
def test_image_accuracy_matches_an_independent_count(trained: tuple) -> None:
    model, dataset, _, evaluation = trained
    evaluator = ImageAccuracy(dataset, evaluation, DIGITS_PREP, batch_size=16)
    quality = evaluator(model)
    with torch.no_grad():
        predicted = model(_stack(dataset, evaluation)).argmax(dim=1)
    correct = sum(int(p) == dataset.labels[i] for p, i in zip(predicted, evaluation, strict=True))
    assert quality.n == len(evaluation) and quality.value == correct / len(evaluation)
    assert quality.value >= 0.9  # digits 0/1/2 are easy: a broken pipeline would be near 1/3
    assert (quality.low, quality.high) == pytest.approx(_wilson(correct, len(evaluation)))
    assert evaluator(model) == quality  # the cached batches give the same answer

    always_two = evaluator(_always(256, 3, winner=2))
    share = sum(dataset.labels[i] == 2 for i in evaluation) / len(evaluation)
    assert always_two.value == pytest.approx(share)

    model.train()
    evaluator(model)
    assert model.training  # the caller's mode is restored
    model.eval()


def test_label_count_above_model_width(
    trained: tuple, tmp_path: Path, digit_pngs: dict[str, list[bytes]]
) -> None:
    _, dataset, _, evaluation = trained
    with pytest.raises(DatasetError) as error:
        ImageAccuracy(dataset, evaluation, DIGITS_PREP)(_always(256, 2))
    _assert_error(error, "data", "3 classes", "2 outputs")
    root = _write_image_folder(tmp_path / "d", {k: v[:2] for k, v in digit_pngs.items()})
    (root / "classes.txt").write_text("0\n1\n2\n3\n4\n")
    wide = load_dataset(root)
    assert isinstance(wide, ImageDataset)
    with pytest.raises(DatasetError) as error:
        ImageAccuracy(wide, range(len(wide)), DIGITS_PREP)(_always(256, 3))
    _assert_error(error, "data", "5 classes", "3 outputs")
    ImageAccuracy(dataset, evaluation, DIGITS_PREP)(_always(256, 10))  # more outputs than classes is fine


def test_image_agreement_with_the_reference(trained: tuple, flat_folder: Path) -> None:
    model, _, _, _ = trained
    dataset = load_dataset(flat_folder)
    assert isinstance(dataset, ImageDataset)
    indices = list(range(len(dataset)))
    evaluator = ImageAgreement(copy.deepcopy(model), dataset, indices, DIGITS_PREP)
    same = evaluator(model)
    assert same.metric == "top1_agreement" and same.value == 1.0 and same.n == len(dataset)
    assert same.extra["kl_divergence"] < 1e-9
    assert (same.low, same.high) == pytest.approx(_wilson(len(dataset), len(dataset)))

    with torch.no_grad():
        reference_top1 = model(_stack(dataset, indices)).argmax(dim=1)
    constant = evaluator(_always(256, 3, winner=0))
    assert constant.value == pytest.approx(float((reference_top1 == 0).float().mean()))
    assert constant.extra["kl_divergence"] > 0.1

    noisy = copy.deepcopy(model)
    with torch.no_grad():
        noisy[1].weight.add_(torch.randn_like(noisy[1].weight) * 0.05)
    quality = evaluator(noisy)
    assert quality.extra["kl_divergence"] > 0.0 and quality.low <= quality.value <= quality.high  # type: ignore[operator]


def test_images_of_different_sizes_need_resize_and_crop(
    tmp_path: Path, digit_pngs: dict[str, list[bytes]]
) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "a.png").write_bytes(digit_pngs["0"][0])
    Image.new("L", (20, 24)).save(root / "b.png")
    dataset = load_dataset(root)
    assert isinstance(dataset, ImageDataset)
    with pytest.raises(DatasetError) as error:
        ImageAgreement(_always(256, 3), dataset, [0, 1], DIGITS_PREP)(_always(256, 3))
    _assert_error(error, "preprocessing.crop", "a.png", "b.png")
    resized = ImagePreprocessing(resize=16, crop=16, mean=(0.5,), std=(0.5,), channels=1)
    assert ImageAgreement(_always(256, 3), dataset, [0, 1], resized)(_always(256, 3)).value == 1.0


# ------------------------------------------------------------------------ text evaluators
VOCAB = ("good", "great", "fine", "bad", "awful", "poor", "cat", "dog")


def tokenize(texts: list[str]) -> torch.Tensor:
    """Bag of words over VOCAB: the tokenizer hook a model source would provide."""
    rows = [[float(text.split().count(word)) for word in VOCAB] for text in texts]
    return torch.tensor(rows)


def embed(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    return model(inputs)


def _sentiment_model() -> nn.Module:
    """Logit 1 counts the positive words, logit 0 the negative ones (set by hand)."""
    model = nn.Linear(len(VOCAB), 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        model.weight[1, :3] = 1.0
        model.weight[0, 3:6] = 1.0
    return model


def _identity_embedder() -> nn.Linear:
    model = nn.Linear(len(VOCAB), len(VOCAB), bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(len(VOCAB)))
    return model


def test_text_accuracy(tmp_path: Path) -> None:
    rows = [{"text": f"a {w} day", "label": "pos"} for w in ("good", "great", "fine")] * 4
    rows += [{"text": f"a {w} day", "label": "neg"} for w in ("bad", "awful", "poor")] * 4
    rows += [{"text": "a good day", "label": "neg"}, {"text": "bad cat", "label": "pos"}]  # mislabelled
    dataset = load_dataset(_write_jsonl(tmp_path / "s.jsonl", rows))
    assert isinstance(dataset, TextDataset) and dataset.classes == ("neg", "pos")
    quality = TextAccuracy(dataset, range(len(dataset)), tokenize, batch_size=5)(_sentiment_model())
    assert quality.n == 26 and quality.value == pytest.approx(24 / 26)
    assert (quality.low, quality.high) == pytest.approx(_wilson(24, 26))
    with pytest.raises(DatasetError) as error:
        TextAccuracy(dataset, range(len(dataset)), tokenize)(nn.Linear(len(VOCAB), 1))
    _assert_error(error, "data", "2 classes", "1 outputs")


def test_text_similarity_is_spearman_of_cosine(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(VOCAB, size=4)) for _ in range(40)]
    pairs = [" ".join(rng.choice(VOCAB, size=4)) for _ in range(40)]
    bags_a, bags_b = tokenize(texts).numpy(), tokenize(pairs).numpy()
    cosine = (bags_a * bags_b).sum(1) / np.linalg.norm(bags_a, axis=1) / np.linalg.norm(bags_b, axis=1)
    rows = [
        {"text": a, "text_pair": b, "score": 5 * float(c)}
        for a, b, c in zip(texts, pairs, cosine, strict=True)
    ]
    dataset = load_dataset(_write_jsonl(tmp_path / "sts.jsonl", rows))
    assert isinstance(dataset, TextDataset)
    evaluator = TextSimilarity(dataset, range(40), tokenize, embed, n_boot=200)
    perfect = evaluator(_identity_embedder())
    assert perfect.metric == "spearman" and perfect.n == 40 and perfect.value == pytest.approx(1.0)

    torch.manual_seed(1)
    scrambled = nn.Linear(len(VOCAB), 3, bias=False)
    with torch.no_grad():
        ea, eb = scrambled(tokenize(texts)).double(), scrambled(tokenize(pairs)).double()
    expected = spearmanr(torch.nn.functional.cosine_similarity(ea, eb).numpy(), 5 * cosine).statistic
    quality = evaluator(scrambled)
    assert quality.value == pytest.approx(expected, abs=1e-6) and quality.value < 0.95
    assert quality.low < quality.value < quality.high  # type: ignore[operator]

    flat = _write_jsonl(tmp_path / "flat.jsonl", [{"text": "a", "text_pair": "b", "score": 1}] * 3)
    with pytest.raises(DatasetError) as error:
        TextSimilarity(load_dataset(flat), range(3), tokenize, embed)  # type: ignore[arg-type]
    _assert_error(error, "data", "two different scores")


def test_text_agreement_is_cosine_to_the_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(VOCAB, size=5)) for _ in range(30)]
    dataset = load_dataset(_write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts]))
    assert isinstance(dataset, TextDataset)
    reference = _identity_embedder()
    evaluator = TextAgreement(copy.deepcopy(reference), dataset, range(30), tokenize, embed, n_boot=200)
    same = evaluator(reference)
    assert same.metric == "embedding_cosine" and same.value == pytest.approx(1.0) and same.n == 30

    perturbed = copy.deepcopy(reference)
    with torch.no_grad():
        perturbed.weight.add_(
            torch.randn(len(VOCAB), len(VOCAB), generator=torch.Generator().manual_seed(3)) * 0.3
        )
        bags = tokenize(texts).double()
        expected = torch.nn.functional.cosine_similarity(perturbed(bags.float()).double(), bags).mean().item()
    quality = evaluator(perturbed)
    assert quality.value == pytest.approx(expected, abs=1e-6) and quality.value < 0.99
    assert quality.low <= quality.value <= quality.high  # type: ignore[operator]


def test_make_evaluator_picks_by_kind(trained: tuple, flat_folder: Path, tmp_path: Path) -> None:
    model, dataset, _, evaluation = trained
    assert isinstance(make_evaluator(dataset, evaluation, preprocessing=DIGITS_PREP), ImageAccuracy)
    flat = load_dataset(flat_folder)
    assert isinstance(
        make_evaluator(flat, [0, 1], reference=model, preprocessing=DIGITS_PREP), ImageAgreement
    )
    labelled = load_dataset(
        _write_jsonl(tmp_path / "a.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    )
    assert isinstance(make_evaluator(labelled, [0, 1], tokenize=tokenize), TextAccuracy)
    with pytest.raises(DatasetError) as error:
        make_evaluator(labelled, [0, 1])
    _assert_error(error, "data", "tokenizer")
    plain = load_dataset(_write_jsonl(tmp_path / "p.jsonl", [{"text": "good"}, {"text": "bad"}]))
    with pytest.raises(DatasetError) as error:
        make_evaluator(plain, [0, 1], tokenize=tokenize)
    _assert_error(error, "data", "embed")
    assert isinstance(
        make_evaluator(plain, [0, 1], reference=_identity_embedder(), tokenize=tokenize, embed=embed),
        TextAgreement,
    )


# ------------------------------------------------------------------- evaluator by import path
USER_MODULE = """
import math
import numpy as np

def score(model):
    return 0.75

def as_dict(model):
    return {"map50": 0.5}

def full(model):
    return {"metric": "map50", "map50": 0.5, "map": 0.3, "n": 100, "low": 0.4, "high": 0.6}

def numpy_scalar(model):
    return np.float32(0.25)

def nan(model):
    return math.nan

def inf(model):
    return {"map50": math.inf}

def text(model):
    return "good"

def nothing(model):
    return None

def boolean(model):
    return True

def two(model):
    return {"a": 1.0, "b": 2.0}

def wrong_metric(model):
    return {"metric": "map", "map50": 0.5}

def boom(model):
    raise RuntimeError("out of data")

class Suite:
    @staticmethod
    def top1(model):
        return 0.5

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "hwsearch_test_user_eval"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    (tmp_path / "hwsearch_test_broken_eval.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in (name, "hwsearch_test_broken_eval"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return name


def test_load_evaluator_results(user_module: str) -> None:
    model = nn.Linear(2, 2)
    plain = load_evaluator(f"{user_module}:score")(model)
    assert (plain.value, plain.metric, plain.n, plain.low) == (0.75, "score", None, None)
    assert load_evaluator(f"{user_module}:as_dict")(model).metric == "map50"
    full = load_evaluator(f"{user_module}:full")(model)
    assert (full.value, full.metric, full.n, full.low, full.high) == (0.5, "map50", 100, 0.4, 0.6)
    assert dict(full.extra) == {"map": 0.3}
    assert load_evaluator(f"{user_module}:numpy_scalar")(model).value == 0.25
    assert load_evaluator(f"{user_module}:Suite.top1")(model).metric == "top1"


@pytest.mark.parametrize(
    "path,fragment",
    [
        ("no_colon_here", "import path"),
        ("a:b:c", "import path"),
        (":score", "dotted Python names"),
        ("{module}:", "dotted Python names"),
        ("hwsearch_no_such_module_xyz:score", "does not import"),
        ("hwsearch_test_broken_eval:score", "broken at import"),
        ("{module}:missing", "no attribute 'missing'"),
        ("{module}:NOT_CALLABLE", "not callable"),
    ],
)
def test_load_evaluator_bad_paths(user_module: str, path: str, fragment: str) -> None:
    path = path.format(module=user_module)
    with pytest.raises(DatasetError) as error:
        load_evaluator(path)
    _assert_error(error, "evaluator", repr(path), fragment)
    assert error.value.value == path


@pytest.mark.parametrize(
    "function,fragment",
    [
        ("nan", "not finite"),
        ("inf", "entry 'map50' is not finite"),
        ("text", "not a number"),
        ("nothing", "not a number"),
        ("boolean", "not a number"),
        ("two", "no 'metric' key"),
        ("wrong_metric", "'metric' must name"),
        ("boom", "RuntimeError: out of data"),
    ],
)
def test_evaluator_results_that_are_not_a_quality(user_module: str, function: str, fragment: str) -> None:
    evaluator = load_evaluator(f"{user_module}:{function}")
    with pytest.raises(DatasetError) as error:
        evaluator(nn.Linear(2, 2))
    _assert_error(error, "evaluator", function, fragment)


# ------------------------------------------------------------------------------ dataset zips
def _zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o120777 & 0xFFFF) << 16
            archive.writestr(info, target)
    return path


def _folder_entries(pngs: dict[str, list[bytes]], prefix: str = "", per_class: int = 3) -> dict[str, bytes]:
    return {
        f"{prefix}{name}/{i}.png": data
        for name, images in pngs.items()
        for i, data in enumerate(images[:per_class])
    }


def test_unpack_dataset_zip_stores_atomically(tmp_path: Path, digit_pngs: dict[str, list[bytes]]) -> None:
    uploads, store = tmp_path / "uploads", tmp_path / "store"
    uploads.mkdir()
    entries = _folder_entries(digit_pngs, prefix="mydigits/")
    entries["__MACOSX/mydigits/._0.png"] = b"resource fork, not an image"
    entries["mydigits/.DS_Store"] = b"junk"
    archive = _zip(uploads / "digits.zip", entries)
    dataset = unpack_dataset_zip(archive, store / "ds1")
    assert isinstance(dataset, ImageDataset) and dataset.kind == "image_labels"
    assert dataset.root == store / "ds1" and len(dataset) == 9 and dataset.classes == CLASSES
    assert sorted(os.listdir(store)) == ["ds1"]  # no temporary folder left beside it
    assert sorted(os.listdir(store / "ds1")) == ["0", "1", "2"]
    assert dataset.open(0).size == (16, 16)
    assert load_dataset(store / "ds1").identities() == dataset.identities()

    text = _zip(
        uploads / "text.zip", {"rows.jsonl": b'{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n'}
    )
    rows = unpack_dataset_zip(text, store / "ds2")
    assert isinstance(rows, TextDataset) and rows.path == store / "ds2" / "rows.jsonl" and rows.path.is_file()

    flat = _zip(uploads / "flat.zip", {f"{i}.png": data for i, data in enumerate(digit_pngs["1"][:4])})
    assert unpack_dataset_zip(flat, store / "ds3").kind == "image_unlabelled"

    with pytest.raises(FileExistsError):
        unpack_dataset_zip(flat, store / "ds3")
    assert sorted(os.listdir(store)) == ["ds1", "ds2", "ds3"]


@pytest.mark.parametrize(
    "case,field,fragments",
    [
        ("slip", "dataset", ("../evil.png", "leaves the dataset folder")),
        ("backslash_slip", "dataset", ("evil.png", "leaves the dataset folder")),
        ("absolute", "dataset", ("/tmp/evil.png", "absolute")),
        ("symlink", "dataset", ("link.png", "symbolic link")),
        ("too_big", "dataset", ("digits.zip", "over the limit of")),
        ("too_many", "dataset", ("digits.zip", "limit of 5")),
        ("corrupt", "data", ("digits.zip:1/broken.png", "does not decode")),
        ("one_class", "data", ("only one class",)),
        ("not_zip", "dataset", ("digits.zip", "not a readable zip")),
        ("empty", "dataset", ("holds no files",)),
    ],
)
def test_bad_dataset_zips_leave_nothing_behind(
    tmp_path: Path, digit_pngs: dict[str, list[bytes]], case: str, field: str, fragments: tuple[str, ...]
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "existing").mkdir()  # a dataset stored before, which must stay untouched
    entries = _folder_entries(digit_pngs)
    symlinks = None
    max_bytes, max_files = 10**6, 100
    if case == "slip":
        entries["../evil.png"] = digit_pngs["0"][0]
    elif case == "backslash_slip":
        entries["0\\..\\..\\evil.png"] = digit_pngs["0"][0]
    elif case == "absolute":
        entries["/tmp/evil.png"] = digit_pngs["0"][0]
    elif case == "symlink":
        symlinks = {"0/link.png": "/etc/passwd"}
    elif case == "too_big":
        max_bytes = sum(len(data) for data in entries.values()) - 1
    elif case == "too_many":
        max_files = 5
    elif case == "corrupt":
        entries["1/broken.png"] = b"\x89PNG\r\n\x1a\n but not really"
    elif case == "one_class":
        entries = {k: v for k, v in entries.items() if k.startswith("0/")}
        entries["1/readme.txt"] = b"no images here"
    elif case == "empty":
        entries = {"__MACOSX/._x": b"junk"}
    archive = tmp_path / "digits.zip"
    if case == "not_zip":
        archive.write_bytes(b"PK but not a zip")
    else:
        _zip(archive, entries, symlinks)
    with pytest.raises(DatasetError) as error:
        unpack_dataset_zip(archive, store / "new", max_bytes=max_bytes, max_files=max_files)
    _assert_error(error, field, *fragments)
    assert str(store) not in str(error.value)  # the temporary folder is not what the user sees
    assert sorted(os.listdir(store)) == ["existing"] and os.listdir(store / "existing") == []
    assert sorted(os.listdir(tmp_path)) == ["digits.zip", "store"]  # nothing escaped either
