"""Registered datasets: upload a zip (checked before the answer, stored whole or not at all),
list, read and delete them. A dataset belongs to its uploader, as a job does: everyone may read
it and name it in a job (``"data": {"dataset": ID}``); its owner or an admin deletes it.

An upload is streamed to a private file (0600 in the 0700 uploads folder), at most
``HWSEARCH_MAX_DATASET_BYTES`` (413 beyond), then checked and stored in a worker thread by
``workers.datasets.register_dataset_zip`` (torch-free): zip slip, links, size and file caps,
the layout, every image decoding, at least two classes with examples. A refused upload is a 422
at ``("body",)`` naming what is wrong, and leaves nothing: no file under the data directory's
``datasets/`` folder, no row, no uploaded zip.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from search_spaces import check_name
from workers.datasets import DatasetError, register_dataset_zip, remove_dataset

from ..db import utcnow
from ..settings import DATASET_UNPACK_FACTOR, Settings
from ..store import Store
from .deps import (
    Read,
    SettingsDep,
    StoreDep,
    Writer,
    check_declared_size,
    check_may_change,
    receive_to_file,
    uploads_folder,
)
from .errors import Invalid, reported_at
from .schemas import API, MAX_INT

router = APIRouter(prefix=API)
SETTING = "HWSEARCH_MAX_DATASET_BYTES"


@router.post("/datasets", status_code=201)
async def upload_dataset(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    principal: Writer,
    name: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Register a dataset: the body is a zip of an ImageFolder (one sub-folder per class), a
    flat folder of images, or one ``.jsonl`` file, at most HWSEARCH_MAX_DATASET_BYTES. It is
    checked before the answer (422 naming what is wrong) and stored under the data directory;
    201 with its id, counts and classes. ``name`` (letters, digits, '.', '_', '-') labels it;
    by default the id does."""
    limit = settings.max_dataset_bytes
    check_declared_size(request, limit, SETTING)
    dataset_id = uuid.uuid4().hex[:16]
    if name is not None:
        with reported_at("query", "name"):
            check_name("name", name)
    path = uploads_folder(settings) / f"{dataset_id}.zip"
    await receive_to_file(request, path, limit, SETTING)
    # Errors name the zip as the client knows it, not by the server's temporary file.
    label = f"{name or 'upload'}.zip"
    return await run_in_threadpool(
        _register, store, settings, path, dataset_id, name or dataset_id, principal.owner, label
    )


def _register(
    store: Store, settings: Settings, path: Path, dataset_id: str, name: str, owner: str, label: str
) -> dict[str, Any]:
    """Check and store the zip at ``path`` as dataset ``dataset_id``, then its row; whatever
    happens the zip is deleted, and a dataset whose row could not be written is removed. An
    error calls the zip ``label``."""
    try:
        try:
            manifest = register_dataset_zip(
                path,
                settings.data_dir,
                dataset_id,
                name=name,
                extra={"owner": owner, "created_at": utcnow().isoformat()},
                max_bytes=DATASET_UNPACK_FACTOR * settings.max_dataset_bytes,
            )
        except DatasetError as exc:
            value = exc.value.replace(path.name, label) if isinstance(exc.value, str) else exc.value
            raise Invalid(("body",), str(exc).replace(path.name, label), value) from None
        try:
            return store.create_dataset(manifest, owner=owner)
        except BaseException:
            remove_dataset(dataset_id, settings.data_dir)  # no files without their row
            raise
    finally:
        path.unlink(missing_ok=True)


@router.get("/datasets", dependencies=[Read])
def list_datasets(
    store: StoreDep,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> dict[str, Any]:
    """Registered datasets, newest first (``owner``'s only, when given)."""
    items, total = store.list_datasets(owner=owner, limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/datasets/{dataset_id}", dependencies=[Read])
def get_dataset(dataset_id: str, store: StoreDep) -> dict[str, Any]:
    return store.get_dataset(dataset_id)


@router.delete("/datasets/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, store: StoreDep, settings: SettingsDep, principal: Writer) -> Response:
    """Delete a dataset (its owner's or an admin's token): 409 naming the jobs while a queued or
    running job uses it. The row goes first, then the files, so a listed dataset always has its
    data (a file that outlived a crash between the two is never shown or used)."""
    check_may_change(principal, store.get_dataset(dataset_id)["owner"], f"dataset {dataset_id}")
    store.delete_dataset(dataset_id)
    remove_dataset(dataset_id, settings.data_dir)
    return Response(status_code=204)
