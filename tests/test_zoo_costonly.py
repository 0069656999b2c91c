"""Cost-only zoo entries: NAS-Bench-201 and FBNet (HW-NAS-Bench) networks and their fidelity metric.

Reference values:
- NAS-Bench-201 (Dong & Yang, ICLR 2020), file NAS-Bench-201-v1_1-096897, cifar10-valid: over all 15,625
  cells, params range from 0.073306 M (all ``none``) to 1.531546 M (all ``nor_conv_3x3``) and ``flop``
  from 7.78305 M to 220.11969 M. (Read from the benchmark's per-arch records as quoted by EvoXBench's
  NB201 min/max table and an HPOBench-data summary script; the min and max also follow by hand from the
  layer shapes, which is how the per-op increments below are derived.) The benchmark's ``flop`` counts
  conv and linear multiply-accumulates (linear bias included) and no pooling.
- FBNet: no parameter counts are published for HW-NAS-Bench's CIFAR-100 networks; the all-``skip``
  count and the per-block formulas below are derived by hand from the layer shapes. FBNet-A's
  multiply-adds in the ImageNet setting (249 M) are from the FBNet paper (Wu et al., CVPR 2019, Table 2).
"""

from __future__ import annotations

import copy
import gzip
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from workers.zoo import _fidelity, fbnet, nasbench201
from workers.zoo._base import ZooError, create_model
from workers.zoo.fbnet import FBNet
from workers.zoo.nasbench201 import NASBench201

LATENCY_CSV = Path("/work/shared/data/nb201_latency_dev.csv.gz")

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
# Node 1 is dead (no live input) yet feeds a conv; node 3 gets skip(x) + pool(node 2).
DEAD_NODE = "|none~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
# No path from input to output, but a conv hangs off a dead node (NAS-Bench-201 builds and runs it).
DISCONNECTED_WITH_CONV = "|none~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_1x1~2|"
MIXED = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|nor_conv_3x3~2|"
NB201_ARCHS = [nasbench201.DEFAULT_ARCH, ALL_CONV3, ALL_NONE, DEAD_NODE, DISCONNECTED_WITH_CONV, MIXED]

FBNET_ALL_SKIP = "-".join(["skip"] * 22)
FBNET_ALL_G2 = "-".join(["k3_e1_g2", "k5_e1_g2"] * 11)
FBNET_ARCHS = [fbnet.DEFAULT_ARCH, FBNET_ALL_SKIP, FBNET_ALL_G2]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of Conv2d and Linear layers (plus linear bias), NAS-Bench-201's convention."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features + (mod.out_features if mod.bias is not None else 0)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


# ---------------------------------------------------------------- NAS-Bench-201: parsing


def test_nb201_parse_roundtrip() -> None:
    g = nasbench201.parse_arch(MIXED)
    assert g == (
        ("avg_pool_3x3",),
        ("nor_conv_1x1", "skip_connect"),
        ("nor_conv_1x1", "skip_connect", "nor_conv_3x3"),
    )
    assert nasbench201.format_arch(g) == MIXED
    assert nasbench201.parse_arch("  " + MIXED + "\n") == g


@pytest.mark.parametrize(
    ("arch", "needle"),
    [
        ("", "groups"),
        ("|nor_conv_3x3~0|+|none~0|none~1|", "groups"),
        (ALL_NONE + "+|none~0|", "groups"),
        ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "'conv_5x5'"),
        ("|None~0|+|none~0|none~1|+|none~0|none~1|none~2|", "'None'"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "'none~1'"),
        ("|none~0|+|none~1|none~0|+|none~0|none~1|none~2|", "'none~1'"),
        ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "'none'"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "must list 2"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|none~3|", "must list 3"),
        ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "'none~0|'"),
        ("|none~0|+|none~0| none~1|+|none~0|none~1|none~2|", "' none~1'"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1||", "''"),
    ],
)
def test_nb201_parse_errors_name_the_bad_token(arch: str, needle: str) -> None:
    with pytest.raises(ZooError) as err:
        nasbench201.parse_arch(arch)
    msg = str(err.value)
    assert needle in msg
    assert "nor_conv_3x3" in msg and "avg_pool_3x3" in msg  # lists the valid ops


def test_nb201_bad_arch_fails_at_creation() -> None:
    with pytest.raises(ZooError, match="unknown op 'max_pool_3x3'"):
        create_model("nasbench201:|max_pool_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(ZooError, match="must be a string"):
        NASBench201(arch=None)


def test_nb201_registry_and_default() -> None:
    entry = create_model("nasbench201:" + MIXED)
    assert isinstance(entry, NASBench201) and entry.arch == MIXED
    assert entry.model_id == "nasbench201:" + MIXED
    default = create_model("nasbench201")
    assert default.arch == nasbench201.DEFAULT_ARCH
    assert nasbench201.DEFAULT_ARCH in NASBench201.description
    assert NASBench201.has_weights is False and NASBench201.args == ("arch",)


@pytest.mark.skipif(not LATENCY_CSV.exists(), reason=f"{LATENCY_CSV} not present")
def test_nb201_every_measured_arch_parses() -> None:
    import csv

    with gzip.open(LATENCY_CSV, "rt", newline="") as f:
        archs = {row["arch"] for row in csv.DictReader(f) if row["space"] == "nasbench201"}
    assert len(archs) == 15_625
    genotypes = {nasbench201.parse_arch(a) for a in archs}
    assert {nasbench201.format_arch(g) for g in genotypes} == archs  # canonical round trip
    # The measured set is the whole space: every assignment of the 5 ops to the 6 edges.
    everything = {(ops[:1], ops[1:3], ops[3:]) for ops in itertools.product(nasbench201.OPS, repeat=6)}
    assert genotypes == everything


# ---------------------------------------------------------------- NAS-Bench-201: structure and cost

# Per-cell-edge increments over the all-none network, derived from the layer shapes (C channels,
# 5 cells per stage, stages at C = 16, 32, 64 on 32², 16², 8² maps, so C·H·W is the same everywhere).
# none, skip_connect and avg_pool_3x3 add nothing; a conv edge adds k²·C² weights + 2·C BN parameters.
_EDGE_K2 = {"nor_conv_1x1": 1, "nor_conv_3x3": 9}
_EDGE_MACS = {"nor_conv_1x1": 16 * 16 * 32 * 32, "nor_conv_3x3": 9 * 16 * 16 * 32 * 32}
NB201_MIN_PARAMS = 73_306  # published 0.073306 M
NB201_MAX_PARAMS = 1_531_546  # published 1.531546 M
NB201_MIN_MACS = 7_783_050  # published 7.78305 M
NB201_MAX_MACS = 220_119_690  # published 220.11969 M


def expected_nb201(arch: str) -> tuple[int, int]:
    params, macs = NB201_MIN_PARAMS, NB201_MIN_MACS
    for op in itertools.chain.from_iterable(nasbench201.parse_arch(arch)):
        if op in _EDGE_K2:
            params += sum(5 * (_EDGE_K2[op] * c * c + 2 * c) for c in nasbench201.CELL_CHANNELS)
            macs += 3 * 5 * _EDGE_MACS[op]
    return params, macs


def test_nb201_extremes_match_published_counts() -> None:
    x = torch.zeros(1, 3, 32, 32)
    big = NASBench201(arch=ALL_CONV3).build()
    small = NASBench201(arch=ALL_NONE).build()
    assert n_params(big) == NB201_MAX_PARAMS
    assert n_params(small) == NB201_MIN_PARAMS
    assert conv_linear_macs(big, x) == NB201_MAX_MACS
    assert conv_linear_macs(small, x) == NB201_MIN_MACS
    assert expected_nb201(ALL_CONV3) == (NB201_MAX_PARAMS, NB201_MAX_MACS)  # the formula agrees


@pytest.mark.parametrize("arch", NB201_ARCHS)
def test_nb201_params_and_macs_per_op(arch: str) -> None:
    model = NASBench201(arch=arch).build()
    params, macs = expected_nb201(arch)
    assert n_params(model) == params
    assert conv_linear_macs(model, torch.zeros(1, 3, 32, 32)) == macs


def test_nb201_none_edges_have_no_module() -> None:
    model = NASBench201(arch=DEAD_NODE).build()
    cell = model.cells[0]
    assert isinstance(cell, nasbench201.Cell)
    # Only the three live edges exist: 2<-1 conv, 3<-0 skip, 3<-2 pool.
    assert sorted(cell.edges.keys()) == ["edge_2_1", "edge_3_0", "edge_3_2"]
    all_none = NASBench201(arch=ALL_NONE).build()
    assert all(len(c.edges) == 0 for c in all_none.cells if isinstance(c, nasbench201.Cell))
    assert sum(isinstance(m, nn.Conv2d) for m in all_none.modules()) == 1 + 2 * 3  # stem + reductions


@pytest.mark.parametrize("arch", [ALL_NONE, DISCONNECTED_WITH_CONV])
def test_nb201_disconnected_cell_outputs_zeros(arch: str) -> None:
    torch.manual_seed(1)
    cell = nasbench201.Cell(nasbench201.parse_arch(arch), 16).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        y = cell(x)
    assert y.shape == x.shape and torch.count_nonzero(y) == 0


def test_nb201_dead_node_still_feeds_its_ops() -> None:
    cell = nasbench201.Cell(nasbench201.parse_arch(DEAD_NODE), 16).eval()
    x = torch.rand(2, 16, 8, 8)
    with torch.no_grad():
        y = cell(x)
    # node 2 = conv(0) = 0 with default BN stats, so node 3 = x + avgpool(0) = x.
    torch.testing.assert_close(y, x)


@pytest.mark.parametrize("arch", NB201_ARCHS)
def test_nb201_forward_shape(arch: str) -> None:
    entry = NASBench201(arch=arch)
    model = entry.build()
    assert not model.training
    x = entry.example_input()
    assert x.shape == (1, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (1, 10)
        assert model(torch.cat([x, x])).shape == (2, 10)


def test_nb201_build_is_deterministic_and_restores_rng() -> None:
    entry = NASBench201(arch=MIXED)
    state = torch.get_rng_state()
    a, b = entry.build().state_dict(), entry.build().state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nb201_is_fx_traceable() -> None:
    entry = NASBench201(arch=DEAD_NODE)
    model = entry.build()
    traced = torch.fx.symbolic_trace(model)
    x = entry.example_input()
    torch.testing.assert_close(traced(x), model(x))


# ---------------------------------------------------------------- FBNet


def test_fbnet_parse() -> None:
    kinds = fbnet.parse_arch(fbnet.DEFAULT_ARCH)
    assert len(kinds) == 22 and set(kinds) == set(fbnet.KINDS)  # FBNet-A uses all nine kinds
    assert fbnet.format_arch(kinds) == fbnet.DEFAULT_ARCH


@pytest.mark.parametrize(
    ("arch", "needle"),
    [
        ("-".join(["k3_e1"] * 21), "has 21 block kinds, not 22"),
        ("-".join(["k3_e1"] * 23), "has 23 block kinds, not 22"),
        ("-".join(["k3_e1"] * 21 + ["k7_e6"]), "unknown block kind 'k7_e6' at position 21"),
        ("-".join(["k3_e1"] * 21 + ["K3_E1"]), "unknown block kind 'K3_E1'"),
        ("-".join(["k3_e1"] * 10 + [""] + ["k3_e1"] * 11), "empty block kind at position 10"),
        ("", "empty block kind at position 0"),
        (",".join(["k3_e1"] * 22), "unknown block kind"),
    ],
)
def test_fbnet_parse_errors(arch: str, needle: str) -> None:
    with pytest.raises(ZooError) as err:
        fbnet.parse_arch(arch)
    assert needle in str(err.value)
    assert "k5_e1_g2" in str(err.value)  # lists the valid kinds


def test_fbnet_registry_and_default() -> None:
    entry = create_model("fbnet:" + FBNET_ALL_G2)
    assert isinstance(entry, FBNet) and entry.arch == FBNET_ALL_G2
    assert create_model("fbnet").arch == fbnet.DEFAULT_ARCH
    with pytest.raises(ZooError, match="unknown block kind 'k3'"):
        create_model("fbnet:k3")
    assert FBNet.has_weights is False and FBNet.args == ("arch",)


def expected_fbnet_params(arch: str) -> int:
    """Hand-derived: stem 3·16·9 + BN; per block; header 352·1504 + BN; fc 1504·100 + 100."""
    total = (3 * 16 * 9 + 2 * 16) + (352 * 1504 + 2 * 1504) + (1504 * 100 + 100)
    spec = {"k3": 3, "k5": 5}
    c_in = 16
    kinds = iter(fbnet.parse_arch(arch))
    for n, c_out, stride in zip(fbnet.STAGE_BLOCKS, fbnet.STAGE_CHANNELS, fbnet.CIFAR_STRIDES, strict=True):
        for i in range(n):
            kind = next(kinds)
            s = stride if i == 0 else 1
            if kind == "skip":
                total += 0 if (s == 1 and c_in == c_out) else c_in * c_out + 2 * c_out
            else:
                parts = kind.split("_")
                k, e, g = spec[parts[0]], int(parts[1][1:]), 2 if len(parts) == 3 else 1
                mid = c_in * e
                total += c_in * mid // g + 2 * mid + mid * k * k + 2 * mid + mid * c_out // g + 2 * c_out
            c_in = c_out
    return total


def test_fbnet_all_skip_params() -> None:
    # stem 464 + projections 432 + 832 + 2176 + 7392 + 20976 + 65472 + header 532416 + fc 150500.
    assert n_params(FBNet(arch=FBNET_ALL_SKIP).build()) == 780_660 == expected_fbnet_params(FBNET_ALL_SKIP)


@pytest.mark.parametrize("arch", FBNET_ARCHS)
def test_fbnet_params(arch: str) -> None:
    assert n_params(FBNet(arch=arch).build()) == expected_fbnet_params(arch)


def test_fbnet_a_imagenet_macs_match_paper() -> None:
    # Same blocks in FBNet's ImageNet setting (stride-2 stem and stage 1, 1984 header, 1000 classes):
    # the FBNet paper reports 249 M multiply-adds for FBNet-A; agreement checks block structure and arch.
    model = fbnet.FBNetNet(
        fbnet.parse_arch(fbnet.DEFAULT_ARCH),
        num_classes=1000,
        strides=(1, 2, 2, 2, 1, 2, 1),
        stem_stride=2,
        header_channels=1984,
    ).eval()
    macs = conv_linear_macs(model, torch.zeros(1, 3, 224, 224))
    assert macs == pytest.approx(249e6, rel=0.01)


def test_fbnet_block_structure() -> None:
    g2 = fbnet.make_block("k5_e1_g2", 24, 24, 1)
    assert isinstance(g2, fbnet.FBNetBlock) and g2.residual
    assert isinstance(g2.shuffle, fbnet.ChannelShuffle)
    assert g2.conv1.groups == 2 and g2.conv3.groups == 2 and g2.conv2.groups == 24
    assert g2.conv2.kernel_size == (5, 5) and g2.conv2.padding == (2, 2)
    e6 = fbnet.make_block("k3_e6", 32, 64, 2)
    assert isinstance(e6, fbnet.FBNetBlock) and not e6.residual
    assert e6.conv1.out_channels == 192 and e6.conv2.stride == (2, 2)
    assert isinstance(fbnet.make_block("skip", 24, 24, 1), fbnet.FBNetSkip)
    assert n_params(fbnet.make_block("skip", 24, 24, 1)) == 0
    with pytest.raises(ZooError, match="divisible by 2"):
        fbnet.make_block("k3_e1_g2", 15, 24, 1)


def test_channel_shuffle_interleaves() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    y = fbnet.ChannelShuffle(2)(x)
    assert y.flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


@pytest.mark.parametrize("arch", FBNET_ARCHS)
def test_fbnet_forward_shape(arch: str) -> None:
    entry = FBNet(arch=arch)
    model = entry.build()
    assert not model.training
    x = entry.example_input()
    assert x.shape == (1, 3, 32, 32)
    with torch.no_grad():
        assert model(torch.cat([x, x])).shape == (2, 100)


def test_fbnet_build_is_deterministic_and_restores_rng() -> None:
    entry = FBNet()
    state = torch.get_rng_state()
    a, b = entry.build().state_dict(), entry.build().state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fbnet_is_fx_traceable() -> None:
    entry = FBNet()
    model = entry.build()
    traced = torch.fx.symbolic_trace(model)
    x = entry.example_input()
    torch.testing.assert_close(traced(x), model(x))


# ---------------------------------------------------------------- fidelity evaluator


def test_photo_patches_are_fixed_real_images() -> None:
    a = _fidelity.photo_batch((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    b = _fidelity.photo_batch((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert a.shape == (64, 3, 32, 32) and torch.equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert (a.flatten(1).std(dim=1) > 0.01).all()  # every patch has content
    assert len({tuple(p.flatten()[:64].tolist()) for p in a}) == 64  # all distinct


@pytest.mark.parametrize(
    "entry",
    [NASBench201(arch=a) for a in (nasbench201.DEFAULT_ARCH, ALL_NONE, DEAD_NODE, DISCONNECTED_WITH_CONV)]
    + [FBNet(), FBNet(arch=FBNET_ALL_SKIP)],
    ids=lambda e: e.model_id,
)
def test_uncompressed_scores_one(entry: NASBench201 | FBNet) -> None:
    model = entry.build()
    q = entry.evaluate(model)
    assert q.metric == "logit_cosine" == entry.metric
    assert q.value == pytest.approx(1.0, abs=1e-6)
    assert q.extra["top1_agreement"] == 1.0 and q.extra["n_inputs"] == 64
    assert "not accuracy" in q.description


@pytest.mark.parametrize("entry", [NASBench201(arch=MIXED), FBNet(arch=FBNET_ALL_SKIP)], ids=lambda e: e.name)
def test_perturbed_model_scores_below_one(entry: NASBench201 | FBNet) -> None:
    model = copy.deepcopy(entry.build())
    model.train()  # evaluate must run in eval mode and give the mode back
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.add_(0.5 * p.std() * torch.randn_like(p))
    q = entry.evaluate(model)
    assert model.training
    assert -1.0 <= q.value < 0.999
    assert q.extra["min_cosine"] <= q.value


def test_evaluate_rejects_non_logits() -> None:
    entry = NASBench201(arch=ALL_NONE)
    with pytest.raises(ZooError, match="logits"):
        entry.evaluate(nn.Flatten(0))
