"""The hwsearch CLI: JSON output shapes, and bad input exiting 2 with a message, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from search_spaces import InputError
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
    assert "model: got 'nope'; unknown model" in proc.stderr and "Traceback" not in proc.stderr


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


# ------------------------------------------------------------ one exit-2 path for bad input
class _OddInput(InputError):
    """An InputError no command knows by name: only the app's one mapping can catch it."""


def test_any_input_error_exits_2_with_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.zoo

    def broken(pattern: str = "*") -> list[str]:
        raise _OddInput("zoo.pattern", pattern, "a glob over the registered names is required")

    monkeypatch.setattr(workers.zoo, "list_models", broken)
    code, out, err = _run("models")
    assert code == 2 and out == ""
    assert err == "error: zoo.pattern: got '*'; a glob over the registered names is required\n"


def test_other_errors_are_not_passed_off_as_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.zoo

    def broken(pattern: str = "*") -> list[str]:
        raise RuntimeError("a bug, not the user's input")

    monkeypatch.setattr(workers.zoo, "list_models", broken)
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


@pytest.mark.parametrize(
    "args,env,message",
    [
        # SettingsError, in a command of a sub-group (`token`), before any database is touched.
        (("token", "create"), {"HWSEARCH_MAX_UPLOAD_BYTES": "-3"}, "HWSEARCH_MAX_UPLOAD_BYTES='-3'"),
        # LatencyModelError from workers.calibration.
        (("latency", "validate", "--target", "zcu102"), {}, "has no fitted predictor"),
        (("latency", "fit", "--target", "dev", "--family", "bogus"), {}, "--family: got 'bogus'"),
        (("predict", "nope", "--target", "zcu102", "--uniform", "wbits=8"), {}, "model: got 'nope'"),
        (("latency", "profile-host", "--models", "digits-cnn,nope"), {}, "model: got 'nope'"),
    ],
)
def test_input_errors_of_every_group_exit_2(
    args: tuple[str, ...], env: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HWSEARCH_DATA_DIR", str(tmp_path / "data"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    table = tmp_path / "m.csv"
    table.write_text("model,plan,batch,latency_ms\ndigits-cnn,{},1,0.5\n")
    extra = ("--measurements", str(table)) if args[0] == "latency" and args[1] != "profile-host" else ()
    code, _, err = _run(*args, *extra)
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.json"))


# ------------------------------------------------- the CLI builds models with workers.zoo.prepare
@pytest.fixture
def model_keeping_fc1() -> Iterator[str]:
    """digits-cnn under another name, with fc1 among the layers never to compress."""
    from workers.zoo import register_model
    from workers.zoo._base import MODELS
    from workers.zoo.digits import DigitsCNNEntry

    class KeepsFc1(DigitsCNNEntry):
        name = "test-digits-cnn-keeps-fc1"

        def ignore_layers(self, model: Any) -> list[str]:
            return ["fc1"]

    register_model(KeepsFc1)
    yield KeepsFc1.name
    MODELS.unregister(KeepsFc1.name)


def test_ignored_layers_are_never_compressed(model_keeping_fc1: str, tmp_path: Path) -> None:
    def fc1(model: str) -> dict[str, Any]:
        code, out, _ = _run("inspect", model, "--json")
        assert code == 0
        return next(layer for layer in json.loads(out)["layers"] if layer["name"] == "fc1")

    assert fc1("digits-cnn")["prunable"] and fc1("digits-cnn")["decomposable"]
    kept = fc1(model_keeping_fc1)
    assert not kept["prunable"] and not kept["decomposable"]

    def params_after(model: str) -> int:
        code, out, _ = _run("compress", model, "--uniform", "keep=0.5", "--json")
        assert code == 0
        return int(json.loads(out)["params"]["after"])

    assert params_after(model_keeping_fc1) > params_after("digits-cnn")  # fc1 keeps its 128 channels
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": {"fc1": {"keep": 0.5}}}))
    code, _, err = _run("compress", model_keeping_fc1, "--plan", str(plan))
    assert code == 2 and "plan.layers['fc1'].keep" in err and "cannot be pruned" in err


# ------------------------------------------------------- the REST client against a fake service
@pytest.fixture
def fake_service(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Routes ``(method, path) -> (status, json)`` answered by an in-process httpx transport; the
    requests the CLI sent are kept under ``"sent"``."""
    import httpx

    routes: dict[str, Any] = {"sent": []}
    real_client = httpx.Client

    def handler(request: httpx.Request) -> httpx.Response:
        routes["sent"].append(request)
        code, body = routes.get((request.method, request.url.path), (404, {"detail": "not found"}))
        return httpx.Response(code, json=body)

    def client(**kw: Any) -> httpx.Client:
        return real_client(transport=httpx.MockTransport(handler), **kw)

    monkeypatch.setattr(httpx, "Client", client)
    monkeypatch.delenv("HWSEARCH_TOKEN", raising=False)
    return routes


def test_a_rejected_token_is_not_reported_as_missing(
    fake_service: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_service[("POST", "/api/v1/jobs/j1/cancel")] = (401, {"detail": "a valid API token is required"})
    code, _, err = _run("cancel", "j1")
    assert code == 2 and "needs a token: set HWSEARCH_TOKEN" in err and "rejected" not in err
    monkeypatch.setenv("HWSEARCH_TOKEN", "wrong")
    code, _, err = _run("cancel", "j1")
    assert code == 2 and "the service rejected this token (401)" in err and "set HWSEARCH_TOKEN" not in err
    assert fake_service["sent"][-1].headers["authorization"] == "Bearer wrong"


# --------------------------------------------------------------- defaults and terminal noise
def test_search_flags_left_out_take_the_jobspecs_defaults() -> None:
    from service.cli import job_spec
    from workers.search import JobSpec
    from workers.search._spec import DEFAULT_CONCURRENCY, DEFAULT_EVALUATIONS, DEFAULT_SEED, DEFAULT_STRATEGY

    flags = {"rank": None, "keep": None, "wbits": None, "abits": None, "tokens": None}
    spec = job_spec(None, "digits-cnn", ["zcu102"], None, None, None, None, flags, None)
    assert spec == JobSpec.model_validate({"model": "digits-cnn", "targets": ["zcu102"]})
    assert spec.budget.evaluations == DEFAULT_EVALUATIONS and spec.space.wbits == [4, 8]
    code, out, _ = _run("search", "--help")
    assert code == 0
    for text in (
        f"[default: {DEFAULT_STRATEGY}]",
        f"[default: {DEFAULT_EVALUATIONS}]",
        f"[default: {DEFAULT_SEED}]",
        f"[default: {DEFAULT_CONCURRENCY}]",
    ):
        assert text in " ".join(out.split()), text


def test_every_error_of_a_spec_at_once_without_pydantics_prefix() -> None:
    code, out, err = _run(
        "search", "--model", "digits-cnn", "--target", "tpu", "--strategy", "bayes", "--budget", "0"
    )
    assert code == 2 and out == ""
    assert "targets[0]: unknown target 'tpu'; valid names: a100" in err
    assert "strategy: unknown strategy 'bayes'" in err and "budget.evaluations" in err
    assert "Value error" not in err


def test_flags_show_no_type_and_take_no_value() -> None:
    code, out, _ = _run("models", "--help")
    assert code == 0 and "<bool>" not in out and "--json" in out
    code, _, err = _run("models", "--json", "true")
    assert code == 2 and "unexpected extra argument" in err


def test_plural_and_rounded() -> None:
    from service.cli._common import plural, rounded

    assert plural(1, "layer") == "1 layer" and plural(2, "layer") == "2 layers"
    assert rounded(1.0000000000000002) == 1.0 and rounded(0.98765) == 0.98765 and rounded("x") == "x"


def test_no_progress_label_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from service.cli._common import progress_bar

    with progress_bar(3) as bar:  # pytest's captured stderr is no terminal
        bar.update(3)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": {"fc1": {"wbits": 8}}}))
    code, out, _ = _run("compress", "digits-cnn", "--plan", str(plan))
    assert code == 0 and "digits-cnn: 1 layer compressed" in out


def test_compress_and_predict_print_one_weight_size() -> None:
    code, out, _ = _run("compress", "digits-cnn", "--uniform", "wbits=4", "--json")
    assert code == 0
    compressed = json.loads(out)
    code, out, _ = _run("predict", "digits-cnn", "--target", "zcu102", "--uniform", "wbits=4", "--json")
    assert code == 0
    predicted = json.loads(out)
    assert compressed["weight_bytes"] == predicted["weight_bytes"]
    assert compressed["weight_bytes"]["before"] == 408_232  # conv + linear layers, float32
    assert compressed["other_param_bytes"] == {"before": 1_792, "after": 1_792}  # BatchNorm, apart


def test_front_lists_the_reference_first_with_ratios(fake_service: dict[str, Any]) -> None:
    def costs(ms: float, size: int) -> dict[str, Any]:
        return {"zcu102": {"latency_ms": ms, "weight_bytes": size}}

    reference = {"number": 0, "quality": 0.99, "costs": costs(0.2, 400), "status": "ok"}
    fake_service[("GET", "/api/v1/jobs/j1/front")] = (
        200,
        {
            "job_id": "j1",
            "targets": ["zcu102"],
            "hypervolume": 0.5,
            "reference": reference,
            "front": [
                {**reference, "speedup@zcu102": 1.0, "size_ratio": 1.0},
                {
                    "number": 7,
                    "quality": 0.9,
                    "costs": costs(0.1, 100),
                    "speedup@zcu102": 2.0,
                    "size_ratio": 0.25,
                },
            ],
        },
    )
    code, out, _ = _run("front", "j1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "2 plans on the front; hypervolume 0.5000"
    assert lines[1].startswith("ref") and "uncompressed reference" in lines[1] and "400 B" in lines[1]
    assert len(lines) == 3 and "(2.00×)" in lines[2] and "size 0.25×" in lines[2]
    code, out, _ = _run("front", "j1", "--json")
    assert json.loads(out)["reference"]["number"] == 0


def test_search_lists_the_reference_first_and_ratios_against_it(tmp_path: Path) -> None:
    args = ("search", "--model", "digits-cnn", "--target", "zcu102", "--budget", "3", "--concurrency", "1")
    args = (*args, "--trials", str(tmp_path / "trials.jsonl"))  # the second run only reads them back
    code, out, _ = _run(*args, "--strategy", "random", "--wbits", "4", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["reference"]["number"] == 0 and doc["reference"]["weight_bytes"] == 408_232
    for row in doc["front"]:
        assert row["speedup@zcu102"] == pytest.approx(
            doc["reference"]["latency_ms@zcu102"] / row["latency_ms@zcu102"]
        )
        assert row["is_reference"] == (row["number"] == 0) and 0 < row["size_ratio"] <= 1.0
    code, out, _ = _run(*args, "--strategy", "random", "--wbits", "4")
    assert code == 0
    table = out.splitlines()
    assert (
        "speed-up" in table[1]
        and table[2].split()[:2] == ["ref", "0"]
        and "uncompressed reference" in table[2]
    )


def test_schedule_list_shows_model_targets_and_both_clocks(fake_service: dict[str, Any]) -> None:
    schedule = {
        "id": "s1",
        "name": "nightly",
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "spec": {"model": "minilm-l6", "targets": ["host-cpu", "zcu102"]},
        "enabled": True,
        "next_run_at": "2026-12-04T01:00:00+00:00",
        "last_runs": [{"job_id": "j1"}],
        "regression": False,
    }
    fake_service[("GET", "/api/v1/schedules")] = (
        200,
        [schedule, {**schedule, "id": "s2", "timezone": "UTC"}],
    )
    code, out, _ = _run("schedule", "list")
    assert code == 0
    first, second = out.splitlines()
    assert "minilm-l6 on host-cpu, zcu102" in first and "1 run" in first and "1 runs" not in first
    assert "next 2026-12-04 02:00 Europe/Berlin (01:00 UTC)" in first
    assert second.endswith("next 2026-12-04 01:00 UTC  1 run")
