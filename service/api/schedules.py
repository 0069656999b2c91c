"""Cron schedules: each firing creates an ordinary job from the schedule's spec."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from .deps import CatalogueDep, Read, StoreDep, Write, check_targets
from .schemas import API, ScheduleIn, ScheduleUpdate

router = APIRouter(prefix=API)


@router.post("/schedules", status_code=201, dependencies=[Write])
def create_schedule(body: ScheduleIn, store: StoreDep, cat: CatalogueDep) -> dict[str, Any]:
    check_targets(cat, body.spec, ("body", "spec"))
    return store.create_schedule(
        name=body.name,
        cron=body.cron,
        timezone=body.timezone,
        spec=body.spec.model_dump(mode="json"),
        enabled=body.enabled,
    )


@router.get("/schedules", dependencies=[Read])
def list_schedules(store: StoreDep) -> list[dict[str, Any]]:
    return store.list_schedules()


@router.get("/schedules/{schedule_id}", dependencies=[Read])
def get_schedule(schedule_id: str, store: StoreDep) -> dict[str, Any]:
    return store.get_schedule(schedule_id)


@router.patch("/schedules/{schedule_id}", dependencies=[Write])
def update_schedule(
    schedule_id: str, body: ScheduleUpdate, store: StoreDep, cat: CatalogueDep
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True, mode="json")
    if body.spec is not None:
        check_targets(cat, body.spec, ("body", "spec"))
    return store.update_schedule(schedule_id, changes)


@router.delete("/schedules/{schedule_id}", status_code=204, dependencies=[Write])
def delete_schedule(schedule_id: str, store: StoreDep) -> Response:
    store.delete_schedule(schedule_id)
    return Response(status_code=204)
