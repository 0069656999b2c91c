"""SQLAlchemy 2 models, engines and migrations (Alembic, applied at start-up).

The same schema runs on the embedded SQLite file (WAL journal) and on PostgreSQL
(``DATABASE_URL``). Trials are unique on (job id, trial number), which makes storing a trial
idempotent; a front is always derived from the trials, never stored alone.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MIGRATIONS = Path(__file__).parent / "migrations"
JOB_STATUSES = ("queued", "running", "succeeded", "exhausted", "failed", "cancelled")
#: "exhausted": the strategy had nothing new to propose before the budget was spent.
FINISHED = ("succeeded", "exhausted", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str] = mapped_column(String(400), index=True)
    targets: Mapped[str] = mapped_column(String(400))  # comma-separated, for filtering
    strategy: Mapped[str] = mapped_column(String(64))
    budget: Mapped[int | None] = mapped_column(Integer, nullable=True)
    evaluations: Mapped[int] = mapped_column(Integer, default=0)
    hypervolume: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The fencing token: raised by every claim; a runner's writes present the generation it
    #: claimed, and are refused once another claim took the job over.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A scheduled job: one per (schedule, due time), which makes a firing happen once even when
    # two replicas see it due.
    schedule_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: The owner of the token that created it (a schedule's firing: the schedule's); None: made
    #: before owners existed, changed by admins only.
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    __table_args__ = (UniqueConstraint("schedule_id", "scheduled_for", name="uq_jobs_schedule_firing"),)


class Schedule(Base):
    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: A drift probe fired with the schedule (issue 19): target, models, plans, tolerance.
    drift: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class TrialRow(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_trials_job_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    quality: Mapped[float | None] = mapped_column(Float, nullable=True)
    feasible: Mapped[bool] = mapped_column(Boolean)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)  # the whole workers.search.Trial
    # SQL NULL until the front is measured (so COUNT(measured) counts measured trials).
    measured: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: The recovery stage's result for a front plan (``Trial.recovered``: recovered quality and its
    #: recipe), SQL NULL until the plan is recovered; stored after the trial, like ``measured``.
    recovered: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Fit(Base):
    """Fitting a new predictor version from an uploaded measurement table (run by the dispatcher)."""

    __tablename__ = "fits"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    target: Mapped[str] = mapped_column(String(200), index=True)
    family: Mapped[str | None] = mapped_column(String(16), nullable=True)
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    csv_path: Mapped[str] = mapped_column(Text)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Who the token acts for, and what it may do (service/auth.py); tokens made before owners
    #: existed were migrated to owner = name, every scope.
    owner: Mapped[str] = mapped_column(String(64), default="admin")
    scopes: Mapped[str] = mapped_column(String(64), default="read,write,admin")
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class TargetOwner(Base):
    """Who created a user target through the API (built-in targets and targets added to the data
    directory by hand have no row: they are shared, and only admins change their predictors)."""

    __tablename__ = "target_owners"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    """A registered dataset: an upload checked and stored under ``<data dir>/datasets/<id>/``
    (workers.datasets.register_dataset_zip) with its manifest; it belongs to its uploader."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    n_examples: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


#: PostgreSQL ends a session idle inside a transaction for this long (its locks released).
IDLE_IN_TRANSACTION_MS = 20_000


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and enforced foreign keys.

    A SQLite file is the owner's only (0600; SQLite gives its -wal and -shm files the database
    file's mode), and a folder made for it 0700: it holds every job, owner and token hash."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _private_file(path)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below opens transactions
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            # Take the write lock at the start: a transaction that read a row and then writes
            # cannot have read a stale snapshot (two dispatchers, two schedulers on one file).
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    engine = create_engine(url, pool_pre_ping=True)

    @event.listens_for(engine, "connect")
    def _session_limits(dbapi_connection: Any, _record: Any) -> None:
        # A process paused (SIGSTOP) or wedged inside a transaction would hold its row locks
        # for good, and with them every claim of that job: the server ends such a session.
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")
        cursor.close()
        dbapi_connection.commit()

    return engine


def _private_file(path: str) -> None:
    """Create ``path`` 0600 before SQLite first opens it; one made by an older version (0644),
    and its -wal and -shm files, are narrowed when this process may."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        for name in (path, f"{path}-wal", f"{path}-shm"):
            try:
                if os.stat(name).st_mode & 0o077:
                    os.chmod(name, 0o600)
            except (FileNotFoundError, PermissionError):  # none, or not this user's to change
                pass


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent; run at start-up)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Device(Base):
    """A device running ``hwsearch agent``: it measures the tasks of its target (issue 19)."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(200), index=True)
    runtime: Mapped[str] = mapped_column(String(32))
    threads: Mapped[int] = mapped_column(Integer)
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    tasks_done: Mapped[int] = mapped_column(Integer, default=0)


class Profile(Base):
    """Profiling a target on its agents: tasks prepared (plans exported to ONNX), measured by
    the agents, then a fit of the target's predictor from the results."""

    __tablename__ = "profiles"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    target: Mapped[str] = mapped_column(String(200), index=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: queued (to prepare) → running (preparing) → measuring → fitting → succeeded | failed
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_tasks: Mapped[int] = mapped_column(Integer, default=0)
    fit_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: The schedule whose drift probe created this profile (None: asked for by a user or a job).
    schedule_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)


class DeviceMeasurement(Base):
    """A front plan measured by a device agent (issue 19): one row per result, so a trial of a job
    costed on several targets is measured on each, and one measured again keeps its history."""

    __tablename__ = "device_measurements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    target: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MeasureTask(Base):
    """One network to time on a target's device: leased to one agent at a time."""

    __tablename__ = "measure_tasks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    profile_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    #: A front plan re-measured on the device: its job and trial number (the result is stored
    #: as the trial's ``measured`` as well).
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    trial: Mapped[int | None] = mapped_column(Integer, nullable=True)
    target: Mapped[str] = mapped_column(String(200), index=True)
    model: Mapped[str] = mapped_column(String(200))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    batch: Mapped[int] = mapped_column(Integer, default=1)
    #: Paths under the data dir: the plan's ONNX file, the reference's, the input (.npy).
    files: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The runtime the task's files are for: only a device running it leases the task.
    runtime: Mapped[str] = mapped_column(String(32), default="onnxruntime", server_default="onnxruntime")
    #: queued → leased → done
    status: Mapped[str] = mapped_column(String(16), index=True)
    lease_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    leases: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
