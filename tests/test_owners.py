"""Owners and scopes (issue 14): who may change what, one read policy for the API and the
dashboard, tokens that can be listed, revoked and expire, per-owner queue caps, truncated stored
errors, and the migration that keeps a single-token set-up working.

Against a real server (uvicorn on a free port, the `serve` fixture) on SQLite, and the
migration on PostgreSQL too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from databases import postgres_url
from typer.testing import CliRunner

from service.app import create_app
from service.auth import Principal, may_change, parse_expiry, parse_scopes
from service.db import ApiToken, make_engine, migrate
from service.settings import Settings
from service.store import Store

SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": ["xeon-gold-6240"],
    "space": {"wbits": [4, 8]},
    "strategy": "random",
    "budget": {"evaluations": 4},
}
SCHEDULE = {"name": "nightly", "cron": "0 2 * * *", "timezone": "UTC", "spec": SPEC}
PAGES = [
    "/jobs",
    "/jobs/{job}",
    "/jobs/{job}/view.json",
    "/compare?jobs={job}",
    "/targets",
    "/schedules",
    "/submit",
]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "HWSEARCH_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'hwsearch.db'}",
        **extra,
    }


@pytest.fixture()
def team(tmp_path: Path, serve: Any) -> Iterator[dict[str, Any]]:
    """A served app and three tokens: the first (admin), alice's and bob's (read, write), and a
    read-only one of carol."""
    app = create_app(Settings.from_env(_env(tmp_path, HWSEARCH_MAX_QUEUED_JOBS="3")), dispatcher=False)
    with serve(app) as url:
        store: Store = app.state.store
        tokens = {
            "admin": store.create_token("ops"),
            "alice": store.create_token("alice-laptop", owner="alice"),
            "bob": store.create_token("bob", owner="bob", scopes=frozenset({"read", "write"})),
            "carol": store.create_token("carol", owner="carol", scopes=frozenset({"read"})),
        }
        with httpx.Client(base_url=url, timeout=30) as client:
            yield {"url": url, "client": client, "store": store, "tokens": tokens, "app": app}


def test_scopes_and_owners_are_the_rules() -> None:
    admin = Principal(1, "ops", frozenset({"admin"}))
    alice = Principal(2, "alice", frozenset({"read", "write"}))
    reader = Principal(3, "alice", frozenset({"read"}))
    assert admin.has("read") and admin.has("write") and not alice.has("admin") and not reader.has("write")
    assert may_change(alice, "alice") and not may_change(alice, "bob") and not may_change(alice, None)
    assert may_change(admin, "bob") and may_change(admin, None)
    assert not may_change(reader, "alice") and not may_change(None, "alice")
    assert parse_scopes("read, write") == frozenset({"read", "write"})
    assert parse_expiry("30d") == timedelta(days=30) and parse_expiry("12h") == timedelta(hours=12)
    for bad in ("", "root", "read,sudo"):
        with pytest.raises(ValueError, match="scopes"):
            parse_scopes(bad)
    for bad in ("0d", "soon", "-3d", "1y"):
        with pytest.raises(ValueError, match="expires"):
            parse_expiry(bad)


def test_the_first_token_is_admin_and_later_ones_are_not(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    store = Store(engine)
    first, second = store.create_token("a"), store.create_token("b")
    p1, p2 = store.principal(first), store.principal(second)
    assert p1 is not None and p1.is_admin and p1.owner == "a"
    assert p2 is not None and not p2.is_admin and p2.scopes == frozenset({"read", "write"})
    assert store.principal("hws_not-a-token") is None


def test_another_owners_job_cannot_be_cancelled_or_deleted(team: dict[str, Any]) -> None:
    c, tok = team["client"], team["tokens"]
    job = c.post("/api/v1/jobs", json=SPEC, headers=_auth(tok["alice"])).json()
    assert job["owner"] == "alice"
    for method, path in [
        ("POST", f"/api/v1/jobs/{job['id']}/cancel"),
        ("DELETE", f"/api/v1/jobs/{job['id']}"),
    ]:
        r = c.request(method, path, headers=_auth(tok["bob"]))
        assert r.status_code == 403 and "'alice'" in r.json()["detail"], r.text
        r = c.request(method, path, headers=_auth(tok["carol"]))  # read-only: not even her own
        assert r.status_code == 403 and "write" in r.json()["detail"], r.text
    assert c.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "queued"  # nothing changed
    assert (
        c.post(f"/api/v1/jobs/{job['id']}/cancel", headers=_auth(tok["alice"])).json()["status"]
        == "cancelled"
    )
    other = c.post("/api/v1/jobs", json=SPEC, headers=_auth(tok["bob"])).json()
    # An admin changes anyone's.
    assert c.post(f"/api/v1/jobs/{other['id']}/cancel", headers=_auth(tok["admin"])).status_code == 200
    assert c.delete(f"/api/v1/jobs/{other['id']}", headers=_auth(tok["admin"])).status_code == 204
    # A read-only token cannot create.
    r = c.post("/api/v1/jobs", json=SPEC, headers=_auth(tok["carol"]))
    assert r.status_code == 403 and "'write'" in r.json()["detail"]


def test_schedules_are_their_owners(team: dict[str, Any]) -> None:
    c, tok, store = team["client"], team["tokens"], team["store"]
    sch = c.post("/api/v1/schedules", json=SCHEDULE, headers=_auth(tok["alice"])).json()
    assert sch["owner"] == "alice"
    assert (
        c.patch(
            f"/api/v1/schedules/{sch['id']}", json={"enabled": False}, headers=_auth(tok["bob"])
        ).status_code
        == 403
    )
    assert c.delete(f"/api/v1/schedules/{sch['id']}", headers=_auth(tok["bob"])).status_code == 403
    assert c.get(f"/api/v1/schedules/{sch['id']}").json()["enabled"] is True
    # Its firings are alice's jobs (so she, not bob, may cancel them).
    from datetime import datetime

    with store.session() as s:
        from service.db import Schedule

        s.get(Schedule, sch["id"]).next_run_at = datetime(2020, 1, 1)  # type: ignore[union-attr]
    (job_id,) = store.fire_due(datetime.now().astimezone())
    assert store.get_job(job_id)["owner"] == "alice"
    assert (
        c.patch(
            f"/api/v1/schedules/{sch['id']}", json={"enabled": False}, headers=_auth(tok["alice"])
        ).status_code
        == 200
    )


def _upload(c: httpx.Client, token: str, target: str) -> httpx.Response:
    # The ownership check comes before the table is read: any body shows it.
    return c.post(f"/api/v1/targets/{target}/measurements", content="a,b\n1,2\n", headers=_auth(token))


def test_shared_targets_need_admin_and_user_targets_their_owner(team: dict[str, Any]) -> None:
    c, tok, store = team["client"], team["tokens"], team["store"]
    # A built-in target is shared: neither its active predictor nor a new fit of it for a write token.
    r = c.put("/api/v1/targets/zcu102/predictors/active", json={"version": "v1"}, headers=_auth(tok["alice"]))
    assert r.status_code == 403 and "nobody's" in r.json()["detail"]
    r = _upload(c, tok["alice"], "zcu102")
    assert r.status_code == 403, r.text
    # Alice's own target: created through the API, hers.
    body = c.get("/api/v1/targets/xeon-gold-6240").json()["spec"] | {"name": "alice-box"}
    made = c.post("/api/v1/targets", json=body, headers=_auth(tok["alice"]))
    assert made.status_code == 201 and made.json()["owner"] == "alice", made.text
    assert c.get("/api/v1/targets/alice-box").json()["owner"] == "alice"
    assert store.target_owner("alice-box") == "alice" and store.target_owner("zcu102") is None
    r = c.put(
        "/api/v1/targets/alice-box/predictors/active", json={"version": "v1"}, headers=_auth(tok["bob"])
    )
    assert r.status_code == 403 and "'alice'" in r.json()["detail"]
    # Alice gets past the ownership check (to the version check: there is no such version).
    r = c.put(
        "/api/v1/targets/alice-box/predictors/active", json={"version": "v1"}, headers=_auth(tok["alice"])
    )
    assert r.status_code == 422, r.text


def test_revoked_and_expired_tokens_stop_working(team: dict[str, Any]) -> None:
    c, store = team["client"], team["store"]
    token = store.create_token("temp", owner="dave")
    assert c.post("/api/v1/jobs", json=SPEC, headers=_auth(token)).status_code == 201
    (row,) = [t for t in store.list_tokens() if t["owner"] == "dave"]
    assert row["active"] and row["last_used_at"] is not None and "token" not in row
    store.revoke_token(row["id"])
    r = c.post("/api/v1/jobs", json=SPEC, headers=_auth(token))
    assert r.status_code == 401
    expired = store.create_token("short", owner="erin", expires_in=timedelta(seconds=1))
    with store.session() as s:  # make it expire now rather than sleep
        s.execute(
            sa.update(ApiToken).where(ApiToken.owner == "erin").values(expires_at=sa.func.current_timestamp())
        )
    assert c.post("/api/v1/jobs", json=SPEC, headers=_auth(expired)).status_code == 401
    states = {t["owner"]: t["active"] for t in store.list_tokens()}
    assert states["dave"] is False and states["erin"] is False and states["alice"] is True


def test_an_owner_has_a_queue_cap(team: dict[str, Any]) -> None:
    c, tok = team["client"], team["tokens"]
    for _ in range(3):
        assert c.post("/api/v1/jobs", json=SPEC, headers=_auth(tok["bob"])).status_code == 201
    r = c.post("/api/v1/jobs", json=SPEC, headers=_auth(tok["bob"]))
    assert (
        r.status_code == 429 and r.headers["retry-after"].isdigit() and "HWSEARCH_MAX_QUEUED_JOBS" in r.text
    )
    # The cap is per owner: alice still can.
    assert c.post("/api/v1/jobs", json=SPEC, headers=_auth(tok["alice"])).status_code == 201


def test_stored_errors_are_truncated(team: dict[str, Any]) -> None:
    store = team["store"]
    job = store.create_job(SPEC, owner="alice")
    store.set_status(job["id"], "failed", error="x" * 100_000)
    error = store.get_job(job["id"])["error"]
    assert len(error) < 2100 and error.endswith("characters not stored)")
    listed = team["client"].get("/api/v1/jobs").text
    assert len(listed) < 20_000


def test_reads_closed_close_the_dashboard_too(tmp_path: Path, serve: Any) -> None:
    app = create_app(Settings.from_env(_env(tmp_path, HWSEARCH_READS_OPEN="false")), dispatcher=False)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        store: Store = app.state.store
        admin = store.create_token("ops")
        reader = store.create_token("viewer", owner="viewer", scopes=frozenset({"read"}))
        job = store.create_job(SPEC, owner="ops")
        for page in [*PAGES, "/api/v1/jobs", f"/api/v1/jobs/{job['id']}"]:
            path = page.format(job=job["id"])
            r = c.get(path)
            assert r.status_code == 401, (path, r.status_code)
            assert "digits-cnn" not in r.text, path  # none of the job's data, only the log-in form
            if not path.startswith("/api") and not path.endswith(".json"):
                assert 'action="/login"' in r.text, path
            assert c.get(path, headers=_auth(reader)).status_code == 200, path
        # The log-in form keeps the token in an HttpOnly, SameSite=Strict cookie.
        bad = c.post(
            "/login",
            content="token=hws_wrong&next=/jobs",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert bad.status_code == 401 and "not valid" in bad.text
        ok = c.post(
            "/login",
            content=f"token={reader}&next=//evil.example/x",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/jobs"  # no open redirect
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        page = c.get("/jobs")  # the client kept the cookie
        assert page.status_code == 200 and job["id"] in page.text
        # A read-only login sees no write actions: no Submit link, no cancel button.
        assert 'href="/submit"' not in page.text and "viewer (read)" in page.text
        assert 'id="cancel-job"' not in c.get(f"/jobs/{job['id']}").text
        # A cookie sent from another site's page is not honoured for writes (nor reads).
        r = c.post(f"/api/v1/jobs/{job['id']}/cancel", headers={"origin": "https://evil.example"})
        assert r.status_code == 401
        c.post("/logout")
        assert c.get("/jobs").status_code == 401
        # An admin's login: the cancel button and the Submit link are there.
        c.post(
            "/login", content=f"token={admin}", headers={"content-type": "application/x-www-form-urlencoded"}
        )
        job_page = c.get(f"/jobs/{job['id']}").text
        assert 'id="cancel-job"' in job_page and 'href="/submit"' in job_page and "owner ops" in job_page


def test_tokens_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import app as cli

    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    first = runner.invoke(cli, ["token", "create", "--owner", "ops"])
    assert first.exit_code == 0 and first.stdout.startswith("hws_")
    made = runner.invoke(
        cli, ["token", "create", "--owner", "alice", "--scopes", "read,write", "--expires", "30d", "--json"]
    )
    assert made.exit_code == 0, made.output
    row = json.loads(made.stdout)
    assert row["owner"] == "alice" and row["scopes"] == ["read", "write"] and row["expires_at"]
    assert runner.invoke(cli, ["token", "create", "--scopes", "root"]).exit_code == 2
    assert runner.invoke(cli, ["token", "create", "--expires", "forever"]).exit_code == 2
    listed = runner.invoke(cli, ["token", "list"]).stdout
    assert (
        "ops" in listed
        and "alice" in listed
        and "read,write,admin" in listed
        and first.stdout.strip() not in listed
    )
    assert runner.invoke(cli, ["token", "revoke", str(row["id"])]).exit_code == 0
    assert "revoked" in runner.invoke(cli, ["token", "list"]).stdout
    assert runner.invoke(cli, ["token", "revoke", "999"]).exit_code == 2
    store = Store(make_engine(_env(tmp_path)["DATABASE_URL"]))
    assert store.principal(row["token"]) is None


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hwsearch.db'}"
    else:
        yield from postgres_url()


def test_a_single_token_set_up_survives_the_migration(database_url: str) -> None:
    """A database at revision 0003 with a token and a job: after the upgrade the token is an
    admin token of an owner named after it, and the job (nobody's) can be cancelled with it."""
    from alembic import command
    from alembic.config import Config

    from service.db import MIGRATIONS

    engine = make_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO api_tokens (name, token_sha256, created_at) VALUES (:n, :h, CURRENT_TIMESTAMP)"
            ),
            {"n": "old-cli", "h": __import__("hashlib").sha256(b"hws_old").hexdigest()},
        )
    migrate(engine)
    store = Store(engine)
    principal = store.principal("hws_old")
    assert principal is not None and principal.owner == "old-cli" and principal.is_admin
    job = store.create_job(SPEC)  # as made before owners: nobody's
    assert job["owner"] is None and may_change(principal, None)
    engine.dispose()


def test_a_browser_logs_in_to_a_closed_dashboard(tmp_path: Path, serve: Any) -> None:
    """In chromium: with reads closed, /jobs is the log-in form (401); after logging in with a
    write token the jobs list shows the owner's job, the cookie is HttpOnly and SameSite=Strict
    (page scripts cannot read it), and the job page's cancel button cancels it."""
    import shutil as sh

    from playwright.sync_api import sync_playwright

    app = create_app(Settings.from_env(_env(tmp_path, HWSEARCH_READS_OPEN="false")), dispatcher=False)
    with serve(app) as url, sync_playwright() as p:
        store: Store = app.state.store
        store.create_token("ops")  # the first token (admin)
        alice = store.create_token("alice", owner="alice")
        job = store.create_job(SPEC, owner="alice")
        browser = p.chromium.launch(
            executable_path=sh.which("chromium") or "/usr/bin/chromium", headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        first = page.goto(f"{url}/jobs/{job['id']}")
        assert (
            first is not None and first.status == 401 and page.locator("form[action='/login']").count() == 1
        )
        page.fill("#token", alice)
        page.click("button[type=submit]")
        page.wait_for_selector("#who")
        assert page.url.endswith(f"/jobs/{job['id']}") and "alice (read, write)" in page.inner_text("#who")
        (cookie,) = [c for c in page.context.cookies() if c["name"] == "hwsearch_token"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert "hwsearch_token" not in page.evaluate("() => document.cookie")
        page.click("#cancel-job")
        page.wait_for_function("() => document.getElementById('cancel-result').textContent.length > 0")
        assert "cancelled" in page.inner_text("#cancel-result")
        assert store.get_job(job["id"])["status"] == "cancelled"
        page.goto(f"{url}/jobs")
        assert "alice" in page.inner_text("main")
        browser.close()
        assert errors == []
