"""Device agents beyond ONNX Runtime, and what keeps a measured predictor honest (issue 19):

- a real ``hwsearch agent --runtime torch`` process defines its own target from torch's
  micro-benchmarks, measures a profile's TorchScript files and has its predictor fitted;
- a schedule's drift probe re-measures a fixed plan set on that device and scores the active
  predictor on it (``drift_check``), shown on the schedules page; a device that became slower is
  flagged;
- a target's devices share one runtime, a device leases only its runtime's tasks, and a task the
  agent cannot measure (a file its runtime cannot load) ends failed with the reason while the
  agent goes on.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from test_agents import GOOD, _agent, _register, _settings, _wait
from test_agents import service as service  # the API on uvicorn with the real fit dispatcher

from service.app import create_app
from service.db import utcnow
from service.store import Store

#: The torch agent's own target (targets outlive a test in this process: not test_agents' board).
TORCH = "torch-board"


def _until_ended(store: Store, profile_id: str, log: Path, timeout_s: float = 300) -> dict[str, Any]:
    _wait(
        lambda: store.get_profile(profile_id)["status"] in ("succeeded", "failed"),
        timeout_s,
        f"profile {profile_id} to end",
        log,
    )
    return store.get_profile(profile_id)


def _table(rows: list[dict[str, Any]], path: Path, scale: float = 1.0) -> Path:
    """A profile's results as the table its fit reads, latencies times ``scale``."""
    from service.api.agents import profile_table

    path.write_text(profile_table(rows, scale))
    return path


def test_a_torch_agent_profiles_its_target_and_a_drift_probe_scores_it(
    service: dict[str, Any], tmp_path: Path
) -> None:
    url, store, token = service["url"], service["store"], service["token"]
    auth = {"Authorization": f"Bearer {token}"}
    log = tmp_path / "torch-agent.log"
    agent = _agent(url, token, log, "--runtime", "torch", "--name", "torch-a", "--repeats", "5", target=TORCH)
    try:
        device = _wait(lambda: store.devices(target=TORCH), 120, "the torch agent", log)[0]
        assert device["runtime"] == "torch" and device["info"]["torch"]
        target = httpx.get(f"{url}/api/v1/targets/{TORCH}", headers=auth).json()
        assert target["runtime"] == "torch"
        assert "TorchScript trace" in target["spec"]["sources"]["dispatch_overhead_ms"]

        r = httpx.post(
            f"{url}/api/v1/targets/{TORCH}/profile",
            json={"models": ["digits-cnn"], "plans_per_model": 8},
            headers=auth,
        )
        assert r.status_code == 202 and r.json()["spec"]["runtime"] == "torch"
        profile = _until_ended(store, r.json()["id"], log)
        assert profile["status"] == "succeeded", profile
        assert profile["measured_by"] == {device["id"]: 8}
        tasks = store.profile_tasks(profile["id"])
        # TorchScript files, timed in torch by that agent.
        assert all(t["runtime"] == "torch" and t["files"]["model"].endswith(".pt") for t in tasks)
        assert all(t["result"]["runtime"] == "torch" and t["result"]["runtime_version"] for t in tasks)
        assert profile["fit"]["status"] == "succeeded"
        version = profile["fit"]["report"]["version"]
        assert httpx.get(f"{url}/api/v1/targets/{TORCH}/predictors", headers=auth).json()["active"] == version

        # A nightly schedule with a drift probe on that target: a firing queues the probe with the job.
        spec = {
            "model": "digits-cnn",
            "targets": [TORCH],
            "strategy": "random",
            "budget": {"evaluations": 4},
        }
        drift = {"target": TORCH, "models": ["digits-cnn"], "plans_per_model": 5, "tolerance": 1.5}
        r = httpx.post(
            f"{url}/api/v1/schedules",
            json={"name": "nightly", "cron": "0 2 * * *", "spec": spec, "drift": drift},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        schedule = r.json()
        assert schedule["drift"]["seed"] == 1 and schedule["drift_runs"] == []
        assert len(store.fire_due(utcnow() + timedelta(days=2))) == 1
        (run,) = store.get_schedule(schedule["id"])["drift_runs"]
        probe = _until_ended(store, run["profile_id"], log)
        assert probe["status"] == "succeeded", probe
        assert probe["schedule_id"] == schedule["id"] and probe["fit"]["kind"] == "drift"
        checked = probe["fit"]["report"]["drift"]
        assert checked["version"] == version and checked["n"] == 5
        assert checked["validated_mape"] == pytest.approx(profile["fit"]["report"]["mape"])
        assert checked["ratio"] == pytest.approx(checked["fresh_mape"] / checked["validated_mape"])
        assert checked["flagged"] == (checked["ratio"] > 1.5)
        # A drift probe scores the active version; it never fits or activates another.
        assert httpx.get(f"{url}/api/v1/targets/{TORCH}/predictors", headers=auth).json()["active"] == version
        (run,) = store.get_schedule(schedule["id"])["drift_runs"]
        assert run["fresh_mape"] == pytest.approx(checked["fresh_mape"])
        page = httpx.get(f"{url}/schedules").text
        assert f"{100 * checked['fresh_mape']:.1f}% / {100 * checked['validated_mape']:.1f}%" in page
        assert ("drift-flag" in page) == checked["flagged"]

        # The same probe on a device that became ten times slower errs far more, and is flagged
        # exactly when that error exceeds the tolerance times the validated one. (Whether 1.5
        # flags it depends on the validated MAPE, which comes from a held-out split of a few
        # timed rows: noise on a loaded machine.)
        from latency_models import catalogue
        from workers.calibration import drift_check

        cat = catalogue(service["settings"].data_dir)
        rows = store.profile_results(probe["id"])
        slow = drift_check(TORCH, _table(rows, tmp_path / "slow.csv", 10.0), tolerance=1.5, cat=cat)
        same = drift_check(TORCH, _table(rows, tmp_path / "same.csv"), tolerance=1.5, cat=cat)
        assert same["drift"]["fresh_mape"] == pytest.approx(checked["fresh_mape"])
        assert slow["drift"]["fresh_mape"] > max(0.8, same["drift"]["fresh_mape"]), slow["drift"]
        assert slow["drift"]["ratio"] > same["drift"]["ratio"]
        for report in (slow, same):
            assert report["drift"]["flagged"] == (report["drift"]["ratio"] > 1.5)
        # A tolerance between the two ratios flags the slow device and not the unchanged one.
        between = max(1.01, (slow["drift"]["ratio"] + same["drift"]["ratio"]) / 2)
        if slow["drift"]["ratio"] > between:
            table = _table(rows, tmp_path / "slow.csv", 10.0)
            assert drift_check(TORCH, table, tolerance=between, cat=cat)["drift"]["flagged"]
        assert not drift_check(
            TORCH,
            _table(rows, tmp_path / "same.csv"),
            tolerance=max(1.01, same["drift"]["ratio"] * 1.01),
            cat=cat,
        )["drift"]["flagged"]
    finally:
        agent.kill()
        agent.wait(30)


def test_an_agent_reports_a_file_it_cannot_load_and_goes_on(service: dict[str, Any], tmp_path: Path) -> None:
    """One task's model file is not a model: the agent posts the failure with onnxruntime's
    reason, the task is not handed out again, and the agent measures the next task."""
    import torch

    from kernels import export_onnx

    url, store, token = service["url"], service["store"], service["token"]
    root = service["settings"].data_dir
    folder = root / "agent_tasks" / "manual"
    folder.mkdir(parents=True)
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU()).eval()
    x = torch.randn(1, 16)
    export_onnx(net, x, folder / "good.onnx")
    (folder / "bad.onnx").write_bytes(b"this is not an ONNX model")
    import numpy as np

    np.save(folder / "input.npy", x.numpy())
    log = tmp_path / "agent.log"
    agent = _agent(url, token, log, "--name", "ort-a", "--repeats", "3")
    try:
        _wait(lambda: store.devices(target="test-board"), 120, "the agent", log)
        profile = store.create_profile(target="test-board", spec={"models": ["manual"]}, owner="alice")
        assert store.claim_profile("tests")["id"] == profile["id"]  # type: ignore[index]

        def files(model: str) -> dict[str, str]:
            rel = folder.relative_to(root)
            return {"model": f"{rel}/{model}", "reference": f"{rel}/good.onnx", "input": f"{rel}/input.npy"}

        tasks = [
            {"model": "manual", "plan": {"layers": {}}, "files": files("bad.onnx")},
            {"model": "manual", "plan": {"layers": {}}, "files": files("good.onnx")},
        ]
        assert store.add_tasks(profile["id"], tasks, deadline_s=600)
        _wait(
            lambda: (
                len(store.profile_tasks(profile["id"], status="done")) == 1
                and len(store.profile_tasks(profile["id"], status="failed")) == 1
            ),
            120,
            "one task failed and one measured",
            log,
        )
        (failed,) = store.profile_tasks(profile["id"], status="failed")
        assert failed["files"]["model"].endswith("bad.onnx") and failed["leases"] == 1
        assert "ort-a" in failed["result"]["error"] and "INVALID_PROTOBUF" in failed["result"]["error"]
        assert agent.poll() is None  # still running, measuring what comes next
    finally:
        agent.kill()
        agent.wait(30)


def test_a_target_is_measured_in_one_runtime(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with TestClient(create_app(settings, dispatcher=False)) as c:
        store: Store = c.app.state.store  # type: ignore[attr-defined]
        token = store.create_token("alice")
        auth = {"Authorization": f"Bearer {token}"}
        ort = _register(c, token, "ort")

        def register(runtime: str, target: str = "zcu102") -> httpx.Response:
            body = {"name": runtime, "target": target, "runtime": runtime, "threads": 1}
            return c.post("/api/v1/agents", json=body, headers=auth)  # type: ignore[return-value]

        # zcu102 names no runtime, but its first device runs ONNX Runtime: a torch device is refused.
        r = register("torch")
        assert r.status_code == 409 and "--runtime onnxruntime" in r.text
        # A new target's micro-benchmarks must come from the agent's own runtime.
        # As an agent sends it: every number with its source (targets outlive a test in this process,
        # and every registered target must say where its numbers come from).
        measured = "measured by a test agent"
        profile = {
            "name": "x",
            "family": "cpu",
            "description": "a board registered by a test",
            "peak_macs_per_s": {"32": 1e9},
            "memory_bandwidth_gb_s": 1,
            "dispatch_overhead_ms": 0.01,
            "compute_efficiency": 1.0,
            "sources": {
                k: measured
                for k in (
                    "peak_macs_per_s",
                    "memory_bandwidth_gb_s",
                    "dispatch_overhead_ms",
                    "compute_efficiency",
                )
            },
        }
        body = {
            "name": "t",
            "target": "new-board",
            "runtime": "torch",
            "threads": 1,
            "target_profile": {**profile, "runtime": "onnxruntime"},
        }
        r = c.post("/api/v1/agents", json=body, headers=auth)
        assert r.status_code == 422 and "target_profile" in r.text and "runtime" in r.text
        assert c.get("/api/v1/targets/new-board", headers=auth).status_code == 404  # nothing half-made
        # A target defined by a torch device is measured in torch: an ONNX Runtime agent is refused.
        body["target_profile"] = {**profile, "runtime": "torch"}
        assert c.post("/api/v1/agents", json=body, headers=auth).status_code == 201
        assert c.get("/api/v1/targets/new-board", headers=auth).json()["runtime"] == "torch"
        r = register("onnxruntime", "new-board")
        assert r.status_code == 409 and "--runtime torch" in r.text and "new-board" in r.text

        # A device leases only its runtime's tasks.
        p = store.create_profile(target="zcu102", spec={"models": ["digits-cnn"]}, owner="alice")
        assert store.claim_profile("tests")["id"] == p["id"]  # type: ignore[index]
        task = {"model": "digits-cnn", "plan": {"layers": {}}, "files": {}, "runtime": "torch"}
        assert store.add_tasks(p["id"], [task, {**task, "runtime": "onnxruntime"}], deadline_s=600)
        leased = c.post(f"/api/v1/agents/{ort}/lease", headers=auth).json()
        assert leased["runtime"] == "onnxruntime"
        assert c.post(f"/api/v1/agents/{ort}/lease", headers=auth).status_code == 204

        # A failure under a lease the device does not hold is a 409; under its lease it ends the task.
        base = f"/api/v1/agents/{ort}/tasks/{leased['id']}"
        r = c.post(f"{base}/fail", json={"lease_id": "x" * 32, "error": "boom"}, headers=auth)
        assert r.status_code == 409
        r = c.post(f"{base}/fail", json={"lease_id": leased["lease_id"], "error": ""}, headers=auth)
        assert r.status_code == 422 and "error" in r.text
        r = c.post(
            f"{base}/fail", json={"lease_id": leased["lease_id"], "error": "cannot load"}, headers=auth
        )
        assert r.status_code == 200 and r.json()["status"] == "failed"
        again = c.post(f"{base}/result", json={**GOOD, "lease_id": leased["lease_id"]}, headers=auth)
        assert again.status_code == 409  # ended: neither measured later nor handed out again
        assert store.get_profile(p["id"])["tasks"] == {"failed": 1, "queued": 1}


def test_a_profile_whose_every_task_fails_says_why(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with TestClient(create_app(settings, dispatcher=False)) as c:
        store: Store = c.app.state.store  # type: ignore[attr-defined]
        token = store.create_token("alice")
        auth = {"Authorization": f"Bearer {token}"}
        device = _register(c, token, "board")
        p = store.create_profile(target="zcu102", spec={"models": ["digits-cnn"]}, owner="alice")
        assert store.claim_profile("tests")["id"] == p["id"]  # type: ignore[index]
        assert store.add_tasks(p["id"], [{"model": "m", "plan": {}, "files": {}}] * 2, deadline_s=600)
        for _ in range(2):
            t = c.post(f"/api/v1/agents/{device}/lease", headers=auth).json()
            body = {"lease_id": t["lease_id"], "error": "InvalidGraph: opset 99"}
            assert (
                c.post(f"/api/v1/agents/{device}/tasks/{t['id']}/fail", json=body, headers=auth).status_code
                == 200
            )
        profile = store.get_profile(p["id"])
        assert profile["status"] == "failed" and profile["fit_id"] is None
        assert "none of its 2 tasks" in profile["error"] and "opset 99" in profile["error"]


def test_a_drift_probe_is_checked_at_creation(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with TestClient(create_app(settings, dispatcher=False)) as c:
        store: Store = c.app.state.store  # type: ignore[attr-defined]
        auth = {"Authorization": f"Bearer {store.create_token('alice')}"}
        spec = {
            "model": "digits-cnn",
            "targets": ["zcu102"],
            "strategy": "random",
            "budget": {"evaluations": 4},
        }
        base = {"name": "n", "cron": "0 2 * * *", "spec": spec}
        for drift, field in (
            ({"target": "nope", "models": ["digits-cnn"]}, "target"),
            ({"target": "zcu102", "models": []}, "models"),
            ({"target": "zcu102", "models": ["digits-cnn"], "tolerance": 0.5}, "tolerance"),
            ({"target": "zcu102", "models": ["os:system"]}, "models"),
        ):
            r = c.post("/api/v1/schedules", json={**base, "drift": drift}, headers=auth)
            assert r.status_code == 422 and field in r.text, r.text
        assert store.list_schedules() == []
        r = c.post(
            "/api/v1/schedules",
            json={**base, "drift": {"target": "zcu102", "models": ["digits-cnn"]}},
            headers=auth,
        )
        assert r.status_code == 201
        sid = r.json()["id"]
        # PATCH with null removes the probe; a firing then queues no profile.
        assert c.patch(f"/api/v1/schedules/{sid}", json={"drift": None}, headers=auth).json()["drift"] is None
        store.fire_due(utcnow() + timedelta(days=2))
        assert store.get_schedule(sid)["drift_runs"] == [] and store.profiles() == []


@pytest.mark.parametrize("model_id", ["digits-cnn", "minilm-l6"])
def test_a_profile_measures_a_designed_set(model_id: str) -> None:
    """The uncompressed model first, uniform plans across each knob the model offers, then
    space-filling mixed plans; distinct, and the same for the same seed."""
    import numpy as np

    from search_spaces import Plan, Space
    from workers.profiling import PROFILE_SPACE, designed_plans
    from workers.zoo import prepare

    prepared = prepare(model_id)
    space = Space.build(prepared.layers, **PROFILE_SPACE)
    plans = designed_plans(space, 12, np.random.default_rng(3))
    assert len(plans) == 12 and len(set(plans)) == 12 and plans[0] == Plan()
    assert plans == designed_plans(space, 12, np.random.default_rng(3))

    def knobs(plan: Plan) -> set[str]:
        return {
            k
            for c in plan.choices.values()
            for k, on in (
                ("rank", c.rank is not None),
                ("keep", c.keep < 1),
                ("int8", c.wbits == 8 and c.abits == 8),
                ("tokens", c.token_keep < 1),
            )
            if on
        }

    uniform = plans[1:6]
    offered = {"rank", "keep", "int8"} | ({"tokens"} if model_id == "minilm-l6" else set())
    # The first uniform plans cover every knob the model offers, one knob each...
    assert {k for p in uniform[: len(offered)] for k in knobs(p)} == offered
    assert all(len(knobs(p)) == 1 for p in uniform)
    # ...with every layer that offers the knob at the same setting.
    keep_plan = next(p for p in uniform if knobs(p) == {"keep"})
    prunable = [layer.name for layer in space.layers if len(space.knobs_of(layer.name).keep) > 1]
    assert len({keep_plan[name].keep for name in prunable}) == 1
    # The rest mix knobs across layers.
    assert all(len(knobs(p)) >= 2 for p in plans[6:])
