"""Registered datasets: a checked upload stored under the data directory, whole or not at all.

A registered dataset lives in ``<data dir>/datasets/<id>/``: its data under ``content`` (a
folder of images, or a folder holding one ``.jsonl`` file) and a manifest ``dataset.json``
(id, name, kind, counts, classes, the zip's sha256, where the data is). The service writes it
when an upload passes every check; its workers read it by id (they must see the same data
directory). Torch-free: the API process checks and stores uploads itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._errors import DatasetError
from ._load import TextDataset
from ._zip import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, unpack_dataset_zip

__all__ = ["DATASETS_DIR", "MANIFEST", "dataset_path", "register_dataset_zip", "remove_dataset"]

DATASETS_DIR = "datasets"
MANIFEST = "dataset.json"
_CONTENT = "content"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register_dataset_zip(
    zip_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    dataset_id: str,
    *,
    name: str,
    extra: Mapping[str, Any] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> dict[str, Any]:
    """Check the zip, store it as dataset ``dataset_id`` under ``data_dir`` and return its
    manifest. Raises ``DatasetError`` naming what is wrong; then nothing is left behind (the
    dataset is unpacked and described in a hidden staging folder, renamed in one step)."""
    root = Path(data_dir) / DATASETS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / dataset_id
    if final.exists():
        raise FileExistsError(f"dataset {dataset_id} already exists")
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset_id}.", suffix=".partial", dir=root))
    try:
        dataset = unpack_dataset_zip(zip_path, staging / _CONTENT, max_bytes=max_bytes, max_files=max_files)
        if isinstance(dataset, TextDataset):
            content = f"{_CONTENT}/{dataset.path.name}"
            files = 1
        else:
            content = _CONTENT
            files = len(dataset.files)
        size_bytes = sum(p.stat().st_size for p in (staging / _CONTENT).rglob("*") if p.is_file())
        classes = list(dataset.classes)
        counts: dict[str, int] = {}
        if dataset.labels is not None:
            for label in dataset.labels:
                counts[classes[label]] = counts.get(classes[label], 0) + 1
        manifest: dict[str, Any] = {
            "id": dataset_id,
            "name": name,
            "kind": dataset.kind,
            "n_examples": len(dataset),
            "n_classes": dataset.n_classes,
            "classes": classes,
            "class_counts": counts,
            "files": files,
            "size_bytes": size_bytes,
            "zip_sha256": _sha256(Path(zip_path)),
            "content": content,
            **dict(extra or {}),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.rename(staging, final)  # one step: the dataset appears whole
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def dataset_path(dataset_id: str, data_dir: str | os.PathLike[str]) -> Path:
    """The data of registered dataset ``dataset_id`` (its folder or ``.jsonl`` file)."""
    folder = Path(data_dir) / DATASETS_DIR / dataset_id
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        content = str(manifest["content"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DatasetError(
            "data.dataset",
            dataset_id,
            f"no registered dataset with this id under {folder.parent}; see `hwsearch dataset list` "
            "(the workers must see the service's data directory)",
        ) from None
    return folder / content


def remove_dataset(dataset_id: str, data_dir: str | os.PathLike[str]) -> bool:
    """Remove a registered dataset's files; False when there were none. Renamed away first, so
    a reader never sees half a dataset."""
    root = Path(data_dir) / DATASETS_DIR
    folder = root / dataset_id
    if not folder.exists():
        return False
    trash = Path(tempfile.mkdtemp(prefix=f".{dataset_id}.", suffix=".removed", dir=root))
    os.rename(folder, trash / dataset_id)
    shutil.rmtree(trash, ignore_errors=True)
    return True
