"""``hwsearch dataset add | list | rm``: datasets registered with the service, over its REST API
(``HWSEARCH_URL`` and ``HWSEARCH_TOKEN``, as ``submit`` and ``status``).

``add`` uploads a zip: a folder is zipped first into a temporary file (hidden files left out,
paths relative to the folder under its own name, in sorted order, with fixed timestamps, so the
same folder always makes the same zip), a ``.jsonl`` file is zipped alone, and a ``.zip`` is sent
as it is. The zip is streamed from disk, never read into memory. The service checks it before it
answers (layout, every image decodes, at least two classes) and stores it whole or not at all.

Nothing here imports torch or the workers: the group is registered on the app by ``service.cli``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import DATASET_ID, JsonFlag, fail, plural, print_json
from .remote import Api

__all__ = ["app", "zip_folder"]

#: Timestamps of every entry of a zip made here (the earliest a zip can hold): the same folder
#: makes the same bytes, so the service's zip_sha256 names its content.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20
#: How long the service may take to check an upload before it answers (it decodes every image).
_CHECK_TIMEOUT_S = 900.0

app = typer.Typer(
    help="Datasets registered with the service (uploaded as a zip; jobs use them with --data ID).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def zip_folder(folder: Path, out: Path) -> int:
    """Write the files under ``folder`` into the zip ``out`` as ``<folder name>/<relative path>``
    (hidden files and folders left out, sorted, fixed timestamps and modes); returns the number
    of files. The folder's own name wraps the content, as a zip made of a folder does, so a
    folder holding one class folder stays an ImageFolder with one class (and is refused as one)."""
    root = folder.resolve()
    top = root.name or "dataset"
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        for name in filenames:
            path = Path(dirpath) / name
            if not _hidden(name) and path.is_file():
                files.append((path.relative_to(root).as_posix(), path))
    files.sort()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative, path in files:
            info = zipfile.ZipInfo(f"{top}/{relative}", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.file_size = path.stat().st_size  # lets zipfile choose ZIP64 for a file over 2 GiB
            with path.open("rb") as source, archive.open(info, "w") as target:
                shutil.copyfileobj(source, target, _CHUNK)
    return len(files)


def _zip_file(path: Path, out: Path) -> None:
    """A single file (a ``.jsonl``) zipped alone, under its own name."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(path.name, date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        info.file_size = path.stat().st_size
        with path.open("rb") as source, archive.open(info, "w") as target:
            shutil.copyfileobj(source, target, _CHUNK)


def _default_name(path: Path) -> str:
    from search_spaces import NAME_HINT, is_name

    name = path.resolve().name if path.is_dir() else path.stem
    if not is_name(name):
        fail(
            f"--name: the name taken from {path.name!r} would be {name!r}, which is not a valid dataset "
            f"name ({NAME_HINT}); give one with --name"
        )
    return name


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover - the loop returns


def _classes_text(dataset: dict[str, Any]) -> str:
    counts: dict[str, int] = dataset.get("class_counts") or {}
    n_classes = dataset.get("n_classes") or len(counts)
    if not n_classes:
        return ""
    text = f", {n_classes} {'class' if n_classes == 1 else 'classes'}"
    values = set(counts.values())
    if len(values) == 1:
        text += f" ({values.pop():,} each)"
    elif values:
        text += f" ({min(values):,} to {max(values):,} each)"
    return text


def _line(dataset: dict[str, Any]) -> str:
    """``ID  NAME  KIND  N examples, K classes (n each)  SIZE``: the id first, for scripts."""
    examples = dataset.get("n_examples")
    size = dataset.get("size_bytes")
    return (
        f"{dataset.get('id')}  {dataset.get('name')}  {dataset.get('kind')}  "
        + (plural(examples, "example") if isinstance(examples, int) else "? examples")
        + _classes_text(dataset)
        + (f"  {_size(size)}" if isinstance(size, int) else "")
    )


def _check_id(dataset_id: str) -> str:
    if not DATASET_ID.fullmatch(dataset_id):
        fail(
            f"dataset id {dataset_id!r} is not an id: 1 to 64 letters, digits, '-' and '_'; "
            "`hwsearch dataset list` shows the ids"
        )
    return dataset_id


def _upload(api: Api, zip_path: Path, name: str) -> Any:
    """POST the zip to /api/v1/datasets, streamed from disk (httpx reads the open file in
    chunks and sends its length), and return the service's answer."""
    import httpx

    size = zip_path.stat().st_size
    with zip_path.open("rb") as body:
        try:
            response = api.client.request(
                "POST",
                "/api/v1/datasets",
                params={"name": name},
                content=body,
                headers={"Content-Type": "application/zip"},
                timeout=httpx.Timeout(30.0, read=_CHECK_TIMEOUT_S),
            )
        except (httpx.WriteError, httpx.RemoteProtocolError) as exc:
            # A service that refuses a body it will not read (over its size limit) may close the
            # connection before its answer can be read.
            fail(
                f"the service closed the connection while the zip ({size:,} bytes) was uploading ({exc}); "
                "it may be over the service's dataset size limit (HWSEARCH_MAX_DATASET_BYTES): upload "
                "a smaller dataset or ask the operator to raise the limit"
            )
        except httpx.HTTPError as exc:
            api.unreachable(exc)
    return api.answer(response)


@app.command("add")
def add(
    path: Annotated[
        Path, typer.Argument(help="An ImageFolder or image folder, a .jsonl file, or a .zip of one.")
    ],
    name: Annotated[
        str | None, typer.Option(help="The dataset's name (default: the folder's or file's name).")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Upload a dataset to the service; prints its id (use it as --data ID) and its counts."""
    if not path.exists():
        fail(f"{str(path)!r}: no such file or folder; give a dataset folder, a .jsonl file or a .zip")
    suffix = path.suffix.lower()
    if not path.is_dir() and suffix not in (".zip", ".jsonl"):
        fail(
            f"{str(path)!r} is neither a folder, a .zip nor a .jsonl file; give an ImageFolder (one "
            "folder of images per class), a folder of images, a .jsonl file of rows with 'text', or a "
            ".zip of one of them"
        )
    name = name if name is not None else _default_name(path)
    api = Api()
    with tempfile.TemporaryDirectory(prefix="hwsearch-dataset-") as scratch:
        if path.is_dir():
            upload = Path(scratch) / f"{name}.zip"
            if zip_folder(path, upload) == 0:
                fail(f"{str(path)!r} holds no files (hidden ones are left out); give a dataset folder")
        elif suffix == ".jsonl":
            upload = Path(scratch) / f"{name}.zip"
            _zip_file(path, upload)
        else:
            upload = path
        dataset = _upload(api, upload, name)
    if json_output:
        print_json(dataset)
        return
    typer.echo(_line(dataset))


@app.command("list")
def list_(json_output: JsonFlag = False) -> None:
    """The datasets registered with the service: id, name, kind, examples, classes, size, owner."""
    page = Api().call("GET", "/datasets")
    if json_output:
        print_json(page)
        return
    items = page.get("items") or []
    if not items:
        typer.echo("no datasets yet (add one with `hwsearch dataset add DIR`)")
        return
    for dataset in items:
        owner = dataset.get("owner")
        created = str(dataset.get("created_at") or "")[:16].replace("T", " ")
        typer.echo(
            _line(dataset) + (f"  owner {owner}" if owner else "") + (f"  {created}" if created else "")
        )
    total = page.get("total")
    if isinstance(total, int) and total > len(items):
        typer.echo(f"({len(items)} of {total} shown)")


@app.command("rm")
def rm(dataset_id: Annotated[str, typer.Argument(help="A dataset id (`hwsearch dataset list`).")]) -> None:
    """Remove a dataset (refused while a queued or running job uses it)."""
    Api().call("DELETE", f"/datasets/{_check_id(dataset_id)}")
    typer.echo(f"{dataset_id}: removed")
