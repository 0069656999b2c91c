"""The web dashboard: server-rendered pages (Jinja2) with plotly.js served from the installed
plotly package (these machines are offline: no CDN).

Pages read through ``Store`` like the API. A job page thins dominated points for plotting
(at most ``MAX_PLOTTED`` of them, evenly by trial number) but always plots the whole front.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from workers.search import JobSpec

from .store import NotFound, Store

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
MAX_PLOTTED = 2000
KNOB_ROWS = ("rank", "keep", "wbits", "abits", "token_keep")

router = APIRouter(include_in_schema=False)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _plotly_js() -> Path:
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "plotly is not installed")
    return Path(spec.origin).parent / "package_data" / "plotly.min.js"


@router.get("/static/plotly.min.js")
def plotly_js() -> FileResponse:
    return FileResponse(_plotly_js(), media_type="application/javascript")


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/jobs")


def _best_within_budget(job: dict[str, Any], front: list[dict[str, Any]]) -> float | None:
    # The front holds only feasible trials, so its best quality is the best within every ceiling.
    return max((float(t["quality"]) for t in front), default=None)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> Response:
    store = _store(request)
    jobs, _ = store.list_jobs(limit=100)
    fronts = request.app.state.fronts
    rows = [{**j, "best": _best_within_budget(j, fronts.get(store, j))} for j in jobs]
    active = any(j["status"] in ("queued", "running") for j in jobs)
    return TEMPLATES.TemplateResponse(request, "jobs.html", {"jobs": rows, "active": active})


def job_view(
    job: dict[str, Any], trials: list[dict[str, Any]], front: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the job page plots: points (front complete, the rest thinned), the hypervolume
    curve, the front table. Objectives are normalised by trial 0 (the uncompressed model),
    as the search normalises them, so the curve is the search's hypervolume."""
    from workers.search import hypervolume

    spec = JobSpec.model_validate(job["spec"])
    targets = spec.targets
    on_front = {t["number"] for t in front}
    ok = [t for t in trials if t.get("quality") is not None]
    rest = [t for t in ok if t["number"] not in on_front]
    if len(rest) > MAX_PLOTTED:
        step = len(rest) / MAX_PLOTTED
        rest = [rest[int(i * step)] for i in range(MAX_PLOTTED)]

    def point(t: dict[str, Any]) -> dict[str, Any]:
        cost = t["costs"].get(targets[0], {})
        measured = t.get("measured") or {}
        return {
            "number": t["number"],
            "quality": t["quality"],
            "latency_ms": cost.get("latency_ms"),
            "low": cost.get("latency_low_ms"),
            "high": cost.get("latency_high_ms"),
            "weight_bytes": cost.get("weight_bytes"),
            "measured_ms": measured.get("latency_ms"),
            "feasible": bool(t.get("feasible")),
            "front": t["number"] in on_front,
        }

    curve: list[list[float]] = []
    zero = next((t for t in ok if t["number"] == 0), None)
    if zero is not None:
        q0 = float(zero["quality"]) or 1.0
        ref_cost = {
            name: float(zero["costs"][name]["latency_ms"]) for name in targets if name in zero["costs"]
        }
        floor = spec.quality_floor
        ref = [-(floor or 0.0) / q0] + [1.0] * len(ref_cost)
        ordered = sorted(ok, key=lambda t: t["number"])
        points: list[list[float]] = []
        marks = max(1, len(ordered) // 60)
        for i, t in enumerate(ordered, start=1):
            if t.get("feasible"):
                points.append(
                    [-float(t["quality"]) / q0]
                    + [float(t["costs"][n]["latency_ms"]) / c for n, c in ref_cost.items()]
                )
            if i % marks == 0 or i == len(ordered):
                curve.append([i, hypervolume(points, ref) if points else 0.0])
    return {
        "targets": targets,
        "points": [point(t) for t in front] + [point(t) for t in rest],
        "n_trials": len(trials),
        "n_plotted_rest": len(rest),
        "curve": curve,
        "front": [point(t) for t in front],
        "provenance": (front[0]["costs"][targets[0]].get("provenance") if front else None),
    }


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> Response:
    store = _store(request)
    try:
        job = store.get_job(job_id)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}") from None
    front = request.app.state.fronts.get(store, job)
    view = job_view(job, store.trials(job_id)[0], front)
    return TEMPLATES.TemplateResponse(request, "job.html", {"job": job, "view": view, "knobs": KNOB_ROWS})


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, jobs: str = "") -> Response:
    store = _store(request)
    series = []
    for job_id in [j for j in jobs.split(",") if j][:8]:
        try:
            job = store.get_job(job_id)
        except NotFound:
            continue
        front = request.app.state.fronts.get(store, job)
        summary = {k: job[k] for k in ("id", "model", "targets", "strategy")}
        series.append({"job": summary, "front": job_view(job, [], front)["front"]})
    recent, _ = store.list_jobs(limit=50)
    return TEMPLATES.TemplateResponse(request, "compare.html", {"series": series, "recent": recent})


def _calibration(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The held-out pairs a fit kept (``workers.calibration.holdout_pairs``), or None for a
    report without them (a fit with no test split, or one written before they were kept)."""
    holdout = (report or {}).get("holdout")
    if not holdout or not holdout.get("measured_ms"):
        return None
    return {k: holdout[k] for k in ("name", "measured_ms", "predicted_ms", "prior_ms", "n_total")}


@router.get("/targets", response_class=HTMLResponse)
def targets_page(request: Request) -> Response:
    """Every target with its provenance; every fitted predictor version with its validation
    numbers, and the active one's calibration plot (held-out predicted against measured)."""
    import json

    from latency_models import list_targets
    from workers.calibration import catalogue, learned_provenance

    cat = catalogue(request.app.state.settings.data_dir)
    rows: list[dict[str, Any]] = []
    calibrations: dict[str, Any] = {}
    for name in list_targets():
        target = cat.target(name)
        versions: list[dict[str, Any]] = []
        for version in cat.versions(name):
            report = json.loads((cat.root / "predictors" / name / version / "report.json").read_text())
            versions.append(
                {
                    "version": version,
                    "active": version == target.predictor_version,
                    "report": report,
                    "provenance": learned_provenance(report),
                    "calibration": _calibration(report),
                }
            )
        active = next((v for v in versions if v["active"]), None)
        rows.append({"target": target, "versions": versions, "active": active})
        if active and active["calibration"]:
            calibrations[name] = active["calibration"]
    return TEMPLATES.TemplateResponse(request, "targets.html", {"rows": rows, "calibrations": calibrations})


@router.get("/schedules", response_class=HTMLResponse)
def schedules_page(request: Request) -> Response:
    return TEMPLATES.TemplateResponse(
        request, "schedules.html", {"schedules": _store(request).list_schedules()}
    )


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> Response:
    from latency_models import list_targets
    from workers.search import list_strategies
    from workers.search._spec import ZOO_MODELS

    return TEMPLATES.TemplateResponse(
        request,
        "submit.html",
        {"models": ZOO_MODELS, "targets": list_targets(), "strategies": list_strategies()},
    )
