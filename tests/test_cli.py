"""The hwsearch CLI: JSON output shapes, and bad input exiting 2 with a message, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_models_json_lists_the_zoo() -> None:
    code, out, _ = _run("models", "--json")
    assert code == 0
    rows = json.loads(out)
    names = {r["name"] for r in rows}
    assert {"digits-cnn", "mobilenet-v2", "minilm-l6", "nasbench201"} <= names
    assert all(r["metric"] and r["task"] for r in rows)


def test_inspect_prints_inventory() -> None:
    code, out, _ = _run("inspect", "digits-cnn", "--json")
    assert code == 0
    layers = json.loads(out)["layers"]
    conv4 = next(layer for layer in layers if layer["name"] == "conv4")
    assert conv4["kind"] == "conv2d" and conv4["macs"] == 64 * 64 * 9 * 16
    assert conv4["group"] == "conv2"  # coupled to conv2 by the residual add
    code, out, _ = _run("inspect", "digits-vit")
    assert code == 0 and "attention" in out and "tokens" in out


def test_compress_with_plan_file_json(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps({"layers": {"conv2": {"rank": 48}, "conv3": {"rank": 24}, "fc1": {"wbits": 8}}})
    )
    code, out, _ = _run("compress", "digits-cnn", "--plan", str(plan), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["quality"]["metric"] == "top1_accuracy"
    assert set(data["quality"]) >= {"metric", "before", "after"}
    for key in ("params", "macs", "weight_bytes"):
        assert data[key]["after"] < data[key]["before"]
    assert "latency_ms" not in data


def test_compress_uniform_measure() -> None:
    code, out, _ = _run(
        "compress", "digits-vit", "--uniform", "tokens=0.5,wbits=8", "--measure", "--repeats", "3", "--json"
    )
    assert code == 0
    lat = json.loads(out)["latency_ms"]
    assert lat["before"] > 0 and lat["after"] > 0 and lat["speedup"] > 0


@pytest.mark.parametrize(
    "args,fragment",
    [
        (("compress", "resnet-9000", "--uniform", "keep=0.5"), "valid names: digits-cnn"),
        (("inspect", "nasbench201:|bogus~0|"), "bogus"),
        (("compress", "digits-cnn", "--uniform", "rank=2"), "--uniform rank"),
        (("compress", "digits-cnn", "--uniform", "wbits=5"), "--uniform wbits"),
        (("compress", "digits-cnn", "--uniform", "speed=fast"), "KEY=VALUE"),
        (("compress", "digits-cnn"), "exactly one of --plan"),
        (("compress", "digits-cnn", "--plan", "/nonexistent/plan.json"), "cannot read"),
    ],
)
def test_bad_input_exits_2_with_a_message(args: tuple[str, ...], fragment: str) -> None:
    code, out, err = _run(*args)
    assert code == 2
    assert fragment in err
    assert "Traceback" not in out + err


def test_invalid_plan_names_the_field(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": {"fc2": {"rank": 99}}}))
    code, _, err = _run("compress", "digits-cnn", "--plan", str(plan))
    assert code == 2
    assert "plan.layers['fc2'].rank" in err and "99" in err and "full rank 10" in err
    plan.write_text("{broken")
    code, _, err = _run("compress", "digits-cnn", "--plan", str(plan))
    assert code == 2 and "valid JSON" in err


def test_installed_entry_point_exits_2_without_traceback() -> None:
    exe = Path(sys.executable).with_name("hwsearch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "service.cli"]
    proc = subprocess.run([*cmd, "compress", "nope", "--uniform", "keep=0.5"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown model 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_targets_lists_the_catalogue() -> None:
    code, out, _ = _run("targets", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["zcu102"]["fpga"]["dsp"] == 2520 and rows["a100"]["family"] == "gpu"


def test_predict_labels_provenance_and_reports_fpga_resources() -> None:
    code, out, _ = _run(
        "predict", "digits-cnn", "--target", "zcu102", "--uniform", "wbits=4,abits=8", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["provenance"] == "analytic prior (uncalibrated)"
    assert data["latency_ms"]["after"] <= data["latency_ms"]["before"]
    assert data["weight_bytes"]["after"] < data["weight_bytes"]["before"]
    assert data["fpga"]["feasible"] is True and data["fpga"]["dsp"] <= 2520
    code, out, _ = _run("predict", "digits-vit", "--target", "cortex-a76", "--uniform", "tokens=0.5")
    assert code == 0 and "analytic prior (uncalibrated)" in out and "FPGA" not in out


def test_predict_unknown_target_exits_2() -> None:
    code, _, err = _run("predict", "digits-cnn", "--target", "tpu", "--uniform", "wbits=8")
    assert code == 2 and "valid names: a100" in err
