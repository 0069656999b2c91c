"""The CLI's model and data flags (issue 16): ``--model`` (zoo, plugin or ``module:factory``),
``--model-args``, ``--weights``, ``--input-shape``, ``--data``, ``--evaluator`` and
``--eval-examples`` on inspect, compress, predict, search and submit; ``hwsearch models`` with
the plugins' packages; ``hwsearch dataset add | list | rm`` against a real server.

The user's models live in modules written into a tmp folder (defined nowhere but in this file):
in-process commands (Typer's CliRunner, as tests/test_cli.py) find them on ``sys.path``, the
end-to-end search (the installed ``hwsearch`` script, Ray workers included) on PYTHONPATH. The
digits dataset is written by ``examples/plugin/make_dataset.py`` (6 images per class).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service.cli import app

ROOT = Path(__file__).resolve().parents[1]
HWSEARCH = Path(sys.executable).with_name("hwsearch")
USER = "hwsearch_cli_usernet"  # a user's network, factories, evaluators
MIXED = "hwsearch_cli_mixed"  # a network with layers hwsearch keeps, and an ignore_layers hook
BROKEN = "hwsearch_cli_broken"  # a module that raises while importing
MODULES = (USER, MIXED, BROKEN)
CPU_TARGET = "xeon-gold-6240"  # a catalogue target: a fresh data dir has no fitted host-cpu

USER_CODE = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def build(width: int = 8, classes: int = 10) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(width, classes)


def broken():
    raise RuntimeError("this factory is broken on purpose")


def not_a_model():
    return 42


def nan_quality(model):
    return float("nan")


def word_quality(model):
    return "excellent"
"""

MIXED_CODE = '''
import torch
from torch import nn


class Mixed(nn.Module):
    """Conv2d and Linear (compressible), and what hwsearch keeps: a GroupNorm, a Conv1d, a
    parameter of the model itself and a Linear that never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.seq = nn.Conv1d(4, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1))
        self.spare = nn.Linear(4, 4)
        self.head = nn.Linear(4, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.seq(self.norm(self.conv(x)).flatten(2))
        return self.fc(torch.relu(self.head(y.mean(2) * self.scale)))


def build():
    torch.manual_seed(0)
    return Mixed()


def ignore_layers(model):
    return ["head"]
'''

runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _copy_dataset(source: Path, out: Path) -> Path:
    shutil.copytree(source, out)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The user's modules, weights files and datasets (good and bad), written once."""
    import torch

    root = tmp_path_factory.mktemp("cli-sources")
    mods = root / "mods"
    mods.mkdir()
    (mods / f"{USER}.py").write_text(USER_CODE)
    (mods / f"{MIXED}.py").write_text(MIXED_CODE)
    (mods / f"{BROKEN}.py").write_text('raise ImportError("this module is broken on purpose")\n')
    digits = root / "digits"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "plugin" / "make_dataset.py"),
            str(digits),
            "--per-class",
            "6",
        ],
        check=True,
        capture_output=True,
    )
    # Weights unlike the factory's initialisation, so loading them is visible in the quality.
    namespace: dict[str, Any] = {}
    exec(compile(USER_CODE, USER, "exec"), namespace)
    generator = torch.Generator().manual_seed(1)
    state = {
        k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in namespace["build"]().state_dict().items()
    }
    state["bn.running_var"] = state["bn.running_var"].abs() + 0.5
    torch.save(state, root / "w.pt")
    torch.save({k: v for k, v in state.items() if k != "fc.bias"}, root / "missing.pt")
    torch.save({**state, "extra.weight": torch.zeros(3)}, root / "extra.pt")

    (root / "empty").mkdir()
    one = root / "one-class"
    one.mkdir()
    shutil.copytree(digits / "3", one / "3")
    corrupt = _copy_dataset(digits, root / "corrupt")
    victim = sorted((corrupt / "7").iterdir())[2]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n but then not an image at all")
    twelve = _copy_dataset(digits, root / "twelve")
    for extra, like in (("10", "0"), ("11", "1")):
        shutil.copytree(digits / like, twelve / extra)
    return {
        "root": root,
        "mods": mods,
        "digits": digits,
        "weights": root / "w.pt",
        "missing": root / "missing.pt",
        "extra": root / "extra.pt",
        "empty": root / "empty",
        "one": one,
        "corrupt": corrupt,
        "victim": victim,
        "twelve": twelve,
    }


@pytest.fixture(scope="module")
def on_path(work: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """The user's modules importable in this process (for in-process commands)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(work["mods"]))
        yield work
    for name in MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HWSEARCH_DATA_DIR (the catalogue and registered datasets of local commands)."""
    folder = tmp_path / "data"
    monkeypatch.setenv("HWSEARCH_DATA_DIR", str(folder))
    return folder


# ------------------------------------------------------------------------------------- models
def test_models_lists_the_zoo_and_the_example_plugin_with_its_package() -> None:
    code, out, _ = _run("models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    plugin = rows["example-resnet"]
    assert plugin["source"] == "plugin" and plugin["package"] == "hwsearch-example-plugin"
    assert plugin["version"] == "0.1.0" and plugin["metric"] == "top1_accuracy"
    assert plugin["target"] == "hwsearch_example_plugin.model:ExampleResNet" and "error" not in plugin
    zoo = rows["digits-cnn"]
    assert zoo["source"] == "zoo" and zoo["package"] == "hwsearch" and zoo["has_weights"] is True
    code, out, _ = _run("models")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("example-resnet "))
    assert "hwsearch-example-plugin 0.1.0" in line and "top1_accuracy" in line


# ------------------------------------------------------------------------------------ inspect
def test_inspect_a_plugin_as_users_do_lists_its_layers_and_source() -> None:
    proc = subprocess.run(
        [str(HWSEARCH), "inspect", "--model", "example-resnet", "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    source = doc["source"]
    assert source["kind"] == "plugin" and source["package"] == "hwsearch-example-plugin"
    assert source["target"] == "hwsearch_example_plugin.model:ExampleResNet"
    layers = {layer["name"]: layer for layer in doc["layers"]}
    assert layers["layer1.conv1"]["kind"] == "conv2d" and layers["fc"]["out_channels"] == 10
    kept = {row["name"]: row for row in doc["kept"]}
    assert kept["layer1.bn1"]["type"] == "BatchNorm2d" and "normalisation" in kept["layer1.bn1"]["reason"]
    assert doc["data"] is None
    code, out, _ = _run("inspect", "--model", "example-resnet")
    assert code == 0
    assert out.splitlines()[0] == "source: plugin example-resnet (hwsearch-example-plugin 0.1.0)"
    assert "layer2.shortcut.0" in out and "not compressed by hwsearch" in out


def test_inspect_an_import_path_with_an_input_shape() -> None:
    code, out, err = _run(
        "inspect",
        "--model",
        "hwsearch_example_plugin.model:build_resnet",
        "--input-shape",
        "1,1,8,8",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"]["kind"] == "import"
    assert doc["source"]["name"] == "hwsearch_example_plugin.model:build_resnet"
    assert doc["source"]["package"] == "hwsearch-example-plugin"
    stem = next(layer for layer in doc["layers"] if layer["name"] == "stem.0")
    assert stem["input_hw"] == [8, 8] and stem["in_channels"] == 1
    code, out, _ = _run(
        "inspect",
        "--model",
        "hwsearch_example_plugin.model:build_resnet",
        "--model-args",
        '{"width": 4}',
        "--input-shape",
        "1,1,8,8",
        "--json",
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["source"]["model_args"] == {"width": 4}
    assert next(layer for layer in doc["layers"] if layer["name"] == "stem.0")["out_channels"] == 4


def test_inspect_lists_what_hwsearch_keeps_and_why(on_path: dict[str, Path]) -> None:
    code, out, err = _run("inspect", "--model", f"{MIXED}:build", "--input-shape", "1,1,8,8", "--json")
    assert code == 0, err
    doc = json.loads(out)
    traced = {layer["name"] for layer in doc["layers"]}
    assert {"conv", "head", "fc"} <= traced and not {"seq", "norm", "spare"} & traced
    kept = {row["name"]: row for row in doc["kept"]}
    assert set(kept) == {"(model)", "norm", "seq", "spare", "head"}
    assert "ignore_layers" in kept["head"]["reason"]
    assert kept["norm"]["type"] == "GroupNorm" and "normalisation" in kept["norm"]["reason"]
    assert kept["seq"]["type"] == "Conv1d" and "Conv2d and Linear" in kept["seq"]["reason"]
    assert kept["spare"]["params"] == 4 * 4 + 4 and "not called" in kept["spare"]["reason"]
    assert kept["(model)"]["params"] == 1 and "Mixed itself" in kept["(model)"]["reason"]
    head = next(layer for layer in doc["layers"] if layer["name"] == "head")
    assert not head["prunable"] and not head["decomposable"]
    code, out, _ = _run("inspect", "--model", f"{MIXED}:build", "--input-shape", "1,1,8,8")
    assert code == 0
    assert "not compressed by hwsearch (5 modules" in out
    assert "seq (Conv1d, 52 params)" in out


def test_inspect_with_data_shows_its_kind_and_split(work: dict[str, Path]) -> None:
    code, out, err = _run("inspect", "--model", "example-resnet", "--data", str(work["digits"]), "--json")
    assert code == 0, err
    data = json.loads(out)["data"]
    assert data["kind"] == "image_labels" and data["path"] == str(work["digits"])
    assert data["n_total"] == 60 and data["n_calibration"] + data["n_evaluation"] == 60
    assert data["class_counts"] == {str(c): 6 for c in range(10)}
    code, out, _ = _run(
        "inspect", "--model", "example-resnet", "--data", str(work["digits"]), "--eval-examples", "20"
    )
    assert code == 0
    assert f"data: {work['digits']} (image_labels): 60 examples in 10 classes (6 each)" in out
    assert "15 calibration, 20 evaluation" in out


def test_a_dataset_id_resolves_in_the_local_data_dir(work: dict[str, Path], data_dir: Path) -> None:
    from service.cli.datasets import zip_folder
    from workers.datasets import register_dataset_zip

    archive = work["root"] / f"local-{time.monotonic_ns()}.zip"
    zip_folder(work["digits"], archive)
    register_dataset_zip(archive, data_dir, "digits-local", name="digits")
    code, out, err = _run("inspect", "--model", "example-resnet", "--data", "digits-local", "--json")
    assert code == 0, err
    data = json.loads(out)["data"]
    assert data["dataset"] == "digits-local" and data["path"] is None and data["n_total"] == 60
    code, _, err = _run("inspect", "--model", "example-resnet", "--data", "digits-elsewhere")
    assert code == 2 and "data.dataset: got 'digits-elsewhere'; no registered dataset" in err


# ---------------------------------------------------------------------------- compress, predict
def test_compress_on_data_gives_n_and_an_interval(on_path: dict[str, Path]) -> None:
    args = ("--model", f"{USER}:build", "--weights", str(on_path["weights"]), "--input-shape", "1,1,8,8")
    code, out, err = _run(
        "compress", *args, "--data", str(on_path["digits"]), "--uniform", "wbits=8", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    quality = doc["quality"]
    assert quality["metric"] == "top1_accuracy" and quality["n"] == 45
    for when in ("before", "after"):
        low, high = quality["interval_95"][when]
        assert 0.0 <= low <= quality[when] <= high <= 1.0 and high - low > 0.05
    assert doc["source"]["weights_sha256"] == hashlib.sha256(on_path["weights"].read_bytes()).hexdigest()
    assert doc["data"]["n_evaluation"] == 45
    code, out, _ = _run("compress", *args, "--data", str(on_path["digits"]), "--uniform", "wbits=8")
    assert code == 0 and "quality (top1_accuracy on 45 examples): " in out and "(95% " in out


def test_predict_takes_the_same_model_flags(on_path: dict[str, Path]) -> None:
    code, out, err = _run(
        "predict",
        "--model",
        f"{USER}:build",
        "--model-args",
        '{"width": 16}',
        "--input-shape",
        "1,1,8,8",
        "--target",
        "zcu102",
        "--uniform",
        "wbits=4",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"] == f"{USER}:build" and doc["weight_bytes"]["after"] < doc["weight_bytes"]["before"]
    # conv 1→16 3×3 and fc 16→10 with its bias, in float32
    assert doc["weight_bytes"]["before"] == 4 * (16 * 9 + 16 * 10 + 10)


# ------------------------------------------------------------------ search end to end, on Ray
def test_search_a_model_defined_only_here_by_import_path_with_weights_and_data(
    work: dict[str, Path], on_path: dict[str, Path], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work["mods"]), env.get("PYTHONPATH")]))
    env["HWSEARCH_DATA_DIR"] = str(tmp_path / "data")
    # Relative paths, as typed: the CLI makes them absolute for the workers.
    args = [
        "search",
        "--model",
        f"{USER}:build",
        "--weights",
        "w.pt",
        "--input-shape",
        "1,1,8,8",
        "--data",
        "digits",
        "--target",
        CPU_TARGET,
        "--budget",
        "4",
        "--concurrency",
        "1",
        "--strategy",
        "random",
        "--json",
    ]
    proc = subprocess.run(
        [str(HWSEARCH), *args], capture_output=True, text=True, env=env, cwd=work["root"], timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["trials"] == 4 and doc["front"]
    source = doc["source"]
    assert source["kind"] == "import" and source["name"] == f"{USER}:build"
    assert source["weights_path"] == str(work["weights"])
    assert source["weights_sha256"] == hashlib.sha256(work["weights"].read_bytes()).hexdigest()
    data = doc["data"]
    assert data["path"] == str(work["digits"]) and data["n_evaluation"] == 45 and data["n_calibration"] == 15
    reference = doc["reference"]
    assert reference["quality_detail"]["n"] == 45
    assert reference["quality_detail"]["low"] <= reference["quality"] <= reference["quality_detail"]["high"]
    # The same model, weights and data judged in this process (compress): the same quality, so
    # the workers built the weighted model and scored the same evaluation split.
    code, out, err = _run(
        "compress",
        "--model",
        f"{USER}:build",
        "--weights",
        str(work["weights"]),
        "--input-shape",
        "1,1,8,8",
        "--data",
        str(work["digits"]),
        "--uniform",
        "wbits=8",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["quality"]["before"] == pytest.approx(reference["quality"], abs=1e-9)


# ------------------------------------------------------------------------------- bad input: 2
def _bad_cases(w: dict[str, Path]) -> dict[str, tuple[list[str], list[str]]]:
    """Each bad input: the command line and what its message must say (the field first)."""
    user = ["--model", f"{USER}:build", "--input-shape", "1,1,8,8"]
    resnet = ["--model", "example-resnet"]
    return {
        "name without a colon": (
            ["inspect", "--model", f"{USER}.build"],
            [f"model: got '{USER}.build'; unknown model; valid names: digits-cnn", "import path"],
        ),
        "module that does not exist": (
            ["inspect", "--model", "hwsearch_cli_no_such_module:build"],
            ["model: got 'hwsearch_cli_no_such_module:build'", "does not import"],
        ),
        "module that raises on import": (
            ["inspect", "--model", f"{BROKEN}:build"],
            [f"model: got '{BROKEN}:build'", "does not import", "broken on purpose"],
        ),
        "factory that raises": (
            ["inspect", "--model", f"{USER}:broken", "--input-shape", "1,1,8,8"],
            ["model: got", "the factory raised RuntimeError: this factory is broken on purpose"],
        ),
        "factory returning a non-Module": (
            ["inspect", "--model", f"{USER}:not_a_model"],
            ["model: got", "returned int, not a torch.nn.Module"],
        ),
        "forward failing on the example input": (
            ["inspect", "--model", f"{USER}:build", "--input-shape", "1,3,8,8"],
            ["input_shape: got (1, 3, 8, 8)", "fails on an input of shape (1, 3, 8, 8)"],
        ),
        "bare module without an input shape": (
            ["inspect", "--model", f"{USER}:build"],
            ["input_shape:", "give input_shape"],
        ),
        "weights with a missing key": (
            ["inspect", *user, "--weights", str(w["missing"])],
            ["weights: got", "missing keys (1): fc.bias"],
        ),
        "weights with an extra key": (
            ["inspect", *user, "--weights", str(w["extra"])],
            ["weights: got", "unexpected keys (1): extra.weight"],
        ),
        "weights file that does not exist": (
            ["inspect", *user, "--weights", str(w["root"] / "nope.pt")],
            ["weights: got", "no such file"],
        ),
        "empty dataset folder": (
            ["inspect", *resnet, "--data", str(w["empty"])],
            [f"data: got '{w['empty']}'", "holds no images"],
        ),
        "one-class dataset": (
            ["inspect", *resnet, "--data", str(w["one"])],
            [f"data: got '{w['one']}'", "only one class"],
        ),
        "corrupt image": (
            ["inspect", *resnet, "--data", str(w["corrupt"])],
            [f"data: got '{w['victim']}'", "does not decode as an image"],
        ),
        "more classes than the model outputs": (
            ["inspect", *resnet, "--data", str(w["twelve"])],
            ["data: got", "the dataset has 12 classes but the model has 10 outputs"],
        ),
        "evaluator returning NaN": (
            ["compress", *user, "--evaluator", f"{USER}:nan_quality", "--uniform", "wbits=8"],
            [f"evaluator: got '{USER}:nan_quality'; returned nan", "not finite"],
        ),
        "evaluator returning a non-number": (
            ["compress", *user, "--evaluator", f"{USER}:word_quality", "--uniform", "wbits=8"],
            [f"evaluator: got '{USER}:word_quality'; returned 'excellent'", "not a number"],
        ),
        "evaluator that does not import": (
            ["inspect", *user, "--evaluator", "hwsearch_cli_no_such_module:score"],
            ["evaluator: got 'hwsearch_cli_no_such_module:score'", "does not import"],
        ),
        "model args that are not JSON": (
            ["inspect", *user, "--model-args", "{width: 4"],
            ["--model-args: '{width: 4' is not valid JSON"],
        ),
        "model args that are not an object": (
            ["inspect", *user, "--model-args", "[4]"],
            ["--model-args: '[4]' is a JSON list, not an object"],
        ),
        "model args the factory does not take": (
            ["inspect", *user, "--model-args", '{"depth": 3}'],
            ["model_args: got {'depth': 3}", "does not take these"],
        ),
        "input shape that is not numbers": (
            ["inspect", "--model", f"{USER}:build", "--input-shape", "1,three,8,8"],
            ["--input-shape: '1,three,8,8' is not a list of positive integers"],
        ),
        "input shape with a batch of 2": (
            ["inspect", "--model", f"{USER}:build", "--input-shape", "2,1,8,8"],
            ["input_shape: the first dimension is the batch and must be 1"],
        ),
        "data that is neither a path nor an id": (
            ["inspect", *resnet, "--data", "no/such/folder"],
            ["--data: 'no/such/folder' is neither an existing file or folder", "hwsearch dataset add"],
        ),
        "eval examples without data": (
            ["inspect", *resnet, "--eval-examples", "5"],
            ["eval_examples=5 bounds how much of the job's data is evaluated, but the job has no data"],
        ),
        "the model twice": (
            ["inspect", "digits-cnn", "--model", "example-resnet"],
            ["the model is given twice"],
        ),
        "search: a spec file and model flags": (
            ["search", "--spec", str(w["root"] / "spec.json"), "--weights", str(w["weights"])],
            ["--weights: a JobSpec file names its model and data itself"],
        ),
    }


BAD_CASES = list(_bad_cases(defaultdict(Path)))  # the case names (no paths needed to list them)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_naming_the_field(case: str, on_path: dict[str, Path], data_dir: Path) -> None:
    args, fragments = _bad_cases(on_path)[case]
    code, out, err = _run(*args)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and "Traceback" not in out + err
    for fragment in fragments:
        assert fragment in err, err
    assert not data_dir.exists() or not any((data_dir / "datasets").glob("*"))


def test_search_and_submit_refuse_bad_flags_before_any_work(
    on_path: dict[str, Path], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every field wrong at once, with the model flags among them; nothing searched.
    code, out, err = _run(
        "search",
        "--model",
        f"{USER}:build",
        "--input-shape",
        "2,1,8,8",
        "--eval-examples",
        "0",
        "--target",
        "tpu",
    )
    assert code == 2 and out == ""
    assert "input_shape: the first dimension is the batch" in err and "eval_examples:" in err
    assert "targets[0]: unknown target 'tpu'" in err
    # submit and schedule add check their spec before they talk to the service (none listens here).
    monkeypatch.setenv("HWSEARCH_URL", "http://127.0.0.1:9")
    for args, fragment in (
        (["--eval-examples", "5"], "eval_examples=5 bounds"),
        (["--data", "no/such/folder"], "--data: 'no/such/folder'"),
        (["--model-args", "7"], "--model-args: '7' is a JSON int"),
    ):
        code, _, err = _run("submit", "--model", "example-resnet", "--target", CPU_TARGET, "--detach", *args)
        assert code == 2 and fragment in err and "does not answer" not in err, err
        code, _, err = _run(
            "schedule",
            "add",
            "--cron",
            "0 2 * * *",
            "--model",
            "example-resnet",
            "--target",
            CPU_TARGET,
            *args,
        )
        assert code == 2 and fragment in err and "does not answer" not in err, err


# --------------------------------------------------------------------------- dataset zips (local)
def test_a_folder_zips_the_same_every_time_without_hidden_files(tmp_path: Path) -> None:
    from service.cli.datasets import zip_folder

    folder = tmp_path / "photos"
    for rel, data in {
        "b/2.png": b"2",
        "a/1.png": b"1",
        "a/0.png": b"0",
        ".DS_Store": b"x",
        ".git/HEAD": b"h",
    }.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    assert zip_folder(folder, tmp_path / "one.zip") == 3
    os.utime(folder / "a" / "1.png", (1, 1))  # a changed timestamp changes nothing
    zip_folder(folder, tmp_path / "two.zip")
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "one.zip") as archive:
        assert archive.namelist() == ["photos/a/0.png", "photos/a/1.png", "photos/b/2.png"]
        assert archive.read("photos/b/2.png") == b"2"


def test_dataset_add_refuses_what_it_cannot_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWSEARCH_URL", "http://127.0.0.1:9")  # nothing is sent
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "my photos").mkdir()
    (tmp_path / "my photos" / "a.png").write_bytes(b"x")
    for args, fragment in (
        ([str(tmp_path / "nothing-here")], "no such file or folder"),
        ([str(tmp_path / "notes.txt")], "is neither a folder, a .zip nor a .jsonl file"),
        ([str(tmp_path / "my photos")], "--name: the name taken from 'my photos'"),
    ):
        code, _, err = _run("dataset", "add", *args)
        assert code == 2 and fragment in err and "does not answer" not in err, err
    code, _, err = _run("dataset", "rm", "../jobs")
    assert code == 2 and "is not an id" in err


# ------------------------------------------------------- dataset add | list | rm, on a real server
@pytest.fixture
def service(
    tmp_path: Path, serve: Callable[..., AbstractContextManager[str]], work: dict[str, Path]
) -> Iterator[dict[str, Any]]:
    """A served app (SQLite, no dispatcher: jobs stay queued) whose token the CLI uses; import
    paths of the user's module and files under the work folder are allowed."""
    from service.app import create_app
    from service.settings import Settings

    env = {
        "HWSEARCH_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'hwsearch.db'}",
        "HWSEARCH_MODEL_MODULES": USER,
        "HWSEARCH_FILE_ROOTS": str(work["root"]),
        "HWSEARCH_MAX_DATASET_BYTES": "200000",
    }
    app_ = create_app(Settings.from_env(env), dispatcher=False)
    with serve(app_) as url, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HWSEARCH_URL", url)
        mp.setenv("HWSEARCH_TOKEN", app_.state.store.create_token("alice", owner="alice"))
        yield {"url": url, "app": app_, "data": tmp_path / "data"}


def test_dataset_add_list_rm_against_the_service(
    service: dict[str, Any], work: dict[str, Path], tmp_path: Path
) -> None:
    code, out, err = _run("dataset", "add", str(work["digits"]))
    assert code == 0, err
    dataset_id, name, kind = out.split()[:3]
    assert name == "digits" and kind == "image_labels"
    assert "60 examples, 10 classes (6 each)" in out
    stored = service["data"] / "datasets" / dataset_id / "dataset.json"
    assert json.loads(stored.read_text())["n_examples"] == 60

    # A .jsonl file is zipped alone; --json gives the service's record.
    rows = [{"text": f"sample {i}", "label": i % 2} for i in range(8)]
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = _run("dataset", "add", str(tmp_path / "reviews.jsonl"), "--name", "reviews", "--json")
    assert code == 0, err
    text = json.loads(out)
    assert text["name"] == "reviews" and text["kind"] == "text_labels" and text["n_examples"] == 8

    code, out, _ = _run("dataset", "list")
    assert code == 0
    lines = out.splitlines()
    assert any(
        line.startswith(f"{dataset_id}  digits  image_labels") and "owner alice" in line for line in lines
    )
    assert any(line.startswith(f"{text['id']}  reviews  text_labels") for line in lines)
    code, out, _ = _run("dataset", "list", "--json")
    assert {d["id"] for d in json.loads(out)["items"]} == {dataset_id, text["id"]}

    # A job names the dataset by id; while it is queued the dataset cannot go.
    code, out, err = _run(
        "submit",
        "--model",
        "example-resnet",
        "--data",
        dataset_id,
        "--target",
        CPU_TARGET,
        "--budget",
        "2",
        "--detach",
    )
    assert code == 0, err
    job_id = out.strip()
    code, _, err = _run("dataset", "rm", dataset_id)
    assert code == 2 and err.startswith("error: 409") and job_id in err
    code, _, _ = _run("cancel", job_id)
    assert code == 0
    code, out, err = _run("dataset", "rm", dataset_id)
    assert code == 0 and out.strip() == f"{dataset_id}: removed", err
    assert not (service["data"] / "datasets" / dataset_id).exists()
    code, _, err = _run("dataset", "rm", dataset_id)
    assert code == 2 and err.startswith("error: 404")


def test_dataset_add_shows_the_services_refusals(service: dict[str, Any], work: dict[str, Path]) -> None:
    for folder, fragment in ((work["one"], "only one class"), (work["corrupt"], "does not decode")):
        code, out, err = _run("dataset", "add", str(folder), "--name", "bad")
        assert code == 2 and out == "" and err.startswith("error: 422") and fragment in err, err
    # Over HWSEARCH_MAX_DATASET_BYTES (200 kB): a zip that does not compress.
    big = work["root"] / "big.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("big/a/0.png", os.urandom(300_000))
    code, _, err = _run("dataset", "add", str(big))
    assert code == 2 and "HWSEARCH_MAX_DATASET_BYTES" in err, err
    stored = service["data"] / "datasets"
    assert not stored.exists() or list(stored.iterdir()) == []  # nothing half-written
    code, out, _ = _run("dataset", "list", "--json")
    assert json.loads(out)["items"] == []


def test_submit_sends_the_model_and_data_flags_as_jobspec_fields(
    service: dict[str, Any], work: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(work["root"])  # relative paths, made absolute by the CLI
    code, out, err = _run(
        "submit",
        "--model",
        f"{USER}:build",
        "--model-args",
        '{"width": 4}',
        "--weights",
        "w.pt",
        "--input-shape",
        "1,1,8,8",
        "--data",
        "digits",
        "--eval-examples",
        "20",
        "--target",
        CPU_TARGET,
        "--budget",
        "2",
        "--detach",
    )
    assert code == 0, err
    code, out, _ = _run("status", out.strip(), "--json")
    spec = json.loads(out)["spec"]
    assert spec["model"] == f"{USER}:build" and spec["model_args"] == {"width": 4}
    assert spec["weights"] == str(work["weights"]) and spec["input_shape"] == [1, 1, 8, 8]
    assert spec["data"]["path"] == str(work["digits"]) and spec["eval_examples"] == 20
    # An import path of a package the service does not allow is refused there (422, exit 2).
    code, _, err = _run(
        "submit", "--model", "hwsearch_example_plugin.model:build_resnet", "--target", CPU_TARGET, "--detach"
    )
    assert code == 2 and err.startswith("error: 422") and "HWSEARCH_MODEL_MODULES" in err
