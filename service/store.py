"""Storage of jobs, trials and tokens: the only module that writes SQL.

- A job is committed before ``create_job`` returns (the API answers 201 after that).
- ``add_trial`` is idempotent on (job id, trial number): INSERT … ON CONFLICT DO NOTHING.
- ``claim`` hands a queued job to exactly one dispatcher: on PostgreSQL with SELECT … FOR UPDATE
  SKIP LOCKED, on SQLite (one writer at a time) with a conditional UPDATE; either way the
  UPDATE only succeeds while the job is still queued.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Text, cast, delete, func, literal, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .auth import ALL_SCOPES, Principal, check_owner
from .db import (
    FINISHED,
    ApiToken,
    Dataset,
    Device,
    DeviceMeasurement,
    Fit,
    Job,
    MeasureTask,
    Profile,
    Schedule,
    TargetOwner,
    TrialRow,
    utcnow,
)
from .records import (
    aware,
    device_dict,
    fit_dict,
    job_dict,
    json_safe,
    merged_trial,
    new_job,
    next_firing,
    profile_dict,
    schedule_dict,
    task_dict,
    trial_dict,
    truncated,
)

R = TypeVar("R", Job, Fit, Profile)


class NotFound(LookupError):
    """No such row; the message names it as the API's 404 says it ("no job 'abc'")."""


class Conflict(RuntimeError):
    """The row is in a state that forbids the change; the message says why (the API's 409)."""


#: Keys of a job's progress that the service writes (not its runner), kept across status updates.
SERVICE_PROGRESS = ("requeued", "requeued_because")


class Fenced(RuntimeError):
    """A runner's claim on its job was taken over (requeued or claimed again): it must stop,
    and its write was refused. Raised by the writes given the ``generation`` the runner claimed."""


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    # ---- jobs -----------------------------------------------------------------------------
    def create_job(self, spec: dict[str, Any], *, owner: str | None = None) -> dict[str, Any]:
        job = new_job(spec, owner=owner)
        with self.session() as s:
            s.add(job)
        return job_dict(job)

    def get_job(self, job_id: str) -> dict[str, Any]:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            return job_dict(job)

    def list_jobs(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        target: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        query = select(Job)
        if status:
            query = query.where(Job.status == status)
        if model:
            query = query.where(Job.model == model)
        if target:
            # targets is "a,b,c": match a whole name
            query = query.where((literal(",") + Job.targets + literal(",")).contains(f",{target},"))
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
            return [job_dict(j) for j in rows], total

    def request_cancel(self, job_id: str) -> dict[str, Any]:
        """A queued job is cancelled at once; a running one is flagged for its dispatcher."""
        with self.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            if job.status == "queued":
                job.status, job.finished_at = "cancelled", utcnow()
            elif job.status == "running":
                job.cancel_requested = True
            return job_dict(job)

    def delete_job(self, job_id: str) -> None:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            if job.status not in FINISHED:
                raise Conflict(
                    f"job {job_id} is {job.status}; only finished jobs can be deleted (cancel it first)"
                )
            s.execute(delete(TrialRow).where(TrialRow.job_id == job_id))
            s.execute(delete(DeviceMeasurement).where(DeviceMeasurement.job_id == job_id))
            s.delete(job)

    # ---- the dispatcher's side ----------------------------------------------------------------
    def claim(self, worker: str) -> dict[str, Any] | None:
        """Move the oldest queued job to running for ``worker``; None when there is none. The
        claim raises the job's ``generation``: the fencing token its runner presents on every
        write (``add_trial``, ``set_status``, ``heartbeat``)."""
        with self.session() as s:
            job = self._claim(s, Job, worker, generation=Job.generation + 1)
            return None if job is None else job_dict(job)

    def claim_fit(self, worker: str) -> dict[str, Any] | None:
        """Like ``claim``, for predictor fits."""
        with self.session() as s:
            fit = self._claim(s, Fit, worker)
            return None if fit is None else fit_dict(fit)

    def _claim(self, s: Session, model: type[R], worker: str, **extra: Any) -> R | None:
        query = select(model.id).where(model.status == "queued").order_by(model.created_at).limit(1)
        if self.engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row_id = s.scalar(query)
        if row_id is None:
            return None
        now = utcnow()
        done = s.execute(
            update(model)
            .where(model.id == row_id, model.status == "queued")
            .values(status="running", claimed_by=worker, heartbeat_at=now, started_at=now, **extra)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            return None
        row = s.get(model, row_id)
        if row is not None:
            s.refresh(row)
        return row

    def requeue_orphans(self, stale_after_s: float) -> list[str]:
        """Running jobs and fits whose dispatcher stopped beating go back to the queue (a job
        resumes from its stored trials when claimed again)."""
        limit = utcnow() - timedelta(seconds=stale_after_s)
        ids = []
        with self.session() as s:
            ids += (
                self._requeue(s, Job, limit) + self._requeue(s, Fit, limit) + self._requeue(s, Profile, limit)
            )
        return ids

    @staticmethod
    def _requeue(s: Session, model: type[R], limit: datetime) -> list[str]:
        stale = (model.status == "running") & (model.heartbeat_at < limit)
        rows = s.scalars(select(model).where(stale).with_for_update()).all()
        for row in rows:
            row.status, row.claimed_by = "queued", None
            if isinstance(row, Job):
                row.generation = (row.generation or 0) + 1  # fences the runner that went quiet
        return [row.id for row in rows]

    def requeue(self, job_id: str, generation: int, reason: str, *, count: bool = True) -> bool:
        """Give a running job back to the queue (its runner's cluster was lost, not the job's
        fault); False when the claim had already moved on. The reason is kept in its progress."""
        with self.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.generation != generation or job.status != "running":
                return False
            progress = dict(job.progress or {})
            if count:  # ``count`` False: it never started (Ray was away), not a lost runner
                progress["requeued"] = int(progress.get("requeued", 0)) + 1
            progress["requeued_because"] = truncated(reason, 500)
            job.status, job.claimed_by, job.progress = "queued", None, progress
            job.generation = generation + 1
            return True

    def release(self, worker: str, reason: str, *, max_requeues: int) -> list[str]:
        """Everything ``worker`` (a dispatcher process that ended) was running goes back to the
        queue at once, rather than after the orphan timeout. Each job's claim is fenced and the
        loss counted: a job lost more than ``max_requeues`` times fails with ``reason``."""
        ids: list[str] = []
        with self.session() as s:
            mine = (Job.status == "running") & (Job.claimed_by == worker)
            for job in s.scalars(select(Job).where(mine).with_for_update()).all():
                progress = dict(job.progress or {})
                lost = int(progress.get("requeued", 0))
                job.generation = (job.generation or 0) + 1
                job.claimed_by = None
                if lost >= max_requeues:
                    job.status, job.finished_at = "failed", utcnow()
                    error = f"its runner was lost {lost + 1} times; the last time: {reason}"
                    job.error = truncated(error, 2000)
                else:
                    progress["requeued"] = lost + 1
                    progress["requeued_because"] = truncated(f"its runner was lost: {reason}", 500)
                    job.status, job.progress = "queued", progress
                ids.append(job.id)
            fits = (Fit.status == "running") & (Fit.claimed_by == worker)
            for fit in s.scalars(select(Fit).where(fits).with_for_update()).all():
                fit.status, fit.claimed_by = "queued", None
                ids.append(fit.id)
        return ids

    def heartbeat(self, job_id: str, worker: str, generation: int | None = None) -> bool:
        """Refresh the claim; returns whether a cancel was requested. Given the claimed
        ``generation``, raises :class:`Fenced` when the claim was taken over."""
        with self.session() as s:
            where = [Job.id == job_id, Job.claimed_by == worker]
            if generation is not None:
                where.append(Job.generation == generation)
            done = s.execute(update(Job).where(*where).values(heartbeat_at=utcnow()))
            if generation is not None and done.rowcount != 1:  # type: ignore[attr-defined]
                raise Fenced(f"job {job_id}: the claim of generation {generation} was taken over")
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def _fence(self, s: Session, job_id: str, generation: int | None) -> None:
        """Within a write's transaction: refuse it unless ``generation`` is still the job's.
        The row is share-locked (PostgreSQL; SQLite's write transactions are serial), so a claim
        cannot move between the check and the write."""
        if generation is None:
            return
        current = s.scalar(select(Job.generation).where(Job.id == job_id).with_for_update(read=True))
        if current != generation:
            raise Fenced(f"job {job_id}: generation {generation} is fenced (now {current})")

    def set_status(
        self,
        job_id: str,
        status: str,
        *,
        progress: dict[str, Any] | None = None,
        error: str | None = None,
        generation: int | None = None,
    ) -> None:
        values: dict[str, Any] = {"status": status}
        if progress is not None:
            values["progress"] = json_safe(progress)
            if "evaluations" in progress:
                values["evaluations"] = int(progress["evaluations"])
            if progress.get("hypervolume") is not None:
                values["hypervolume"] = float(progress["hypervolume"])
        if error is not None:
            values["error"] = truncated(error)
        if status in FINISHED:
            values["finished_at"] = utcnow()
        with self.session() as s:
            self._fence(s, job_id, generation)
            if progress is not None:
                # What the service itself noted (requeues of a lost runner) outlives the
                # runner's own progress reports.
                before = s.scalar(select(Job.progress).where(Job.id == job_id)) or {}
                kept = {k: before[k] for k in SERVICE_PROGRESS if k in before}
                if kept:
                    values["progress"] = {**values["progress"], **kept}
            s.execute(update(Job).where(Job.id == job_id).values(**values))

    # ---- trials -----------------------------------------------------------------------------
    def add_trial(self, trial: dict[str, Any], generation: int | None = None) -> bool:
        """Store a trial once; False when (job id, number) was already stored. Given the
        runner's ``generation``, a fenced runner's trial is refused (:class:`Fenced`)."""
        values = {
            "job_id": trial["job_id"],
            "number": int(trial["number"]),
            "status": trial["status"],
            "quality": trial.get("quality"),
            "feasible": bool(trial.get("feasible")),
            "data": json_safe(trial),
            "measured": json_safe(trial.get("measured")),
            "recovered": json_safe(trial.get("recovered")),
            "created_at": utcnow(),
        }
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        stmt = insert(TrialRow).values(**values).on_conflict_do_nothing(index_elements=["job_id", "number"])
        with self.session() as s:
            self._fence(s, trial["job_id"], generation)
            # RETURNING says whether a row went in (rowcount is unreliable for DO NOTHING).
            return s.execute(stmt.returning(TrialRow.id)).first() is not None

    def add_measurement(
        self, job_id: str, number: int, measured: dict[str, Any], generation: int | None = None
    ) -> None:
        with self.session() as s:
            self._fence(s, job_id, generation)
            s.execute(
                update(TrialRow)
                .where(TrialRow.job_id == job_id, TrialRow.number == number)
                .values(measured=json_safe(measured))
            )

    def add_device_measurement(self, job_id: str, number: int, measured: dict[str, Any]) -> bool:
        """Store a front plan's result from a device agent (or why it has none): a row of its own
        (the trial's ``measured_on[target]`` is the newest), and the trial's ``measured`` too
        unless it holds another target's measurement (this machine's, taken by the search).
        Returns whether it was stored (False: no such trial)."""
        with self.session() as s:
            row = s.scalar(
                select(TrialRow).where(TrialRow.job_id == job_id, TrialRow.number == number).with_for_update()
            )
            if row is None:
                return False
            s.add(
                DeviceMeasurement(
                    job_id=job_id,
                    number=number,
                    target=str(measured.get("target")),
                    data=json_safe(measured),
                    created_at=utcnow(),
                )
            )
            held = row.measured or {}
            if not held or held.get("target", "host-cpu") == measured.get("target"):
                row.measured = json_safe(measured)
            return True

    def add_recovery(
        self, job_id: str, number: int, recovered: dict[str, Any], generation: int | None = None
    ) -> bool:
        """Store the recovery stage's result for trial ``number`` (``Trial.recovered``: recovered
        quality and recipe) beside its screening quality. Idempotent as ``add_trial`` is: the
        first result stays (a resumed runner that reports a plan again changes nothing, and the
        version the front caches are keyed on, ``trials_version``, counts each recovery once).
        Returns whether this call stored it (False: already recovered, or no such trial). Given
        the runner's ``generation``, a fenced runner's write is refused (:class:`Fenced`)."""
        with self.session() as s:
            self._fence(s, job_id, generation)
            done = s.execute(
                update(TrialRow)
                .where(TrialRow.job_id == job_id, TrialRow.number == number, TrialRow.recovered.is_(None))
                .values(recovered=json_safe(recovered))
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def recovered_numbers(self, job_id: str) -> list[int]:
        """Numbers of the job's trials that have a recovered quality, in order."""
        query = (
            select(TrialRow.number)
            .where(TrialRow.job_id == job_id, TrialRow.recovered.is_not(None))
            .order_by(TrialRow.number)
        )
        with self.session() as s:
            return [int(n) for n in s.scalars(query)]

    def trials(
        self, job_id: str, *, limit: int | None = None, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        with self.session() as s:
            if s.get(Job, job_id) is None:
                raise NotFound(f"no job {job_id!r}")
            total = s.scalar(select(func.count()).where(TrialRow.job_id == job_id)) or 0
            # Two columns, not ORM objects: a 10,000-trial job decodes in about half the time.
            query = (
                select(TrialRow.data, TrialRow.measured, TrialRow.recovered)
                .where(TrialRow.job_id == job_id)
                .order_by(TrialRow.number)
                .offset(offset)
            )
            if limit is not None:
                query = query.limit(limit)
            rows = s.execute(query).all()
            devices = self._device_measured(s, job_id)
            return [merged_trial(d, m, r, devices.get(int(d["number"]))) for d, m, r in rows], total

    @staticmethod
    def _device_measured(
        s: Session, job_id: str, number: int | None = None
    ) -> dict[int, dict[str, dict[str, Any]]]:
        """Trial number → target → that target's newest device measurement, for one job (or only
        its trial ``number``)."""
        out: dict[int, dict[str, dict[str, Any]]] = {}
        query = (
            select(DeviceMeasurement.number, DeviceMeasurement.target, DeviceMeasurement.data)
            .where(DeviceMeasurement.job_id == job_id)
            .order_by(DeviceMeasurement.id)
        )
        if number is not None:
            query = query.where(DeviceMeasurement.number == number)
        for number, target, data in s.execute(query):
            out.setdefault(int(number), {})[str(target)] = data
        return out

    def trials_added(
        self, job_id: str, old: tuple[int, int, int], new: tuple[int, int, int]
    ) -> list[dict[str, Any]] | None:
        """The trials written between two ``trials_version`` values, or None when the versions
        differ by more than added trials (a new measurement or recovery) or the added rows cannot be told by
        their ids (a row committed late with an id below ``old``'s newest): then read them all.

        Rows with ids in ``(old newest, new newest]`` were not there at ``old``; they are all
        the added trials exactly when their count is the growth of the count.
        """
        if not (new[0] > old[0] and new[1] > old[1] and new[2] == old[2]):
            return None
        query = (
            select(TrialRow.data, TrialRow.measured, TrialRow.recovered)
            .where(TrialRow.job_id == job_id, TrialRow.id > old[1], TrialRow.id <= new[1])
            .order_by(TrialRow.number)
        )
        with self.session() as s:
            devices = self._device_measured(s, job_id)
            rows = s.execute(query).all()
            added = [merged_trial(d, m, r, devices.get(int(d["number"]))) for d, m, r in rows]
        return added if len(added) == new[0] - old[0] else None

    def trials_version(self, job_id: str) -> tuple[int, int, int]:
        """(trials, newest trial row id, measurements and recoveries stored): changes with every
        write (a measurement or a recovery is written once per trial, and every device result is
        a row of its own, so the count grows)."""
        later = func.count(TrialRow.measured) + func.count(TrialRow.recovered)
        query = select(func.count(), func.coalesce(func.max(TrialRow.id), 0), later)
        by_devices = select(func.count()).where(DeviceMeasurement.job_id == job_id)
        with self.session() as s:
            count, newest, n_measured = s.execute(query.where(TrialRow.job_id == job_id)).one()
            return int(count), int(newest), int(n_measured) + int(s.scalar(by_devices) or 0)

    def trial(self, job_id: str, number: int) -> dict[str, Any]:
        with self.session() as s:
            row = s.scalar(select(TrialRow).where(TrialRow.job_id == job_id, TrialRow.number == number))
            if row is None:
                raise NotFound(f"no trial {number} in job {job_id!r}")
            return trial_dict(row, self._device_measured(s, job_id, number).get(number))

    # ---- schedules ----------------------------------------------------------------------------
    def create_schedule(
        self,
        *,
        name: str,
        cron: str,
        timezone: str,
        spec: dict[str, Any],
        enabled: bool,
        owner: str | None = None,
        drift: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = utcnow()
        schedule = Schedule(
            drift=drift,
            id=uuid.uuid4().hex[:16],
            name=name,
            cron=cron,
            timezone=timezone,
            spec=spec,
            enabled=enabled,
            next_run_at=next_firing(cron, timezone, now),
            created_at=now,
            updated_at=now,
            owner=owner,
        )
        with self.session() as s:
            s.add(schedule)
            s.flush()
            return self._schedule(s, schedule)

    def _drift_runs(self, s: Session, schedule_id: str, limit: int = 5) -> list[dict[str, Any]]:
        """The schedule's last drift probes, newest first: status, and the fresh against the
        validated error where the check ran (``workers.calibration.drift_check``)."""
        ids = s.scalars(
            select(Profile.id)
            .where(Profile.schedule_id == schedule_id)
            .order_by(Profile.created_at.desc())
            .limit(limit)
        ).all()
        runs = []
        for profile_id in ids:
            p = self._profile(s, profile_id)
            report = ((p.get("fit") or {}).get("report") or {}).get("drift") or {}
            runs.append(
                {
                    "profile_id": p["id"],
                    "target": p["target"],
                    "status": p["status"],
                    "created_at": p["created_at"],
                    "tasks_done": p["tasks"].get("done", 0),
                    "n_tasks": p["n_tasks"],
                    "error": p["error"],
                    **{
                        k: report.get(k)
                        for k in ("version", "fresh_mape", "validated_mape", "ratio", "flagged")
                    },
                }
            )
        return runs

    def _schedule(self, s: Session, schedule: Schedule) -> dict[str, Any]:
        out = schedule_dict(schedule, self._runs(s, schedule.id))
        runs = self._drift_runs(s, schedule.id) if schedule.drift else []
        checked = [r for r in runs if r["flagged"] is not None]
        out["drift_runs"] = runs
        # The newest probe that was scored decides: a later clean probe clears the flag.
        out["drift_flagged"] = bool(checked) and bool(checked[0]["flagged"])
        return out

    def _runs(self, s: Session, schedule_id: str, limit: int = 10) -> list[Job]:
        query = (
            select(Job).where(Job.schedule_id == schedule_id).order_by(Job.scheduled_for.desc()).limit(limit)
        )
        return list(s.scalars(query).all())

    def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        with self.session() as s:
            schedule = s.get(Schedule, schedule_id)
            if schedule is None:
                raise NotFound(f"no schedule {schedule_id!r}")
            return self._schedule(s, schedule)

    def list_schedules(self) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(Schedule).order_by(Schedule.created_at)).all()
            return [self._schedule(s, r) for r in rows]

    def update_schedule(self, schedule_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        with self.session() as s:
            schedule = s.get(Schedule, schedule_id, with_for_update=True)
            if schedule is None:
                raise NotFound(f"no schedule {schedule_id!r}")
            for key, value in changes.items():
                setattr(schedule, key, value)
            if {"cron", "timezone", "enabled"} & set(changes):
                schedule.next_run_at = next_firing(schedule.cron, schedule.timezone, utcnow())
            schedule.updated_at = utcnow()
            return self._schedule(s, schedule)

    def delete_schedule(self, schedule_id: str) -> None:
        """The schedule goes; the jobs it created stay (they are ordinary jobs)."""
        with self.session() as s:
            schedule = s.get(Schedule, schedule_id)
            if schedule is None:
                raise NotFound(f"no schedule {schedule_id!r}")
            s.delete(schedule)

    def fire_due(self, now: datetime) -> list[str]:
        """Create one job per due schedule firing; returns the new job ids.

        The job is unique on (schedule, due time), so a firing that two replicas both see
        creates one job; the next due time is the first after ``now``, so firings missed while
        the service was down run once, not once per missed time.
        """
        created = []
        with self.session() as s:
            due = s.scalars(
                select(Schedule.id).where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)
            ).all()
        for schedule_id in due:
            with self.session() as s:
                schedule = s.get(Schedule, schedule_id)
                if schedule is None or not schedule.enabled or schedule.next_run_at is None:
                    continue
                firing = aware(schedule.next_run_at)
                assert firing is not None
                if firing > now:
                    continue  # another replica fired it and moved it on
                # Whoever moves next_run_at on creates the job; the unique (schedule, due time)
                # of jobs guards the same firing a second time.
                moved = s.execute(
                    update(Schedule)
                    .where(Schedule.id == schedule_id, Schedule.next_run_at == schedule.next_run_at)
                    .values(next_run_at=next_firing(schedule.cron, schedule.timezone, max(now, firing)))
                )
                if moved.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                try:
                    with s.begin_nested():
                        job = new_job(schedule.spec, schedule.id, firing, owner=schedule.owner)
                        s.add(job)
                except IntegrityError:
                    continue
                created.append(job.id)
                if schedule.drift:  # in the same transaction: once per firing, as the job
                    s.add(self._drift_profile(schedule, firing))
        return created

    @staticmethod
    def _drift_profile(schedule: Schedule, firing: datetime) -> Profile:
        drift = dict(schedule.drift or {})
        spec = {
            "kind": "drift",
            "models": drift["models"],
            "plans_per_model": drift["plans_per_model"],
            "seed": drift["seed"],
            "tolerance": drift["tolerance"],
            "timeout_s": drift["timeout_s"],
            "scheduled_for": firing.isoformat(),
        }
        return Profile(
            id=uuid.uuid4().hex[:16],
            target=drift["target"],
            owner=schedule.owner,
            status="queued",
            spec=json_safe(spec),
            n_tasks=0,
            created_at=utcnow(),
            schedule_id=schedule.id,
        )

    # ---- predictor fits -------------------------------------------------------------------------
    def create_fit(
        self,
        *,
        fit_id: str,
        target: str,
        family: str | None,
        kind: str,
        csv_path: str,
        owner: str | None = None,
    ) -> dict[str, Any]:
        fit = Fit(
            owner=owner,
            cancel_requested=False,
            id=fit_id,
            target=target,
            family=family,
            kind=kind,
            status="queued",
            csv_path=csv_path,
            created_at=utcnow(),
        )
        with self.session() as s:
            s.add(fit)
        return fit_dict(fit)

    def get_fit(self, fit_id: str) -> dict[str, Any]:
        with self.session() as s:
            fit = s.get(Fit, fit_id)
            if fit is None:
                raise NotFound(f"no fit {fit_id!r}")
            return fit_dict(fit)

    def request_fit_cancel(self, fit_id: str) -> dict[str, Any]:
        """A queued fit is cancelled at once; a running one is flagged, and its dispatcher stops
        its Ray task and marks it cancelled; a finished one is left as it is."""
        with self.session() as s:
            fit = s.get(Fit, fit_id, with_for_update=True)
            if fit is None:
                raise NotFound(f"no fit {fit_id!r}")
            if fit.status == "queued":
                fit.status, fit.finished_at = "cancelled", utcnow()
            elif fit.status == "running":
                fit.cancel_requested = True
            return fit_dict(fit)

    def finish_fit(
        self,
        fit_id: str,
        *,
        report: dict[str, Any] | None = None,
        error: str | None = None,
        cancelled: bool = False,
    ) -> bool:
        """End a running fit: cancelled, failed with ``error`` or succeeded with ``report``.
        Returns whether it was running: a fit already ended (cancelled while its task finished)
        or given back to the queue keeps its state."""
        status = "cancelled" if cancelled else "failed" if error else "succeeded"
        values = {"status": status, "report": json_safe(report), "error": truncated(error)}
        with self.session() as s:
            done = s.execute(
                update(Fit)
                .where(Fit.id == fit_id, Fit.status == "running")
                .values(finished_at=utcnow(), **values)
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def fit_heartbeat(self, fit_id: str, worker: str | None = None) -> bool:
        """Refresh a running fit's claim (``worker``'s, when given); returns whether a cancel was
        requested."""
        claimed = Fit.id == fit_id if worker is None else (Fit.id == fit_id) & (Fit.claimed_by == worker)
        with self.session() as s:
            s.execute(update(Fit).where(claimed).values(heartbeat_at=utcnow()))
            return bool(s.scalar(select(Fit.cancel_requested).where(Fit.id == fit_id)))

    # ---- device agents (issue 19) --------------------------------------------------------------
    def register_device(
        self, *, name: str, target: str, runtime: str, threads: int, info: dict[str, Any], owner: str | None
    ) -> dict[str, Any]:
        now = utcnow()
        row = Device(
            id=uuid.uuid4().hex[:16],
            name=name,
            target=target,
            runtime=runtime,
            threads=threads,
            info=json_safe(info),
            owner=owner,
            registered_at=now,
            last_seen_at=now,
            tasks_done=0,
        )
        with self.session() as s:
            s.add(row)
        return device_dict(row, online_s=float("inf"))

    def get_device(self, device_id: str, *, online_s: float = 60.0, seen: bool = False) -> dict[str, Any]:
        """A device (``seen``: its last-seen time is refreshed first, as every agent call does)."""
        with self.session() as s:
            row = s.get(Device, device_id, with_for_update=seen)
            if row is None:
                raise NotFound(f"no device {device_id!r}")
            if seen:
                row.last_seen_at = utcnow()
            return device_dict(row, online_s)

    def devices(self, *, target: str | None = None, online_s: float = 60.0) -> list[dict[str, Any]]:
        query = select(Device).order_by(Device.registered_at)
        if target is not None:
            query = query.where(Device.target == target)
        with self.session() as s:
            return [device_dict(d, online_s) for d in s.scalars(query).all()]

    def create_profile(self, *, target: str, spec: dict[str, Any], owner: str | None) -> dict[str, Any]:
        row = Profile(
            id=uuid.uuid4().hex[:16],
            target=target,
            owner=owner,
            status="queued",
            spec=json_safe(spec),
            n_tasks=0,
            created_at=utcnow(),
        )
        with self.session() as s:
            s.add(row)
        return profile_dict(row)

    def get_profile(self, profile_id: str) -> dict[str, Any]:
        """A profile with its tasks counted by status, the devices that measured them, and its fit
        (a profile that is fitting ends as its fit ends)."""
        with self.session() as s:
            return self._profile(s, profile_id)

    def _profile(self, s: Session, profile_id: str) -> dict[str, Any]:
        row = s.get(Profile, profile_id)
        if row is None:
            raise NotFound(f"no profile {profile_id!r}")
        out = profile_dict(row)
        counts = s.execute(
            select(MeasureTask.status, func.count())
            .where(MeasureTask.profile_id == profile_id)
            .group_by(MeasureTask.status)
        ).all()
        out["tasks"] = {str(k): int(v) for k, v in counts}
        by = s.execute(
            select(MeasureTask.device_id, func.count())
            .where(MeasureTask.profile_id == profile_id, MeasureTask.status == "done")
            .group_by(MeasureTask.device_id)
        ).all()
        out["measured_by"] = {str(k): int(v) for k, v in by}
        fit = s.get(Fit, row.fit_id) if row.fit_id else None
        out["fit"] = None if fit is None else {k: v for k, v in fit_dict(fit).items() if k != "csv_path"}
        if row.status == "fitting" and fit is not None and fit.status in ("succeeded", "failed", "cancelled"):
            out["status"] = "succeeded" if fit.status == "succeeded" else "failed"
            out["error"] = out["error"] or (
                None if fit.status == "succeeded" else f"its fit {fit.status}: {fit.error}"
            )
        return out

    def profiles(self, *, limit: int = 20) -> list[dict[str, Any]]:
        """The newest profiles, each with its tasks counted by status (``get_profile``'s shape)."""
        with self.session() as s:
            ids = s.scalars(select(Profile.id).order_by(Profile.created_at.desc()).limit(limit)).all()
        return [self.get_profile(i) for i in ids]

    def claim_profile(self, worker: str) -> dict[str, Any] | None:
        """A queued profile for ``worker`` to prepare (its plans exported, its tasks queued)."""
        with self.session() as s:
            row = self._claim(s, Profile, worker)
            return None if row is None else profile_dict(row)

    def profile_heartbeat(self, profile_id: str, worker: str) -> None:
        """Refresh the claim of a profile being prepared (else it goes back to the queue)."""
        with self.session() as s:
            s.execute(
                update(Profile)
                .where(Profile.id == profile_id, Profile.claimed_by == worker)
                .values(heartbeat_at=utcnow())
            )

    def add_tasks(self, profile_id: str, tasks: list[dict[str, Any]], *, deadline_s: float) -> bool:
        """Queue a prepared profile's tasks and start measuring; the profile fails when they are
        not all measured within ``deadline_s``. False (nothing written) unless it was preparing."""
        now = utcnow()
        with self.session() as s:
            row = s.get(Profile, profile_id, with_for_update=True)
            if row is None or row.status != "running":
                return False
            for t in tasks:
                s.add(
                    MeasureTask(
                        id=uuid.uuid4().hex[:16],
                        profile_id=profile_id,
                        job_id=t.get("job_id"),
                        trial=t.get("trial"),
                        target=row.target,
                        model=str(t["model"]),
                        plan=json_safe(t["plan"]),
                        batch=int(t.get("batch", 1)),
                        files=json_safe(t["files"]),
                        runtime=str(t.get("runtime") or "onnxruntime"),
                        status="queued",
                        leases=0,
                        created_at=now,
                    )
                )
            row.status, row.n_tasks = "measuring", len(tasks)
            row.deadline_at = now + timedelta(seconds=deadline_s)
            return True

    def fail_profile(self, profile_id: str, error: str) -> bool:
        """End a profile that has not ended yet as failed (its measured tasks are kept)."""
        with self.session() as s:
            done = s.execute(
                update(Profile)
                .where(Profile.id == profile_id, Profile.status.in_(("queued", "running", "measuring")))
                .values(status="failed", error=truncated(error), finished_at=utcnow())
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def expire_profiles(self) -> list[str]:
        """Measuring profiles past their deadline fail, saying how many tasks were measured (those
        are kept); their open tasks are withdrawn from the queue."""
        now = utcnow()
        failed = []
        with self.session() as s:
            rows = s.scalars(
                select(Profile)
                .where(Profile.status == "measuring", Profile.deadline_at < now)
                .with_for_update()
            ).all()
            for row in rows:
                done = s.scalar(
                    select(func.count()).where(MeasureTask.profile_id == row.id, MeasureTask.status == "done")
                )
                row.status, row.finished_at = "failed", now
                row.error = (
                    f"timed out: {done} of {row.n_tasks} tasks measured by {aware(row.deadline_at)}; "
                    f"no agent of target {row.target!r} measured the rest (are its devices online?). "
                    "The measured tasks are kept."
                )
                s.execute(
                    update(MeasureTask)
                    .where(MeasureTask.profile_id == row.id, MeasureTask.status.in_(("queued", "leased")))
                    .values(status="withdrawn", lease_id=None)
                )
                failed.append(row.id)
        return failed

    def lease_task(self, device_id: str, lease_s: float) -> dict[str, Any] | None:
        """Lease the oldest queued task of the device's target to it, with a new lease id; leases
        that expired (their agent went quiet) go back to the queue first. None: nothing to do."""
        now = utcnow()
        with self.session() as s:
            device = s.get(Device, device_id, with_for_update=True)
            if device is None:
                raise NotFound(f"no device {device_id!r}")
            device.last_seen_at = now
            s.execute(
                update(MeasureTask)
                .where(MeasureTask.status == "leased", MeasureTask.lease_expires_at < now)
                .values(status="queued", lease_id=None, device_id=None, lease_expires_at=None)
            )
            query = (
                select(MeasureTask.id)
                .where(
                    MeasureTask.status == "queued",
                    MeasureTask.target == device.target,
                    MeasureTask.runtime == device.runtime,
                )
                .order_by(MeasureTask.created_at, MeasureTask.id)
                .limit(1)
            )
            if self.engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            task_id = s.scalar(query)
            if task_id is None:
                return None
            lease = secrets.token_hex(16)
            done = s.execute(
                update(MeasureTask)
                .where(MeasureTask.id == task_id, MeasureTask.status == "queued")
                .values(
                    status="leased",
                    lease_id=lease,
                    device_id=device_id,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    leases=MeasureTask.leases + 1,
                )
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return None
            task = s.get(MeasureTask, task_id)
            assert task is not None
            s.refresh(task)
            return {**task_dict(task), "lease_id": lease}

    def _held(self, s: Session, task_id: str, device_id: str, lease_id: str) -> MeasureTask:
        task = s.get(MeasureTask, task_id, with_for_update=True)
        if task is None:
            raise NotFound(f"no task {task_id!r}")
        if task.status != "leased" or task.device_id != device_id or task.lease_id != lease_id:
            raise Conflict(
                f"task {task_id!r} is not leased to device {device_id!r} under this lease (it is "
                f"{task.status}); its lease expired or another agent holds it: lease a new task"
            )
        return task

    def heartbeat_task(self, task_id: str, device_id: str, lease_id: str, lease_s: float) -> dict[str, Any]:
        """Extend a held lease by ``lease_s``; ``Conflict`` when the lease is not held."""
        now = utcnow()
        with self.session() as s:
            task = self._held(s, task_id, device_id, lease_id)
            if aware(task.lease_expires_at) < now:  # type: ignore[operator]
                raise Conflict(f"the lease of task {task_id!r} expired; lease a new task")
            task.lease_expires_at = now + timedelta(seconds=lease_s)
            device = s.get(Device, device_id)
            if device is not None:
                device.last_seen_at = now
            return task_dict(task)

    def complete_task(
        self, task_id: str, device_id: str, lease_id: str, result: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Store a held task's result (once: the lease ends with it); returns the task and whether
        it was its profile's last open task (then the caller starts the profile's fit)."""
        now = utcnow()
        with self.session() as s:
            task = self._held(s, task_id, device_id, lease_id)
            if aware(task.lease_expires_at) < now:  # type: ignore[operator]
                raise Conflict(f"the lease of task {task_id!r} expired; its result was not kept")
            task.status, task.result, task.finished_at = "done", json_safe(result), now
            task.lease_id, task.lease_expires_at = None, None
            device = s.get(Device, device_id, with_for_update=True)
            if device is not None:
                device.tasks_done += 1
                device.last_seen_at = now
            return task_dict(task), self._was_last(s, task)

    @staticmethod
    def _was_last(s: Session, task: MeasureTask) -> bool:
        """Whether ``task`` (just ended) leaves its profile with no queued or leased task."""
        if task.profile_id is None:
            return False
        s.flush()
        open_tasks = s.scalar(
            select(func.count()).where(
                MeasureTask.profile_id == task.profile_id, MeasureTask.status.in_(("queued", "leased"))
            )
        )
        return open_tasks == 0

    def fail_task(
        self, task_id: str, device_id: str, lease_id: str, error: str
    ) -> tuple[dict[str, Any], bool]:
        """A held task its agent could not measure (its runtime cannot load the file, say): it ends
        as failed with the agent's reason, not handed out again (the same file would fail the same
        way). Returns the task and whether it was its profile's last open task."""
        now = utcnow()
        with self.session() as s:
            task = self._held(s, task_id, device_id, lease_id)
            task.status, task.result, task.finished_at = "failed", {"error": truncated(error)}, now
            task.lease_id, task.lease_expires_at = None, None
            device = s.get(Device, device_id)
            if device is not None:
                device.last_seen_at = now
            return task_dict(task), self._was_last(s, task)

    def profile_of_fit(self, fit_id: str) -> dict[str, Any] | None:
        """The profile that queued a fit (None: a fit a user asked for)."""
        with self.session() as s:
            row = s.scalar(select(Profile).where(Profile.fit_id == fit_id))
            return None if row is None else profile_dict(row)

    def profile_results(self, profile_id: str) -> list[dict[str, Any]]:
        """A profile's measured tasks, oldest first."""
        return self.profile_tasks(profile_id, status="done")

    def profile_tasks(self, profile_id: str, *, status: str | None = None) -> list[dict[str, Any]]:
        """A profile's tasks (with ``status`` only, when given), oldest first."""
        query = select(MeasureTask).where(MeasureTask.profile_id == profile_id)
        if status is not None:
            query = query.where(MeasureTask.status == status)
        with self.session() as s:
            rows = s.scalars(query.order_by(MeasureTask.created_at, MeasureTask.id)).all()
            return [task_dict(t) for t in rows]

    def finish_profile(self, profile_id: str) -> bool:
        """measuring → succeeded for a profile that needs no fit (a front re-measurement), once."""
        with self.session() as s:
            done = s.execute(
                update(Profile)
                .where(Profile.id == profile_id, Profile.status == "measuring")
                .values(status="succeeded", finished_at=utcnow())
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def start_profile_fit(self, profile_id: str, fit: dict[str, Any]) -> bool:
        """measuring → fitting with its fit queued, once: False when another request did it."""
        with self.session() as s:
            done = s.execute(
                update(Profile)
                .where(Profile.id == profile_id, Profile.status == "measuring")
                .values(status="fitting", fit_id=fit["id"])
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                return False
            s.add(
                Fit(
                    id=fit["id"],
                    target=fit["target"],
                    family=None,
                    kind=fit["kind"],
                    status="queued",
                    csv_path=fit["csv_path"],
                    owner=fit.get("owner"),
                    cancel_requested=False,
                    created_at=utcnow(),
                )
            )
            return True

    def task(self, task_id: str) -> dict[str, Any]:
        with self.session() as s:
            row = s.get(MeasureTask, task_id)
            if row is None:
                raise NotFound(f"no task {task_id!r}")
            return task_dict(row)

    # ---- registered datasets ------------------------------------------------------------------
    def create_dataset(self, manifest: dict[str, Any], *, owner: str | None) -> dict[str, Any]:
        """Record a dataset stored by ``workers.datasets.register_dataset_zip`` (its manifest)."""
        row = Dataset(
            id=str(manifest["id"]),
            name=str(manifest["name"]),
            owner=owner,
            kind=str(manifest["kind"]),
            n_examples=int(manifest["n_examples"]),
            size_bytes=int(manifest["size_bytes"]),
            manifest=json_safe(manifest),
            created_at=utcnow(),
        )
        with self.session() as s:
            s.add(row)
        return dataset_dict(row)

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        with self.session() as s:
            row = s.get(Dataset, dataset_id)
            if row is None:
                raise NotFound(f"no dataset {dataset_id!r}")
            return dataset_dict(row)

    def list_datasets(
        self, *, owner: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Datasets, newest first (``owner``'s only, when given), and how many there are."""
        query = select(Dataset)
        if owner is not None:
            query = query.where(Dataset.owner == owner)
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            order = (Dataset.created_at.desc(), Dataset.id)
            rows = s.scalars(query.order_by(*order).limit(limit).offset(offset)).all()
            return [dataset_dict(r) for r in rows], total

    def dataset_users(self, dataset_id: str) -> list[str]:
        """The queued or running jobs whose spec names dataset ``dataset_id`` (``data.dataset``)."""
        with self.session() as s:
            return self._dataset_users(s, dataset_id)

    @staticmethod
    def _dataset_users(s: Session, dataset_id: str) -> list[str]:
        # The spec's text narrows the rows in SQL (on both databases); the JSON decides.
        query = select(Job.id, Job.spec).where(
            Job.status.in_(("queued", "running")), cast(Job.spec, Text).contains(dataset_id)
        )
        return [
            job_id
            for job_id, spec in s.execute(query.order_by(Job.created_at))
            if ((spec or {}).get("data") or {}).get("dataset") == dataset_id
        ]

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete the dataset's row; :class:`Conflict` naming the jobs when a queued or running
        job uses it. The caller removes its files after (a row never points at missing files)."""
        with self.session() as s:
            row = s.get(Dataset, dataset_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no dataset {dataset_id!r}")
            users = self._dataset_users(s, dataset_id)
            if users:
                more = f" and {len(users) - 10} more" if len(users) > 10 else ""
                raise Conflict(
                    f"dataset {dataset_id} is used by the queued or running job(s) "
                    f"{', '.join(users[:10])}{more}; cancel them or wait until they end, "
                    "then delete the dataset"
                )
            s.delete(row)

    # ---- operations (/healthz, /metrics) ----------------------------------------------------------
    def ping(self) -> None:
        """A round trip to the database; raises what the driver raises when it does not answer."""
        with self.engine.connect() as c:
            c.execute(text("SELECT 1"))

    def job_counts(self) -> dict[str, int]:
        """Jobs per status (statuses without a job are absent)."""
        with self.session() as s:
            rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            return {str(status): int(n) for status, n in rows}

    def trials_since(self, since: datetime) -> int:
        """Trials stored at or after ``since`` (of every job)."""
        with self.session() as s:
            return int(s.scalar(select(func.count()).where(TrialRow.created_at >= since)) or 0)

    # ---- tokens -----------------------------------------------------------------------------
    def create_token(
        self,
        name: str = "cli",
        *,
        owner: str | None = None,
        scopes: frozenset[str] | None = None,
        expires_in: timedelta | None = None,
    ) -> str:
        """A new API token; only its SHA-256 is stored, so it is shown once.

        ``owner`` defaults to ``name``; ``scopes`` to read and write, except that the first token
        of a database is an admin token (a single-token set-up keeps doing everything).
        """
        token = "hws_" + secrets.token_urlsafe(32)
        now = utcnow()
        with self.session() as s:
            first = s.scalar(select(func.count()).select_from(ApiToken)) == 0
            granted = scopes if scopes is not None else frozenset(ALL_SCOPES if first else ("read", "write"))
            s.add(
                ApiToken(
                    name=name,
                    token_sha256=_sha256(token),
                    created_at=now,
                    owner=check_owner(owner if owner is not None else name[:64]),
                    scopes=",".join(sc for sc in ALL_SCOPES if sc in granted),
                    expires_at=None if expires_in is None else now + expires_in,
                )
            )
        return token

    def principal(self, token: str) -> Principal | None:
        """Who ``token`` acts for; None when it is unknown, revoked or expired."""
        now = utcnow()
        with self.session() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.token_sha256 == _sha256(token)))
            if row is None or row.revoked_at is not None:
                return None
            expires = aware(row.expires_at)
            if expires is not None and expires <= now:
                return None
            last = aware(row.last_used_at)
            # Written at most once a minute: every read would otherwise take the write lock.
            if last is None or now - last > timedelta(seconds=60):
                row.last_used_at = now
            return Principal(row.id, row.owner, frozenset(row.scopes.split(",")))

    def token_valid(self, token: str) -> bool:
        return self.principal(token) is not None

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token (never its secret): id, name, owner, scopes, times, whether it is active."""
        now = utcnow()
        with self.session() as s:
            rows = s.scalars(select(ApiToken).order_by(ApiToken.id)).all()
            out = []
            for r in rows:
                expires = aware(r.expires_at)
                out.append(
                    {
                        "id": r.id,
                        "name": r.name,
                        "owner": r.owner,
                        "scopes": r.scopes.split(","),
                        "created_at": aware(r.created_at),
                        "expires_at": expires,
                        "revoked_at": aware(r.revoked_at),
                        "last_used_at": aware(r.last_used_at),
                        "active": r.revoked_at is None and (expires is None or expires > now),
                    }
                )
            return out

    def revoke_token(self, token_id: int) -> None:
        """The token stops working at once (it stays listed, revoked)."""
        with self.session() as s:
            row = s.get(ApiToken, token_id)
            if row is None:
                raise NotFound(f"no token {token_id}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()

    def has_tokens(self) -> bool:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(ApiToken)) != 0

    # ---- owners of user targets, queue caps ----------------------------------------------------
    def target_owner(self, name: str) -> str | None:
        """The owner who created target ``name`` through the API; None: shared (built-in)."""
        with self.session() as s:
            row = s.get(TargetOwner, name)
            return None if row is None else row.owner

    def set_target_owner(self, name: str, owner: str) -> None:
        """Record who created target ``name`` (the first creator keeps it)."""
        with self.session() as s:
            if s.get(TargetOwner, name) is None:
                s.add(TargetOwner(name=name, owner=owner, created_at=utcnow()))

    def queued_jobs(self, owner: str | None) -> int:
        """Jobs of ``owner`` waiting for a dispatcher."""
        with self.session() as s:
            query = select(func.count()).where(Job.status == "queued", Job.owner == owner)
            return int(s.scalar(query) or 0)


#: The manifest's fields a dataset shows (its ``content`` path is the service's own business).
DATASET_FIELDS = (
    "kind",
    "n_examples",
    "n_classes",
    "classes",
    "class_counts",
    "files",
    "size_bytes",
    "zip_sha256",
)


def dataset_dict(row: Dataset) -> dict[str, Any]:
    manifest = row.manifest or {}
    return {
        "id": row.id,
        "name": row.name,
        "owner": row.owner,
        "created_at": aware(row.created_at),
        **{k: manifest.get(k) for k in DATASET_FIELDS},
        "kind": row.kind,
        "n_examples": row.n_examples,
        "size_bytes": row.size_bytes,
    }


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
