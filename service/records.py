"""Rows as the API and the dashboard see them: ORM rows to plain dicts (UTC-aware times, a
schedule's regressions, JSON-safe reports), a new job row from a spec, and the next firing of a
cron schedule. No SQL here: ``store.py`` runs every query and uses these to shape its answers.
"""

from __future__ import annotations

import itertools
import math
import uuid
from datetime import datetime
from typing import Any

from .db import Device, Fit, Job, MeasureTask, Profile, Schedule, TrialRow, utcnow


def aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=utcnow().tzinfo)


def job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "model": job.model,
        "targets": job.targets.split(","),
        "strategy": job.strategy,
        "budget": job.budget,
        "evaluations": job.evaluations,
        "hypervolume": job.hypervolume,
        "progress": job.progress or {},
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "created_at": aware(job.created_at),
        "started_at": aware(job.started_at),
        "finished_at": aware(job.finished_at),
        "spec": job.spec,
        "owner": job.owner,
        "generation": job.generation or 0,
    }


def trial_dict(row: TrialRow, devices: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    return merged_trial(row.data, row.measured, row.recovered, devices)


def merged_trial(
    data: dict[str, Any],
    measured: dict[str, Any] | None,
    recovered: dict[str, Any] | None = None,
    devices: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A stored trial as the API gives it: the trial's own fields (``Trial.to_dict()``) with what
    was stored after it winning over the trial's own: ``measured`` (the front measured on this
    machine, or on a device when the trial has no such measurement) and ``recovered`` (the
    recovery stage). ``measured_on`` holds every measurement by target: ``measured``'s and each
    device target's newest (``devices``, from ``device_measurements``). ``calibration`` and
    ``recovered`` are always present (None in trials stored before they existed)."""
    measured = measured if measured is not None else data.get("measured")
    on: dict[str, dict[str, Any]] = {}
    if measured:
        on[str(measured.get("target", "host-cpu"))] = measured
    on.update(devices or {})
    return {
        **data,
        "calibration": data.get("calibration"),
        "measured": measured,
        "measured_on": on,
        "recovered": recovered if recovered is not None else data.get("recovered"),
    }


def new_job(
    spec: dict[str, Any],
    schedule_id: str | None = None,
    scheduled_for: datetime | None = None,
    owner: str | None = None,
) -> Job:
    return Job(
        id=uuid.uuid4().hex[:16],
        status="queued",
        spec=spec,
        model=spec["model"],
        targets=",".join(spec["targets"]),
        strategy=spec["strategy"],
        budget=(spec.get("budget") or {}).get("evaluations"),
        evaluations=0,
        progress={},
        cancel_requested=False,
        generation=0,
        created_at=utcnow(),
        schedule_id=schedule_id,
        scheduled_for=scheduled_for,
        owner=owner,
    )


def next_firing(cron: str, timezone: str, after: datetime) -> datetime:
    """The first time after ``after`` that ``cron`` fires in ``timezone``, in UTC."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    local = after.astimezone(ZoneInfo(timezone))
    nxt: datetime = croniter(cron, local).get_next(datetime)
    return nxt.astimezone(utcnow().tzinfo)


def schedule_dict(schedule: Schedule, runs: list[Job]) -> dict[str, Any]:
    """A schedule with its last runs (newest first); a succeeded run whose hypervolume is below
    the previous succeeded run's is flagged as a regression (same spec, same reference point)."""
    done = [j for j in runs if j.status == "succeeded" and j.hypervolume is not None]
    worse = {
        newer.id
        for newer, older in itertools.pairwise(done)
        if (newer.hypervolume or 0.0) < (older.hypervolume or 0.0)
    }
    return {
        "id": schedule.id,
        "name": schedule.name,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "spec": schedule.spec,
        "drift": schedule.drift,
        "enabled": schedule.enabled,
        "next_run_at": aware(schedule.next_run_at) if schedule.enabled else None,
        "created_at": aware(schedule.created_at),
        "owner": schedule.owner,
        "last_runs": [
            {
                "job_id": j.id,
                "status": j.status,
                "scheduled_for": aware(j.scheduled_for),
                "hypervolume": j.hypervolume,
                "regression": j.id in worse,
            }
            for j in runs
        ],
        "regression": bool(done) and done[0].id in worse,
    }


def device_dict(device: Device, online_s: float) -> dict[str, Any]:
    """A device as the API lists it; ``online`` when it was seen in the last ``online_s`` seconds."""
    seen = aware(device.last_seen_at)
    return {
        "id": device.id,
        "name": device.name,
        "target": device.target,
        "runtime": device.runtime,
        "threads": device.threads,
        "info": device.info or {},
        "owner": device.owner,
        "registered_at": aware(device.registered_at),
        "last_seen_at": seen,
        "online": seen is not None and (utcnow() - seen).total_seconds() <= online_s,
        "tasks_done": device.tasks_done,
    }


def task_dict(task: MeasureTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "profile_id": task.profile_id,
        "job_id": task.job_id,
        "trial": task.trial,
        "target": task.target,
        "model": task.model,
        "plan": task.plan,
        "batch": task.batch,
        "files": task.files,
        "runtime": task.runtime,
        "status": task.status,
        "device_id": task.device_id,
        "lease_expires_at": aware(task.lease_expires_at),
        "leases": task.leases,
        "result": task.result,
        "created_at": aware(task.created_at),
        "finished_at": aware(task.finished_at),
    }


def profile_dict(profile: Profile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "target": profile.target,
        "owner": profile.owner,
        "status": profile.status,
        "spec": profile.spec,
        "n_tasks": profile.n_tasks,
        "fit_id": profile.fit_id,
        "error": profile.error,
        "created_at": aware(profile.created_at),
        "deadline_at": aware(profile.deadline_at),
        "finished_at": aware(profile.finished_at),
        "schedule_id": profile.schedule_id,
    }


def fit_dict(fit: Fit) -> dict[str, Any]:
    return {
        "id": fit.id,
        "target": fit.target,
        "family": fit.family,
        "kind": fit.kind,
        "status": fit.status,
        "csv_path": fit.csv_path,
        "report": fit.report,
        "error": fit.error,
        "created_at": aware(fit.created_at),
        "finished_at": aware(fit.finished_at),
        "owner": fit.owner,
        "cancel_requested": fit.cancel_requested,
    }


#: Stored error messages are cut to this many characters: an error may echo its input (a 50 MB
#: spec once came back in every job listing).
MAX_ERROR_CHARS = 2000


def truncated(error: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """``error`` cut to ``limit`` characters, saying how much was left out."""
    if error is None or len(error) <= limit:
        return error
    return f"{error[:limit]}… ({len(error) - limit} more characters not stored)"


def json_safe(value: Any) -> Any:
    """``value`` with NaN and ±inf as None: PostgreSQL's json type refuses them (a Spearman of
    two rows is NaN), and JSON itself has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
