"""The whole graph in the inventory: kernels.trace records non-GEMM work and dead layers, the
priors price it on the memory roofline, and the features carry it (kernels/_graph.py).

Every expected count here is re-derived from the model's definition (the NAS-Bench-201
genotype, torchvision's residual flags, the ViT's block structure), never read back from the
tracer.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

import latency_models
from kernels import trace
from latency_models._features import GRAPH_FEATURES, network_features
from latency_models._gemm import GRAPH_CLASSES
from search_spaces import GEMM_KINDS, Choice, LayerKind, LayerSpec, Plan, Space
from workers.zoo import prepare
from workers.zoo.digits import DigitsCNN, DigitsViT
from workers.zoo.nasbench201 import CELL_CHANNELS, CELLS_PER_STAGE, OPS, format_arch, parse_arch

Genotype = tuple[tuple[str, ...], ...]
EDGES = [(j, i) for j in (1, 2, 3) for i in range(j)]  # (into node j, from node i)
WITH_PATH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"
# No input→output path: node 3 reads only node 2, node 2 only node 1, which is zero (its only
# edge is none): the conv and the pool compute on zeros.
NO_PATH = "|none~0|+|none~0|nor_conv_1x1~1|+|none~0|none~1|avg_pool_3x3~2|"
# Another no-path cell: node 3 is zero (no incoming edge), so every edge is dead.
NO_OUTPUT = "|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|none~1|none~2|"


def nb201_layers(arch: str) -> list[LayerSpec]:
    prepared = prepare(f"nasbench201:{arch}", coupling=False)
    return trace(prepared.model, prepared.example_input, prepared.ignore, coupling=False)


def reachability(genotype: Genotype) -> tuple[list[bool], list[bool]]:
    """Nodes reached from the cell input, and nodes that reach the cell output (non-none edges)."""
    reach = [True, False, False, False]
    for j in (1, 2, 3):
        reach[j] = any(reach[i] and genotype[j - 1][i] != "none" for i in range(j))
    coreach = [False, False, False, True]
    for i in (2, 1, 0):
        coreach[i] = any(genotype[j - 1][i] != "none" and coreach[j] for j in range(i + 1, 4))
    return reach, coreach


def cells() -> list[tuple[int, int, int]]:
    """(cell index, channels, spatial size) of every NAS-Bench-201 cell, reductions skipped."""
    out, index, hw = [], 0, 32
    for stage, c in enumerate(CELL_CHANNELS):
        if stage > 0:
            index += 1  # the reduction block
            hw //= 2
        for _ in range(CELLS_PER_STAGE):
            out.append((index, c, hw))
            index += 1
    return out


def adds_of(layers: list[LayerSpec]) -> int:
    return sum(int(layer.extra.get("ops", {}).get("add", 0)) for layer in layers)


def graph_entries(layers: list[LayerSpec]) -> list[LayerSpec]:
    return [layer for layer in layers if layer.kind is LayerKind.ELEMENTWISE]


# ---- what trace records ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", [WITH_PATH, NO_PATH, NO_OUTPUT])
def test_nb201_adds_match_the_genotype(arch: str) -> None:
    genotype = parse_arch(arch)
    layers = nb201_layers(arch)
    # Node j sums its non-none incoming edges: one add fewer than edges (none for 0 or 1 edge).
    per_cell = sum(max(0, sum(op != "none" for op in ops) - 1) for ops in genotype)
    n_cells = len(cells())
    reductions = len(CELL_CHANNELS) - 1  # each adds its shortcut to its branch
    assert adds_of(layers) == per_cell * n_cells + reductions
    # Bytes: an add reads two C×H×W float32 maps and writes one.
    add_bytes = sum(per_cell * 3 * 4.0 * c * hw * hw for _, c, hw in cells())
    add_bytes += sum(3 * 4.0 * c * (hw // 2) ** 2 for c, hw in zip(CELL_CHANNELS[1:], (32, 16), strict=True))
    traced_bytes = sum(
        layer.extra["bytes"]
        for layer in graph_entries(layers)
        if layer.extra["ops"] == {"add": layer.extra["count"]}
    )
    assert traced_bytes == pytest.approx(add_bytes)
    # The GEMM/pooling part of the inventory is unchanged by recording the graph.
    prepared = prepare(f"nasbench201:{arch}", coupling=False)
    plain = trace(prepared.model, prepared.example_input, prepared.ignore, coupling=False, graph=False)
    assert [layer for layer in layers if layer.kind is not LayerKind.ELEMENTWISE] == plain


@pytest.mark.parametrize("arch", [WITH_PATH, NO_PATH, NO_OUTPUT])
def test_nb201_dead_layers_are_the_edges_off_every_path(arch: str) -> None:
    genotype = parse_arch(arch)
    reach, coreach = reachability(genotype)
    layers = nb201_layers(arch)
    expected_dead: set[str] = set()
    edge_layers: set[str] = set()
    for cell, _, _ in cells():
        for j, i in EDGES:
            op = genotype[j - 1][i]
            if op in ("none", "skip_connect"):
                continue  # no layer
            name = f"cells.{cell}.edges.edge_{j}_{i}" + (".1" if op.startswith("nor_conv") else "")
            edge_layers.add(name)
            if not (reach[i] and coreach[j]):
                expected_dead.add(name)
    names = {layer.name for layer in layers}
    assert edge_layers <= names
    dead = {
        layer.name
        for layer in layers
        if layer.kind is not LayerKind.ELEMENTWISE and layer.extra.get("live") is False
    }
    assert dead == expected_dead
    if arch == WITH_PATH:
        # Node 2 feeds nothing: its two edges are dead, the rest live.
        assert reach[3] and dead and dead < edge_layers
    else:
        assert not reach[3] and dead == edge_layers  # no edge of a no-path cell is on a path


def test_nb201_composed_inventory_and_graph_equal_the_trace() -> None:
    """The study's check (bench/latency_nb201.py, verify_composition): an inventory composed
    from the five uniform-cell traces equals kernels.trace, and the genotype's graph features
    (adds, dead layers) equal those of the traced graph."""
    edge_of: dict[tuple[str, int, int], list[LayerSpec]] = {}
    shared: list[LayerSpec] | None = None
    target = latency_models.get_target("raspi4")
    for op in OPS:
        uniform = format_arch(tuple(tuple(op for _ in range(j)) for j in (1, 2, 3)))
        own: list[LayerSpec] = []
        for layer in nb201_layers(uniform):
            if layer.kind is LayerKind.ELEMENTWISE:
                continue
            parts = layer.name.split(".")
            if len(parts) >= 4 and parts[0] == "cells" and parts[2] == "edges":
                j, i = (int(v) for v in parts[3].split("_")[1:])
                edge_of.setdefault((op, int(parts[1]), EDGES.index((j, i))), []).append(layer)
            else:
                own.append(layer)
        assert shared is None or own == shared, f"shared layers differ in the uniform {op} network"
        shared = own
    rng = random.Random(0)
    archs = [NO_PATH, NO_OUTPUT] + [
        format_arch(tuple(tuple(rng.choice(OPS) for _ in range(j)) for j in (1, 2, 3))) for _ in range(4)
    ]
    for arch in archs:
        genotype = parse_arch(arch)
        ops = [genotype[j - 1][i] for j, i in EDGES]
        reach, coreach = reachability(genotype)
        traced = nb201_layers(arch)
        gemm_and_pool = [layer for layer in traced if layer.kind is not LayerKind.ELEMENTWISE]
        # Composition: shared layers by name, each cell's edges in edge order.
        composed_edges = {
            layer.name: layer for (op, _, e), ls in edge_of.items() if ops[e] == op for layer in ls
        }
        traced_edges = {layer.name: layer for layer in gemm_and_pool if ".edges." in layer.name}
        assert traced_edges == composed_edges, arch
        assert [layer for layer in gemm_and_pool if ".edges." not in layer.name] == shared
        # Dead work composed from the genotype: the edge layers off every path, priced alone.
        dead_layers = [
            layer
            for (op, _, e), ls in edge_of.items()
            if ops[e] == op and not (reach[EDGES[e][1]] and coreach[EDGES[e][0]])
            for layer in ls
        ]
        row = network_features(target, traced, Plan())
        names = list(latency_models.FEATURE_NAMES)
        dead_gemm = [layer for layer in dead_layers if layer.kind in GEMM_KINDS]
        assert row[names.index("graph_dead_macs")] == sum(layer.macs for layer in dead_gemm)
        dead_graph = [layer for layer in graph_entries(traced) if layer.extra["live"] is False]
        composed_dead = network_features(target, dead_layers + dead_graph, Plan())
        assert row[names.index("graph_dead_prior_ms")] == pytest.approx(
            composed_dead[names.index("prior_ms")]
        )
        per_cell = sum(max(0, sum(op != "none" for op in o) - 1) for o in genotype)
        assert adds_of(traced) == per_cell * len(cells()) + len(CELL_CHANNELS) - 1


def test_mobilenet_v2_residual_adds_and_small_inventory() -> None:
    prepared = prepare("mobilenet-v2", coupling=False)
    layers = trace(prepared.model, prepared.example_input, prepared.ignore, coupling=False)
    residual = sum(1 for m in prepared.model.modules() if getattr(m, "use_res_connect", False))
    assert residual == 10  # torchvision's MobileNetV2: stride-1 blocks with equal in/out channels
    assert adds_of(layers) == residual
    extra = graph_entries(layers)
    gemm_layers = [layer for layer in layers if layer.kind in GEMM_KINDS]
    assert 0 < len(extra) <= len(gemm_layers)  # aggregated per block, not one entry per op
    # ReLU6 after every conv but the linear bottleneck projections and the classifier.
    relu6 = sum(1 for m in prepared.model.modules() if isinstance(m, nn.ReLU6))
    assert sum(layer.extra["ops"].get("hardtanh", 0) for layer in extra) == relu6
    # Inference batch norms after convs fold into them: none is recorded.
    assert not [layer for layer in extra if layer.extra["op_class"] == "norm"]
    assert all(layer.extra["live"] for layer in layers if "live" in layer.extra)
    # Round trip through JSON, and old stored inventories without graph entries still load.
    data = json.loads(json.dumps([layer.to_dict() for layer in layers]))
    assert [LayerSpec.from_dict(d) for d in data] == layers
    assert [LayerSpec.from_dict(d).extra for d in data] == [layer.extra for layer in layers]
    old = {k: v for k, v in layers[0].to_dict().items() if k != "extra"}
    assert LayerSpec.from_dict(old) == layers[0]


def test_vit_graph_ops_and_attention_not_counted_twice() -> None:
    torch.manual_seed(0)
    model = DigitsViT().eval()
    x = torch.randn(1, 1, 8, 8)
    layers = trace(model, x, coupling=False)
    extra = graph_entries(layers)
    depth = len(model.blocks)
    ops: dict[str, int] = {}
    for layer in extra:
        for op, n in layer.extra["ops"].items():
            ops[op] = ops.get(op, 0) + n
    assert sum(1 for layer in layers if layer.kind is LayerKind.ATTENTION) == depth
    assert ops.get("native_layer_norm", 0) == 2 * depth + 1  # two pre-norms per block, one final
    assert ops.get("gelu", 0) == depth
    assert ops.get("add", 0) == 2 * depth + 1  # two residuals per block, plus the position embedding
    assert ops.get("cat", 0) == 1  # the CLS token
    assert "_softmax" not in ops  # the attention LayerSpec costs it


def test_digits_cnn_unfolded_relu_and_pooling() -> None:
    """A model whose children are all leaves (the root itself is the only block)."""
    model = DigitsCNN().eval()
    layers = trace(model, torch.randn(1, 1, 8, 8), coupling=False)
    extra = graph_entries(layers)
    ops: dict[str, int] = {}
    for layer in extra:
        for op, n in layer.extra["ops"].items():
            ops[op] = ops.get(op, 0) + n
    assert ops == {"add": 1, "relu": 5}  # torch.relu ×5 and the residual add; BNs fold
    assert all(layer.extra["live"] for layer in extra)


def test_layer_whose_output_is_unused_is_dead() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
            self.unused = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _ = self.unused(x) * 2.0
            return self.head(self.used(x) + x)

    layers = trace(Branchy().eval(), torch.randn(1, 8), coupling=False)
    dead = {layer.name for layer in layers if layer.extra.get("live") is False}
    assert "unused.0" in dead and "used.0" not in dead and "head" not in dead
    dead_ops = [layer for layer in graph_entries(layers) if layer.extra["live"] is False]
    assert sum(layer.extra["count"] for layer in dead_ops) == 2  # its ReLU and the ×2


# ---- priors and features --------------------------------------------------------------------
@pytest.mark.parametrize("target_name", ["raspi4", "a100", "zcu102"])
def test_prior_exceeds_gemm_prior_by_the_memory_term(target_name: str) -> None:
    target = latency_models.get_target(target_name)
    layers = nb201_layers(WITH_PATH)
    gemm_only = [layer for layer in layers if layer.kind in GEMM_KINDS]
    full = latency_models.predict(target, layers, Plan()).latency_ms
    base = latency_models.predict(target, gemm_only, Plan()).latency_ms
    fpga = target.family == "fpga"
    expected = 0.0
    for layer in layers:
        if layer.kind is LayerKind.POOLING:
            ih, iw = layer.input_hw
            oh, ow = layer.output_hw
            moved, count, cls = (
                4.0 * (layer.in_channels * ih * iw + layer.out_channels * oh * ow),
                1,
                "pooling",
            )
        elif layer.kind is LayerKind.ELEMENTWISE:
            moved, count, cls = layer.extra["bytes"], layer.extra["count"], layer.extra["op_class"]
        else:
            continue
        if fpga and cls == "activation":
            continue  # fused into the GEMM core's output stage
        expected += moved / (target.memory_bandwidth_gb_s * 1e9) * 1e3 + count * target.dispatch_overhead_ms
    assert expected > 0
    assert full - base == pytest.approx(expected, rel=1e-9)
    assert latency_models.predict_latency_ms(target, layers, [Plan()])[0] == pytest.approx(full, rel=1e-12)


def test_features_of_a_net_are_the_sum_of_its_layers() -> None:
    target = latency_models.get_target("cortex-a76")
    layers = nb201_layers(NO_PATH)
    names = list(latency_models.FEATURE_NAMES)
    assert names[-len(GRAPH_FEATURES) :] == list(GRAPH_FEATURES)
    assert all(n.startswith("graph_") for n in GRAPH_FEATURES)
    whole = network_features(target, layers, Plan())
    parts = np.sum([network_features(target, [layer], Plan()) for layer in layers], axis=0)
    batch = names.index("batch")
    parts[batch] = whole[batch]
    np.testing.assert_allclose(whole, parts, rtol=1e-12)
    # The graph columns are populated, and the prior total matches predict().
    for cls in GRAPH_CLASSES:
        if cls in ("concat", "norm"):
            continue
        assert whole[names.index(f"graph_{cls}_count")] > 0, cls
    assert whole[names.index("graph_dead_count")] > 0
    assert whole[names.index("prior_ms")] == pytest.approx(
        latency_models.predict(target, layers, Plan()).latency_ms
    )
    # Batch scales the bytes of the graph work, not its op counts.
    four = network_features(target, layers, Plan(), batch=4)
    for cls in GRAPH_CLASSES:
        assert four[names.index(f"graph_{cls}_count")] == whole[names.index(f"graph_{cls}_count")]
        assert four[names.index(f"graph_{cls}_bytes")] == pytest.approx(
            4 * whole[names.index(f"graph_{cls}_bytes")]
        )


def test_graph_entries_offer_no_knobs_and_batch_prior_matches_predict() -> None:
    prepared = prepare("mobilenet-v2")
    layers = prepared.layers
    assert graph_entries(layers)
    space = Space.build(layers, rank_fractions=(0.5,), keep=(0.5,), wbits=(8,), abits=(8,))
    for layer in graph_entries(layers):
        assert space.knobs_of(layer.name).is_fixed
    # Graph entries take only the default choice; anything else names the field.
    entry = graph_entries(layers)[0]
    with pytest.raises(Exception, match="keep"):
        Plan({entry.name: Choice(keep=0.5)}).validate(layers)
    uniform = Plan.uniform(layers, Choice(wbits=8, abits=8)).validate(layers)
    target = latency_models.get_target("jetson-orin")
    batch = latency_models.BatchPredictor(target, space)
    rng = np.random.default_rng(0)
    plans = [space.sample(rng) for _ in range(3)]
    for plan in [Plan(), uniform, *plans]:
        got = batch.latency_ms(np.stack([space.encode(plan)]))[0]
        assert got == pytest.approx(latency_models.predict(target, layers, plan).latency_ms, rel=1e-9)
