"""Operations: /healthz (database, Ray, and what the demo is doing) and /metrics (Prometheus
text; a read token unless ``HWSEARCH_METRICS_OPEN``), read through ``Store``."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ..db import JOB_STATUSES, utcnow
from ..demo import activity as demo_activity
from ..settings import Settings
from ..store import Store
from .deps import SettingsDep, StoreDep, require_scope

router = APIRouter()

#: The window /metrics reports trials per second over.
TRIALS_WINDOW_S = 60


@router.get("/healthz")
def healthz(request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    """200 when every part answers, else 503 naming the part that does not: the database (a
    round trip), Ray (a task round trip, once it was started, as this replica's dispatcher
    process last saw it), and that process (alive, reporting, its loops ran recently)."""
    checks = _checks(request, store, settings)
    healthy = not any(v.startswith("error") for v in checks.values())
    body = {"status": "ok" if healthy else "error", **checks}
    busy = demo_activity()  # e.g. the demo profiling this CPU before its job is queued
    if busy is not None:
        body["demo"] = busy
    return JSONResponse(body, status_code=200 if healthy else 503)


def _checks(request: Request, store: Store, settings: Settings) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        store.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is None:  # this process holds no Ray connection; its dispatcher's process does
        checks["ray"] = "not used by this replica (it runs no dispatcher)"
    else:
        checks["ray"] = dispatcher.ray_state()
        checks["dispatcher"] = dispatcher.health()
    return checks


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, store: StoreDep, settings: SettingsDep) -> str:
    if not settings.metrics_open:  # HWSEARCH_METRICS_OPEN=false (the default with reads closed)
        require_scope(request, "read")
    lines = ["# HELP hwsearch_jobs Jobs by status.", "# TYPE hwsearch_jobs gauge"]
    counts = store.job_counts()
    recent = store.trials_since(utcnow() - timedelta(seconds=TRIALS_WINDOW_S))
    for name in JOB_STATUSES:
        lines.append(f'hwsearch_jobs{{status="{name}"}} {counts.get(name, 0)}')
    lines += [
        "# HELP hwsearch_queue_depth Jobs waiting for a dispatcher.",
        "# TYPE hwsearch_queue_depth gauge",
        f"hwsearch_queue_depth {counts.get('queued', 0)}",
        "# HELP hwsearch_trials_per_second Trials stored per second over the last minute.",
        "# TYPE hwsearch_trials_per_second gauge",
        f"hwsearch_trials_per_second {recent / TRIALS_WINDOW_S:.6g}",
        "# HELP hwsearch_request_seconds Time spent answering requests, by route.",
        "# TYPE hwsearch_request_seconds summary",
    ]
    lines += [
        "# HELP hwsearch_up Whether each part /healthz checks answers (1) or not (0).",
        "# TYPE hwsearch_up gauge",
    ]
    for part, state in _checks(request, store, settings).items():
        lines.append(f'hwsearch_up{{part="{part}"}} {0 if state.startswith("error") else 1}')
    # route → (count, total seconds), kept by create_app's timing middleware
    for route, (count, total) in sorted(request.app.state.request_seconds.items()):
        lines.append(f'hwsearch_request_seconds_count{{route="{route}"}} {count}')
        lines.append(f'hwsearch_request_seconds_sum{{route="{route}"}} {total:.6g}')
    return "\n".join(lines) + "\n"
