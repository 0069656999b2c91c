"""``hwsearch serve --demo`` (what ``make run`` starts): on an empty database, measure this CPU
(the host-cpu target), fit its latency predictor from timed compressed networks, and queue one
search of digits-cnn on host-cpu and on the ZCU102 FPGA board, so a new user sees a front growing
within minutes and a calibration plot of a predictor fitted on this machine."""

from __future__ import annotations

import logging
from typing import Any

from .settings import Settings
from .store import Store

log = logging.getLogger("hwsearch.demo")

DEMO_SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": ["host-cpu", "zcu102"],
    "space": {"rank_fractions": [0.25, 0.5, 0.75], "keep": [0.5, 0.75], "wbits": [4, 6, 8]},
    "strategy": "guided",
    "budget": {"evaluations": 120},
}


def seed_demo(settings: Settings, store: Store) -> str | None:
    """Queue the demo job when the database has no jobs; returns its id (None: nothing to do)."""
    if store.list_jobs(limit=1)[1] > 0:
        return None
    from latency_models import catalogue
    from workers.search import JobSpec

    cat = catalogue(settings.data_dir)
    if "host-cpu" not in cat.load_targets():  # this data dir's targets, not the process's registry
        import ray

        from .dispatcher import start_ray

        start_ray(settings.ray_address)  # measured in a Ray worker: the API process stays torch-free
        task = ray.remote(num_cpus=1)(calibrate_host_in_worker)
        report = ray.get(task.remote(str(settings.data_dir)))
        log.warning(
            "host-cpu calibrated: %s networks timed, held-out MAPE %.1f%%",
            report.get("n_networks_timed"),
            100 * float(report.get("mape") or float("nan")),
        )
        cat.load_targets()
    job = store.create_job(JobSpec.model_validate(DEMO_SPEC).model_dump(mode="json"))
    log.warning("demo job %s queued: digits-cnn on host-cpu and zcu102", job["id"])
    return str(job["id"])


#: What the demo times to fit host-cpu: its own model, with enough plans for a held-out split.
DEMO_CALIBRATION_MODELS = ("digits-cnn",)
DEMO_CALIBRATION_PLANS = 30


def calibrate_host_in_worker(data_dir: str) -> dict[str, Any]:
    """Measure this CPU, time the demo's calibration plans and fit host-cpu (in a Ray worker)."""
    from latency_models import catalogue
    from workers.profiling import calibrate_host

    return calibrate_host(DEMO_CALIBRATION_MODELS, DEMO_CALIBRATION_PLANS, repeats=9, cat=catalogue(data_dir))
