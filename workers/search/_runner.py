"""``run_search``: one job on Ray. Quality is evaluated by long-lived evaluator actors (each
holds the built model and its data, and evaluates several plans per task); costs are
predicted in the driver, never on Ray.

Numbering and idempotency: trial numbers are 0, 1, 2, ... per job; trial 0 is always the
uncompressed model (it fixes the reference quality). On resume the stored trials are told to
the strategy (warm start), count against the budget, and numbering continues after the
highest stored number, so no number is used twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from latency_models import HOST_TARGETS, Catalogue
from search_spaces import Plan

from ._errors import SearchError, SearchStalled
from ._pareto import front_mask
from ._problem import Problem
from ._spec import DEFAULT_STRATEGY, JobSpec
from ._strategy import Observation, create_strategy
from ._trial import Sink, Trial

HOST_TARGET = "host-cpu"
#: The targets that are this machine, and what runs a plan there when the front is measured.
HOST_RUNTIMES: dict[str, str] = dict(HOST_TARGETS)
#: Asks in a row that bring nothing new before a strategy counts as exhausted.
_MAX_IDLE_ASKS = 25


@dataclass
class SearchResult:
    job_id: str
    status: str
    trials: list[Trial]
    front: list[Trial]
    hypervolume: float
    reference_point: list[float]
    objective_names: list[str]
    history: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "front": [_front_row(t) for t in self.front],
            "hypervolume": self.hypervolume,
            "trials": len(self.trials),
            "reference_point": self.reference_point,
            "objectives": self.objective_names,
            "error": self.error,
        }


def _front_row(t: Trial) -> dict[str, Any]:
    row: dict[str, Any] = {"number": t.number, "quality": t.quality}
    for name, cost in t.costs.items():
        row[f"latency_ms@{name}"] = cost["latency_ms"]
    if t.measured:
        row["measured_latency_ms"] = t.measured.get("latency_ms")
    row["plan"] = t.plan
    return row


# ---------------------------------------------------------------------------------- Ray side
#: Lines ray.init logs on every start that tell an hwsearch user nothing they can act on:
#: (logger, message start). Token authentication stays on (Ray's default, and its token file);
#: only the announcement goes. The SIGTERM line comes from the service, which starts Ray from a
#: thread of its own on purpose and has uvicorn handle SIGTERM.
RAY_NOISE: tuple[tuple[str, str], ...] = (
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for"),
    ("ray._private.worker", "SIGTERM handler is not set"),
)


class _DropRayNoise(logging.Filter):
    """Drops the ``RAY_NOISE`` lines of one Ray logger, and nothing else."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_ray_startup() -> None:
    """Install the ``RAY_NOISE`` filters on Ray's loggers (once; a filter object is not added twice)."""
    by_logger: dict[str, list[str]] = {}
    for name, start in RAY_NOISE:
        by_logger.setdefault(name, []).append(start)
    for name, starts in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRayNoise) for f in logger.filters):
            logger.addFilter(_DropRayNoise(tuple(starts)))


#: Ray's switch for "this node may join a multi-node cluster" (on by default on Linux). Off,
#: a new local Ray takes the loopback address as its node IP (ray/_private/services.py,
#: ``get_node_ip_address``), and every Ray server of that node binds it.
_RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _init_ray_on_loopback() -> None:
    """Start a local Ray whose GCS, raylet, agents and workers listen on loopback only.

    ``ray.init(_node_ip_address="127.0.0.1")`` alone does not do it: ray.init swaps a
    loopback address for the host's outward IP (``services.resolve_ip_for_localhost``), and
    the servers then listen on every interface. With the cluster switch off (Ray's own setting
    for macOS and Windows), the node IP stays 127.0.0.1 (``::1`` on an IPv6-only host), the
    gRPC servers bind it, and the runtime-env agent binds it too. The switch is read at import
    (``ray_constants.ENABLE_RAY_CLUSTER``), so the module value is set as well; both go back
    after start-up: Ray's processes took the environment when they were spawned, and a later
    ``ray.init(address=...)`` in this process must not be changed.
    """
    import ray
    from ray._private import ray_constants

    saved_env = os.environ.get(_RAY_CLUSTER_SWITCH)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        # A Ray of its own ("local"): without an address ray.init joins the newest Ray cluster
        # this machine runs, whoever started it. No dashboard; nothing on Redis's 6379 (ray.init
        # picks free ports).
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_RAY_CLUSTER_SWITCH, None)
        else:
            os.environ[_RAY_CLUSTER_SWITCH] = saved_env
    # Ray writes its token (when ray.init made one) with the umask's mode, 0644 as a rule: any
    # local user could read it and then use the loopback ports. Only this user needs it.
    from pathlib import Path

    token_path = Path.home() / ".ray" / "auth_token"  # Ray's default (authentication_token_setup)
    try:
        if "RAY_AUTH_TOKEN_PATH" not in os.environ and token_path.stat().st_mode & 0o077:
            token_path.chmod(0o600)
    except FileNotFoundError:  # token auth disabled (RAY_AUTH_MODE=disabled), or a token in RAY_AUTH_TOKEN
        pass
    except OSError as exc:  # not ours to change: say so, Ray still runs
        logging.getLogger(__name__).warning("could not make Ray's token %s private: %s", token_path, exc)
    node_ip = ray.util.get_node_ip_address()
    if node_ip not in ("127.0.0.1", "::1", "localhost"):
        # A Ray release that no longer honours the switch: say so instead of failing the service.
        logging.getLogger(__name__).warning(
            "the embedded Ray took node IP %s, not loopback: its ports may be reachable from other "
            "hosts (Ray %s; see docs/service.md, 'Ray and the network')",
            node_ip,
            ray.__version__,
        )


def ensure_ray(address: str | None = None) -> None:
    """Connect to RAY_ADDRESS (or ``address``), or start an embedded local Ray once.

    The embedded Ray listens on 127.0.0.1 only (``_init_ray_on_loopback``) and keeps Ray's
    default token authentication; a cluster's network exposure is its operator's
    (docs/service.md, "Ray and the network").
    """
    import ray

    if ray.is_initialized():
        return
    quiet_ray_startup()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        _init_ray_on_loopback()


class Evaluator:
    """Holds one built model of a job and evaluates plans on it (runs inside a Ray actor).

    Built from the job's spec (``job_entry``: its model source, weights, data or evaluator), so
    every evaluator judges plans exactly as the driver's problem was built."""

    def __init__(self, spec: dict[str, Any], data_dir: str | None) -> None:
        import torch

        from workers.zoo import prepare

        from ._entry import job_entry

        torch.set_num_threads(1)
        # The strategy is the driver's business (and may be registered in its process only):
        # the evaluator validates the spec with the default one, everything else as given.
        job = JobSpec.model_validate({**spec, "strategy": DEFAULT_STRATEGY})
        entry = job_entry(job, data_dir=Path(data_dir) if data_dir else None)
        self.prepared = prepare(entry)
        self.calibrate = job.recovery.calibrate
        self.seed = job.seed

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, plans: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from workers.recovery import judge_plan

        out = []
        for data in plans:
            start = time.perf_counter()
            try:
                judged = judge_plan(self.prepared, Plan.from_dict(data), calibrate=self.calibrate)
                q = judged.quality
                detail = {k: q.extra[k] for k in ("n", "low", "high") if k in q.extra}
                out.append(
                    {
                        "quality": q.value,
                        "metric": q.metric,
                        "quality_detail": detail or None,
                        "calibration": judged.calibration,
                        "eval_s": time.perf_counter() - start,
                    }
                )
            except Exception as exc:  # a failing plan is a failed trial, never a failed job
                out.append(
                    {
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(limit=4),
                        "eval_s": time.perf_counter() - start,
                    }
                )
        return out

    def recover(self, plan: dict[str, Any], recipe: dict[str, Any], checkpoint: str) -> dict[str, Any]:
        """The recovery stage for one front plan (``workers.recovery.recover_plan``): resumes
        from the checkpoint a killed task left; returns the record, or ``{"error": ...}``."""
        from workers.recovery import RecoveryRecipe, recover_plan

        try:
            done = recover_plan(
                self.prepared,
                Plan.from_dict(plan),
                RecoveryRecipe(**recipe, seed=self.seed),
                checkpoint=Path(checkpoint),
                calibrate=self.calibrate,
            )
        except Exception as exc:  # a failing recovery keeps the screening result
            return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=4)}
        return done.record


def _actor_class() -> Any:
    import ray

    # A dead worker's actor restarts (rebuilding the model) and Ray retries its tasks.
    return ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)(Evaluator)


# ---------------------------------------------------------------------------------- driver
def run_search(
    spec: JobSpec,
    sink: Sink,
    *,
    job_id: str | None = None,
    resume: Iterable[Trial] = (),
    cancel: threading.Event | None = None,
    problem: Problem | None = None,
    catalogue: Catalogue | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    measure_front: bool = True,
    stall_s: float | None = None,
    data_dir: Path | None = None,
) -> SearchResult:
    """Run (or resume) one search to its budget; every trial goes to ``sink`` as it finishes.

    Costs come from ``catalogue`` (the targets and their active predictors; default: the
    catalogue of ``latency_models.data_dir()``) unless a built ``problem`` is given.

    A batch whose evaluator died (its node lost) is evaluated again on another evaluator before
    it is stored as failed; a dead evaluator is replaced only where the cluster has a free CPU
    (else the job goes on with fewer). With ``stall_s``, a search whose evaluations have all
    been waiting that long (no evaluator can be placed) raises ``SearchStalled`` with the reason
    instead of waiting forever."""
    import ray

    job_id = job_id or uuid.uuid4().hex[:12]
    cancel = cancel or threading.Event()
    start = time.monotonic()
    problem = problem or Problem.build(spec, catalogue, data_dir=data_dir)
    trials: dict[int, Trial] = {t.number: t for t in resume if t.job_id == job_id}
    budget = spec.budget.evaluations or 10**9
    deadline = start + spec.budget.wall_time_s if spec.budget.wall_time_s else float("inf")
    history: list[tuple[int, float]] = []

    layers = problem.layer_summary()  # for the dashboard's plan heatmap (rank fractions)
    # Which process runs the search: an operator (or a fault test) finds the job's runner by it.
    runner = {"host": socket.gethostname(), "pid": os.getpid()}

    def status(state: str, **extra: Any) -> None:
        progress = {
            "evaluations": len(trials),
            "budget": spec.budget.evaluations,
            "elapsed_s": round(time.monotonic() - start, 3),
            **extra,
            "runner": runner,
            "layers": layers,
            "source": problem.source,
            "data": problem.data,
        }
        sink.on_status(job_id, state, progress)
        if on_progress is not None:
            on_progress({"status": state, **progress})

    ensure_ray()
    cls = _actor_class()
    n_workers = max(1, min(spec.concurrency, int(ray.cluster_resources().get("CPU", 1)), budget))
    spec_data = spec.model_dump(mode="json")
    where = str(data_dir) if data_dir is not None else None
    actors = [cls.remote(spec_data, where) for _ in range(n_workers)]
    try:
        pids = ray.get([a.pid.remote() for a in actors])
        status("running", workers=n_workers, worker_pids=pids)

        # Each trial's objectives are computed once, when it is recorded: repeats are answered from
        # ``observed`` and the hypervolume after every batch from ``front_points``.
        observed: dict[Plan, Observation] = {}
        front_points: list[list[float]] = []

        def remember(trial: Trial) -> Observation:
            plan = Plan.from_dict(trial.plan)
            if trial.quality is None:
                obs = Observation(plan, None, False, None)
            else:
                objectives = tuple(problem.objectives(trial.quality, trial.costs))
                obs = Observation(plan, objectives, trial.feasible, trial.quality)
                if trial.feasible:
                    front_points.append(list(objectives))
            observed.setdefault(plan, obs)
            return obs

        def hv() -> float:
            return problem.goals.hypervolume(front_points)

        def record(
            number: int, plan: Plan, result: dict[str, Any], costs: dict[str, Any], predict_s: float
        ) -> Observation:
            quality = result.get("quality")
            if quality is not None and number == 0:
                problem.reference_quality = float(quality)
            violations = problem.violations(quality, costs) if quality is not None else []
            trial = Trial(
                job_id=job_id,
                number=number,
                plan=plan.to_dict(),
                status="ok" if quality is not None else "failed",
                quality=quality,
                quality_metric=problem.quality_metric,
                costs=costs,
                feasible=quality is not None and not violations,
                violations=violations,
                error=result.get("error"),
                quality_detail=result.get("quality_detail"),
                calibration=result.get("calibration"),
                eval_s=float(result.get("eval_s", 0.0)),
                predict_s=predict_s,
                strategy=spec.strategy,
            )
            trials[number] = trial
            sink.on_trial(trial)
            return remember(trial)

        def predicted(plan: Plan) -> tuple[dict[str, Any], float]:
            t0 = time.perf_counter()
            costs = problem.costs(plan)
            return costs, time.perf_counter() - t0

        # Trial 0: the uncompressed model fixes the reference quality (part of the problem).
        fresh_zero = 0 not in trials
        if fresh_zero:
            identity = Plan()
            costs, predict_s = predicted(identity)
            result = ray.get(actors[0].evaluate.remote([identity.to_dict()]))[0]
            record(0, identity, result, costs, predict_s)
        elif trials[0].quality is not None:
            problem.reference_quality = float(trials[0].quality)
        if trials[0].quality is None:
            # The job fails naming what judged the model: the user's evaluator, data, or model.
            field, value = (
                ("evaluator", spec.evaluator)
                if spec.evaluator
                else ("data", spec.data.describe())
                if spec.data
                else ("model", spec.model)
            )
            raise SearchError(field, value, f"the uncompressed model failed to evaluate: {trials[0].error}")

        strategy = create_strategy(spec.strategy, problem, spec.seed)
        # Stored trials (resume) are remembered now that the reference quality is known.
        told = [observed[Plan()]] if fresh_zero else []
        told += [remember(t) for n, t in sorted(trials.items()) if n != 0 or not fresh_zero]
        strategy.tell(told)
        history.append((len(trials), hv()))

        # Numbers allocated before a restart but never stored are evaluated first, so a finished
        # job holds exactly 0..N-1; new numbers continue after the highest stored.
        gaps = sorted(set(range(max(trials) + 1)) - set(trials))
        next_number = max(trials) + 1

        def allocate() -> int:
            nonlocal next_number
            if gaps:
                return gaps.pop(0)
            next_number += 1
            return next_number - 1

        # A deterministic strategy may first replay the plans it proposed before a restart (all
        # answered from the cache): that replay is not exhaustion.
        max_idle_asks = _MAX_IDLE_ASKS + len(told) - 1  # told: trial 0 and the stored trials
        in_flight: dict[Any, tuple[Any, list[tuple[int, Plan, dict[str, Any], float]]]] = {}
        idle_asks = 0
        exhausted = False
        retried: set[int] = set()  # first numbers of batches already evaluated again
        last_progress = time.monotonic()
        while not cancel.is_set():
            pending = sum(len(v[1]) for v in in_flight.values())
            room = budget - len(trials) - pending
            free = [a for a in actors if all(a is not v[0] for v in in_flight.values())]
            while free and room > 0 and not exhausted and time.monotonic() < deadline and not cancel.is_set():
                asked = strategy.ask(min(spec.plans_per_task, room))
                fresh: list[Plan] = []
                repeats: list[Observation] = []
                for plan in asked:
                    if plan in observed:
                        repeats.append(observed[plan])
                    elif plan not in fresh:
                        fresh.append(plan)
                if repeats:
                    strategy.tell(repeats)
                if not fresh:
                    idle_asks += 1
                    exhausted = not asked or idle_asks >= max_idle_asks
                    continue
                idle_asks = 0
                batch = []
                for plan in fresh:
                    try:
                        problem.space.validate_plan(plan)
                        costs, predict_s = predicted(plan)
                    except Exception as exc:  # a plan the cost model rejects fails as a trial
                        error = {"error": f"{type(exc).__name__}: {exc}"}
                        strategy.tell([record(allocate(), plan, error, {}, 0.0)])
                        room -= 1
                        continue
                    batch.append((allocate(), plan, costs, predict_s))
                if batch:
                    actor = free.pop()
                    ref = actor.evaluate.remote([p.to_dict() for _, p, _, _ in batch])
                    in_flight[ref] = (actor, batch)
                    room -= len(batch)
            if not in_flight:
                break
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.2)
            if not done and stall_s is not None and time.monotonic() - last_progress > stall_s:
                free_cpus = ray.available_resources().get("CPU", 0.0)
                raise SearchStalled(
                    f"no evaluation finished for {stall_s:.0f} s ({len(in_flight)} batches waiting, "
                    f"{len(actors)} evaluators, {free_cpus:g} free CPUs in the cluster): its evaluators "
                    "were lost and could not be replaced; the stored trials are kept and the job "
                    "resumes from them when submitted again"
                )
            for ref in done:
                actor, batch = in_flight.pop(ref)
                last_progress = time.monotonic()
                try:
                    results = ray.get(ref)
                except Exception as exc:  # the actor died beyond its retries (its node lost?)
                    lost = f"worker lost: {type(exc).__name__}: {exc}"
                    position = actors.index(actor)
                    # Replaced where a CPU is free; else the search goes on with the others.
                    if ray.available_resources().get("CPU", 0.0) >= 1 or len(actors) == 1:
                        actors[position] = cls.remote(spec_data, where)
                    else:
                        actors.pop(position)
                    if batch[0][0] not in retried and actors:
                        retried.add(batch[0][0])  # once, on another evaluator, before it fails
                        again = min(actors, key=lambda a: sum(v[0] is a for v in in_flight.values()))
                        retry = again.evaluate.remote([p.to_dict() for _, p, _, _ in batch])
                        in_flight[retry] = (again, batch)
                        logging.getLogger(__name__).warning(
                            "job %s: %s; evaluating its batch again", job_id, lost
                        )
                        continue
                    results = [{"error": lost} for _ in batch]
                strategy.tell(
                    [
                        record(number, plan, result, costs, predict_s)
                        for (number, plan, costs, predict_s), result in zip(batch, results, strict=True)
                    ]
                )
                history.append((len(trials), hv()))
                status("running", hypervolume=history[-1][1], workers=len(actors))
            if time.monotonic() >= deadline and not in_flight:
                break
        cancelled = cancel.is_set()
        finetune = spec.recovery.finetune
        if finetune is not None and not cancelled:
            front = _result(job_id, problem, trials, history, "running").front
            recovered = _recover_front(
                spec, problem, front, actors, job_id, data_dir, cancel, status, cls, spec_data, where
            )
            for number, outcome in recovered.items():
                sink.on_recovery(job_id, number, outcome)
                trials[number] = replace(trials[number], recovered=outcome)
            cancelled = cancel.is_set()
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)

    # A strategy with nothing new to propose before the budget is spent ends the job as
    # "exhausted" (the whole space, or all the strategy can reach, was evaluated), never as a
    # "succeeded" that silently stopped short.
    short = spec.budget.evaluations is not None and len(trials) < spec.budget.evaluations
    final = "cancelled" if cancelled else ("exhausted" if exhausted and short else "succeeded")
    result = _result(job_id, problem, trials, history, final)
    host = next((t for t in spec.targets if t in HOST_RUNTIMES), None)
    if not cancelled and measure_front and host is not None:
        for number, measured in measure_on_host(problem, result.front, target=host):
            sink.on_measurement(job_id, number, measured)
            trials[number] = replace(trials[number], measured=measured)
        result = _result(job_id, problem, trials, history, result.status)
    status(result.status, hypervolume=result.hypervolume, front_size=len(result.front))
    return result


def front_contributions(problem: Problem, front: Sequence[Trial]) -> list[tuple[Trial, float]]:
    """Each front trial with its exclusive hypervolume contribution (what the front loses
    without it), largest first: the plans the recovery stage spends its budget on."""
    points = [problem.objectives(t.quality, t.costs) for t in front]  # type: ignore[arg-type]
    whole = problem.goals.hypervolume(points)
    out = [(t, whole - problem.goals.hypervolume(points[:i] + points[i + 1 :])) for i, t in enumerate(front)]
    return sorted(out, key=lambda pair: (-pair[1], pair[0].number))


def _recover_front(
    spec: JobSpec,
    problem: Problem,
    front: Sequence[Trial],
    actors: list[Any],
    job_id: str,
    data_dir: Path | None,
    cancel: threading.Event,
    status: Callable[..., None],
    cls: Any,
    spec_data: dict[str, Any],
    where: str | None,
) -> dict[int, dict[str, Any]]:
    """Fine-tune the ``finetune.plans`` front plans that contribute most, on the evaluators.

    Plans already recovered (a resumed job) are skipped; a plan whose task was killed resumes
    from its checkpoint under ``<data dir>/recovery/<job>/<number>/``; an evaluator lost
    mid-recovery is replaced and its plan given to another once. On cancel the driver stops
    waiting (its caller kills the evaluators); finished recoveries are kept."""
    import ray

    from latency_models import data_dir as default_data_dir

    finetune = spec.recovery.finetune
    assert finetune is not None
    root = data_dir if data_dir is not None else default_data_dir()
    ranked = [t for t, _ in front_contributions(problem, front)]
    chosen = ranked[: finetune.plans]
    todo = [t for t in chosen if t.recovered is None and t.number != 0]
    skipped = [t.number for t in chosen if t.number == 0]
    recipe = {"steps": finetune.steps, "lr": finetune.lr, "batch": finetune.batch, "loss": finetune.loss}
    info: dict[str, Any] = {
        "asked": finetune.plans,
        "front": len(front),
        "plans": len(chosen),
        "trials": [t.number for t in chosen],
        "done": len(chosen) - len(todo) - len(skipped),
        "steps": finetune.steps,
    }
    if finetune.plans > len(front):
        info["note"] = f"the front has {len(front)} plans; all of them are recovered, not {finetune.plans}"
    if skipped:
        info["skipped"] = "trial 0 is the uncompressed model: nothing to recover"
    status("running", phase="recovery", recovery=info)
    results: dict[int, dict[str, Any]] = {}
    waiting = list(todo)
    in_flight: dict[Any, tuple[Any, Trial]] = {}
    retried: set[int] = set()
    while (waiting or in_flight) and not cancel.is_set():
        busy = [v[0] for v in in_flight.values()]
        for actor in [a for a in actors if all(a is not b for b in busy)]:
            if not waiting:
                break
            trial = waiting.pop(0)
            checkpoint = str(_recovery_dir(root, job_id, trial.number))
            in_flight[actor.recover.remote(trial.plan, recipe, checkpoint)] = (actor, trial)
        done, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.2)
        for ref in done:
            actor, trial = in_flight.pop(ref)
            try:
                record = ray.get(ref)
            except Exception as exc:  # the evaluator died beyond its retries
                # Replaced where a CPU is free (as in the search); else the others go on.
                position = actors.index(actor)
                if ray.available_resources().get("CPU", 0.0) >= 1 or len(actors) == 1:
                    actors[position] = cls.remote(spec_data, where)
                else:
                    actors.pop(position)
                if trial.number not in retried:
                    retried.add(trial.number)
                    waiting.insert(0, trial)  # resumes from its checkpoint
                    continue
                record = {"error": f"worker lost: {type(exc).__name__}: {exc}"}
            if "error" in record:
                logging.getLogger(__name__).warning(
                    "job %s: recovering trial %d failed: %s", job_id, trial.number, record["error"]
                )
                info.setdefault("errors", {})[str(trial.number)] = record["error"]
            else:
                record["weights"] = _relative(record.get("weights"), root)
                results[trial.number] = record
            info["done"] = int(info["done"]) + 1
            status("running", phase="recovery", recovery=info)
        if not actors:  # every evaluator lost and none could be replaced
            for trial in waiting:
                info.setdefault("errors", {})[str(trial.number)] = "no evaluator left to recover it"
            break
    return results


def _recovery_dir(root: Path, job_id: str, number: int) -> Path:
    from workers.recovery import recovery_dir

    return recovery_dir(root, job_id, number)


def _relative(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _feasible(problem: Problem, trials: Iterable[Trial]) -> tuple[list[Trial], list[list[float]]]:
    ok = [t for t in trials if t.feasible and t.quality is not None]
    return ok, [problem.objectives(t.quality, t.costs) for t in ok]  # type: ignore[arg-type]


def _result(
    job_id: str, problem: Problem, trials: dict[int, Trial], history: list[tuple[int, float]], status: str
) -> SearchResult:
    ok, points = _feasible(problem, trials.values())
    mask = list(front_mask(points)) if points else []
    front = sorted((t for t, m in zip(ok, mask, strict=True) if m), key=lambda t: -(t.quality or 0.0))
    return SearchResult(
        job_id=job_id,
        status=status,
        trials=sorted(trials.values(), key=lambda t: t.number),
        front=front,
        hypervolume=problem.goals.hypervolume(points),
        reference_point=problem.reference_point(),
        objective_names=problem.objective_names,
        history=history,
    )


def measure_on_host(
    problem: Problem, front: Sequence[Trial], repeats: int = 12, target: str = HOST_TARGET
) -> list[tuple[int, dict[str, Any]]]:
    """Time each front plan for real on this CPU in ``target``'s runtime, interleaved with the
    uncompressed model, and compare with that target's prediction: ``host-cpu`` runs torch eager
    (int8 execution), ``host-cpu-ort`` the plan exported to ONNX Runtime (calibrated on the job's
    calibration inputs unless the job turned calibration off; int8 layers as QDQ)."""
    import tempfile

    from kernels import apply, export_onnx, time_model, time_onnx

    runtime = HOST_RUNTIMES[target]
    model, x, ignore = problem.model, problem.example_input, problem.ignore
    out = []
    with tempfile.TemporaryDirectory(prefix="hwsearch-front-") as tmp:
        calibration = None
        if runtime == "onnxruntime":
            prepared = problem.prepared
            if prepared is not None and problem.spec.recovery.calibrate and prepared.calibration is not None:
                calibration = prepared.calibration.batches
            reference = Path(tmp) / "reference.onnx"
            export_onnx(model, x, reference)
        for trial in front:
            plan = Plan.from_dict(trial.plan)
            if runtime == "onnxruntime":
                compressed = apply(model, plan, x, ignore=ignore, calibration=calibration)
                path = Path(tmp) / f"trial-{trial.number}.onnx"
                export_onnx(compressed, x, path, calibration=calibration)
                timing = time_onnx(path, x, reference, repeats=repeats, warmup=2)
                how = f"kernels.time_onnx, the exported plan in ONNX Runtime, 1 thread, median of {repeats}"
            else:
                deployed = apply(model, plan, x, execution="int8", ignore=ignore)
                timing = time_model(deployed, x, reference=model, repeats=repeats, warmup=2, threads=1)
                how = f"kernels.time_model, int8 execution, 1 thread, median of {repeats} interleaved rounds"
            predicted_ms = float(trial.costs[target]["latency_ms"])
            out.append(
                (
                    trial.number,
                    {
                        "latency_ms": timing.median_ms,
                        "reference_ms": timing.reference_median_ms,
                        "speedup": timing.speedup,
                        "predicted_ms": predicted_ms,
                        "relative_error": (predicted_ms - timing.median_ms) / timing.median_ms,
                        "target": target,
                        "runtime": runtime,
                        "how": how,
                    },
                )
            )
    return out
