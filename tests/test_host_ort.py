"""host-cpu-ort: this machine measured through ONNX Runtime, beside host-cpu in torch eager
(issue 19). The target is measured, its networks timed from exported ONNX files, and its
predictor fitted, all for real on this CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latency_models import LatencyModelError, Target, catalogue
from workers.profiling import (
    HOST_ORT,
    calibrate_host,
    host_target_name,
    measure_host_target,
    profile_networks,
)


def test_the_ort_target_is_measured_in_onnx_runtime() -> None:
    target = measure_host_target(repeats=3, runtime="onnxruntime")
    assert target.name == HOST_ORT == host_target_name("onnxruntime") and target.runtime == "onnxruntime"
    assert target.peak_macs_per_s[32] > 1e8 and target.peak_macs_per_s[8] >= target.peak_macs_per_s[32]
    assert target.memory_bandwidth_gb_s > 0.1 and 0 < target.dispatch_overhead_ms < 1
    assert all("onnxruntime" in target.sources[k] for k in ("peak_macs_per_s", "dispatch_overhead_ms"))
    # The runtime survives the catalogue's JSON round trip; the torch target names its own.
    assert Target.from_dict(json.loads(json.dumps(target.to_dict()))).runtime == "onnxruntime"
    assert measure_host_target(repeats=3).runtime == "torch"


def test_an_unknown_runtime_is_refused_naming_the_field() -> None:
    with pytest.raises(LatencyModelError, match="runtime") as info:
        host_target_name("tflite")
    assert "onnxruntime" in str(info.value)
    bad = {**measure_host_target(repeats=3).to_dict(), "runtime": "tvm"}
    with pytest.raises(LatencyModelError, match=r"runtime.*tvm"):
        Target.from_dict(bad)


def test_networks_are_timed_from_their_onnx_export(tmp_path: Path) -> None:
    rows = profile_networks(["digits-cnn"], 4, repeats=5, runtime="onnxruntime", seed=1)
    assert len(rows) == 4 and all(r.latency_ms > 0 and r.reference_ms > 0 for r in rows)
    # The first row is the uncompressed model against itself: a speed-up near one.
    assert json.loads(rows[0].plan_json) == {"layers": {}} and 0.6 < rows[0].speedup < 1.6
    assert len({r.plan_json for r in rows}) == 4


def test_profile_host_fits_the_ort_predictor(tmp_path: Path) -> None:
    cat = catalogue(tmp_path / "data")
    report = calibrate_host(("digits-cnn",), 10, repeats=3, cat=cat, runtime="onnxruntime")
    assert Path(str(report["measurements"])).name.startswith(f"{HOST_ORT}-")
    assert report["n_networks_timed"] == 10
    target = cat.target(HOST_ORT)
    assert target.runtime == "onnxruntime" and target.predictor_version is not None
    assert "host-cpu" not in cat.load_targets()  # the torch target is a different one, untouched


def test_the_cli_refuses_an_unknown_runtime_before_timing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    monkeypatch.setenv("HWSEARCH_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["latency", "profile-host", "--runtime", "tflite", "--plans", "3"])
    assert result.exit_code == 2 and "runtime" in result.output and "onnxruntime" in result.output
    assert not (tmp_path / "measurements").exists()
