"""Per-network latency predictors on measured NAS-Bench-201 latencies, from hwsearch's layer vocabulary.

Which predictor, fitted on few measured networks of one device, best predicts the measured
whole-network latency of other networks on that device? The networks are the 15,625
NAS-Bench-201 cells (``workers.zoo`` entry ``nasbench201``); the measurements are
``nb201_latency_dev.csv.gz`` (raspi4 and fpga from HW-NAS-Bench, 1080ti at batch 32 and Xeon
Gold 6240 from HELP), found in ``shared/data`` beside the checkout, in ``$HWSEARCH_SHARED_DATA``
or at ``--data FILE`` (bench/nb201_data.py).

Layer inventories. Tracing 15,625 networks is ~25 minutes, so each inventory is composed: the
networks for five uniform cells (every edge ``none`` / ``skip_connect`` / ``nor_conv_1x1`` /
``nor_conv_3x3`` / ``avg_pool_3x3``) are traced once with ``kernels.trace(coupling=False)``;
every layer named ``cells.<c>.edges.edge_<j>_<i>...`` belongs to one edge of one cell, the rest
(stem, reductions, pooling, classifier) is shared. An arch's inventory is the shared layers plus,
in traced order, the layers of the op on each edge. The composition is checked against a real
``kernels.trace`` of random archs (all LayerSpec fields: names, kinds, shapes, MACs, params).
Zoo models are built and traced through ``workers.zoo.prepare``.
Features are sums of per-layer rows, so they compose the same way; they are checked against
features computed from the traced inventories too.

The study's features (all from LayerSpecs, search-space independent; :func:`study_features`,
not ``latency_models.network_features``, which has no pooling prior and fewer columns): per
layer class (``latency_models``' GEMM groups k×k conv, 1×1 conv, depthwise, grouped, linear,
attention; plus pooling) the layer count, MACs, bytes moved (fp32
activations in + out, weights) and the analytic prior latency of ``latency_models`` (per-GEMM
roofline / FPGA model of the device's documented target; pooling has no GEMM, so this bench
gives it a memory-roofline prior: bytes / bandwidth + dispatch). The 1080ti data is batch 32:
GEMM rows (m), activation bytes and MACs are multiplied by 32 there (the Xeon data states no
batch; it is taken as 1). "Graph" features are what an extended tracer would add: the
elementwise tensor adds (node sums in the cells, shortcut adds of the reductions; count and
bytes) and the count/prior of "dead" layers, those not on an input→output path of their cell
(their input is identically zero or their output never reaches the cell output). They are
computed here from the genotype, mirroring hwsearch's Cell.forward; the add count is checked
against the adds a forward pass runs.

Methods: 0 analytic prior uncalibrated (zero-shot); 1 FLOPs (MACs) proxy; 2 ridge on the one-hot
of the 6 edge ops (the anchor; NAS-Bench-201 specific); 3 calibrated prior, per layer class
(latency = Σ_class a·prior + b·MACs + c·count + overhead, non-negative), fitted by NNLS on
squared error (3a), by a robust loss on log(predicted/measured) (3b) or by NNLS on squared
relative error (3d); 3c one scale of the total prior + constant; 4 LightGBM on the aggregated
features predicting log latency, alone (4a) or on the residual of 3b (4b); 5 the same with the
graph features: 5a = 3b + graph, 5b = LightGBM on the residual of 5a. The library's own
predictors (``latency_models``' calibrated-prior, boosted-residual, ...) are not rows of this
study: bench/latency.py is the one source of their numbers (same devices and protocols, features
from the library's own pipeline), so the two tables cannot drift apart again. (This study's
former "L1/L2" rows were computed once with latency_models as of commit c4de5d5 and went stale:
on fpga its L1 ranked 0.900, exactly the uncalibrated library prior, where the library since the
robust calibrated prior ranks 1.000.)

0-5 are the study's own methods (``StudyPredictor`` subclasses), the experimental variants
docs/latency_nb201.md reports, not copies of ``latency_models``' predictors: they read the
study's feature table (pooling with a prior, bytes, the graph columns), and the study's
calibrated prior (:class:`StudyCalibratedPrior`) offers three losses and, for the robust log
one, drops the columns constant over the training rows and fits with an analytic Jacobian
from a shifted NNLS start; ``latency_models.CalibratedPrior`` fits fixed columns, falls back
to one scale of the prior when leave-one-out prefers it and adds a held-out interval. (Issue
18 is to promote what the study recommends into the library.) What is the same thing as the
library's is imported: ``plan_gemms``, the families' estimates and their batching, the GEMM
groups and ``metrics``.

Protocols: (a) HELP's: pool = indices 0-899, test = 900-1899, each trimmed to its own 10-90 %
latency band (as HELP's loader does: sort, keep [int(0.1 n), int(0.9 n))) = 720 / 800 networks;
train on the first 10 / 100 of the trimmed pool in NB201 index order, and on all 720; also the
mean over 5 random draws; metric Spearman. (b) 5 random splits over the networks that have an
input→output path: train 10 / 100 / 900, test on all the rest; MAPE, share within ±10 %,
Spearman. The 341 cells with no input→output path are flagged and reported separately.

Run::

    .venv/bin/python bench/latency_nb201.py [--data FILE] [--no-cache] [--out FILE]
"""

from __future__ import annotations

import abc
import argparse
import datetime as dt
import hashlib
import json
import platform
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import torch
from nb201_data import nb201_csv, read_nb201
from scipy.optimize import least_squares, nnls
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV
from torch.overrides import TorchFunctionMode

import kernels
import latency_models
import workers.zoo.nasbench201
from latency_models._features import GROUPS, _batched, _group_of
from search_spaces import GEMM_KINDS, LayerKind, LayerSpec, Plan
from workers.zoo import prepare
from workers.zoo.nasbench201 import OPS, Genotype, format_arch, parse_arch

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latency_nb201.json"
CACHE_DIR = Path(tempfile.gettempdir()) / "hwsearch_latency_nb201"
CACHE_VERSION = "2"  # 2: no lm:* columns (the library rows moved to bench/latency.py)


@dataclass(frozen=True)
class Device:
    """A measured device of the data set and the hwsearch target whose prior models it."""

    name: str
    target: str
    batch: int


DEVICES: tuple[Device, ...] = (
    Device("raspi4", "raspi4", 1),
    Device("fpga", "zc706", 1),
    Device("1080ti_32", "gtx-1080ti", 32),
    Device("gold_6240", "xeon-gold-6240", 1),
)

#: Edge order of a genotype flattened as in the arch string: (1,0) (2,0) (2,1) (3,0) (3,1) (3,2).
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
N_EDGES = len(EDGES)
EDGE_NAME = re.compile(r"^cells\.(\d+)\.edges\.edge_(\d)_(\d)(?:\..*)?$")

#: The study's layer classes: ``latency_models``' GEMM groups, then pooling and the rest.
LAYER_CLASSES: tuple[str, ...] = (*GROUPS, "pooling", "other")
QUANTITIES: tuple[str, ...] = ("count", "macs", "bytes", "prior_ms")
LAYER_COLUMNS: tuple[str, ...] = tuple(f"{c}:{q}" for c in LAYER_CLASSES for q in QUANTITIES)
GRAPH_COLUMNS: tuple[str, ...] = ("eltwise:count", "eltwise:bytes", "dead:count", "dead:prior_ms")

TRAIN_SIZES: tuple[int, ...] = (10, 100, 900)
SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
PHONE_FLOOR_MS = 0.5


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_measurements(path: Path) -> tuple[list[str], dict[str, Array]]:
    """Arch strings in NB201 index order and each device's latencies (ms) in the same order;
    the table must hold exactly the study's devices."""
    order, lat = read_nb201(path)
    names = [d.name for d in DEVICES]
    if sorted(lat) != sorted(names):
        raise ValueError(f"{path}: devices {sorted(lat)}, expected {sorted(names)}")
    return order, lat


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flat_ops(genotype: Genotype) -> tuple[str, ...]:
    """The six edge ops in arch-string order (the order of :data:`EDGES`)."""
    return tuple(op for ops in genotype for op in ops)


def reachability(genotype: Genotype) -> tuple[list[bool], list[bool]]:
    """(node reached from the input, node reaching the output) over non-``none`` edges."""
    reach = [True, False, False, False]
    for j, ops in enumerate(genotype, start=1):
        reach[j] = any(reach[i] and op != "none" for i, op in enumerate(ops))
    coreach = [False, False, False, True]
    for i in (2, 1, 0):
        coreach[i] = any(genotype[j - 1][i] != "none" and coreach[j] for j in range(i + 1, 4))
    return reach, coreach


def has_path(genotype: Genotype) -> bool:
    """Whether the cell output depends on its input (a path of non-``none`` edges)."""
    return reachability(genotype)[0][3]


# --------------------------------------------------------------------------------------------
# Layer inventories by composition
# --------------------------------------------------------------------------------------------


def uniform_arch(op: str) -> str:
    """The arch string whose six edges all carry ``op``."""
    return format_arch(tuple(tuple(op for _ in range(j)) for j in (1, 2, 3)))


def trace_arch(arch: str) -> list[LayerSpec]:
    """kernels.trace of the hwsearch NAS-Bench-201 network for ``arch`` (shapes and MACs only)."""
    return trace_and_count_adds(arch)[0]


class _AddCounter(TorchFunctionMode):
    """Counts tensor + tensor additions (``a + b``, ``torch.add``) run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.adds = 0

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if getattr(func, "__name__", "") in ("add", "__add__", "__radd__") and all(
            isinstance(a, torch.Tensor) for a in args[:2]
        ):
            self.adds += 1
        return func(*args, **(kwargs or {}))


def trace_and_count_adds(arch: str) -> tuple[list[LayerSpec], int]:
    """kernels.trace of ``arch`` and the elementwise tensor adds one forward pass runs.

    The add count is what a tracer extension would record next to the LayerSpecs; here it
    checks the genotype-derived ``eltwise:count`` feature.
    """
    prepared = prepare(f"nasbench201:{arch}", coupling=False)
    counter = _AddCounter()
    with torch.no_grad(), counter:
        prepared.model(prepared.example_input)
    # The study composes the GEMM and pooling layers; the graph entries ``trace`` now records
    # (elementwise work, liveness) are the library's own version of this study's graph
    # features, checked against the genotype in tests/test_graph_trace.py.
    return [layer for layer in prepared.layers if layer.kind is not LayerKind.ELEMENTWISE], counter.adds


@dataclass(frozen=True)
class Slot:
    """One position of the composed inventory: a shared layer, or the layers of one cell edge."""

    layer: LayerSpec | None = None
    cell: int = -1
    edge: int = -1


@dataclass(frozen=True)
class Templates:
    """What composition needs: the slot order and, per (op, cell, edge), that edge's layers."""

    slots: tuple[Slot, ...]
    edge_layers: dict[tuple[str, int, int], tuple[LayerSpec, ...]]
    cells: tuple[int, ...]

    def compose(self, genotype: Genotype) -> list[LayerSpec]:
        """The inventory of ``genotype`` in the order kernels.trace lists it."""
        ops = flat_ops(genotype)
        out: list[LayerSpec] = []
        for slot in self.slots:
            if slot.layer is not None:
                out.append(slot.layer)
            else:
                out.extend(self.edge_layers.get((ops[slot.edge], slot.cell, slot.edge), ()))
        return out


def build_templates() -> Templates:
    """Trace the five uniform-cell networks once and cut them into shared layers and edge layers."""
    traced = {op: trace_arch(uniform_arch(op)) for op in OPS}
    edge_layers: dict[tuple[str, int, int], list[LayerSpec]] = {}
    shared: dict[str, list[LayerSpec]] = {}
    for op, layers in traced.items():
        shared[op] = []
        for layer in layers:
            match = EDGE_NAME.match(layer.name)
            if match is None:
                shared[op].append(layer)
                continue
            cell, j, i = int(match[1]), int(match[2]), int(match[3])
            edge_layers.setdefault((op, cell, EDGES.index((j, i))), []).append(layer)
    for op in OPS:
        if shared[op] != shared["none"]:
            raise AssertionError(f"shared layers differ between the uniform {op} and none networks")
    for op in ("none", "skip_connect"):
        if any(key[0] == op for key in edge_layers):
            raise AssertionError(f"{op} edges created layers; composition assumes they create none")
    # Slot order: the trace of the uniform conv network (every edge has a layer), edges collapsed.
    slots: list[Slot] = []
    cells: set[int] = set()
    for layer in traced["nor_conv_3x3"]:
        match = EDGE_NAME.match(layer.name)
        if match is None:
            slots.append(Slot(layer=layer))
            continue
        cell, edge = int(match[1]), EDGES.index((int(match[2]), int(match[3])))
        cells.add(cell)
        if not slots or (slots[-1].cell, slots[-1].edge) != (cell, edge):
            slots.append(Slot(cell=cell, edge=edge))
    return Templates(
        slots=tuple(slots),
        edge_layers={k: tuple(v) for k, v in edge_layers.items()},
        cells=tuple(sorted(cells)),
    )


# --------------------------------------------------------------------------------------------
# Features from LayerSpecs
# --------------------------------------------------------------------------------------------


def layer_class(layer: LayerSpec) -> str:
    """The feature class of a layer: its ``latency_models`` GEMM group (conv by kernel and
    grouping, linear, attention), else pooling or other."""
    if layer.kind in GEMM_KINDS or layer.kind is LayerKind.ATTENTION:
        return GROUPS[_group_of(layer)]
    return "pooling" if layer.kind is LayerKind.POOLING else "other"


def activation_elems(layer: LayerSpec) -> tuple[int, int]:
    """Elements (per example) a layer reads and writes."""
    if layer.kind in (LayerKind.LINEAR, LayerKind.ATTENTION):
        return layer.tokens * layer.in_channels, layer.tokens * layer.out_channels
    ih, iw = layer.input_hw
    oh, ow = layer.output_hw
    return layer.in_channels * ih * iw, layer.out_channels * oh * ow


def prior_per_layer(layers: Sequence[LayerSpec], device: Device) -> Array:
    """Analytic prior latency (ms) of every layer on the device's target, at the device's batch.

    GEMM layers use ``latency_models`` (plan_gemms + the family's estimate, batched as
    ``network_features`` batches). Layers without a GEMM (pooling) get a memory roofline here:
    fp32 bytes read and written over the target's bandwidth, plus its dispatch overhead.
    """
    target = latency_models.get_target(device.target)
    gemms = _batched(latency_models.plan_gemms(layers, Plan()), device.batch)
    estimate = latency_models.create_family(target.family).estimate(target, gemms)
    prior = np.zeros(len(layers))
    np.add.at(prior, gemms.layer, estimate.latency_ms)
    has_gemm = np.zeros(len(layers), dtype=bool)
    has_gemm[gemms.layer] = True
    for index, layer in enumerate(layers):
        if not has_gemm[index]:
            elems_in, elems_out = activation_elems(layer)
            nbytes = 4.0 * (elems_in + elems_out) * device.batch
            prior[index] = nbytes / (target.memory_bandwidth_gb_s * 1e9) * 1e3 + target.dispatch_overhead_ms
    return prior


def layer_rows(layers: Sequence[LayerSpec], device: Device) -> Array:
    """One row of :data:`LAYER_COLUMNS` per layer (the network's features are the column sums)."""
    rows = np.zeros((len(layers), len(LAYER_COLUMNS)))
    prior = prior_per_layer(layers, device)
    for index, layer in enumerate(layers):
        base = LAYER_CLASSES.index(layer_class(layer)) * len(QUANTITIES)
        elems_in, elems_out = activation_elems(layer)
        rows[index, base + 0] = 1.0
        rows[index, base + 1] = float(layer.macs) * device.batch
        rows[index, base + 2] = 4.0 * ((elems_in + elems_out) * device.batch + layer.params)
        rows[index, base + 3] = prior[index]
    return rows


def study_features(layers: Sequence[LayerSpec], device: Device) -> Array:
    """The study's :data:`LAYER_COLUMNS` features of one whole inventory (the generic path)."""
    return layer_rows(layers, device).sum(axis=0)


@dataclass(frozen=True)
class FeatureTables:
    """Per-device feature matrices of all archs, built by composition."""

    columns: tuple[str, ...]
    features: dict[str, Array]  # device -> (n_arch, len(columns))


def edge_sums(templates: Templates, device: Device) -> tuple[Array, Array]:
    """(shared-layer feature sum, per (op, edge) sum of that edge's layer rows over all cells).

    The second array has shape (len(OPS), N_EDGES, len(LAYER_COLUMNS)); ``none`` and
    ``skip_connect`` rows are zero (they create no layer).
    """
    shared = [s.layer for s in templates.slots if s.layer is not None]
    shared_sum = study_features(shared, device)
    per = np.zeros((len(OPS), N_EDGES, len(LAYER_COLUMNS)))
    for (op, _cell, edge), layers in templates.edge_layers.items():
        per[OPS.index(op), edge, :] += layer_rows(layers, device).sum(axis=0)
    return shared_sum, per


def build_feature_tables(
    archs: Sequence[str], templates: Templates, devices: Sequence[Device] = DEVICES
) -> FeatureTables:
    """Features of every arch on every device, by composition (exact sums of layer rows)."""
    genotypes = [parse_arch(a) for a in archs]
    op_index = np.array([[OPS.index(op) for op in flat_ops(g)] for g in genotypes], dtype=np.int64)
    live = np.zeros((len(genotypes), N_EDGES), dtype=bool)
    for k, g in enumerate(genotypes):
        reach, coreach = reachability(g)
        for e, (j, i) in enumerate(EDGES):
            live[k, e] = reach[i] and coreach[j]
    # Reduction blocks (residual add of shortcut and branch) and cell sizes, from the shared layers.
    stage_of_cell = cell_shapes(templates)
    n_reductions = sum(
        1 for s in templates.slots if s.layer is not None and s.layer.name.endswith("conv_a.1")
    )
    adds = np.zeros(len(genotypes))
    add_bytes = np.zeros(len(genotypes))
    for k, g in enumerate(genotypes):
        per_cell = sum(max(0, sum(op != "none" for op in ops) - 1) for ops in g)
        adds[k] = per_cell * len(stage_of_cell) + n_reductions
        add_bytes[k] = sum(per_cell * 3 * 4.0 * c * hw * hw for c, hw in stage_of_cell.values())
    red_bytes = reduction_add_bytes(templates)
    features: dict[str, Array] = {}
    for device in devices:
        shared_sum, per_edge = edge_sums(templates, device)
        x = np.tile(shared_sum, (len(genotypes), 1))
        dead_count = np.zeros(len(genotypes))
        dead_prior = np.zeros(len(genotypes))
        count_col = [LAYER_COLUMNS.index(f"{c}:count") for c in LAYER_CLASSES]
        prior_col = [LAYER_COLUMNS.index(f"{c}:prior_ms") for c in LAYER_CLASSES]
        for e in range(N_EDGES):
            rows = per_edge[op_index[:, e], e, :]
            x += rows
            dead = ~live[:, e]
            dead_count[dead] += rows[dead][:, count_col].sum(axis=1)
            dead_prior[dead] += rows[dead][:, prior_col].sum(axis=1)
        graph = np.stack(
            [adds, (add_bytes + red_bytes) * device.batch, dead_count, dead_prior],
            axis=1,
        )
        features[device.name] = np.concatenate([x, graph], axis=1)
    return FeatureTables(columns=LAYER_COLUMNS + GRAPH_COLUMNS, features=features)


def cell_shapes(templates: Templates) -> dict[int, tuple[int, int]]:
    """Channels and spatial size of every cell, read from its traced conv layers."""
    shapes: dict[int, tuple[int, int]] = {}
    for (op, cell, _edge), layers in templates.edge_layers.items():
        if op == "nor_conv_3x3":
            shapes[cell] = (layers[0].out_channels, layers[0].output_hw[0])
    return dict(sorted(shapes.items()))


def reduction_add_bytes(templates: Templates) -> float:
    """Bytes of the shortcut adds of the reduction blocks (read 2, write 1, fp32, per example)."""
    total = 0.0
    for slot in templates.slots:
        if slot.layer is not None and slot.layer.name.endswith("conv_b.1"):
            oh, ow = slot.layer.output_hw
            total += 3 * 4.0 * slot.layer.out_channels * oh * ow
    return total


def verify_composition(
    archs: Sequence[str], templates: Templates, tables: FeatureTables, n: int, seed: int
) -> dict[str, Any]:
    """Compare composed inventories and features with kernels.trace on ``n`` archs; raise on mismatch.

    The sample is random (``seed``) plus the first cell without an input→output path and the
    all-``none`` cell.
    """
    rng = np.random.default_rng(seed)
    genotypes = [parse_arch(a) for a in archs]
    picks = [int(k) for k in rng.choice(len(archs), size=n, replace=False)]
    no_path = next(k for k, g in enumerate(genotypes) if not has_path(g))
    picks += [no_path, archs.index(uniform_arch("none"))]
    start = time.perf_counter()
    checked_layers = 0
    add_col = tables.columns.index("eltwise:count")
    for k in picks:
        traced, adds = trace_and_count_adds(archs[k])
        if adds != tables.features[DEVICES[0].name][k, add_col]:
            raise AssertionError(f"arch {k}: {adds} adds in a forward pass, features say otherwise")
        composed = templates.compose(genotypes[k])
        if traced != composed:
            diff = next(
                (i for i, (a, b) in enumerate(zip(traced, composed, strict=False)) if a != b),
                min(len(traced), len(composed)),
            )
            raise AssertionError(
                f"arch {k} {archs[k]}: composed inventory differs from kernels.trace at layer {diff} "
                f"({len(composed)} composed, {len(traced)} traced)"
            )
        checked_layers += len(traced)
        for device in DEVICES:
            direct = study_features(traced, device)
            fast = tables.features[device.name][k, : len(LAYER_COLUMNS)]
            if not np.allclose(direct, fast, rtol=1e-9, atol=1e-12):
                raise AssertionError(f"arch {k} on {device.name}: composed features differ from traced")
            # The whole-network prior also equals one predict() over the traced inventory.
            if device.batch != 1:
                continue
            gemm_layers = [layer for layer in traced if layer.kind in GEMM_KINDS]
            whole = latency_models.predict(latency_models.get_target(device.target), gemm_layers, Plan())
            gemm_prior = sum(
                direct[LAYER_COLUMNS.index(f"{c}:prior_ms")] for c in LAYER_CLASSES if c != "pooling"
            )
            if not np.isclose(whole.latency_ms, gemm_prior, rtol=1e-9):
                raise AssertionError(f"arch {k} on {device.name}: prior differs from latency_models.predict")
    return {
        "archs_checked": len(picks),
        "indices": picks,
        "layers_checked": checked_layers,
        "fields_compared": "all LayerSpec fields (name, kind, channels, kernel, stride, groups, hw, "
        "tokens, macs, params, bias, ...); features on every device; prior vs latency_models.predict; "
        "eltwise:count vs tensor adds counted in a forward pass",
        "seconds": round(time.perf_counter() - start, 2),
        "result": "identical",
    }


# --------------------------------------------------------------------------------------------
# Predictors
# --------------------------------------------------------------------------------------------


class StudyPredictor(abc.ABC):
    """A method of this study: ``fit`` on the training networks' rows of the study's feature
    table (and their op one-hot), ``predict`` their latency in ms.

    Not ``latency_models.Predictor``, which takes rows of ``latency_models.FEATURE_NAMES`` and
    returns an 80 % interval too (bench/latency.py reports the library's predictors).
    """

    @abc.abstractmethod
    def fit(self, x: Array, onehot: Array, y: Array) -> StudyPredictor: ...

    @abc.abstractmethod
    def predict(self, x: Array, onehot: Array) -> Array: ...


def column_indices(columns: Sequence[str], wanted: Sequence[str]) -> list[int]:
    return [columns.index(c) for c in wanted]


class PriorZeroShot(StudyPredictor):
    """The analytic prior as it is: sum of per-layer prior latencies, nothing fitted."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.cols = column_indices(columns, [f"{c}:prior_ms" for c in LAYER_CLASSES])

    def fit(self, x: Array, onehot: Array, y: Array) -> StudyPredictor:
        return self

    def predict(self, x: Array, onehot: Array) -> Array:
        return np.asarray(x[:, self.cols].sum(axis=1))


class FlopsLinear(StudyPredictor):
    """latency = a·MACs + b (least squares); its ranking is the plain FLOPs proxy."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.cols = column_indices(columns, [f"{c}:macs" for c in LAYER_CLASSES])
        self.coef = np.zeros(2)

    def macs(self, x: Array) -> Array:
        return np.asarray(x[:, self.cols].sum(axis=1))

    def fit(self, x: Array, onehot: Array, y: Array) -> StudyPredictor:
        design = np.stack([self.macs(x), np.ones(len(y))], axis=1)
        self.coef = np.asarray(np.linalg.lstsq(design, y, rcond=None)[0], dtype=np.float64)
        return self

    def predict(self, x: Array, onehot: Array) -> Array:
        return np.asarray(self.coef[0] * self.macs(x) + self.coef[1])


class OneHotRidge(StudyPredictor):
    """Ridge on the one-hot of the six edge ops (the anchor; NAS-Bench-201 specific)."""

    def __init__(self) -> None:
        self.model = RidgeCV(alphas=np.logspace(-3, 3, 13))

    def fit(self, x: Array, onehot: Array, y: Array) -> StudyPredictor:
        self.model.fit(onehot, y)
        return self

    def predict(self, x: Array, onehot: Array) -> Array:
        return np.asarray(self.model.predict(onehot))


def informative(x: Array) -> list[int]:
    """Columns that vary over the training rows (constant ones fold into the intercept)."""
    return [j for j in range(x.shape[1]) if np.ptp(x[:, j]) > 1e-12 * max(1.0, float(np.abs(x[:, j]).max()))]


class StudyCalibratedPrior(StudyPredictor):
    """The study's calibrated prior (3a, 3b, 3d, 5a), the variant docs/latency_nb201.md compares
    with ``latency_models.CalibratedPrior`` (see the module docstring for the differences).

    nn-Meter-style decomposition: latency = Σ_class (a·prior + b·MACs + c·count) + overhead.

    All coefficients non-negative; columns scaled to unit maximum; classes with no layer in any
    training network drop out. ``loss="squared"``: scipy's NNLS on absolute errors;
    ``loss="relative"``: NNLS with rows divided by the measured latency (squared relative error).
    ``loss="robust_log"`` (default): bounded least squares on log(predicted / measured) with a
    soft-L1 loss at a 10 % scale, started from the NNLS solution; symmetric in the ratio and
    not dragged by a few networks that a layer sum cannot explain (squared relative error,
    rows divided by the latency, is: it under-predicts most raspi4 networks by ~45 %).
    ``extra`` adds the graph features (elementwise adds, dead layers).
    """

    def __init__(self, columns: Sequence[str], extra: bool = False, loss: str = "robust_log") -> None:
        wanted = [f"{c}:{q}" for c in LAYER_CLASSES for q in ("prior_ms", "macs", "count")]
        if extra:
            wanted += list(GRAPH_COLUMNS)
        self.cols = column_indices(columns, wanted)
        self.loss = loss
        self.use: list[int] = []
        self.scale = np.ones(0)
        self.coef = np.zeros(0)

    def _design(self, x: Array) -> Array:
        sub = x[:, self.cols][:, self.use] / self.scale
        return np.concatenate([sub, np.ones((len(x), 1))], axis=1)

    def fit(self, x: Array, onehot: Array, y: Array) -> StudyPredictor:
        sub = x[:, self.cols]
        self.use = informative(sub)
        self.scale = np.maximum(np.abs(sub[:, self.use]).max(axis=0), 1e-30)
        design = self._design(x)
        if self.loss == "relative":
            self.coef = nnls(design / y[:, None], np.ones(len(y)), maxiter=50 * design.shape[1])[0]
            return self
        start = nnls(design, y, maxiter=50 * design.shape[1])[0]
        if self.loss == "squared":
            self.coef = start
            return self

        def residual(w: Array) -> Array:
            return np.asarray(np.log(np.maximum(design @ w, 1e-9)) - np.log(y))

        def jacobian(w: Array) -> Array:
            return np.asarray(design / np.maximum(design @ w, 1e-9)[:, None])

        start = start + 1e-3 * float(np.mean(y))  # strictly inside the bounds, positive predictions
        fit = least_squares(residual, start, jac=jacobian, bounds=(0.0, np.inf), loss="soft_l1", f_scale=0.1)
        self.coef = np.asarray(fit.x)
        return self

    def predict(self, x: Array, onehot: Array) -> Array:
        return np.asarray(self._design(x) @ self.coef)


class PriorScale(StudyPredictor):
    """latency = a·(total prior) + c, a, c ≥ 0, robust log loss: one scale of the prior, its ranking kept."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.cols = column_indices(columns, [f"{c}:prior_ms" for c in LAYER_CLASSES])
        self.inner = StudyCalibratedPrior(columns)

    def _x(self, x: Array) -> Array:
        return np.stack([x[:, self.cols].sum(axis=1)], axis=1)

    def fit(self, x: Array, onehot: Array, y: Array) -> StudyPredictor:
        self.inner.cols = [0]
        self.inner.fit(self._x(x), onehot, y)
        return self

    def predict(self, x: Array, onehot: Array) -> Array:
        return self.inner.predict(self._x(x), onehot)


def lgbm_params(n: int, residual: bool) -> dict[str, Any]:
    """LightGBM settings: small trees, strong shrinkage, fewer/leaner rounds for small n."""
    return {
        "n_estimators": 300 if residual else 500,
        "learning_rate": 0.03,
        "num_leaves": 8,
        "max_depth": 3,
        "min_child_samples": max(3, n // 30),
        "min_data_in_bin": 1,
        "subsample": 0.8,
        "subsample_freq": 1,
        "colsample_bytree": 0.8,
        "reg_lambda": 5.0 if residual else 1.0,
        "n_jobs": 1,
        "verbose": -1,
        "random_state": 0,
    }


class StudyBoosted(StudyPredictor):
    """LightGBM on the aggregated LayerSpec features (and graph features if ``extra``), log latency.

    With ``base`` it fits log(y / base prediction) instead: boosting on the calibrated prior's
    residual.
    """

    def __init__(
        self, columns: Sequence[str], base: StudyPredictor | None = None, extra: bool = False
    ) -> None:
        names = list(LAYER_COLUMNS) + (list(GRAPH_COLUMNS) if extra else [])
        self.cols = column_indices(columns, names)
        self.base = base
        self.model: lgb.LGBMRegressor | None = None
        self.constant = 0.0

    def _inputs(self, x: Array, onehot: Array) -> Array:
        sub = x[:, self.cols]
        if self.base is not None:
            sub = np.concatenate([sub, self.base.predict(x, onehot)[:, None]], axis=1)
        return np.asarray(sub)

    def fit(self, x: Array, onehot: Array, y: Array) -> StudyPredictor:
        target = np.log(y)
        if self.base is not None:
            self.base.fit(x, onehot, y)
            target = target - np.log(np.maximum(self.base.predict(x, onehot), 1e-6))
        self.constant = float(np.mean(target))
        self.model = lgb.LGBMRegressor(**lgbm_params(len(y), self.base is not None))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(self._inputs(x, onehot), target - self.constant)
        return self

    def predict(self, x: Array, onehot: Array) -> Array:
        assert self.model is not None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.constant + np.asarray(self.model.predict(self._inputs(x, onehot)))
        if self.base is not None:
            out = out + np.log(np.maximum(self.base.predict(x, onehot), 1e-6))
        return np.asarray(np.exp(out))


@dataclass(frozen=True)
class Method:
    """A named predictor factory and what it is."""

    key: str
    label: str
    make: Callable[[Sequence[str]], StudyPredictor]
    generic: bool = True


METHODS: tuple[Method, ...] = (
    Method("prior0", "0  analytic prior, uncalibrated (no fit)", PriorZeroShot),
    Method("flops", "1  FLOPs proxy (MACs; a·MACs+b for errors)", FlopsLinear),
    Method("onehot_ridge", "2  ridge on 6-edge op one-hot (anchor)", lambda c: OneHotRidge(), generic=False),
    Method(
        "prior_nnls",
        "3a calibrated prior, NNLS squared error",
        lambda c: StudyCalibratedPrior(c, loss="squared"),
    ),
    Method("prior_log", "3b calibrated prior, robust log loss", StudyCalibratedPrior),
    Method(
        "prior_rel",
        "3d calibrated prior, NNLS rows / latency",
        lambda c: StudyCalibratedPrior(c, loss="relative"),
    ),
    Method("prior_scale", "3c one scale of the prior + const (robust log)", PriorScale),
    Method("lgbm", "4a LightGBM on layer features (log)", StudyBoosted),
    Method(
        "prior_log_lgbm",
        "4b LightGBM on residual of 3b",
        lambda c: StudyBoosted(c, base=StudyCalibratedPrior(c)),
    ),
    Method("graph_log", "5a 3b + graph features", lambda c: StudyCalibratedPrior(c, extra=True)),
    Method(
        "graph_log_lgbm",
        "5b LightGBM on residual of 5a (+graph)",
        lambda c: StudyBoosted(c, base=StudyCalibratedPrior(c, extra=True), extra=True),
    ),
)


# --------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------


def spearman(a: Array, b: Array) -> float:
    return float(spearmanr(a, b).statistic)


def error_metrics(pred: Array, y: Array) -> dict[str, float]:
    """``latency_models.metrics`` in percent, and the median APE."""
    m = latency_models.metrics(pred, y)
    return {
        "mape": 100 * m.mape,
        "median_ape": float(100 * np.median(np.abs(pred - y) / y)),
        "within_10": 100 * m.within_10pct,
        "spearman": m.spearman,
    }


def trimmed(indices: IntArray, y: Array) -> IntArray:
    """HELP's outlier removal: sort by latency and keep [int(0.1 n), int(0.9 n))."""
    order = indices[np.argsort(y[indices], kind="stable")]
    n = len(indices)
    return np.asarray(order[int(n * 0.1) : int(n * 0.9)], dtype=np.int64)


def fit_predict(
    method: Method, columns: Sequence[str], x: Array, onehot: Array, y: Array, train: IntArray, test: IntArray
) -> Array:
    model = method.make(columns).fit(x[train], onehot[train], y[train])
    return model.predict(x[test], onehot[test])


def summarise(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "runs": [float(v) for v in arr]}


def protocol_help(
    x: Array, onehot: Array, y: Array, columns: Sequence[str], flagged: Array
) -> dict[str, Any]:
    """HELP's split; Spearman on the trimmed test set, first-N and 5 random draws per size."""
    pool = trimmed(np.arange(0, 900, dtype=np.int64), y)
    test = trimmed(np.arange(900, 1900, dtype=np.int64), y)
    pool_in_order = np.sort(pool)
    out: dict[str, Any] = {
        "pool_size": len(pool),
        "test_size": len(test),
        "flagged_in_pool": int(flagged[pool].sum()),
        "flagged_in_test": int(flagged[test].sum()),
        "methods": {},
    }
    sizes = [(10, 10), (100, 100), (900, len(pool))]
    for method in METHODS:
        result: dict[str, Any] = {}
        for label, n in sizes:
            first = pool_in_order[:n]
            pred = fit_predict(method, columns, x, onehot, y, first, test)
            entry: dict[str, Any] = {"n_train": n, "first_n": spearman(pred, y[test])}
            if n < len(pool):
                draws = []
                for seed in SEEDS:
                    pick = np.sort(np.random.default_rng(seed).choice(pool, size=n, replace=False))
                    draws.append(spearman(fit_predict(method, columns, x, onehot, y, pick, test), y[test]))
                entry["random"] = summarise(draws)
            result[str(label)] = entry
        if method.key == "flops":  # the proxy ranks by MACs itself, no fit
            macs = FlopsLinear(columns).macs(x[test])
            result["proxy"] = spearman(macs, y[test])
        out["methods"][method.key] = result
    return out


def protocol_random(
    x: Array, onehot: Array, y: Array, columns: Sequence[str], valid: IntArray, flagged_idx: IntArray
) -> dict[str, Any]:
    """Random splits over ``valid``; errors on all the rest, and on the flagged cells separately."""
    out: dict[str, Any] = {"population": len(valid), "methods": {}}
    for method in METHODS:
        result: dict[str, Any] = {}
        for n in TRAIN_SIZES:
            runs: dict[str, list[float]] = {}
            flagged_runs: dict[str, list[float]] = {}
            for seed in SEEDS:
                perm = np.random.default_rng(1000 + seed).permutation(valid)
                train, test = perm[:n], perm[n:]
                model = method.make(columns).fit(x[train], onehot[train], y[train])
                for k, v in error_metrics(model.predict(x[test], onehot[test]), y[test]).items():
                    runs.setdefault(k, []).append(v)
                if len(flagged_idx):
                    pred = model.predict(x[flagged_idx], onehot[flagged_idx])
                    for k, v in error_metrics(pred, y[flagged_idx]).items():
                        flagged_runs.setdefault(k, []).append(v)
            result[str(n)] = {k: summarise(v) for k, v in runs.items()}
            result[str(n)]["on_flagged"] = {k: summarise(v) for k, v in flagged_runs.items()}
        out["methods"][method.key] = result
    return out


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def onehot_matrix(archs: Sequence[str]) -> Array:
    out = np.zeros((len(archs), N_EDGES * len(OPS)))
    for k, arch in enumerate(archs):
        for e, op in enumerate(flat_ops(parse_arch(arch))):
            out[k, e * len(OPS) + OPS.index(op)] = 1.0
    return out


def cached_tables(
    archs: Sequence[str], templates: Templates, data_sha: str, use_cache: bool
) -> tuple[FeatureTables, str]:
    """The feature tables, from the temp-dir cache when data and this file are unchanged."""
    library = Path(latency_models.__file__).parent  # as installed (editable: this checkout)
    sources = [
        Path(__file__),
        *sorted(library.rglob("*.py")),
        *sorted((library / "targets").glob("*.json")),
        Path(kernels.__file__).parent / "_trace.py",
        Path(workers.zoo.nasbench201.__file__),
    ]
    code_sha = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    path = CACHE_DIR / f"features-{CACHE_VERSION}-{data_sha[:16]}-{code_sha}.npz"
    if use_cache and path.exists():
        with np.load(path) as saved:
            columns = tuple(str(c) for c in saved["columns"])
            features = {d.name: np.asarray(saved[d.name], dtype=np.float64) for d in DEVICES}
        return FeatureTables(columns=columns, features=features), f"cache {path}"
    tables = build_feature_tables(archs, templates)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"columns": np.asarray(tables.columns), **tables.features}
    np.savez(path, **arrays)
    return tables, f"composed, cached to {path}"


def ceilings(x: Array, y: Array, population: IntArray, columns: Sequence[str]) -> dict[str, Any]:
    """In-sample ceilings: predict each network by the mean latency of networks with identical features.

    No predictor of the LayerSpec sums (resp. LayerSpec + graph features) can separate networks
    whose features are identical, so this group-mean fit (over the population, in-sample) bounds
    what those feature sets can reach. The group mean is not the MAPE-optimal point, so the MAPE
    bound is approximate.
    """
    out: dict[str, Any] = {}
    for label, names in (("layerspec", LAYER_COLUMNS), ("layerspec+graph", LAYER_COLUMNS + GRAPH_COLUMNS)):
        cols = np.asarray(column_indices(columns, names), dtype=np.int64)
        sub = np.round(x[population][:, cols], 9)
        _, group = np.unique(sub, axis=0, return_inverse=True)
        group = group.reshape(-1)
        sums = np.bincount(group, weights=y[population])
        means = sums / np.bincount(group)
        metrics = error_metrics(means[group], y[population])
        metrics["groups"] = int(group.max() + 1)
        out[label] = metrics
    return out


def batch_sensitivity(
    archs: Sequence[str], templates: Templates, lat: dict[str, Array], population: IntArray
) -> dict[str, Any]:
    """Zero-shot prior (Spearman, median measured/prior) if a device's batch were 1 or 32.

    The Xeon data does not state its batch; the 1080ti data is batch 32.
    """
    out: dict[str, Any] = {}
    for name in ("gold_6240", "1080ti_32"):
        base = next(d for d in DEVICES if d.name == name)
        out[name] = {}
        for batch in (1, 32):
            alt = Device(name, base.target, batch)
            tables = build_feature_tables(archs, templates, (alt,))
            x = tables.features[name][population]
            prior = PriorZeroShot(tables.columns).predict(x, x)
            y = lat[name][population]
            out[name][str(batch)] = {
                "spearman": spearman(prior, y),
                "median_measured_over_prior": float(np.median(y / prior)),
            }
    return out


def quirks(archs: Sequence[str], lat: dict[str, Array]) -> dict[str, Any]:
    """The cells without an input→output path and the sub-0.5 ms measurements, per device."""
    no_path = np.array([not has_path(parse_arch(a)) for a in archs])
    out: dict[str, Any] = {"no_path_cells": int(no_path.sum()), "devices": {}}
    for device in DEVICES:
        y = lat[device.name]
        low = y < PHONE_FLOOR_MS
        out["devices"][device.name] = {
            "under_0.5ms": int(low.sum()),
            "under_0.5ms_with_path": int((low & ~no_path).sum()),
            "no_path_latency_ms_pcts_0_10_50_90_100": [
                float(v) for v in np.percentile(y[no_path], [0, 10, 50, 90, 100])
            ],
            "with_path_latency_ms_pcts_0_10_50_90_100": [
                float(v) for v in np.percentile(y[~no_path], [0, 10, 50, 90, 100])
            ],
        }
    return out


def print_tables(results: dict[str, Any]) -> None:
    """Spearman (HELP protocol) and MAPE / ±10 % (random splits), one table per device."""
    for device in DEVICES:
        d = results["devices"][device.name]
        h = d["help"]
        print(f"\n== {device.name} (target {device.target}, batch {device.batch}) ==")
        print(
            f"HELP protocol: Spearman on {h['test_size']} trimmed test nets; pool {h['pool_size']}"
            " (first-N in index order | mean of 5 random draws)"
        )
        print(f"{'method':48s} {'10':>14s} {'100':>14s} {'all':>7s}")
        for method in METHODS:
            m = h["methods"][method.key]
            cells = [f"{m[n]['first_n']:.3f}|{m[n]['random']['mean']:.3f}" for n in ("10", "100")]
            extra = f"  (MACs proxy {m['proxy']:.3f})" if "proxy" in m else ""
            print(f"{method.label:48s} {cells[0]:>14s} {cells[1]:>14s} {m['900']['first_n']:7.3f}{extra}")
        r = d["random"]
        print(f"Random splits over {r['population']} nets with a path (5 seeds): MAPE % | within ±10 % | rho")
        print(f"{'method':48s} {'10':>20s} {'100':>20s} {'900':>20s}")
        for method in METHODS:
            m = r["methods"][method.key]
            cells = [
                f"{m[str(n)]['mape']['mean']:6.1f}|{m[str(n)]['within_10']['mean']:5.1f}|"
                f"{m[str(n)]['spearman']['mean']:.3f}"
                for n in TRAIN_SIZES
            ]
            print(f"{method.label:48s} {cells[0]:>20s} {cells[1]:>20s} {cells[2]:>20s}")
        for label, c in d["ceilings"].items():
            print(
                f"ceiling, any predictor of {label} features (in-sample group means, {c['groups']} groups): "
                f"MAPE {c['mape']:.1f}, within ±10 % {c['within_10']:.1f}, rho {c['spearman']:.3f}"
            )
        f = r["methods"]["graph_log_lgbm"]["900"]["on_flagged"]
        print(
            f"no-path cells ({results['quirks']['no_path_cells']}), 5b trained on 900: "
            f"MAPE {f['mape']['mean']:.1f}, median APE {f['median_ape']['mean']:.1f}, "
            f"within ±10 % {f['within_10']['mean']:.1f}"
        )
    print("\nzero-shot prior at batch 1 vs 32 (Spearman | median measured/prior):")
    for name, by_batch in results["prior_batch_sensitivity"].items():
        line = "  ".join(
            f"b{b}: {v['spearman']:.3f} | {v['median_measured_over_prior']:.1f}" for b, v in by_batch.items()
        )
        print(f"  {name:10s} {line}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None, help="the NB201 latency table (default: see bench/nb201_data.py)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-cache", action="store_true", help="rebuild the composed features")
    parser.add_argument("--verify", type=int, default=20, help="random archs checked against kernels.trace")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    start = time.perf_counter()
    args.data = nb201_csv(args.data)
    archs, lat = load_measurements(args.data)
    data_sha = file_sha256(args.data)
    templates = build_templates()
    tables, feature_source = cached_tables(archs, templates, data_sha, not args.no_cache)
    t_features = time.perf_counter() - start
    verification = verify_composition(archs, templates, tables, args.verify, seed=0)
    print(
        f"features for {len(archs)} archs x {len(DEVICES)} devices in {t_features:.1f} s; "
        f"composition verified on {verification['archs_checked']} archs "
        f"({verification['layers_checked']} layers) in {verification['seconds']} s"
    )

    onehot = onehot_matrix(archs)
    no_path = np.array([not has_path(parse_arch(a)) for a in archs])
    valid = np.flatnonzero(~no_path).astype(np.int64)
    flagged_idx = np.flatnonzero(no_path).astype(np.int64)
    results: dict[str, Any] = {
        "meta": {
            "data": str(args.data),
            "data_sha256": data_sha,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightgbm": lgb.__version__,
            "machine": platform.machine(),
            "feature_columns": list(tables.columns),
            "methods": {m.key: {"label": m.label, "generic": m.generic} for m in METHODS},
            "devices": {d.name: {"target": d.target, "batch": d.batch} for d in DEVICES},
            "verification": verification,
            "features_from": feature_source,
            "help_protocol": "pool 0-899 / test 900-1899, each trimmed to [int(0.1n), int(0.9n)) of its "
            "latency-sorted order (HELP loader); sizes 10, 100 = first N of the trimmed pool in NB201 "
            "index order ('first_n') and 5 random draws without replacement (numpy default_rng(seed), "
            "seeds 0-4); '900' = the whole trimmed pool",
            "random_protocol": "5 seeds (numpy default_rng(1000+seed).permutation of the networks with an "
            "input→output path); train = first n, test = the rest; 'on_flagged' = the same models on "
            "the cells without a path",
        },
        "quirks": quirks(archs, lat),
        "prior_batch_sensitivity": batch_sensitivity(archs, templates, lat, valid),
        "devices": {},
    }
    for device in DEVICES:
        t0 = time.perf_counter()
        x = tables.features[device.name]
        y = lat[device.name]
        results["devices"][device.name] = {
            "help": protocol_help(x, onehot, y, tables.columns, no_path),
            "random": protocol_random(x, onehot, y, tables.columns, valid, flagged_idx),
            "ceilings": ceilings(x, y, valid, tables.columns),
        }
        print(f"{device.name}: {time.perf_counter() - t0:.1f} s")
    results["meta"]["seconds"] = round(time.perf_counter() - start, 1)
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out} ({results['meta']['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
