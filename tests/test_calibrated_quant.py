"""Calibrated quantisation on real models: MSE weight scales, static activation ranges from
calibration data, BatchNorm folding and bias correction, each against the uncalibrated path.

Calibration and evaluation never share a source: mobilenet-v2 calibrates on crops of 8 of the
zoo's 13 photos and is judged on crops of the other 5; digits-cnn calibrates on scikit-learn
digits' training split and is judged on its held-out split; minilm-l6 calibrates on some of its
sentences and is judged on others.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kernels import (
    QuantConfig,
    QuantizedLayer,
    fake_quant_activation,
    fold_batchnorm,
    low_rank,
    quantize,
    quantize_calibrated,
)
from kernels._observers import HistogramObserver, max_weight_scale, mse_weight_scale, weight_quant_error
from search_spaces import InputError, LayerKind
from workers.zoo import prepare
from workers.zoo._images import SOURCE_PHOTOS, calibration_images

GEMM = (LayerKind.CONV2D, LayerKind.DEPTHWISE_CONV2D, LayerKind.GROUPED_CONV2D, LayerKind.LINEAR)
CROPS_PER_PHOTO = 8
N_CALIBRATION = 32


@dataclass
class Split:
    """mobilenet-v2 with its photo crops split by source photo."""

    model: nn.Module
    example_input: torch.Tensor
    names: list[str]
    calibration: torch.Tensor  # crops of the calibration photos
    held_out: torch.Tensor  # crops of the other photos
    held_out_photos: list[str]


@pytest.fixture(scope="module")
def mobilenet() -> Split:
    p = prepare("mobilenet-v2", coupling=False)
    names = [spec.name for spec in p.layers if spec.kind in GEMM]
    crops = calibration_images(CROPS_PER_PHOTO * len(SOURCE_PHOTOS))
    source = torch.arange(crops.shape[0]) % len(SOURCE_PHOTOS)  # crop i comes from photo i % 13
    order = np.random.default_rng(0).permutation(len(SOURCE_PHOTOS))
    calib_photos, eval_photos = order[:8], order[8:]
    calib = crops[torch.isin(source, torch.from_numpy(calib_photos))]
    held = crops[torch.isin(source, torch.from_numpy(eval_photos))]
    assert set(calib_photos).isdisjoint(eval_photos)
    return Split(
        model=p.model,
        example_input=p.example_input,
        names=names,
        calibration=calib[:N_CALIBRATION].clone(),
        held_out=held.clone(),
        held_out_photos=[SOURCE_PHOTOS[i] for i in eval_photos],
    )


def _log_probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [F.log_softmax(model(images[i : i + 20]).double(), 1) for i in range(0, len(images), 20)]
        )


def _uncalibrated(model: nn.Module, names: list[str], wbits: int, abits: int) -> nn.Module:
    """Today's path: ``quantize`` on each layer (max|w| scales, dynamic activation ranges)."""
    out = copy.deepcopy(model)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, attr, quantize(out.get_submodule(name), wbits, abits))
    return out


def _calibrated(
    split: Split, wbits: int, abits: int, config: QuantConfig | None = None, n: int = N_CALIBRATION
) -> nn.Module:
    out = copy.deepcopy(split.model)
    quantize_calibrated(
        out,
        {name: (wbits, abits) for name in split.names},
        [split.calibration[:n]],
        split.example_input,
        config,
    )
    return out


@pytest.fixture(scope="module")
def calibrated_w4a8(mobilenet: Split) -> nn.Module:
    return _calibrated(mobilenet, 4, 8)


def test_calibrated_w8a8_and_w4a8_agree_more_with_the_float_model_on_held_out_photos(
    mobilenet: Split, calibrated_w4a8: nn.Module, record_property: pytest.RecordProperty
) -> None:
    reference = _log_probs(mobilenet.model, mobilenet.held_out)
    top1 = reference.argmax(1)
    n = len(top1)
    results = {}
    for wbits, abits in ((8, 8), (4, 8)):
        for kind, model in (
            ("uncalibrated", _uncalibrated(mobilenet.model, mobilenet.names, wbits, abits)),
            ("calibrated", calibrated_w4a8 if wbits == 4 else _calibrated(mobilenet, wbits, abits)),
        ):
            lp = _log_probs(model, mobilenet.held_out)
            agreement = float((lp.argmax(1) == top1).double().mean())
            kl = float((reference.exp() * (reference - lp)).sum(1).mean())
            results[f"W{wbits}A{abits} {kind}"] = (round(agreement, 3), round(kl, 4))
    record_property("agreement_kl", results)
    print(f"\nheld-out photos {mobilenet.held_out_photos}, n={n} crops, calibration n={N_CALIBRATION}:")
    for key, (agreement, kl) in results.items():
        print(f"  {key:18s} top-1 agreement {agreement:.3f}  KL {kl:.4f}")
    w4u, w4c = results["W4A8 uncalibrated"], results["W4A8 calibrated"]
    w8u, w8c = results["W8A8 uncalibrated"], results["W8A8 calibrated"]
    # Measured on 394 held-out crops of the same 5 photos (GPU, no TF32; 6 calibration subsets of
    # 32 or 64 crops): agreement W8A8 0.807 -> 0.835-0.881 (KL 0.082 -> 0.050-0.058), W4A8
    # 0.124 -> 0.612-0.642 (KL 4.18 -> 0.83-0.85). At n = 40 one crop is 0.025, and W8A8's
    # agreement moves by several crops with any small change of the ranges (seen here: 0.825
    # and 1.000 for two histogram resolutions, KL 0.047 and 0.043), so W8A8 is held to the KL
    # divergence, the measure that does not flip on near-ties, and a floor.
    assert w4c[0] >= w4u[0] + 0.25 and w4c[1] < 0.5 * w4u[1]
    assert w8c[1] < w8u[1]
    assert w8c[0] >= 0.75 and w4c[0] >= 0.5


def test_mse_weight_scales_never_lose_to_max_scales_on_any_layer(mobilenet: Split) -> None:
    strictly_better = 0
    for name in mobilenet.names:
        weight = mobilenet.model.get_submodule(name).weight.detach()
        for bits in (4, 8):
            e_max = weight_quant_error(weight, max_weight_scale(weight, bits), bits)
            e_mse = weight_quant_error(weight, mse_weight_scale(weight, bits), bits)
            assert torch.all(e_mse <= e_max * (1 + 1e-6)), (name, bits)  # per channel, every layer
            if bits == 4 and e_mse.sum() < 0.95 * e_max.sum():
                strictly_better += 1
    assert strictly_better >= 0.9 * len(mobilenet.names)


@pytest.fixture(scope="module")
def layer_inputs(mobilenet: Split) -> dict[str, torch.Tensor]:
    """Each quantisable layer's input on 4 held-out crops, from the float model."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        mobilenet.model.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: inputs.__setitem__(name, args[0].detach().clone())
        )
        for name in mobilenet.names
    ]
    try:
        with torch.no_grad():
            mobilenet.model(mobilenet.held_out[::10][:4])
    finally:
        for h in hooks:
            h.remove()
    return inputs


def _layers(model: nn.Module, names: list[str]) -> Iterator[tuple[str, QuantizedLayer]]:
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, QuantizedLayer)
        yield name, layer


def test_static_calibrated_input_ranges_beat_dynamic_ranges_at_4_bits(
    mobilenet: Split, layer_inputs: dict[str, torch.Tensor]
) -> None:
    model = _calibrated(mobilenet, 32, 4, n=16)  # activations only: weights untouched
    wins, ratios = 0, {}
    for name, layer in _layers(model, mobilenet.names):
        assert layer.static and layer.act_range is not None
        x = layer_inputs[name]
        with torch.no_grad():
            y = layer.inner(x)
            static = (layer(x) - y).pow(2).mean().item()
            # Dynamic, as deployed: each input quantised on its own min/max (batch size 1).
            dynamic = (
                torch.stack(
                    [
                        (layer.inner(fake_quant_activation(x[i : i + 1], 4)) - y[i : i + 1]).pow(2).mean()
                        for i in range(len(x))
                    ]
                )
                .mean()
                .item()
            )
        ratios[name] = round(static / dynamic, 2)
        wins += static < dynamic
    print(
        f"\nstatic (MSE observer) beats dynamic at A4 on {wins} of {len(ratios)} layers; "
        f"static/dynamic error: {ratios}"
    )
    # Measured 41 of 53; static loses on the last stage (features.14-17), whose inputs on the
    # held-out photos reach far past the calibration photos' range.
    assert wins >= 0.6 * len(ratios)


@pytest.mark.parametrize("name", ["features.2.conv.1.0", "features.17.conv.0.0"])
def test_histogram_observer_percentiles_match_the_exact_ones(
    layer_inputs: dict[str, torch.Tensor], name: str
) -> None:
    x = layer_inputs[name]
    observer = HistogramObserver(max_samples=1 << 16)  # strided sampling and range doubling both run
    for i in sorted(range(len(x)), key=lambda i: float(x[i].abs().max())):  # smallest range first
        observer.update(x[i])
    flat = x.flatten()
    assert observer.min == float(flat.min()) and observer.max == float(flat.max())
    spread = float(flat.max() - flat.min())
    for q in (0.001, 0.5, 0.999):
        exact = float(flat.kthvalue(max(1, round(q * flat.numel()))).values)
        assert abs(observer.quantile(q) - exact) < 0.01 * spread, q


def test_bias_correction_lowers_the_output_error_of_4_bit_weights(
    mobilenet: Split, calibrated_w4a8: nn.Module, layer_inputs: dict[str, torch.Tensor]
) -> None:
    folded = copy.deepcopy(mobilenet.model)
    fold_batchnorm(folded, mobilenet.example_input)
    corrected = calibrated_w4a8
    plain = _calibrated(mobilenet, 4, 8, QuantConfig(bias_correction=False))
    mean_error = {"corrected": 0.0, "plain": 0.0}
    mse = {"corrected": 0.0, "plain": 0.0}
    better = 0
    for name in mobilenet.names:
        x = layer_inputs[name]
        with torch.no_grad():
            y = folded.get_submodule(name)(x)
            errors = {}
            for key, model in (("corrected", corrected), ("plain", plain)):
                diff = (model.get_submodule(name)(x) - y).double()
                per_channel = (
                    diff.transpose(0, 1).reshape(diff.shape[1], -1).mean(1)
                    if diff.dim() == 4
                    else diff.mean(0)
                )
                errors[key] = per_channel.pow(2).mean().item()
                mean_error[key] += errors[key]
                mse[key] += diff.pow(2).mean().item()
        better += errors["corrected"] < errors["plain"]
    print(
        f"\nbias correction: mean-output error {mean_error}, output MSE {mse}, "
        f"better on {better} of {len(mobilenet.names)} layers"
    )
    # Measured (W4A8): mean-output error 0.143 -> 0.041, output MSE 0.189 -> 0.087, 34 of 53 layers.
    assert mean_error["corrected"] < 0.5 * mean_error["plain"]
    assert mse["corrected"] < mse["plain"]
    assert better > 0.5 * len(mobilenet.names)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def test_batchnorm_folding_is_exact_on_mobilenet_v2(mobilenet: Split) -> None:
    model = copy.deepcopy(mobilenet.model)
    pairs = fold_batchnorm(model, mobilenet.example_input)
    assert len(pairs) == 52 and ("features.0.0", "features.0.1") in pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = mobilenet.held_out[:3]
    with torch.no_grad():
        assert _max_diff(mobilenet.model(x), model(x)) < 1e-5


def test_batchnorm_folding_is_exact_on_digits_cnn_also_inside_a_low_rank_conv() -> None:
    from workers.zoo.digits import digits_split

    p = prepare("digits-cnn", coupling=False)
    x = digits_split()[2]
    model = copy.deepcopy(p.model)
    assert fold_batchnorm(model, p.example_input) == [
        ("conv1", "bn1"),
        ("conv2", "bn2"),
        ("conv3", "bn3"),
        ("conv4", "bn4"),
    ]
    with torch.no_grad():
        assert _max_diff(p.model(x), model(x)) < 1e-5
    # After low rank (apply's order): the BN folds into the second factor.
    factored = copy.deepcopy(p.model)
    factored.conv2 = low_rank(factored.conv2, 16)
    with torch.no_grad():
        before = factored(x)
    pairs = fold_batchnorm(factored, p.example_input)
    assert ("conv2.1", "bn2") in pairs and isinstance(factored.bn2, nn.Identity)
    with torch.no_grad():
        assert _max_diff(before, factored(x)) < 1e-5


def test_calibrated_digits_cnn_w4a4_keeps_more_accuracy() -> None:
    from workers.zoo.digits import digits_split

    p = prepare("digits-cnn", coupling=False)
    x_train, _, x_test, y_test = digits_split()
    names = [s.name for s in p.layers if s.kind in GEMM]

    def accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(x_test).argmax(1) == y_test).double().mean())

    calibrated = copy.deepcopy(p.model)
    report = quantize_calibrated(
        calibrated, {n: (4, 4) for n in names}, [x_train[:128], x_train[128:256]], p.example_input
    )
    assert report.n_inputs == 256 and len(report.folded) == 4 and set(report.layers) == set(names)
    float_acc, cal_acc = accuracy(p.model), accuracy(calibrated)
    uncal_acc = accuracy(_uncalibrated(p.model, names, 4, 4))
    print(
        f"\ndigits-cnn W4A4 on {len(y_test)} held-out digits: float {float_acc:.3f}, "
        f"uncalibrated {uncal_acc:.3f}, calibrated {cal_acc:.3f}"
    )
    assert cal_acc >= uncal_acc and cal_acc >= float_acc - 0.02


def test_a_model_without_batchnorm_folds_nothing_and_calibrates_on_sentences_of_any_length() -> None:
    from workers.zoo.minilm import encode, load_sentences

    p = prepare("minilm-l6", coupling=False)
    model = copy.deepcopy(p.model)
    assert fold_batchnorm(model, p.example_input) == []
    names = [s.name for s in p.layers if s.kind is LayerKind.LINEAR]
    sentences = load_sentences()
    report = quantize_calibrated(
        model, {n: (8, 8) for n in names}, [encode(s) for s in sentences[:8]], p.example_input
    )
    assert report.folded == [] and report.n_batches == 8
    assert all(info.act_range is not None for info in report.layers.values())
    with torch.no_grad():
        cos = [
            F.cosine_similarity(p.model(encode(s)).flatten(), model(encode(s)).flatten(), dim=0).item()
            for s in sentences[100:110]
        ]
    assert min(cos) > 0.97


def test_uncalibrated_quantize_is_unchanged_and_dynamic() -> None:
    layer = nn.Linear(16, 8)
    weight = layer.weight.detach().clone()
    q = quantize(layer, 8, 8)
    assert isinstance(q, QuantizedLayer) and not q.static
    scale = weight.abs().amax(1, keepdim=True) / 127
    assert torch.equal(q.inner.weight.detach(), torch.clamp(torch.round(weight / scale), -127, 127) * scale)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"act_observer": "histogram"}, "act_observer"),
        ({"weight_observer": "minmax"}, "weight_observer"),
        ({"percentile": 30.0}, "percentile"),
        ({"weight_steps": 0}, "weight_steps"),
        ({"histogram_bins": 7}, "histogram_bins"),
        ({"gptq_damp": 0.0}, "gptq_damp"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as err:
        QuantConfig(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_bad_calibration_inputs_are_named() -> None:
    from workers.zoo.digits import digits_split

    p = prepare("digits-cnn", coupling=False)
    x = digits_split()[0][:16]
    with pytest.raises(InputError, match="plan_bits"):
        quantize_calibrated(copy.deepcopy(p.model), {"conv9": (8, 8)}, [x], p.example_input)
    with pytest.raises(InputError, match=r"plan_bits\['conv1'\]\.wbits"):
        quantize_calibrated(copy.deepcopy(p.model), {"conv1": (1, 8)}, [x], p.example_input)
    with pytest.raises(InputError, match="calibration"):
        quantize_calibrated(copy.deepcopy(p.model), {"conv1": (8, 8)}, [], p.example_input)
    with pytest.raises(TypeError, match="MaxPool2d"):
        quantize_calibrated(copy.deepcopy(p.model), {"pool": (8, 8)}, [x], p.example_input)
    # Nothing to calibrate (16 and 32 bits) needs no data.
    model = copy.deepcopy(p.model)
    report = quantize_calibrated(model, {"conv1": (16, 16), "conv2": (32, 32)}, [], p.example_input)
    assert isinstance(model.conv1, QuantizedLayer) and isinstance(model.conv2, nn.Conv2d)
    assert set(report.layers) == {"conv1"}
