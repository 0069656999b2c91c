"""Unpacking an uploaded dataset zip: checked first, stored atomically, or not at all.

Every entry is checked before a byte is written: no absolute paths, drive letters or ``..``
(zip slip), no symlinks or other special files, no encrypted or duplicate entries, at most
``max_files`` files and ``max_bytes`` uncompressed bytes (counted again while writing, so a
zip whose headers lie cannot fill the disk). The zip is extracted into a hidden temporary
sibling of ``dest_dir``, its layout is loaded and checked like any dataset (every image decodes,
two classes with examples for an ImageFolder, valid JSON lines), and only then is it renamed to
``dest_dir`` in one step. On any error the temporary directory is removed: nothing half-written
is ever left next to the stored datasets.

A zip usually holds the folder it was made from: a single top-level folder is unwrapped (so
``photos/a.png ...`` is a flat image folder, and a zip of a single class folder is one too).
A zip whose content is one ``.jsonl`` file is a text dataset, stored as ``dest_dir/<name>.jsonl``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from ._errors import DatasetError
from ._load import IMAGE_SUFFIXES, Dataset, TextDataset, load_dataset

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_FILES", "unpack_dataset_zip"]

#: Default cap on a dataset's uncompressed size (the service passes its setting).
DEFAULT_MAX_BYTES = 2**30
#: Default cap on a dataset's number of files.
DEFAULT_MAX_FILES = 100_000
_FIELD = "dataset"
_CHUNK_BYTES = 2**20
_DRIVE = re.compile(r"^[A-Za-z]:")
# zip's "version made by" system for Unix, the only one whose external attributes hold a mode.
_UNIX = 3


def _parts(info: zipfile.ZipInfo, zip_name: str) -> tuple[str, ...]:
    """The entry's path components, or a DatasetError when it would land outside the folder."""
    name = info.filename
    # Backslashes count as separators: Windows tools write them, and '..\\x' must not slip by.
    parts = tuple(part for part in name.replace("\\", "/").split("/") if part not in ("", "."))
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts or "\x00" in name or not parts:
        raise DatasetError(
            _FIELD,
            f"{zip_name}:{name}",
            "entry path is absolute or leaves the dataset folder ('..'); make the zip from inside "
            "the dataset folder with relative paths",
        )
    return parts


def _check_members(
    archive: zipfile.ZipFile, zip_name: str, max_bytes: int, max_files: int
) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    n_files = sum(1 for info in infos if not info.is_dir())
    if n_files > max_files:
        raise DatasetError(
            _FIELD, zip_name, f"holds {n_files} files, more than the limit of {max_files}; upload fewer files"
        )
    total_bytes = 0
    seen: set[tuple[str, ...]] = set()
    for info in infos:
        parts = _parts(info, zip_name)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if info.create_system == _UNIX and kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = "a symbolic link" if kind == stat.S_IFLNK else "not a regular file"
            raise DatasetError(
                _FIELD,
                f"{zip_name}:{info.filename}",
                f"entry is {what}; zip the files themselves (zip without -y)",
            )
        if info.flag_bits & 0x1:
            raise DatasetError(
                _FIELD, f"{zip_name}:{info.filename}", "entry is encrypted; upload an unencrypted zip"
            )
        if parts in seen and not info.is_dir():
            raise DatasetError(
                _FIELD, f"{zip_name}:{info.filename}", "entry appears twice; make the zip afresh"
            )
        seen.add(parts)
        total_bytes += info.file_size
    if total_bytes > max_bytes:
        raise DatasetError(
            _FIELD,
            zip_name,
            f"unpacks to {total_bytes} bytes, over the limit of {max_bytes} bytes; upload a smaller dataset",
        )
    return infos


def _junk(parts: tuple[str, ...]) -> bool:
    """Entries never part of a dataset: hidden files and folders, macOS's __MACOSX."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _extract(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], into: Path, zip_name: str, max_bytes: int
) -> None:
    written = 0
    for info in infos:
        parts = _parts(info, zip_name)
        if _junk(parts):
            continue
        target = into.joinpath(*parts)
        try:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            # "xb": never write through something already there (a duplicate or a file/dir clash).
            with archive.open(info) as source, open(target, "xb") as out:
                while chunk := source.read(_CHUNK_BYTES):
                    written += len(chunk)
                    if written > max_bytes:
                        raise DatasetError(
                            _FIELD,
                            zip_name,
                            f"unpacks to more than the limit of {max_bytes} bytes; upload a smaller dataset",
                        )
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as exc:
            raise DatasetError(
                _FIELD,
                f"{zip_name}:{info.filename}",
                f"entry is damaged or uses an unsupported compression ({exc})",
            ) from exc
        except OSError as exc:
            raise DatasetError(
                _FIELD,
                f"{zip_name}:{info.filename}",
                f"cannot be written ({exc.strerror or exc}); a file and a folder share this name?",
            ) from exc


def _visible(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not _junk((name,)))


def _content(into: Path, zip_name: str) -> tuple[Path, str | None]:
    """The folder to store and, for text, the name of its .jsonl file inside it."""
    entries = _visible(into)
    if len(entries) == 1 and (into / entries[0]).is_dir():
        into = into / entries[0]  # the folder the zip was made from
        entries = _visible(into)
    if not entries:
        raise DatasetError(_FIELD, zip_name, "holds no files; zip a dataset folder or a .jsonl file")
    jsonl = [name for name in entries if name.lower().endswith(".jsonl") and (into / name).is_file()]
    has_images = any(Path(name).suffix.lower() in IMAGE_SUFFIXES for name in entries)
    has_folders = any((into / name).is_dir() for name in entries)
    if jsonl and not has_images and not has_folders:
        if len(jsonl) > 1:
            raise DatasetError(
                _FIELD, zip_name, f"holds {len(jsonl)} .jsonl files ({', '.join(jsonl[:3])}); upload one"
            )
        return into, jsonl[0]
    return into, None


def _named_in_zip(error: DatasetError, into: Path, zip_name: str) -> DatasetError:
    """``error`` with the temporary folder's path replaced by the zip's name, as the user knows it."""
    prefix = str(into) + os.sep

    def rename(text: str) -> str:
        return text.replace(prefix, f"{zip_name}:").replace(str(into), zip_name)

    value = rename(error.value) if isinstance(error.value, str) else error.value
    return DatasetError(error.field, value, rename(error.hint))


def unpack_dataset_zip(
    zip_path: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> Dataset:
    """Check, unpack and store the dataset in ``zip_path`` as ``dest_dir``; return it, loaded there.

    ``dest_dir`` must not exist; its parent is created if needed. Raises DatasetError (field
    ``dataset`` for the zip itself, ``data`` for its content, as ``load_dataset``) naming the
    entry or file and the fix; then nothing of this call is left in the parent directory.
    """
    source, dest = Path(zip_path), Path(dest_dir)
    zip_name = source.name
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest} already exists; a dataset is stored once under a new name")
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetError(
            _FIELD, zip_name, f"not a readable zip file ({exc}); upload a .zip of the dataset"
        ) from exc
    with archive:
        infos = _check_members(archive, zip_name, max_bytes, max_files)
        dest.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        try:
            _extract(archive, infos, scratch, zip_name, max_bytes)
            folder, jsonl = _content(scratch, zip_name)
            try:
                dataset = load_dataset(folder / jsonl if jsonl else folder)
            except DatasetError as exc:
                raise _named_in_zip(exc, scratch, zip_name) from exc
            if dest.exists() or dest.is_symlink():  # taken while we unpacked
                raise FileExistsError(f"{dest} already exists; a dataset is stored once under a new name")
            # One rename on one file system: the dataset appears whole or not at all.
            os.rename(folder, dest)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        shutil.rmtree(scratch, ignore_errors=True)  # left over when a wrapper folder was unwrapped
    if isinstance(dataset, TextDataset):
        return dataset.relocated(dest / dataset.path.name)
    return dataset.relocated(dest)
