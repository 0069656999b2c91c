"""The front read-model: a job's front and its page view, derived from its stored trials.

The objectives are the search's own (``Objectives`` of workers/search/_objectives.py: which
costs count, their normalisation by the uncompressed model, the reference point and the
hypervolume), so the API's front is the search's front and the job page's hypervolume curve
ends at the search's hypervolume, whatever ``spec.objectives`` says.

Both are cached per job under ``Store.trials_version`` (``FrontCache``, ``ViewCache``): a read
never returns something older than the trials, and while a job runs only the trials written
since the last read are read. The API (service/api/jobs.py) and the dashboard
(service/dashboard.py) import this module; it imports neither.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from workers.search import JobSpec, Objectives, ratio

from .store import Store

__all__ = [
    "MAX_PLOTTED",
    "FrontCache",
    "ViewCache",
    "axis_keys",
    "front_2d",
    "front_of",
    "front_recovered_of",
    "job_view",
    "point",
    "recovered_quality",
]

#: Trials off the front that a job page plots at most (thinned evenly by number); the front is whole.
MAX_PLOTTED = 2000
#: Trial versions as ``Store.trials_version`` gives them: (trials, newest row id, measurements and
#: recoveries stored).
Version = tuple[int, int, int]


def _spec(job: Mapping[str, Any]) -> JobSpec:
    return JobSpec.model_validate(job["spec"])  # stored specs get today's defaults


def front_of(job: Mapping[str, Any], trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated feasible trials of ``job``, best quality first, derived from the trials.

    The objectives are normalised by trial 0 where ``trials`` hold it; dominance does not change
    when an objective is scaled by a positive constant, so a subset without trial 0 (a cached
    front and new trials) has the same front as the search's normalised objectives.
    """
    spec = _spec(job)
    # ``Objectives.front`` returns the very dicts it was given.
    return cast("list[dict[str, Any]]", Objectives.from_trials(spec, trials).front(trials))


def recovered_quality(t: Mapping[str, Any]) -> float | None:
    """The quality of trial ``t`` after the recovery stage (``t["recovered"]["quality"]``), or
    None where it was not recovered."""
    recovered = t.get("recovered")
    if not isinstance(recovered, Mapping) or recovered.get("quality") is None:
        return None
    return float(recovered["quality"])


def front_recovered_of(job: Mapping[str, Any], trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The front of ``job`` on recovered quality: each trial judged on its quality after the
    recovery stage where it has one (its screening quality elsewhere), best quality first.

    The rows are copies of the trials with ``quality`` the quality the front was taken on,
    ``quality_source`` ("recovered" or "screening"), ``quality_screening`` (the search's own
    quality) and ``quality_detail`` the shown quality's interval (``quality_screening_detail``
    the screening one's). A recovered plan's feasibility is judged again on its recovered quality
    (a quality constraint may now hold or fail); the others keep the search's verdict.
    """
    spec = _spec(job)
    goals = Objectives(spec)  # only violations: independent of the reference
    judged: list[dict[str, Any]] = []
    for t in trials:
        recovered = recovered_quality(t)
        row = {
            **t,
            "quality_screening": t.get("quality"),
            "quality_screening_detail": t.get("quality_detail"),
        }
        if recovered is None:
            row["quality_source"] = "screening"
        else:
            detail = (t.get("recovered") or {}).get("quality_detail")
            ok = t.get("status") == "ok" and not goals.violations(recovered, t.get("costs") or {})
            row |= {
                "quality": recovered,
                "quality_source": "recovered",
                "quality_detail": detail,
                "feasible": ok,
            }
        judged.append(row)
    return cast("list[dict[str, Any]]", Objectives.from_trials(spec, judged).front(judged))


class FrontCache:
    """Fronts derived from the trials, recomputed only when a job's trials changed.

    The key is (number of trials, newest trial row id, measurements stored): a new trial or a
    new measurement changes it, so a read never returns a front older than the trials. Without
    it, every read decoded every trial (2,000-trial job, 50 clients: 6.6 s median per read).

    While a job runs its key changes with every trial, and the jobs list polls: when only
    trials were added, the front is extended from the cached one and the new rows (the front
    of a union is the front of one part's front and the other part), not derived from every
    trial again (``Store.trials_added``; a new measurement or a row committed late reads
    everything).
    """

    def __init__(self, max_jobs: int = 256) -> None:
        self._cache: dict[str, tuple[Version, list[dict[str, Any]]]] = {}
        self._recovered: dict[str, tuple[Version, tuple[list[dict[str, Any]], list[int]]]] = {}
        self._lock = threading.Lock()
        self.max_jobs = max_jobs

    def get_recovered(self, store: Store, job: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int]]:
        """(the front on recovered quality, ``front_recovered_of``; the numbers of the job's
        recovered trials), under the same key as ``get``. A job without a recovered trial has
        the screening front (its rows marked "screening") and reads no trial beyond it; with
        one, every trial is read once per change of the key (recoveries come after the search)."""
        key = store.trials_version(job["id"])
        with self._lock:
            hit = self._recovered.get(job["id"])
        if hit is not None and hit[0] == key:
            return hit[1]
        numbers = store.recovered_numbers(job["id"])
        trials = store.trials(job["id"])[0] if numbers else self.get(store, job)
        value = (front_recovered_of(job, trials), numbers)
        with self._lock:
            if len(self._recovered) >= self.max_jobs:
                self._recovered.pop(next(iter(self._recovered)))
            self._recovered[job["id"]] = (key, value)
        return value

    def get(
        self,
        store: Store,
        job: dict[str, Any],
        read: tuple[Version, list[dict[str, Any]]] | None = None,
    ) -> list[dict[str, Any]]:
        """The front of ``job``. ``read`` is (trials version, all trials) that a caller just read,
        the version first, so the trials are at least as new as the key they are stored under."""
        key = store.trials_version(job["id"]) if read is None else read[0]
        with self._lock:
            hit = self._cache.get(job["id"])
        if hit is not None and hit[0] == key:
            return hit[1]
        added = store.trials_added(job["id"], hit[0], key) if read is None and hit is not None else None
        if hit is not None and added is not None:
            rows = front_of(job, sorted(hit[1] + added, key=lambda t: int(t["number"])))
        else:
            rows = front_of(job, store.trials(job["id"])[0] if read is None else read[1])
        with self._lock:
            if len(self._cache) >= self.max_jobs:
                self._cache.pop(next(iter(self._cache)))
            self._cache[job["id"]] = (key, rows)
        return rows


def point(
    t: Mapping[str, Any],
    targets: list[str],
    on_front: set[int],
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One trial as the job and compare pages plot it: costs per target (latency with its
    interval, energy where the target has a power figure), weight bytes, the host measurement.
    A recovered trial also has ``quality_recovered``, its interval (``quality_recovered_detail``)
    and the recipe (``recovery``: steps, lr, batch, loss, n_calibration, seconds, metric); the
    others have none of these keys (a job page holds thousands of points).

    With ``reference`` (trial 0, the uncompressed model, stored), ``speedup`` per target is the
    reference's latency over this trial's and ``size_ratio`` this trial's weight bytes over the
    reference's (None where either is unknown)."""
    costs = {name: t["costs"].get(name, {}) for name in targets}
    measured = t.get("measured") or {}
    ref = {name: (reference or {}).get("costs", {}).get(name, {}) for name in targets}
    weight_bytes = costs[targets[0]].get("weight_bytes")
    out: dict[str, Any] = {
        "number": t["number"],
        "quality": t["quality"],
        "latency_ms": {n: c.get("latency_ms") for n, c in costs.items()},
        "low_ms": {n: c.get("latency_low_ms") for n, c in costs.items()},
        "high_ms": {n: c.get("latency_high_ms") for n, c in costs.items()},
        "energy_mj": {n: c.get("energy_mj") for n, c in costs.items()},
        "weight_bytes": weight_bytes,
        "measured_ms": measured.get("latency_ms"),
        # Which of this machine's targets the front was measured on (rows from before issue 19
        # have no "target": they are host-cpu's).
        "measured_target": measured.get("target", "host-cpu") if measured else None,
        # Every target's measured latency (this machine's and each device's, issue 19).
        "measured_on": {
            name: m["latency_ms"]
            for name, m in (t.get("measured_on") or {}).items()
            if name in costs and m.get("latency_ms") is not None
        },
        "feasible": bool(t.get("feasible")),
        "front": t["number"] in on_front,
        "reference": int(t["number"]) == 0,
        "speedup": {n: ratio(ref[n].get("latency_ms"), c.get("latency_ms")) for n, c in costs.items()},
        "size_ratio": ratio(weight_bytes, ref[targets[0]].get("weight_bytes")),
    }
    recovered = recovered_quality(t)
    if recovered is not None:
        rec = t["recovered"]
        out["quality_recovered"] = recovered
        out["quality_recovered_detail"] = rec.get("quality_detail")
        out["recovery"] = {k: rec.get(k) for k in RECIPE}
    return out


#: The recovery stage's recipe as a recovered trial records it (``Trial.recovered``).
RECIPE = ("steps", "lr", "batch", "loss", "n_calibration", "seconds", "metric")


def axis_keys(targets: list[str], trials: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """The job page's x-axis choices, key -> (metric, target) as trials store costs: latency per
    target, weight size, and energy per target where some trial has an energy figure."""
    keys = {f"latency:{t}": ("latency_ms", t) for t in targets}
    keys["size"] = ("weight_bytes", targets[0])
    for t in targets:
        if any((tr["costs"].get(t) or {}).get("energy_mj") is not None for tr in trials):
            keys[f"energy:{t}"] = ("energy_mj", t)
    return keys


def front_2d(trials: list[dict[str, Any]], metric: str, target: str) -> list[int]:
    """Numbers of the feasible trials non-dominated in (quality, ``metric`` on ``target``) alone,
    best quality first: the front a plot of quality against that one cost shows. A job with more
    cost objectives has a front that, projected on one axis, holds points that look dominated."""
    return fronts_2d(trials, {"axis": (metric, target)})["axis"]


def fronts_2d(trials: list[dict[str, Any]], axes: Mapping[str, tuple[str, str]]) -> dict[str, list[int]]:
    """``front_2d`` for every axis of ``axes`` (key → (metric, target)), reading the trials once.

    Vectorised because the job view asks for one per x-axis choice on every change of a running
    job: sorted by quality (best first, then cheapest), a trial is on the 2-D front exactly when it
    is cheaper than every trial before it (duplicates kept once, as ``front_mask`` keeps them).
    """
    ok = [t for t in trials if t.get("feasible") and t.get("quality") is not None]
    numbers = np.fromiter((int(t["number"]) for t in ok), dtype=np.int64, count=len(ok))
    quality = np.fromiter((float(t["quality"]) for t in ok), dtype=np.float64, count=len(ok))
    out: dict[str, list[int]] = {}
    for key, (metric, target) in axes.items():
        cost = np.fromiter((_cost_or_nan(t, metric, target) for t in ok), dtype=np.float64, count=len(ok))
        valid = np.isfinite(cost) & np.isfinite(quality)
        n, q, c = numbers[valid], quality[valid], cost[valid]
        order = np.lexsort((c, -q))  # best quality first, the cheapest first among equals
        c_sorted = c[order]
        cheapest_before = np.minimum.accumulate(np.concatenate(([np.inf], c_sorted[:-1])))
        out[key] = [int(v) for v in n[order][c_sorted < cheapest_before]]
    return out


def _cost_or_nan(t: Mapping[str, Any], metric: str, target: str) -> float:
    value = (t["costs"].get(target) or {}).get(metric)
    return math.nan if value is None else float(value)


def _initial(front: list[dict[str, Any]], reference: Mapping[str, Any] | None, target: str) -> int | None:
    """The trial a job page opens on: the best-quality front point cheaper than the reference on
    the first target (a real win), else the best-quality compressed front point, else any."""
    compressed = [p for p in front if not p["reference"]] or front
    if not compressed:
        return None
    ref_ms = ((reference or {}).get("costs", {}).get(target) or {}).get("latency_ms")
    if ref_ms is not None:
        cheaper = [p for p in compressed if (p["latency_ms"].get(target) or math.inf) < float(ref_ms)]
        if cheaper:
            return int(cheaper[0]["number"])  # the front is best quality first
    return int(compressed[0]["number"])


def _curve(spec: JobSpec, ok: list[dict[str, Any]]) -> list[list[float]]:
    """(evaluations, hypervolume of the feasible trials among them) at up to ~60 marks, in trial
    number order; empty until trial 0 (the reference) has been evaluated."""
    if not any(int(t["number"]) == 0 for t in ok):
        return []
    goals = Objectives.from_trials(spec, ok)
    ordered = sorted(ok, key=lambda t: int(t["number"]))
    vectors: list[list[float]] = []
    marks = max(1, len(ordered) // 60)
    cuts = []  # (evaluations, feasible trials among them) at each mark of the curve
    for i, t in enumerate(ordered, start=1):
        if t.get("feasible"):
            vectors.append(goals.vector(float(t["quality"]), t["costs"]))
        if i % marks == 0 or i == len(ordered):
            cuts.append((i, len(vectors)))
    # One array, sliced at each mark: converting the growing list 60 times cost more than
    # the hypervolumes themselves.
    table = np.asarray(vectors, dtype=np.float64).reshape(-1, len(goals.reference_point()))
    return [[i, goals.hypervolume(table[:n])] for i, n in cuts]


def job_view(
    job: dict[str, Any],
    trials: list[dict[str, Any]],
    front: list[dict[str, Any]],
    *,
    max_plotted: int | None = MAX_PLOTTED,
) -> dict[str, Any]:
    """What the job page plots: points (the front complete, the other trials thinned to
    ``max_plotted`` evenly by number, plus the reference and the 2-D fronts' points; None keeps
    them all), the hypervolume curve, the front, the reference (trial 0) and, per x-axis choice,
    the 2-D front on it (``front_2d``), and the trial the page opens on (``initial``).

    The curve is the search's hypervolume after each number of evaluations (``Objectives``,
    trial 0 as the reference), so its last value is the job's hypervolume.
    """
    spec = _spec(job)
    targets = list(spec.targets)
    on_front = {int(t["number"]) for t in front}
    ok = [t for t in trials if t.get("quality") is not None]
    zero = next((t for t in ok if int(t["number"]) == 0), None)
    # The 2-D front on each x-axis choice, from every trial (not the thinned ones), so a point
    # the page highlights is always plotted.
    axes = axis_keys(targets, ok)
    fronts_2d_by_axis = fronts_2d(ok, axes)
    # Recovered plans (a few front plans) and the front on recovered quality are always plotted.
    recovered = [int(t["number"]) for t in ok if recovered_quality(t) is not None]
    front_recovered = [int(t["number"]) for t in front_recovered_of(job, ok)] if recovered else []
    keep = {n for numbers in fronts_2d_by_axis.values() for n in numbers} | {0}
    keep |= set(recovered) | set(front_recovered)
    rest = [t for t in ok if t["number"] not in on_front]
    if max_plotted is not None and len(rest) > max_plotted:
        step = len(rest) / max_plotted
        thinned = {int(rest[int(i * step)]["number"]) for i in range(max_plotted)}
        rest = [t for t in rest if int(t["number"]) in thinned or int(t["number"]) in keep]
    front_points = [point(t, targets, on_front, zero) for t in front]
    # Why trials failed, most frequent first (a failed trial keeps its exception as text).
    errors = Counter(str(t.get("error") or "no error recorded") for t in trials if t.get("quality") is None)
    provenance = {
        name: (front[0]["costs"].get(name, {}).get("provenance") if front else None) for name in targets
    }
    reference = None if zero is None else point(zero, targets, on_front, zero)
    return {
        "targets": targets,
        "points": front_points + [point(t, targets, on_front, zero) for t in rest],
        "n_trials": len(trials),
        "n_failed": len(trials) - len(ok),
        "n_plotted_rest": len(rest),
        "n_rest": len(ok) - len(front),
        "curve": _curve(spec, ok),
        "front": front_points,
        # The uncompressed model: every plot marks it, the front's table lists it first.
        "reference": reference,
        # The objectives the front is non-dominated in (quality, then metric@target).
        "objectives": Objectives(spec).names,
        "front_2d": fronts_2d_by_axis,
        "initial": _initial(front_points, zero, targets[0]),
        "provenance": provenance,
        "constraints": [c.model_dump() for c in spec.constraints],
        "failures": [{"error": e, "count": n} for e, n in errors.most_common(5)],
        # The recovery stage: the trials recovered, the front on recovered quality (numbers, best
        # recovered-or-screening quality first), the spec's recipe (None: no recovery asked).
        "recovered": recovered,
        "front_recovered": front_recovered,
        "recovery": None if spec.recovery.finetune is None else spec.recovery.finetune.model_dump(),
        "calibrate": spec.recovery.calibrate,
    }


class ViewCache:
    """Job views, recomputed only when the job's trials changed (the key of ``FrontCache``):
    the page polls while a job runs, and a 10,000-trial job costs seconds to decode.

    For a running job the decoded trials are kept too (at most ``max_running`` jobs), so each
    change reads only the trials written since (``Store.trials_added``), as ``FrontCache``
    does; a new measurement or a row committed late reads them all again.
    """

    def __init__(self, max_entries: int = 64, max_running: int = 4) -> None:
        self._cache: dict[tuple[str, bool], tuple[Version, dict[str, Any]]] = {}
        self._trials: dict[str, tuple[Version, list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.max_running = max_running

    def get(self, store: Store, fronts: FrontCache, job: dict[str, Any], *, plot_all: bool) -> dict[str, Any]:
        key = (str(job["id"]), plot_all)
        version = store.trials_version(job["id"])
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        trials = self._read(store, job, version)
        front = fronts.get(store, job, (version, trials))
        view = job_view(job, trials, front, max_plotted=None if plot_all else MAX_PLOTTED)
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (version, view)
        return view

    def _read(self, store: Store, job: dict[str, Any], version: Version) -> list[dict[str, Any]]:
        job_id = str(job["id"])
        with self._lock:
            kept = self._trials.pop(job_id, None)
        trials = None
        if kept is not None and kept[0] == version:  # read for the other of plot_all's two views
            trials = kept[1]
        elif kept is not None and (added := store.trials_added(job_id, kept[0], version)) is not None:
            trials = sorted(kept[1] + added, key=lambda t: int(t["number"]))
        if trials is None:
            trials = store.trials(job_id)[0]
        if job["status"] in ("queued", "running"):
            with self._lock:
                while len(self._trials) >= self.max_running:
                    self._trials.pop(next(iter(self._trials)))
                self._trials[job_id] = (version, trials)
        return trials
