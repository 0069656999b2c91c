"""``hwsearch serve --demo`` (what ``make run`` starts): on an empty database, measure this CPU
(the host-cpu target), fit its latency predictor from timed compressed networks, and queue one
search of minilm-l6 (a sentence-embedding transformer) on host-cpu and on a phone core
(cortex-a76), so a new user sees a front that spans a real range: int8 weights and token pruning
make it several times faster at an embedding cosine above 0.95, while the uncompressed model
misses the demo's latency constraint on the phone."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .settings import Settings
from .store import Store

log = logging.getLogger("hwsearch.demo")

DEMO_SPEC: dict[str, Any] = {
    "model": "minilm-l6",
    "targets": ["host-cpu", "cortex-a76"],
    # Quantisation and token pruning only: they build in about a second on a transformer
    # (low-rank factorisation of its 36 Linears takes ~10 s per plan on 2 cores).
    "space": {"wbits": [4, 8], "abits": [8], "token_keep": [0.5, 0.7, 0.85]},
    # The uncompressed model costs 12.0 ms on cortex-a76 (analytic prior): the constraint
    # excludes it, and the quality floor excludes the plans that prune tokens hardest.
    "constraints": ["latency_ms@cortex-a76<=8", "quality>=0.9"],
    "strategy": "guided",
    "budget": {"evaluations": 30},
}

#: What the demo is doing now, for /healthz and ``hwsearch status`` (None: nothing).
_activity: str | None = None
_lock = threading.Lock()


def activity() -> str | None:
    """What the demo is busy with (e.g. "the demo is profiling this CPU ..."), or None."""
    with _lock:
        return _activity


def _set_activity(text: str | None) -> None:
    global _activity
    with _lock:
        _activity = text


def seed_demo(settings: Settings, store: Store) -> str | None:
    """Queue the demo job when the database has no jobs; returns its id (None: nothing to do)."""
    if store.list_jobs(limit=1)[1] > 0:
        return None
    from latency_models import catalogue
    from workers.search import JobSpec

    cat = catalogue(settings.data_dir)
    if "host-cpu" not in cat.load_targets():  # this data dir's targets, not the process's registry
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        _set_activity(
            f"the demo is profiling this CPU (host-cpu: {DEMO_CALIBRATION_PLANS} plans of "
            f"{', '.join(DEMO_CALIBRATION_MODELS)}); its search is queued after that"
        )
        try:
            # Measured in a process of its own: the API process stays torch- and Ray-free.
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                report = pool.submit(calibrate_host_in_worker, str(settings.data_dir)).result()
        finally:
            _set_activity(None)
        log.warning(
            "host-cpu calibrated: %s networks timed (latencies span %.1fx), held-out MAPE %.1f%%, "
            "Spearman %.2f (analytic prior %.2f)%s",
            report.get("n_networks_timed"),
            float(report.get("timed_span") or float("nan")),
            100 * float(report.get("mape") or float("nan")),
            float(report.get("spearman", float("nan"))),
            float(report.get("baselines", {}).get("analytic_prior", {}).get("spearman", float("nan"))),
            f"; {report['activation_note']}" if report.get("activation_note") else "",
        )
        cat.load_targets()
    job = store.create_job(JobSpec.model_validate(DEMO_SPEC).model_dump(mode="json"))
    log.warning(
        "demo job %s queued: %s on %s", job["id"], DEMO_SPEC["model"], ", ".join(DEMO_SPEC["targets"])
    )
    return str(job["id"])


#: What the demo times to fit host-cpu: its own model, uncompressed and with int8 Linears and
#: pruned tokens, whose latencies span more than 3x (so a fit can be told from timing noise;
#: digits-cnn's plans all cost 0.2-0.3 ms here, inside the noise), with a held-out split of 3.
DEMO_CALIBRATION_MODELS = ("minilm-l6",)
DEMO_CALIBRATION_PLANS = 14
DEMO_CALIBRATION_SPACE: dict[str, tuple[float, ...]] = {
    "wbits": (8,),
    "abits": (8,),
    "token_keep": (0.3, 0.5, 0.7),
}


def calibrate_host_in_worker(data_dir: str) -> dict[str, Any]:
    """Measure this CPU, time the demo's calibration plans and fit host-cpu (in a process of
    its own)."""
    from latency_models import catalogue
    from workers.profiling import calibrate_host

    return calibrate_host(
        DEMO_CALIBRATION_MODELS,
        DEMO_CALIBRATION_PLANS,
        repeats=7,
        cat=catalogue(data_dir),
        space=DEMO_CALIBRATION_SPACE,
    )
