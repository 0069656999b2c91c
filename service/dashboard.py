"""The web dashboard: server-rendered pages (Jinja2) with plotly.js served from the installed
plotly package (these machines are offline: no CDN).

Pages read through ``Store`` like the API, and fronts and job views through the read-model
(service/fronts.py) the API's front uses too. A job page thins dominated points for plotting
(at most ``fronts.MAX_PLOTTED`` of them, evenly by trial number) but always plots the whole front.
"""

from __future__ import annotations

import importlib.util
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from workers.model_refs import ZOO_MODELS

from .api.deps import caller
from .api.deps import get_store as _store
from .auth import COOKIE, Principal, may_change
from .fronts import point
from .store import NotFound
from .svg_plot import Series, plot_svg


def _who(request: Request) -> dict[str, Any]:
    """What every page knows of its reader: who is logged in, and what they may do."""
    principal = caller(request)
    return {
        "principal": principal,
        "reads_open": request.app.state.settings.reads_open,
        # Without a login the submit form asks for a token; a logged-in read-only token cannot submit.
        "can_submit": principal is None or principal.has("write"),
    }


TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"), context_processors=[_who])
KNOB_ROWS = ("rank", "keep", "wbits", "abits", "token_keep")


class LoginRequired(Exception):
    """A page was asked for without a read token while reads are closed (HWSEARCH_READS_OPEN=false)."""


def _page_reader(request: Request) -> Principal | None:
    """The one read policy of the API, for pages: with reads closed a page needs a token with
    the read scope (the login cookie, or a Bearer header for scripts)."""
    principal = caller(request)
    if not request.app.state.settings.reads_open and (principal is None or not principal.has("read")):
        raise LoginRequired()
    return principal


#: Public: plotly.js, the log-in and log-out forms. Every other page is on ``pages``.
router = APIRouter(include_in_schema=False)
pages = APIRouter(include_in_schema=False, dependencies=[Depends(_page_reader)])


async def on_login_required(request: Request, _: Exception) -> Response:
    """401 and the log-in form (HTML for a page, JSON for view.json and other data)."""
    if request.url.path.endswith(".json"):
        from fastapi.responses import JSONResponse

        return JSONResponse(
            {"detail": "reads are closed on this service: log in at /login or send a Bearer token"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return TEMPLATES.TemplateResponse(
        request, "login.html", {"next": _safe_next(request.url.path), "error": None}, status_code=401
    )


def _safe_next(path: str) -> str:
    # Only a path of this site: "//evil.example" or "https://..." would be an open redirect.
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/jobs"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/jobs") -> Response:
    return TEMPLATES.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the token and keep it in an HttpOnly, SameSite=Strict cookie (scripts send a Bearer
    header instead). The body is a small urlencoded form (the body-size cap applies)."""
    from urllib.parse import parse_qs

    from starlette.concurrency import run_in_threadpool

    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or ["/jobs"])[0])
    principal = await run_in_threadpool(_store(request).principal, token) if token else None
    if principal is None:
        return TEMPLATES.TemplateResponse(
            request,
            "login.html",
            {"next": target, "error": "this token is not valid (unknown, revoked or expired)"},
            status_code=401,
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=30 * 86400,
        path="/",
    )
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _plotly_js() -> Path:
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "plotly is not installed")
    return Path(spec.origin).parent / "package_data" / "plotly.min.js"


def _plotly_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("plotly")
    except PackageNotFoundError:
        return "missing"


# The URL names plotly's version, so the browser may keep the file for good: a 4.6 MB script
# that Chromium otherwise fetches and compiles again on every page (bench/dashboard.py).
TEMPLATES.env.globals["plotly_js_url"] = f"/static/plotly-{_plotly_version()}.min.js"
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


@router.get("/static/plotly-{version}.min.js")
def plotly_js(version: str) -> FileResponse:
    if version != _plotly_version():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"plotly {version} is not the installed version")
    return FileResponse(_plotly_js(), media_type="application/javascript", headers=IMMUTABLE)


@pages.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/jobs")


def _best_within_budget(job: dict[str, Any], front: list[dict[str, Any]]) -> float | None:
    # The front holds only feasible trials, so its best quality is the best within every ceiling.
    return max((float(t["quality"]) for t in front), default=None)


@pages.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, fragment: str = "") -> Response:
    store = _store(request)
    jobs, _ = store.list_jobs(limit=100)
    fronts = request.app.state.fronts
    rows = [{**j, "best": _best_within_budget(j, fronts.get(store, j))} for j in jobs]
    active = any(j["status"] in ("queued", "running") for j in jobs)
    if fragment == "rows":  # what the page polls while jobs run
        return TEMPLATES.TemplateResponse(
            request, "_job_rows.html", {"jobs": rows}, headers={"X-Jobs-Active": str(int(active))}
        )
    return TEMPLATES.TemplateResponse(request, "jobs.html", {"jobs": rows, "active": active})


# Okabe-Ito colours (safe for colour-blind readers) of the job page's plots: the server-drawn
# previews and, through the template, plotly.js's.
COLOURS = {
    "front": "#0072B2",
    "other": "#999999",
    "infeasible": "#E69F00",
    "measured": "#009E73",
    "limit": "#D55E00",
    "reference": "#000000",
    "front_2d": "#CC79A7",
    "recovered": "#56B4E9",
}
#: The legend's name of the recovered plans' points (their quality after the recovery stage).
RECOVERED_LABEL = "after recovery"
#: The legend's name of trial 0, on every plot and first in the front's table.
REFERENCE_LABEL = "reference (uncompressed)"


def previews(view: dict[str, Any]) -> dict[str, Markup]:
    """The job page's two plots as static SVG, as plotly.js first draws them (x: latency on the
    first target, coloured front / feasible / infeasible, the reference as a black star), shown
    until plotly.js has run."""
    target = view["targets"][0]
    points = [p for p in view["points"] if p["latency_ms"].get(target) is not None]

    def series(name: str, chosen: list[dict[str, Any]], symbol: str, size_px: float) -> Series:
        colour = {"feasible": "other", REFERENCE_LABEL: "reference", RECOVERED_LABEL: "recovered"}.get(
            name, name
        )
        quality = "quality_recovered" if name == RECOVERED_LABEL else "quality"
        return Series(
            name,
            [p["latency_ms"][target] for p in chosen],
            [p[quality] for p in chosen],
            COLOURS[colour],
            symbol,
            size_px,
        )

    groups = [
        series("feasible", [p for p in points if not p["front"] and p["feasible"]], "circle-open", 3.5),
        series("infeasible", [p for p in points if not p["feasible"]], "x", 3.5),
        series("front", [p for p in points if p["front"]], "circle", 5),
        series(REFERENCE_LABEL, [p for p in points if p["reference"]], "star", 4),
        # The recovered plans once more, at their quality after the recovery stage.
        series(RECOVERED_LABEL, [p for p in points if "quality_recovered" in p], "triangle-up", 5),
    ]
    limits = [c for c in view["constraints"] if c["metric"] == "latency_ms" and c["target"] in (None, target)]
    empty = "no trial has been evaluated successfully" if view["n_trials"] else "no trial yet"
    front = plot_svg(
        groups,
        title="quality against latency",
        x_label=f"latency (ms) on {target}",
        y_label="quality",
        x_lines=[float(c["value"]) for c in limits],
        y_lines=[float(c["value"]) for c in view["constraints"] if c["metric"] == "quality"],
        line_colour=COLOURS["limit"],
        empty_note=empty,
    )
    curve_xy = view["curve"]
    curve = plot_svg(
        [Series("hypervolume", [c[0] for c in curve_xy], [c[1] for c in curve_xy], COLOURS["front"], "line")],
        title="hypervolume against evaluations",
        x_label="evaluations",
        y_label="hypervolume",
        line_colour=COLOURS["limit"],
        empty_note="no feasible trial yet",
    )
    return {"front": front, "curve": curve}


JOB_FIELDS = ("id", "status", "model", "strategy", "evaluations", "budget", "hypervolume", "error")


def _job_summary(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job.get(k) for k in JOB_FIELDS} | {
        "active": job["status"] in ("queued", "running"),
        # The searched layers (name, kind, full rank), reported by the search once it runs.
        "layers": (job.get("progress") or {}).get("layers") or [],
        # While the recovery stage runs: {"plans", "done", "current", "step", "steps"}.
        "recovery": (job.get("progress") or {}).get("recovery"),
    }


def _front_trials(request: Request, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials of the front's table: the front's (from the front cache: the view was just
    built from it) and the reference (one row)."""
    store = _store(request)
    rows = list(request.app.state.fronts.get(store, job))
    if not any(int(t["number"]) == 0 for t in rows):
        with suppress(NotFound):
            rows.append(store.trial(job["id"], 0))
    return rows


def _quality_details(trials: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Trial number → its quality's n and 95% interval (``quality_detail``: n, low, high);
    trials without one (a zoo entry's own evaluation written before intervals existed) are
    absent."""
    return {
        int(t["number"]): t["quality_detail"]
        for t in trials
        if isinstance(t.get("quality_detail"), dict) and t["quality_detail"].get("low") is not None
    }


def _calibration_hows(trials: list[dict[str, Any]]) -> dict[int, str]:
    """Trial number → how its quality was obtained (its calibration's ``how``: "calibrated on 32
    crops of …", "uncalibrated"); trials stored before calibration existed are absent."""
    return {
        int(t["number"]): str(t["calibration"]["how"])
        for t in trials
        if isinstance(t.get("calibration"), dict) and t["calibration"].get("how")
    }


def _table_context(
    job_id: str,
    view: dict[str, Any],
    details: dict[int, dict[str, Any]],
    hows: dict[int, str] | None = None,
) -> dict[str, Any]:
    front = view["front"]
    reference = view["reference"]
    # The reference first (once, also when it is on the front), then the front, best quality first.
    rows = ([reference] if reference else []) + [p for p in front if not p["reference"]]
    sizes = {int(d["n"]) for d in details.values() if d.get("n") is not None}
    return {
        # Screening and recovered quality side by side when the job asked for a recovery stage
        # or has a recovered plan; how each quality was obtained when trials say so.
        "recovery": view.get("recovery") is not None or any("quality_recovered" in p for p in rows),
        "recovered_front": set(view.get("front_recovered") or []),
        "hows": hows or {},
        "view": view,
        "rows": rows,
        "reference_label": REFERENCE_LABEL,
        "job_id": job_id,
        "energy": [t for t in view["targets"] if any(p["energy_mj"].get(t) is not None for p in front)],
        # A measured column per target some row was measured on (this machine, device agents).
        "measured_targets": [
            t for t in view["targets"] if any(t in (p.get("measured_on") or {}) for p in rows)
        ],
        # Quality with its 95% interval where trials have one; n in the header when all share it.
        "details": details,
        "quality_n": next(iter(sizes)) if len(sizes) == 1 else None,
    }


def _sources(job: dict[str, Any]) -> dict[str, Any]:
    """Where the job's model and data come from, as its runner recorded them (progress
    ``source`` and ``data``), else as its spec names them (a queued job)."""
    progress = job.get("progress") or {}
    spec = job.get("spec") or {}
    source = progress.get("source") or {}
    data = progress.get("data") or {}
    spec_data = spec.get("data") or {}
    sha = source.get("weights_sha256")
    name = str(source.get("name") or spec.get("model") or job.get("model") or "")
    kind = source.get("kind")
    if kind is None:  # not recorded (yet): how the spec names it
        kind = "zoo" if name.partition(":")[0] in ZOO_MODELS else "import" if ":" in name else "plugin"
    model = {
        "kind": kind,
        "name": name,
        "package": source.get("package"),
        "version": source.get("version"),
        "target": source.get("target"),
        "weights": source.get("weights_path") or spec.get("weights"),
        "weights_sha": sha[:12] if isinstance(sha, str) else None,
    }
    judged = None
    if data or spec_data or spec.get("evaluator"):
        judged = {
            "dataset": data.get("dataset") or spec_data.get("dataset"),
            "path": data.get("path") or spec_data.get("path"),
            "kind": data.get("kind"),
            "n_calibration": data.get("n_calibration"),
            "n_evaluation": data.get("n_evaluation"),
            "seed": data.get("seed"),
            "evaluator": data.get("evaluator") or spec.get("evaluator"),
        }
    # A queued job's runner has not resolved its model and split its data yet.
    return {"model": model, "data": judged, "pending": job.get("status") == "queued"}


@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, all: bool = False) -> Response:
    job = _store(request).get_job(job_id)
    view = request.app.state.views.get(_store(request), request.app.state.fronts, job, plot_all=all)
    trials = _front_trials(request, job)
    return TEMPLATES.TemplateResponse(
        request,
        "job.html",
        {
            **_table_context(job["id"], view, _quality_details(trials), _calibration_hows(trials)),
            **_sources(job),
            "job": job,
            "summary": _job_summary(job),
            "knobs": KNOB_ROWS,
            "plot_all": all,
            "preview": previews(view),
            "colours": COLOURS,
            "reference_label": REFERENCE_LABEL,
            "recovered_label": RECOVERED_LABEL,
            # The cancel button only for those whose token may cancel it (owner or admin).
            "can_cancel": job["status"] in ("queued", "running")
            and may_change(caller(request), job["owner"]),
        },
    )


@pages.get("/jobs/{job_id}/view.json")
def job_view_json(request: Request, job_id: str, all: bool = False) -> dict[str, Any]:
    """What the job page polls while the job runs: its summary, the view to redraw and the
    front's table as HTML (rendered by the same template as the page's)."""
    job = _store(request).get_job(job_id)
    view = request.app.state.views.get(_store(request), request.app.state.fronts, job, plot_all=all)
    trials = _front_trials(request, job)
    table = TEMPLATES.get_template("_front_table.html").render(
        _table_context(job["id"], view, _quality_details(trials), _calibration_hows(trials))
    )
    # The model and data lines too: a queued job's runner records them when it starts.
    sources = TEMPLATES.get_template("_job_sources.html").render(_sources(job))
    return {"job": _job_summary(job), "view": view, "table_html": table, "sources_html": sources}


MAX_COMPARED = 8


@pages.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, jobs: str = "", job: Annotated[list[str], Query()] = []) -> Response:  # noqa: B006
    """Fronts of up to MAX_COMPARED jobs overlaid: ``?jobs=a,b`` or ``?job=a&job=b`` (the form)."""
    store = _store(request)
    wanted = list(dict.fromkeys([*job, *(j.strip() for j in jobs.split(","))]))
    wanted = [j for j in wanted if j]
    series: list[dict[str, Any]] = []
    missing: list[str] = []
    for job_id in wanted[:MAX_COMPARED]:
        try:
            row = store.get_job(job_id)
        except NotFound:
            missing.append(job_id)
            continue
        front = request.app.state.fronts.get(store, row)
        summary = {k: row[k] for k in ("id", "model", "targets", "strategy", "status")}
        try:  # the uncompressed model, each job's reference (none until it is evaluated)
            zero: dict[str, Any] | None = store.trial(job_id, 0)
        except NotFound:
            zero = None
        if zero is not None and zero.get("quality") is None:
            zero = None
        targets = row["targets"]
        series.append(
            {
                "job": summary,
                "front": [point(t, targets, set(), zero) for t in front],
                "reference": None if zero is None else point(zero, targets, set(), zero),
            }
        )
    recent, _ = store.list_jobs(limit=50)
    return TEMPLATES.TemplateResponse(
        request,
        "compare.html",
        {
            "series": series,
            "recent": recent,
            "missing": missing,
            "dropped": wanted[MAX_COMPARED:],
            "chosen": {s["job"]["id"] for s in series},
            "max_compared": MAX_COMPARED,
            "reference_label": REFERENCE_LABEL,
        },
    )


def _calibration(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The held-out pairs a fit kept (``workers.calibration.holdout_pairs``), or None for a
    report without them (a fit with no test split, or one written before they were kept)."""
    holdout = (report or {}).get("holdout")
    if not holdout or not holdout.get("measured_ms"):
        return None
    return {k: holdout[k] for k in ("name", "measured_ms", "predicted_ms", "prior_ms", "n_total")}


@pages.get("/targets", response_class=HTMLResponse)
def targets_page(request: Request) -> Response:
    """Every target with its provenance and runtime; every fitted predictor version with its
    validation numbers, and the active one's calibration plot (held-out predicted against
    measured); the registered devices (issue 19) and, per target, the devices whose
    measurements back it."""
    from latency_models import catalogue, learned_provenance, list_targets

    cat = catalogue(request.app.state.settings.data_dir)
    rows: list[dict[str, Any]] = []
    calibrations: dict[str, Any] = {}
    for name in list_targets():
        target = cat.target(name)
        versions: list[dict[str, Any]] = []
        for version in cat.versions(name):
            report = cat.report(name, version)
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
    settings = request.app.state.settings
    devices = request.app.state.store.devices(online_s=2.0 * settings.agent_lease_s)
    measured_by: dict[str, list[dict[str, Any]]] = {}
    for device in devices:
        if device["tasks_done"]:
            measured_by.setdefault(device["target"], []).append(device)
    return TEMPLATES.TemplateResponse(
        request,
        "targets.html",
        {
            "rows": rows,
            "calibrations": calibrations,
            "devices": devices,
            "measured_by": measured_by,
            "profiles": request.app.state.store.profiles(limit=20),
        },
    )


@pages.get("/schedules", response_class=HTMLResponse)
def schedules_page(request: Request) -> Response:
    return TEMPLATES.TemplateResponse(
        request, "schedules.html", {"schedules": _store(request).list_schedules()}
    )


@pages.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> Response:
    from latency_models import list_targets
    from workers.model_refs import list_plugins
    from workers.search import list_strategies

    datasets, _ = _store(request).list_datasets(limit=500)
    return TEMPLATES.TemplateResponse(
        request,
        "submit.html",
        {
            "models": ZOO_MODELS,
            # Installed plugins (from their metadata: nothing is imported), beside the zoo.
            "plugins": list_plugins(),
            "datasets": datasets,
            "targets": list_targets(),
            "strategies": list_strategies(),
        },
    )


# Registered last: its routes are above.
router.include_router(pages)
