"""The one seeded split of a dataset into a calibration part and an evaluation part.

The two parts never overlap. A labelled dataset is split per class (stratified), so both parts
keep the class proportions within one example per class. The evaluation part is drawn in a
seeded order and cut to ``eval_examples``, so a bounded evaluation is still stratified. The
split comes with a record (seed, sizes, a hash of the exact examples used) that a job stores;
``check_split`` remakes the split from that record and refuses a dataset that changed since.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, NamedTuple

import numpy as np

from ._errors import DatasetError
from ._load import Dataset, ImageDataset

__all__ = ["DEFAULT_CALIBRATION_FRACTION", "SPLIT_METHOD", "Split", "check_split", "split"]

#: Calibration needs a few hundred examples at most (BatchNorm statistics, quantisation ranges);
#: the rest of a dataset is better spent on a tighter evaluation interval.
DEFAULT_CALIBRATION_FRACTION = 0.25
#: Named in every record, so a later change of the algorithm is detected by ``check_split``.
SPLIT_METHOD = "stratified-fractional-rank-v1"


class Split(NamedTuple):
    """Sorted example indices of the calibration and evaluation parts, and the split's record."""

    calibration: list[int]
    evaluation: list[int]
    record: dict[str, Any]


def _source(dataset: Dataset) -> str:
    return str(dataset.root if isinstance(dataset, ImageDataset) else dataset.path)


def _examples_hash(dataset: Dataset, calibration: list[int], evaluation: list[int]) -> str:
    identities = dataset.identities()
    digest = hashlib.sha256()
    for part, indices in (("calibration", calibration), ("evaluation", evaluation)):
        digest.update(f"{part}\n".encode())
        for index in indices:
            digest.update(f"{identities[index]}\n".encode())
    return digest.hexdigest()


def _check_arguments(calibration_fraction: Any, seed: Any, eval_examples: Any) -> None:
    if (
        isinstance(calibration_fraction, bool)
        or not isinstance(calibration_fraction, int | float)
        or not math.isfinite(calibration_fraction)
        or not 0.0 < calibration_fraction < 1.0
    ):
        raise DatasetError(
            "calibration_fraction", calibration_fraction, "a number strictly between 0 and 1, e.g. 0.25"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError("seed", seed, "a whole number >= 0")
    if eval_examples is not None and (
        isinstance(eval_examples, bool) or not isinstance(eval_examples, int) or eval_examples < 1
    ):
        raise DatasetError("eval_examples", eval_examples, "a whole number >= 1, or null for all the rest")


def split(
    dataset: Dataset,
    calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
    seed: int = 0,
    eval_examples: int | None = None,
) -> Split:
    """Split ``dataset`` into calibration and evaluation indices, seeded and recorded.

    ``round(calibration_fraction × n)`` examples (at least one, and at least one left over) go
    to calibration; the rest, cut to the first ``eval_examples`` of a seeded order when given,
    to evaluation. The same dataset, fraction and seed always give the same split.
    """
    _check_arguments(calibration_fraction, seed, eval_examples)
    n = len(dataset)
    if n < 2:
        raise DatasetError("data", _source(dataset), f"has {n} example(s); a split needs at least 2")
    n_calibration = min(n - 1, max(1, round(calibration_fraction * n)))
    rng = np.random.default_rng(seed)
    labels = dataset.labels
    groups: dict[int, list[int]] = {}
    for index in range(n):
        groups.setdefault(0 if labels is None else labels[index], []).append(index)
    # Each example gets a key in [0, 1): its position in a seeded shuffle of its class, jittered
    # and divided by the class size. Sorted by key, every prefix of the whole set holds each class
    # in proportion (within one example), so both the calibration part and any cut of the
    # evaluation part are stratified.
    keys = np.empty(n, dtype=np.float64)
    for label in sorted(groups):
        members = np.asarray(groups[label])
        shuffled = members[rng.permutation(members.size)]
        keys[shuffled] = (np.arange(members.size) + rng.random(members.size)) / members.size
    order = [int(i) for i in np.argsort(keys, kind="stable")]
    calibration = sorted(order[:n_calibration])
    rest = order[n_calibration:]
    evaluation = sorted(rest if eval_examples is None else rest[:eval_examples])
    record: dict[str, Any] = {
        "method": SPLIT_METHOD,
        "kind": dataset.kind,
        "seed": seed,
        "calibration_fraction": float(calibration_fraction),
        "eval_examples": eval_examples,
        "stratified": labels is not None,
        "n_total": n,
        "n_calibration": len(calibration),
        "n_evaluation": len(evaluation),
        "examples_sha256": _examples_hash(dataset, calibration, evaluation),
    }
    return Split(calibration, evaluation, record)


def check_split(dataset: Dataset, record: dict[str, Any]) -> Split:
    """The split ``record`` describes, remade on ``dataset``; DatasetError if the data changed.

    A resumed or re-run job calls this instead of ``split`` so that it scores on exactly the
    examples it recorded, or says why it cannot.
    """
    try:
        method = record["method"]
        made = split(dataset, record["calibration_fraction"], record["seed"], record["eval_examples"])
    except (KeyError, TypeError) as exc:
        raise DatasetError("split", record, "a record made by split(); remake the split") from exc
    if method != SPLIT_METHOD:
        raise DatasetError(
            "split.method", method, f"this version splits with {SPLIT_METHOD!r}; remake the split"
        )
    if made.record["examples_sha256"] != record.get("examples_sha256"):
        raise DatasetError(
            "data",
            _source(dataset),
            f"the examples differ from those recorded ({record.get('n_total')} examples then, {len(dataset)} "
            "now, or files changed); restore the recorded data or start a new job with a new split",
        )
    return made
