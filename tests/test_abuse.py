"""Limits before work, and nothing exposed by default (issue 14, findings 4, 7 and 9), against
real servers: ``hwsearch serve`` in a subprocess where the server's memory is measured, else
the app served by uvicorn in this process.

- an unauthenticated 100 MB body is refused (401) without being read: the server's peak RSS
  grows by a few MB at most, with and without Content-Length, four at once;
- an authenticated body over its route's cap is refused (413) before it is parsed;
- a client over its rate gets 429 with Retry-After, guessing tokens spends its address's
  budget, a valid token has its own, and /healthz is never limited;
- every page and API answer carries the security headers; /docs loads Swagger UI from this
  site only (in chromium: no request leaves it, no CSP violation); /metrics needs a read token
  with HWSEARCH_METRICS_OPEN=false.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.db import make_engine, migrate
from service.middleware import CSP, RateLimiter
from service.settings import Settings
from service.store import Store

MIB = 1024 * 1024
SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": ["xeon-gold-6240"],
    "space": {"keep": [0.5, 0.75], "wbits": [4, 8]},
    "strategy": "random",
    "budget": {"evaluations": 6},
}
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
Serve = Callable[..., AbstractContextManager[str]]


def _chunks(total_bytes: int, chunk_bytes: int = MIB, fill: bytes = b"x") -> Iterator[bytes]:
    """``total_bytes`` of body, made as it is sent (the client never holds it whole)."""
    chunk = fill * chunk_bytes
    sent = 0
    while sent < total_bytes:
        piece = chunk[: min(chunk_bytes, total_bytes - sent)]
        sent += len(piece)
        yield piece


def _spec_chunks(total_bytes: int) -> Iterator[bytes]:
    """A JobSpec of about ``total_bytes`` JSON: 50k-style ``include`` strings in its space."""
    head = json.dumps({**SPEC, "space": {**SPEC["space"], "include": ["x"]}}).encode()
    before, after = head.split(b'["x"]')
    yield before + b'["conv0"'
    pattern = b',"' + b"conv" * 250 + b'"'  # ~1 kB per include string
    sent = len(before)
    while sent < total_bytes:
        yield pattern * 64
        sent += len(pattern) * 64
    yield b"]" + after


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status memory field (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class Peak:
    """The server's peak RSS growth over a block: its high-water mark reset to its RSS at the
    start (/proc/PID/clear_refs 5), read at the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.growth_bytes = 0

    def __enter__(self) -> Peak:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.start_bytes = _status(self.pid, "VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth_bytes = _status(self.pid, "VmHWM") - self.start_bytes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``hwsearch serve`` in a subprocess (no dispatcher): its URL, pid and a write token."""
    tmp = tmp_path_factory.mktemp("abuse")
    db = f"sqlite:///{tmp / 'hwsearch.db'}"
    engine = make_engine(db)
    migrate(engine)
    token = Store(engine).create_token("abuse")
    engine.dispose()
    port = _free_port()
    env = {
        **os.environ,
        "HWSEARCH_DATA_DIR": str(tmp),
        "DATABASE_URL": db,
        "HWSEARCH_DISPATCHER": "false",
        "HWSEARCH_MAX_BODY_BYTES": str(64 * 1024),
        "HWSEARCH_MAX_UPLOAD_BYTES": str(MIB),
        "HWSEARCH_RATE_LIMIT": "100000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"hwsearch serve did not start: {proc.communicate()[1].decode()[-3000:]}")
        time.sleep(0.2)
    # Warm up what a request touches (routes, the store, JSON encoding) before measuring.
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        httpx.get(f"{url}/api/v1/jobs", timeout=10)
        httpx.post(f"{url}/api/v1/jobs", json=SPEC, timeout=10)
        httpx.post(f"{url}/api/v1/jobs", content=b"x" * 100_000, headers=auth, timeout=10)
    yield {"url": url, "pid": proc.pid, "token": token}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _post(url: str, body: Iterator[bytes], headers: dict[str, str]) -> httpx.Response:
    """POST a streamed body; the server may answer before it has all of it."""
    with httpx.Client(timeout=120) as client:
        return client.post(url, content=body, headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_unauthenticated_100_mb_body_is_refused_unread(server: dict[str, Any], declared: bool) -> None:
    size = 100 * MIB
    headers = {"Content-Length": str(size)} if declared else {}
    with Peak(server["pid"]) as peak:
        r = _post(f"{server['url']}/api/v1/jobs", _chunks(size), headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert "token" in r.json()["detail"]
    assert peak.growth_bytes < 8 * MIB, f"the server's RSS peaked {peak.growth_bytes / MIB:.1f} MB higher"


def test_four_concurrent_unauthenticated_100_mb_bodies_leave_memory_flat(server: dict[str, Any]) -> None:
    # The finding: four of these took the server from 0.5 to 1.5 GB.
    codes: list[int] = []
    with Peak(server["pid"]) as peak:
        threads = [
            threading.Thread(
                target=lambda: codes.append(
                    _post(f"{server['url']}/api/v1/schedules", _chunks(100 * MIB), {}).status_code
                )
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == [401] * 4
    assert peak.growth_bytes < 8 * MIB, f"the server's RSS peaked {peak.growth_bytes / MIB:.1f} MB higher"


def test_a_bad_token_is_refused_before_the_body_too(server: dict[str, Any]) -> None:
    for auth in ("Bearer not-a-token", "Basic dXNlcjpwYXNz"):
        r = _post(f"{server['url']}/api/v1/jobs", _chunks(10 * MIB), {"Authorization": auth})
        assert r.status_code == 401, r.text


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_50_mb_spec_is_refused_before_it_is_parsed(server: dict[str, Any], declared: bool) -> None:
    body = b"".join(_spec_chunks(50 * MIB))
    assert len(body) > 50 * MIB
    json.loads(body)  # a valid spec: only its size is wrong
    headers = {"Authorization": f"Bearer {server['token']}"}
    jobs_before = httpx.get(f"{server['url']}/api/v1/jobs", timeout=10).json()["total"]
    if declared:
        headers["Content-Length"] = str(len(body))

    def stream() -> Iterator[bytes]:
        for i in range(0, len(body), MIB):
            yield body[i : i + MIB]

    with Peak(server["pid"]) as peak:
        r = _post(f"{server['url']}/api/v1/jobs", stream(), headers)
    assert r.status_code == 413, r.text
    assert "65536 bytes" in r.json()["detail"] and "HWSEARCH_MAX_BODY_BYTES" in r.json()["detail"]
    assert peak.growth_bytes < 8 * MIB, f"the server's RSS peaked {peak.growth_bytes / MIB:.1f} MB higher"
    assert httpx.get(f"{server['url']}/api/v1/jobs", timeout=10).json()["total"] == jobs_before


def test_a_body_just_over_the_cap_is_413_and_one_under_it_is_read(server: dict[str, Any]) -> None:
    auth = {"Authorization": f"Bearer {server['token']}", "Content-Type": "application/json"}
    padded = json.dumps({**SPEC, "name": "x"}).encode()
    over = padded + b" " * (64 * 1024 + 1 - len(padded))
    r = httpx.post(f"{server['url']}/api/v1/jobs", content=over, headers=auth, timeout=10)
    assert r.status_code == 413, r.text
    under = padded + b" " * (64 * 1024 - len(padded))
    r = httpx.post(f"{server['url']}/api/v1/jobs", content=under, headers=auth, timeout=10)
    assert r.status_code != 413  # read and validated (the name field is unknown: 422, or 201)
    # The dashboard's log-in form is capped as well (no token needed to reach it).
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = httpx.post(f"{server['url']}/login", content=b"token=" + b"x" * 64 * 1024, headers=form, timeout=10)
    assert r.status_code == 413, r.text
    # Measurement uploads have their own, larger cap (1 MiB here): 200 kB is read and checked.
    r = httpx.post(
        f"{server['url']}/api/v1/targets/xeon-gold-6240/measurements",
        content=b"not,a,measurement,table\n" * 8000,
        headers={"Authorization": f"Bearer {server['token']}"},
        timeout=30,
    )
    assert r.status_code == 422, r.text
    r = _post(
        f"{server['url']}/api/v1/targets/xeon-gold-6240/measurements",
        _chunks(2 * MIB),
        {"Authorization": f"Bearer {server['token']}"},
    )
    assert r.status_code == 413 and f"{MIB} bytes" in r.json()["detail"], r.text


@contextmanager
def _app(serve: Serve, tmp_path: Path, **env: str) -> Iterator[tuple[str, Any]]:
    settings = Settings.from_env(
        {"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'hwsearch.db'}", **env}
    )
    app = create_app(settings, dispatcher=False)
    with serve(app) as url:
        yield url, app


def _burst(client: httpx.Client, n: int, headers: dict[str, str]) -> list[int]:
    """The statuses of ``n`` GET /api/v1/jobs sent back to back; at 20 a minute one request
    refills every 3 s, so a burst that took longer would see one more through."""
    start_s = time.monotonic()
    codes = [client.get("/api/v1/jobs", headers=headers).status_code for _ in range(n)]
    if time.monotonic() - start_s > 2.5:
        pytest.fail(f"{n} requests took {time.monotonic() - start_s:.1f} s: too slow to check a 20/min limit")
    return codes


def test_a_client_over_its_rate_gets_429_with_retry_after(serve: Serve, tmp_path: Path) -> None:
    with _app(serve, tmp_path, HWSEARCH_RATE_LIMIT="20") as (url, app), httpx.Client(base_url=url) as c:
        valid = app.state.store.create_token("ok")
        # A token not seen valid yet is counted against its address (so is a guess): 1 of 20.
        assert c.get("/api/v1/jobs", headers={"Authorization": f"Bearer {valid}"}).status_code == 200
        bad = {"Authorization": "Bearer guessed"}
        codes = _burst(c, 25, bad)
        assert codes[:19] == [200] * 19 and codes[19:] == [429] * 6
        r = c.get("/api/v1/jobs", headers=bad)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 3  # 20 a minute: one per 3 s
        assert "20 a minute" in r.json()["detail"]
        assert r.headers["x-content-type-options"] == "nosniff"  # the 429 carries the headers too
        # Guessing a new token each time spends the same budget (the address's), and a write
        # with no token at all as well: a 429 says nothing about whether a guess was right.
        assert c.get("/api/v1/jobs", headers={"Authorization": "Bearer guess-2"}).status_code == 429
        assert c.post("/api/v1/jobs", json=SPEC).status_code == 429
        # The load balancer's probe is never limited.
        assert all(c.get("/healthz").status_code == 200 for _ in range(30))
        # A token seen valid has its own bucket, untouched by the guesses from its address.
        auth = {"Authorization": f"Bearer {valid}"}
        codes = _burst(c, 21, auth)
        assert codes[:20] == [200] * 20 and codes[20] == 429
        # Waiting as told lets one more through.
        time.sleep(int(c.get("/api/v1/jobs", headers=auth).headers["retry-after"]))
        assert c.get("/api/v1/jobs", headers=auth).status_code == 200


def test_the_rate_limiter_refills_and_forgets_idle_clients() -> None:
    limiter = RateLimiter(60, max_keys=3)  # one a second
    assert [limiter.take("a", now_s=0.0) for _ in range(60)] == [0.0] * 60
    assert limiter.take("a", now_s=0.0) == pytest.approx(1.0)
    assert limiter.take("a", now_s=0.5) == pytest.approx(0.5)
    assert limiter.take("a", now_s=1.0) == 0.0
    for key in "bcde":  # more keys than kept: the longest idle goes first
        limiter.take(key, now_s=2.0)
    assert len(limiter._buckets) == 3 and "a" not in limiter._buckets


PAGES = ["/jobs", "/targets", "/schedules", "/submit", "/docs", "/api/v1/jobs", "/openapi.json", "/healthz"]


def test_every_page_and_answer_carries_the_security_headers(serve: Serve, tmp_path: Path) -> None:
    with _app(serve, tmp_path) as (url, _), httpx.Client(base_url=url) as c:
        answers = {path: c.get(path) for path in PAGES}
        answers["POST /api/v1/jobs (no token)"] = c.post("/api/v1/jobs", json=SPEC)
        answers["/api/v1/jobs/none (404)"] = c.get("/api/v1/jobs/none")
        answers["swagger js"] = c.get("/static/swagger/swagger-ui-bundle.js")
        for name, r in answers.items():
            assert r.status_code in (200, 401, 404), (name, r.status_code)
            missing = {k: v for k, v in HEADERS.items() if r.headers.get(k) != v}
            assert not missing, (name, missing)
        assert "frame-ancestors 'none'" in CSP and "unsafe-eval" not in CSP


def test_docs_load_from_this_site_only(serve: Serve, tmp_path: Path) -> None:
    with _app(serve, tmp_path) as (url, _), httpx.Client(base_url=url) as c:
        html = c.get("/docs").text
        assert re.findall(r"https?://[^\s\"'<>]+", html) == []
        assets = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", html)
        assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
        for asset in assets:
            assert asset.startswith("/static/swagger/"), asset
            assert c.get(asset).status_code == 200, asset
        if not Path(CHROMIUM).exists():
            pytest.skip(f"no chromium at {CHROMIUM}: the in-browser half of this check did not run")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            errors: list[str] = []
            requested: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requested.append(r.url))
            page.goto(url + "/docs", wait_until="networkidle")
            page.wait_for_selector(".opblock", timeout=20_000)  # Swagger UI drew the operations
            operations = page.locator(".opblock").count()
            browser.close()
        assert errors == []
        assert operations >= 10
        assert [u for u in requested if not u.startswith(url)] == []


def test_metrics_need_a_read_token_when_closed(serve: Serve, tmp_path: Path) -> None:
    with _app(serve, tmp_path, HWSEARCH_METRICS_OPEN="false") as (url, app):
        r = httpx.get(f"{url}/metrics")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        app.state.store.create_token("admin")  # the first token is an admin
        token = app.state.store.create_token("reader", scopes=frozenset({"read"}))
        r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "hwsearch_queue_depth" in r.text
    with _app(serve, tmp_path / "open") as (url, _):
        assert httpx.get(f"{url}/metrics").status_code == 200  # open by default, as reads are
