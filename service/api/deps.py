"""What the API's routes depend on: the store, the settings, the front cache, the latency
catalogue, and the token checks (``Write`` on every mutating route; ``Read`` on reads, open
unless ``HWSEARCH_READS_OPEN=false``). All of it lives on ``app.state``, set by ``create_app``."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from latency_models import Catalogue, LatencyModelError, Target, catalogue, list_targets
from workers.search import JobSpec

from ..fronts import FrontCache
from ..settings import Settings
from ..store import Store

M = TypeVar("M", bound=BaseModel)


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


def validated(cat: Catalogue, model: type[M], data: Any, loc: tuple[Any, ...] = ("body",)) -> M:
    """``data`` validated as ``model``, whose JobSpecs (the body itself or nested) must name
    targets of the service's catalogue: every error, an unknown target among them, in one 422
    placed under ``loc``. Routes take such bodies as ``Any`` because FastAPI's own validation
    cannot pass the catalogue in (a JobSpec alone cannot know the user targets)."""
    cat.load_targets()
    try:
        return model.model_validate(data, context={"targets": frozenset(list_targets())})
    except ValidationError as exc:
        errors = [{**e, "loc": (*loc, *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def job_spec_of(cat: Catalogue, data: Any, loc: tuple[Any, ...] = ("body",)) -> JobSpec:
    """``data`` validated as a JobSpec of the service's catalogue (see :func:`validated`)."""
    return validated(cat, JobSpec, data, loc)


#: The models of bodies validated with :func:`validated`, for the OpenAPI document's components.
BODY_MODELS: list[type[BaseModel]] = []


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` that documents a body validated with :func:`validated` as ``model``."""
    if model not in BODY_MODELS:
        BODY_MODELS.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def body_components() -> dict[str, Any]:
    """The JSON schemas of :data:`BODY_MODELS` (and the models they nest), by name, as
    ``#/components/schemas`` entries: FastAPI lists only the bodies it validates itself."""
    _, top = models_json_schema(
        [(m, "validation") for m in BODY_MODELS], ref_template="#/components/schemas/{model}"
    )
    defs: dict[str, Any] = top.get("$defs", {})
    return defs


def target_of(cat: Catalogue, name: str) -> Target:
    """The target a path names, with its active predictor version; 404 when there is none."""
    try:
        return cat.target(name)
    except LatencyModelError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no target {name!r}") from None
