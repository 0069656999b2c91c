"""Targets and their latency models: list and create targets, their predictor versions, which
version is active, measurement uploads (each queues a fit) and the fits' reports."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status

from latency_models import (
    ANALYTIC,
    Target,
    measurement_format,
    read_layer_measurements,
    read_network_measurements,
)
from latency_models import list_targets as target_names
from search_spaces import InputError

from ..store import Conflict
from .deps import CatalogueDep, Read, SettingsDep, StoreDep, Write, target_of
from .errors import Invalid, reported_at
from .schemas import API, ActivateIn

router = APIRouter(prefix=API)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _target_summary(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "family": target.family,
        "description": target.description,
        "predictor_version": target.predictor_version,
        "provenance": ANALYTIC if target.predictor_version is None else "learned",
    }


def _public_fit(fit: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fit.items() if k != "csv_path"}  # a server path is not the client's business


@router.get("/targets", dependencies=[Read])
def list_targets(cat: CatalogueDep) -> list[dict[str, Any]]:
    return [_target_summary(cat.target(n)) for n in target_names()]


@router.post("/targets", status_code=201, dependencies=[Write])
def create_target(body: dict[str, Any], cat: CatalogueDep) -> dict[str, Any]:
    """A target from the same JSON shape as latency_models/targets/*.json."""
    target = Target.from_dict(body)  # a bad field is a 422 at ("body", its field)
    if target.name in target_names():
        raise Conflict(f"target {target.name!r} exists; choose another name")
    return _target_summary(cat.add_target(target))


@router.get("/targets/{name}", dependencies=[Read])
def get_target(name: str, cat: CatalogueDep) -> dict[str, Any]:
    target = target_of(cat, name)
    return {**_target_summary(target), "spec": target.to_dict()}


@router.get("/targets/{name}/predictors", dependencies=[Read])
def predictors(name: str, cat: CatalogueDep) -> dict[str, Any]:
    target = target_of(cat, name)
    versions = [
        {"version": version, "report": cat.report(target.name, version)}
        for version in cat.versions(target.name)
    ]
    return {"target": target.name, "active": cat.active_version(target.name), "versions": versions}


@router.put("/targets/{name}/predictors/active", dependencies=[Write])
def activate(name: str, body: ActivateIn, cat: CatalogueDep) -> dict[str, Any]:
    target = target_of(cat, name)
    with reported_at("body", "version"):
        cat.activate(target.name, body.version)
    return {"target": target.name, "active": body.version}


@router.post("/targets/{name}/measurements", status_code=202, dependencies=[Write])
async def upload_measurements(
    request: Request,
    name: str,
    store: StoreDep,
    settings: SettingsDep,
    cat: CatalogueDep,
    family: Annotated[str | None, Query(pattern="^(gpu|cpu|mobile|fpga)$")] = None,
    kind: Annotated[str, Query(pattern="^(calibrated-prior|boosted-residual)$")] = "boosted-residual",
) -> dict[str, Any]:
    """Upload a measurement CSV (either documented format, as the request body); the table is
    checked now (422 naming row and column) and a new predictor version is fitted as a job:
    poll GET /fits/{id} for its validation report."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"uploads are limited to {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"uploads are limited to {limit} bytes")
    # ``cat`` (a dependency) registered the stored user targets, so they are among the names.
    if name not in target_names() and family is None:
        raise Invalid(
            ("query", "family"), f"target {name!r} does not exist: give its family to create it", None
        )
    if not _SAFE_NAME.match(name):
        raise Invalid(("path", "name"), "letters, digits, '.', '_' and '-' only", name)
    folder = settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    fit_id = uuid.uuid4().hex[:16]
    path = folder / f"{fit_id}.csv"
    path.write_bytes(body)
    try:
        with reported_at("body", value=None):
            reader = (
                read_layer_measurements if measurement_format(path) == "layer" else read_network_measurements
            )
            reader(path)
    except InputError:
        path.unlink(missing_ok=True)
        raise
    fit = store.create_fit(fit_id=fit_id, target=name, family=family, kind=kind, csv_path=str(path))
    return _public_fit(fit)


@router.get("/fits/{fit_id}", dependencies=[Read])
def get_fit(fit_id: str, store: StoreDep) -> dict[str, Any]:
    return _public_fit(store.get_fit(fit_id))
