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
import itertools
import json
import math
import operator
import time
from collections.abc import Callable, Iterable, Iterator
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


class TooManyRows(MeasurementError):
    """A table with more data rows than a reader's ``max_rows``: ``rows`` counted, ``limit`` allowed."""

    def __init__(self, rows: int, limit: int) -> None:
        self.rows, self.limit = rows, limit
        super().__init__(
            "measurements", rows, f"at most {limit} data rows are accepted; split the table or sample it"
        )


#: Distinct layer shapes (or plans) whose validation a reader remembers: a measurement table
#: repeats a few shapes under many choices and runs, so most rows skip the per-row validation
#: of their shape (a 1M-row table went from 40 s to a few); past this many, rows are checked
#: one by one and memory stays bounded.
MEMO_LIMIT = 65_536


#: A reader lets other threads of its process run every this many rows (``time.sleep(0)``
#: releases the GIL): the service reads uploads in a worker thread, and without it a 1M-row
#: read held the GIL for up to a second at a time (/healthz measured at 0.3-1.2 s; 8-50 ms with).
YIELD_EVERY_ROWS = 256


def _lines(source: str | Path | io.TextIOBase) -> Iterator[str]:
    """The text of ``source`` line by line (never the whole file in memory); a read error,
    mid-file included, as a MeasurementError."""
    try:
        if isinstance(source, str | Path):
            with open(source, newline="", encoding="utf-8") as f:
                yield from f
        else:
            yield from source
    except (OSError, UnicodeDecodeError) as exc:
        raise MeasurementError(
            "measurements", str(source), f"a readable UTF-8 CSV file is required ({exc})"
        ) from None


def _records(source: str | Path | io.TextIOBase) -> tuple[list[str], Iterator[list[str]]]:
    """The header (stripped) and the raw data rows of a CSV, read lazily (blank lines skipped,
    as csv.DictReader does); a malformed CSV names the row where it broke."""
    reader = csv.reader(_lines(source))
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise MeasurementError("header", str(source), f"a well-formed CSV is required ({exc})") from None

    def rows() -> Iterator[list[str]]:
        line = 1
        try:
            for row in reader:
                if row:
                    line += 1
                    if line % YIELD_EVERY_ROWS == 0:
                        time.sleep(0)
                    yield row
        except csv.Error as exc:
            raise MeasurementError(
                f"row {line + 1}", str(source), f"a well-formed CSV is required ({exc})"
            ) from None

    return header, rows()


def _table(source: str | Path | io.TextIOBase) -> tuple[list[str], Iterator[list[str]]]:
    """The header and the data rows, each stripped and padded to the header's width (a missing
    cell is empty); a table without data rows is refused."""
    header, raw = _records(source)
    width = len(header)

    def rows() -> Iterator[list[str]]:
        for row in raw:
            if len(row) < width:
                row += [""] * (width - len(row))
            yield [v.strip() for v in row]

    records = rows()
    first = next(records, None)
    if first is None:
        raise MeasurementError(
            "measurements", str(source), "at least one data row under a header is required"
        )
    return header, itertools.chain([first], records)


def count_rows(source: str | Path) -> int:
    """The data rows of a CSV (blank lines skipped), without validating them: a cheap pass."""
    return sum(1 for _ in _records(source)[1])


def _parse_number(
    raw: str,
    column: str,
    line: int,
    *,
    default: float | None = None,
    positive: bool = False,
    integer: bool = False,
) -> float | None:
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


def _number(
    row: dict[str, str],
    column: str,
    line: int,
    *,
    default: float | None = None,
    positive: bool = False,
    integer: bool = False,
) -> float | None:
    return _parse_number(
        row.get(column, ""), column, line, default=default, positive=positive, integer=integer
    )


def _latency(raw: str, line: int) -> float:
    """A latency: a number > 0 that must be present."""
    value = _parse_number(raw, "latency_ms", line, positive=True)
    if value is None:
        raise MeasurementError(f"row {line}, column 'latency_ms'", raw, "a number > 0 is required")
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
    header, _ = _records(source)  # the header only: the rows are not read
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


def _layer_rows(
    source: str | Path | io.TextIOBase,
) -> Iterator[tuple[int, str, LayerSpec, Choice, float, float | None]]:
    """Each row of a per-layer table, validated: (line, name, its shape's layer, choice,
    latency, energy). The layer is shared by the rows of one shape (its name is the first
    row's); ``read_layer_measurements`` renames it per row."""
    header, rows = _table(source)
    _missing(header, LAYER_REQUIRED)
    unknown = [c for c in header if c not in LAYER_ALLOWED]
    if unknown:
        raise MeasurementError("header", unknown, f"unknown columns; allowed: {list(LAYER_ALLOWED)}")
    # A row's layer and choice depend on every column but its name, latency and energy.
    per_row = ("name", "latency_ms", "energy_mj")
    at = {c: i for i, c in enumerate(header)}  # a repeated column: its last cell, as a dict has it
    shape_of = _picker([i for c, i in at.items() if c not in per_row])
    name_at, latency_at, energy_at = at["name"], at["latency_ms"], at.get("energy_mj")
    shapes: dict[Any, tuple[LayerSpec, Choice]] = {}
    for line, values in enumerate(rows, start=2):
        key = shape_of(values)
        known = shapes.get(key)
        if known is None:
            row = dict(zip(header, values, strict=False))  # cells past the header are dropped
            layer = _layer_of(row, line)
            known = (layer, _choice_of(row, line, layer))
            if len(shapes) < MEMO_LIMIT:
                shapes[key] = known
        latency = _latency(values[latency_at], line)
        energy = None if energy_at is None else _parse_number(values[energy_at], "energy_mj", line)
        yield line, values[name_at] or f"row{line}", known[0], known[1], latency, energy


def _picker(indices: list[int]) -> Callable[[list[str]], Any]:
    """A function taking these positions of a row (a hashable key), at C speed."""
    if not indices:
        return lambda _: ()
    return operator.itemgetter(*indices)


def read_layer_measurements(source: str | Path | io.TextIOBase) -> list[LayerMeasurement]:
    """Read and validate a per-layer measurement table (every row, before returning)."""
    out: list[LayerMeasurement] = []
    for _, name, shape, choice, latency, energy in _layer_rows(source):
        layer = shape
        if name != shape.name:
            fields = {**shape.__dict__, "name": name, "extra": {}}
            fields["group"] = name if shape.prunable else None  # its own coupled group (``_layer_of``)
            layer = LayerSpec(**fields)
        out.append(LayerMeasurement(layer, choice, latency, energy))
    return out


def _network_rows(source: str | Path | io.TextIOBase) -> Iterator[NetworkMeasurement]:
    """Each row of a per-network table, validated (model ids are resolved later, by the zoo)."""
    header, rows = _table(source)
    _missing(header, NETWORK_REQUIRED)
    unknown = [c for c in header if c not in NETWORK_REQUIRED + NETWORK_OPTIONAL]
    if unknown:
        raise MeasurementError(
            "header", unknown, f"unknown columns; allowed: {list(NETWORK_REQUIRED + NETWORK_OPTIONAL)}"
        )
    at = {c: i for i, c in enumerate(header)}  # a repeated column: its last cell, as a dict has it
    plans: dict[str, Plan] = {"": Plan()}

    def number(values: list[str], column: str, line: int) -> float | None:
        return None if column not in at else _parse_number(values[at[column]], column, line)

    for line, values in enumerate(rows, start=2):
        model = values[at["model"]]
        if not model:
            raise MeasurementError(f"row {line}, column 'model'", "", "a zoo model id is required")
        raw_plan = values[at["plan"]] if "plan" in at else ""
        plan = plans.get(raw_plan)
        if plan is None:
            try:
                plan = Plan.from_json(raw_plan)
            except SpaceError as exc:
                raise MeasurementError(f"row {line}, column 'plan'", raw_plan[:60], str(exc)) from None
            if len(plans) < MEMO_LIMIT:
                plans[raw_plan] = plan
        raw_batch = values[at["batch"]] if "batch" in at else ""
        batch = _parse_number(raw_batch, "batch", line, default=1.0, integer=True)
        if batch is None or batch < 1:
            raise MeasurementError(f"row {line}, column 'batch'", raw_batch, "a whole number ≥ 1 is required")
        yield NetworkMeasurement(
            model=model,
            plan=plan,
            batch=int(batch),
            latency_ms=_latency(values[at["latency_ms"]], line),
            energy_mj=number(values, "energy_mj", line),
            dsp=number(values, "dsp", line),
            lut=number(values, "lut", line),
            bram=number(values, "bram", line),
        )


def read_network_measurements(source: str | Path | io.TextIOBase) -> list[NetworkMeasurement]:
    """Read and validate a per-network table (model ids are resolved later, by the zoo)."""
    return list(_network_rows(source))


def check_measurements(source: str | Path, *, max_rows: int | None = None) -> tuple[str, int]:
    """Validate a table of either format as its reader does, keeping no row: its format and
    number of data rows. With ``max_rows``, a longer table raises ``TooManyRows`` after a cheap
    count, before any row is validated."""
    fmt = measurement_format(source)
    if max_rows is not None:
        rows = count_rows(source)
        if rows > max_rows:
            raise TooManyRows(rows, max_rows)
    checked: Iterator[Any] = _layer_rows(source) if fmt == "layer" else _network_rows(source)
    return fmt, sum(1 for _ in checked)
