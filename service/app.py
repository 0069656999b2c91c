"""The FastAPI application: the REST API under /api/v1 (service/api/), /healthz and /metrics,
and the dashboard (service/dashboard.py).

Routes are thin: validation is the JobSpec's (422 names the field), storage is ``Store``'s,
searches run in the dispatcher's own process (service/supervisor.py), never in a request.
Mutating endpoints need ``Authorization: Bearer <token>`` (tokens are stored hashed); reads are
open unless ``HWSEARCH_READS_OPEN=false``. Importing this module pulls in neither torch nor ray.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .api import agents, datasets, errors, jobs, models, ops, schedules, targets
from .api.deps import body_components
from .dashboard import LoginRequired, on_login_required
from .dashboard import router as dashboard
from .db import make_engine, migrate
from .fronts import FrontCache, ViewCache
from .middleware import install as install_limits
from .scheduler import Scheduler
from .settings import Settings
from .store import Store
from .supervisor import DispatcherProcess


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
            app.state.dispatcher = DispatcherProcess(app.state.store, settings)
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
        docs_url=None,  # /docs is served below from the installed package, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.fronts = FrontCache()
    app.state.views = ViewCache()
    app.state.request_seconds = {}  # route → (count, total seconds), for /metrics

    # Headers, rate limit, token before body, body caps; added first, so they run inside the
    # timing middleware, whose receive (a task group) would wrap a 413 raised while FastAPI reads.
    install_limits(app, settings)

    @app.middleware("http")
    async def timing(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        key = getattr(route, "path", "unmatched")
        count, total = app.state.request_seconds.get(key, (0, 0.0))
        app.state.request_seconds[key] = (count + 1, total + time.perf_counter() - start)
        return response

    _api_docs(app)
    for exc_class, handler in errors.HANDLERS.items():
        app.exception_handler(exc_class)(handler)
    app.exception_handler(LoginRequired)(on_login_required)  # pages with reads closed: 401 + log-in form
    for router in (
        dashboard,
        jobs.router,
        schedules.router,
        targets.router,
        models.router,
        datasets.router,
        agents.router,
        ops.router,
    ):
        app.include_router(router)

    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = fastapi_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(body_components())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _api_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from the files the fastapi-offline package ships (no CDN: it loads
    offline, and the CSP allows only this site)."""
    import fastapi_offline

    folder = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/static/swagger", StaticFiles(directory=folder), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}/static/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/static/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/swagger/favicon.png",
            oauth2_redirect_url=None,
            # The validator badge would send the schema to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )


def _demo(settings: Settings, store: Store) -> None:
    from .demo import seed_demo

    try:
        seed_demo(settings, store)
    except Exception:  # the demo is a convenience; the service runs without it
        logging.getLogger("hwsearch.demo").exception("demo job not queued")
