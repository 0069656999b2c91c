"""Measurement tables that teach a target's predictor, in two documented CSV formats.

Per layer (one row per measured layer, nn-Meter style): the LayerSpec columns ``name, kind,
in_channels, out_channels, kernel_h, kernel_w, stride_h, stride_w, groups, input_h, input_w,
output_h, output_w, tokens, heads``, the Choice columns ``rank, keep, wbits, abits, token_keep``
(empty = default), ``latency_ms`` and optional ``energy_mj``. Shapes are those the layer ran
with; ``keep`` prunes its output channels (``in_channels`` is taken as written); convs need
their spatial sizes and attention its tokens and heads. Each row is costed as a one-layer
network (``layer_features``), so a predictor fitted on it predicts whole networks.

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

from search_spaces import GEMM_KINDS, Choice, LayerKind, LayerSpec, Plan, SpaceError

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
LAYER_REQUIRED: tuple[str, ...] = ("name", "kind", "in_channels", "out_channels", "latency_ms")
LAYER_ALLOWED: tuple[str, ...] = (*LAYER_COLUMNS, *CHOICE_COLUMNS, "latency_ms", "energy_mj")
CONV_KINDS: frozenset[LayerKind] = frozenset(
    {LayerKind.CONV2D, LayerKind.DEPTHWISE_CONV2D, LayerKind.GROUPED_CONV2D}
)
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


def measurement_format(source: str | Path) -> str:
    """``"network"`` or ``"layer"``: which of the two CSV formats a table is, from its header.

    A ``model`` column makes a per-network table; a ``kind`` column without one a per-layer table.
    """
    header, _ = _rows(source)
    if "model" in header:
        return "network"
    if "kind" in header:
        return "layer"
    raise MeasurementError(
        "header",
        header,
        "a per-network table needs a 'model' column, a per-layer table a 'kind' column "
        "(see docs/latency.md, 'Measurement tables')",
    )


def _layer_kind(row: dict[str, str], line: int) -> LayerKind:
    try:
        kind = LayerKind(row["kind"])
    except ValueError:
        raise MeasurementError(
            f"row {line}, column 'kind'",
            row["kind"],
            f"one of {[k.value for k in LayerKind if k is not LayerKind.ELEMENTWISE]} is required",
        ) from None
    if kind is LayerKind.ELEMENTWISE:
        raise MeasurementError(
            f"row {line}, column 'kind'",
            row["kind"],
            "elementwise layers have no term in the latency model (their time belongs to the "
            "network's overhead); leave the row out",
        )
    return kind


def _positive_whole(row: dict[str, str], column: str, line: int, why: str) -> int:
    """A whole number ≥ 1 that must be present."""
    value = _whole(row, column, line, 0)
    if value < 1:
        raise MeasurementError(
            f"row {line}, column {column!r}", row.get(column, ""), f"a whole number ≥ 1 is required ({why})"
        )
    return value


def _layer_of(row: dict[str, str], line: int) -> LayerSpec:
    """The LayerSpec of one row, with the knobs its kind offers (validated)."""
    kind = _layer_kind(row, line)

    def num(col: str, default: int) -> int:
        return _whole(row, col, line, default)

    def need(col: str, why: str) -> int:
        return _positive_whole(row, col, line, why)

    gemm = kind in GEMM_KINDS
    if gemm or kind is LayerKind.ATTENTION:
        need("in_channels", f"a {kind.value} layer computes on channels")
        need("out_channels", f"a {kind.value} layer computes on channels")
    if kind in CONV_KINDS:
        for col in ("input_h", "input_w", "output_h", "output_w"):
            need(col, f"the spatial size a {kind.value} layer ran at")
    if kind is LayerKind.ATTENTION:
        need("tokens", "the tokens entering the attention block")
        need("heads", "the attention heads")
    groups = max(1, num("groups", 1))
    if kind is LayerKind.GROUPED_CONV2D and (
        groups < 2 or num("in_channels", 0) % groups or num("out_channels", 0) % groups
    ):
        raise MeasurementError(
            f"row {line}, column 'groups'",
            row.get("groups", ""),
            "a grouped conv needs groups ≥ 2 dividing in_channels and out_channels",
        )
    name = row["name"] or f"row{line}"
    return LayerSpec(
        name=name,
        kind=kind,
        in_channels=num("in_channels", 0),
        out_channels=num("out_channels", 0),
        kernel_size=(max(1, num("kernel_h", 1)), max(1, num("kernel_w", 1))),
        stride=(max(1, num("stride_h", 1)), max(1, num("stride_w", 1))),
        groups=groups,
        input_hw=(max(1, num("input_h", 1)), max(1, num("input_w", 1))),
        output_hw=(max(1, num("output_h", 1)), max(1, num("output_w", 1))),
        tokens=max(1, num("tokens", 1)),
        heads=num("heads", 0),
        # Its own coupled group, so ``keep`` prunes this layer's output channels.
        group=name if gemm else None,
        prunable=gemm,
        decomposable=kind in (LayerKind.LINEAR, LayerKind.CONV2D),
    )


def choice_error(line: int, exc: SpaceError) -> MeasurementError:
    """A Choice that does not fit its layer, as an error naming the table's row and column."""
    column = exc.field.rsplit(".", 1)[-1]
    column = column if column in CHOICE_COLUMNS else "kind"
    return MeasurementError(f"row {line}, column {column!r}", exc.value, exc.allowed)


def _choice_of(row: dict[str, str], line: int, layer: LayerSpec) -> Choice:
    """The row's Choice, checked against its layer (a rank within the full rank, bits on GEMMs...)."""
    data: dict[str, Any] = {}
    for col in CHOICE_COLUMNS:
        raw = row.get(col, "")
        if raw != "":
            try:
                data[col] = json.loads(raw)
            except json.JSONDecodeError:
                raise MeasurementError(f"row {line}, column {col!r}", raw, "a number is required") from None
    try:
        choice = Choice.from_dict(data, "choice")
        Plan({layer.name: choice}).validate([layer])
    except SpaceError as exc:
        raise choice_error(line, exc) from None
    if choice.token_keep != 1.0:
        raise MeasurementError(
            f"row {line}, column 'token_keep'",
            row["token_keep"],
            "a block's token keep shrinks the layers after it, not the block itself: write the "
            "tokens the layer ran with in 'tokens' and leave token_keep empty",
        )
    return choice


def read_layer_measurements(source: str | Path | io.TextIOBase) -> list[LayerMeasurement]:
    """Read and validate a per-layer measurement table (every row, before returning)."""
    header, rows = _rows(source)
    _missing(header, LAYER_REQUIRED)
    unknown = [c for c in header if c not in LAYER_ALLOWED]
    if unknown:
        raise MeasurementError("header", unknown, f"unknown columns; allowed: {list(LAYER_ALLOWED)}")
    out: list[LayerMeasurement] = []
    for i, row in enumerate(rows, start=2):
        layer = _layer_of(row, i)
        choice = _choice_of(row, i, layer)
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
