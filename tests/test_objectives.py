"""One definition of a job's objectives, read the same way by the search, the API and the dashboard.

For each objective set (latency on one target, latency on two, weight bytes, energy) a real small
search runs on Ray (digits-cnn, random plans), its trials are stored as the dispatcher stores
them, and the service must agree with the search: the job page's hypervolume curve ends at the
search's hypervolume, and the API's front is the search's front, trial for trial.

Before ``Objectives`` was shared, the job page normalised latency on every target whatever
``spec.objectives`` said, so its curve for ``["quality", "weight_bytes"]`` ended elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from workers.search import JobSpec, MemorySink, SearchResult, ensure_ray, run_search

BASE: dict[str, Any] = {
    "model": "digits-cnn",
    "space": {"keep": [0.5, 0.75], "wbits": [4, 8]},
    "strategy": "random",
    "budget": {"evaluations": 14},
    "concurrency": 1,
}
CASES: dict[str, dict[str, Any]] = {
    "latency on one target": {"targets": ["zcu102"], "objectives": ["quality", "latency_ms"]},
    "latency on two targets": {
        "targets": ["zcu102", "xeon-gold-6240"],
        "objectives": ["quality", "latency_ms"],
    },
    # A quality floor moves the reference point off zero quality.
    "weight bytes": {
        "targets": ["xeon-gold-6240"],
        "objectives": ["quality", "weight_bytes"],
        "constraints": ["quality>=0.5"],
    },
    # Every built-in target has a power figure; energy is power × latency on the phone's CPU.
    "energy": {"targets": ["cortex-a76"], "objectives": ["quality", "energy_mj"]},
}


@pytest.fixture(scope="module")
def ray_started() -> Iterator[None]:
    """Ray for this module's searches (embedded, as ``run_search`` starts it), shut down after."""
    import ray

    started_here = not ray.is_initialized()
    ensure_ray()
    yield
    if started_here:
        ray.shutdown()


def _search_into(client: TestClient, spec: JobSpec, data_dir: Path) -> tuple[str, SearchResult]:
    """A real search of ``spec``; its job and trials stored in the service's database as the
    dispatcher stores them. Returns the job id and the search's result."""
    from latency_models import catalogue

    store = client.app.state.store  # type: ignore[attr-defined]
    job = store.create_job(spec.model_dump(mode="json"))
    sink = MemorySink()
    result = run_search(spec, sink, job_id=job["id"], catalogue=catalogue(data_dir), measure_front=False)
    for trial in sink.job_trials(job["id"]):
        assert store.add_trial(trial.to_dict())
    store.set_status(job["id"], result.status, progress={"hypervolume": result.hypervolume})
    return job["id"], result


@pytest.mark.parametrize("case", list(CASES))
def test_the_page_and_the_api_agree_with_the_search(ray_started: None, tmp_path: Path, case: str) -> None:
    spec = JobSpec.model_validate({**BASE, **CASES[case]})
    env = {"HWSEARCH_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'hwsearch.db'}"}
    with TestClient(create_app(Settings.from_env(env), dispatcher=False)) as client:
        job_id, result = _search_into(client, spec, tmp_path)
        assert result.status == "succeeded" and len(result.trials) == 14
        assert result.hypervolume > 0, "a front that dominates nothing would make the check empty"
        for plot_all in (False, True):
            view = client.get(f"/jobs/{job_id}/view.json", params={"all": plot_all}).json()["view"]
            evaluations, last = view["curve"][-1]
            assert evaluations == 14
            assert last == pytest.approx(result.hypervolume, rel=1e-9)
        front = client.get(f"/api/v1/jobs/{job_id}/front").json()["front"]
        assert [t["number"] for t in front] == [t.number for t in result.front]
        assert front and all(t["feasible"] for t in front)
