"""Targets and their latency models: list and create targets, their predictor versions, which
version is active, measurement uploads (each queues a fit) and the fits' reports."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from latency_models import (
    ANALYTIC,
    Target,
    TooManyRows,
    check_measurements,
)
from latency_models import list_targets as target_names
from search_spaces import check_name

from ..dispatcher import discard_upload
from ..store import Conflict, Store
from .deps import (
    CatalogueDep,
    Read,
    SettingsDep,
    StoreDep,
    Writer,
    check_declared_size,
    check_may_change,
    receive_to_file,
    target_of,
    uploads_folder,
)
from .errors import Invalid, reported_at
from .schemas import API, ActivateIn

router = APIRouter(prefix=API)


def _target_summary(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "family": target.family,
        "description": target.description,
        "runtime": target.runtime,
        "predictor_version": target.predictor_version,
        "provenance": ANALYTIC if target.predictor_version is None else "learned",
    }


def _public_fit(fit: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fit.items() if k != "csv_path"}  # a server path is not the client's business


@router.get("/targets", dependencies=[Read])
def list_targets(cat: CatalogueDep) -> list[dict[str, Any]]:
    return [_target_summary(cat.target(n)) for n in target_names()]


@router.post("/targets", status_code=201)
def create_target(
    body: dict[str, Any], cat: CatalogueDep, store: StoreDep, principal: Writer
) -> dict[str, Any]:
    """A target from the same JSON shape as latency_models/targets/*.json, owned by the caller."""
    target = Target.from_dict(body)  # a bad field is a 422 at ("body", its field)
    if target.name in target_names():
        raise Conflict(f"target {target.name!r} exists; choose another name")
    store.set_target_owner(target.name, principal.owner)
    return {**_target_summary(cat.add_target(target)), "owner": principal.owner}


@router.get("/targets/{name}", dependencies=[Read])
def get_target(name: str, cat: CatalogueDep, store: StoreDep) -> dict[str, Any]:
    target = target_of(cat, name)
    return {**_target_summary(target), "owner": store.target_owner(target.name), "spec": target.to_dict()}


@router.get("/targets/{name}/predictors", dependencies=[Read])
def predictors(name: str, cat: CatalogueDep) -> dict[str, Any]:
    target = target_of(cat, name)
    versions = [
        {"version": version, "report": cat.report(target.name, version)}
        for version in cat.versions(target.name)
    ]
    return {"target": target.name, "active": cat.active_version(target.name), "versions": versions}


@router.put("/targets/{name}/predictors/active")
def activate(
    name: str, body: ActivateIn, cat: CatalogueDep, store: StoreDep, principal: Writer
) -> dict[str, Any]:
    target = target_of(cat, name)
    # A target nobody owns (a built-in one) is shared: changing its predictor needs admin.
    check_may_change(principal, store.target_owner(target.name), f"target {target.name!r}")
    with reported_at("body", "version"):
        cat.activate(target.name, body.version)
    return {"target": target.name, "active": body.version}


@router.post("/targets/{name}/measurements", status_code=202)
async def upload_measurements(
    request: Request,
    name: str,
    store: StoreDep,
    settings: SettingsDep,
    cat: CatalogueDep,
    principal: Writer,
    family: Annotated[str | None, Query(pattern="^(gpu|cpu|mobile|fpga)$")] = None,
    kind: Annotated[str, Query(pattern="^(calibrated-prior|boosted-residual)$")] = "boosted-residual",
) -> dict[str, Any]:
    """Upload a measurement CSV (either documented format, as the request body, at most
    HWSEARCH_MAX_UPLOAD_BYTES and HWSEARCH_MAX_UPLOAD_ROWS); the table is checked now (422
    naming row and column) and a new predictor version is fitted as a job: poll GET /fits/{id}
    for its validation report (POST /fits/{id}/cancel stops it).

    Nothing heavy runs on the event loop: the body is streamed to a private file (0600, in
    the 0700 uploads folder) and checked in a worker thread; a refused table leaves no file.
    The table is deleted once its fit has ended."""
    limit = settings.max_upload_bytes
    check_declared_size(request, limit, "HWSEARCH_MAX_UPLOAD_BYTES")
    # What needs no body is checked before the body is read.
    # ``cat`` (a dependency) registered the stored user targets, so they are among the names.
    if name not in target_names() and family is None:
        raise Invalid(
            ("query", "family"), f"target {name!r} does not exist: give its family to create it", None
        )
    with reported_at("path", "name"):
        check_name("name", name)
    if name in target_names():
        # Its fit may become the target's active predictor, for everyone who uses it.
        check_may_change(principal, await run_in_threadpool(store.target_owner, name), f"target {name!r}")
    fit_id = uuid.uuid4().hex[:16]
    path = uploads_folder(settings) / f"{fit_id}.csv"
    await receive_to_file(request, path, limit, "HWSEARCH_MAX_UPLOAD_BYTES")
    try:
        await run_in_threadpool(_check_table, path, settings.max_upload_rows)
        fit = await run_in_threadpool(_queue_fit, store, fit_id, name, family, kind, path, principal.owner)
    except BaseException:  # refused, failed, or the client went away: nothing half-written stays
        path.unlink(missing_ok=True)
        raise
    return _public_fit(fit)


def _check_table(path: Path, max_rows: int) -> None:
    """Validate an uploaded table as the fit will read it (in a worker thread: a 1M-row table
    takes seconds), its rows counted against ``max_rows`` first."""
    with reported_at("body", value=None):
        try:
            check_measurements(path, max_rows=max_rows)
        except TooManyRows as exc:
            raise Invalid(
                ("body",),
                f"measurements: the table has {exc.rows} data rows; at most {exc.limit} are "
                "accepted (HWSEARCH_MAX_UPLOAD_ROWS): split or sample it",
                exc.rows,
            ) from None


def _queue_fit(
    store: Store, fit_id: str, name: str, family: str | None, kind: str, path: Path, owner: str
) -> dict[str, Any]:
    if name not in target_names():
        store.set_target_owner(name, owner)  # the fit creates it
    return store.create_fit(
        fit_id=fit_id, target=name, family=family, kind=kind, csv_path=str(path), owner=owner
    )


@router.get("/fits/{fit_id}", dependencies=[Read])
def get_fit(fit_id: str, store: StoreDep) -> dict[str, Any]:
    return _public_fit(store.get_fit(fit_id))


@router.post("/fits/{fit_id}/cancel")
def cancel_fit(fit_id: str, store: StoreDep, principal: Writer) -> dict[str, Any]:
    """Cancel a fit (its owner's or an admin's token): a queued one at once; a running one is
    flagged and its dispatcher kills its Ray task and marks it ``cancelled`` (poll GET
    /fits/{id}); a finished one is left as it is. Its uploaded table is deleted."""
    check_may_change(principal, store.get_fit(fit_id)["owner"], f"fit {fit_id}")
    fit = store.request_fit_cancel(fit_id)
    if fit["status"] == "cancelled":
        discard_upload(fit["csv_path"])
    return _public_fit(fit)
