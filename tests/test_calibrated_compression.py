"""Calibrated compression on real models: data-aware low rank, adaptive BatchNorm, pruning that
sees activations. Calibration and evaluation inputs never overlap: digits-cnn calibrates on
training images and is scored on the held-out test split; mobilenet-v2 calibrates on crops of
some source photos and is scored on crops of the others (split by photo, never by crop).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kernels import (
    InputStats,
    apply,
    calibrate_low_rank,
    full_rank,
    input_statistics,
    low_rank,
    low_rank_calibrated,
    prune_channels,
    recalibrate_batchnorm,
)
from search_spaces import Choice, Plan
from workers.zoo import prepare
from workers.zoo._images import SOURCE_PHOTOS, calibration_images
from workers.zoo.digits import digits_split


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).pow(2).sum() / ref.pow(2).sum())


def _inputs_of(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    got: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda _m, a: got.append(a[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return got[0]


def _ranks(prepared, frac: float) -> dict[str, int]:
    return {
        layer.name: max(1, round(frac * layer.full_rank)) for layer in prepared.layers if layer.decomposable
    }


# --------------------------------------------------------------------------- digits-cnn


@pytest.fixture(scope="module")
def digits():
    p = prepare("digits-cnn")
    x_train, _, x_test, y_test = digits_split()
    calibration = list(x_train[:256].split(64))  # real training digits, never scored
    return p, calibration, x_test, y_test


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("name", ["fc1", "fc2", "conv2", "conv3"])
def test_whitened_low_rank_beats_plain_svd_on_calibration_and_held_out_inputs(digits, name: str) -> None:
    p, calibration, x_test, _ = digits
    layer = p.model.get_submodule(name)
    rank = max(1, full_rank(layer) // 4)
    x_cal = _inputs_of(p.model, name, torch.cat(calibration))
    x_held = _inputs_of(p.model, name, x_test)
    plain = low_rank(layer, rank)
    white = low_rank_calibrated(layer, rank, x_cal)
    assert type(white) is type(plain)
    assert [m.weight.shape for m in white] == [m.weight.shape for m in plain]
    with torch.no_grad():
        errors = {
            split: (_rel(plain(x), layer(x)), _rel(white(x), layer(x)))
            for split, x in (("calibration", x_cal), ("held-out", x_held))
        }
    print(f"{name} rank {rank}: relative output error plain/whitened {errors}")
    # Linear: optimal on the calibration inputs (up to the tiny ridge). k×k conv: the Kronecker
    # approximation of the patch covariance is not exact, but still far better here.
    for plain_err, white_err in errors.values():
        assert white_err < plain_err
    if name != "fc2":  # the 10-class head at rank 2 loses much either way
        assert errors["held-out"][1] < 0.5 * errors["held-out"][0]


def test_full_rank_whitened_factorisation_reproduces_the_layer(digits) -> None:
    p, calibration, x_test, _ = digits
    for name in ("fc1", "conv3"):
        layer = p.model.get_submodule(name)
        op = low_rank_calibrated(layer, full_rank(layer), _inputs_of(p.model, name, torch.cat(calibration)))
        x = _inputs_of(p.model, name, x_test)
        with torch.no_grad():
            assert _rel(op(x), layer(x)) < 1e-6


def test_digits_uniform_rank_quarter_calibrated_beats_plain(digits) -> None:
    p, calibration, x_test, y_test = digits
    ranks = _ranks(p, 0.25)
    base = _accuracy(p.model, x_test, y_test)
    plain = _accuracy(
        apply(p.model, Plan({n: Choice(rank=r) for n, r in ranks.items()}), p.example_input), x_test, y_test
    )

    independent = copy.deepcopy(p.model).eval()
    calibrate_low_rank(independent, ranks, calibration)
    independent_acc = _accuracy(independent, x_test, y_test)
    bn = recalibrate_batchnorm(independent, calibration)
    independent_bn_acc = _accuracy(independent, x_test, y_test)

    sequential = copy.deepcopy(p.model).eval()
    notes: list[str] = []
    ops = calibrate_low_rank(sequential, ranks, calibration, reference=copy.deepcopy(p.model), notes=notes)
    sequential_acc = _accuracy(sequential, x_test, y_test)

    no_head = {n: r for n, r in ranks.items() if n != "fc2"}
    body = copy.deepcopy(p.model).eval()
    calibrate_low_rank(body, no_head, calibration, reference=copy.deepcopy(p.model))
    body_acc = _accuracy(body, x_test, y_test)
    plain_body = _accuracy(
        apply(p.model, Plan({n: Choice(rank=r) for n, r in no_head.items()}), p.example_input), x_test, y_test
    )
    print(
        f"digits-cnn rank 0.25 {ranks}, held-out accuracy on {len(y_test)} (base {base:.3f}): plain SVD "
        f"{plain:.3f}, whitened {independent_acc:.3f}, whitened + adaptive BN ({bn} BN) "
        f"{independent_bn_acc:.3f}, sequential whitened {sequential_acc:.3f}; without the 10-class "
        f"head at rank 2: plain {plain_body:.3f}, sequential whitened {body_acc:.3f}"
    )
    assert bn == 4
    assert set(ops) == set(ranks)
    assert plain < 0.2
    assert independent_bn_acc > plain + 0.1
    assert sequential_acc > plain + 0.3
    # Everything but the classifier at rank 2 of 10: within a few points of the model.
    assert body_acc > base - 0.05 and body_acc > plain_body + 0.05


def test_digits_pruning_with_activation_importance_and_adaptive_bn(digits) -> None:
    p, calibration, x_test, y_test = digits
    plan = Plan.uniform(p.layers, Choice(keep=0.75))
    keep = {n: c.keep for n, c in plan.choices.items() if c.keep < 1.0}
    with torch.no_grad():
        ref = p.model(x_test)

    def pruned(**kwargs) -> nn.Module:
        model = copy.deepcopy(p.model).eval()
        prune_channels(model, p.example_input, keep, **kwargs)
        return model

    today = pruned()
    weight_bn = pruned()
    recalibrate_batchnorm(weight_bn, calibration)
    calibrated = pruned(calibration=calibration)
    assert recalibrate_batchnorm(calibrated, calibration) == 4
    results = {
        name: (_accuracy(m, x_test, y_test), _rel(m(x_test).detach(), ref))
        for name, m in (("weight norm", today), ("weight + BN", weight_bn), ("activation + BN", calibrated))
    }
    print(f"digits-cnn keep 0.75, held-out (accuracy, relative logit error) on {len(y_test)}: {results}")
    assert results["activation + BN"][0] > results["weight norm"][0] + 0.2
    assert results["activation + BN"][1] < results["weight + BN"][1]
    assert results["activation + BN"][0] >= results["weight + BN"][0]


def test_pruning_puts_the_removed_mean_into_the_next_bias(digits) -> None:
    # fc1 feeds fc2 through a ReLU and no BatchNorm: fc2's bias absorbs what fc1's pruned
    # outputs contributed on average.
    p, calibration, x_test, _ = digits
    with torch.no_grad():
        ref = p.model(x_test)
    errors = {}
    for compensate in (False, True):
        model = copy.deepcopy(p.model).eval()
        prune_channels(model, p.example_input, {"fc1": 0.5}, calibration=calibration, compensate=compensate)
        assert model.fc1.out_features == 64 and model.fc2.in_features == 64
        bias_moved = not torch.equal(model.fc2.bias, p.model.fc2.bias)
        assert bias_moved is compensate
        with torch.no_grad():
            errors[compensate] = _rel(model(x_test), ref)
    print(f"fc1 keep 0.5, held-out relative logit error without/with mean compensation: {errors}")
    assert errors[True] < errors[False]


def test_recalibrate_batchnorm_takes_the_calibration_statistics_and_restores_modes(digits) -> None:
    p, calibration, _, _ = digits
    model = copy.deepcopy(p.model).train()
    model.fc1.train(False)
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    batch = torch.cat(calibration)
    assert recalibrate_batchnorm(model, [batch]) == 4
    conv1_out = _inputs_of(copy.deepcopy(model).eval(), "bn1", batch)
    assert torch.allclose(model.bn1.running_mean, conv1_out.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.bn1.running_var, conv1_out.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert model.training and not model.fc1.training and model.bn1.training
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == momenta


def test_recalibrate_batchnorm_without_batchnorm_returns_zero() -> None:
    vit = prepare("digits-vit")  # LayerNorm only
    before = {k: v.clone() for k, v in vit.model.state_dict().items()}
    x_train = digits_split()[0]
    assert recalibrate_batchnorm(vit.model, [x_train[:32]]) == 0
    assert all(torch.equal(before[k], v) for k, v in vit.model.state_dict().items())


def test_tiny_calibration_set_grows_the_regulariser_and_says_so(digits) -> None:
    p, _, x_test, _ = digits
    x_train = digits_split()[0]
    layer = p.model.fc1  # 64 inputs; 16 calibration images are 16 samples
    x_cal = _inputs_of(p.model, "fc1", x_train[:16])
    notes: list[str] = []
    op = low_rank_calibrated(layer, 16, x_cal, notes=notes, name="fc1")
    assert len(notes) == 1 and "fc1" in notes[0] and "16 calibration samples" in notes[0]
    assert "width of 64" in notes[0] and "grown" in notes[0]
    x_held = _inputs_of(p.model, "fc1", x_test)
    with torch.no_grad():
        plain_err = _rel(low_rank(layer, 16)(x_held), layer(x_held))
        white_err = _rel(op(x_held), layer(x_held))
    assert torch.isfinite(op[0].weight).all() and white_err < plain_err
    # Enough samples: no note.
    notes.clear()
    low_rank_calibrated(layer, 16, _inputs_of(p.model, "fc1", x_train[:256]), notes=notes)
    assert notes == []


def test_bad_calibration_inputs_are_named(digits) -> None:
    p, calibration, _, _ = digits
    with pytest.raises(ValueError, match="calibration"):
        recalibrate_batchnorm(copy.deepcopy(p.model), [])
    with pytest.raises(ValueError, match="in_features=64"):
        low_rank_calibrated(p.model.fc1, 4, torch.zeros(8, 32))
    stats = input_statistics(p.model, ["fc1"], calibration)["fc1"]
    with pytest.raises(ValueError, match="weight shape"):
        low_rank_calibrated(p.model.fc2, 4, stats)
    with pytest.raises(ValueError, match="rank"):
        low_rank_calibrated(p.model.fc1, 0, stats)
    assert isinstance(stats, InputStats) and stats.seen == 256


# --------------------------------------------------------------------------- mobilenet-v2

_CROPS_PER_PHOTO = 12
_CALIBRATION_PHOTOS = SOURCE_PHOTOS[::2]  # 7 photos; the other 6 are held out


@pytest.fixture(scope="module")
def mobilenet():
    p = prepare("mobilenet-v2")
    n = _CROPS_PER_PHOTO * len(SOURCE_PHOTOS)
    images = calibration_images(n)  # image i is a crop of photo i % 13
    source = torch.arange(n) % len(SOURCE_PHOTOS)
    calib_mask = torch.tensor([SOURCE_PHOTOS[int(s)] in _CALIBRATION_PHOTOS for s in source])
    calibration = list(images[calib_mask].split(32))
    held_out = images[~calib_mask][:48]
    with torch.no_grad():
        ref = p.model(held_out)
    return p, calibration, held_out, ref


def test_whitened_pointwise_conv_is_optimal_on_calibration_inputs(mobilenet) -> None:
    p, calibration, held_out, _ = mobilenet
    name = "features.4.conv.2"  # 1×1 projection conv, 144 → 32
    layer = p.model.get_submodule(name)
    x_cal = _inputs_of(p.model, name, calibration[0])
    x_held = _inputs_of(p.model, name, held_out[:16])
    white = low_rank_calibrated(layer, 16, x_cal)
    plain = low_rank(layer, 16)
    with torch.no_grad():
        cal = (_rel(plain(x_cal), layer(x_cal)), _rel(white(x_cal), layer(x_cal)))
        held = (_rel(plain(x_held), layer(x_held)), _rel(white(x_held), layer(x_held)))
    print(f"{name} rank 16: relative output error plain/whitened: calibration {cal}, held-out photos {held}")
    assert cal[1] < cal[0] and held[1] < 0.5 * held[0]


def test_mobilenet_rank_half_calibrated_agrees_more_than_plain_svd(mobilenet) -> None:
    p, calibration, held_out, ref = mobilenet
    ranks = _ranks(p, 0.5)
    plain = copy.deepcopy(p.model).eval()
    for name, rank in ranks.items():
        parent, _, child = name.rpartition(".")
        setattr(
            plain.get_submodule(parent) if parent else plain, child, low_rank(plain.get_submodule(name), rank)
        )
    calibrated = copy.deepcopy(p.model).eval()
    notes: list[str] = []
    calibrate_low_rank(calibrated, ranks, calibration, reference=p.model, notes=notes)
    with torch.no_grad():
        out_plain, out_cal = plain(held_out), calibrated(held_out)
    agree = {
        "plain": float((out_plain.argmax(1) == ref.argmax(1)).float().mean()),
        "calibrated": float((out_cal.argmax(1) == ref.argmax(1)).float().mean()),
    }
    err = {"plain": _rel(out_plain, ref), "calibrated": _rel(out_cal, ref)}
    n_cal = sum(len(b) for b in calibration)
    print(
        f"mobilenet-v2 rank 50% on {len(ranks)} layers, calibrated on {n_cal} crops of "
        f"{len(_CALIBRATION_PHOTOS)} photos, held out {len(held_out)} crops of other photos: top-1 "
        f"agreement {agree}, relative logit error {err}; notes {notes}"
    )
    assert any("classifier.1" in n for n in notes)  # 1280 inputs, fewer calibration images
    assert err["calibrated"] < 0.6 * err["plain"]
    assert agree["calibrated"] > agree["plain"]


# --------------------------------------------------------------------------- minilm-l6


def test_minilm_ffn_pruning_with_activations_keeps_the_embeddings_closer() -> None:
    # No BatchNorm in a transformer: fc2's bias absorbs the mean of the removed GELU outputs.
    from workers.zoo.minilm import encode, load_sentences

    p = prepare("minilm-l6")
    sentences = load_sentences()
    calibration = [encode(s) for s in sentences[:48]]  # one sentence per batch, as the model runs
    held_out = [encode(s) for s in sentences[-48:]]
    keep = {layer.name: 0.5 for layer in p.layers if layer.prunable and layer.name.endswith("fc1")}
    with torch.no_grad():
        ref = torch.cat([p.model(x) for x in held_out]).double()

    def cosine(**kwargs) -> float:
        model = copy.deepcopy(p.model).eval()
        prune_channels(model, p.example_input, keep, **kwargs)
        with torch.no_grad():
            out = torch.cat([model(x) for x in held_out]).double()
        return float(nn.functional.cosine_similarity(out, ref, dim=1).mean())

    weight, calibrated = cosine(), cosine(calibration=calibration)
    print(
        f"minilm-l6 FFN keep 0.5 on {len(keep)} blocks, calibrated on {len(calibration)} sentences, "
        f"mean cosine on {len(held_out)} other sentences: weight norm {weight:.3f}, activations + "
        f"mean compensation {calibrated:.3f}"
    )
    assert calibrated > weight + 0.1
