"""What the API's routes depend on: the store, the settings, the front cache, the latency
catalogue, and the token checks (``Write`` on every mutating route; ``Read`` on reads, open
unless ``HWSEARCH_READS_OPEN=false``). All of it lives on ``app.state``, set by ``create_app``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from latency_models import Catalogue, LatencyModelError, Target, catalogue, list_targets
from workers.search import JobSpec

from ..fronts import FrontCache
from ..settings import Settings
from ..store import Store
from .errors import reported_at


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_fronts(request: Request) -> FrontCache:
    fronts: FrontCache = request.app.state.fronts
    return fronts


def get_catalogue(request: Request) -> Catalogue:
    """The service's catalogue of targets and predictors (its user targets registered)."""
    return catalogue(get_settings(request).data_dir)


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
FrontsDep = Annotated[FrontCache, Depends(get_fronts)]
CatalogueDep = Annotated[Catalogue, Depends(get_catalogue)]


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
    if not get_settings(request).reads_open:
        require_token(request, store)


Write = Depends(require_token)
Read = Depends(require_read)


def job_spec_of(cat: Catalogue, data: Any, loc: tuple[Any, ...] = ("body",)) -> JobSpec:
    """``data`` validated as a JobSpec whose targets must be in the service's catalogue: every
    error of the spec, an unknown target among them, in one 422 placed under ``loc``."""
    cat.load_targets()
    try:
        return JobSpec.model_validate(data, context={"targets": frozenset(list_targets())})
    except ValidationError as exc:
        errors = [{**e, "loc": (*loc, *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def check_targets(cat: Catalogue, spec: JobSpec, loc: tuple[Any, ...]) -> None:
    """Every target of ``spec`` exists in the service's catalogue (a JobSpec alone cannot know
    the user targets): a 422 at ``(*loc, "targets", i)`` names the one that does not."""
    for i, name in enumerate(spec.targets):
        with reported_at(*loc, "targets", i):
            cat.target(name)


def target_of(cat: Catalogue, name: str) -> Target:
    """The target a path names, with its active predictor version; 404 when there is none."""
    try:
        return cat.target(name)
    except LatencyModelError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no target {name!r}") from None
