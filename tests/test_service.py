"""The service on both databases: SQLite (embedded) and PostgreSQL (127.0.0.1:5432, database
`test`, a schema created and dropped per test; skipped with a visible reason if no server answers).

Storage rules (idempotent trials, one claim per job, orphans re-queued), the REST API (201 after
the job is stored, 422 naming the field, tokens on every mutating endpoint, pagination, the front
derived from trials, JSON and CSV), settings, and one real job end to end through the dispatcher
on Ray.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from databases import postgres_url
from fastapi.testclient import TestClient

from service.app import create_app
from service.db import Job, make_engine, migrate, utcnow
from service.settings import Settings, SettingsError
from service.store import Conflict, Store

SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": ["xeon-gold-6240"],
    "space": {"keep": [0.5, 0.75], "wbits": [4, 8]},
    "strategy": "random",
    "budget": {"evaluations": 6},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hwsearch.db'}"
    else:
        yield from postgres_url()


@pytest.fixture()
def store(database_url: str) -> Iterator[Store]:
    engine = make_engine(database_url)
    migrate(engine)
    migrate(engine)  # idempotent: start-up runs it every time
    yield Store(engine)
    engine.dispose()


# ------------------------------------------------------------------------------- storage
def test_trials_are_stored_once(store: Store, synthetic: ModuleType) -> None:
    job = store.create_job(SPEC)
    assert store.add_trial(synthetic.trial(job["id"], 0, 0.9, 1.0)) is True
    assert store.add_trial(synthetic.trial(job["id"], 0, 0.1, 9.0)) is False  # same number: ignored
    items, total = store.trials(job["id"])
    assert total == 1 and items[0]["quality"] == 0.9


def test_two_dispatchers_never_claim_one_job(store: Store) -> None:
    ids = {store.create_job(SPEC)["id"] for _ in range(6)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := store.claim(name)) is not None:
            with lock:
                claimed.append(job["id"])

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    assert {store.get_job(i)["status"] for i in ids} == {"running"}


def test_orphaned_running_jobs_are_requeued(store: Store) -> None:
    job = store.create_job(SPEC)
    assert store.claim("dead")["id"] == job["id"]  # type: ignore[index]
    assert store.requeue_orphans(60) == []  # its heartbeat is fresh
    with store.session() as s:
        s.execute(sa.update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    assert store.requeue_orphans(60) == [job["id"]]
    assert store.get_job(job["id"])["status"] == "queued"


def test_only_finished_jobs_are_deleted(store: Store, synthetic: ModuleType) -> None:
    job = store.create_job(SPEC)
    with pytest.raises(Conflict, match="only finished jobs"):
        store.delete_job(job["id"])
    assert store.request_cancel(job["id"])["status"] == "cancelled"  # a queued job: at once
    store.add_trial(synthetic.trial(job["id"], 0, 0.9, 1.0))
    store.delete_job(job["id"])
    assert store.list_jobs()[1] == 0


def test_settings_name_the_bad_variable(tmp_path: Path) -> None:
    for env, variable in [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"RAY_ADDRESS": "nowhere"}, "RAY_ADDRESS"),
        ({"HWSEARCH_READS_OPEN": "maybe"}, "HWSEARCH_READS_OPEN"),
        ({"HWSEARCH_MAX_UPLOAD_BYTES": "-3"}, "HWSEARCH_MAX_UPLOAD_BYTES"),
    ]:
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env({"HWSEARCH_DATA_DIR": str(tmp_path), **env})
    s = Settings.from_env({"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": "postgresql://u@h/db"})
    assert s.database_url == "postgresql+psycopg://u@h/db"
    assert Settings.from_env({"HWSEARCH_DATA_DIR": str(tmp_path)}).database_url.endswith("/hwsearch.db")


# ------------------------------------------------------------------------------- REST API
@pytest.fixture()
def client(database_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    env = {
        "HWSEARCH_DATA_DIR": str(tmp_path),
        "DATABASE_URL": database_url,
        "HWSEARCH_MAX_UPLOAD_BYTES": "1000000",
    }
    with TestClient(create_app(Settings.from_env(env), dispatcher=False)) as c:
        token = c.app.state.store.create_token("tests")  # type: ignore[attr-defined]
        yield c, token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_job_lifecycle_over_rest(client: tuple[TestClient, str]) -> None:
    c, token = client
    r = c.post("/api/v1/jobs", json=SPEC, headers=_auth(token))
    assert r.status_code == 201, r.text
    job = r.json()
    # Stored before the answer: it is listed and readable at once.
    assert c.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "queued"
    for _ in range(2):
        c.post("/api/v1/jobs", json={**SPEC, "model": "mobilenet-v2"}, headers=_auth(token))
    page = c.get("/api/v1/jobs", params={"model": "digits-cnn", "limit": 1}).json()
    assert page["total"] == 1 and page["items"][0]["id"] == job["id"]
    assert c.get("/api/v1/jobs", params={"limit": 2, "offset": 2}).json()["items"].__len__() == 1
    assert c.get("/api/v1/jobs", params={"target": "xeon-gold-6240"}).json()["total"] == 3
    assert c.get("/api/v1/jobs", params={"target": "xeon"}).json()["total"] == 0
    assert c.get("/api/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert c.delete(f"/api/v1/jobs/{job['id']}", headers=_auth(token)).status_code == 409
    assert c.post(f"/api/v1/jobs/{job['id']}/cancel", headers=_auth(token)).json()["status"] == "cancelled"
    assert c.delete(f"/api/v1/jobs/{job['id']}", headers=_auth(token)).status_code == 204
    assert c.get(f"/api/v1/jobs/{job['id']}").status_code == 404


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"model": "resnet-9000"}, ["body", "model"]),
        ({"targets": ["no-such-device"]}, ["body", "targets", 0]),
        ({"space": {"wbits": [7]}}, ["body", "space", "wbits", 0]),
        ({"strategy": "bayes"}, ["body"]),
        ({"budget": {"evaluations": 0}}, ["body", "budget", "evaluations"]),
    ],
)
def test_bad_jobs_get_422_naming_the_field(
    client: tuple[TestClient, str], change: dict[str, Any], loc: list[Any]
) -> None:
    c, token = client
    r = c.post("/api/v1/jobs", json={**SPEC, **change}, headers=_auth(token))
    assert r.status_code == 422, r.text
    assert any(e["loc"][: len(loc)] == loc for e in r.json()["detail"]), r.json()
    assert c.get("/api/v1/jobs").json()["total"] == 0  # nothing half-written


def test_mutations_need_a_token(client: tuple[TestClient, str]) -> None:
    c, token = client
    assert c.post("/api/v1/jobs", json=SPEC).status_code == 401
    assert c.post("/api/v1/jobs", json=SPEC, headers=_auth("hws_wrong")).status_code == 401
    assert c.post("/api/v1/jobs", json=SPEC, headers={"Authorization": token}).status_code == 401
    job = c.post("/api/v1/jobs", json=SPEC, headers=_auth(token)).json()
    assert c.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 401
    assert c.delete(f"/api/v1/jobs/{job['id']}").status_code == 401
    assert c.get(f"/api/v1/jobs/{job['id']}").status_code == 200  # reads open by default


def test_front_is_derived_from_trials_as_json_and_csv(
    client: tuple[TestClient, str], synthetic: ModuleType
) -> None:
    c, token = client
    job = c.post("/api/v1/jobs", json=SPEC, headers=_auth(token)).json()
    store: Store = c.app.state.store  # type: ignore[attr-defined]
    rows = [(0, 0.99, 1.0, True), (1, 0.95, 0.6, True), (2, 0.90, 0.7, True), (3, 0.97, 0.5, False)]
    for n, q, lat, ok in rows:
        store.add_trial(synthetic.trial(job["id"], n, q, lat, feasible=ok))
    front = c.get(f"/api/v1/jobs/{job['id']}/front").json()["front"]
    assert [t["number"] for t in front] == [0, 1]  # 2 is dominated by 1; 3 is infeasible
    text = c.get(f"/api/v1/jobs/{job['id']}/front", params={"format": "csv"}).text
    table = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["number"]) for r in table] == [0, 1] and "latency_ms@xeon-gold-6240" in table[0]
    page = c.get(f"/api/v1/jobs/{job['id']}/trials", params={"limit": 3, "offset": 1}).json()
    assert page["total"] == 4 and [t["number"] for t in page["items"]] == [1, 2, 3]
    assert c.get(f"/api/v1/jobs/{job['id']}/trials/2/plan").json() == {"layers": {}}
    assert c.get(f"/api/v1/jobs/{job['id']}/trials/9/plan").status_code == 404


def test_health_and_metrics(client: tuple[TestClient, str]) -> None:
    c, token = client
    c.post("/api/v1/jobs", json=SPEC, headers=_auth(token))
    health = c.get("/healthz").json()
    assert health["status"] == "ok" and health["database"] == "ok"
    text = c.get("/metrics").text
    assert 'hwsearch_jobs{status="queued"} 1' in text and "hwsearch_queue_depth 1" in text
    assert 'hwsearch_request_seconds_count{route="/api/v1/jobs"}' in text


def test_a_job_runs_end_to_end_through_the_dispatcher(tmp_path: Path) -> None:
    """A real search: queued → claimed → run on Ray → trials in the database → succeeded."""
    url = f"sqlite:///{tmp_path / 'hwsearch.db'}"
    settings = Settings.from_env({"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": url})
    with TestClient(create_app(settings, dispatcher=True)) as c:
        token = c.app.state.store.create_token("tests")  # type: ignore[attr-defined]
        job = c.post("/api/v1/jobs", json=SPEC, headers=_auth(token)).json()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            state = c.get(f"/api/v1/jobs/{job['id']}").json()
            if state["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1)
        assert state["status"] == "succeeded", state
        assert state["evaluations"] == 6 and state["hypervolume"] is not None
        trials = c.get(f"/api/v1/jobs/{job['id']}/trials").json()
        assert [t["number"] for t in trials["items"]] == list(range(6))
        assert c.get(f"/api/v1/jobs/{job['id']}/front").json()["front"]
        # The searched layers, for the dashboard's plan heatmap (rank as a fraction of full rank).
        layers = {layer["name"]: layer for layer in state["progress"]["layers"]}
        assert layers and all(layer["full_rank"] >= 0 for layer in layers.values())
        assert any(layer["full_rank"] > 0 for layer in layers.values())


# ------------------------------------------------------------------------------- the CLI over HTTP
@pytest.fixture()
def live_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Any) -> Iterator[str]:
    """A real uvicorn server on a free port (SQLite, dispatcher on); yields its URL."""
    env = {"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'hwsearch.db'}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with serve(create_app(Settings.from_env(env))) as url:
        monkeypatch.setenv("HWSEARCH_URL", url)
        yield url


def test_cli_talks_to_the_service(live_service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    run = CliRunner().invoke
    flags = ["--model", "digits-cnn", "--target", "xeon-gold-6240", "--strategy", "random"]
    flags += ["--keep", "0.5,0.75", "--wbits", "4,8", "--budget", "5"]
    denied = run(app, ["submit", *flags, "--detach"])
    assert denied.exit_code == 2 and "HWSEARCH_TOKEN" in denied.output
    token = run(app, ["token", "create", "--name", "test"]).stdout.strip()
    assert token.startswith("hws_")
    monkeypatch.setenv("HWSEARCH_TOKEN", token)
    bad = run(app, ["submit", "--model", "digits-cnn", "--target", "no-such-device", "--detach"])
    assert bad.exit_code == 2 and "targets.0" in bad.output
    followed = run(app, ["submit", *flags, "--json"])  # follows the job to its end
    assert followed.exit_code == 0, followed.output
    job_id = followed.stdout.splitlines()[0]
    doc = json.loads(followed.stdout[len(job_id) + 1 :])
    assert doc["status"] == "succeeded" and doc["evaluations"] == 5
    table = run(app, ["front", job_id, "--csv"])
    assert table.exit_code == 0 and table.stdout.startswith("number,quality,latency_ms@xeon-gold-6240")
    # `export`: a front plan's model for ONNX Runtime, written whole at --out.
    number = table.stdout.splitlines()[-1].split(",")[0]
    onnx_out = tmp_path / "exports" / "plan.onnx"
    exported = run(app, ["export", job_id, number, "--format", "onnx", "--out", str(onnx_out)])
    assert exported.exit_code == 0, exported.output
    from kernels import onnx_session

    session = onnx_session(onnx_out)
    assert session.run(None, {"input": np.zeros((2, 1, 8, 8), dtype=np.float32)})[0].shape == (2, 10)
    weights = run(app, ["export", job_id, number, "--format", "safetensors", "--out", str(tmp_path / "w.st")])
    assert weights.exit_code == 0 and (tmp_path / "w.st").stat().st_size > 0
    assert run(app, ["export", job_id, number, "--format", "tflite"]).exit_code == 2
    missing = run(app, ["export", job_id, "999", "--out", str(tmp_path / "exports" / "none.onnx")])
    assert missing.exit_code == 2 and "404" in missing.output
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["plan.onnx"]
    queued = run(app, ["submit", *flags, "--budget", "500", "--detach"]).stdout.strip()
    cancelled = run(app, ["cancel", queued])
    assert cancelled.exit_code == 0 and queued in cancelled.stdout
    listing = run(app, ["status", "--json"])
    assert {j["id"] for j in json.loads(listing.stdout)["items"]} == {job_id, queued}
    assert run(app, ["status", "nope"]).exit_code == 2
    added = run(
        app, ["schedule", "add", "--cron", "0 2 * * *", "--timezone", "Europe/Berlin", *flags, "--json"]
    )
    assert added.exit_code == 0, added.output
    sch = json.loads(added.stdout)
    listed = run(app, ["schedule", "list"])
    assert sch["id"] in listed.stdout and "Europe/Berlin" in listed.stdout
    assert run(app, ["schedule", "add", "--cron", "nightly", *flags]).exit_code == 2
    assert run(app, ["schedule", "remove", sch["id"]]).exit_code == 0
    assert json.loads(run(app, ["schedule", "list", "--json"]).stdout) == []
    # A drift probe rides along with a schedule (issue 19); a bad one is refused naming the field.
    drift = ["--drift-target", "xeon-gold-6240", "--drift-models", "digits-cnn", "--drift-plans", "4"]
    probed = run(app, ["schedule", "add", "--cron", "0 3 * * *", *flags, *drift, "--json"])
    assert probed.exit_code == 0, probed.output
    assert json.loads(probed.stdout)["drift"] == {
        "target": "xeon-gold-6240",
        "models": ["digits-cnn"],
        "plans_per_model": 4,
        "seed": 1,
        "tolerance": 1.5,
        "timeout_s": 3600.0,
    }
    bad = run(app, ["schedule", "add", "--cron", "0 3 * * *", *flags, "--drift-target", "nope"])
    assert bad.exit_code == 2 and "drift" in bad.output and "nope" in bad.output


# ------------------------------------------------------------------------------- schedules
def _past(store: Store, schedule_id: str, days: float) -> None:
    from service.db import Schedule

    with store.session() as s:
        s.execute(
            sa.update(Schedule)
            .where(Schedule.id == schedule_id)
            .values(next_run_at=utcnow() - timedelta(days=days))
        )


def test_a_missed_firing_runs_once_and_each_firing_once(store: Store, database_url: str) -> None:
    sch = store.create_schedule(
        name="nightly", cron="0 2 * * *", timezone="Europe/Berlin", spec=SPEC, enabled=True
    )
    nxt = sch["next_run_at"]
    assert nxt > utcnow() and (nxt.hour, nxt.minute) in {(1, 0), (0, 0)}  # 02:00 Berlin in UTC (CET/CEST)
    assert store.fire_due(utcnow()) == []
    _past(store, sch["id"], 3.2)  # the service was down for three nights
    created = store.fire_due(utcnow())
    assert len(created) == 1  # once, not once per missed night
    assert store.fire_due(utcnow()) == []
    again = store.get_schedule(sch["id"])
    assert again["next_run_at"] > utcnow() and [r["job_id"] for r in again["last_runs"]] == created
    assert store.get_job(created[0])["spec"] == SPEC
    # Two replicas see the same firing due at once: one job.
    _past(store, sch["id"], 0.5)
    other = Store(make_engine(database_url))
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda st=st: results.append(st.fire_due(utcnow()))) for st in (store, other)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(r) for r in results) == 1
    assert len(store.get_schedule(sch["id"])["last_runs"]) == 2


def test_a_run_worse_than_the_previous_is_flagged(store: Store) -> None:
    sch = store.create_schedule(name="n", cron="*/5 * * * *", timezone="UTC", spec=SPEC, enabled=True)
    ids = []
    for hv in (0.50, 0.60, 0.55):
        _past(store, sch["id"], 0.01)
        (job_id,) = store.fire_due(utcnow())
        store.set_status(job_id, "succeeded", progress={"hypervolume": hv})
        ids.append(job_id)
        time.sleep(0.01)
    runs = store.get_schedule(sch["id"])["last_runs"]
    assert [r["job_id"] for r in runs] == ids[::-1]  # newest first
    assert [r["regression"] for r in runs] == [True, False, False]
    assert store.get_schedule(sch["id"])["regression"] is True


def test_schedules_over_rest(client: tuple[TestClient, str]) -> None:
    c, token = client
    body = {"name": "nightly", "cron": "0 2 * * *", "timezone": "UTC", "spec": SPEC}
    for change, loc in [
        ({"cron": "every night"}, ["body", "cron"]),
        ({"timezone": "Mars/Olympus"}, ["body", "timezone"]),
        ({"timezone": "America"}, ["body", "timezone"]),  # a folder of the zone database
        ({"timezone": "x" * 300}, ["body", "timezone"]),  # too long for a file name
        ({"spec": {**SPEC, "targets": ["no-such-device"]}}, ["body", "spec", "targets", 0]),
    ]:
        r = c.post("/api/v1/schedules", json={**body, **change}, headers=_auth(token))
        assert r.status_code == 422 and any(e["loc"][: len(loc)] == loc for e in r.json()["detail"]), r.text
    # Every error at once, an unknown target among them (as for jobs), on create and on update.
    bad = {**body, "cron": "every night", "spec": {**SPEC, "targets": ["no-such-device"], "strategy": "nope"}}
    r = c.post("/api/v1/schedules", json=bad, headers=_auth(token))
    locs = {tuple(e["loc"]) for e in r.json()["detail"]}
    assert {("body", "cron"), ("body", "spec", "targets", 0), ("body", "spec", "strategy")} <= locs, r.text
    assert c.post("/api/v1/schedules", json=body).status_code == 401
    sch = c.post("/api/v1/schedules", json=body, headers=_auth(token)).json()
    assert sch["next_run_at"] and sch["last_runs"] == []
    off = c.patch(f"/api/v1/schedules/{sch['id']}", json={"enabled": False}, headers=_auth(token)).json()
    assert off["enabled"] is False and off["next_run_at"] is None
    r = c.patch(
        f"/api/v1/schedules/{sch['id']}",
        json={"cron": "nightly", "spec": {**SPEC, "targets": ["no-such-device"], "strategy": "nope"}},
        headers=_auth(token),
    )
    locs = {tuple(e["loc"]) for e in r.json()["detail"]}
    assert {("body", "cron"), ("body", "spec", "targets", 0), ("body", "spec", "strategy")} <= locs, r.text
    assert c.get("/api/v1/schedules").json()[0]["id"] == sch["id"]
    assert c.delete(f"/api/v1/schedules/{sch['id']}", headers=_auth(token)).status_code == 204
    assert c.get(f"/api/v1/schedules/{sch['id']}").status_code == 404


# ------------------------------------------------------------------------------- targets, fits
def test_targets_and_fits_over_rest(
    client: tuple[TestClient, str], database_url: str, tmp_path: Path
) -> None:
    from service.dispatcher import execute_fit

    c, token = client
    names = {t["name"] for t in c.get("/api/v1/targets").json()}
    assert {"zcu102", "raspi4", "a100"} <= names
    spec = json.loads((Path(__file__).parents[1] / "latency_models" / "targets" / "raspi4.json").read_text())
    board = "lab-" + uuid.uuid4().hex[:6]  # the target registry is per process
    mine = {**spec, "name": board}
    assert c.post("/api/v1/targets", json=mine).status_code == 401
    created = c.post("/api/v1/targets", json=mine, headers=_auth(token))
    assert created.status_code == 201 and created.json()["provenance"].startswith("analytic")
    assert c.post("/api/v1/targets", json=mine, headers=_auth(token)).status_code == 409
    bad = c.post("/api/v1/targets", json={**mine, "name": "x", "family": "tpu"}, headers=_auth(token))
    assert bad.status_code == 422 and "family" in bad.text
    # A bad table is refused at upload, naming row and column; nothing is queued.
    csv_bad = "model,latency_ms\ndigits-cnn,1\ndigits-cnn,-2\n"
    r = c.post(f"/api/v1/targets/{board}/measurements", content=csv_bad, headers=_auth(token))
    assert r.status_code == 422 and "row 3" in r.text and "latency_ms" in r.text
    huge = "model,latency_ms\n" + "digits-cnn,1\n" * 2_000_000
    assert (
        c.post(f"/api/v1/targets/{board}/measurements", content=huge, headers=_auth(token)).status_code == 413
    )
    no_family = c.post(
        "/api/v1/targets/new-npu/measurements", content="model,latency_ms\n", headers=_auth(token)
    )
    assert no_family.status_code == 422 and "family" in no_family.text
    rows = "".join(
        f'digits-cnn,"{{""layers"": {{}}}}",{b},{0.05 + 0.01 * b:.3f}\n' for b in (1, 2, 4, 8, 16, 32)
    )
    table = "model,plan,batch,latency_ms\n" + rows
    queued = c.post(f"/api/v1/targets/{board}/measurements", content=table, headers=_auth(token))
    assert queued.status_code == 202, queued.text
    fit = queued.json()
    assert fit["status"] == "queued" and "csv_path" not in fit
    store: Store = c.app.state.store  # type: ignore[attr-defined]
    assert store.claim_fit("test")["id"] == fit["id"]  # type: ignore[index]
    assert execute_fit(database_url, fit["id"], str(tmp_path)) == "succeeded"
    done = c.get(f"/api/v1/fits/{fit['id']}").json()
    assert done["status"] == "succeeded" and done["report"]["n_fit"] == 6
    versions = c.get(f"/api/v1/targets/{board}/predictors").json()
    assert versions["active"] == done["report"]["version"] and len(versions["versions"]) == 1
    assert c.get(f"/api/v1/targets/{board}").json()["provenance"] == "learned"
    wrong = c.put(f"/api/v1/targets/{board}/predictors/active", json={"version": "v0"}, headers=_auth(token))
    assert wrong.status_code == 422 and "version" in wrong.text
    assert c.get("/api/v1/targets/nope").status_code == 404


def test_the_compressed_model_of_a_trial_downloads_and_loads(tmp_path: Path, synthetic: ModuleType) -> None:
    import zipfile

    import torch
    from safetensors.torch import load

    from search_spaces import Plan
    from workers.zoo import prepare

    url = f"sqlite:///{tmp_path / 'hwsearch.db'}"
    settings = Settings.from_env({"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": url})
    with TestClient(create_app(settings, dispatcher=False)) as c:
        token = c.app.state.store.create_token("tests")  # type: ignore[attr-defined]
        job = c.post("/api/v1/jobs", json=SPEC, headers=_auth(token)).json()
        plan = {"layers": {"conv3": {"keep": 0.5}, "fc1": {"wbits": 4}}}
        trial = {**synthetic.trial(job["id"], 3, 0.9, 1.0), "plan": plan}
        c.app.state.store.add_trial(trial)  # type: ignore[attr-defined]
        c.app.state.store.add_trial({**synthetic.trial(job["id"], 4, 0.9, 1.0), "status": "failed"})  # type: ignore[attr-defined]
        r = c.get(f"/api/v1/jobs/{job['id']}/trials/3/model")
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        cached = tmp_path / "artifacts" / job["id"] / "trial-3.2.zip"
        assert cached.exists() and c.get(f"/api/v1/jobs/{job['id']}/trials/3/model").content == r.content
        onnx_file = c.get(f"/api/v1/jobs/{job['id']}/trials/3/model", params={"format": "onnx"})
        assert onnx_file.status_code == 200 and onnx_file.content[:2] != b"PK"  # the file, not the zip
        weights = c.get(f"/api/v1/jobs/{job['id']}/trials/3/model", params={"format": "safetensors"})
        assert weights.status_code == 200
        bad = c.get(f"/api/v1/jobs/{job['id']}/trials/3/model", params={"format": "tflite"})
        assert bad.status_code == 422 and "format" in bad.text
        assert c.get(f"/api/v1/jobs/{job['id']}/trials/4/model").status_code == 409
        assert c.get(f"/api/v1/jobs/{job['id']}/trials/9/model").status_code == 404
        assert c.get("/api/v1/jobs/..%2F..%2Fetc/trials/3/model").status_code == 404
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert set(z.namelist()) == {
            "model.safetensors",
            "plan.json",
            "trial.json",
            "source.json",
            "spec.json",
            "README.md",
            "model.onnx",
            "onnx.json",
        }
        state = load(z.read("model.safetensors"))
        assert weights.content == z.read("model.safetensors") and onnx_file.content == z.read("model.onnx")
        check = json.loads(z.read("onnx.json"))
        # fc1 at W4A32 has float inputs: no int8 kernel applies, it stays float on its 4-bit grid.
        assert check["max_abs_error"] <= check["tolerance"] and check["float_layers"] == ["fc1"]
        assert "onnxruntime" in z.read("README.md").decode()
        assert Plan.from_dict(json.loads(z.read("plan.json"))) == Plan.from_dict(plan)
        assert "load_state_dict" in z.read("README.md").decode()
    prepared = prepare("digits-cnn")
    rebuilt = prepared.apply(Plan.from_dict(plan), calibrate=True)
    rebuilt.load_state_dict(state)  # the README's recipe: every key and shape matches
    assert rebuilt.conv3.out_channels < prepared.model.conv3.out_channels
    with torch.no_grad():
        assert torch.isfinite(rebuilt(prepared.example_input)).all()
        want = rebuilt(prepared.example_input)
    from kernels import onnx_session

    (tmp_path / "model.onnx").write_bytes(onnx_file.content)
    session = onnx_session(tmp_path / "model.onnx")
    got = session.run(None, {"input": prepared.example_input.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-3)


def test_the_demo_job_is_queued_once_on_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hwsearch.db'}"
    settings = Settings.from_env({"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": url})
    from service.demo import DEMO_CALIBRATION_PLANS, DEMO_SPEC

    seen_activity = False
    for _ in range(2):  # a second start finds the job and queues nothing
        with TestClient(create_app(settings, dispatcher=False, demo=True)) as c:
            deadline = time.monotonic() + 300  # the host profile times minilm-l6 plans first
            while c.get("/api/v1/jobs").json()["total"] == 0 and time.monotonic() < deadline:
                seen_activity |= "profiling" in (c.get("/healthz").json().get("demo") or "")
                time.sleep(0.5)
            time.sleep(1.0)
            page = c.get("/api/v1/jobs").json()
            assert page["total"] == 1
            assert page["items"][0]["targets"] == DEMO_SPEC["targets"]
            assert "demo" not in c.get("/healthz").json()  # nothing to report once it is queued
    assert seen_activity  # /healthz said what the demo was doing while it profiled
    assert (tmp_path / "targets" / "host-cpu.json").exists()  # measured on this machine
    # ... and host-cpu's predictor fitted on this machine's timings, its held-out pairs kept (the
    # newest version: a fit that ranks below the prior is stored but not activated)
    version = sorted(p.name for p in (tmp_path / "predictors" / "host-cpu").iterdir() if p.is_dir())[-1]
    report = json.loads((tmp_path / "predictors" / "host-cpu" / version / "report.json").read_text())
    holdout = report["holdout"]
    assert report["n_fit"] == DEMO_CALIBRATION_PLANS
    assert len(holdout["measured_ms"]) == report["n_test"] == round(0.2 * DEMO_CALIBRATION_PLANS)
    assert all(v > 0 for v in holdout["measured_ms"] + holdout["predicted_ms"])


def test_a_schedule_fires_at_its_time_exactly_once(store: Store) -> None:
    """An injected clock: nothing before the due time, one job at it, nothing again until the next."""
    created_at = utcnow()
    sch = store.create_schedule(name="n", cron="30 3 * * *", timezone="UTC", spec=SPEC, enabled=True)
    due = sch["next_run_at"]
    assert (due.hour, due.minute) == (3, 30) and due > created_at
    assert store.fire_due(due - timedelta(seconds=1)) == []
    (job_id,) = store.fire_due(due)
    assert store.fire_due(due) == [] and store.fire_due(due + timedelta(minutes=1)) == []
    run = store.get_schedule(sch["id"])
    assert run["last_runs"][0]["job_id"] == job_id and run["last_runs"][0]["scheduled_for"] == due
    assert run["next_run_at"] == due + timedelta(days=1)
    (second,) = store.fire_due(due + timedelta(days=1))
    assert second != job_id


def test_two_dispatchers_never_run_one_job(
    store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two dispatcher threads on one database, each job run by exactly one of them."""
    import service.dispatcher as dispatcher_module
    from service.dispatcher import Dispatcher

    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def fake_execute(
        url: str,
        job_id: str,
        worker: str,
        generation: int | None = None,
        data_dir: str | None = None,
        stall_s: float | None = None,
    ) -> str:
        with lock:
            ran.append((job_id, worker))
        time.sleep(0.05)
        store.set_status(job_id, "succeeded")
        return "succeeded"

    monkeypatch.setattr(dispatcher_module, "execute_job", fake_execute)
    ids = {store.create_job(SPEC)["id"] for _ in range(12)}
    settings = Settings.from_env({"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": "sqlite:///unused.db"})
    pair = [Dispatcher(store, settings, poll_s=0.05, inline=True) for _ in range(2)]
    for d in pair:
        d.start()
    deadline = time.monotonic() + 60
    while len(ran) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for d in pair:
        d.stop()
    assert sorted(j for j, _ in ran) == sorted(ids)  # every job once
    assert len({w for _, w in ran}) == 2  # and both dispatchers took part


# ------------------------------------------------------------------------------- real runs
def _serve(tmp_path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`hwsearch serve` in its own process (SQLite, embedded Ray), orphans resumed after 4 s."""
    env = {
        **os.environ,
        "HWSEARCH_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'hwsearch.db'}",
        "HWSEARCH_ORPHAN_AFTER_S": "4",
    }
    exe = Path(sys.executable).with_name("hwsearch")
    return subprocess.Popen(
        [str(exe), "serve", "--port", str(port)], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_restart_recovery_and_cancel_with_a_real_service(tmp_path: Path) -> None:
    """Kill the service mid-job; started again, the job finishes with every trial once.
    Then cancel a running job: it stops within seconds and keeps its trials."""
    from service.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'hwsearch.db'}")
    migrate(engine)
    token = Store(engine).create_token("test")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    spec = {**SPEC, "strategy": "tpe", "budget": {"evaluations": 60}, "plans_per_task": 2}
    server = _serve(tmp_path, port, log)
    try:
        _wait(lambda: httpx.get(f"{base}/healthz").status_code == 200, 60, "the service")
        job = httpx.post(f"{base}/api/v1/jobs", json=spec, headers=_auth(token)).json()
        url = f"{base}/api/v1/jobs/{job['id']}"
        _wait(lambda: httpx.get(url).json()["evaluations"] >= 8, 180, "trials before the kill")
        server.kill()  # no shutdown: the job stays 'running' with a heartbeat that stops
        server.wait(30)
        stored_before = Store(engine).trials(job["id"])[1]
        assert 8 <= stored_before < 60
        server = _serve(tmp_path, port, log)
        done = _wait(
            lambda: (r := httpx.get(url).json())["status"] in ("succeeded", "failed") and r,
            240,
            "the resumed job",
        )
        assert done["status"] == "succeeded", done
        trials = Store(engine).trials(job["id"])[0]
        assert [t["number"] for t in trials] == list(range(60))  # none lost, none twice
        # Cancel a running job.
        long = httpx.post(
            f"{base}/api/v1/jobs", json={**spec, "budget": {"evaluations": 5000}}, headers=_auth(token)
        )
        url = f"{base}/api/v1/jobs/{long.json()['id']}"
        _wait(lambda: httpx.get(url).json()["evaluations"] >= 4, 120, "the long job to run")
        asked = time.monotonic()
        assert httpx.post(f"{url}/cancel", headers=_auth(token)).json()["cancel_requested"] is True
        final = _wait(lambda: (r := httpx.get(url).json())["status"] == "cancelled" and r, 60, "the cancel")
        assert time.monotonic() - asked < 20
        kept = httpx.get(f"{url}/trials", params={"limit": 1000}).json()
        assert kept["total"] == final["evaluations"] >= 4 and kept["total"] < 5000
    finally:
        server.kill()
        server.wait(30)
        engine.dispose()


def test_the_front_follows_new_trials_and_measurements(store: Store, synthetic: ModuleType) -> None:
    from service.fronts import FrontCache

    job = store.create_job(SPEC)
    cache = FrontCache()
    store.add_trial(synthetic.trial(job["id"], 0, 0.9, 1.0))
    assert [t["number"] for t in cache.get(store, store.get_job(job["id"]))] == [0]
    store.add_trial(synthetic.trial(job["id"], 1, 0.95, 0.5))  # dominates trial 0
    assert [t["number"] for t in cache.get(store, store.get_job(job["id"]))] == [1]
    store.add_measurement(job["id"], 1, {"latency_ms": 0.7})
    (row,) = cache.get(store, store.get_job(job["id"]))
    assert row["measured"] == {"latency_ms": 0.7}


def test_a_running_jobs_front_is_extended_by_its_new_trials(store: Store, synthetic: ModuleType) -> None:
    """Trials arriving in batches, out of number order, some duplicates and infeasible ones:
    after each batch the cached front equals the front of every trial, and only the first
    read (and the one after a measurement) read every trial."""
    from service.fronts import FrontCache, front_of

    rng = np.random.default_rng(3)
    job = store.create_job(SPEC)
    cache = FrontCache()
    full_reads = []
    read_all = store.trials
    store.trials = lambda *a, **k: full_reads.append(1) or read_all(*a, **k)  # type: ignore[method-assign]
    numbers = rng.permutation(300)
    for batch in np.array_split(numbers, 12):
        for n in batch:
            quality, latency = round(float(rng.uniform(0.5, 1)), 2), round(float(rng.uniform(0.1, 1)), 1)
            store.add_trial(
                synthetic.trial(job["id"], int(n), quality, latency, feasible=bool(rng.random() < 0.9))
            )
        got = cache.get(store, store.get_job(job["id"]))
        expected = front_of(store.get_job(job["id"]), read_all(job["id"])[0])
        assert [t["number"] for t in got] == [t["number"] for t in expected]
    assert len(full_reads) == 1
    store.add_measurement(job["id"], int(got[0]["number"]), {"latency_ms": 0.7})
    assert cache.get(store, store.get_job(job["id"]))[0]["measured"] == {"latency_ms": 0.7}
    assert len(full_reads) == 2


def test_a_running_jobs_page_view_reads_only_its_new_trials(store: Store, synthetic: ModuleType) -> None:
    """The job page's view of a running job, after each batch of trials, equals the view of
    every trial, having read every trial once; a finished job's trials are not kept."""
    from service.fronts import FrontCache, ViewCache, front_of, job_view

    rng = np.random.default_rng(4)
    job = store.create_job(SPEC)
    store.set_status(job["id"], "running", progress={"evaluations": 0})
    views, fronts = ViewCache(), FrontCache()
    full_reads = []
    read_all = store.trials
    store.trials = lambda *a, **k: full_reads.append(1) or read_all(*a, **k)  # type: ignore[method-assign]
    for batch in np.array_split(rng.permutation(120), 6):
        for n in batch:
            store.add_trial(
                synthetic.trial(job["id"], int(n), float(rng.uniform(0.5, 1)), float(rng.uniform(0.1, 1)))
            )
        current = store.get_job(job["id"])
        got = views.get(store, fronts, current, plot_all=False)
        every = read_all(job["id"])[0]
        assert got == job_view(current, every, front_of(current, every))
    assert len(full_reads) == 1
    # The curve only rises, and ends at the hypervolume of the front (normalised by trial 0).
    from workers.search import JobSpec, hypervolume

    curve = [v for _, v in got["curve"]]
    assert curve == sorted(curve) and curve[-1] > 0
    zero = next(t for t in every if t["number"] == 0)
    target = JobSpec.model_validate(SPEC).targets[0]
    q0, lat0 = zero["quality"], zero["costs"][target]["latency_ms"]
    front = [[-p["quality"] / q0, p["latency_ms"][target] / lat0] for p in got["front"]]
    floor = JobSpec.model_validate(SPEC).quality_floor or 0.0
    assert curve[-1] == pytest.approx(hypervolume(front, [-floor / q0, 1.0]))
    store.set_status(job["id"], "succeeded", progress={"evaluations": 120})
    store.add_trial(synthetic.trial(job["id"], 120, 0.99, 0.05))  # a late trial of a finished job
    views.get(store, fronts, store.get_job(job["id"]), plot_all=True)
    assert views._trials == {}


def test_a_job_may_use_a_target_created_through_the_api(client: tuple[TestClient, str]) -> None:
    c, token = client
    spec = json.loads((Path(__file__).parents[1] / "latency_models" / "targets" / "zcu102.json").read_text())
    board = "api-board-" + uuid.uuid4().hex[:6]
    assert c.post("/api/v1/targets", json={**spec, "name": board}, headers=_auth(token)).status_code == 201
    r = c.post("/api/v1/jobs", json={**SPEC, "targets": [board]}, headers=_auth(token))
    assert r.status_code == 201, r.text
