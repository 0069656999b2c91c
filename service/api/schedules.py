"""Cron schedules: each firing creates an ordinary job from the schedule's spec."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from ..settings import Settings
from .agents import check_profile_models
from .deps import (
    CatalogueDep,
    Read,
    SettingsDep,
    StoreDep,
    Writer,
    body_schema,
    check_dataset,
    check_may_change,
    validated,
)
from .schemas import API, DriftIn, ScheduleIn, ScheduleUpdate

router = APIRouter(prefix=API)


# Bodies are validated by `validated`, so that an unknown target of the spec is reported in the
# same 422 as every other error (as for jobs).
_Body = Annotated[Any, Body(include_in_schema=False)]


@router.post("/schedules", status_code=201, openapi_extra=body_schema(ScheduleIn))
def create_schedule(
    store: StoreDep, cat: CatalogueDep, settings: SettingsDep, principal: Writer, data: _Body = None
) -> dict[str, Any]:
    body = validated(cat, settings, ScheduleIn, data)
    check_dataset(store, body.spec, ("body", "spec"))
    return store.create_schedule(
        name=body.name,
        cron=body.cron,
        timezone=body.timezone,
        spec=body.spec.model_dump(mode="json"),
        enabled=body.enabled,
        owner=principal.owner,
        drift=_drift(body.drift, settings),
    )


def _drift(drift: DriftIn | None, settings: Settings) -> dict[str, Any] | None:
    """A drift probe as the schedule stores it: its models checked as a profile's are, and the
    profile timeout it fires with."""
    if drift is None:
        return None
    check_profile_models(drift.models, settings, ("body", "drift", "models"))
    return {**drift.model_dump(mode="json"), "timeout_s": settings.profile_timeout_s}


@router.get("/schedules", dependencies=[Read])
def list_schedules(store: StoreDep) -> list[dict[str, Any]]:
    return store.list_schedules()


@router.get("/schedules/{schedule_id}", dependencies=[Read])
def get_schedule(schedule_id: str, store: StoreDep) -> dict[str, Any]:
    return store.get_schedule(schedule_id)


@router.patch("/schedules/{schedule_id}", openapi_extra=body_schema(ScheduleUpdate))
def update_schedule(
    schedule_id: str,
    store: StoreDep,
    cat: CatalogueDep,
    settings: SettingsDep,
    principal: Writer,
    data: _Body = None,
) -> dict[str, Any]:
    check_may_change(principal, store.get_schedule(schedule_id)["owner"], f"schedule {schedule_id}")
    body = validated(cat, settings, ScheduleUpdate, data)
    check_dataset(store, body.spec, ("body", "spec"))
    changes = body.model_dump(exclude_unset=True, mode="json")
    if "drift" in changes:  # null removes the probe
        changes["drift"] = _drift(body.drift, settings)
    return store.update_schedule(schedule_id, changes)


@router.delete("/schedules/{schedule_id}", status_code=204)
def delete_schedule(schedule_id: str, store: StoreDep, principal: Writer) -> Response:
    check_may_change(principal, store.get_schedule(schedule_id)["owner"], f"schedule {schedule_id}")
    store.delete_schedule(schedule_id)
    return Response(status_code=204)
