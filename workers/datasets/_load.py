"""Reading a user's dataset from a path, its kind told by its layout.

- a directory with one sub-folder per class (ImageFolder) → labelled images; class order is the
  sorted folder names, or the lines of a ``classes.txt`` at the root when there is one;
- a directory of images without sub-folders → unlabelled images;
- a ``.jsonl`` file → text: rows with ``text`` and ``label`` (classification), ``text`` /
  ``text_pair`` / ``score`` (similarity), or ``text`` alone (unlabelled).

Loading decodes every image once (a dataset with a corrupt image is refused up front, not in the
middle of a search) and keeps a digest of each example, so a split can record exactly which
examples it used. Hidden entries (``.DS_Store``) and macOS ``__MACOSX`` folders are skipped, and
so are files whose extension is not an image's (a README beside the class folders).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._errors import DatasetError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "CLASSES_FILE",
    "IMAGE_SUFFIXES",
    "Dataset",
    "DatasetKind",
    "ImageDataset",
    "TextDataset",
    "load_dataset",
]

DatasetKind = Literal["image_labels", "image_unlabelled", "text_labels", "text_pairs", "text"]

#: Extensions read as images (lower case); other files are skipped.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
#: The optional file at an ImageFolder's root that fixes the class order, one class per line.
CLASSES_FILE = "classes.txt"
# Digest characters kept per example: 64 bits tell files apart and keep records short.
_DIGEST_CHARS = 16
_FIELD = "data"
_LAYOUT_HINT = (
    "give a directory with one sub-folder of images per class (ImageFolder), a directory of "
    "images without sub-folders, or a .jsonl file of rows with 'text'"
)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_DIGEST_CHARS]


def _skipped(name: str) -> bool:
    """Entries that are never data: hidden files and the folders macOS adds to zips."""
    return name.startswith(".") or name == "__MACOSX"


def decode_image(data: bytes, path: Path | str) -> Image.Image:
    """``data`` decoded by Pillow (fully, not just its header); a failure names the file."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            # copy(): the decoded pixels outlive the file object behind ``opened``.
            return opened.copy()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        raise DatasetError(
            _FIELD,
            str(path),
            f"this file does not decode as an image ({type(exc).__name__}: {exc}); remove or replace it",
        ) from exc


@dataclass(frozen=True)
class ImageDataset:
    """Images under ``root``: ``files`` are POSIX paths relative to it, in a fixed order.

    ``labels`` (indices into ``classes``) is None for a flat folder of unlabelled images.
    ``digests`` holds a short SHA-256 of each file's bytes, so the identity of an example is
    its name and its content.
    """

    root: Path
    files: tuple[str, ...]
    digests: tuple[str, ...]
    labels: tuple[int, ...] | None = None
    classes: tuple[str, ...] = ()

    @property
    def kind(self) -> DatasetKind:
        return "image_unlabelled" if self.labels is None else "image_labels"

    @property
    def n_classes(self) -> int:
        """The number of classes (0 when unlabelled), counting listed classes without examples."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def file_path(self, index: int) -> Path:
        """The file of example ``index``."""
        return self.root.joinpath(*self.files[index].split("/"))

    def identities(self) -> tuple[str, ...]:
        """One string per example, ``relative/path:digest``, that changes when its file does."""
        return tuple(f"{name}:{digest}" for name, digest in zip(self.files, self.digests, strict=True))

    def open(self, index: int) -> Image.Image:
        """Example ``index`` decoded by Pillow; a file that no longer decodes names itself."""
        path = self.file_path(index)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(_FIELD, str(path), f"cannot read this file ({exc}); restore it") from exc
        return decode_image(data, path)

    def relocated(self, root: Path) -> ImageDataset:
        """The same dataset read from ``root`` (after its folder was moved)."""
        return dataclasses.replace(self, root=Path(root))


@dataclass(frozen=True)
class TextDataset:
    """Rows of a JSON-lines file, all of one kind.

    ``lines`` holds each row's 1-based line number in ``path`` (blank lines are skipped).
    ``labels`` are indices into ``classes``: integer labels are used as they are (classes
    ``"0" .. str(max)``), string labels are numbered in sorted order, as ImageFolder numbers its
    folders. ``text_pairs`` and ``scores`` are set for similarity rows only.
    """

    path: Path
    kind: DatasetKind
    texts: tuple[str, ...]
    lines: tuple[int, ...]
    digests: tuple[str, ...]
    labels: tuple[int, ...] | None = None
    classes: tuple[str, ...] = ()
    text_pairs: tuple[str, ...] | None = None
    scores: tuple[float, ...] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.texts)

    def identities(self) -> tuple[str, ...]:
        """One string per example, ``line:digest`` (the digest is of the row's bytes)."""
        return tuple(f"{line}:{digest}" for line, digest in zip(self.lines, self.digests, strict=True))

    def relocated(self, path: Path) -> TextDataset:
        """The same dataset read from ``path`` (after its file was moved)."""
        return dataclasses.replace(self, path=Path(path))


Dataset = ImageDataset | TextDataset


def load_dataset(path: str | os.PathLike[str]) -> Dataset:
    """The dataset at ``path``, its kind told by its layout (see the module docstring).

    Raises DatasetError (field ``data``) for a path that does not exist, a layout that is none of
    the three, an empty dataset, an ImageFolder with fewer than two classes with examples, an
    image that does not decode (naming the file), a JSON line that does not parse or has the
    wrong fields (naming the line) and a file whose rows are of different kinds.
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(_FIELD, str(path), f"no such file or directory; {_LAYOUT_HINT}")
    if root.is_file():
        if root.suffix.lower() != ".jsonl":
            raise DatasetError(_FIELD, str(path), f"a file must be JSON lines named *.jsonl; {_LAYOUT_HINT}")
        return _load_jsonl(root)
    if not root.is_dir():
        raise DatasetError(_FIELD, str(path), f"neither a regular file nor a directory; {_LAYOUT_HINT}")
    entries = sorted(entry for entry in os.listdir(root) if not _skipped(entry))
    folders = [name for name in entries if (root / name).is_dir()]
    if folders:
        return _load_image_folder(root, entries, folders)
    return _load_flat_images(root, entries)


# ---------------------------------------------------------------------------------- images
def _image_files(folder: Path, root: Path) -> list[str]:
    """Image files under ``folder`` (recursively, in sorted order), relative to ``root``."""
    found: list[str] = []
    for current, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _skipped(d))  # walked in this order, hidden ones pruned
        here = Path(current)
        found.extend(
            (here / name).relative_to(root).as_posix()
            for name in sorted(names)
            if not _skipped(name) and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return found


def _read_images(root: Path, files: list[str]) -> tuple[str, ...]:
    """Decode every image once (so a corrupt one is refused now) and return their digests."""
    digests = []
    for name in files:
        path = root / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(
                _FIELD, str(path), f"cannot read this file ({exc}); fix its permissions"
            ) from exc
        decode_image(data, path)
        digests.append(_digest(data))
    return tuple(digests)


def _class_order(root: Path, folders: list[str]) -> list[str]:
    """Sorted folder names, or the non-blank lines of classes.txt (which must name every folder)."""
    classes_path = root / CLASSES_FILE
    if not classes_path.is_file():
        return sorted(folders)
    try:
        text = classes_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(_FIELD, str(classes_path), f"cannot read it as UTF-8 text ({exc})") from exc
    classes = [line.strip() for line in text.splitlines() if line.strip()]
    seen: set[str] = set()
    for number, name in enumerate(classes, start=1):
        if name in (".", "..") or "/" in name or "\\" in name:
            raise DatasetError(
                f"{_FIELD}/{CLASSES_FILE}",
                name,
                f"non-blank line {number} is not a folder name; list the class folders at the root by name",
            )
        if name in seen:
            raise DatasetError(
                f"{_FIELD}/{CLASSES_FILE}",
                name,
                f"class listed twice (again on non-blank line {number}); list each class folder once",
            )
        seen.add(name)
    unlisted = sorted(set(folders) - seen)
    if unlisted:
        raise DatasetError(
            f"{_FIELD}/{CLASSES_FILE}",
            str(classes_path),
            f"does not list the class folder(s) {', '.join(map(repr, unlisted))}; add a line for each "
            "class folder (the line order is the class index) or remove classes.txt to use sorted names",
        )
    return classes


def _load_image_folder(root: Path, entries: list[str], folders: list[str]) -> ImageDataset:
    loose = [name for name in entries if name not in folders and Path(name).suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DatasetError(
            _FIELD,
            str(root),
            f"has class folders and also images at its top level ({', '.join(loose[:3])}"
            f"{', ...' if len(loose) > 3 else ''}); move each image into its class folder, or use a "
            "folder without sub-folders for unlabelled images",
        )
    classes = _class_order(root, folders)
    files: list[str] = []
    labels: list[int] = []
    counts: dict[str, int] = {}
    for index, name in enumerate(classes):
        folder = root / name
        found = _image_files(folder, root) if folder.is_dir() else []
        counts[name] = len(found)
        files.extend(found)
        labels.extend([index] * len(found))
    with_examples = [name for name, count in counts.items() if count > 0]
    if not files:
        raise DatasetError(
            _FIELD,
            str(root),
            f"the class folders hold no images (read: {', '.join(sorted(IMAGE_SUFFIXES))}); "
            "put at least one image in each of at least two class folders",
        )
    if len(with_examples) < 2:
        raise DatasetError(
            _FIELD,
            str(root),
            f"only one class has images ({with_examples[0]!r}, {counts[with_examples[0]]} images); "
            "accuracy needs at least two classes with examples: add a folder of images per class",
        )
    return ImageDataset(
        root=root,
        files=tuple(files),
        digests=_read_images(root, files),
        labels=tuple(labels),
        classes=tuple(classes),
    )


def _load_flat_images(root: Path, entries: list[str]) -> ImageDataset:
    files = [
        name for name in entries if Path(name).suffix.lower() in IMAGE_SUFFIXES and (root / name).is_file()
    ]
    if not files:
        raise DatasetError(
            _FIELD,
            str(root),
            f"holds no images (read: {', '.join(sorted(IMAGE_SUFFIXES))}) and no class folders; "
            f"{_LAYOUT_HINT}",
        )
    return ImageDataset(root=root, files=tuple(files), digests=_read_images(root, files))


# ------------------------------------------------------------------------------------ text
_ROW_KINDS: dict[DatasetKind, str] = {
    "text_labels": "'text' + 'label' (classification)",
    "text_pairs": "'text' + 'text_pair' + 'score' (similarity)",
    "text": "'text' alone (unlabelled)",
}


def _row_error(path: Path, line: int, hint: str) -> DatasetError:
    return DatasetError(_FIELD, f"{path}:{line}", f"line {line}: {hint}")


def _string(row: dict[str, Any], key: str, path: Path, line: int) -> str:
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise _row_error(path, line, f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _row_kind(row: dict[str, Any], path: Path, line: int) -> DatasetKind:
    if "text" not in row:
        raise _row_error(path, line, f"a row needs a 'text' field; got fields {sorted(row)}")
    has_pair, has_score, has_label = "text_pair" in row, "score" in row, "label" in row
    if has_label and (has_pair or has_score):
        raise _row_error(path, line, "a row has either 'label' or 'text_pair' + 'score', not both")
    if has_pair != has_score:
        raise _row_error(path, line, "'text_pair' and 'score' go together: give both or neither")
    if has_pair:
        return "text_pairs"
    return "text_labels" if has_label else "text"


def _load_jsonl(path: Path) -> TextDataset:
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise DatasetError(_FIELD, str(path), f"cannot read this file ({exc})") from exc
    kind: DatasetKind | None = None
    first_line = 0
    texts: list[str] = []
    pairs: list[str] = []
    scores: list[float] = []
    raw_labels: list[int | str] = []
    lines: list[int] = []
    digests: list[str] = []
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark, as some editors write
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _row_error(path, number, f"not UTF-8 text ({exc}); save the file as UTF-8") from exc
        except json.JSONDecodeError as exc:
            raise _row_error(
                path, number, f"not valid JSON ({exc.msg} at column {exc.colno}); one object per line"
            ) from exc
        if not isinstance(row, dict):
            raise _row_error(path, number, f"each line must be a JSON object, got {type(row).__name__}")
        row_kind = _row_kind(row, path, number)
        if kind is None:
            kind, first_line = row_kind, number
        elif row_kind != kind:
            raise _row_error(
                path,
                number,
                f"rows of different kinds: line {first_line} is {_ROW_KINDS[kind]}, this one is "
                f"{_ROW_KINDS[row_kind]}; use one kind per file",
            )
        texts.append(_string(row, "text", path, number))
        if row_kind == "text_pairs":
            pairs.append(_string(row, "text_pair", path, number))
            score = row["score"]
            if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
                raise _row_error(path, number, f"'score' must be a finite number, got {score!r}")
            scores.append(float(score))
        elif row_kind == "text_labels":
            label = row["label"]
            if isinstance(label, bool) or not (
                (isinstance(label, int) and label >= 0) or (isinstance(label, str) and label.strip())
            ):
                raise _row_error(
                    path,
                    number,
                    f"'label' must be a class index (an integer >= 0) or a class name, got {label!r}",
                )
            if raw_labels and isinstance(label, str) != isinstance(raw_labels[0], str):
                raise _row_error(
                    path, number, "labels mix class indices and class names; use one or the other in a file"
                )
            raw_labels.append(label)
        lines.append(number)
        digests.append(_digest(raw))
    if kind is None:
        raise DatasetError(
            _FIELD, str(path), "the file has no rows; write one JSON object per line with 'text'"
        )
    dataset = TextDataset(
        path=path, kind=kind, texts=tuple(texts), lines=tuple(lines), digests=tuple(digests)
    )
    if kind == "text_pairs":
        return dataclasses.replace(dataset, text_pairs=tuple(pairs), scores=tuple(scores))
    if kind == "text_labels":
        labels, classes = _number_labels(raw_labels)
        if len(set(labels)) < 2:
            raise DatasetError(
                _FIELD,
                str(path),
                f"every row has the label {raw_labels[0]!r}; accuracy needs at least two classes with rows",
            )
        return dataclasses.replace(dataset, labels=labels, classes=classes)
    return dataset


def _number_labels(raw: list[int | str]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    if isinstance(raw[0], str):
        classes = tuple(sorted({str(label) for label in raw}))
        index = {name: position for position, name in enumerate(classes)}
        return tuple(index[str(label)] for label in raw), classes
    indices = tuple(int(label) for label in raw)
    return indices, tuple(str(i) for i in range(max(indices) + 1))
