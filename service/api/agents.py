"""Device agents and profiles (issue 19): devices register, lease one measurement task at a
time, beat its lease, download its files and post its result; a profile turns a target's
models into tasks, waits for its agents and fits the target's predictor from what they measured.

Every agent call is the device owner's (its token) or an admin's; a lease is a secret the
service hands out with the task: a heartbeat, a file download or a result under another lease
is a 409, and so is anything after the lease expired (the task went back to the queue and is
measured once, by whoever leases it next).
"""

from __future__ import annotations

import csv
import io
import json
import math
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from latency_models import RUNTIMES, Target
from latency_models import list_targets as target_names

from ..auth import Principal
from ..dispatcher import profile_runtime
from ..store import Conflict, NotFound, Store
from .deps import (
    CatalogueDep,
    Read,
    SettingsDep,
    StoreDep,
    Writer,
    check_may_change,
    target_of,
    uploads_folder,
)
from .errors import Invalid, reported_at
from .schemas import API

router = APIRouter(prefix=API)

#: The files of a task an agent downloads, by the name in its URL.
FILES = ("model", "reference", "input")
DeviceId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$")]
TaskId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$")]


class DeviceIn(BaseModel):
    """What an agent says about its device when it registers."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    target: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    runtime: str
    threads: int = Field(ge=1, le=1024)
    #: CPU, cores, memory, OS, runtime versions, an optional accelerator: shown, not interpreted.
    info: dict[str, Any] = Field(default_factory=dict)
    #: The runtime micro-benchmarks of this device (``latency_models.measure_runtime_target``):
    #: they define the target when it does not exist yet.
    target_profile: dict[str, Any] | None = None

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: str) -> str:
        if value not in RUNTIMES:
            raise ValueError(f"one of {list(RUNTIMES)} is required, but got {value!r}")
        return value

    @field_validator("info")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, default=str)) > 8192:
            raise ValueError("at most 8 kB of device facts")
        return value


class LeaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_id: str = Field(min_length=1, max_length=64)


class ResultIn(BaseModel):
    """A measured task: the plan's and the reference's medians from interleaved rounds."""

    model_config = ConfigDict(extra="forbid")

    lease_id: str = Field(min_length=1, max_length=64)
    latency_ms: float = Field(gt=0)
    reference_ms: float = Field(gt=0)
    speedup: float = Field(gt=0)
    p10_ms: float | None = Field(default=None, ge=0)
    p90_ms: float | None = Field(default=None, ge=0)
    repeats: int = Field(ge=1, le=100_000)
    threads: int = Field(ge=1, le=1024)
    runtime: str = Field(max_length=100)
    runtime_version: str = Field(default="", max_length=100)

    @field_validator("latency_ms", "reference_ms", "speedup")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"a finite number is required, but got {value}")
        return value


class ProfileIn(BaseModel):
    """What to measure on a target's agents."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1, max_length=16)
    plans_per_model: int = Field(default=12, ge=3, le=200)
    seed: int = Field(default=0, ge=0)


def _online_s(settings: Any) -> float:
    return 2.0 * float(settings.agent_lease_s)


def _device_of(store: Store, device_id: str, principal: Principal, settings: Any) -> dict[str, Any]:
    """The caller's device, seen now (404 for no such device, 403 for another owner's)."""
    try:
        device = store.get_device(device_id, online_s=_online_s(settings), seen=True)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id!r}") from None
    check_may_change(principal, device["owner"], f"device {device_id!r}")
    return device


@router.post("/agents", status_code=201)
def register(
    body: DeviceIn, store: StoreDep, settings: SettingsDep, cat: CatalogueDep, principal: Writer
) -> dict[str, Any]:
    """Register a device for ``target`` (created from the device's ``target_profile`` when it
    does not exist yet, owned by the caller). Returns the device id and the lease timing."""
    if body.target not in target_names():
        if body.target_profile is None:
            raise Invalid(
                ("body", "target_profile"),
                f"target {body.target!r} does not exist; send target_profile (the agent measures it) "
                "or create the target first (POST /api/v1/targets)",
                None,
            )
        declared = body.target_profile.get("runtime")
        if declared not in (None, body.runtime):
            raise Invalid(
                ("body", "target_profile", "runtime"),
                f"must be the agent's runtime {body.runtime!r}: its micro-benchmarks define the target",
                declared,
            )
        with reported_at("body", "target_profile"):
            target = Target.from_dict({**body.target_profile, "name": body.target, "runtime": body.runtime})
        store.set_target_owner(target.name, principal.owner)
        cat.add_target(target)
    _check_runtime(store, cat, body.target, body.runtime)
    device = store.register_device(
        name=body.name,
        target=body.target,
        runtime=body.runtime,
        threads=body.threads,
        info=body.info,
        owner=principal.owner,
    )
    return {**device, "lease_s": settings.agent_lease_s, "heartbeat_s": settings.agent_lease_s / 3}


def _check_runtime(store: Store, cat: Any, target_name: str, runtime: str) -> None:
    """A target is measured in one runtime (a plan's speed-up differs between them): a device
    running another one is a 409 that says which to use."""
    declared = cat.target(target_name).runtime
    others = sorted({d["runtime"] for d in store.devices(target=target_name)} - {runtime})
    if declared is not None and declared != runtime:
        raise Conflict(
            f"runtime {runtime!r} does not match target {target_name!r}, which is measured in "
            f"{declared!r}: start the agent with --runtime {declared}, or give this device its own "
            "target name"
        )
    if others:
        raise Conflict(
            f"runtime {runtime!r} does not match the devices of target {target_name!r}, which run "
            f"{others[0]!r}: start the agent with --runtime {others[0]}, or give this device its own "
            "target name"
        )


def check_profile_models(models: list[str], settings: Any, loc: tuple[Any, ...]) -> None:
    """A profile (or a drift probe) measures zoo and plugin models only: an import path would run
    code the agent's owner names inside the service."""
    from workers.model_refs import model_kind

    for i, model in enumerate(models):
        try:
            kind = model_kind(model, allowed_modules=settings.model_modules)
        except ValueError as exc:
            raise Invalid((*loc, i), str(exc), model) from None
        if kind == "import":
            raise Invalid((*loc, i), "a profile takes zoo or plugin models, not import paths", model)


@router.post("/agents/{device_id}/lease", response_model=None)
def lease(device_id: DeviceId, store: StoreDep, settings: SettingsDep, principal: Writer) -> Any:
    """The next task of the device's target, leased to it (204 when there is none)."""
    _device_of(store, device_id, principal, settings)
    task = store.lease_task(device_id, settings.agent_lease_s)
    if task is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    base = f"{API}/agents/{device_id}/tasks/{task['id']}"
    return {
        "id": task["id"],
        "lease_id": task["lease_id"],
        "lease_expires_at": task["lease_expires_at"],
        "model": task["model"],
        "plan": task["plan"],
        "batch": task["batch"],
        "runtime": task["runtime"],
        "files": {name: f"{base}/files/{name}" for name in FILES},
        "heartbeat": f"{base}/heartbeat",
        "result": f"{base}/result",
        "fail": f"{base}/fail",
    }


@router.post("/agents/{device_id}/tasks/{task_id}/heartbeat")
def heartbeat(
    device_id: DeviceId,
    task_id: TaskId,
    body: LeaseIn,
    store: StoreDep,
    settings: SettingsDep,
    principal: Writer,
) -> dict[str, Any]:
    """Extend the lease (409 when it is not held: expired, or another agent's)."""
    _device_of(store, device_id, principal, settings)
    task = store.heartbeat_task(task_id, device_id, body.lease_id, settings.agent_lease_s)
    return {"id": task["id"], "lease_expires_at": task["lease_expires_at"]}


@router.get("/agents/{device_id}/tasks/{task_id}/files/{name}", response_model=None)
def task_file(
    device_id: DeviceId,
    task_id: TaskId,
    name: str,
    lease_id: str,
    store: StoreDep,
    settings: SettingsDep,
    principal: Writer,
) -> FileResponse:
    """One file of a leased task (``model``, ``reference``: ONNX, or TorchScript for a torch
    agent; ``input``: .npy), for the agent holding the lease."""
    if name not in FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {name!r}; one of {list(FILES)}")
    _device_of(store, device_id, principal, settings)
    task = store.heartbeat_task(task_id, device_id, lease_id, settings.agent_lease_s)
    root = settings.data_dir.resolve()
    path = (root / str(task["files"][name])).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"task {task_id!r} has no {name} file")
    return FileResponse(path, media_type="application/octet-stream", filename=path.name)


@router.post("/agents/{device_id}/tasks/{task_id}/result")
def result(
    device_id: DeviceId,
    task_id: TaskId,
    body: ResultIn,
    store: StoreDep,
    settings: SettingsDep,
    principal: Writer,
) -> dict[str, Any]:
    """Store a task's measurement (once; 409 when the lease is not held). The last task of a
    profile queues the fit of the target's predictor from every measured task."""
    device = _device_of(store, device_id, principal, settings)
    measured = {**body.model_dump(exclude={"lease_id"}), "device_id": device_id, "device": device["name"]}
    task, last = store.complete_task(task_id, device_id, body.lease_id, measured)
    if task["job_id"] and task["trial"] is not None:
        _store_front_measurement(store, task, measured)
    if last:
        _after_last(store, settings, task)
    return {"id": task["id"], "status": task["status"]}


class FailIn(BaseModel):
    """A task the agent could not measure, and why (shown with the task and its profile)."""

    model_config = ConfigDict(extra="forbid")

    lease_id: str = Field(min_length=1, max_length=64)
    error: str = Field(min_length=1, max_length=4000)


@router.post("/agents/{device_id}/tasks/{task_id}/fail")
def fail(
    device_id: DeviceId,
    task_id: TaskId,
    body: FailIn,
    store: StoreDep,
    settings: SettingsDep,
    principal: Writer,
) -> dict[str, Any]:
    """End a held task as failed with the agent's reason (409 when the lease is not held). It is
    not handed out again; a front plan's trial says why it has no device measurement."""
    device = _device_of(store, device_id, principal, settings)
    task, last = store.fail_task(
        task_id, device_id, body.lease_id, f"device {device['name']!r}: {body.error}"
    )
    if task["job_id"] and task["trial"] is not None:
        failed = {"target": task["target"], "error": f"not measured: {task['result']['error']}"}
        store.add_device_measurement(task["job_id"], int(task["trial"]), failed)
    if last:
        _after_last(store, settings, task)
    return {"id": task["id"], "status": task["status"]}


def _after_last(store: Store, settings: Any, task: dict[str, Any]) -> None:
    """A profile's last task ended: a front re-measurement is done, a profile's fit (or a drift
    probe's check) is queued from what was measured; with nothing measured it fails."""
    profile_id = task["profile_id"]
    if profile_id is None:
        return
    profile = store.get_profile(profile_id)
    if not profile["tasks"].get("done"):
        store.fail_profile(
            profile_id,
            f"none of its {profile['n_tasks']} tasks could be measured: {_failures(store, profile_id)}",
        )
    elif task["job_id"]:
        store.finish_profile(profile_id)  # a front re-measurement: nothing to fit
    else:
        kind = "drift" if profile["spec"].get("kind") == "drift" else "auto"
        _start_fit(store, settings, profile_id, kind=kind)


def _failures(store: Store, profile_id: str) -> str:
    errors = sorted(
        {str((t["result"] or {}).get("error")) for t in store.profile_tasks(profile_id, status="failed")}
    )
    return "; ".join(errors[:3]) or "no reason given"


def _store_front_measurement(store: Store, task: dict[str, Any], measured: dict[str, Any]) -> None:
    """A re-measured front plan becomes its trial's ``measured``, beside the prediction it checks
    (a job deleted meanwhile keeps nothing: the result stays with the task)."""
    try:
        trial = store.trial(task["job_id"], int(task["trial"]))
    except NotFound:
        return
    cost = (trial.get("costs") or {}).get(task["target"]) or {}
    predicted = cost.get("latency_ms")
    latency = float(measured["latency_ms"])
    store.add_device_measurement(
        task["job_id"],
        int(task["trial"]),
        {
            "latency_ms": latency,
            "reference_ms": measured["reference_ms"],
            "speedup": measured["speedup"],
            "predicted_ms": predicted,
            "relative_error": None if predicted is None else (float(predicted) - latency) / latency,
            "target": task["target"],
            "runtime": measured["runtime"],
            "device": measured["device"],
            "how": (
                f"device agent {measured['device']!r}: the exported plan in {measured['runtime']} "
                f"{measured.get('runtime_version', '')}, {measured['threads']} thread(s), median of "
                f"{measured['repeats']} interleaved rounds"
            ),
        },
    )


def profile_table(rows: list[dict[str, Any]], scale: float = 1.0) -> str:
    """Measured tasks as the per-network table a fit reads (CSV text), latencies times ``scale``.

    Drift-corrected as host profiling is: the model's uncompressed median over the plan's
    per-round speed-up (the raw median where the model has no uncompressed task)."""
    reference = {r["model"]: r["result"]["reference_ms"] for r in rows if not r["plan"].get("layers")}
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "plan", "batch", "latency_ms"])
    for r in rows:
        res = r["result"]
        ref_ms = reference.get(r["model"])
        latency = (ref_ms / res["speedup"] if ref_ms else res["latency_ms"]) * scale
        writer.writerow([r["model"], json.dumps(r["plan"]), r["batch"], f"{latency:.6f}"])
    return out.getvalue()


def _start_fit(store: Store, settings: Any, profile_id: str, *, kind: str = "auto") -> None:
    """Write the profile's measurements as a per-network table and queue its fit (once): an
    ``auto`` fit of the target's predictor, or for a drift probe the ``drift`` check of the
    active one (``workers.calibration.drift_check``)."""
    profile = store.get_profile(profile_id)
    table = profile_table(store.profile_results(profile_id))
    fit_id = uuid.uuid4().hex[:16]
    path = uploads_folder(settings) / f"profile-{profile_id}-{fit_id}.csv"
    path.write_text(table, encoding="utf-8")
    fit = {
        "id": fit_id,
        "target": profile["target"],
        "kind": kind,
        "csv_path": str(path),
        "owner": profile["owner"],
    }
    if not store.start_profile_fit(profile_id, fit):
        path.unlink(missing_ok=True)  # another request started it


@router.get("/devices", dependencies=[Read])
def devices(store: StoreDep, settings: SettingsDep, target: str | None = None) -> list[dict[str, Any]]:
    """Registered devices: target, runtime, online (seen within two lease periods), last seen,
    tasks done."""
    return store.devices(target=target, online_s=_online_s(settings))


@router.post("/targets/{name}/profile", status_code=202)
def profile(
    name: str, body: ProfileIn, store: StoreDep, settings: SettingsDep, cat: CatalogueDep, principal: Writer
) -> dict[str, Any]:
    """Profile a target on its agents: the models' plans are exported and queued as tasks, the
    agents measure them, and the target's predictor is fitted from the results (``GET
    /profiles/{id}`` follows it). 409 when the target has no registered device."""
    target = target_of(cat, name)
    check_may_change(principal, store.target_owner(target.name), f"target {target.name!r}")
    check_profile_models(body.models, settings, ("body", "models"))
    if not store.devices(target=target.name):
        raise Conflict(
            f"target {target.name!r} has no registered device; start `hwsearch agent --target {target.name}`"
        )
    spec = {
        **body.model_dump(),
        "timeout_s": settings.profile_timeout_s,
        "runtime": profile_runtime(store, cat, target.name),
    }
    return store.create_profile(target=target.name, spec=spec, owner=principal.owner)


class MeasureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The job's targets to measure its front on (default: every one with a registered device).
    targets: list[str] | None = Field(default=None, max_length=16)


@router.post("/jobs/{job_id}/measure", status_code=202)
def measure_front(
    job_id: str, body: MeasureIn, store: StoreDep, settings: SettingsDep, principal: Writer
) -> list[dict[str, Any]]:
    """Re-measure a finished job's front on its targets' device agents (one profile per target;
    a job that ends well queues this by itself). 409 when the job has not finished, or none of
    the targets has a registered device."""
    from ..dispatcher import queue_front_measurements

    job = store.get_job(job_id)
    check_may_change(principal, job.get("owner"), f"job {job_id!r}")
    if job["status"] not in ("succeeded", "exhausted", "cancelled"):
        raise Conflict(f"job {job_id!r} is {job['status']}; its front is measured once it has finished")
    unknown = [t for t in body.targets or [] if t not in job["targets"]]
    if unknown:
        raise Invalid(("body", "targets"), f"not targets of job {job_id!r} ({job['targets']})", unknown)
    profiles = queue_front_measurements(store, job, settings, body.targets)
    if not profiles:
        raise Conflict(
            f"no target of job {job_id!r} has a registered device agent "
            "(this machine's host-cpu and host-cpu-ort fronts are measured by the search itself)"
        )
    return profiles


@router.get("/profiles/{profile_id}", dependencies=[Read])
def get_profile(profile_id: str, store: StoreDep) -> dict[str, Any]:
    return store.get_profile(profile_id)
