"""Limits before work, and the headers every response carries: pure ASGI middlewares that
``create_app`` installs around the app (outermost first):

- :class:`SecurityHeaders`: a Content-Security-Policy, ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer`` and ``X-Frame-Options: DENY`` on every response;
- :class:`RateLimit`: a token bucket per client (the token's SHA-256, else the client's address),
  ``rate_limit_per_minute`` a minute with a burst of as many; beyond it a 429 with Retry-After.
  ``/healthz`` is exempt (load balancers poll it);
- :class:`BodyGuard`: a request with a body method under ``/api/v1`` needs a valid token before
  one byte of its body is read (401 otherwise), and every body is capped per route (413):
  ``max_upload_bytes`` for measurement uploads, ``max_dataset_bytes`` for dataset uploads,
  ``max_body_bytes`` for everything else, by
  Content-Length at once or, for a chunked body, as it streams.

Why middlewares and not dependencies: FastAPI reads and parses a request's body before it runs
the route's dependencies, so a token check in a dependency comes after the memory is spent.
Why pure ASGI: Starlette's ``BaseHTTPMiddleware`` wraps ``receive`` and ``send`` in ways that
make counting a streamed body or answering before reading it awkward.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException, status
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api.deps import presented_token
from .auth import Principal
from .settings import Settings

__all__ = ["CSP", "BodyGuard", "BodyTooLarge", "RateLimit", "RateLimiter", "SecurityHeaders", "install"]

#: The pages' Content-Security-Policy. The dashboard's templates and the /docs page use inline
#: <script> and <style> (and plotly.js and Swagger UI inject styles), hence 'unsafe-inline';
#: everything is loaded from the site itself; no framing, no <base>, no plugins, forms post home.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
    ]
)
_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_API = "/api/v1/"
_UPLOAD = re.compile(r"^/api/v1/targets/[^/]+/measurements/?$")
_DATASET_UPLOAD = re.compile(r"^/api/v1/datasets/?$")
#: Paths no rate limit applies to.
EXEMPT = frozenset({"/healthz"})
_NO_TOKEN = (
    "a valid API token is required: send 'Authorization: Bearer <token>' "
    "(create one with `hwsearch token create`)"
)


class SecurityHeaders:
    """Adds the security headers (:data:`CSP` and the others) to every response that does not
    set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in _HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RateLimiter:
    """Token buckets by key: each holds up to ``per_minute`` requests and refills at
    ``per_minute / 60`` a second. In-process: each replica of the service counts on its own.

    Buckets idle for a minute are full again and are forgotten, and at most ``max_keys`` are
    kept (the longest idle go first), so random keys cannot grow memory without bound.
    """

    def __init__(self, per_minute: int, *, max_keys: int = 100_000) -> None:
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.max_keys = max_keys
        # key → (tokens left, monotonic time of the last update), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now_s: float | None = None) -> float:
        """Takes one request from ``key``'s bucket: 0 if it had one, else the seconds until it
        has (nothing is taken then)."""
        now_s = time.monotonic() if now_s is None else now_s
        tokens, last_s = self._buckets.pop(key, (self.capacity, now_s))
        tokens = min(self.capacity, tokens + (now_s - last_s) * self.refill_per_s)
        wait_s = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait_s = (1.0 - tokens) / self.refill_per_s
        self._buckets[key] = (tokens, now_s)
        self._forget_idle(now_s)
        return wait_s

    def _forget_idle(self, now_s: float) -> None:
        full_after_s = self.capacity / self.refill_per_s  # 60 s: an idle bucket is full again
        while self._buckets:
            key, (_, last_s) = next(iter(self._buckets.items()))
            if now_s - last_s < full_after_s and len(self._buckets) <= self.max_keys:
                break
            del self._buckets[key]


async def _principal(scope: Scope) -> Principal | None:
    """The principal of the token the request presents (None: none, or not valid), resolved
    off the event loop and kept in ``scope["principal"]``, where ``deps.caller`` finds it."""
    if "principal" not in scope:
        token = presented_token(Request(scope))
        store = scope["app"].state.store
        scope["principal"] = None if token is None else await run_in_threadpool(store.principal, token)
    principal: Principal | None = scope["principal"]
    return principal


def _json(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


class RateLimit:
    """At most ``settings.rate_limit_per_minute`` requests a minute per client (429 beyond).

    A request is counted against its token's bucket when it carries a token that was valid
    before, and against its address's bucket otherwise: no token, or one this process has not
    seen valid. Guessing tokens therefore spends the address's bucket whether the guess is
    right or not (a 429 reveals nothing), while clients with valid tokens behind one address
    (a proxy, a NAT) each have their own bucket.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.per_minute = settings.rate_limit_per_minute
        self.limiter = RateLimiter(self.per_minute)
        # SHA-256s of tokens seen valid (most recent last), so they are counted by token
        self._known: OrderedDict[str, None] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        token = presented_token(Request(scope))
        digest = None if token is None else hashlib.sha256(token.encode()).hexdigest()
        if digest is not None and digest in self._known:
            self._known.move_to_end(digest)
            wait_s, per = self.limiter.take("token:" + digest), "token"
        else:
            client = scope.get("client")
            address = client[0] if client else "unknown"
            wait_s, per = self.limiter.take("address:" + address), "address without a valid token"
            if not wait_s and digest is not None and await _principal(scope) is not None:
                self._remember(digest)
        if wait_s:
            retry_s = max(1, math.ceil(wait_s))
            detail = f"too many requests: at most {self.per_minute} a minute per {per}; retry in {retry_s} s"
            await _json(status.HTTP_429_TOO_MANY_REQUESTS, detail, {"Retry-After": str(retry_s)})(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)

    def _remember(self, digest: str) -> None:
        self._known[digest] = None
        if len(self._known) > self.limiter.max_keys:
            self._known.popitem(last=False)


class BodyTooLarge(HTTPException):
    """A request body over its route's cap (413), raised from ``receive`` as the body streams:
    FastAPI passes an HTTPException raised while it reads a body on to its handler."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the request body is over this route's limit of {limit_bytes} bytes "
            "(HWSEARCH_MAX_UPLOAD_BYTES for measurement uploads, HWSEARCH_MAX_DATASET_BYTES for "
            "dataset uploads, HWSEARCH_MAX_BODY_BYTES otherwise)",
        )


class BodyGuard:
    """Token before body for mutating API requests (401), and a body-size cap per route (413)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_body_bytes = settings.max_body_bytes
        self.max_upload_bytes = settings.max_upload_bytes
        self.max_dataset_bytes = settings.max_dataset_bytes

    def limit_bytes(self, method: str, path: str) -> int:
        """The largest body ``method path`` may carry."""
        if method == "POST" and _UPLOAD.match(path):
            return self.max_upload_bytes
        if method == "POST" and _DATASET_UPLOAD.match(path):
            return self.max_dataset_bytes
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method in _BODY_METHODS and path.startswith(_API) and await _principal(scope) is None:
            response = _json(status.HTTP_401_UNAUTHORIZED, _NO_TOKEN, {"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)  # the body is never read
            return
        limit = self.limit_bytes(method, path)
        declared = _content_length(scope["headers"])
        if declared is not None and declared > limit:
            too_large = BodyTooLarge(limit)
            await _json(too_large.status_code, too_large.detail)(scope, receive, send)
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except BodyTooLarge as exc:  # read by a part of the app that does not handle it
            if started:
                raise
            await _json(exc.status_code, exc.detail)(scope, receive, send)


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


def install(app: Any, settings: Settings) -> None:
    """Adds the middlewares to ``app`` (a FastAPI app): headers outermost, so the 401, 413 and
    429 answers carry them too, then the rate limit, then the token and size checks.

    Call it before adding any ``BaseHTTPMiddleware`` (``@app.middleware("http")``): those wrap
    ``receive`` in a task group, which turns the 413 raised while FastAPI reads a chunked body
    into an exception group that FastAPI answers with a 400.
    """
    app.add_middleware(BodyGuard, settings=settings)
    app.add_middleware(RateLimit, settings=settings)
    app.add_middleware(SecurityHeaders)
