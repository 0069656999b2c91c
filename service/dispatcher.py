"""The dispatcher: claims queued jobs and predictor fits and runs them on Ray; no search and no
fit runs in a request.

Each service replica runs one ``Dispatcher``: two threads, one for jobs and one for fits, so a
fit (minutes on a large table) never delays a job's start. The job thread claims a queued job
(``Store.claim``: one replica per job) and starts ``execute_job`` as a Ray task (zero CPUs: the
search's driver; its evaluator actors take the CPUs), so the API process never imports torch.
The task writes trials and status through ``DbSink``, beats a heartbeat every ``HEARTBEAT_S``
seconds and stops its search when the job's cancel flag is set. A job whose heartbeat stops (its
process died) goes back to the queue and resumes from its stored trials.

The fit thread (``FitDispatcher``) claims a queued fit and starts ``execute_fit`` as a Ray task
of one CPU; while it runs, the thread beats the fit's heartbeat and, when a cancel is
requested, kills the task (``ray.cancel(force=True)``: a fit has no point to stop at) and marks
the fit cancelled. The uploaded table is deleted once its fit has ended, whichever way.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .background import BackgroundLoop
from .db import make_engine
from .settings import Settings
from .store import Fenced, Store

log = logging.getLogger("hwsearch.dispatcher")
HEARTBEAT_S = 2.0
#: A dispatcher loop that has not come round for this long is reported stuck by /healthz (a loop
#: comes round every poll, also while a job or fit runs; a database call may take a while).
STUCK_AFTER_S = 60.0


#: How often a job whose runner's cluster was lost goes back to the queue before it fails.
MAX_REQUEUES = 3


class DbSink:
    """``workers.search.Sink`` on the database: trials idempotent, status and progress on the job,
    host measurements and recovered qualities on their trials.

    Every write presents the runner's claim ``generation``: once another claim took the job
    over, the write raises ``Fenced`` and the search stops, so one job never has two live
    runners writing (a paused runner that comes back finds its writes refused)."""

    def __init__(self, store: Store, generation: int | None = None) -> None:
        self.store = store
        self.generation = generation

    def on_trial(self, trial: Any) -> None:
        self.store.add_trial(trial.to_dict(), generation=self.generation)

    def on_status(self, job_id: str, status: str, progress: dict[str, Any]) -> None:
        self.store.set_status(job_id, status, progress=progress, generation=self.generation)

    def on_measurement(self, job_id: str, number: int, measured: dict[str, Any]) -> None:
        self.store.add_measurement(job_id, number, measured, generation=self.generation)

    def on_recovery(self, job_id: str, number: int, recovered: dict[str, Any]) -> None:
        """A front plan's recovered quality, stored beside its screening quality (once)."""
        self.store.add_recovery(job_id, number, recovered, generation=self.generation)


def execute_profile(database_url: str, profile_id: str, data_dir: str) -> str:
    """Prepare a profile's measurement tasks (inside a Ray task): sample its plans, export them to
    ONNX under ``<data dir>/agent_tasks/<profile>/`` and queue them for the target's agents.
    Returns the profile's status after it."""
    from latency_models import catalogue
    from workers.profiling import prepare_device_tasks

    store = Store(make_engine(database_url))
    row = store.get_profile(profile_id)
    spec = row["spec"]
    root = Path(data_dir)
    try:
        runtime = spec.get("runtime") or profile_runtime(store, catalogue(data_dir), row["target"])
    except Exception as exc:  # the target was deleted meanwhile
        store.fail_profile(profile_id, f"its target cannot be read: {type(exc).__name__}: {exc}")
        return "failed"
    if spec.get("kind") == "front":
        return _prepare_front(store, profile_id, spec, root, runtime)
    try:
        with private_files():
            tasks = prepare_device_tasks(
                spec["models"],
                int(spec["plans_per_model"]),
                root / "agent_tasks" / profile_id,
                root=root,
                seed=int(spec.get("seed", 0)),
                runtime=runtime,
            )
    except Exception as exc:  # a model that does not build or export: the profile says which
        store.fail_profile(profile_id, f"preparing its tasks failed: {type(exc).__name__}: {exc}")
        return "failed"
    if not store.add_tasks(profile_id, tasks, deadline_s=float(spec["timeout_s"])):
        return "gone"  # requeued or failed meanwhile: another run owns it now
    return "measuring"


def profile_runtime(store: Store, cat: Any, target_name: str) -> str:
    """The runtime a target's tasks are prepared for: the target's own, else its devices' (a
    target's devices all run one runtime: registration refuses another), else ONNX Runtime."""
    declared = cat.target(target_name).runtime
    if declared is not None:
        return str(declared)
    devices = store.devices(target=target_name)
    return str(devices[0]["runtime"]) if devices else "onnxruntime"


def _prepare_front(store: Store, profile_id: str, spec: dict[str, Any], root: Path, runtime: str) -> str:
    from workers.profiling import prepare_front_tasks

    try:
        with private_files():
            tasks, skipped = prepare_front_tasks(
                spec["job_spec"],
                spec["trials"],
                root / "agent_tasks" / profile_id,
                root=root,
                runtime=runtime,
            )
    except Exception as exc:  # the job's model no longer builds: the profile says why
        store.fail_profile(profile_id, f"preparing the front's tasks failed: {type(exc).__name__}: {exc}")
        return "failed"
    if not tasks:
        reasons = "; ".join(f"trial {s['trial']}: {s['error']}" for s in skipped)
        store.fail_profile(profile_id, f"no front plan could be exported: {reasons}")
        return "failed"
    for item in skipped:  # the others are measured; the trial says why this one is not
        failed = {"target": spec.get("target"), "error": f"not exported: {item['error']}"}
        store.add_device_measurement(spec["job_id"], int(item["trial"]), failed)
    if not store.add_tasks(profile_id, tasks, deadline_s=float(spec["timeout_s"])):
        return "gone"
    return "measuring"


def queue_front_measurements(
    store: Store, job: dict[str, Any], settings: Settings, targets: list[str] | None = None
) -> list[dict[str, Any]]:
    """Queue the re-measurement of a finished job's front on every target of the job that has a
    registered device agent (or on ``targets``): one profile of kind ``front`` per target; the
    agents' results become the front trials' ``measured`` (issue 19). This machine's own targets
    (host-cpu, host-cpu-ort) are measured by the search itself and skipped."""
    from latency_models import HOST_TARGETS

    from .fronts import front_of

    wanted = [t for t in (targets or job["targets"]) if t not in HOST_TARGETS and store.devices(target=t)]
    if not wanted:
        return []
    trials, _ = store.trials(job["id"])
    front = front_of(job, [t for t in trials if t.get("status") == "ok"])
    rows = [{"number": t["number"], "plan": t["plan"], "job_id": job["id"]} for t in front]
    if not rows:
        return []
    return [
        store.create_profile(
            target=target,
            spec={
                "kind": "front",
                "job_id": job["id"],
                "target": target,
                "trials": rows,
                "job_spec": job["spec"],
                "timeout_s": settings.profile_timeout_s,
            },
            owner=job.get("owner"),
        )
        for target in wanted
    ]


def execute_fit(database_url: str, fit_id: str, data_dir: str | None = None) -> str:
    """Fit a predictor version from an uploaded table (inside a Ray task); returns its status.

    The predictor files are created private (0600, folders 0700): the data directory holds
    what teams measured on their devices. The uploaded table is deleted once the fit ended."""
    from latency_models import catalogue
    from workers.calibration import drift_check, fit

    store = Store(make_engine(database_url))
    row = store.get_fit(fit_id)
    if row["cancel_requested"]:  # cancelled between its claim and its start
        store.finish_fit(fit_id, cancelled=True)
        discard_upload(row["csv_path"])
        return "cancelled"
    try:
        with private_files():
            # The Ray task reads and writes the service's catalogue, passed by its folder.
            cat = catalogue(data_dir)
            profile = store.profile_of_fit(fit_id)
            if row["kind"] == "drift":  # a drift probe: score the active version, fit nothing
                tolerance = float((profile or {}).get("spec", {}).get("tolerance", 1.5))
                report = drift_check(row["target"], row["csv_path"], tolerance=tolerance, cat=cat)
            else:
                # A device profile's fit replaces the active version only when it ranks better.
                report = fit(
                    row["target"],
                    row["csv_path"],
                    family=row["family"],
                    kind=row["kind"],
                    cat=cat,
                    against_active=profile is not None,
                )
    except Exception as exc:  # LatencyModelError/MeasurementError name the field; anything else too
        status, ended = "failed", store.finish_fit(fit_id, error=f"{type(exc).__name__}: {exc}")
    else:
        status, ended = "succeeded", store.finish_fit(fit_id, report=report)
    if ended:  # not when it went back to the queue meanwhile: its next run reads the table
        discard_upload(row["csv_path"])
    return status


@contextmanager
def private_files() -> Iterator[None]:
    """Files and folders created inside are the owner's only (umask 077).

    The umask is the process's: this is for a Ray task's worker process, which runs one task
    at a time (inline, a concurrent thread's new files are only made more private)."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def discard_upload(csv_path: str) -> None:
    """Delete an uploaded table once its fit has ended (the fit's report keeps what it taught)."""
    try:
        Path(csv_path).unlink(missing_ok=True)
    except OSError:  # a table that cannot be removed must not fail the fit's bookkeeping
        log.warning("could not delete the uploaded table %s", csv_path, exc_info=True)


def execute_job(
    database_url: str,
    job_id: str,
    worker: str,
    generation: int | None = None,
    data_dir: str | None = None,
    stall_s: float | None = None,
) -> str:
    """Run one claimed job to its end (inside a Ray task, or inline); returns its final status,
    or "fenced" when its claim (``generation``) was taken over and it stopped without writing.

    The heartbeat is beaten from its own thread, so a slow evaluation is not taken for a dead
    runner; a paused process beats nothing, is requeued, and finds itself fenced when it wakes.
    """
    from latency_models import catalogue
    from workers.search import JobSpec, SearchError, Trial, run_search

    store = Store(make_engine(database_url))
    finished = threading.Event()
    cancel = threading.Event()
    fenced = threading.Event()

    def beat() -> None:
        while not finished.wait(HEARTBEAT_S):
            try:
                if store.heartbeat(job_id, worker, generation):
                    cancel.set()
            except Fenced:
                fenced.set()
                cancel.set()  # the search stops at once; its next write is refused anyway
                return
            except Exception:  # a database hiccup: the next beat tries again
                log.warning("heartbeat of job %s failed", job_id, exc_info=True)

    threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True).start()
    try:
        job = store.get_job(job_id)
        spec = JobSpec.model_validate(job["spec"])
        stored = [Trial.from_dict(t) for t in store.trials(job_id)[0]]
        if job["cancel_requested"]:
            cancel.set()
        sink = DbSink(store, generation)
        result = run_search(
            spec,
            sink,
            job_id=job_id,
            resume=stored,
            cancel=cancel,
            catalogue=catalogue(data_dir),
            stall_s=stall_s,
            data_dir=Path(data_dir) if data_dir is not None else None,
        )
        if fenced.is_set():
            raise Fenced(f"job {job_id}: taken over while it ran")
        return result.status
    except Fenced as exc:
        log.warning("job %s: stopped, its claim was taken over (%s)", job_id, exc)
        return "fenced"
    except SearchError as exc:
        return _fail(store, job_id, str(exc), generation)
    except Exception as exc:  # the job fails with its error; the dispatcher goes on
        log.exception("job %s failed", job_id)
        return _fail(store, job_id, f"{type(exc).__name__}: {exc}", generation)
    finally:
        finished.set()


def _fail(store: Store, job_id: str, error: str, generation: int | None) -> str:
    try:
        store.set_status(job_id, "failed", error=error, generation=generation)
    except Fenced:
        return "fenced"
    return "failed"


_ray_lock = threading.Lock()
_ray_ready = threading.Event()
_ray_failure: list[BaseException] = []
#: Ray's driver ends its own process when it has not reached the GCS for this long (60 s by
#: default). The dispatcher's process (``service.supervisor``) notices a lost head itself, hands
#: its job back and ends; a new process connects afresh. Ray's own deadline is pushed out so it
#: never races that orderly exit.
GCS_RECONNECT_TIMEOUT_S = str(10 * 365 * 86400)


def start_ray(address: str | None) -> None:
    """Connect to or start Ray once per process, from a thread that lives as long as the process.

    Ray's local processes die with the thread that started them (the parent-death signal is
    per thread on Linux): started from a dispatcher thread, they were killed when a service
    shut its dispatcher down, and the next dispatcher of the process found Ray dead. A process
    whose Ray was lost does not reconnect: in-process reconnects were unreliable (Ray ended a
    reconnected driver ~15 s later in 1 of 4 runs), so the dispatcher's process ends and the
    supervisor starts a new one.
    """
    with _ray_lock:
        if not any(t.name == "hwsearch-ray" for t in threading.enumerate()):
            _ray_ready.clear()

            def own() -> None:
                from workers.search import ensure_ray

                os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", GCS_RECONNECT_TIMEOUT_S)
                try:
                    ensure_ray(address)
                except BaseException as exc:
                    _ray_failure.append(exc)
                finally:
                    _ray_ready.set()
                threading.Event().wait()  # holds Ray's processes as long as this process lives

            threading.Thread(target=own, name="hwsearch-ray", daemon=True).start()
    _ray_ready.wait()
    if _ray_failure:
        raise RuntimeError(f"Ray did not start: {_ray_failure[-1]}")


#: How long a Ray round trip may take before Ray counts as down, and how long its answer is
#: reused (a load balancer polling /healthz every second must not flood Ray with tasks).
RAY_PROBE_TIMEOUT_S = 5.0
RAY_PROBE_START_S = 60.0
RAY_PROBE_TTL_S = 5.0
_probe: dict[str, Any] = {"at": -1e9, "state": ""}
_probe_lock = threading.Lock()


def ray_health(address: str | None, *, fresh: bool = False, block: bool = True) -> str:
    """ "ok", "not started ..." (no job ran yet: Ray starts with the first), or "error: ...".

    ``block`` False answers the last state at once while another caller's probe is under way
    (a health report must not wait a minute for the probe actor's first start)."""
    import sys

    if "ray" not in sys.modules:
        return "not started (starts with the first job)" if not address else "not connected yet"
    if not _ray_ready.is_set() and any(t.name == "hwsearch-ray" for t in threading.enumerate()):
        return "not connected yet (connecting)"
    if _ray_failure:
        return f"error: Ray did not start: {_ray_failure[-1]}"[:300]
    import ray

    try:
        if not ray.is_initialized():
            return "not started (starts with the first job)"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    if not _probe_lock.acquire(blocking=block):
        return str(_probe["state"] or "not connected yet (checking)")
    try:
        if not fresh and time.monotonic() - _probe["at"] < RAY_PROBE_TTL_S:
            return str(_probe["state"])
        state = _round_trip()
        _probe.update(at=time.monotonic(), state=state)
        return state
    finally:
        _probe_lock.release()


def _round_trip() -> str:
    """The cluster's resources from its GCS, and a call to a small probe actor and back: what
    is_initialized() cannot tell (the head may be gone while this process still thinks it is
    connected; a GCS-less raylet still runs tasks). The actor lives on between probes, so a
    round trip never waits for Ray to start a worker process (seconds on a loaded machine: a
    task-per-probe timed out twice in a row there while Ray was well). Run in a thread of its
    own, since Ray's calls may block on a lost GCS far longer than any timeout they take."""
    previous = _probe.get("thread")
    if previous is not None and previous.is_alive():
        return "error: the previous Ray probe is still waiting for an answer"
    answer: list[str] = []
    first = _probe.get("actor") is None
    # The first probe starts the actor's worker process: it may take a while.
    timeout_s = RAY_PROBE_START_S if first else RAY_PROBE_TIMEOUT_S

    def probe() -> None:
        import ray

        try:
            if not ray.cluster_resources():
                raise RuntimeError("the cluster reports no resources")
            if _probe.get("actor") is None:
                # On the head: the probe says whether the head answers, and a lost worker node
                # does not take the probe with it.
                pong = ray.remote(num_cpus=0, max_restarts=0, resources={"node:__internal_head__": 0.001})
                _probe["actor"] = pong(_Pong).remote()
            ray.get(_probe["actor"].pong.remote(), timeout=timeout_s)
            answer.append("ok")
        except Exception as exc:  # GetTimeoutError, a lost GCS, a dead raylet: all say Ray is down
            stale, _probe["actor"] = _probe.get("actor"), None  # the next probe starts a new one
            if stale is not None:  # a slow one would otherwise live on beside its replacement
                with suppress(Exception):
                    ray.kill(stale)
            answer.append(f"error: Ray did not answer ({type(exc).__name__})")

    thread = threading.Thread(target=probe, name="hwsearch-ray-probe", daemon=True)
    _probe["thread"] = thread
    thread.start()
    thread.join(timeout_s + 1)
    return answer[0] if answer else f"error: no Ray round trip within {timeout_s:g} s"


class _Pong:
    def pong(self) -> str:
        return "pong"


class Dispatcher(BackgroundLoop):
    """Runs jobs on its thread and, on a second thread (``fits``), predictor fits; ``start`` and
    ``stop`` start and stop both. ``inline`` runs both in this process, without Ray (tests of
    the queue).

    When its Ray is lost (the head does not answer), the dispatcher hands its job back to the
    queue, sets ``ray_lost`` to the reason and stops: its process (``service.supervisor``) ends
    and a new one connects afresh."""

    thread_name = "hwsearch-dispatcher"

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        worker: str | None = None,
        poll_s: float = 0.5,
        inline: bool = False,
    ) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.poll_s = poll_s
        self.inline = inline  # run jobs in this process (tests of the queue without Ray)
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.current: str | None = None
        #: Why this dispatcher stopped for good: its Ray was lost ("" while it was not).
        self.ray_lost = ""
        self.fits = FitDispatcher(store, settings, worker=self.worker, poll_s=poll_s, inline=inline)

    def health(self) -> str:
        """ "ok", or "error: ..." naming the loop that stopped or has not run for a while."""
        for loop in (self, self.fits):
            if loop._stop.is_set():
                continue  # shutting down: not a failure
            if loop._thread is None or not loop._thread.is_alive():
                return f"error: the {loop.thread_name} thread is not running"
            quiet_s = time.monotonic() - loop.last_tick
            if quiet_s > STUCK_AFTER_S:
                return f"error: the {loop.thread_name} loop has not run for {quiet_s:.0f} s"
        return "ok"

    def start(self) -> None:
        super().start()
        self.fits.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.fits._stop.set()  # both threads wind down at once
        super().stop(timeout_s)
        self.fits.stop(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.last_tick = time.monotonic()
            try:
                requeued = self.store.requeue_orphans(max(self.settings.orphan_after_s, 3 * HEARTBEAT_S))
                if requeued:
                    log.warning("resuming orphaned jobs and fits %s", requeued)
                if self._ray_down():  # no job is claimed into a Ray that is away
                    self._stop.wait(self.poll_s)
                    continue
                job = self.store.claim(self.worker)
                if job is not None:
                    self.current = job["id"]
                    self._run(job["id"], int(job["generation"]), job.get("progress") or {})
                    continue
                self._stop.wait(self.poll_s)
            except Exception:  # a database hiccup must not kill the dispatcher
                self.log_failure(log, "dispatcher loop")
                self._stop.wait(self.poll_s)
            finally:
                self.current = None

    def _run(self, job_id: str, generation: int, progress: dict[str, Any]) -> None:
        call = (self.settings.database_url, job_id, self.worker, generation)
        kw: dict[str, Any] = {"data_dir": str(self.settings.data_dir), "stall_s": self.settings.stall_s}
        if self.inline:
            self._after(job_id, execute_job(*call, **kw))
            return
        import ray

        try:
            start_ray(self.settings.ray_address)
            state = ray_health(self.settings.ray_address, fresh=True)
            if state.startswith("error"):  # a submission to a lost cluster may block for good
                raise RuntimeError(state)
            fn: Callable[..., str] = execute_job  # Ray's stubs type few signatures
            ref = ray.remote(num_cpus=0, max_retries=0)(fn).remote(*call, **kw)
        except Exception as exc:  # Ray is away: the job waits in the queue, not "running"
            self._lost(job_id, generation, progress, f"{type(exc).__name__}: {exc}", count=False)
            self._give_up_ray(f"{type(exc).__name__}: {exc}")
            return
        checked = time.monotonic()
        while not self._stop.is_set():
            self.last_tick = time.monotonic()
            done, _ = ray.wait([ref], timeout=self.poll_s)
            if not done and time.monotonic() - checked > HEARTBEAT_S:
                checked = time.monotonic()
                if self._taken_over(job_id, generation):
                    # Its runner went quiet (paused, or hung) and the job was given back to the
                    # queue: that runner is killed (it would be fenced at its next write anyway)
                    # and this loop claims again, rather than wait on it for ever.
                    log.warning("job %s: its runner went quiet and was replaced", job_id)
                    ray.cancel(ref, force=True)
                    return
            if done:
                try:
                    self._after(job_id, ray.get(ref))
                except Exception as exc:  # the task's process died: its node or the cluster was lost
                    self._lost(job_id, generation, progress, f"{type(exc).__name__}: {exc}")
                    state = ray_health(self.settings.ray_address, fresh=True)
                    if state.startswith("error"):
                        self._give_up_ray(state)  # the cluster went with it
                return
            state = self._confirmed_ray_state()
            if state.startswith("error"):  # the head is gone: its runner with it
                self._lost(job_id, generation, progress, f"the Ray cluster was lost ({state})")
                self._give_up_ray(state)
                return

    def _after(self, job_id: str, status: str) -> None:
        """A job that ended well has its front re-measured on its targets' device agents."""
        if status not in ("succeeded", "exhausted"):
            return
        try:
            for profile in queue_front_measurements(self.store, self.store.get_job(job_id), self.settings):
                log.info(
                    "job %s: front queued for measurement on %s (%s)",
                    job_id,
                    profile["target"],
                    profile["id"],
                )
        except Exception:  # the job itself is done; a failed hand-over must not undo that
            self.log_failure(log, f"queueing the front of job {job_id} for its devices")

    def _taken_over(self, job_id: str, generation: int) -> bool:
        """Whether the job's claim moved on from ``generation`` (quiet runners are requeued
        first: with one replica, no other dispatcher would notice this one's runner stopped)."""
        try:
            self.store.requeue_orphans(max(self.settings.orphan_after_s, 3 * HEARTBEAT_S))
            return int(self.store.get_job(job_id)["generation"]) != generation
        except Exception:  # a database hiccup: ask again at the next check
            log.warning("could not check the claim of job %s", job_id, exc_info=True)
            return False

    def _ray_down(self) -> bool:
        """Whether Ray was started and does not answer now (then this dispatcher gives up)."""
        if self.inline:
            return False
        state = self._confirmed_ray_state()
        if not state.startswith("error"):
            return False
        self._give_up_ray(state)
        return True

    def _confirmed_ray_state(self) -> str:
        """Ray's state, an error confirmed by a second, fresh round trip: one slow answer on a
        loaded machine must not end the dispatcher."""
        state = ray_health(self.settings.ray_address)
        if state.startswith("error"):
            state = ray_health(self.settings.ray_address, fresh=True)
        return state

    def _give_up_ray(self, reason: str) -> None:
        """This process's Ray is lost: stop both loops (no claim goes to a lost cluster); the
        supervisor ends the process and starts one that connects afresh."""
        log.warning("Ray was lost (%s): the dispatcher stops for its process to be replaced", reason)
        self.ray_lost = reason or "Ray was lost"
        self._stop.set()
        self.fits._stop.set()

    def _lost(
        self, job_id: str, generation: int, progress: dict[str, Any], error: str, *, count: bool = True
    ) -> None:
        """The runner's process died (not the job's own error: execute_job catches those): the
        job goes back to the queue, from where it resumes, up to MAX_REQUEUES times (``count``
        False: it never started, Ray being away, which does not count against it)."""
        if not count:
            self.store.requeue(job_id, generation, f"Ray was away: {error}", count=False)
            return
        if int(progress.get("requeued", 0)) < MAX_REQUEUES:
            if self.store.requeue(job_id, generation, f"its runner was lost: {error}"):
                log.warning("job %s requeued: its runner was lost (%s)", job_id, error)
            return
        with suppress(Fenced):
            self.store.set_status(
                job_id,
                "failed",
                error=f"its runner was lost {MAX_REQUEUES + 1} times; the last time: {error}",
                generation=generation,
            )


class FitDispatcher(BackgroundLoop):
    """Claims queued predictor fits and runs each as a Ray task of one CPU, one at a time per
    replica, apart from the jobs: beats the fit's heartbeat while it runs and kills it when its
    cancel is requested (``Dispatcher`` starts one; it runs on its own as well)."""

    thread_name = "hwsearch-fits"

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        worker: str | None = None,
        poll_s: float = 0.5,
        inline: bool = False,
    ) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.poll_s = poll_s
        # Inline (tests), a started fit runs to its end: a thread cannot be killed.
        self.inline = inline
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.current: str | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.last_tick = time.monotonic()
            try:
                fit = self.store.claim_fit(self.worker)
                if fit is not None:
                    self.current = fit["id"]
                    self._run(fit["id"], fit["csv_path"])
                    continue
                profile = self.store.claim_profile(self.worker)
                if profile is not None:
                    self.current = profile["id"]
                    self._prepare(profile["id"])
                    continue
                for profile_id in self.store.expire_profiles():
                    log.info("profile %s timed out waiting for its agents", profile_id)
                self._stop.wait(self.poll_s)
            except Exception:  # a database hiccup must not kill the dispatcher
                self.log_failure(log, "fit dispatcher loop")
                self._stop.wait(self.poll_s)
            finally:
                self.current = None

    def _prepare(self, profile_id: str) -> None:
        """Prepare a profile's tasks (``execute_profile``) while beating its claim."""

        def beat() -> bool:
            self.store.profile_heartbeat(profile_id, self.worker)
            return False  # a profile being prepared is not cancelled

        def failed(exc: Exception) -> None:  # the task's process died: the profile says why
            self.store.fail_profile(profile_id, f"preparing its tasks failed: {type(exc).__name__}: {exc}")

        call = (self.settings.database_url, profile_id, str(self.settings.data_dir))
        self._supervise(f"profile {profile_id}", execute_profile, call, {}, beat, failed)

    def _run(self, fit_id: str, csv_path: str) -> None:
        def failed(exc: Exception) -> None:  # the task's process died: fail it with the reason
            if self.store.finish_fit(fit_id, error=f"{type(exc).__name__}: {exc}"):
                discard_upload(csv_path)

        def cancelled() -> None:
            if self.store.finish_fit(fit_id, cancelled=True):
                discard_upload(csv_path)
            log.info("fit %s cancelled", fit_id)

        self._supervise(
            f"fit {fit_id}",
            execute_fit,
            (self.settings.database_url, fit_id),
            {"data_dir": str(self.settings.data_dir)},
            lambda: self.store.fit_heartbeat(fit_id, self.worker),
            failed,
            cancelled,
        )

    def _supervise(
        self,
        what: str,
        fn: Callable[..., str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        beat: Callable[[], bool],
        failed: Callable[[Exception], None],
        cancelled: Callable[[], None] | None = None,
    ) -> None:
        """Run ``fn`` inline (its claim beaten from a thread meanwhile, or the job thread would give
        it back to the queue as orphaned) or as a Ray task, beating its claim every poll. ``beat``
        returns whether a cancel was asked for (then the Ray task is killed and ``cancelled``
        runs); a task whose process died ends through ``failed``. Stopping (the service shuts
        down) kills the task: it is claimed again once its heartbeat is old enough."""
        if self.inline:
            ended = threading.Event()

            def beating() -> None:
                while not ended.wait(HEARTBEAT_S):
                    beat()

            threading.Thread(target=beating, name=f"heartbeat-{what}", daemon=True).start()
            try:
                fn(*args, **kwargs)
            finally:
                ended.set()
            return
        import ray

        start_ray(self.settings.ray_address)
        ref = ray.remote(num_cpus=1, max_retries=0)(fn).remote(*args, **kwargs)
        while not self._stop.is_set():
            self.last_tick = time.monotonic()
            done, _ = ray.wait([ref], timeout=self.poll_s)
            if done:
                try:
                    ray.get(ref)
                except Exception as exc:
                    failed(exc)
                return
            if beat() and cancelled is not None:
                ray.cancel(ref, force=True)  # kills the task's worker process
                cancelled()
                return
        ray.cancel(ref, force=True)
