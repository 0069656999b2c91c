"""Model sources (issue 16): a zoo name, a plugin (an entry point in ``hwsearch.models``) or an
import path ``module:factory``, with an optional weights file, all through ``resolve_model``.

The model searched by import path is defined right here (``build_net``): pytest puts tests/ on
``sys.path``, so this file is the module ``test_model_sources``. Plugins are registered for
real, without installing anything: a ``*.dist-info`` folder with ``entry_points.txt`` in a
tmp folder prepended to ``sys.path`` is what ``importlib.metadata`` reads for installed ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import pickle
import sys
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from workers.zoo import ZooError, create_model
from workers.zoo._sources import (
    ModelSource,
    UserModel,
    list_model_sources,
    model_source,
    resolve_model,
)

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "examples" / "plugin"
HERE = __name__  # "test_model_sources" under pytest's default import mode
SHAPE = (1, 1, 8, 8)


class TinyNet(nn.Module):
    """A user's own network: defined only in this test file."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def build_net(width: int = 8, classes: int = 10) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(width, classes)


def broken_factory() -> nn.Module:
    raise RuntimeError("the factory broke on purpose")


def not_a_model() -> int:
    return 42


def _randomised(net: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """A state_dict unlike the factory's own initialisation, so loading it is visible."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone())
        for k, v in net.state_dict().items()
    }


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> str:
    """Write ``code`` as a uniquely named module on sys.path; returns its name."""
    name = f"hws_user_{uuid.uuid4().hex[:10]}"
    folder = tmp_path / f"mods_{name}"
    folder.mkdir()
    (folder / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(folder))
    return name


def _dist(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    package: str,
    version: str,
    entry_points: dict[str, str],
    modules: dict[str, str] | None = None,
) -> Path:
    """A fake installed distribution: ``<package>-<version>.dist-info`` (METADATA and
    entry_points.txt) plus its modules, on sys.path."""
    site = tmp_path / f"site_{package}_{uuid.uuid4().hex[:6]}"
    info = site / f"{package.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text("[hwsearch.models]\n" + lines)
    for name, code in (modules or {}).items():
        (site / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(site))
    return site


def _error(call: Callable[[], Any]) -> ZooError:
    with pytest.raises(ZooError) as info:
        call()
    return info.value


# -------------------------------------------------------------------------------- import path
def test_model_defined_in_a_test_file_resolves_by_import_path() -> None:
    path = f"{HERE}:build_net"
    entry = resolve_model(path, model_args={"width": 4}, input_shape=SHAPE)
    assert isinstance(entry, UserModel)
    assert entry.name == entry.model_id == path
    first, second = entry.build(), entry.build()
    assert isinstance(first, TinyNet) and isinstance(second, TinyNet) and first.conv.out_channels == 4
    assert first is not second and not first.training  # fresh copies, eval mode
    assert torch.equal(first.conv.weight, second.conv.weight)
    x = entry.example_input()
    assert tuple(x.shape) == SHAPE and torch.equal(x, entry.example_input())
    assert first(x).shape == (1, 10)
    assert entry.ignore_layers(first) == []
    error = _error(lambda: entry.evaluate(first))  # no data yet, no evaluate() beside the factory
    assert error.field == "data" and "evaluate(model)" in str(error) and HERE in str(error)

    source = model_source(entry)
    assert (source.kind, source.name, source.model_args) == ("import", path, {"width": 4})
    assert source.weights_sha256 is None
    assert ModelSource.from_dict(source.to_dict()) == source
    # An entry goes to Ray workers by pickle.
    again = pickle.loads(pickle.dumps(entry))
    assert torch.equal(again.build().conv.weight, first.conv.weight)
    assert model_source(again) == source


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_weights_file_is_loaded_strictly_and_hashed(tmp_path: Path, suffix: str) -> None:
    state = _randomised(build_net(width=6))
    path = tmp_path / f"net{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    entry = resolve_model(f"{HERE}:build_net", model_args={"width": 6}, weights=str(path), input_shape=SHAPE)
    built = entry.build()
    for key, tensor in built.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    source = model_source(entry)
    assert source.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source.weights_path == str(path.resolve())
    assert source.weights_sha256[:12] in source.describe()


def test_checkpoint_wrapping_a_state_dict_is_accepted(tmp_path: Path) -> None:
    state = _randomised(build_net())
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    built = resolve_model(f"{HERE}:build_net", weights=str(path), input_shape=SHAPE).build()
    assert torch.equal(built.state_dict()["fc.weight"], state["fc.weight"])


def test_mismatched_weights_name_keys_and_shapes(tmp_path: Path) -> None:
    state = _randomised(build_net(width=4))  # a narrower network than the one resolved
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "other.safetensors"
    save_file(state, str(path))
    error = _error(lambda: resolve_model(f"{HERE}:build_net", weights=str(path), input_shape=SHAPE))
    text = str(error)
    assert error.field == "weights" and error.value == str(path)
    assert "missing keys (1): fc.bias" in text
    assert "unexpected keys (1): extra.weight" in text
    assert "conv.weight file (4, 1, 3, 3) vs model (8, 1, 3, 3)" in text
    assert "shape differences (6)" in text and "(1 more)" in text  # first five listed, all counted

    prefixed = {f"module.{k}": v for k, v in _randomised(build_net()).items()}
    torch.save(prefixed, tmp_path / "dp.pt")
    error = _error(
        lambda: resolve_model(f"{HERE}:build_net", weights=str(tmp_path / "dp.pt"), input_shape=SHAPE)
    )
    assert "missing keys (8)" in str(error) and "model.module.state_dict()" in str(error)


def test_unreadable_weights_files(tmp_path: Path) -> None:
    def resolve(path: Path) -> ZooError:
        return _error(lambda: resolve_model(f"{HERE}:build_net", weights=str(path), input_shape=SHAPE))

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file at all")
    error = resolve(garbage)
    assert error.field == "weights" and "cannot be read" in str(error) and "save_file" in str(error)

    whole = tmp_path / "whole.pt"
    torch.save(build_net(), whole)  # the module object, not its state_dict: weights_only refuses it
    error = resolve(whole)
    assert error.field == "weights" and "weights_only" in str(error) and "state_dict()" in str(error)

    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    assert "not a state_dict" in str(resolve(listed))
    assert "no such file" in str(resolve(tmp_path / "absent.pt"))
    (tmp_path / "w.bin").write_bytes(b"")
    assert "unknown file type" in str(resolve(tmp_path / "w.bin"))


@pytest.mark.parametrize(
    "model, needle",
    [
        ("no-such-model", "not a zoo or plugin name"),
        ("", "give a zoo name"),
        ("not a path:f", "not an import path"),
        (":build_net", "not an import path"),
        ("hws_no_such_module_x.nets:build", "ModuleNotFoundError"),
        (f"{HERE}:no_such_factory", "has no attribute 'no_such_factory'"),
        (f"{HERE}:broken_factory", "the factory broke on purpose"),
        (f"{HERE}:not_a_model", "returned int"),
        (f"{HERE}:SHAPE", "names a tuple"),
    ],
)
def test_bad_model_names(model: str, needle: str) -> None:
    error = _error(lambda: resolve_model(model, input_shape=SHAPE))
    assert error.field == "model" and needle in str(error)
    if needle == "not a zoo or plugin name":
        for name in ("digits-cnn", "mobilenet-v2", "nasbench201"):
            assert name in str(error)
    if "no attribute" in needle:
        assert "build_net" in str(error)  # the module's own callables are suggested


def test_module_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _module(tmp_path, monkeypatch, "raise RuntimeError('boom while importing')\n")
    error = _error(lambda: resolve_model(f"{name}:build"))
    assert error.field == "model" and "does not import" in str(error)
    assert "RuntimeError: boom while importing" in str(error)


def test_bad_input_shapes_and_model_args() -> None:
    path = f"{HERE}:build_net"
    error = _error(lambda: resolve_model(path))
    assert error.field == "input_shape" and error.value is None and "batch first" in str(error)
    error = _error(lambda: resolve_model(path, input_shape=(1, 3, 8, 8)))  # 3 channels into 1
    assert error.field == "input_shape" and "fails on an input of shape (1, 3, 8, 8)" in str(error)
    assert "RuntimeError" in str(error)
    bad_shapes: list[Any] = [(0, 1, 8, 8), (2, 1, 8, 8), (), "1,1,8,8", (1, 1.5), (1, 1 << 30)]
    for bad in bad_shapes:
        with pytest.raises(ZooError) as info:
            resolve_model(path, input_shape=bad)
        assert info.value.field == "input_shape", bad

    error = _error(lambda: resolve_model(path, model_args={"depth": 3}, input_shape=SHAPE))
    assert error.field == "model_args" and "depth" in str(error) and "width" in str(error)
    error = _error(lambda: resolve_model(path, model_args=[1, 2], input_shape=SHAPE))  # type: ignore[arg-type]
    assert error.field == "model_args"


def test_allowed_modules_restrict_import_paths() -> None:
    path = f"{HERE}:build_net"
    error = _error(lambda: resolve_model(path, input_shape=SHAPE, allowed_modules=[]))
    assert error.field == "model" and "HWSEARCH_MODEL_MODULES" in str(error) and "(empty)" in str(error)
    error = _error(lambda: resolve_model(path, input_shape=SHAPE, allowed_modules=["mypkg", "other"]))
    assert "mypkg, other" in str(error) and repr(HERE.split(".")[0]) in str(error)
    # Checked before anything is imported: a disallowed module that does not exist says so too.
    error = _error(lambda: resolve_model("hws_not_there:f", allowed_modules=["mypkg"]))
    assert "HWSEARCH_MODEL_MODULES" in str(error)
    entry = resolve_model(path, input_shape=SHAPE, allowed_modules=[HERE.split(".")[0]])
    assert entry.name == path
    # Zoo entries need no permission.
    assert resolve_model("fbnet", allowed_modules=[]).name == "fbnet"


_HOOKS = """
import math
import torch
from torch import nn

METRIC = "mean_logit"
TASK = "toy regression"


def build(width=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 2))


def example_input():
    return torch.ones(1, 6)


def evaluate(model):
    with torch.no_grad():
        return float(model(example_input()).mean())


def ignore_layers(model):
    return ["2"]


def nan_build():
    return build()


def make_entry():
    from workers.zoo import Quality, ZooModel

    class Entry(ZooModel):
        name = "own-entry"
        task = "t"
        metric = "m"
        description = "d"

        def build(self):
            return build()

        def example_input(self):
            return torch.ones(1, 5)  # wrong width: the forward check must catch it

        def evaluate(self, model):
            return Quality(1.0, "m", "d")

    return Entry()
"""


def test_hooks_beside_the_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _module(tmp_path, monkeypatch, _HOOKS)
    entry = resolve_model(f"{name}:build", model_args={"width": 3})  # example_input() beside it
    assert isinstance(entry, UserModel)
    assert (entry.metric, entry.task) == ("mean_logit", "toy regression")
    model = entry.build()
    quality = entry.evaluate(model)
    with torch.no_grad():
        expected = float(model(torch.ones(1, 6)).mean())
    assert quality.metric == "mean_logit" and quality.value == pytest.approx(expected)
    assert entry.ignore_layers(model) == ["2"]
    assert tuple(entry.example_input().shape) == (1, 6)

    # An evaluator that returns NaN is refused, naming the model.
    monkeypatch.setattr(sys.modules[name], "evaluate", lambda model: math.nan)
    entry = resolve_model(f"{name}:build")
    error = _error(lambda: entry.evaluate(entry.build()))
    assert error.field == "model" and "finite" in str(error)


def test_factory_returning_a_full_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _module(tmp_path, monkeypatch, _HOOKS)
    entry = resolve_model(f"{name}:make_entry")
    assert entry.name == "own-entry" and model_source(entry).kind == "import"
    # Its forward fails on its own example input: caught once, at the first build.
    error = _error(entry.build)
    assert error.field == "model" and "(1, 5)" in str(error)
    error = _error(lambda: resolve_model(f"{name}:make_entry", input_shape=(1, 6)))
    assert error.field == "input_shape" and "leave input_shape out" in str(error)


# ---------------------------------------------------------------------------------------- zoo
def test_zoo_names_still_resolve_to_their_entries() -> None:
    entry = resolve_model("digits-cnn")
    assert type(entry) is type(create_model("digits-cnn")) and entry.model_id == "digits-cnn"
    source = model_source(entry)
    assert (source.kind, source.name, source.package) == ("zoo", "digits-cnn", "hwsearch")
    arch = "|nor_conv_1x1~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_3x3~1|none~2|"
    entry = resolve_model(f"nasbench201:{arch}")
    assert entry.kwargs == {"arch": arch} and model_source(entry).name == f"nasbench201:{arch}"
    assert resolve_model("nasbench201", model_args={"arch": arch}).model_id == f"nasbench201:{arch}"
    # An entry made by create_model directly is described as the same zoo source.
    assert model_source(create_model("fbnet")).kind == "zoo"

    assert _error(lambda: resolve_model("digits-cnn", model_args={"width": 3})).field == "model_args"
    assert _error(lambda: resolve_model(f"nasbench201:{arch}", model_args={"arch": arch})).field == (
        "model_args"
    )
    assert _error(lambda: resolve_model("digits-cnn", input_shape=SHAPE)).field == "input_shape"
    assert "takes no argument" in str(_error(lambda: resolve_model("digits-cnn:big")))


def test_zoo_entry_with_weights(tmp_path: Path) -> None:
    state = _randomised(create_model("nasbench201").build(), seed=3)
    path = tmp_path / "nb201.safetensors"
    save_file(state, str(path))
    entry = resolve_model("nasbench201", weights=str(path))
    built = entry.build()
    assert all(torch.equal(t, state[k]) for k, t in built.state_dict().items())
    assert model_source(entry).weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    again = pickle.loads(pickle.dumps(entry))  # still picklable with its weights
    assert torch.equal(again.build().classifier.weight, state["classifier.weight"])

    del state["classifier.bias"]
    save_file(state, str(path))
    entry = resolve_model("nasbench201", weights=str(path))
    error = _error(entry.build)
    assert error.field == "weights" and "missing keys (1): classifier.bias" in str(error)


# ------------------------------------------------------------------------------------ plugins
_PLUGIN = """
import torch
from torch import nn
from workers.zoo import Quality, ZooModel


class TinyEntry(ZooModel):
    name = "tiny-entry"
    task = "toy classification"
    metric = "always_one"
    description = "a plugin's own entry"
    args = ("width",)

    def build(self):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, int(self.kwargs.get("width", 3))), nn.ReLU()).eval()

    def example_input(self):
        return torch.ones(1, 4)

    def evaluate(self, model):
        return Quality(1.0, self.metric, self.description)


def factory(hidden=5):
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def example_input():
    return torch.zeros(1, 4)
"""


def _width(model: nn.Module) -> int:
    """Output features of the first layer of a plugin's Sequential."""
    return int(model.state_dict()["0.weight"].shape[0])


def test_plugin_registered_through_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"hws_plug_{uuid.uuid4().hex[:8]}"
    _dist(
        tmp_path,
        monkeypatch,
        "acme-models",
        "1.2.3",
        {"tiny-entry": f"{module}:TinyEntry", "tiny-factory": f"{module}:factory"},
        {module: _PLUGIN},
    )
    rows = {row["name"]: row for row in list_model_sources()}
    assert module not in sys.modules  # listed from metadata, not imported
    assert rows["digits-cnn"]["source"] == "zoo" and rows["digits-cnn"]["metric"] == "top1_accuracy"
    row = rows["tiny-entry"]
    assert (row["source"], row["package"], row["version"]) == ("plugin", "acme-models", "1.2.3")
    assert row["target"] == f"{module}:TinyEntry" and row["metric"] is None
    loaded = {row["name"]: row for row in list_model_sources(load=True)}
    assert (
        loaded["tiny-entry"]["metric"] == "always_one"
        and loaded["tiny-entry"]["task"] == "toy classification"
    )

    entry = resolve_model("tiny-entry", model_args={"width": 7})
    assert entry.name == "tiny-entry" and _width(entry.build()) == 7
    source = model_source(entry)
    assert (source.kind, source.package, source.version) == ("plugin", "acme-models", "1.2.3")
    assert source.target == f"{module}:TinyEntry" and source.model_args == {"width": 7}
    assert _width(resolve_model("tiny-entry:9").build()) == 9  # name:argument, as in the zoo
    assert _error(lambda: resolve_model("tiny-entry", model_args={"depth": 1})).field == "model_args"

    factory_entry = resolve_model("tiny-factory", model_args={"hidden": 6})  # example_input() beside it
    assert isinstance(factory_entry, UserModel) and factory_entry.name == "tiny-factory"
    assert _width(factory_entry.build()) == 6 and model_source(factory_entry).kind == "plugin"

    # Unknown names list the installed plugins beside the zoo.
    error = _error(lambda: resolve_model("nope"))
    assert "tiny-entry" in str(error) and "tiny-factory" in str(error) and "digits-vit" in str(error)


def test_broken_and_clashing_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"hws_plug_{uuid.uuid4().hex[:8]}"
    _dist(
        tmp_path,
        monkeypatch,
        "broken-models",
        "0.1",
        {"broken": f"{module}:Missing", "twice": f"{module}:x", "digits-cnn": f"{module}:x"},
        {module: "x = 1\n"},
    )
    _dist(tmp_path, monkeypatch, "other-models", "2.0", {"twice": "elsewhere:y"})
    error = _error(lambda: resolve_model("broken"))
    assert error.field == "model" and "broken-models" in str(error) and "does not load" in str(error)
    error = _error(lambda: resolve_model("twice"))
    assert "broken-models 0.1" in str(error) and "other-models 2.0" in str(error)

    rows = [row for row in list_model_sources(load=True) if row["source"] == "plugin"]
    by_name = {(row["name"], row["package"]): row for row in rows}
    assert "does not load" in by_name["broken", "broken-models"]["error"]
    assert "other-models" in by_name["twice", "broken-models"]["error"]
    assert "shadowed by the zoo entry" in by_name["digits-cnn", "broken-models"]["error"]
    assert model_source(resolve_model("digits-cnn")).kind == "zoo"  # the zoo keeps its names


# ---------------------------------------------------------------------------- examples/plugin
def _load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"hws_script_{uuid.uuid4().hex[:8]}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """examples/plugin as if installed: its source on sys.path and a dist-info written from its
    own pyproject.toml (whether or not `make test` installed it already)."""
    project = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())["project"]
    eps = project["entry-points"]["hwsearch.models"]
    _dist(tmp_path, monkeypatch, project["name"], project["version"], eps)
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.setenv("HWSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    return project


def test_example_plugin_is_a_valid_plugin(example_plugin: dict[str, Any], tmp_path: Path) -> None:
    assert example_plugin["entry-points"]["hwsearch.models"] == {
        "example-resnet": "hwsearch_example_plugin.model:ExampleResNet"
    }
    rows = {row["name"]: row for row in list_model_sources()}
    row = rows["example-resnet"]
    assert (row["source"], row["package"], row["version"]) == ("plugin", "hwsearch-example-plugin", "0.1.0")

    entry = resolve_model("example-resnet")
    source = model_source(entry)
    assert (source.kind, source.package, source.version) == ("plugin", "hwsearch-example-plugin", "0.1.0")
    model = entry.build()  # trained at first use (seeded, a few seconds)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 6  # a ResNet: not a zoo network
    accuracy = entry.evaluate(model)
    assert accuracy.metric == "top1_accuracy" and accuracy.value > 0.9

    # The same network by import path, untrained, with the trained weights from a file; the
    # module's example_input() and evaluate() give it an input and the same quality.
    weights = tmp_path / "resnet.safetensors"
    save_file(model.state_dict(), str(weights))
    user = resolve_model(
        "hwsearch_example_plugin.model:build_resnet",
        weights=str(weights),
        allowed_modules=["hwsearch_example_plugin"],
    )
    assert isinstance(user, UserModel) and user.metric == "top1_accuracy"
    assert user.evaluate(user.build()).value == pytest.approx(accuracy.value)
    assert model_source(user).weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()

    # make_dataset.py writes the held-out split as PNG class folders; the model scores the
    # same on the decoded PNGs as on the split itself (the same pixels, the same preprocessing).
    from hwsearch_example_plugin.data import normalise
    from PIL import Image

    script = _load_script(PLUGIN_DIR / "make_dataset.py")
    out = tmp_path / "digits-eval"
    assert script.main([str(out)]) == 0
    classes = sorted(p.name for p in out.iterdir())
    assert classes == [str(i) for i in range(10)]
    pixels, labels = [], []
    for label in classes:
        for png in sorted((out / label).glob("*.png")):
            with Image.open(png) as image:
                assert image.mode == "L" and image.size == (8, 8)
                pixels.append(np.asarray(image))
            labels.append(int(label))
    assert len(pixels) == 540
    with torch.no_grad():
        predicted = model(torch.from_numpy(normalise(np.stack(pixels)))).argmax(1)
    assert float((predicted == torch.tensor(labels)).float().mean()) == pytest.approx(accuracy.value)
    assert script.main([str(out)]) == 2  # an existing folder is never overwritten
    assert script.write_dataset(tmp_path / "small", "train", per_class=2) == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
