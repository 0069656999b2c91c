"""Calibrating a target from per-network measurements, end to end through the CLI."""

from __future__ import annotations

import csv
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from latency_models import FEATURE_NAMES, Predictor, list_targets, register_predictor
from latency_models._predictor import PREDICTORS
from search_spaces import Plan
from service.cli import app, uniform_plan

runner = CliRunner()


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HWSEARCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def _synthetic_csv(path: Path, n: int, seed: int) -> None:
    """A 'device' that runs 2.5× slower than the raspi4 prior plus 0.4 ms, with 2% noise,
    measured on digits-cnn plans (low-rank and quantized variants)."""
    from kernels import trace
    from latency_models import get_target, predict
    from search_spaces import Space
    from workers.zoo import create_model

    entry = create_model("digits-cnn")
    layers = trace(entry.build(), entry.example_input(), coupling=False)
    space = Space.build(layers, rank_fractions=(0.1, 0.25, 0.5), wbits=(8,), abits=(8,), rank_multiple=1)
    rng = np.random.default_rng(seed)
    target = get_target("raspi4")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "plan", "latency_ms"])
        for _ in range(n):
            plan = space.sample(rng)
            latency = (2.5 * predict(target, layers, plan).latency_ms + 0.4) * np.exp(rng.normal(0, 0.02))
            writer.writerow(["digits-cnn", json.dumps(plan.to_dict()), f"{latency:.6f}"])


def test_fit_validate_predict_round_trip(data_dir: Path, tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    _synthetic_csv(train, 60, seed=0)
    _synthetic_csv(test, 30, seed=1)
    result = runner.invoke(
        app,
        ["latency", "fit", "--target", "my-phone", "--family", "cpu", "--measurements", str(train), "--json"],
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n_train"] + report["n_test"] == 60 and report["n_fit"] == 60
    assert report["mape"] < 0.05  # the synthetic device is 2.5 × prior + 0.4 ms
    assert report["mape"] < report["baselines"]["analytic_prior"]["mape"]
    assert (data_dir / "targets" / "my-phone.json").exists()
    # The held-out pairs the dashboard plots are the rows the report's numbers come from.
    held = report["holdout"]
    measured, predicted = np.array(held["measured_ms"]), np.array(held["predicted_ms"])
    assert len(measured) == report["n_test"] == held["n_total"]
    assert np.mean(np.abs(predicted - measured) / measured) == pytest.approx(report["mape"])

    result = runner.invoke(
        app, ["latency", "validate", "--target", "my-phone", "--measurements", str(test), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"n_train", "n_test", "mape", "within_10pct", "spearman", "kendall"}
    assert report["n_test"] == 30 and report["within_10pct"] > 0.9
    assert report["interval_coverage"] >= 0.6  # of an 80% interval; 0.47 before held-out folds

    result = runner.invoke(
        app, ["predict", "digits-cnn", "--target", "my-phone", "--uniform", "wbits=8", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["provenance"].startswith("learned (fitted on 60 measurements, validation MAPE")
    assert out["latency_ms"]["after_low"] <= out["latency_ms"]["after"] <= out["latency_ms"]["after_high"]


@pytest.mark.parametrize(
    "csv_text,fragment",
    [
        ("model,latency_ms\ndigits-cnn,1\nresnet-9000,2\ndigits-cnn,3\n", "row 3, column 'model'"),
        (
            'model,plan,latency_ms\ndigits-cnn,,1\ndigits-cnn,"{""layers"": {""fc2"": {""rank"": 99}}}",2\n'
            "digits-cnn,,3\n",
            "row 3, column 'plan'",
        ),
        ("model,latency_ms\ndigits-cnn,1\ndigits-cnn,-2\ndigits-cnn,3\n", "row 3, column 'latency_ms'"),
    ],
)
def test_bad_csv_is_refused_and_nothing_is_written(
    data_dir: Path, tmp_path: Path, csv_text: str, fragment: str
) -> None:
    path = tmp_path / "m.csv"
    path.write_text(csv_text)
    result = runner.invoke(
        app, ["latency", "fit", "--target", "new-board", "--family", "fpga", "--measurements", str(path)]
    )
    assert result.exit_code == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert not (data_dir / "targets" / "new-board.json").exists()
    assert not (data_dir / "predictors").exists()


def test_validate_without_a_fit_says_what_to_do(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("model,latency_ms\ndigits-cnn,1\n")
    result = runner.invoke(app, ["latency", "validate", "--target", "raspi4", "--measurements", str(path)])
    assert result.exit_code == 2 and "latency fit" in result.stderr


def test_profile_host_measures_writes_and_fits(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "host.csv"
    result = runner.invoke(
        app,
        [
            "latency",
            "profile-host",
            "--models",
            "digits-cnn",
            "--plans",
            "4",
            "--repeats",
            "3",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["target"] == "host-cpu" and report["n_fit"] == 4
    from latency_models import read_network_measurements

    rows = read_network_measurements(out)  # the written table is in the documented format
    assert len(rows) == 4 and all(r.latency_ms > 0 for r in rows) and rows[0].plan.choices == {}
    host = json.loads((data_dir / "targets" / "host-cpu.json").read_text())
    assert (
        host["peak_macs_per_s"]["32"] > 1e8
        and "measured by workers.profiling" in host["sources"]["peak_macs_per_s"]
    )
    # `hwsearch targets` reads the data dir's catalogue, as the API and the dashboard do: a CLI
    # process that never fitted host-cpu itself still lists it.
    from latency_models._target import TARGETS

    TARGETS.unregister("host-cpu")
    listed = runner.invoke(app, ["targets", "--json"])
    assert listed.exit_code == 0, listed.stderr
    host_rows = [t for t in json.loads(listed.stdout) if t["name"] == "host-cpu"]
    assert len(host_rows) == 1 and host_rows[0]["description"] == "this machine's CPU, one thread, measured"
    result = runner.invoke(app, ["latency", "profile-host", "--models", "resnet-9000"])
    assert result.exit_code == 2 and "valid names" in result.stderr


# ------------------------------------------------------------------ per-layer tables

# The synthetic device of the per-layer tests: every conv kind runs at 3× the cortex-a76 prior,
# linears and attention at 2×, each GEMM launch adds 0.03 ms, a pooling layer takes 0.02 ms;
# each layer measured with 3% log-normal noise. A network on it costs the sum of its layers
# (no per-network overhead).
LAYER_SCALE = {
    "conv_kxk": 3.0,
    "conv_1x1": 3.0,
    "depthwise": 3.0,
    "grouped": 3.0,
    "linear": 2.0,
    "attention": 2.0,
}
POOL_MS = 0.02
LAUNCH_MS = 0.03
LAYER_COLUMNS = [
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
    "rank",
    "keep",
    "wbits",
    "abits",
    "latency_ms",
]
NB201_ALL_CONV3 = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
)
NB201_ALL_CONV1 = (
    "|nor_conv_1x1~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|nor_conv_1x1~0|nor_conv_1x1~1|nor_conv_1x1~2|"
)
NB201_ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
FBNET = {kind: "-".join([kind] * 22) for kind in ("skip", "k3_e1", "k3_e3", "k3_e6", "k5_e6", "k3_e1_g2")}


def _device_truth(features: np.ndarray) -> np.ndarray:
    """Latency of feature rows on the synthetic per-layer device (noise-free)."""
    from latency_models import FEATURE_NAMES

    total = POOL_MS * features[..., FEATURE_NAMES.index("pooling_count")]
    for group, scale in LAYER_SCALE.items():
        total = total + scale * features[..., FEATURE_NAMES.index(f"{group}_prior_ms")]
        total = total + LAUNCH_MS * features[..., FEATURE_NAMES.index(f"{group}_count")]
    return total


def _random_layer(rng: np.random.Generator, i: int) -> tuple[Any, Any]:
    """A random measured layer (every kind the priors cost, and pooling) with a random choice."""
    from search_spaces import Choice, LayerKind, LayerSpec

    kind = LayerKind(
        rng.choice(
            [
                "conv2d",
                "conv2d",
                "depthwise_conv2d",
                "grouped_conv2d",
                "linear",
                "linear",
                "attention",
                "pooling",
            ]
        )
    )
    name = f"l{i}"
    hw, stride = int(rng.choice([8, 16, 32])), int(rng.choice([1, 2]))
    if kind in (LayerKind.CONV2D, LayerKind.DEPTHWISE_CONV2D, LayerKind.GROUPED_CONV2D):
        k = int(rng.choice([1, 3, 5])) if kind is LayerKind.CONV2D else int(rng.choice([3, 5]))
        c_in = int(rng.choice([16, 32, 64, 128]))
        c_out = int(rng.choice([16, 32, 64, 128])) if kind is LayerKind.CONV2D else c_in
        groups = {LayerKind.DEPTHWISE_CONV2D: c_in, LayerKind.GROUPED_CONV2D: 2}.get(kind, 1)
        # The documented semantics of a per-layer row: the layer is its own coupled group, so
        # ``keep`` prunes its output channels.
        layer = LayerSpec(
            name, kind, c_in, c_out, (k, k), (stride, stride), groups, (hw, hw), (hw // stride, hw // stride),
            group=name, prunable=True, decomposable=kind is LayerKind.CONV2D,
        )  # fmt: skip
    elif kind is LayerKind.LINEAR:
        layer = LayerSpec(
            name, kind, int(rng.choice([64, 256, 1024])), int(rng.choice([10, 64, 256, 1024])),
            tokens=int(rng.choice([1, 65, 197])), group=name, prunable=True, decomposable=True,
        )  # fmt: skip
    elif kind is LayerKind.ATTENTION:
        d = int(rng.choice([64, 192, 384]))
        layer = LayerSpec(name, kind, d, d, tokens=int(rng.choice([65, 197])), heads=int(rng.choice([2, 4])))
    else:
        layer = LayerSpec(name, kind, 32, 32, (2, 2), (2, 2), input_hw=(hw, hw), output_hw=(hw // 2, hw // 2))
    choice = Choice()
    if layer.prunable:
        wbits, abits = [(32, 32), (16, 16), (8, 8), (4, 8)][int(rng.integers(4))]
        rank = (
            int(rng.integers(1, layer.full_rank + 1)) if layer.decomposable and rng.random() < 0.4 else None
        )
        choice = Choice(rank=rank, keep=float(rng.choice([1.0, 0.75, 0.5])), wbits=wbits, abits=abits)
    return layer, choice


def _layer_csv(path: Path, n: int, seed: int) -> None:
    """``n`` layers measured on the synthetic device, in the documented per-layer format."""
    from latency_models import get_target, plan_gemms, predict
    from search_spaces import LayerKind

    target = get_target("cortex-a76")
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LAYER_COLUMNS)
        for i in range(n):
            layer, c = _random_layer(rng, i)
            truth = POOL_MS
            if layer.kind is not LayerKind.POOLING:
                scale = 2.0 if layer.kind in (LayerKind.LINEAR, LayerKind.ATTENTION) else 3.0
                gemms = len(plan_gemms([layer], Plan({layer.name: c})))
                truth = scale * predict(target, [layer], Plan({layer.name: c})).latency_ms + LAUNCH_MS * gemms
            writer.writerow(
                [
                    layer.name, layer.kind.value, layer.in_channels, layer.out_channels, *layer.kernel_size,
                    *layer.stride, layer.groups, *layer.input_hw, *layer.output_hw, layer.tokens, layer.heads,
                    "" if c.rank is None else c.rank, c.keep, c.wbits, c.abits,
                    f"{truth * np.exp(rng.normal(0, 0.03)):.6g}",
                ]
            )  # fmt: skip


@functools.cache
def _zoo_layers(model_id: str) -> list[Any]:
    from workers.zoo import prepare

    return prepare(model_id, coupling=False).layers


def _fit_layer_table(data_dir: Path, tmp_path: Path, *extra: str) -> dict[str, Any]:
    path = tmp_path / "layers.csv"
    _layer_csv(path, 400, seed=0)
    result = runner.invoke(
        app,
        [
            "latency",
            "fit",
            "--target",
            "my-npu",
            "--family",
            "mobile",
            "--measurements",
            str(path),
            "--json",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


# Tolerance of whole-network predictions after a per-layer fit of 400 measured layers. Each layer
# is measured with 3% noise, and a network sums many layers, so it inherits mainly the error of
# the fitted per-kind coefficients, shared by all layers of a kind: ≈ 3% / √(rows per kind) ≈
# 0.5% for the prior's scale with ~50 rows per kind, more where the per-GEMM launch term trades
# off against it, and that error adds up over FBNet-A's 61 layers. Over 20 seeds of this table
# the worst network (always FBNet-A or the transformer-only one) was off by 4.0% (by 6.7% with
# 200 rows). 6% allows that and still fails a model that is wrong per kind: one scale of the
# prior for all kinds is 27–56% off on the worst of these networks, the uncalibrated prior ≥ 63%.
NETWORK_TOLERANCE = 0.06


def test_per_layer_fit_predicts_whole_networks(data_dir: Path, tmp_path: Path) -> None:
    from inventories import LAYERS, SPACE

    from latency_models import FEATURE_NAMES, catalogue, network_features

    # boosted-residual named (the default, auto, may choose another kind): its per-layer fit
    # keeps its calibrated prior only, and the note says so
    report = _fit_layer_table(data_dir, tmp_path, "--kind", "boosted-residual")
    assert report["format"] == "layer" and report["n_fit"] == 400 and report["n_test"] == 80
    assert report["mape"] < 0.05  # per layer: the 3% noise (mean |error| ≈ 2.4%)
    assert report["mape"] < report["baselines"]["analytic_prior"]["mape"] / 10
    assert "sum of its layers" in report["note"] and "calibrated prior only" in report["note"]

    cat = catalogue()
    target = cat.target("my-npu")
    learned = cat.predictor("my-npu")
    assert learned is not None
    predictor = learned[0]
    rng = np.random.default_rng(1)
    networks = [(list(LAYERS), plan) for plan in [Plan(), *(SPACE.sample(rng) for _ in range(20))]]
    networks += [(list(LAYERS[:4]), Plan()), (list(LAYERS[4:]), Plan())]  # convs only; transformer only
    networks += [(_zoo_layers(m), Plan()) for m in ("fbnet", f"nasbench201:{NB201_BEST}")]
    x = np.array([network_features(target, layers, plan) for layers, plan in networks])
    truth = _device_truth(x)
    predicted = predictor.predict(x)[0]
    error = np.abs(predicted / truth - 1)
    assert error.max() < NETWORK_TOLERANCE, error
    prior_error = np.abs(x[:, FEATURE_NAMES.index("prior_ms")] / truth - 1)
    assert prior_error.min() > 0.5  # the prior alone is far off: the fit is what recovers them

    # The CLI uses it for zoo networks, and says where the number comes from.
    result = runner.invoke(app, ["predict", "fbnet", "--target", "my-npu", "--uniform", "wbits=8", "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["provenance"].startswith("learned (fitted on 400 layer measurements, validation MAPE")
    assert "sum of its layers" in out["provenance"]
    fbnet = _zoo_layers("fbnet")
    plans = (Plan(), uniform_plan(fbnet, {"wbits": 8}))
    before, after = _device_truth(np.array([network_features(target, fbnet, p) for p in plans]))
    assert abs(out["latency_ms"]["before"] / before - 1) < NETWORK_TOLERANCE
    assert abs(out["latency_ms"]["after"] / after - 1) < NETWORK_TOLERANCE
    assert out["latency_ms"]["after_low"] <= out["latency_ms"]["after"] <= out["latency_ms"]["after_high"]


def test_per_layer_fit_validates_on_networks_and_layers(data_dir: Path, tmp_path: Path) -> None:
    """`latency validate` scores a per-layer fit on measured whole networks (the transfer) and on
    held-out layers; a per-network fit is not scored on single layers."""
    from latency_models import get_target, network_features

    _fit_layer_table(data_dir, tmp_path, "--kind", "calibrated-prior")
    target = get_target("cortex-a76")  # my-npu's specs
    networks = tmp_path / "networks.csv"
    rng = np.random.default_rng(2)
    with networks.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "latency_ms"])
        for model in [*(f"fbnet:{a}" for a in FBNET.values()), f"nasbench201:{NB201_BEST}"]:
            truth = float(_device_truth(network_features(target, _zoo_layers(model), Plan())))
            writer.writerow([model, f"{truth * np.exp(rng.normal(0, 0.03)):.6g}"])
    result = runner.invoke(
        app, ["latency", "validate", "--target", "my-npu", "--measurements", str(networks), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "network" and report["n_test"] == len(FBNET) + 1
    assert report["mape"] < NETWORK_TOLERANCE + 0.03  # the networks' own 3% noise on top
    assert report["spearman"] > 0.9

    layers = tmp_path / "held-out.csv"
    _layer_csv(layers, 60, seed=3)
    result = runner.invoke(
        app, ["latency", "validate", "--target", "my-npu", "--measurements", str(layers), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "layer" and report["n_test"] == 60 and report["mape"] < 0.05

    result = runner.invoke(
        app,
        [
            "latency",
            "fit",
            "--target",
            "my-npu",
            "--measurements",
            str(networks),
            "--kind",
            "calibrated-prior",
        ],
    )
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(app, ["latency", "validate", "--target", "my-npu", "--measurements", str(layers)])
    assert result.exit_code == 2 and "fitted on whole networks" in result.stderr


LAYER_HEADER = (
    "name,kind,in_channels,out_channels,kernel_h,kernel_w,input_h,input_w,output_h,output_w,latency_ms\n"
)
GOOD_ROW = "a,conv2d,16,32,3,3,8,8,8,8,0.5\n"


@pytest.mark.parametrize(
    "csv_text,fragment",
    [
        (
            "name,kind,in_channels,latency_ms\na,linear,4,1\nb,linear,8,1\nc,linear,8,1\n",
            "missing columns ['out_channels']",
        ),
        (
            LAYER_HEADER + GOOD_ROW + "b,conv2d,16,32,3,3,8,8,8,8,-0.5\n" + GOOD_ROW,
            "row 3, column 'latency_ms'",
        ),
        (LAYER_HEADER + GOOD_ROW + GOOD_ROW + "c,lstm,16,32,,,,,,,0.5\n", "row 4, column 'kind'"),
        (LAYER_HEADER + GOOD_ROW + "b,conv2d,16,32,3,3,8,8,,,0.5\n" + GOOD_ROW, "row 3, column 'output_h'"),
    ],
)
def test_bad_layer_csv_is_refused_and_nothing_is_written(
    data_dir: Path, tmp_path: Path, csv_text: str, fragment: str
) -> None:
    path = tmp_path / "layers.csv"
    path.write_text(csv_text)
    result = runner.invoke(
        app, ["latency", "fit", "--target", "new-npu", "--family", "mobile", "--measurements", str(path)]
    )
    assert result.exit_code == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert not (data_dir / "targets").exists() and not (data_dir / "predictors").exists()


def test_unknown_predictor_kind_writes_nothing(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "layers.csv"
    _layer_csv(path, 10, seed=0)
    result = runner.invoke(
        app,
        [
            "latency",
            "fit",
            "--target",
            "new-npu",
            "--family",
            "mobile",
            "--measurements",
            str(path),
            "--kind",
            "forest",
        ],
    )
    assert result.exit_code == 2 and "valid names: boosted-residual" in result.stderr
    assert not data_dir.exists() or not any(data_dir.rglob("*.json"))


# ------------------------------------------------------------------ a fit is activated only if it ranks


class _ReversedPrior(Predictor):
    """A throw-away kind that ranks plans in the reverse order of the analytic prior."""

    kind = "test-reversed-prior"

    def fit(self, features: np.ndarray, latency_ms: np.ndarray) -> _ReversedPrior:
        return self

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mid = 1.0 / np.asarray(features)[:, FEATURE_NAMES.index("prior_ms")]
        return mid, 0.9 * mid, 1.1 * mid

    def state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _ReversedPrior:
        return cls()


@pytest.fixture()
def reversed_kind() -> Iterator[str]:
    register_predictor(_ReversedPrior)
    yield _ReversedPrior.kind
    PREDICTORS.unregister(_ReversedPrior.kind)


def _anti_prior_csv(path: Path, n: int, seed: int) -> None:
    """A 'device' on which latency falls as the raspi4 prior rises (1 / prior): the prior ranks
    its plans exactly backwards, and the reversed-prior kind ranks them exactly right."""
    _synthetic_csv(path, n, seed)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    from latency_models import get_target, predict
    from workers.zoo import prepare

    layers = prepare("digits-cnn", coupling=False).layers
    target = get_target("raspi4")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "plan", "latency_ms"])
        for row in rows:
            prior = predict(target, layers, Plan.from_dict(json.loads(row["plan"]))).latency_ms
            writer.writerow([row["model"], row["plan"], f"{1.0 / prior:.6f}"])


def test_a_fit_that_ranks_worse_than_the_prior_is_kept_but_not_activated(
    data_dir: Path, tmp_path: Path, reversed_kind: str
) -> None:
    from latency_models import Coster, catalogue
    from workers.calibration import fit

    path = tmp_path / "m.csv"
    _synthetic_csv(path, 40, seed=0)  # 2.5 × prior + 0.4 ms: the prior ranks it (almost) right
    cat = catalogue(data_dir)
    good = fit("raspi4", path, kind="calibrated-prior", cat=cat)  # monotone in the prior: ranks as it does
    assert good["activated"] is True and cat.active_version("raspi4") == good["version"]

    result = runner.invoke(
        app, ["latency", "fit", "--target", "raspi4", "--measurements", str(path), "--kind", reversed_kind]
    )
    assert result.exit_code == 0, result.stderr
    assert re.search(
        r"not activated: held-out Spearman -0\.9\d is below the analytic prior's 0\.9\d", result.stdout
    )
    bad_version = catalogue(data_dir).versions("raspi4")[-1]
    report = cat.report("raspi4", bad_version)
    assert (
        report["activated"] is False
        and report["spearman"] < report["baselines"]["analytic_prior"]["spearman"]
    )
    assert cat.active_version("raspi4") == good["version"]  # the catalogue's active version is unchanged
    active = Coster.active(cat, "raspi4").learned
    assert active is not None and active[1]["kind"] == "calibrated-prior"
    # It is stored, and a user can still choose it explicitly.
    cat.activate("raspi4", bad_version)
    coster = Coster.active(cat, "raspi4")
    assert coster.learned is not None and coster.learned[1]["kind"] == reversed_kind
    assert re.search(r"Spearman -0\.9\d\)$", coster.provenance)


def test_a_fit_that_ranks_better_than_the_prior_is_activated(
    data_dir: Path, tmp_path: Path, reversed_kind: str
) -> None:
    from latency_models import Coster, catalogue
    from workers.calibration import fit

    path = tmp_path / "m.csv"
    _anti_prior_csv(path, 30, seed=0)
    cat = catalogue(data_dir)
    report = fit("raspi4", path, kind=reversed_kind, cat=cat)
    assert report["baselines"]["analytic_prior"]["spearman"] == pytest.approx(-1.0)
    assert report["spearman"] == pytest.approx(1.0)
    assert report["activated"] is True and "activation_note" not in report
    assert cat.active_version("raspi4") == report["version"]
    assert Coster.active(cat, "raspi4").provenance == (
        f"learned (fitted on 30 measurements, validation MAPE {100 * report['mape']:.1f}%, Spearman 1.00)"
    )


# ------------------------------------------------------------------ NAS-Bench-201 and FBNet networks

ZOO_NETWORKS = [
    *(f"nasbench201:{a}" for a in (NB201_BEST, NB201_ALL_CONV3, NB201_ALL_CONV1, NB201_ALL_NONE)),
    *(f"fbnet:{a}" for a in FBNET.values()),
    "fbnet",  # FBNet-A: all nine block kinds
]
# Each pair: the first network runs everything the second does, on more or bigger operators.
COSTLIER = [
    (f"nasbench201:{NB201_ALL_CONV3}", f"nasbench201:{NB201_BEST}"),  # a skip edge became a 3×3 conv
    (f"nasbench201:{NB201_ALL_CONV3}", f"nasbench201:{NB201_ALL_CONV1}"),  # 3×3 instead of 1×1 kernels
    (f"nasbench201:{NB201_ALL_CONV1}", f"nasbench201:{NB201_ALL_NONE}"),  # convs instead of no edge
    (f"fbnet:{FBNET['k5_e6']}", f"fbnet:{FBNET['k3_e6']}"),  # 5×5 instead of 3×3 depthwise kernels
    (f"fbnet:{FBNET['k3_e6']}", f"fbnet:{FBNET['k3_e3']}"),  # expansion 6 instead of 3
    (f"fbnet:{FBNET['k3_e3']}", f"fbnet:{FBNET['k3_e1']}"),  # expansion 3 instead of 1
    (f"fbnet:{FBNET['k3_e1']}", f"fbnet:{FBNET['skip']}"),  # blocks instead of skips
]


@pytest.mark.parametrize(
    "target_name", list_targets()
)  # the built-in targets (collected before any test adds one)
def test_zoo_networks_predict_on_every_target(target_name: str) -> None:
    from latency_models import get_target, predict

    target = get_target(target_name)
    cost = {m: predict(target, _zoo_layers(m), Plan()) for m in ZOO_NETWORKS}
    for model, c in cost.items():
        assert np.isfinite(c.latency_ms) and c.latency_ms > 0, model
        assert c.provenance == "analytic prior (uncalibrated)"
        fpga = (c.dsp, c.lut, c.bram36)
        if target.family == "fpga":
            # The LUT core may be idle (float32, or the DSP columns already cover every output).
            assert all(v is not None and v >= 0 for v in fpga) and (c.dsp or 0) > 0, model
            assert isinstance(c.feasible, bool)
        else:
            assert fpga == (None, None, None) and c.feasible
    for big, small in COSTLIER:
        assert cost[big].latency_ms > cost[small].latency_ms, (big, small)


def test_predict_cli_on_fbnet_reports_fpga_resources(data_dir: Path) -> None:
    arch = FBNET["k3_e3"]
    result = runner.invoke(
        app, ["predict", f"fbnet:{arch}", "--target", "zcu102", "--uniform", "wbits=8,abits=8", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["provenance"] == "analytic prior (uncalibrated)"
    assert 0 < out["latency_ms"]["after"] < out["latency_ms"]["before"] and np.isfinite(
        out["latency_ms"]["before"]
    )
    assert set(out["fpga"]) == {"dsp", "lut", "bram36", "feasible", "board"} and out["fpga"]["dsp"] > 0


def _rewrite_latency(path: Path, latency_ms: Any) -> None:
    """The same networks as ``path`` with new latencies (one per row, in order)."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(rows[0])
        for row, ms in zip(rows[1:], latency_ms, strict=True):
            writer.writerow([*row[:-1], f"{float(ms):.6f}"])


def test_a_profile_fit_replaces_the_active_version_only_when_it_ranks_better(tmp_path: Path) -> None:
    """``fit(against_active=True)`` (a device profile's fit, issue 19): new measurements that the
    active version ranks perfectly and the new fit does not keep the active version; the
    comparison is in the report."""
    from latency_models import catalogue
    from workers.calibration import fit, read_table

    cat = catalogue(tmp_path / "data")
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    # A device whose latencies run against the analytic prior's order (its inverse): a learned
    # version ranks them, the prior's order cannot.
    _synthetic_csv(first, 40, seed=0)
    _rewrite_latency(first, 10.0 / read_table(cat.target("raspi4"), first).latency_ms)
    v1 = fit("my-board", first, family="cpu", kind="boosted-residual", cat=cat)
    assert v1["activated"]
    # Fresh measurements that are exactly the active version's predictions: it ranks them with
    # Spearman 1; a scaled prior (the prior's order) ranks its held-out rows far worse.
    _synthetic_csv(second, 30, seed=1)
    active, _ = cat.predictor("my-board")  # type: ignore[misc]
    predicted, _, _ = active.predict(read_table(cat.target("my-board"), second).features)
    _rewrite_latency(second, predicted)
    profiled = fit("my-board", second, kind="scaled-prior", cat=cat, against_active=True)
    before = profiled["active_before"]
    assert before["version"] == v1["version"] and before["n"] == 30
    assert before["spearman"] == pytest.approx(1.0) and profiled["spearman"] < before["spearman"]
    assert not profiled["activated"] and "not activated: the active version" in profiled["activation_note"]
    assert cat.active_version("my-board") == v1["version"]
    # Without the flag (an upload's fit) the gate is the analytic prior's, as before.
    plain = fit("my-board", second, kind="scaled-prior", cat=cat)
    assert "active_before" not in plain and plain["activated"]
