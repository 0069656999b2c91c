"""Trials and the sink that receives them (``workers`` never imports ``service``)."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Trial:
    """One evaluated plan of a job.

    ``costs`` maps target name → predicted costs (``latency_ms`` with ``latency_low_ms`` /
    ``latency_high_ms`` when the predictor gives an interval, ``provenance``, ``weight_bytes``,
    ``energy_mj``, FPGA ``dsp`` / ``lut`` / ``bram36`` and ``fits_board``). ``status`` is
    ``"ok"`` or ``"failed"`` (then ``error`` says why and quality is None).
    """

    job_id: str
    number: int
    plan: dict[str, Any]
    status: str
    quality: float | None
    quality_metric: str
    costs: dict[str, dict[str, Any]]
    feasible: bool
    violations: list[str] = field(default_factory=list)
    error: str | None = None
    eval_s: float = 0.0
    predict_s: float = 0.0
    strategy: str = ""
    measured: dict[str, Any] | None = None
    #: The quality's n and 95% interval (``{"n", "low", "high"}``) when its evaluator gives them.
    quality_detail: dict[str, float] | None = None
    #: How the evaluated model was calibrated before it was scored: ``{"how": "calibrated on 32
    #: crops of ..." | "uncalibrated", "n_inputs", "seconds", "synthetic", "steps", "notes"}``.
    calibration: dict[str, Any] | None = None
    #: The recovery stage's result for a front plan: ``{"quality", "quality_detail", "steps",
    #: "lr", "batch", "loss", "n_calibration", "seconds", "weights"}`` (``weights``: the file of
    #: the recovered state dict, relative to the data directory).
    recovered: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        """A trial from ``to_dict``'s shape, or from the service's trial records, which add what
        the service stored beside it (``measured_on``: every device's measurement): a runner
        resuming from them takes the trial's own fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@runtime_checkable
class Sink(Protocol):
    """Where a search reports. Implementations must make ``on_trial`` idempotent on
    (job id, trial number): a trial reported twice is stored once."""

    def on_trial(self, trial: Trial) -> None: ...

    def on_status(self, job_id: str, status: str, progress: dict[str, Any]) -> None: ...

    def on_measurement(self, job_id: str, number: int, measured: dict[str, Any]) -> None: ...

    def on_recovery(self, job_id: str, number: int, recovered: dict[str, Any]) -> None:
        """A front plan's recovered quality (``Trial.recovered``); idempotent per trial."""
        ...


class MemorySink:
    """Keeps everything in memory (tests, the CLI); thread-safe and idempotent."""

    def __init__(self) -> None:
        self.trials: dict[tuple[str, int], Trial] = {}
        self.statuses: list[tuple[str, str, dict[str, Any]]] = []
        self.measurements: dict[tuple[str, int], dict[str, Any]] = {}
        self.recoveries: dict[tuple[str, int], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def on_trial(self, trial: Trial) -> None:
        with self._lock:
            self.trials.setdefault((trial.job_id, trial.number), trial)

    def on_status(self, job_id: str, status: str, progress: dict[str, Any]) -> None:
        with self._lock:
            self.statuses.append((job_id, status, dict(progress)))

    def on_measurement(self, job_id: str, number: int, measured: dict[str, Any]) -> None:
        with self._lock:
            self.measurements[(job_id, number)] = dict(measured)

    def on_recovery(self, job_id: str, number: int, recovered: dict[str, Any]) -> None:
        with self._lock:
            self.recoveries[(job_id, number)] = dict(recovered)
            trial = self.trials.get((job_id, number))
            if trial is not None:
                self.trials[(job_id, number)] = replace(trial, recovered=dict(recovered))

    def job_trials(self, job_id: str) -> list[Trial]:
        with self._lock:
            return sorted((t for (j, _), t in self.trials.items() if j == job_id), key=lambda t: t.number)


class JsonlSink(MemorySink):
    """A MemorySink that also appends every new trial to a JSON-lines file (resumable)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    t = Trial.from_dict(json.loads(line))
                    self.trials.setdefault((t.job_id, t.number), t)

    def on_trial(self, trial: Trial) -> None:
        with self._lock:
            if (trial.job_id, trial.number) in self.trials:
                return
            self.trials[(trial.job_id, trial.number)] = trial
            with self.path.open("a") as f:
                f.write(json.dumps(trial.to_dict()) + "\n")
