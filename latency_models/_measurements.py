"""Measurement tables that teach a target's predictor, in two documented CSV formats.

Per layer (one row per measured layer): the LayerSpec columns ``name, kind, in_channels,
out_channels, kernel_h, kernel_w, stride_h, stride_w, groups, input_h, input_w, output_h,
output_w, tokens, heads``, the Choice columns ``rank, keep, wbits, abits, token_keep``
(empty = default), ``latency_ms`` and optional ``energy_mj``.

Per network (one row per measured model): ``model`` (a zoo id with its argument, e.g.
``nasbench201:<arch>``), optional ``plan`` (JSON, empty = uncompressed), optional ``batch``
(default 1), ``latency_ms``, and optional ``energy_mj``, ``dsp``, ``lut``, ``bram``.
A network's latency is the sum of its layers plus an overhead (the nn-Meter decomposition),
so users who can only time whole models can still calibrate a target.

Reading validates everything before returning: a bad row raises MeasurementError naming the
row (1-based, header = row 1), the column, the value and the fix; nothing is half-read.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces import Choice, LayerKind, LayerSpec, Plan, SpaceError

from ._errors import LatencyModelError

LAYER_COLUMNS: tuple[str, ...] = (
    "name",
    "kind",
    "in_channels",
    "out_channels",
    "kernel_h",
    "kernel_w",
    "stride_h",
    "stride_w",
    "groups",
    "input_h",
    "input_w",
    "output_h",
    "output_w",
    "tokens",
    "heads",
)
CHOICE_COLUMNS: tuple[str, ...] = ("rank", "keep", "wbits", "abits", "token_keep")
NETWORK_REQUIRED: tuple[str, ...] = ("model", "latency_ms")
NETWORK_OPTIONAL: tuple[str, ...] = ("plan", "batch", "energy_mj", "dsp", "lut", "bram")


class MeasurementError(LatencyModelError):
    """A measurement table that cannot be used; names the row and column."""


@dataclass(frozen=True)
class LayerMeasurement:
    layer: LayerSpec
    choice: Choice
    latency_ms: float
    energy_mj: float | None = None


@dataclass(frozen=True)
class NetworkMeasurement:
    model: str
    plan: Plan
    batch: int
    latency_ms: float
    energy_mj: float | None = None
    dsp: float | None = None
    lut: float | None = None
    bram: float | None = None


def _rows(source: str | Path | io.TextIOBase) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = Path(source).read_text() if isinstance(source, str | Path) else source.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise MeasurementError(
            "measurements", str(source), f"a readable UTF-8 CSV file is required ({exc})"
        ) from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise MeasurementError(
            "measurements", str(source), "at least one data row under a header is required"
        )
    return header, rows


def _number(
    row: dict[str, str],
    column: str,
    line: int,
    *,
    default: float | None = None,
    positive: bool = False,
    integer: bool = False,
) -> float | None:
    raw = row.get(column, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise MeasurementError(f"row {line}, column {column!r}", raw, "a number is required") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "a finite number > 0" if positive else "a finite number ≥ 0"
        raise MeasurementError(f"row {line}, column {column!r}", raw, f"{need} is required")
    if integer and not value.is_integer():
        raise MeasurementError(f"row {line}, column {column!r}", raw, "a whole number is required")
    return value


def _required(row: dict[str, str], column: str, line: int) -> float:
    """A positive number that must be present (a latency)."""
    value = _number(row, column, line, default=math.nan, positive=True)
    if value is None or math.isnan(value):
        raise MeasurementError(
            f"row {line}, column {column!r}", row.get(column, ""), "a number > 0 is required"
        )
    return value


def _whole(row: dict[str, str], column: str, line: int, default: int) -> int:
    value = _number(row, column, line, default=float(default), integer=True)
    return default if value is None else int(value)


def _missing(header: list[str], required: Iterable[str]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise MeasurementError("header", header, f"missing columns {missing}; see docs for the CSV formats")


def read_layer_measurements(source: str | Path | io.TextIOBase) -> list[LayerMeasurement]:
    """Read and validate a per-layer measurement table."""
    header, rows = _rows(source)
    _missing(header, ("name", "kind", "in_channels", "out_channels", "latency_ms"))
    out: list[LayerMeasurement] = []
    for i, row in enumerate(rows, start=2):
        try:
            kind = LayerKind(row["kind"])
        except ValueError:
            raise MeasurementError(
                f"row {i}, column 'kind'", row["kind"], f"one of {[k.value for k in LayerKind]} is required"
            ) from None

        def num(col: str, default: int, row: dict[str, str] = row, line: int = i) -> int:
            return _whole(row, col, line, default)

        layer = LayerSpec(
            name=row["name"] or f"row{i}",
            kind=kind,
            in_channels=num("in_channels", 0),
            out_channels=num("out_channels", 0),
            kernel_size=(num("kernel_h", 1), num("kernel_w", 1)),
            stride=(num("stride_h", 1), num("stride_w", 1)),
            groups=max(1, num("groups", 1)),
            input_hw=(num("input_h", 1), num("input_w", 1)),
            output_hw=(num("output_h", 1), num("output_w", 1)),
            tokens=max(1, num("tokens", 1)),
            heads=num("heads", 0),
            decomposable=True,
            prunable=True,
        )
        choice_data: dict[str, Any] = {}
        for col in CHOICE_COLUMNS:
            raw = row.get(col, "")
            if raw != "":
                try:
                    choice_data[col] = json.loads(raw)
                except json.JSONDecodeError:
                    raise MeasurementError(f"row {i}, column {col!r}", raw, "a number is required") from None
        try:
            choice = Choice.from_dict(choice_data, f"row {i}")
        except SpaceError as exc:
            raise MeasurementError(exc.field, exc.value, exc.allowed) from None
        latency = _required(row, "latency_ms", i)
        out.append(LayerMeasurement(layer, choice, latency, _number(row, "energy_mj", i)))
    return out


def read_network_measurements(source: str | Path | io.TextIOBase) -> list[NetworkMeasurement]:
    """Read and validate a per-network table (model ids are resolved later, by the zoo)."""
    header, rows = _rows(source)
    _missing(header, NETWORK_REQUIRED)
    unknown = [c for c in header if c not in NETWORK_REQUIRED + NETWORK_OPTIONAL]
    if unknown:
        raise MeasurementError(
            "header", unknown, f"unknown columns; allowed: {list(NETWORK_REQUIRED + NETWORK_OPTIONAL)}"
        )
    out: list[NetworkMeasurement] = []
    for i, row in enumerate(rows, start=2):
        if not row["model"]:
            raise MeasurementError(f"row {i}, column 'model'", "", "a zoo model id is required")
        plan = Plan()
        if row.get("plan"):
            try:
                plan = Plan.from_json(row["plan"])
            except SpaceError as exc:
                raise MeasurementError(f"row {i}, column 'plan'", row["plan"][:60], str(exc)) from None
        batch = _whole(row, "batch", i, 1)
        if batch < 1:
            raise MeasurementError(
                f"row {i}, column 'batch'", row.get("batch"), "a whole number ≥ 1 is required"
            )
        latency = _required(row, "latency_ms", i)
        out.append(
            NetworkMeasurement(
                model=row["model"],
                plan=plan,
                batch=batch,
                latency_ms=latency,
                energy_mj=_number(row, "energy_mj", i),
                dsp=_number(row, "dsp", i),
                lut=_number(row, "lut", i),
                bram=_number(row, "bram", i),
            )
        )
    return out
