"""Search: JobSpec validation, the strategy contract (every registered strategy), Pareto and
hypervolume, and run_search on a real local Ray cluster of two nodes (one worker CPU each):
numbering, a failing trial, resume, cancellation, a killed worker, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from search_spaces import Choice, Plan
from workers.search import (
    JobSpec,
    MemorySink,
    Observation,
    Problem,
    SearchError,
    Strategy,
    create_strategy,
    front_mask,
    hypervolume,
    list_strategies,
    register_strategy,
    run_search,
)
from workers.search._runner import Evaluator
from workers.search._strategy import STRATEGIES

SPACE = {"rank_fractions": [0.25, 0.5], "keep": [0.5, 0.75], "wbits": [4, 8]}


def spec(**kw: object) -> JobSpec:
    base: dict[str, object] = {
        "model": "digits-cnn",
        "targets": ["xeon-gold-6240"],
        "space": SPACE,
        "strategy": "random",
        "budget": {"evaluations": 10},
    }
    base.update(kw)
    return JobSpec.model_validate(base)


# ------------------------------------------------------------------------------- JobSpec
@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"strategy": "bayes"}, "", "valid names: guided, nsga2, random"),
        ({"constraints": ["latency<5"]}, "constraints", "METRIC[@TARGET]<=VALUE"),
        ({"constraints": ["quality<=0.5"]}, "constraints", "must be a floor"),
        ({"constraints": ["latency_ms@raspi4<=5"]}, "", "not in targets"),
        ({"targets": ["a", "a"]}, "targets", "distinct"),
        ({"targets": []}, "targets", "at least 1"),
        ({"space": {}}, "space", "offers no knob"),
        ({"space": {"wbits": [7]}}, "space.wbits.0", "Input should be"),
        ({"budget": {"evaluations": None}}, "budget", "needs evaluations or wall_time_s"),
        ({"budget": {"evaluations": 0}}, "budget.evaluations", "greater than or equal to 1"),
        ({"objectives": ["latency_ms"]}, "objectives", "must include 'quality'"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
    ],
)
def test_bad_specs_name_the_field(change: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        spec(**change)
    errors = info.value.errors()
    assert any(".".join(str(p) for p in e["loc"]).startswith(field) for e in errors), errors
    assert words in str(info.value)


def test_spec_round_trips_as_json() -> None:
    s = spec(constraints=["latency_ms<=0.05", "quality>=0.5"], strategy="guided")
    again = JobSpec.model_validate_json(s.model_dump_json())
    assert again == s
    assert again.quality_floor == 0.5
    assert str(again.constraints[0]) == "latency_ms<=0.05"


def test_problem_errors_name_model_and_target() -> None:
    # An argument the zoo entry refuses: the spec itself says so, at submission (issue 14).
    with pytest.raises(ValidationError, match="takes no argument"):
        spec(model="digits-cnn:7")
    with pytest.raises(SearchError) as info:
        Problem.build(spec(targets=["xeon-gold-6240", "no-such-device"]))
    assert info.value.field == "targets[1]"
    with pytest.raises(SearchError) as info:
        Problem.build(spec(space={"token_keep": [0.5]}))  # a CNN has no attention blocks
    assert info.value.field == "space"


# ----------------------------------------------------------------------- Pareto, hypervolume
def test_front_mask_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    pts = rng.random((200, 3))
    brute = [not any((q <= p).all() and (q < p).any() for q in pts) for p in pts]
    assert front_mask(pts).tolist() == brute


def test_hypervolume_known_values_and_reference() -> None:
    assert hypervolume([[0.5, 0.5], [0.2, 0.8]], [1.0, 1.0]) == pytest.approx(0.31)
    # Points that do not dominate the reference add nothing; an empty front has none.
    assert hypervolume([[0.5, 0.5], [1.5, 0.1]], [1.0, 1.0]) == pytest.approx(0.25)
    assert hypervolume(np.zeros((0, 2)), [1.0, 1.0]) == 0.0


# --------------------------------------------------------- strategy contract (every strategy)
@pytest.fixture(scope="module")
def problem() -> Problem:
    p = Problem.build(spec(constraints=["latency_ms<=0.0742"]))
    ev = Evaluator(spec().model_dump(mode="json"), None)
    p.reference_quality = ev.evaluate([Plan().to_dict()])[0]["quality"]
    p._evaluator = ev  # type: ignore[attr-defined]
    return p


def _observe(problem: Problem, plans: Sequence[Plan]) -> list[Observation]:
    results = problem._evaluator.evaluate([p.to_dict() for p in plans])  # type: ignore[attr-defined]
    out = []
    for plan, r in zip(plans, results, strict=True):
        costs = problem.costs(plan)
        q = r["quality"]
        out.append(
            Observation(plan, tuple(problem.objectives(q, costs)), not problem.violations(q, costs), q)
        )
    return out


@pytest.mark.parametrize("name", list_strategies())
def test_strategy_contract(problem: Problem, name: str) -> None:
    a, b = create_strategy(name, problem, seed=3), create_strategy(name, problem, seed=3)
    history: list[Plan] = []
    for _ in range(3):
        plans_a, plans_b = a.ask(4), b.ask(4)
        assert plans_a == plans_b, "same seed and same tells must give the same proposals"
        assert len(plans_a) <= 4
        for plan in plans_a:
            problem.space.validate_plan(plan)
        obs = _observe(problem, plans_a)
        a.tell(obs)
        b.tell(obs)
        history += plans_a
    # Warm start with plans it never asked for, and a failed one, must be accepted.
    c = create_strategy(name, problem, seed=5)
    foreign = _observe(problem, [problem.space.sample(np.random.default_rng(9)) for _ in range(3)])
    c.tell([*foreign, Observation(Plan(), None, False, None)])
    for plan in c.ask(2):
        problem.space.validate_plan(plan)
    if name != "uniform":
        assert len(set(history)) > 1, "a strategy must explore"


def test_uniform_plans_are_uniform_and_span_latency(problem: Problem) -> None:
    strategy = create_strategy("uniform", problem, seed=0)
    plans = strategy.ask(1000)
    assert len(plans) == len(set(plans)) > 4
    for plan in plans:
        wbits = {plan[n].wbits for n in problem.space.knobs if 4 in problem.space.knobs_of(n).wbits}
        assert len(wbits) == 1
    latency = problem.screen_latency_ms(np.stack([problem.space.encode(p) for p in plans]))[:, 0]
    # The first two proposals are the two ends of the sweep.
    assert {latency[0], latency[1]} == {latency.min(), latency.max()}


def test_guided_respects_the_latency_budget_by_construction(problem: Problem) -> None:
    strategy = create_strategy("guided", problem, seed=1)
    budget = problem.latency_budgets_ms()[0]
    assert budget is not None
    for _ in range(3):
        plans = strategy.ask(6)
        assert plans
        for plan in plans:
            assert problem.costs(plan)["xeon-gold-6240"]["latency_ms"] <= budget
        strategy.tell(_observe(problem, plans))


# --------------------------------------------------------------------------- on real Ray
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """Two Ray nodes of one CPU each: two evaluator actors run in two worker processes."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "gcs_server_port": _free_port(), "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield
    ray.shutdown()
    cluster.shutdown()


def _numbers(trials: Sequence[object]) -> list[int]:
    return [t.number for t in trials]  # type: ignore[attr-defined]


def test_search_on_two_workers(ray_cluster: None) -> None:
    sink = MemorySink()
    pids: list[int] = []
    result = run_search(
        # Low-rank adds a GEMM launch per layer, which costs more than it saves on this small
        # model on the Xeon's prior: a pruning + bits space gives a front that beats the reference.
        spec(budget={"evaluations": 12}, space={"keep": [0.5, 0.75], "wbits": [4, 8]}),
        sink,
        job_id="two",
        on_progress=lambda p: pids.extend(p.get("worker_pids", [])),
    )
    assert result.status == "succeeded"
    assert _numbers(result.trials) == list(range(12))
    assert _numbers(sink.job_trials("two")) == list(range(12))
    assert len(set(pids)) == 2
    assert result.trials[0].plan == {"layers": {}} and result.trials[0].quality > 0.95
    assert result.front and result.hypervolume > 0
    assert all(t.costs["xeon-gold-6240"]["provenance"] for t in result.trials)
    assert sink.statuses[-1][1] == "succeeded"


class _Broken(Strategy):
    """Test-only: every third plan is invalid for the space (a pruning ratio it does not offer)."""

    name = "test-broken"
    description = "test only"

    def ask(self, n: int) -> list[Plan]:
        out = []
        for _ in range(n):
            self.count = getattr(self, "count", 0) + 1
            if self.count % 3 == 0:
                out.append(Plan({"conv2": Choice(keep=0.33 + self.count * 1e-6)}))
            else:
                out.append(self.problem.space.sample(self.rng))
        return out

    def tell(self, observations: Sequence[Observation]) -> None:
        pass


@pytest.fixture
def broken_strategy() -> Iterator[str]:
    """``test-broken`` registered for one test only: registered at import, it leaked into every
    later test module's list of strategies."""
    register_strategy(_Broken)
    try:
        yield _Broken.name
    finally:
        STRATEGIES.unregister(_Broken.name)


def test_a_failing_trial_is_stored_and_the_job_goes_on(ray_cluster: None, broken_strategy: str) -> None:
    result = run_search(spec(strategy=broken_strategy, budget={"evaluations": 10}), MemorySink(), job_id="f")
    failed = [t for t in result.trials if t.status == "failed"]
    assert result.status == "succeeded" and len(result.trials) == 10
    assert failed and all("keep" in (t.error or "") and t.quality is None for t in failed)
    assert all(not t.feasible for t in failed)
    assert sum(t.status == "ok" for t in result.trials) >= 6


def test_the_throwaway_strategy_does_not_outlive_its_test() -> None:
    """Runs after the test above (file order): its fixture took ``test-broken`` out again."""
    assert _Broken.name not in list_strategies()
    with pytest.raises(ValidationError, match="valid names"):
        spec(strategy=_Broken.name)


def test_resume_continues_to_the_budget_without_reusing_numbers(ray_cluster: None) -> None:
    s = spec(strategy="nsga2", budget={"evaluations": 8})
    first = run_search(s, MemorySink(), job_id="r")
    stored = first.trials[:5]  # as if the service died after five trials
    sink = MemorySink()
    resumed = run_search(spec(strategy="nsga2", budget={"evaluations": 12}), sink, job_id="r", resume=stored)
    assert _numbers(resumed.trials) == list(range(12))
    assert resumed.trials[:5] == stored
    assert _numbers(sink.job_trials("r")) == list(range(5, 12))  # only new trials reported


@pytest.mark.parametrize("strategy", list_strategies())
def test_a_resumed_job_ends_with_exactly_its_budget(ray_cluster: None, strategy: str) -> None:
    """Issue 15: a job killed after 10 trials, of which 6 and 8 were never stored (trials are
    stored out of order), resumes to exactly 0..N-1: the gaps are evaluated first and the
    strategy proposes fresh plans (random used to replay its seed's sequence, find nothing new
    in 25 asks and end 'succeeded' short of its budget). A strategy whose reach is smaller than
    the budget (uniform's sweep of this space) ends 'exhausted' with every plan it has."""
    budget = 20
    first = run_search(spec(strategy=strategy, budget={"evaluations": 10}), MemorySink(), job_id="x")
    assert first.status == "succeeded"
    stored = [t for t in first.trials if t.number not in (6, 8)]
    sink = MemorySink()
    resumed = run_search(
        spec(strategy=strategy, budget={"evaluations": budget}), sink, job_id="x", resume=stored
    )
    n = len(resumed.trials)
    assert _numbers(resumed.trials) == list(range(n))
    new = sink.job_trials("x")
    assert {6, 8} <= set(_numbers(new)) and len(new) == n - len(stored)
    plans = [json.dumps(t.plan, sort_keys=True) for t in resumed.trials]
    assert len(set(plans)) == len(plans), "a plan was evaluated twice"
    if strategy == "uniform" and resumed.status == "exhausted":
        from workers.search import Problem
        from workers.search._baselines import uniform_plans

        # Every uniform plan of the space, the uncompressed one (trial 0) among them or not.
        reach = {json.dumps(p.to_dict(), sort_keys=True) for p in uniform_plans(Problem.build(spec()))}
        assert set(plans) - {plans[0]} <= reach and len(reach - set(plans)) == 0
    else:
        assert resumed.status == "succeeded" and n == budget, (resumed.status, n)


def test_a_strategy_that_runs_out_ends_exhausted_not_succeeded(ray_cluster: None) -> None:
    """A space of 4 plans (2 layers' bits, the rest fixed) and a budget of 20: the job ends
    'exhausted' with every distinct plan evaluated, never 'succeeded' below its budget."""
    tiny = {"wbits": [8], "include": ["conv1", "fc2"]}
    result = run_search(spec(space=tiny, budget={"evaluations": 20}), MemorySink(), job_id="tiny")
    assert result.status == "exhausted"
    assert 1 < len(result.trials) < 20


def test_cancel_stops_within_seconds_and_keeps_finished_trials(ray_cluster: None) -> None:
    cancel = threading.Event()
    stopped_at: list[float] = []

    def on_progress(p: dict[str, object]) -> None:
        if int(p.get("evaluations", 0)) >= 6 and not cancel.is_set():  # type: ignore[call-overload]
            stopped_at.append(time.monotonic())
            cancel.set()

    sink = MemorySink()
    result = run_search(
        spec(budget={"evaluations": 5000}), sink, job_id="c", cancel=cancel, on_progress=on_progress
    )
    assert result.status == "cancelled"
    assert time.monotonic() - stopped_at[0] < 10
    assert 6 <= len(result.trials) < 5000
    assert _numbers(sink.job_trials("c")) == _numbers(result.trials)


def test_a_killed_worker_is_replaced_and_the_job_completes(ray_cluster: None) -> None:
    killed: list[int] = []

    def on_progress(p: dict[str, object]) -> None:
        pids = p.get("worker_pids")
        if pids and not killed:
            killed.append(pids[0])  # type: ignore[index]
        elif killed and len(killed) == 1 and int(p.get("evaluations", 0)) >= 4:  # type: ignore[call-overload]
            os.kill(killed[0], signal.SIGKILL)
            killed.append(-1)

    result = run_search(spec(budget={"evaluations": 24}), MemorySink(), job_id="k", on_progress=on_progress)
    assert killed[-1] == -1, "the worker was killed mid-job"
    assert result.status == "succeeded"
    assert _numbers(result.trials) == list(range(24))


def test_cli_search_json(ray_cluster: None) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    runner = CliRunner()
    out = runner.invoke(
        app,
        [
            "search",
            "--model",
            "digits-cnn",
            "--target",
            "xeon-gold-6240",
            "--strategy",
            "guided",
            "--budget",
            "9",
            "--wbits",
            "4,8",
            "--keep",
            "0.5,0.75",
            "--constraint",
            "latency_ms<=0.0747",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert (
        set(doc) == {"reference", "front", "hypervolume", "trials", "source", "data"} and doc["trials"] == 9
    )
    assert doc["source"]["kind"] == "zoo" and doc["data"] is None
    assert doc["front"] and all(row["latency_ms@xeon-gold-6240"] <= 0.0747 for row in doc["front"])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--constraint", "latency<5"], "METRIC[@TARGET]<=VALUE"),
        (["--strategy", "bayes"], "valid names"),
        (["--keep", "half"], "--keep"),
        (["--target", "no-such-device"], "targets[0]"),
    ],
)
def test_cli_search_bad_input_exits_2(args: list[str], words: str) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    base = ["search", "--model", "digits-cnn", "--budget", "3"]
    if "--target" not in args:
        base += ["--target", "xeon-gold-6240"]
    out = CliRunner().invoke(app, base + args)
    assert out.exit_code == 2, out.output
    assert words in out.output


def test_cli_search_resumes_from_its_trials_file(ray_cluster: None, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    trials = tmp_path / "trials.jsonl"
    base = ["search", "--model", "digits-cnn", "--target", "xeon-gold-6240", "--strategy", "tpe"]
    base += ["--keep", "0.5,0.75", "--wbits", "4,8", "--trials", str(trials), "--json"]
    first = CliRunner().invoke(app, [*base, "--budget", "5"])
    assert first.exit_code == 0, first.output
    assert len(trials.read_text().splitlines()) == 5
    again = CliRunner().invoke(app, [*base, "--budget", "8"])  # more budget: resumes, 3 new trials
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["trials"] == 8
    lines = [json.loads(line) for line in trials.read_text().splitlines()]
    assert sorted(t["number"] for t in lines) == list(range(8))  # in the order they finished
    other = CliRunner().invoke(app, [*base, "--budget", "8", "--seed", "1"])
    assert other.exit_code == 2 and "another search" in other.output


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_host_front_is_measured_for_real(
    ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: str
) -> None:
    """host-cpu's front is timed in torch eager, host-cpu-ort's in ONNX Runtime (issue 19)."""
    from latency_models import catalogue
    from workers.profiling import host_target_name, measure_host_target

    monkeypatch.setenv("HWSEARCH_DATA_DIR", str(tmp_path / "data"))
    host = host_target_name(runtime)
    catalogue().add_target(measure_host_target(repeats=3, runtime=runtime))
    sink = MemorySink()
    s = spec(targets=[host], space={"keep": [0.5, 0.75], "wbits": [4, 8]}, budget={"evaluations": 8})
    result = run_search(s, sink, job_id="h")
    assert result.front
    assert set(sink.measurements) == {("h", t.number) for t in result.front}
    for t in result.front:
        m = t.measured
        assert m is not None and m["latency_ms"] > 0 and m["reference_ms"] > 0
        timer = {"torch": "kernels.time_model", "onnxruntime": "kernels.time_onnx"}[runtime]
        assert m["target"] == host and m["runtime"] == runtime and m["how"].startswith(timer)
        assert m["predicted_ms"] == t.costs[host]["latency_ms"]
        assert m["relative_error"] == pytest.approx((m["predicted_ms"] - m["latency_ms"]) / m["latency_ms"])


def test_spec_knows_exactly_the_zoo() -> None:
    from workers.search._spec import ZOO_MODELS
    from workers.zoo import list_models

    assert list(ZOO_MODELS) == list_models()
    with pytest.raises(ValidationError, match="zoo: digits-cnn, digits-vit"):
        spec(model="resnet-9000")


# ------------------------------------------------- JobSpec defaults and all errors at once (issue 13)
def test_a_spec_without_space_takes_the_default_space_and_budget() -> None:
    from workers.search._spec import DEFAULT_EVALUATIONS, DEFAULT_SPACE

    spec = JobSpec.model_validate({"model": "digits-cnn", "targets": ["zcu102"]})
    assert spec.space.rank_fractions == DEFAULT_SPACE["rank_fractions"]
    assert spec.space.keep == DEFAULT_SPACE["keep"] and spec.space.wbits == DEFAULT_SPACE["wbits"]
    assert spec.budget.evaluations == DEFAULT_EVALUATIONS == 50


def test_every_error_of_a_spec_is_reported_at_once() -> None:
    bad = {
        "model": "digits-cnn",
        "targets": ["zcu102", "tpu"],
        "strategy": "bayes",
        "budget": {"evaluations": 0},
        "constraints": ["latency_ms@a100<=1"],
    }
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(bad, context={"targets": {"zcu102", "a100"}})
    locs = {tuple(e["loc"]) for e in info.value.errors()}
    assert {("targets", 1), ("strategy",), ("budget", "evaluations")} <= locs
    # Without a catalogue in the context any target name passes (the spec alone cannot know).
    ok = JobSpec.model_validate({"model": "digits-cnn", "targets": ["tpu"]})
    assert ok.targets == ["tpu"]


def test_the_api_reports_an_unknown_target_with_the_other_errors(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    env = {"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    app = create_app(Settings.from_env(env), dispatcher=False)
    with TestClient(app) as c:
        auth = {"Authorization": f"Bearer {app.state.store.create_token('t')}"}
        r = c.post("/api/v1/jobs", json={"model": "digits-cnn", "targets": ["zcu102"]}, headers=auth)
        assert r.status_code == 201, r.text
        assert r.json()["budget"] == 50 and r.json()["spec"]["space"]["wbits"] == [4, 8]
        r = c.post(
            "/api/v1/jobs",
            json={"model": "digits-cnn", "targets": ["tpu"], "space": {"wbits": [7]}, "strategy": "bayes"},
            headers=auth,
        )
        assert r.status_code == 422
        locs = [e["loc"] for e in r.json()["detail"]]
        assert ["body", "targets", 0] in locs and ["body", "strategy"] in locs
        assert ["body", "space", "wbits", 0] in locs
        schema = c.get("/openapi.json").json()["paths"]["/api/v1/jobs"]["post"]["requestBody"]
        assert schema["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/JobSpec"


def test_rays_startup_banners_are_dropped_and_nothing_else() -> None:
    import logging

    from workers.search._runner import RAY_NOISE, quiet_ray_startup

    quiet_ray_startup()
    quiet_ray_startup()  # idempotent
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    for name, start in RAY_NOISE:
        logger = logging.getLogger(name)
        assert sum(1 for f in logger.filters if type(f).__name__ == "_DropRayNoise") == 1
        handler = Keep()
        logger.addHandler(handler)
        try:
            logger.warning(start + " ... the banner")
            logger.warning("something Ray needs to say")
        finally:
            logger.removeHandler(handler)
    assert seen == ["something Ray needs to say"] * len(RAY_NOISE)


def test_the_api_front_carries_the_reference_and_ratios_against_it(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    env = {"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    app = create_app(Settings.from_env(env), dispatcher=False)
    with TestClient(app) as c:
        doc = _front_with_two_trials(app.state.store, c)
    assert doc["reference"]["number"] == 0
    rows = {row["number"]: row for row in doc["front"]}
    assert rows[0]["speedup@zcu102"] == 1.0 and rows[0]["size_ratio"] == 1.0
    assert rows[1]["speedup@zcu102"] == pytest.approx(2.0) and rows[1]["speedup@a100"] == pytest.approx(4.0)
    assert rows[1]["size_ratio"] == pytest.approx(0.25) and rows[1]["costs"]  # existing keys kept


def _front_with_two_trials(store: Any, c: Any) -> Any:
    job = store.create_job(
        JobSpec.model_validate({"model": "digits-cnn", "targets": ["zcu102", "a100"]}).model_dump(mode="json")
    )

    def costs(zcu_ms: float, a100_ms: float, size: int) -> dict[str, dict[str, float]]:
        return {
            "zcu102": {"latency_ms": zcu_ms, "weight_bytes": size},
            "a100": {"latency_ms": a100_ms, "weight_bytes": size},
        }

    for number, quality, cost in ((0, 0.99, costs(0.2, 0.04, 400)), (1, 0.9, costs(0.1, 0.01, 100))):
        store.add_trial(
            {"job_id": job["id"], "number": number, "status": "ok", "quality": quality, "feasible": True,
             "costs": cost, "plan": {"layers": {}}, "violations": [], "measured": None}
        )  # fmt: skip
    return c.get(f"/api/v1/jobs/{job['id']}/front").json()
