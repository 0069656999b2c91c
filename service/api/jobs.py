"""Jobs and their results: create, list, read, cancel and delete jobs; their trials, a trial's
plan and compressed model, and the front (JSON or CSV)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse

from workers.search import JobSpec, against_reference

from ..fronts import recovered_quality
from ..settings import Settings
from ..store import Conflict, NotFound, Store
from .deps import (
    CatalogueDep,
    FrontsDep,
    Read,
    SettingsDep,
    StoreDep,
    Writer,
    body_schema,
    check_dataset,
    check_may_change,
    job_spec_of,
)
from .schemas import API, MAX_INT, STATUS_PATTERN, JobOut, JobPage, TrialNumber, TrialPage

router = APIRouter(prefix=API)


# The body is validated by job_spec_of, not by FastAPI, so that an unknown target (known only to
# the service's catalogue) is reported in the same 422 as every other error of the spec.
@router.post("/jobs", status_code=201, response_model=JobOut, openapi_extra=body_schema(JobSpec))
def create_job(
    store: StoreDep,
    cat: CatalogueDep,
    settings: SettingsDep,
    principal: Writer,
    body: Annotated[Any, Body(include_in_schema=False)] = None,
) -> dict[str, Any]:
    spec = job_spec_of(cat, settings, body)
    check_dataset(store, spec)
    queued = store.queued_jobs(principal.owner)
    if queued >= settings.max_queued_jobs:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{principal.owner!r} has {queued} queued jobs, the most one owner may have "
            f"(HWSEARCH_MAX_QUEUED_JOBS={settings.max_queued_jobs}); wait for some to start or cancel some",
            headers={"Retry-After": "30"},
        )
    return store.create_job(spec.model_dump(mode="json"), owner=principal.owner)


@router.get("/jobs", response_model=JobPage, dependencies=[Read])
def list_jobs(
    store: StoreDep,
    status_: Annotated[str | None, Query(alias="status", pattern=STATUS_PATTERN)] = None,
    model: str | None = None,
    target: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> dict[str, Any]:
    items, total = store.list_jobs(status=status_, model=model, target=target, limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/jobs/{job_id}", response_model=JobOut, dependencies=[Read])
def get_job(job_id: str, store: StoreDep) -> dict[str, Any]:
    return store.get_job(job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, store: StoreDep, principal: Writer) -> dict[str, Any]:
    check_may_change(principal, store.get_job(job_id)["owner"], f"job {job_id}")
    return store.request_cancel(job_id)


@router.delete("/jobs/{job_id}", status_code=204)
def delete_job(job_id: str, store: StoreDep, principal: Writer) -> Response:
    check_may_change(principal, store.get_job(job_id)["owner"], f"job {job_id}")
    store.delete_job(job_id)
    return Response(status_code=204)


# ---- results ----------------------------------------------------------------------------------
@router.get("/jobs/{job_id}/trials", response_model=TrialPage, dependencies=[Read])
def trials(
    job_id: str,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> dict[str, Any]:
    items, total = store.trials(job_id, limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/jobs/{job_id}/trials/{number}/plan", dependencies=[Read])
def trial_plan(job_id: str, number: TrialNumber, store: StoreDep) -> dict[str, Any]:
    plan: dict[str, Any] = store.trial(job_id, number)["plan"]
    return plan


@router.get("/jobs/{job_id}/trials/{number}/model", dependencies=[Read], response_model=None)
async def trial_model(
    job_id: str,
    number: TrialNumber,
    store: StoreDep,
    settings: SettingsDep,
    format: Annotated[str, Query(pattern="^(zip|onnx|safetensors)$")] = "zip",
) -> Response:
    """The compressed model of a trial, built on demand by a Ray worker and cached under the
    artifact directory: ``format=zip`` (default) the whole artifact (weights, ONNX, plan,
    README), ``onnx`` the ONNX file alone (409 with the reason when the model could not be
    exported), ``safetensors`` the weights alone."""
    job = store.get_job(job_id)
    trial = store.trial(job_id, number)
    if trial.get("status") != "ok":
        raise Conflict(f"trial {number} failed; it has no model")
    root = (settings.data_dir / "artifacts").resolve()
    # A recovered trial's zip holds its recovered weights: cached under a name of its own, so a
    # zip built before the recovery stage is not handed out after it.
    # ".2": zips from before ONNX export (issue 19) lack model.onnx; they are built again.
    name = f"trial-{int(number)}{'-recovered' if trial.get('recovered') else ''}.2.zip"
    path = (root / job["id"] / name).resolve()
    if not path.is_relative_to(root):  # ids come from the database, but never trust a path
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such artifact")
    if not path.exists():
        try:
            await run_in_threadpool(_build_artifact, settings, job, trial, path)
        except Exception as exc:  # a stored plan that no longer builds: say why, not a bare 500
            raise HTTPException(
                status.HTTP_500_INTERNAL_SERVER_ERROR, f"building the model failed: {type(exc).__name__}"
            ) from None
    if format == "zip":
        return FileResponse(path, media_type="application/zip", filename=f"{job['id']}-trial-{number}.zip")
    return _member(path, format, f"{job['id']}-trial-{number}")


@router.get("/jobs/{job_id}/front", dependencies=[Read], response_model=None)
def front(
    job_id: str,
    store: StoreDep,
    fronts: FrontsDep,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Any:
    """The front on screening quality (the search's own, ``front``) and, "both ways", on
    recovered quality where the recovery stage recovered a plan (``front_recovered``; its rows
    say ``quality_source`` and keep ``quality_screening``); ``recovered_trials`` are the numbers
    of the recovered trials (empty: the front is the same both ways)."""
    job = store.get_job(job_id)
    rows = fronts.get(store, job)
    if format == "csv":
        return PlainTextResponse(front_csv(job, rows), media_type="text/csv")
    recovered_rows, recovered = fronts.get_recovered(store, job)
    reference = _reference(store, job_id)
    ref_costs = reference["costs"] if reference is not None else None

    def with_ratios(row: dict[str, Any]) -> dict[str, Any]:  # a copy: rows are the cache's own
        return {**row, **against_reference(row["costs"], ref_costs, job["targets"])}

    return {
        "job_id": job_id,
        "objectives": JobSpec.model_validate(job["spec"]).objectives,
        "targets": job["targets"],
        "hypervolume": job["hypervolume"],
        "reference": reference,
        "front": [with_ratios(row) for row in rows],
        "front_recovered": [with_ratios(row) for row in recovered_rows],
        "recovered_trials": recovered,
    }


def _member(path: Path, format: str, stem: str) -> Response:
    """One file of a trial's zip; a missing ONNX file is a 409 that says why (its ``onnx.json``)."""
    from workers.artifacts import MEMBERS

    member = MEMBERS[format]
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        if member not in names:
            reason = "the artifact holds no onnx.json"
            if "onnx.json" in names:
                reason = json.loads(z.read("onnx.json")).get("error", reason)
            raise Conflict(f"trial has no {member}: {reason}")
        data = z.read(member)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{stem}.{format}"'},
    )


def _reference(store: Store, job_id: str) -> dict[str, Any] | None:
    """Trial 0, the uncompressed model, when it has finished and succeeded."""
    try:
        trial = store.trial(job_id, 0)
    except NotFound:
        return None
    return trial if trial.get("status") == "ok" else None


def _build_artifact(settings: Settings, job: dict[str, Any], trial: dict[str, Any], path: Path) -> None:
    import ray

    from workers.artifacts import export_compressed

    from ..dispatcher import start_ray

    start_ray(settings.ray_address)
    task = ray.remote(num_cpus=1, max_retries=1)(export_compressed)
    # The whole spec: the model source (plugin, import path, weights) rebuilds as the job built it;
    # a recovered trial's weights lie under the service's data directory.
    ray.get(task.remote(job["spec"], trial, str(path), job["id"], str(settings.data_dir)), timeout=600)


def front_csv(job: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The front as CSV: number, quality, latency per target, weight bytes, provenance, plan
    (JSON), and the recovered quality (empty where the plan was not recovered)."""
    out = io.StringIO()
    targets = job["targets"]
    writer = csv.writer(out)
    header = [
        "number",
        "quality",
        *[f"latency_ms@{t}" for t in targets],
        "weight_bytes",
        "provenance",
        "plan",
        "quality_recovered",
    ]
    writer.writerow(header)
    for t in rows:
        costs = t["costs"]
        writer.writerow(
            [
                t["number"],
                t["quality"],
                *[costs[name]["latency_ms"] for name in targets],
                costs[targets[0]].get("weight_bytes"),
                costs[targets[0]].get("provenance"),
                json.dumps(t["plan"], separators=(",", ":")),
                recovered_quality(t),
            ]
        )
    return out.getvalue()
