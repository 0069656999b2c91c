"""What the API's routes depend on: the store, the settings, the front cache, the latency
catalogue, and who is calling (service/auth.py: ``Write`` on every mutating route, ``Read`` on
reads, open unless ``HWSEARCH_READS_OPEN=false``; ``check_may_change`` before changing an owned
object). All of it lives on ``app.state``, set by ``create_app``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from latency_models import Catalogue, LatencyModelError, Target, catalogue, list_targets
from workers.search import JobSpec

from ..auth import COOKIE, Principal, may_change
from ..fronts import FrontCache
from ..settings import Settings
from ..store import NotFound, Store
from .errors import Invalid

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


def presented_token(request: Request) -> str | None:
    """The token a request carries: its Bearer header, else the dashboard's login cookie.

    The cookie is HttpOnly and SameSite=Strict, so a browser sends it only from this site's own
    pages; a cookie-carried request whose Origin names another site is refused all the same
    (defence in depth against cross-site writes).
    """
    token = _bearer(request)
    if token is not None:
        return token
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
        return None
    return cookie


def caller(request: Request) -> Principal | None:
    """Who sent the request (None: no valid token), resolved once per request."""
    if "principal" not in request.scope:
        token = presented_token(request)
        request.scope["principal"] = None if token is None else get_store(request).principal(token)
    principal: Principal | None = request.scope["principal"]
    return principal


CallerDep = Annotated[Principal | None, Depends(caller)]

_NO_TOKEN = (
    "a valid API token is required: send 'Authorization: Bearer <token>' "
    "(create one with `hwsearch token create`)"
)


def require_scope(request: Request, scope: str) -> Principal:
    """The caller, who must hold ``scope``: 401 without a valid token, 403 without the scope."""
    principal = caller(request)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, _NO_TOKEN, headers={"WWW-Authenticate": "Bearer"})
    if not principal.has(scope):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this token of {principal.owner!r} has the scopes {', '.join(sorted(principal.scopes))}; "
            f"this needs {scope!r} (create a token with `hwsearch token create --scopes ...`)",
        )
    return principal


def require_write(request: Request) -> Principal:
    return require_scope(request, "write")


def require_read(request: Request) -> Principal | None:
    if get_settings(request).reads_open:
        return caller(request)
    return require_scope(request, "read")


def require_admin(request: Request) -> Principal:
    return require_scope(request, "admin")


Write = Depends(require_write)
Read = Depends(require_read)
#: The caller of a mutating route (a write token).
Writer = Annotated[Principal, Depends(require_write)]


def check_may_change(principal: Principal, owner: str | None, what: str) -> None:
    """403 unless ``principal`` may change an object of ``owner`` (``what`` names it)."""
    if not may_change(principal, owner):
        whose = "nobody's (made before owners existed)" if owner is None else f"{owner!r}'s"
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{what} is {whose}; a token of {principal.owner!r} changes only its own "
            "(an admin token changes any)",
        )


def validation_context(cat: Catalogue, settings: Settings) -> dict[str, Any]:
    """What a JobSpec is validated against in the service: the catalogue's targets, the
    packages import paths may name (HWSEARCH_MODEL_MODULES) and the folders paths may lie in
    (HWSEARCH_FILE_ROOTS)."""
    cat.load_targets()
    return {
        "targets": frozenset(list_targets()),
        "model_modules": frozenset(settings.model_modules),
        "file_roots": tuple(settings.file_roots),
    }


def validated(
    cat: Catalogue, settings: Settings, model: type[M], data: Any, loc: tuple[Any, ...] = ("body",)
) -> M:
    """``data`` validated as ``model``, whose JobSpecs (the body itself or nested) must name
    targets of the service's catalogue, and only the import paths and files its settings allow
    (:func:`validation_context`): every error, an unknown target among them, in one 422 placed
    under ``loc``. Routes take such bodies as ``Any`` because FastAPI's own validation cannot
    pass the context in (a JobSpec alone cannot know the user targets)."""
    try:
        return model.model_validate(data, context=validation_context(cat, settings))
    except ValidationError as exc:
        errors = [{**e, "loc": (*loc, *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def job_spec_of(cat: Catalogue, settings: Settings, data: Any, loc: tuple[Any, ...] = ("body",)) -> JobSpec:
    """``data`` validated as a JobSpec of the service's catalogue (see :func:`validated`)."""
    return validated(cat, settings, JobSpec, data, loc)


def check_dataset(store: Store, spec: JobSpec | None, loc: tuple[Any, ...] = ("body",)) -> None:
    """A 422 at ``loc + ("data", "dataset")`` when ``spec`` names a registered dataset that does
    not exist (any owner's may be used: reads are shared, as jobs are)."""
    if spec is None or spec.data is None or spec.data.dataset is None:
        return
    try:
        store.get_dataset(spec.data.dataset)
    except NotFound:
        raise Invalid(
            (*loc, "data", "dataset"),
            f"no registered dataset {spec.data.dataset!r}; upload one with POST /api/v1/datasets "
            "(`hwsearch dataset add`) and use its id (GET /api/v1/datasets lists them)",
            spec.data.dataset,
        ) from None


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


def uploads_folder(settings: Settings) -> Path:
    """The uploads folder, the owner's only (0700; one made by an older version is narrowed)."""
    folder = settings.data_dir / "uploads"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)
    return folder


def check_declared_size(request: Request, limit: int, setting: str) -> None:
    """413 at once when the request's Content-Length is over ``limit`` (``setting`` names it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"uploads are limited to {limit} bytes ({setting})"
        )


async def receive_to_file(request: Request, path: Path, limit: int, setting: str) -> int:
    """Stream the request's body to a new private file ``path`` (0600; it must not exist) and
    return its size; 413 as soon as it passes ``limit`` bytes (``setting`` names the cap). On
    any error, the client going away included, the file is removed."""
    check_declared_size(request, limit, setting)
    out = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
    try:
        with out:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE, f"uploads are limited to {limit} bytes ({setting})"
                    )
                out.write(chunk)  # to the page cache: microseconds a chunk
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return size


def target_of(cat: Catalogue, name: str) -> Target:
    """The target a path names, with its active predictor version; 404 when there is none."""
    try:
        return cat.target(name)
    except LatencyModelError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no target {name!r}") from None
