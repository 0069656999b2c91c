"""Calibrating a target from per-network measurements, end to end through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from service.cli import app

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

    result = runner.invoke(
        app, ["latency", "validate", "--target", "my-phone", "--measurements", str(test), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"n_train", "n_test", "mape", "within_10pct", "spearman", "kendall"}
    assert report["n_test"] == 30 and report["within_10pct"] > 0.9

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
    result = runner.invoke(app, ["latency", "profile-host", "--models", "resnet-9000"])
    assert result.exit_code == 2 and "valid names" in result.stderr
