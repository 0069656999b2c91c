"""Request and response models of the REST API, the path prefix and the limits on numbers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path as FastApiPath
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from search_spaces import MAX_NAME_CHARS, NAME_PATTERN, check_name
from workers.search import JobSpec

from ..db import JOB_STATUSES

API = "/api/v1"
#: Integers the databases store (SQLite's INTEGER is 64-bit; PostgreSQL's 32): larger ones are a 422.
MAX_INT = 2**31 - 1
TrialNumber = Annotated[int, FastApiPath(ge=0, le=MAX_INT, description="trial number within the job")]
STATUS_PATTERN = "^(" + "|".join(JOB_STATUSES) + ")$"


class JobOut(BaseModel):
    id: str
    status: str
    model: str
    targets: list[str]
    strategy: str
    budget: int | None
    evaluations: int
    hypervolume: float | None
    progress: dict[str, Any]
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: dict[str, Any]
    owner: str | None = Field(None, description="owner of the token that created it")


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class TrialPage(BaseModel):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


#: A schedule's name: the one name pattern of targets, schedules and datasets (search_spaces);
#: the pattern is in the schema for clients, the check (with its message) in the validator.
Name = Annotated[
    str,
    Field(min_length=1, max_length=MAX_NAME_CHARS, json_schema_extra={"pattern": NAME_PATTERN}),
    AfterValidator(lambda value: check_name("name", value)),
]


class DriftIn(BaseModel):
    """A drift probe (issue 19): at every firing, a fixed set of plans (``models``,
    ``plans_per_model``, ``seed``: the same plans each time) is measured on ``target``'s device
    agents and its active predictor scored on them; a predictor whose error (MAPE) on the fresh
    measurements exceeds ``tolerance`` times its validated (held-out) error is flagged."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, max_length=100)
    models: list[str] = Field(min_length=1, max_length=8)
    plans_per_model: int = Field(default=8, ge=3, le=100)
    #: Not a profile's default seed (0), so the probe's plans are not the rows its fit saw.
    seed: int = Field(default=1, ge=0, le=MAX_INT)
    tolerance: float = Field(default=1.5, gt=1.0, le=100.0)

    @field_validator("target")
    @classmethod
    def _target(cls, value: str, info: Any) -> str:
        known = (info.context or {}).get("targets")
        if known is not None and value not in known:
            raise ValueError(f"unknown target {value!r}; one of {sorted(known)}")
        return value


class ScheduleIn(BaseModel):
    """A cron schedule: every firing creates an ordinary job from ``spec`` and, with ``drift``,
    re-measures the drift probe on its target's agents."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    cron: str = Field(description="five-field cron expression, e.g. '0 2 * * *' (02:00 every day)")
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in")
    spec: JobSpec
    enabled: bool = True
    drift: DriftIn | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a five-field cron expression, e.g. '0 2 * * *'")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        # OSError: a name that is a folder of the zone database ("America") or too long for a
        # file name (found by the fuzz test: it was a 500).
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{value!r} is not an IANA time zone, e.g. UTC or Europe/Berlin") from None
        return value


class ScheduleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    cron: str | None = None
    timezone: str | None = None
    spec: JobSpec | None = None
    enabled: bool | None = None
    drift: DriftIn | None = None

    _cron = field_validator("cron")(classmethod(lambda cls, v: v if v is None else ScheduleIn._cron(v)))
    _timezone = field_validator("timezone")(
        classmethod(lambda cls, v: v if v is None else ScheduleIn._timezone(v))
    )


class ActivateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=100)
