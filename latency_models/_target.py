"""Target: the documented specs of one piece of hardware, and the registry of targets by name."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from search_spaces import MAX_CHOICES, MAX_TEXT_CHARS, BadName, Registry, check_name

from ._errors import LatencyModelError

FAMILIES: tuple[str, ...] = ("gpu", "cpu", "mobile", "fpga")
#: What runs a model on a target whose latencies are measured (``Target.runtime``).
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime")
#: The targets that are the service's own machine, and the runtime each is measured in: their
#: fronts are measured by the search itself, not by a device agent.
HOST_TARGETS: dict[str, str] = {"host-cpu": "torch", "host-cpu-ort": "onnxruntime"}
#: Entries of a target's ``sources`` (one per documented number; a dozen in practice).
MAX_SOURCES = 64


def check_target_name(name: Any, field: str = "target.name") -> str:
    """``name`` when it is a valid target name (``search_spaces.NAME_PATTERN``); else a
    LatencyModelError naming ``field``. Called wherever a target name becomes a path."""
    try:
        return check_name(field, name)
    except BadName as exc:
        raise LatencyModelError(exc.field, exc.value, exc.hint) from None


@dataclass(frozen=True)
class FpgaResources:
    """Programmable-logic resources of an FPGA board and the accelerator clock."""

    dsp: int
    lut: int
    ff: int
    bram36: int
    clock_mhz: float


@dataclass(frozen=True)
class Target:
    """A device profile. Every number has a source in ``sources``.

    ``peak_macs_per_s`` maps an operand bit width the device runs natively to its dense
    multiply-accumulate rate; a narrower width without a native path runs at the next wider
    one. ``compute_efficiency`` is the fraction of peak a real layer attains (uncalibrated
    prior); ``dispatch_overhead_ms`` is paid per kernel launch. ``runtime`` names what runs the
    model there when its latencies come from measurements (``RUNTIMES``: ``"torch"`` eager for
    ``host-cpu``, ``"onnxruntime"`` for ``host-cpu-ort``): one plan's speed-up is not the same in
    both; ``None`` for a profile that names none (the analytic priors of datasheet devices).
    """

    name: str
    family: str
    description: str
    peak_macs_per_s: Mapping[int, float]
    memory_bandwidth_gb_s: float
    onchip_memory_mb: float
    dispatch_overhead_ms: float
    compute_efficiency: float
    fpga: FpgaResources | None = None
    power_w: float | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    predictor_version: str | None = None
    runtime: str | None = None

    def peak_at(self, bits: int) -> tuple[int, float]:
        """(native width used, peak MAC/s) for an operand width: the next wider native width."""
        for width in sorted(self.peak_macs_per_s):
            if width >= bits:
                return width, self.peak_macs_per_s[width]
        widest = max(self.peak_macs_per_s)
        return widest, self.peak_macs_per_s[widest]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "peak_macs_per_s": {str(k): v for k, v in sorted(self.peak_macs_per_s.items())},
            "memory_bandwidth_gb_s": self.memory_bandwidth_gb_s,
            "onchip_memory_mb": self.onchip_memory_mb,
            "dispatch_overhead_ms": self.dispatch_overhead_ms,
            "compute_efficiency": self.compute_efficiency,
            "fpga": None
            if self.fpga is None
            else {
                "dsp": self.fpga.dsp,
                "lut": self.fpga.lut,
                "ff": self.fpga.ff,
                "bram36": self.fpga.bram36,
                "clock_mhz": self.fpga.clock_mhz,
            },
            "power_w": self.power_w,
            "sources": dict(self.sources),
            "predictor_version": self.predictor_version,
            "runtime": self.runtime,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Target:
        """Parse and validate a target definition (the JSON/YAML a user writes)."""
        if not isinstance(data, Mapping):
            raise LatencyModelError("target", data, "a JSON/YAML object is required")
        # The name first: it becomes a file name, and every other error message quotes it.
        name = check_target_name(data.get("name"))
        where = f"target[{name!r}]"
        allowed = {
            "name",
            "family",
            "description",
            "peak_macs_per_s",
            "memory_bandwidth_gb_s",
            "onchip_memory_mb",
            "dispatch_overhead_ms",
            "compute_efficiency",
            "fpga",
            "power_w",
            "sources",
            "predictor_version",
            "runtime",
        }
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise LatencyModelError(where, unknown, f"unknown keys; allowed: {sorted(allowed)}")
        family = data.get("family")
        if family not in FAMILIES:
            raise LatencyModelError(f"{where}.family", family, f"one of {list(FAMILIES)} is required")
        raw_peaks = data.get("peak_macs_per_s")
        if not isinstance(raw_peaks, Mapping) or not raw_peaks:
            raise LatencyModelError(
                f"{where}.peak_macs_per_s",
                raw_peaks,
                'an object {"<bits>": MAC/s} with at least one entry is required',
            )
        if len(raw_peaks) > MAX_CHOICES:
            raise LatencyModelError(
                f"{where}.peak_macs_per_s", f"{len(raw_peaks)} entries", f"at most {MAX_CHOICES} are allowed"
            )
        peaks: dict[int, float] = {}
        for key, value in raw_peaks.items():
            try:
                bits = int(key)
            except (TypeError, ValueError):
                raise LatencyModelError(
                    f"{where}.peak_macs_per_s", key, 'keys are bit widths like "8"'
                ) from None
            peaks[bits] = _positive(value, f"{where}.peak_macs_per_s[{key!r}]")
        fpga = data.get("fpga")
        fpga_res: FpgaResources | None = None
        if family == "fpga":
            if not isinstance(fpga, Mapping):
                raise LatencyModelError(
                    f"{where}.fpga", fpga, "an FPGA target needs {dsp, lut, ff, bram36, clock_mhz}"
                )
            fpga_res = FpgaResources(
                dsp=int(_positive(fpga.get("dsp"), f"{where}.fpga.dsp")),
                lut=int(_positive(fpga.get("lut"), f"{where}.fpga.lut")),
                ff=int(_positive(fpga.get("ff"), f"{where}.fpga.ff")),
                bram36=int(_positive(fpga.get("bram36"), f"{where}.fpga.bram36")),
                clock_mhz=_positive(fpga.get("clock_mhz"), f"{where}.fpga.clock_mhz"),
            )
        efficiency = _positive(data.get("compute_efficiency", 0.5), f"{where}.compute_efficiency")
        if efficiency > 1.0:
            raise LatencyModelError(
                f"{where}.compute_efficiency", efficiency, "a fraction in (0, 1] is required"
            )
        power = data.get("power_w")
        sources = data.get("sources", {})
        if not isinstance(sources, Mapping):
            raise LatencyModelError(f"{where}.sources", sources, "an object {field: source} is required")
        if len(sources) > MAX_SOURCES:
            raise LatencyModelError(
                f"{where}.sources", f"{len(sources)} entries", f"at most {MAX_SOURCES} are allowed"
            )
        description = data.get("description", "")
        # Stored and shown back on every listing: free text is capped like everything else.
        _text(description, f"{where}.description")
        for key, source in sources.items():
            _text(key, f"{where}.sources")
            _text(source, f"{where}.sources[{str(key)[:40]!r}]")
        version = data.get("predictor_version")
        if version is not None and not isinstance(version, str):
            raise LatencyModelError(
                f"{where}.predictor_version", type(version).__name__, "a version id (string) or null"
            )
        _text(version or "", f"{where}.predictor_version")
        runtime = data.get("runtime")
        if runtime is not None and runtime not in RUNTIMES:
            raise LatencyModelError(
                f"{where}.runtime", runtime, f"one of {list(RUNTIMES)} or null is required"
            )
        return cls(
            name=name,
            family=str(family),
            description=str(description),
            peak_macs_per_s=peaks,
            memory_bandwidth_gb_s=_positive(
                data.get("memory_bandwidth_gb_s"), f"{where}.memory_bandwidth_gb_s"
            ),
            onchip_memory_mb=_non_negative(data.get("onchip_memory_mb", 0.0), f"{where}.onchip_memory_mb"),
            dispatch_overhead_ms=_non_negative(
                data.get("dispatch_overhead_ms", 0.0), f"{where}.dispatch_overhead_ms"
            ),
            compute_efficiency=efficiency,
            fpga=fpga_res,
            power_w=None if power is None else _positive(power, f"{where}.power_w"),
            sources={str(k): str(v) for k, v in sources.items()},
            predictor_version=version,
            runtime=runtime,
        )


def _text(value: Any, where: str) -> None:
    if len(str(value)) > MAX_TEXT_CHARS:
        raise LatencyModelError(
            where, f"{len(str(value))} characters", f"at most {MAX_TEXT_CHARS} characters are allowed"
        )


def _positive(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise LatencyModelError(where, value, "a positive finite number is required")
    return float(value)


def _non_negative(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise LatencyModelError(where, value, "a finite number ≥ 0 is required")
    return float(value)


def _load_builtin() -> None:
    """The built-in catalogue (targets/*.json), loaded once before any other registration."""
    folder = resources.files("latency_models") / "targets"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            target = Target.from_dict(json.loads(entry.read_text()))
            TARGETS.register(target.name, target)


TARGETS: Registry[Target] = Registry("target", LatencyModelError, loader=_load_builtin)


def register_target(target: Target, *, replace: bool = False) -> Target:
    """Add a target to the registry; a second target of the same name needs ``replace=True``."""
    return TARGETS.register(target.name, target, replace=replace)


def list_targets(pattern: str = "*") -> list[str]:
    """Registered target names matching a glob pattern, sorted."""
    return TARGETS.list(pattern)


def get_target(name: str) -> Target:
    """The registered target ``name``; the error lists the valid names."""
    return TARGETS.get(name)


def load_target_file(path: str | Path) -> Target:
    """Read a target from a .json or .yaml/.yml file (not registered: see ``register_target``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise LatencyModelError(
            "target file", str(p), f"a readable file is required ({exc.strerror})"
        ) from None
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise LatencyModelError("target file", str(p), f"valid YAML is required ({exc})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LatencyModelError(
                "target file", str(p), f"valid JSON is required ({exc.msg} at line {exc.lineno})"
            ) from None
    return Target.from_dict(data)
