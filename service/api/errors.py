"""The API's exception handlers, each mapping one kind of error once for every route:

- ``store.NotFound`` → 404 and ``store.Conflict`` → 409, their message as the detail;
- ``search_spaces.InputError`` (bad input found by the library: a space, a target, a latency
  model, a search) → 422 in the shape of FastAPI's own request validation errors, which
  ``RequestValidationError`` keeps: ``{"detail": [{"loc", "msg", "input"}, ...]}``.

An input error is placed at ``("body", error.field)`` unless the route placed it with
``reported_at`` (a query or path parameter, or a field nested in the body).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from search_spaces import InputError

from ..store import Conflict, NotFound

_KEEP: Any = object()


class Invalid(InputError):
    """An input error at a known place of the request, a 422 like pydantic's: ``loc`` (the
    field's path as pydantic writes it), what is wrong, and the value given."""

    def __init__(self, loc: tuple[Any, ...], message: str, value: Any) -> None:
        self.loc = loc
        super().__init__(".".join(str(part) for part in loc), value, message)

    @staticmethod
    def _format(field: str, value: Any, hint: str) -> str:
        return hint  # the message as given: it already names what is wrong


@contextmanager
def reported_at(*loc: Any, value: Any = _KEEP) -> Iterator[None]:
    """Input errors raised inside are reported at ``loc`` of the request (with ``value`` as the
    input, when given, instead of the error's own value); one already placed keeps its place."""
    try:
        yield
    except Invalid:
        raise
    except InputError as exc:
        raise Invalid(loc, str(exc), exc.value if value is _KEEP else value) from None


#: A 422 echoes the refused input, cut to this size: a 200k-entry list or a 1 MB body must not
#: come back whole (nor be stored, e.g. as a job's error).
MAX_ECHO_ITEMS = 20
MAX_ECHO_CHARS = 200


def _jsonable(value: Any, depth: int = 0) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity: a refused one is echoed as 'nan' / 'inf'
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        cut = len(value) - MAX_ECHO_CHARS
        return value if cut <= 0 else f"{value[:MAX_ECHO_CHARS]}… ({cut} more characters)"
    if value is None or isinstance(value, (int, float, bool)):
        return value
    if depth >= 4:
        return "…"
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v, depth + 1) for v in value[:MAX_ECHO_ITEMS]]
        more = len(value) - MAX_ECHO_ITEMS
        return items + ([f"… ({more} more items)"] if more > 0 else [])
    if isinstance(value, dict):
        pairs = list(value.items())
        out = {str(k)[:MAX_ECHO_CHARS]: _jsonable(v, depth + 1) for k, v in pairs[:MAX_ECHO_ITEMS]}
        if len(pairs) > MAX_ECHO_ITEMS:
            out["…"] = f"{len(pairs) - MAX_ECHO_ITEMS} more keys"
        return out
    return _jsonable(repr(value), depth)


def _unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    # The field path, the message and the value, for every error (never the traceback).
    detail = [
        {
            "loc": list(e.get("loc", ()))[:20],
            "msg": str(e.get("msg", ""))[:2000],
            "input": _jsonable(e.get("input")),
        }
        for e in errors[:100]
    ]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def on_request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _unprocessable(list(exc.errors()))


async def on_input_error(_: Request, exc: InputError) -> JSONResponse:
    loc = exc.loc if isinstance(exc, Invalid) else ("body", exc.field)
    return _unprocessable([{"loc": loc, "msg": str(exc), "input": exc.value}])


async def on_not_found(_: Request, exc: NotFound) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)


async def on_conflict(_: Request, exc: Conflict) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)


#: What ``create_app`` registers: exception class → handler.
HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]] = {
    RequestValidationError: on_request_invalid,
    InputError: on_input_error,
    NotFound: on_not_found,
    Conflict: on_conflict,
}
