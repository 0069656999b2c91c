"""The service side of calibration and recovery (issue 17), on SQLite and PostgreSQL.

- Migration 0007 adds the trials' nullable ``recovered`` column and keeps every stored row.
- ``Store.add_recovery`` (the dispatcher's ``DbSink.on_recovery``) is idempotent and fenced by
  the runner's claim generation, as trials and measurements are.
- The REST API gives each trial its ``calibration`` and ``recovered``, and the front both ways:
  ``front`` on screening quality, ``front_recovered`` recomputed on recovered quality, with
  ``recovered_trials``; a bad ``recovery`` is a 422 naming the field.
- ``hwsearch submit|schedule add --no-calibrate --recover-front K --recovery-steps N`` and the
  submit form store the right ``recovery`` in the spec.
- In chromium, the job page shows screening and recovered quality side by side, the recipe and
  how quality was obtained, and plots the recovered points as a second series.

The trials are stored as a search stores them (``workers.search.Trial`` through ``DbSink``); no
Ray is needed.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from databases import postgres_url
from fastapi.testclient import TestClient

from service.app import create_app
from service.db import MIGRATIONS, Base, make_engine, migrate
from service.dispatcher import DbSink
from service.records import new_job
from service.settings import Settings
from service.store import Fenced, Store
from workers.search import Trial
from workers.search._spec import DEFAULT_RECOVERY_LR

TARGET = "xeon-gold-6240"
SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": [TARGET],
    "space": {"keep": [0.5, 0.75], "wbits": [4, 8]},
    "strategy": "random",
    "budget": {"evaluations": 6},
}
RECOVERY = {
    "calibrate": True,
    "finetune": {"plans": 2, "steps": 10, "lr": DEFAULT_RECOVERY_LR, "batch": 16, "loss": "kd"},
}
HOW = "calibrated on 32 crops of 8 source photos (BatchNorm re-estimated)"
#: (number, screening quality, latency ms): 0 is the uncompressed model; the screening front is
#: 0, 2, 1 (3 is dominated by 2, 4 by 1).
TRIALS = [(0, 0.99, 1.0), (1, 0.60, 0.5), (2, 0.80, 0.7), (3, 0.70, 0.8), (4, 0.50, 0.6)]
#: Recovered: 1 rises above 2, which it then dominates (cheaper, better): the front on recovered
#: quality is 0, 1.
RECOVERED = {1: 0.85, 2: 0.82}


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
    yield Store(engine)
    engine.dispose()


def _trial(job_id: str, number: int, quality: float, latency_ms: float) -> Trial:
    """A trial as the search reports it: calibrated, with its quality's n and 95% interval."""
    plan = {} if number == 0 else {"conv1": {"keep": 0.5}}
    return Trial(
        job_id=job_id,
        number=number,
        plan={"layers": plan},
        status="ok",
        quality=quality,
        quality_metric="top1_agreement",
        costs={
            TARGET: {"latency_ms": latency_ms, "weight_bytes": 1000 * (5 - number), "provenance": "analytic"}
        },
        feasible=True,
        strategy="random",
        quality_detail={"n": 200, "low": quality - 0.03, "high": min(1.0, quality + 0.03)},
        calibration={
            "how": HOW,
            "n_inputs": 32,
            "seconds": 0.4,
            "synthetic": False,
            "steps": ["bn"],
            "notes": [],
        },
    )


def _recovered(quality: float, steps: int = 10) -> dict[str, Any]:
    return {
        "quality": quality,
        "quality_detail": {"n": 200, "low": quality - 0.02, "high": quality + 0.02},
        "metric": "top1_agreement",
        "steps": steps,
        "lr": 1e-4,
        "batch": 16,
        "loss": "kd",
        "n_calibration": 64,
        "seconds": 12.5,
        "weights": "recovered/trial.safetensors",
    }


def _searched(store: Store, spec: dict[str, Any]) -> str:
    """A job claimed and searched as a runner does (trials, then the recoveries, through
    ``DbSink`` with its claim generation); returns its id."""
    job = store.create_job(spec)
    claimed = store.claim("test-runner")
    assert claimed is not None and claimed["id"] == job["id"]
    sink = DbSink(store, claimed["generation"])
    for number, quality, latency in TRIALS:
        sink.on_trial(_trial(job["id"], number, quality, latency))
    for number, quality in RECOVERED.items():
        sink.on_recovery(job["id"], number, _recovered(quality))
    progress = {"evaluations": len(TRIALS), "hypervolume": 0.3}
    sink.on_status(job["id"], "succeeded", progress)
    return str(job["id"])


# ------------------------------------------------------------------------------- migration
def _alembic(connection: Any, revision: str, *, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    (command.downgrade if down else command.upgrade)(config, revision)


def test_the_migration_keeps_old_trials_and_adds_the_column(database_url: str) -> None:
    """A database at 0006 holding a job and a trial: after the upgrade the trial reads as it was,
    not recovered, with no calibration (it was stored before either existed), and can be
    recovered; the schema matches the models; on SQLite it goes down to 0006 and up again."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(database_url)
    with engine.begin() as connection:
        _alembic(connection, "0006")
    job = new_job(SPEC)
    old = {**_trial(job.id, 1, 0.7, 0.5).to_dict(), "quality_detail": None}
    del old["calibration"], old["recovered"]  # a trial as version 0006 stored it
    trials = sa.table(
        "trials",
        *(sa.column(c) for c in ("job_id", "number", "status", "quality", "feasible", "created_at")),
        sa.column("data", sa.JSON()),
    )
    with Store(engine).session() as s:
        s.add(job)
    with engine.begin() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("trials")}
        assert "recovered" not in columns
        connection.execute(
            sa.insert(trials).values(
                job_id=job.id,
                number=1,
                status="ok",
                quality=0.7,
                feasible=True,
                data=old,
                created_at=job.created_at,
            )
        )
    migrate(engine)
    with engine.connect() as connection:
        assert "recovered" in {c["name"] for c in sa.inspect(connection).get_columns("trials")}
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in diffs if "trials" in repr(d)] == []
    store = Store(engine)
    (row,) = store.trials(job.id)[0]
    assert row == {**old, "calibration": None, "recovered": None, "measured_on": {}}
    assert Trial.from_dict(row).recovered is None  # a runner resumes from it as before
    assert store.recovered_numbers(job.id) == []
    assert store.add_recovery(job.id, 1, _recovered(0.8)) is True
    assert store.trial(job.id, 1)["recovered"]["quality"] == 0.8
    if engine.dialect.name == "sqlite":
        with engine.begin() as connection:
            _alembic(connection, "0006", down=True)
            assert "recovered" not in {c["name"] for c in sa.inspect(connection).get_columns("trials")}
            _alembic(connection, "head")
        assert store.trials(job.id)[0][0]["recovered"] is None  # the column came back empty
        assert store.trials(job.id)[0][0]["quality"] == 0.7
    engine.dispose()


# ------------------------------------------------------------------------------- storage
def test_a_recovery_is_stored_once_and_fenced_like_a_trial(store: Store) -> None:
    job = store.create_job({**SPEC, "recovery": RECOVERY})
    claimed = store.claim("runner-a")
    assert claimed is not None
    generation = claimed["generation"]
    sink = DbSink(store, generation)
    for number, quality, latency in TRIALS:
        sink.on_trial(_trial(job["id"], number, quality, latency))
    before = store.trials_version(job["id"])
    first = _recovered(0.85)
    assert store.add_recovery(job["id"], 1, first, generation=generation) is True
    after = store.trials_version(job["id"])
    assert after != before and after[:2] == before[:2]  # the front caches see the change
    # Reported again (a resumed runner): stored once, the first result kept, the version unchanged.
    assert store.add_recovery(job["id"], 1, _recovered(0.5), generation=generation) is False
    sink.on_recovery(job["id"], 1, _recovered(0.5))
    assert store.trial(job["id"], 1)["recovered"] == first
    assert store.trials_version(job["id"]) == after
    assert store.add_recovery(job["id"], 99, first, generation=generation) is False  # no such trial
    assert store.recovered_numbers(job["id"]) == [1]
    # The runner's claim is taken over (requeued, claimed again): its recoveries are refused.
    assert store.requeue(job["id"], generation, "its cluster was lost")
    with pytest.raises(Fenced):
        sink.on_recovery(job["id"], 2, _recovered(0.82))
    with pytest.raises(Fenced):
        store.add_recovery(job["id"], 2, _recovered(0.82), generation=generation)
    assert store.trial(job["id"], 2)["recovered"] is None
    again = store.claim("runner-b")
    assert again is not None and again["generation"] == generation + 2
    assert DbSink(store, again["generation"]).store.add_recovery(
        job["id"], 2, _recovered(0.82), generation=again["generation"]
    )
    assert store.recovered_numbers(job["id"]) == [1, 2]
    # What the new runner resumes from: the trials with their recoveries.
    resumed = [Trial.from_dict(t) for t in store.trials(job["id"])[0]]
    assert [t.number for t in resumed if t.recovered] == [1, 2]
    assert all(t.calibration is not None and t.calibration["how"] == HOW for t in resumed)


# ------------------------------------------------------------------------------- REST
@pytest.fixture()
def client(database_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    env = {"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": database_url}
    with TestClient(create_app(Settings.from_env(env), dispatcher=False)) as c:
        token = c.app.state.store.create_token("tests")  # type: ignore[attr-defined]
        yield c, token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_api_gives_calibration_recovery_and_the_front_both_ways(client: tuple[TestClient, str]) -> None:
    c, _ = client
    store: Store = c.app.state.store  # type: ignore[attr-defined]
    job_id = _searched(store, {**SPEC, "recovery": RECOVERY})
    items = c.get(f"/api/v1/jobs/{job_id}/trials").json()["items"]
    by_number = {t["number"]: t for t in items}
    assert all(t["calibration"]["how"] == HOW for t in items)
    assert by_number[1]["recovered"] == _recovered(0.85) and by_number[1]["quality"] == 0.60
    assert by_number[3]["recovered"] is None
    doc = c.get(f"/api/v1/jobs/{job_id}/front").json()
    # Screening quality: the search's own front, unchanged by the recovery.
    assert [(t["number"], t["quality"]) for t in doc["front"]] == [(0, 0.99), (2, 0.80), (1, 0.60)]
    assert doc["front"][1]["recovered"]["quality"] == 0.82
    # Recovered quality: 1 (0.85 at 0.5 ms) now dominates 2 (0.82 at 0.7 ms).
    assert doc["recovered_trials"] == [1, 2]
    rows = doc["front_recovered"]
    assert [(t["number"], t["quality"], t["quality_source"]) for t in rows] == [
        (0, 0.99, "screening"),
        (1, 0.85, "recovered"),
    ]
    assert rows[1]["quality_screening"] == 0.60 and rows[1]["quality_detail"]["low"] == pytest.approx(0.83)
    assert rows[1]["quality_screening_detail"]["low"] == pytest.approx(0.57)
    assert rows[1]["speedup@" + TARGET] == pytest.approx(2.0)  # against the reference, as front's rows
    table = list(
        csv.DictReader(io.StringIO(c.get(f"/api/v1/jobs/{job_id}/front", params={"format": "csv"}).text))
    )
    assert [(r["number"], r["quality_recovered"]) for r in table] == [("0", ""), ("2", "0.82"), ("1", "0.85")]
    # A job without a recovered plan: the front is the same both ways.
    plain = store.create_job(SPEC)
    for number, quality, latency in TRIALS:
        store.add_trial(_trial(plain["id"], number, quality, latency).to_dict())
    doc = c.get(f"/api/v1/jobs/{plain['id']}/front").json()
    assert doc["recovered_trials"] == []
    assert [t["number"] for t in doc["front_recovered"]] == [t["number"] for t in doc["front"]] == [0, 2, 1]
    assert {t["quality_source"] for t in doc["front_recovered"]} == {"screening"}
    # The job page's view plots the recovered points and names the front on recovered quality.
    view = c.get(f"/jobs/{job_id}/view.json").json()["view"]
    assert view["recovered"] == [1, 2] and view["front_recovered"] == [0, 1]
    assert view["recovery"]["steps"] == 10 and view["calibrate"] is True
    points = {p["number"]: p for p in view["points"]}
    assert points[1]["quality_recovered"] == 0.85 and points[1]["recovery"]["steps"] == 10
    assert "quality_recovered" not in points[3]


def test_a_later_recovery_reaches_a_cached_front(client: tuple[TestClient, str]) -> None:
    """The front caches are keyed on the trials' version: a recovery stored after a read is in
    the next read, on the API's front and on the job page."""
    c, _ = client
    store: Store = c.app.state.store  # type: ignore[attr-defined]
    job = store.create_job({**SPEC, "recovery": RECOVERY})
    for number, quality, latency in TRIALS:
        store.add_trial(_trial(job["id"], number, quality, latency).to_dict())
    assert c.get(f"/api/v1/jobs/{job['id']}/front").json()["recovered_trials"] == []
    assert c.get(f"/jobs/{job['id']}/view.json").json()["view"]["recovered"] == []
    store.add_recovery(job["id"], 1, _recovered(0.85))
    doc = c.get(f"/api/v1/jobs/{job['id']}/front").json()
    assert doc["recovered_trials"] == [1] and [t["number"] for t in doc["front_recovered"]] == [0, 1]
    page = c.get(f"/jobs/{job['id']}/view.json").json()
    assert page["view"]["recovered"] == [1] and "recovered: 10 steps" in page["table_html"]
    # While the stage runs, the page's header says where it is (the runner's progress).
    assert store.claim("runner") is not None
    recovery = {"plans": 2, "done": 1, "current": 2, "step": 4, "steps": 10}
    store.set_status(job["id"], "running", progress={"evaluations": 5, "recovery": recovery})
    assert c.get(f"/jobs/{job['id']}/view.json").json()["job"]["recovery"] == recovery
    html = c.get(f"/jobs/{job['id']}").text
    assert "recovering front plans: 1/2 done, trial 2 at step 4/10" in html


@pytest.mark.parametrize(
    ("recovery", "loc", "fragment"),
    [
        ({"finetune": {"steps": 0}}, ["body", "recovery", "finetune", "steps"], "greater than or equal to 1"),
        ({"finetune": {"plans": 0}}, ["body", "recovery", "finetune", "plans"], "greater than or equal to 1"),
        ({"finetune": {"plans": 7}}, ["body"], "recovery.finetune.plans=7 is more than the budget of 6"),
        ({"finetune": {"loss": "kd+ce"}}, ["body"], "recovery.finetune.loss='kd+ce' needs labelled data"),
        ({"calibrate": "sometimes"}, ["body", "recovery", "calibrate"], "valid boolean"),
    ],
)
def test_bad_recovery_options_get_422_naming_the_field(
    client: tuple[TestClient, str], recovery: dict[str, Any], loc: list[Any], fragment: str
) -> None:
    c, token = client
    r = c.post("/api/v1/jobs", json={**SPEC, "recovery": recovery}, headers=_auth(token))
    assert r.status_code == 422, r.text
    assert any(e["loc"] == loc and fragment in e["msg"] for e in r.json()["detail"]), r.json()
    schedule = {"name": "nightly", "cron": "0 2 * * *", "spec": {**SPEC, "recovery": recovery}}
    r = c.post("/api/v1/schedules", json=schedule, headers=_auth(token))
    assert r.status_code == 422, r.text
    spec_loc = ["body", "spec", *loc[1:]]
    assert any(e["loc"] == spec_loc and fragment in e["msg"] for e in r.json()["detail"]), r.json()
    assert c.get("/api/v1/jobs").json()["total"] == 0 and c.get("/api/v1/schedules").json() == []


def test_jobs_and_schedules_keep_their_recovery(client: tuple[TestClient, str]) -> None:
    c, token = client
    job = c.post("/api/v1/jobs", json={**SPEC, "recovery": RECOVERY}, headers=_auth(token))
    assert job.status_code == 201, job.text
    assert c.get(f"/api/v1/jobs/{job.json()['id']}").json()["spec"]["recovery"] == RECOVERY
    schedule = {"name": "nightly", "cron": "0 2 * * *", "spec": {**SPEC, "recovery": {"calibrate": False}}}
    sch = c.post("/api/v1/schedules", json=schedule, headers=_auth(token))
    assert sch.status_code == 201, sch.text
    assert sch.json()["spec"]["recovery"] == {"calibrate": False, "finetune": None}
    # Left out: the JobSpec's defaults (calibrated, no recovery stage).
    plain = c.post("/api/v1/jobs", json=SPEC, headers=_auth(token)).json()
    assert plain["spec"]["recovery"] == {"calibrate": True, "finetune": None}


# ------------------------------------------------------------------------------- the CLI
def test_recovery_fields_map_the_flags() -> None:
    import typer

    from service.cli._common import recovery_fields

    assert recovery_fields(False, None, None) == {}
    assert recovery_fields(True, None, None) == {"recovery": {"calibrate": False}}
    assert recovery_fields(False, 2, None) == {"recovery": {"finetune": {"plans": 2}}}
    assert recovery_fields(True, 2, 10) == {
        "recovery": {"calibrate": False, "finetune": {"plans": 2, "steps": 10}}
    }
    with pytest.raises(typer.Exit) as exited:
        recovery_fields(False, None, 10)
    assert exited.value.exit_code == 2


@pytest.fixture()
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Any) -> Iterator[Store]:
    """The service on a free port (SQLite, no dispatcher: submitted jobs stay queued), with
    HWSEARCH_URL and a write token in the CLI's environment; yields its store."""
    env = {"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'hwsearch.db'}"}
    app = create_app(Settings.from_env(env), dispatcher=False)
    with serve(app) as url:
        monkeypatch.setenv("HWSEARCH_URL", url)
        monkeypatch.setenv("HWSEARCH_TOKEN", app.state.store.create_token("cli"))
        yield app.state.store


def test_submit_and_schedule_add_send_the_recovery(live: Store, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    run = CliRunner().invoke
    searched = _searched(live, {**SPEC, "recovery": RECOVERY})  # first: claims the oldest queued job
    shown = run(app, ["front", searched])
    assert shown.exit_code == 0, shown.output
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()[1:]}
    assert "recovered 0.8500 (10 steps)" in lines["1"] and "recovered 0.8200 (10 steps)" in lines["2"]
    assert shown.stdout.splitlines()[-1] == "on recovered quality the front is trials 0, 1"
    flags = ["--model", "digits-cnn", "--target", TARGET, "--keep", "0.5,0.75", "--budget", "6"]
    done = run(app, ["submit", *flags, "--recover-front", "2", "--recovery-steps", "10", "--detach"])
    assert done.exit_code == 0, done.output
    spec = live.get_job(done.stdout.strip())["spec"]
    assert spec["recovery"] == RECOVERY
    done = run(app, ["submit", *flags, "--no-calibrate", "--detach"])
    assert done.exit_code == 0, done.output
    assert live.get_job(done.stdout.strip())["spec"]["recovery"] == {"calibrate": False, "finetune": None}
    # A spec file: the flags replace those keys of its recovery.
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**SPEC, "recovery": {"calibrate": False}}))
    done = run(app, ["submit", str(spec_file), "--recover-front", "3", "--detach"])
    assert done.exit_code == 0, done.output
    stored = live.get_job(done.stdout.strip())["spec"]["recovery"]
    assert (
        stored["calibrate"] is False
        and stored["finetune"]["plans"] == 3
        and stored["finetune"]["steps"] == 200
    )
    added = run(app, ["schedule", "add", "--cron", "0 2 * * *", *flags, "--recover-front", "1", "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["spec"]["recovery"]["finetune"]["plans"] == 1
    # Bad input exits 2 naming the flags or the field; nothing is submitted.
    before = live.list_jobs()[1]
    alone = run(app, ["submit", *flags, "--recovery-steps", "10", "--detach"])
    assert alone.exit_code == 2 and "--recovery-steps" in alone.output and "--recover-front" in alone.output
    zero = run(app, ["submit", *flags, "--recover-front", "2", "--recovery-steps", "0", "--detach"])
    assert zero.exit_code == 2 and "recovery.finetune.steps" in zero.output
    many = run(app, ["submit", *flags, "--recover-front", "7", "--detach"])
    assert many.exit_code == 2 and "recovery.finetune.plans=7" in many.output
    assert live.list_jobs()[1] == before


# ------------------------------------------------------------------------------- the dashboard
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, serve: Any) -> Iterator[dict[str, Any]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("recovery-dash")
    env = {"HWSEARCH_DATA_DIR": str(tmp), "DATABASE_URL": f"sqlite:///{tmp / 'hwsearch.db'}"}
    app = create_app(Settings.from_env(env), dispatcher=False)
    with serve(app) as url, sync_playwright() as p:
        store: Store = app.state.store
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield {
            "url": url,
            "store": store,
            "job": _searched(store, {**SPEC, "recovery": RECOVERY}),
            "token": store.create_token("ui"),
            "browser": browser,
        }
        browser.close()


def _open(site: dict[str, Any], path: str) -> tuple[Any, list[str]]:
    page = site["browser"].new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site["url"] + path, wait_until="networkidle")
    page.wait_for_function("() => !document.getElementById('front-plot') || window.hwsearchPainted")
    return page, errors


def test_the_job_page_shows_screening_and_recovered_quality(site: dict[str, Any]) -> None:
    page, errors = _open(site, f"/jobs/{site['job']}")
    heads = page.eval_on_selector_all("#front-head th", "ths => ths.map(t => t.textContent)")
    assert heads[1].startswith("screening quality") and heads[2].startswith("quality after recovery")
    assert heads[3] == "how quality was obtained"
    cells = {
        row: page.inner_text(f".front-row[data-trial='{row}'] .recovered-quality") for row in ("0", "1", "2")
    }
    assert (
        cells["1"].startswith("0.8500") and "(+0.2500)" in cells["1"] and "recovered: 10 steps" in cells["1"]
    )
    assert "[0.830, 0.870]" in cells["1"]
    assert cells["2"].startswith("0.8200") and "dominated after recovery" in cells["2"]
    assert cells["0"] == "uncompressed"
    assert page.inner_text(".front-row[data-trial='1'] .calibration-how") == HOW
    assert "fine-tuned by distillation (kd) for 10 steps" in page.inner_text("#recovery-note")
    # The plot: the recovered plans a second series at their recovered quality.
    trace = page.evaluate(
        "() => document.getElementById('front-plot').data.find(t => t.name === 'after recovery')"
    )
    assert sorted(zip(trace["customdata"], trace["y"], strict=True)) == [(1, 0.85), (2, 0.82)]
    assert errors == []
    from axe_playwright_python.sync_playwright import Axe

    violations = Axe().run(page).response["violations"]
    serious = [v["id"] for v in violations if v["impact"] in ("moderate", "serious", "critical")]
    assert serious == []
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "job-recovered.png"), full_page=True)
    page.close()
    # Before plotly.js (no JavaScript): the server-drawn plot has the recovered points too.
    context = site["browser"].new_context(java_script_enabled=False)
    still = context.new_page()
    still.goto(f"{site['url']}/jobs/{site['job']}")
    assert still.locator("#front-plot svg.preview g[data-series='after recovery'] polygon").count() == 2
    context.close()


def test_the_submit_form_maps_calibrate_and_recovery(site: dict[str, Any]) -> None:
    store: Store = site["store"]
    from axe_playwright_python.sync_playwright import Axe

    page, errors = _open(site, "/submit")
    assert page.is_checked("#calibrate")  # on by default
    violations = Axe().run(page).response["violations"]
    assert [v["id"] for v in violations if v["impact"] in ("moderate", "serious", "critical")] == []
    page.fill("#token", site["token"])
    page.fill("#budget", "6")
    page.fill("#recovery_steps", "10")  # without K: said at once, nothing sent
    page.click("#submit")
    assert "Recover front plans" in page.inner_text("#recovery_steps-error")
    page.fill("#recover_front", "7")  # more than the budget can put on the front: the spec's check
    page.click("#submit")
    page.wait_for_function("() => document.getElementById('recover_front-error').textContent.length > 0")
    assert "recovery.finetune.plans=7" in page.inner_text("#recover_front-error")
    assert page.get_attribute("#recover_front", "aria-invalid") == "true"
    page.fill("#recover_front", "2")
    page.fill("#recovery_steps", "0")
    page.click("#submit")
    page.wait_for_function("() => document.getElementById('recovery_steps-error').textContent.length > 0")
    assert "greater than or equal to 1" in page.inner_text("#recovery_steps-error")
    page.fill("#recovery_steps", "10")
    page.uncheck("#calibrate")
    page.click("#submit")
    page.wait_for_selector("#result a")
    spec = store.get_job(page.inner_text("#result a"))["spec"]
    assert spec["recovery"] == {**RECOVERY, "calibrate": False}
    assert [e for e in errors if "status of 422" not in e] == [] and len(errors) == 2
    page.close()
