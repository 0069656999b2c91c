"""Jobs that survive their runner (issue 15): fenced runners, a lost runner's job requeued and
resumed to exactly 0..N-1, and a /healthz that tells a dead Ray or a stuck dispatcher.

The faults are real: a runner process paused with SIGSTOP, the Ray worker running a job killed
with SIGKILL, the Ray head's GCS killed under a real ``hwsearch serve``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import postgres_url
from processes import descendants, free_port, hwsearch_serve, name, wait_for

from service.db import make_engine, migrate
from service.store import Fenced, Store

SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": ["xeon-gold-6240"],
    "space": {"keep": [0.5, 0.75], "wbits": [4, 8], "rank_fractions": [0.25, 0.5]},
    "strategy": "random",
    "budget": {"evaluations": 6},
}
TRIAL: dict[str, Any] = {"status": "ok", "quality": 0.5, "feasible": True, "plan": {}, "costs": {}}

pytestmark = pytest.mark.skipif(not Path("/proc").exists(), reason="finds processes in Linux's /proc")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hwsearch.db'}"
        engine = make_engine(url)
        migrate(engine)
        yield Store(engine)
        engine.dispose()
    else:
        for url in postgres_url():
            engine = make_engine(url)
            migrate(engine)
            yield Store(engine)
            engine.dispose()


def test_a_runner_whose_claim_was_taken_over_is_fenced(store: Store) -> None:
    job = store.create_job(SPEC)
    first = store.claim("replica-a")
    assert first is not None and first["generation"] == 1
    store.add_trial({**TRIAL, "job_id": job["id"], "number": 0}, generation=1)
    # replica-a goes quiet (paused): another replica requeues and claims the job.
    time.sleep(0.05)
    assert store.requeue_orphans(0.01) == [job["id"]]
    second = store.claim("replica-b")
    assert second is not None and second["generation"] == 3
    # replica-a wakes: every write of its claim is refused, nothing of it lands.
    with pytest.raises(Fenced):
        store.add_trial({**TRIAL, "job_id": job["id"], "number": 1}, generation=1)
    with pytest.raises(Fenced):
        store.set_status(job["id"], "running", progress={"evaluations": 99}, generation=1)
    with pytest.raises(Fenced):
        store.heartbeat(job["id"], "replica-a", 1)
    with pytest.raises(Fenced):
        store.add_measurement(job["id"], 0, {"ms": 1.0}, generation=1)
    assert [t["number"] for t in store.trials(job["id"])[0]] == [0]
    assert store.get_job(job["id"])["evaluations"] == 0
    # The live runner writes as before.
    assert store.add_trial({**TRIAL, "job_id": job["id"], "number": 1}, generation=3)
    store.set_status(job["id"], "running", progress={"evaluations": 2}, generation=3)
    assert store.heartbeat(job["id"], "replica-b", 3) is False
    # A lost runner's job goes back to the queue once, with the reason; a stale requeue is refused.
    assert store.requeue(job["id"], 3, "node died") and not store.requeue(job["id"], 3, "again")
    again = store.get_job(job["id"])
    assert again["status"] == "queued" and again["progress"]["requeued"] == 1
    assert "node died" in again["progress"]["requeued_because"]


def _runner(database_url: str, job_id: str, generation: int, data_dir: str) -> subprocess.Popen[str]:
    """``execute_job`` of one claim in a process of its own (its own embedded Ray)."""
    code = (
        "import sys; from service.dispatcher import execute_job; "
        f"print('STATUS', execute_job({database_url!r}, {job_id!r}, 'paused-replica', {generation}, "
        f"data_dir={data_dir!r}), flush=True)"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.fixture()
def pg_url() -> Iterator[str]:
    yield from postgres_url()


def test_a_paused_runner_is_fenced_when_it_wakes(tmp_path: Path, pg_url: str) -> None:
    """Finding 5 (two replicas on one PostgreSQL): SIGSTOP of a job's runner; another replica
    takes the job over after its heartbeat went stale; on SIGCONT the paused runner stops
    without writing a trial or a status, and the job's counters are the live runner's alone.
    (A runner paused inside a transaction holds its locks until PostgreSQL ends the idle
    session, IDLE_IN_TRANSACTION_MS; on SQLite it would hold the one write lock of the file.)"""
    url = pg_url
    engine = make_engine(url)
    migrate(engine)
    store = Store(engine)
    job = store.create_job({**SPEC, "budget": {"evaluations": 400}})
    claimed = store.claim("paused-replica")
    assert claimed is not None
    runner = _runner(url, job["id"], claimed["generation"], str(tmp_path))
    try:
        deadline = time.monotonic() + 240
        while store.trials(job["id"])[1] < 3:
            assert runner.poll() is None and time.monotonic() < deadline, runner.stdout.read()  # type: ignore[union-attr]
            time.sleep(0.5)
        paused = descendants(runner.pid)
        for pid in paused:  # the driver and its Ray: the whole runner stops
            os.kill(pid, signal.SIGSTOP)
        stored_at_pause = store.trials(job["id"])[1]
        time.sleep(7)  # > 3 heartbeats: the claim is stale
        assert wait_for(lambda: store.requeue_orphans(6.0), 60, "the requeue", tmp_path / "none") == [
            job["id"]
        ]
        taken = store.claim("live-replica")
        assert taken is not None and taken["generation"] == claimed["generation"] + 2
        store.set_status(job["id"], "running", progress={"evaluations": 1234}, generation=taken["generation"])
        for pid in reversed(paused):
            os.kill(pid, signal.SIGCONT)
        out, _ = runner.communicate(timeout=120)
        assert "STATUS fenced" in out, out[-3000:]
        after = store.get_job(job["id"])
        # Nothing of the paused runner landed after the take-over: not its status, not its
        # counters (at most a trial it was storing at the very moment of the pause).
        assert after["status"] == "running" and after["evaluations"] == 1234
        assert store.trials(job["id"])[1] <= stored_at_pause + 1
    finally:
        if runner.poll() is None:
            for pid in descendants(runner.pid):
                os.kill(pid, signal.SIGCONT)
            runner.kill()
        engine.dispose()


def _served(tmp_path: Path) -> tuple[dict[str, str], str]:
    engine = make_engine(f"sqlite:///{tmp_path / 'hwsearch.db'}")
    migrate(engine)
    token = Store(engine).create_token("ops")
    engine.dispose()
    env = {
        "HWSEARCH_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'hwsearch.db'}",
        "HWSEARCH_ORPHAN_AFTER_S": "8",
    }
    return env, token


def test_a_lost_runner_is_requeued_and_its_job_ends_with_exactly_its_budget(tmp_path: Path) -> None:
    """The Ray worker running a job's search is killed (SIGKILL) mid-job: the job used to be
    failed ("worker died"); it goes back to the queue, resumes, and succeeds with trial numbers
    0..N-1, each stored once."""
    env, token = _served(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    budget = 24
    with hwsearch_serve(env, log, port) as server:
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 90, "the service", log)
        spec = {**SPEC, "budget": {"evaluations": budget}}
        r = httpx.post(f"{base}/api/v1/jobs", json=spec, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        url = f"{base}/api/v1/jobs/{r.json()['id']}"
        running = wait_for(
            lambda: (j := httpx.get(url).json())["evaluations"] >= 3 and j, 240, "three trials", log
        )
        server.remember()  # type: ignore[attr-defined]
        # The job names its runner; Ray's process title ("ray::execute_job") is not relied on:
        # in one CI run no process carried it at this point.
        runner = running["progress"]["runner"]["pid"]
        assert runner in descendants(server.pid), [name(p) for p in descendants(server.pid)]
        os.kill(runner, signal.SIGKILL)
        job = wait_for(
            lambda: (j := httpx.get(url).json())["status"] in ("succeeded", "failed", "exhausted") and j,
            300,
            "the job's end",
            log,
        )
        server.remember()  # type: ignore[attr-defined]
        assert job["status"] == "succeeded", job
        assert (
            job["progress"].get("requeued") == 1 and "runner was lost" in job["progress"]["requeued_because"]
        )
        trials = httpx.get(f"{url}/trials", params={"limit": 500}).json()["items"]
        numbers = sorted(t["number"] for t in trials)
        assert numbers == list(range(budget)), numbers
        plans = [json.dumps(t["plan"], sort_keys=True) for t in trials]
        assert len(set(plans)) == len(plans)


def test_healthz_tells_a_dead_ray_head(tmp_path: Path) -> None:
    """Finding 6: /healthz said Ray was ok through every Ray failure. With the embedded Ray's
    head killed (GCS and raylet) it answers 503 naming Ray (no task round trip), and /metrics
    says hwsearch_up{part="ray"} 0."""
    env, token = _served(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with hwsearch_serve(env, log, port) as server:
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 90, "the service", log)
        r = httpx.post(f"{base}/api/v1/jobs", json=SPEC, headers={"Authorization": f"Bearer {token}"})
        url = f"{base}/api/v1/jobs/{r.json()['id']}"
        wait_for(lambda: httpx.get(url).json()["status"] == "succeeded", 300, "the job", log)
        healthy = httpx.get(f"{base}/healthz", timeout=30)
        assert healthy.status_code == 200 and healthy.json()["ray"] == "ok"
        assert healthy.json()["dispatcher"] == "ok"
        server.remember()  # type: ignore[attr-defined]
        # The head as in the finding: its GCS and its raylet.
        head = [p for p in descendants(server.pid) if any(k in name(p) for k in ("gcs_server", "/raylet"))]
        assert len(head) >= 2, [name(p) for p in descendants(server.pid)]
        for pid in head:
            os.kill(pid, signal.SIGKILL)
        down = wait_for(
            lambda: (h := httpx.get(f"{base}/healthz", timeout=30)).status_code == 503 and h,
            40,
            "/healthz to say Ray is down",
            log,
        )
        assert down.json()["ray"].startswith("error") and down.json()["database"] == "ok", down.json()
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        assert 'hwsearch_up{part="ray"} 0' in metrics and 'hwsearch_up{part="database"} 1' in metrics
        # Finding 4: the service outlives its Ray. Its dispatcher's process ends, a new one
        # starts its own Ray, and the next job runs to its end.
        assert server.poll() is None
        r = httpx.post(f"{base}/api/v1/jobs", json=SPEC, headers={"Authorization": f"Bearer {token}"})
        url = f"{base}/api/v1/jobs/{r.json()['id']}"
        job = wait_for(
            lambda: (j := httpx.get(url).json())["status"] in ("succeeded", "failed") and j,
            300,
            "a job after the head was lost",
            log,
        )
        assert job["status"] == "succeeded", job
        assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        assert server.poll() is None


def test_healthz_tells_a_stuck_dispatcher_and_a_killed_one_is_replaced(tmp_path: Path, serve: Any) -> None:
    """The dispatcher runs in a process of its own: paused (SIGSTOP), /healthz answers 503
    naming it once it has been quiet for the bound; killed (SIGKILL), a new one starts and a job
    queued meanwhile runs to its end."""
    from service.app import create_app
    from service.settings import Settings

    env, token = _served(tmp_path)
    app = create_app(Settings.from_env(env))
    with serve(app) as base:
        supervisor = app.state.dispatcher
        supervisor.stuck_after_s = 4.0
        wait_for(
            lambda: httpx.get(f"{base}/healthz").json()["dispatcher"] == "ok",
            90,
            "the dispatcher",
            tmp_path / "none",
        )
        child = supervisor.pid
        assert child is not None and child != os.getpid() and child in descendants(os.getpid())
        os.kill(child, signal.SIGSTOP)
        try:
            stuck = wait_for(
                lambda: (h := httpx.get(f"{base}/healthz")).status_code == 503 and h,
                20,
                "a 503",
                tmp_path / "none",
            )
            assert "has not reported for" in stuck.json()["dispatcher"], stuck.json()
        finally:
            os.kill(child, signal.SIGCONT)
        wait_for(
            lambda: httpx.get(f"{base}/healthz").status_code == 200, 20, "health again", tmp_path / "none"
        )
        os.kill(child, signal.SIGKILL)
        down = wait_for(
            lambda: (h := httpx.get(f"{base}/healthz")).status_code == 503 and h,
            20,
            "a 503",
            tmp_path / "none",
        )
        assert "the dispatcher process ended" in down.json()["dispatcher"], down.json()
        r = httpx.post(f"{base}/api/v1/jobs", json=SPEC, headers={"Authorization": f"Bearer {token}"})
        url = f"{base}/api/v1/jobs/{r.json()['id']}"
        job = wait_for(
            lambda: (j := httpx.get(url).json())["status"] in ("succeeded", "failed") and j,
            300,
            "the job on the new dispatcher",
            tmp_path / "none",
        )
        assert job["status"] == "succeeded" and job["evaluations"] == SPEC["budget"]["evaluations"], job
        assert supervisor.starts == 2 and supervisor.pid not in (None, child)


def test_a_loop_failing_every_poll_logs_one_traceback_per_quiet_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database away for a minute failed the dispatcher's poll every 0.5 s, and each failure
    logged a traceback (85 in a 20 s outage); one is logged per period, with the count left out."""
    import logging

    import service.background as background

    class Loop(background.BackgroundLoop):
        def _loop(self) -> None:  # pragma: no cover - never started
            pass

    loop, log = Loop(), logging.getLogger("hwsearch.test-loop")
    with caplog.at_level(logging.ERROR, logger="hwsearch.test-loop"):
        for _ in range(5):
            try:
                raise OSError("database away")
            except OSError:
                loop.log_failure(log, "poll")
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
        loop._failed_at -= background.QUIET_S  # the quiet period is over
        try:
            raise OSError("still away")
        except OSError:
            loop.log_failure(log, "poll")
    assert len(caplog.records) == 2 and "4 more failures" in caplog.records[1].getMessage()


def test_a_dead_dispatcher_process_hands_back_its_claims(store: Store) -> None:
    """``Store.release``: the running jobs of a dispatcher process that ended go back to the
    queue at once, fenced and counted; the one lost too often fails with the reason; another
    worker's job and a finished job are left alone."""
    mine, lost_often, other = (store.create_job(SPEC) for _ in range(3))
    assert store.claim("dead-worker")["id"] == mine["id"]  # type: ignore[index]
    assert store.claim("dead-worker")["id"] == lost_often["id"]  # type: ignore[index]
    assert store.claim("live-worker")["id"] == other["id"]  # type: ignore[index]
    store.set_status(lost_often["id"], "running", progress={"requeued": 3}, generation=1)
    released = store.release("dead-worker", "exit status -9", max_requeues=3)
    assert sorted(released) == sorted([mine["id"], lost_often["id"]])
    back = store.get_job(mine["id"])
    assert back["status"] == "queued" and back["generation"] == 2
    assert back["progress"]["requeued"] == 1 and "exit status -9" in back["progress"]["requeued_because"]
    with pytest.raises(Fenced):  # the dead process's runner, were it alive, writes nothing more
        store.add_trial({**TRIAL, "job_id": mine["id"], "number": 0}, generation=1)
    failed = store.get_job(lost_often["id"])
    assert failed["status"] == "failed" and "lost 4 times" in failed["error"], failed
    assert store.get_job(other["id"])["status"] == "running"
    assert store.release("dead-worker", "again", max_requeues=3) == []
