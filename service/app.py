"""The FastAPI application: REST API under /api/v1, /healthz and /metrics.

Routes are thin: validation is the JobSpec's (422 names the field), storage is ``Store``'s,
searches run in the dispatcher, never in a request. Mutating endpoints need
``Authorization: Bearer <token>`` (tokens are stored hashed); reads are open unless
``HWSEARCH_READS_OPEN=false``. Importing this module pulls in neither torch nor ray.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi import Path as FastApiPath
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select, text

from workers.search import JobSpec

from .db import JOB_STATUSES, Job, TrialRow, make_engine, migrate, utcnow
from .dispatcher import Dispatcher
from .scheduler import Scheduler
from .settings import Settings
from .store import Conflict, NotFound, Store

API = "/api/v1"
#: Integers the databases store (SQLite's INTEGER is 64-bit; PostgreSQL's 32): larger ones are a 422.
MAX_INT = 2**31 - 1
TrialNumber = Annotated[int, FastApiPath(ge=0, le=MAX_INT, description="trial number within the job")]
_STATUS_PATTERN = "^(" + "|".join(JOB_STATUSES) + ")$"


class JobOut(BaseModel):
    id: str
    status: str
    model: str
    targets: list[str]
    strategy: str
    budget: int | None
    evaluations: int
    hypervolume: float | None
    progress: dict[str, Any]
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: dict[str, Any]


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class ScheduleIn(BaseModel):
    """A cron schedule: every firing creates an ordinary job from ``spec``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(description="five-field cron expression, e.g. '0 2 * * *' (02:00 every day)")
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in")
    spec: JobSpec
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a five-field cron expression, e.g. '0 2 * * *'")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        # OSError: a name that is a folder of the zone database ("America") or too long for a
        # file name (found by the fuzz test: it was a 500).
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{value!r} is not an IANA time zone, e.g. UTC or Europe/Berlin") from None
        return value


class ScheduleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    cron: str | None = None
    timezone: str | None = None
    spec: JobSpec | None = None
    enabled: bool | None = None

    _cron = field_validator("cron")(classmethod(lambda cls, v: v if v is None else ScheduleIn._cron(v)))
    _timezone = field_validator("timezone")(
        classmethod(lambda cls, v: v if v is None else ScheduleIn._timezone(v))
    )


class ActivateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=100)


class TrialPage(BaseModel):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


# ---------------------------------------------------------------------------- dependencies
def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(get_store)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_token(request: Request, store: StoreDep) -> None:
    token = _bearer(request)
    if token is None or not store.token_valid(token):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API token is required: send 'Authorization: Bearer <token>' "
            "(create one with `hwsearch token create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_read(request: Request, store: StoreDep) -> None:
    if not request.app.state.settings.reads_open:
        require_token(request, store)


Write = Depends(require_token)
Read = Depends(require_read)


def _job_or_404(store: Store, job_id: str) -> dict[str, Any]:
    try:
        return store.get_job(job_id)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}") from None


def _check_targets(request: Request, spec: JobSpec, loc: tuple[Any, ...]) -> None:
    """Every target of ``spec`` exists in the service's catalogue (422 naming the one that does not)."""
    from latency_models import LatencyModelError

    cat = _catalogue(request)
    for i, name in enumerate(spec.targets):
        try:
            cat.target(name)
        except LatencyModelError as exc:
            raise invalid((*loc, "targets", i), str(exc), name) from None


def _schedule_or_404(store: Store, schedule_id: str) -> dict[str, Any]:
    try:
        return store.get_schedule(schedule_id)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no schedule {schedule_id!r}") from None


def invalid(loc: tuple[Any, ...], msg: str, value: Any) -> RequestValidationError:
    """A 422 like pydantic's: the field's path, what is wrong, and the value given."""
    return RequestValidationError([{"loc": loc, "msg": msg, "input": value, "type": "value_error"}])


_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _catalogue(request: Request) -> Any:
    from workers.calibration import catalogue

    return catalogue(request.app.state.settings.data_dir)


def _target_or_404(request: Request, name: str) -> Any:
    from latency_models import LatencyModelError

    try:
        return _catalogue(request).target(name)
    except LatencyModelError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no target {name!r}") from None


def _target_summary(target: Any) -> dict[str, Any]:
    return {
        "name": target.name,
        "family": target.family,
        "description": target.description,
        "predictor_version": target.predictor_version,
        "provenance": "analytic prior (uncalibrated)" if target.predictor_version is None else "learned",
    }


def _public_fit(fit: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fit.items() if k != "csv_path"}  # a server path is not the client's business


# ---------------------------------------------------------------------------- the app
def create_app(
    settings: Settings | None = None, *, dispatcher: bool | None = None, demo: bool = False
) -> FastAPI:
    """The service; ``dispatcher`` overrides ``settings.run_dispatcher`` (tests run without);
    ``demo`` queues the demo search on an empty database (``make run``)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        migrate(engine)
        app.state.store = Store(engine)
        app.state.dispatcher = app.state.scheduler = None
        if settings.run_dispatcher if dispatcher is None else dispatcher:
            app.state.dispatcher = Dispatcher(app.state.store, settings)
            app.state.dispatcher.start()
            app.state.scheduler = Scheduler(app.state.store)
            app.state.scheduler.start()
        if demo:
            threading.Thread(target=_demo, args=(settings, app.state.store), daemon=True).start()
        yield
        for worker in (app.state.scheduler, app.state.dispatcher):
            if worker is not None:
                worker.stop()
        engine.dispose()

    app = FastAPI(
        title="hwsearch",
        version="0.1",
        description="Hardware-aware search of per-layer ranks, pruning, bit widths and token keep rates.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    fronts = app.state.fronts = FrontCache()
    from .dashboard import ViewCache
    from .dashboard import router as dashboard

    app.state.views = ViewCache()
    app.include_router(dashboard)
    app.state.request_seconds = {}  # route → (count, total seconds), for /metrics

    @app.middleware("http")
    async def timing(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        key = getattr(route, "path", "unmatched")
        count, total = app.state.request_seconds.get(key, (0, 0.0))
        app.state.request_seconds[key] = (count + 1, total + time.perf_counter() - start)
        return response

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The field path, the message and the value, for every error (never the traceback).
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "input": _jsonable(e.get("input"))}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    # ---- jobs -------------------------------------------------------------------------------
    @app.post(f"{API}/jobs", status_code=201, response_model=JobOut, dependencies=[Write])
    def create_job(request: Request, spec: JobSpec, store: StoreDep) -> dict[str, Any]:
        _check_targets(request, spec, ("body",))
        return store.create_job(spec.model_dump(mode="json"))

    @app.get(f"{API}/jobs", response_model=JobPage, dependencies=[Read])
    def list_jobs(
        store: StoreDep,
        status_: Annotated[str | None, Query(alias="status", pattern=_STATUS_PATTERN)] = None,
        model: str | None = None,
        target: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    ) -> dict[str, Any]:
        items, total = store.list_jobs(status=status_, model=model, target=target, limit=limit, offset=offset)
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @app.get(f"{API}/jobs/{{job_id}}", response_model=JobOut, dependencies=[Read])
    def get_job(job_id: str, store: StoreDep) -> dict[str, Any]:
        return _job_or_404(store, job_id)

    @app.post(f"{API}/jobs/{{job_id}}/cancel", response_model=JobOut, dependencies=[Write])
    def cancel_job(job_id: str, store: StoreDep) -> dict[str, Any]:
        try:
            return store.request_cancel(job_id)
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}") from None

    @app.delete(f"{API}/jobs/{{job_id}}", status_code=204, dependencies=[Write])
    def delete_job(job_id: str, store: StoreDep) -> Response:
        try:
            store.delete_job(job_id)
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}") from None
        except Conflict as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return Response(status_code=204)

    # ---- results ------------------------------------------------------------------------------
    @app.get(f"{API}/jobs/{{job_id}}/trials", response_model=TrialPage, dependencies=[Read])
    def trials(
        job_id: str,
        store: StoreDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    ) -> dict[str, Any]:
        try:
            items, total = store.trials(job_id, limit=limit, offset=offset)
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id!r}") from None
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @app.get(f"{API}/jobs/{{job_id}}/trials/{{number}}/plan", dependencies=[Read])
    def trial_plan(job_id: str, number: TrialNumber, store: StoreDep) -> dict[str, Any]:
        try:
            plan: dict[str, Any] = store.trial(job_id, number)["plan"]
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no trial {number} in job {job_id!r}") from None
        return plan

    @app.get(f"{API}/jobs/{{job_id}}/trials/{{number}}/model", dependencies=[Read], response_model=None)
    async def trial_model(
        request: Request, job_id: str, number: TrialNumber, store: StoreDep
    ) -> FileResponse:
        """The compressed model of a trial as a zip (weights, plan, README), built on demand by a
        Ray worker and cached under the artifact directory."""
        job = _job_or_404(store, job_id)
        try:
            trial = store.trial(job_id, number)
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no trial {number} in job {job_id!r}") from None
        if trial.get("status") != "ok":
            raise HTTPException(status.HTTP_409_CONFLICT, f"trial {number} failed; it has no model")
        root = (request.app.state.settings.data_dir / "artifacts").resolve()
        path = (root / job["id"] / f"trial-{int(number)}.zip").resolve()
        if not path.is_relative_to(root):  # ids come from the database, but never trust a path
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such artifact")
        if not path.exists():
            try:
                await run_in_threadpool(_build_artifact, request.app.state.settings, job, trial, path)
            except Exception as exc:  # a stored plan that no longer builds: say why, not a bare 500
                raise HTTPException(
                    status.HTTP_500_INTERNAL_SERVER_ERROR, f"building the model failed: {type(exc).__name__}"
                ) from None
        return FileResponse(path, media_type="application/zip", filename=f"{job['id']}-trial-{number}.zip")

    @app.get(f"{API}/jobs/{{job_id}}/front", dependencies=[Read], response_model=None)
    def front(
        job_id: str,
        store: StoreDep,
        format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
    ) -> Any:
        job = _job_or_404(store, job_id)
        rows = fronts.get(store, job)
        if format == "csv":
            return PlainTextResponse(_front_csv(job, rows), media_type="text/csv")
        return {
            "job_id": job_id,
            "objectives": JobSpec.model_validate(job["spec"]).objectives,
            "targets": job["targets"],
            "hypervolume": job["hypervolume"],
            "front": rows,
        }

    # ---- schedules ----------------------------------------------------------------------------
    @app.post(f"{API}/schedules", status_code=201, dependencies=[Write])
    def create_schedule(request: Request, body: ScheduleIn, store: StoreDep) -> dict[str, Any]:
        _check_targets(request, body.spec, ("body", "spec"))
        return store.create_schedule(
            name=body.name,
            cron=body.cron,
            timezone=body.timezone,
            spec=body.spec.model_dump(mode="json"),
            enabled=body.enabled,
        )

    @app.get(f"{API}/schedules", dependencies=[Read])
    def list_schedules(store: StoreDep) -> list[dict[str, Any]]:
        return store.list_schedules()

    @app.get(f"{API}/schedules/{{schedule_id}}", dependencies=[Read])
    def get_schedule(schedule_id: str, store: StoreDep) -> dict[str, Any]:
        return _schedule_or_404(store, schedule_id)

    @app.patch(f"{API}/schedules/{{schedule_id}}", dependencies=[Write])
    def update_schedule(
        request: Request, schedule_id: str, body: ScheduleUpdate, store: StoreDep
    ) -> dict[str, Any]:
        changes = body.model_dump(exclude_unset=True, mode="json")
        if body.spec is not None:
            _check_targets(request, body.spec, ("body", "spec"))
        try:
            return store.update_schedule(schedule_id, changes)
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no schedule {schedule_id!r}") from None

    @app.delete(f"{API}/schedules/{{schedule_id}}", status_code=204, dependencies=[Write])
    def delete_schedule(schedule_id: str, store: StoreDep) -> Response:
        try:
            store.delete_schedule(schedule_id)
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no schedule {schedule_id!r}") from None
        return Response(status_code=204)

    # ---- targets and latency models --------------------------------------------------------------
    @app.get(f"{API}/targets", dependencies=[Read])
    def list_targets(request: Request) -> list[dict[str, Any]]:
        from latency_models import list_targets as names

        cat = _catalogue(request)
        return [_target_summary(cat.target(n)) for n in names()]

    @app.post(f"{API}/targets", status_code=201, dependencies=[Write])
    def create_target(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        """A target from the same JSON shape as latency_models/targets/*.json."""
        from latency_models import LatencyModelError, Target, list_targets

        cat = _catalogue(request)
        try:
            target = Target.from_dict(body)
        except LatencyModelError as exc:
            raise invalid(("body", str(exc.field)), str(exc), exc.value) from None
        if target.name in list_targets():
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"target {target.name!r} exists; choose another name"
            )
        return _target_summary(cat.add_target(target))

    @app.get(f"{API}/targets/{{name}}", dependencies=[Read])
    def get_target(request: Request, name: str) -> dict[str, Any]:
        target = _target_or_404(request, name)
        return {**_target_summary(target), "spec": target.to_dict()}

    @app.get(f"{API}/targets/{{name}}/predictors", dependencies=[Read])
    def predictors(request: Request, name: str) -> dict[str, Any]:
        target = _target_or_404(request, name)
        cat = _catalogue(request)
        versions = []
        for version in cat.versions(target.name):
            report_path = cat.root / "predictors" / target.name / version / "report.json"
            versions.append({"version": version, "report": json.loads(report_path.read_text())})
        return {"target": target.name, "active": cat.active_version(target.name), "versions": versions}

    @app.put(f"{API}/targets/{{name}}/predictors/active", dependencies=[Write])
    def activate(request: Request, name: str, body: ActivateIn) -> dict[str, Any]:
        from latency_models import LatencyModelError

        target = _target_or_404(request, name)
        try:
            _catalogue(request).activate(target.name, body.version)
        except LatencyModelError as exc:
            raise invalid(("body", "version"), str(exc), body.version) from None
        return {"target": target.name, "active": body.version}

    @app.post(f"{API}/targets/{{name}}/measurements", status_code=202, dependencies=[Write])
    async def upload_measurements(
        request: Request,
        name: str,
        store: StoreDep,
        family: Annotated[str | None, Query(pattern="^(gpu|cpu|mobile|fpga)$")] = None,
        kind: Annotated[str, Query(pattern="^(calibrated-prior|boosted-residual)$")] = "boosted-residual",
    ) -> dict[str, Any]:
        """Upload a measurement CSV (either documented format, as the request body); the table is
        checked now (422 naming row and column) and a new predictor version is fitted as a job:
        poll GET /fits/{id} for its validation report."""
        from latency_models import (
            LatencyModelError,
            list_targets,
            measurement_format,
            read_layer_measurements,
            read_network_measurements,
        )

        limit = request.app.state.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"uploads are limited to {limit} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE, f"uploads are limited to {limit} bytes"
                )
        _catalogue(request)  # registers user targets
        if name not in list_targets() and family is None:
            raise invalid(
                ("query", "family"), f"target {name!r} does not exist: give its family to create it", None
            )
        if not _SAFE_NAME.match(name):
            raise invalid(("path", "name"), "letters, digits, '.', '_' and '-' only", name)
        folder = request.app.state.settings.data_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        fit_id = uuid.uuid4().hex[:16]
        path = folder / f"{fit_id}.csv"
        path.write_bytes(body)
        try:
            reader = (
                read_layer_measurements if measurement_format(path) == "layer" else read_network_measurements
            )
            reader(path)
        except (LatencyModelError, UnicodeDecodeError) as exc:
            path.unlink(missing_ok=True)
            raise invalid(("body",), str(exc), None) from None
        fit = store.create_fit(fit_id=fit_id, target=name, family=family, kind=kind, csv_path=str(path))
        return _public_fit(fit)

    @app.get(f"{API}/fits/{{fit_id}}", dependencies=[Read])
    def get_fit(fit_id: str, store: StoreDep) -> dict[str, Any]:
        try:
            return _public_fit(store.get_fit(fit_id))
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no fit {fit_id!r}") from None

    # ---- operations ------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz(request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with request.app.state.store.engine.connect() as c:
                c.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        checks["ray"] = _ray_state(request.app.state.settings)
        healthy = checks["database"] == "ok" and not checks["ray"].startswith("error")
        return JSONResponse(
            {"status": "ok" if healthy else "error", **checks}, status_code=200 if healthy else 503
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(request: Request, store: StoreDep) -> str:
        lines = ["# HELP hwsearch_jobs Jobs by status.", "# TYPE hwsearch_jobs gauge"]
        with store.session() as s:
            counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            since = utcnow() - timedelta(seconds=60)
            recent = s.scalar(select(func.count()).where(TrialRow.created_at >= since))
        for name in JOB_STATUSES:
            lines.append(f'hwsearch_jobs{{status="{name}"}} {counts.get(name, 0)}')
        lines += [
            "# HELP hwsearch_queue_depth Jobs waiting for a dispatcher.",
            "# TYPE hwsearch_queue_depth gauge",
            f"hwsearch_queue_depth {counts.get('queued', 0)}",
            "# HELP hwsearch_trials_per_second Trials stored per second over the last minute.",
            "# TYPE hwsearch_trials_per_second gauge",
            f"hwsearch_trials_per_second {(recent or 0) / 60:.6g}",
            "# HELP hwsearch_request_seconds Time spent answering requests, by route.",
            "# TYPE hwsearch_request_seconds summary",
        ]
        for route, (count, total) in sorted(request.app.state.request_seconds.items()):
            lines.append(f'hwsearch_request_seconds_count{{route="{route}"}} {count}')
            lines.append(f'hwsearch_request_seconds_sum{{route="{route}"}} {total:.6g}')
        return "\n".join(lines) + "\n"

    return app


def _build_artifact(settings: Settings, job: dict[str, Any], trial: dict[str, Any], path: Path) -> None:
    import ray

    from workers.artifacts import export_compressed

    from .dispatcher import start_ray

    start_ray(settings.ray_address)
    task = ray.remote(num_cpus=1, max_retries=1)(export_compressed)
    ray.get(task.remote(job["model"], trial, str(path), job["id"]), timeout=600)


def _demo(settings: Settings, store: Store) -> None:
    from .demo import seed_demo

    try:
        seed_demo(settings, store)
    except Exception:  # the demo is a convenience; the service runs without it
        logging.getLogger("hwsearch.demo").exception("demo job not queued")


def _ray_state(settings: Settings) -> str:
    import sys

    if "ray" not in sys.modules:
        return "not started (starts with the first job)" if not settings.ray_address else "not connected yet"
    import ray

    try:
        return "ok" if ray.is_initialized() else "not started"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


class FrontCache:
    """Fronts derived from the trials, recomputed only when a job's trials changed.

    The key is (number of trials, newest trial row id, measurements stored): a new trial or a
    new measurement changes it, so a read never returns a front older than the trials. Without
    it, every read decoded every trial (2,000-trial job, 50 clients: 6.6 s median per read).

    While a job runs its key changes with every trial, and the jobs list polls: when only
    trials were added, the front is extended from the cached one and the new rows (the front
    of a union is the front of one part's front and the other part), not derived from every
    trial again (``Store.trials_added``; a new measurement or a row committed late reads
    everything).
    """

    def __init__(self, max_jobs: int = 256) -> None:
        self._cache: dict[str, tuple[tuple[int, int, int], list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self.max_jobs = max_jobs

    def get(
        self,
        store: Store,
        job: dict[str, Any],
        read: tuple[tuple[int, int, int], list[dict[str, Any]]] | None = None,
    ) -> list[dict[str, Any]]:
        """The front of ``job``. ``read`` is (trials version, all trials) that a caller just read,
        the version first, so the trials are at least as new as the key they are stored under."""
        key = store.trials_version(job["id"]) if read is None else read[0]
        with self._lock:
            hit = self._cache.get(job["id"])
        if hit is not None and hit[0] == key:
            return hit[1]
        added = store.trials_added(job["id"], hit[0], key) if read is None and hit is not None else None
        if hit is not None and added is not None:
            rows = front_of(job, sorted(hit[1] + added, key=lambda t: int(t["number"])))
        else:
            rows = front_of(job, store.trials(job["id"])[0] if read is None else read[1])
        with self._lock:
            if len(self._cache) >= self.max_jobs:
                self._cache.pop(next(iter(self._cache)))
            self._cache[job["id"]] = (key, rows)
        return rows


def front_of(job: dict[str, Any], trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated feasible trials, derived from the trials every time.

    Dominance does not change when an objective is scaled by a positive constant, so the
    raw quality and costs give the same front as the search's normalised objectives.
    """
    from workers.search import front_mask

    spec = JobSpec.model_validate(job["spec"]).model_dump()  # stored specs get today's defaults
    ok = [t for t in trials if t.get("feasible") and t.get("quality") is not None]
    if not ok:
        return []
    columns = []
    for t in ok:
        row = [-float(t["quality"])]
        for metric in spec["objectives"]:
            if metric == "quality":
                continue
            for target in [spec["targets"][0]] if metric == "weight_bytes" else spec["targets"]:
                value = t["costs"].get(target, {}).get(metric)
                row.append(float("inf") if value is None else float(value))
        columns.append(row)
    mask = front_mask(columns)
    front = [t for t, m in zip(ok, mask, strict=True) if m]
    return sorted(front, key=lambda t: -float(t["quality"]))


def _front_csv(job: dict[str, Any], rows: list[dict[str, Any]]) -> str:
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
                _plan_json(t["plan"]),
            ]
        )
    return out.getvalue()


def _plan_json(plan: dict[str, Any]) -> str:
    return json.dumps(plan, separators=(",", ":"))
