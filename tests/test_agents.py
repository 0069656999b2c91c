"""Device agents (issue 19): a real agent process registers this machine as a second device
with its own target and thread count, a profile of that target is prepared by the real fit
dispatcher (plans exported to ONNX), measured by the agent over HTTP and fitted into the
target's predictor; and the faults: an agent killed mid-task, two agents on one target, leases
that are not held, bad tokens, oversized and malformed results, devices that never come.
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
from fastapi.testclient import TestClient

from service.app import create_app
from service.dispatcher import FitDispatcher
from service.settings import Settings
from service.store import Store

ROOT = Path(__file__).resolve().parents[1]
BOARD = "test-board"


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'hwsearch.db'}", **env}
    )


def _agent(url: str, token: str, log: Path, *extra: str, target: str = BOARD) -> subprocess.Popen[bytes]:
    """`hwsearch agent` as its own process (the console script's module), logging to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "service.cli", "agent", "--url", url, "--token", token, "--target", target]
    return subprocess.Popen(
        [*args, *extra], stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=ROOT
    )


def _wait(predicate: Any, timeout_s: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tail}")


@pytest.fixture()
def service(tmp_path: Path, serve: Any) -> Iterator[dict[str, Any]]:
    """The API served by uvicorn and the real fit dispatcher (inline: profiles and fits run in
    its thread rather than on Ray), sharing one SQLite database."""
    settings = _settings(tmp_path, HWSEARCH_AGENT_LEASE_S="6")
    app = create_app(settings, dispatcher=False)
    with serve(app) as url:
        store: Store = app.state.store
        fits = FitDispatcher(store, settings, inline=True, poll_s=0.2)
        fits.start()
        try:
            yield {"url": url, "store": store, "token": store.create_token("alice"), "settings": settings}
        finally:
            fits.stop()


def test_an_agent_profiles_its_target_end_to_end(service: dict[str, Any], tmp_path: Path) -> None:
    url, store, token = service["url"], service["store"], service["token"]
    auth = {"Authorization": f"Bearer {token}"}
    log = tmp_path / "agent-a.log"
    agent = _agent(url, token, log, "--threads", "2", "--name", "board-a", "--repeats", "5")
    try:
        device = _wait(lambda: store.devices(target=BOARD), 120, "the agent to register", log)[0]
        assert device["name"] == "board-a" and device["threads"] == 2 and device["runtime"] == "onnxruntime"
        assert device["info"]["cores"] == os.cpu_count() and device["info"]["onnxruntime"]
        # A new target, defined by the agent's own runtime micro-benchmarks, owned by the token's owner.
        target = httpx.get(f"{url}/api/v1/targets/{BOARD}", headers=auth).json()
        assert target["runtime"] == "onnxruntime" and target["owner"] == "alice"
        assert "2 intra-op threads" in target["spec"]["sources"]["peak_macs_per_s"]

        # `hwsearch profile --wait` follows it to its end: exit 0 only with the new predictor active.
        from typer.testing import CliRunner

        from service.cli import app

        env = {"HWSEARCH_URL": url, "HWSEARCH_TOKEN": token}
        args = ["profile", "--target", BOARD, "--models", "digits-cnn", "--plans", "8", "--wait", "--json"]
        ran = CliRunner().invoke(app, args, env=env)
        profile = json.loads(ran.stdout)
        activated = profile["fit"]["report"]["activated"]
        assert ran.exit_code == (0 if activated else 2), ran.output
        assert activated or "not activated" in ran.output
        profile_id = profile["id"]
        assert profile["status"] == "succeeded", profile
        assert profile["n_tasks"] == 8 and profile["tasks"] == {"done": 8}
        # Every task measured by that agent, and only once.
        assert profile["measured_by"] == {device["id"]: 8}
        results = store.profile_results(profile_id)
        assert all(t["result"]["threads"] == 2 and t["leases"] == 1 for t in results)
        assert all(t["result"]["latency_ms"] > 0 and t["result"]["device"] == "board-a" for t in results)
        fit = profile["fit"]
        assert fit["status"] == "succeeded" and fit["report"]["n_fit"] + fit["report"].get("n_test", 0) >= 8
        versions = httpx.get(f"{url}/api/v1/targets/{BOARD}/predictors", headers=auth).json()
        assert fit["report"]["version"] in [v["version"] for v in versions["versions"]]
        if fit["report"]["activated"]:
            assert versions["active"] == fit["report"]["version"]
        listed = httpx.get(f"{url}/api/v1/devices", headers=auth).json()
        assert [(d["id"], d["tasks_done"], d["online"]) for d in listed] == [(device["id"], 8, True)]
        # The targets page lists the device and says which target its measurements back.
        page = httpx.get(f"{url}/targets").text
        assert f'data-device="{device["id"]}"' in page and "board-a (8 tasks)" in page
        assert f'data-profile="{profile_id}"' in page and "8/8" in page
    finally:
        agent.kill()
        agent.wait(30)


def test_an_agent_killed_mid_task_loses_nothing_and_measures_nothing_twice(
    service: dict[str, Any], tmp_path: Path
) -> None:
    """Agent A is SIGKILLed while it holds a lease: the lease expires, the task goes back to the
    queue, and agent B (same target) measures every task exactly once."""
    url, store, token = service["url"], service["store"], service["token"]
    auth = {"Authorization": f"Bearer {token}"}
    slow = _agent(url, token, tmp_path / "a.log", "--name", "slow", "--repeats", "100000")
    try:
        _wait(lambda: store.devices(target=BOARD), 120, "agent A to register", tmp_path / "a.log")
        r = httpx.post(
            f"{url}/api/v1/targets/{BOARD}/profile",
            json={"models": ["digits-cnn"], "plans_per_model": 4},
            headers=auth,
        )
        profile_id = r.json()["id"]
        held = _wait(
            lambda: store.get_profile(profile_id)["tasks"].get("leased"),
            300,
            "agent A to lease",
            tmp_path / "a.log",
        )
        assert held == 1
        slow.send_signal(signal.SIGKILL)
        slow.wait(30)
        fast = _agent(url, token, tmp_path / "b.log", "--name", "fast", "--repeats", "3")
        try:
            done = _wait(
                lambda: store.get_profile(profile_id)["tasks"].get("done") == 4,
                120,
                "agent B",
                tmp_path / "b.log",
            )
            assert done
            results = store.profile_results(profile_id)
            by_name = {t["result"]["device"] for t in results}
            assert by_name == {"fast"} and len(results) == 4
            # The task A held was leased twice (A, then B) and measured once.
            assert sorted(t["leases"] for t in results) == [1, 1, 1, 2]
        finally:
            fast.kill()
            fast.wait(30)
    finally:
        slow.kill()
        slow.wait(30)


# ------------------------------------------------------------------ the protocol's faults, in-process
def _register(c: TestClient, token: str, name: str, target: str = "zcu102") -> str:
    r = c.post(
        "/api/v1/agents",
        json={"name": name, "target": target, "runtime": "onnxruntime", "threads": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _queue(store: Store, n: int, target: str = "zcu102", timeout_s: float = 600) -> str:
    profile = store.create_profile(target=target, spec={"models": ["digits-cnn"]}, owner="alice")
    assert store.claim_profile("tests")["id"] == profile["id"]  # type: ignore[index]
    tasks = [{"model": "digits-cnn", "plan": {"layers": {}}, "files": {}} for _ in range(n)]
    assert store.add_tasks(profile["id"], tasks, deadline_s=timeout_s)
    return str(profile["id"])


GOOD = {
    "latency_ms": 1.5,
    "reference_ms": 2.0,
    "speedup": 1.3,
    "repeats": 5,
    "threads": 1,
    "runtime": "onnxruntime",
}


def test_leases_are_exclusive_expire_and_fence_results(tmp_path: Path) -> None:
    settings = _settings(tmp_path, HWSEARCH_AGENT_LEASE_S="1", HWSEARCH_MAX_BODY_BYTES="4096")
    with TestClient(create_app(settings, dispatcher=False)) as c:
        store: Store = c.app.state.store  # type: ignore[attr-defined]
        token = store.create_token("alice")
        auth = {"Authorization": f"Bearer {token}"}
        a, b = _register(c, token, "a"), _register(c, token, "b")
        profile_id = _queue(store, 2)
        # Two agents on one target share the work: each gets its own task.
        ta, tb = (c.post(f"/api/v1/agents/{d}/lease", headers=auth).json() for d in (a, b))
        assert ta["id"] != tb["id"]
        assert c.post(f"/api/v1/agents/{a}/lease", headers=auth).status_code == 204  # nothing left
        # A result under another lease, or for a task the device does not hold: 409.
        wrong = c.post(
            f"/api/v1/agents/{a}/tasks/{ta['id']}/result", json={**GOOD, "lease_id": "x" * 32}, headers=auth
        )
        assert wrong.status_code == 409 and "lease" in wrong.text
        stolen = c.post(
            f"/api/v1/agents/{a}/tasks/{tb['id']}/result",
            json={**GOOD, "lease_id": tb["lease_id"]},
            headers=auth,
        )
        assert stolen.status_code == 409
        # Malformed: a negative latency, NaN, a missing field; each names its field.
        for bad, field in (({"latency_ms": -1.0}, "latency_ms"), ({"speedup": float("nan")}, "speedup")):
            r = c.post(
                f"/api/v1/agents/{a}/tasks/{ta['id']}/result",
                # json.dumps writes NaN as the bare literal NaN, which Python's JSON parser reads.
                content=json.dumps({**GOOD, "lease_id": ta["lease_id"], **bad}).encode(),
                headers={**auth, "Content-Type": "application/json"},
            )
            assert r.status_code == 422 and field in r.text, r.text
        # Oversized (HWSEARCH_MAX_BODY_BYTES is 4 kB here): 413, before a byte is read into a result.
        big = {**GOOD, "lease_id": ta["lease_id"], "runtime_version": "x" * 8000}
        assert (
            c.post(f"/api/v1/agents/{a}/tasks/{ta['id']}/result", json=big, headers=auth).status_code == 413
        )
        # A bad token: 401, and nothing changes.
        assert (
            c.post(f"/api/v1/agents/{a}/lease", headers={"Authorization": "Bearer hws_nope"}).status_code
            == 401
        )
        ok = c.post(
            f"/api/v1/agents/{a}/tasks/{ta['id']}/result",
            json={**GOOD, "lease_id": ta["lease_id"]},
            headers=auth,
        )
        assert ok.status_code == 200 and ok.json()["status"] == "done"
        again = c.post(
            f"/api/v1/agents/{a}/tasks/{ta['id']}/result",
            json={**GOOD, "lease_id": ta["lease_id"]},
            headers=auth,
        )
        assert again.status_code == 409  # measured once: the lease ended with the result
        # b goes quiet: its lease expires and a leases b's task; b's late result is refused.
        time.sleep(1.3)
        retaken = c.post(f"/api/v1/agents/{a}/lease", headers=auth).json()
        assert retaken["id"] == tb["id"] and retaken["lease_id"] != tb["lease_id"]
        late = c.post(
            f"/api/v1/agents/{b}/tasks/{tb['id']}/result",
            json={**GOOD, "lease_id": tb["lease_id"]},
            headers=auth,
        )
        assert late.status_code == 409
        beat = c.post(
            f"/api/v1/agents/{b}/tasks/{tb['id']}/heartbeat", json={"lease_id": tb["lease_id"]}, headers=auth
        )
        assert beat.status_code == 409
        # Another owner's device is not theirs to drive.
        bob = store.create_token("bob")
        assert (
            c.post(f"/api/v1/agents/{a}/lease", headers={"Authorization": f"Bearer {bob}"}).status_code == 403
        )
        assert store.get_profile(profile_id)["tasks"] == {"done": 1, "leased": 1}


def test_a_profile_whose_devices_never_come_fails_clearly_and_keeps_what_was_measured(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with TestClient(create_app(settings, dispatcher=False)) as c:
        store: Store = c.app.state.store  # type: ignore[attr-defined]
        token = store.create_token("alice")
        auth = {"Authorization": f"Bearer {token}"}
        device = _register(c, token, "once")
        profile_id = _queue(store, 3, timeout_s=1)
        task = c.post(f"/api/v1/agents/{device}/lease", headers=auth).json()
        assert (
            c.post(
                f"/api/v1/agents/{device}/tasks/{task['id']}/result",
                json={**GOOD, "lease_id": task["lease_id"]},
                headers=auth,
            ).status_code
            == 200
        )
        time.sleep(1.2)  # the device disappeared for good
        assert store.expire_profiles() == [profile_id]
        profile = store.get_profile(profile_id)
        assert profile["status"] == "failed" and "1 of 3 tasks measured" in profile["error"]
        assert profile["tasks"] == {"done": 1, "withdrawn": 2}
        assert c.post(f"/api/v1/agents/{device}/lease", headers=auth).status_code == 204
        assert len(store.profile_results(profile_id)) == 1


def test_a_profile_needs_a_device_and_zoo_models(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with TestClient(create_app(settings, dispatcher=False)) as c:
        store: Store = c.app.state.store  # type: ignore[attr-defined]
        auth = {"Authorization": f"Bearer {store.create_token('alice')}"}
        r = c.post("/api/v1/targets/zcu102/profile", json={"models": ["digits-cnn"]}, headers=auth)
        assert r.status_code == 409 and "hwsearch agent" in r.text
        r = c.post(
            "/api/v1/agents",
            json={"name": "x", "target": "new-board", "runtime": "onnxruntime", "threads": 1},
            headers=auth,
        )
        assert r.status_code == 422 and "target_profile" in r.text
        r = c.post(
            "/api/v1/agents",
            json={"name": "x", "target": "zcu102", "runtime": "tflite", "threads": 1},
            headers=auth,
        )
        assert r.status_code == 422 and "runtime" in r.text
        _register(c, str(auth["Authorization"]).split()[1], "board")
        r = c.post("/api/v1/targets/zcu102/profile", json={"models": ["resnet-9000"]}, headers=auth)
        assert r.status_code == 422 and "models" in r.text and "resnet-9000" in r.text
        r = c.post("/api/v1/targets/nope/profile", json={"models": ["digits-cnn"]}, headers=auth)
        assert r.status_code == 404


def test_a_finished_jobs_front_is_re_measured_on_its_device(
    service: dict[str, Any], tmp_path: Path, synthetic: Any
) -> None:
    """A job costed on the agent's target: its front plans are exported, measured by the agent
    and stored beside their predictions; a front plan that cannot be built is marked with the
    reason and the rest are measured."""
    from service.dispatcher import Dispatcher

    url, store, token = service["url"], service["store"], service["token"]
    auth = {"Authorization": f"Bearer {token}"}
    agent = _agent(url, token, tmp_path / "agent.log", "--name", "board-a", "--repeats", "5")
    try:
        _wait(lambda: store.devices(target=BOARD), 120, "the agent to register", tmp_path / "agent.log")
        job = store.create_job(
            {"model": "digits-cnn", "targets": [BOARD], "strategy": "random", "budget": {"evaluations": 8}},
            owner="alice",
        )
        for number in range(6):  # quality and latency both falling: every trial is on the front
            plan = {"conv3": {"keep": 0.5}, "fc1": {"wbits": 8, "abits": 8}} if number == 3 else None
            plan = {"no-such-layer": {"keep": 0.5}} if number == 5 else plan
            store.add_trial(
                synthetic.trial(
                    job["id"], number, 0.99 - 0.01 * number, 1.0 - 0.1 * number, target=BOARD, plan=plan
                )
            )
        store.set_status(job["id"], "running", progress={"evaluations": 6})
        early = httpx.post(f"{url}/api/v1/jobs/{job['id']}/measure", json={}, headers=auth)
        assert early.status_code == 409 and "finished" in early.text
        store.set_status(job["id"], "succeeded", progress={"evaluations": 6})
        # The dispatcher queues it by itself when a job ends well.
        Dispatcher(store, service["settings"], inline=True)._after(job["id"], "succeeded")
        (profile,) = [p for p in (store.get_profile(p["id"]) for p in _profiles(store, job["id"]))]
        assert profile["spec"]["kind"] == "front" and profile["target"] == BOARD
        done = _wait(
            lambda: store.get_profile(profile["id"])["status"] in ("succeeded", "failed"),
            240,
            "the front to be measured",
            tmp_path / "agent.log",
        )
        assert done and store.get_profile(profile["id"])["status"] == "succeeded", store.get_profile(
            profile["id"]
        )
        trials = {t["number"]: t for t in store.trials(job["id"])[0]}
        for number in range(5):
            m = trials[number]["measured"]
            assert m["target"] == BOARD and m["device"] == "board-a" and m["latency_ms"] > 0
            assert m["predicted_ms"] == pytest.approx(1.0 - 0.1 * number)
            assert m["relative_error"] == pytest.approx(
                (m["predicted_ms"] - m["latency_ms"]) / m["latency_ms"]
            )
        assert (
            "not exported" in trials[5]["measured"]["error"]
            and "no-such-layer" in trials[5]["measured"]["error"]
        )
        # The job page shows the measurements against the predictions on that target.
        page = httpx.get(f"{url}/jobs/{job['id']}").text
        assert f"measured ms ({BOARD})" in page
        again = httpx.post(
            f"{url}/api/v1/jobs/{job['id']}/measure", json={"targets": ["zcu102"]}, headers=auth
        )
        assert again.status_code == 422 and "targets" in again.text
    finally:
        agent.kill()
        agent.wait(30)


def _profiles(store: Store, job_id: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from service.db import Profile

    with store.session() as s:
        rows = s.scalars(select(Profile)).all()
        return [{"id": r.id} for r in rows if (r.spec or {}).get("job_id") == job_id]
