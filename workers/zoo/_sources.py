"""Model sources: where the model of a job comes from, resolved through one function.

A model is named in one of three ways, tried in this order (``resolve_model``):

1. a **zoo** id, ``name`` or ``name:argument`` (``create_model``); the zoo is one client of this
   function, not a second path;
2. a **plugin**: an entry point in the group ``hwsearch.models`` of an installed distribution,
   whose object is a ``ZooModel`` subclass or a factory (``importlib.metadata``; no plugin
   framework of our own);
3. an **import path** ``package.module:factory`` (the uvicorn convention), called with
   ``model_args``. Where code runs on behalf of someone else (the service and its workers),
   ``allowed_modules`` (the setting ``HWSEARCH_MODEL_MODULES``) lists the top-level packages an
   import path may name; nothing else is imported.

A factory (plugin or import path) returns either a full entry (a ``ZooModel`` instance or
subclass, used as is) or a bare ``nn.Module``, which ``UserModel`` adapts: its example input
comes from ``input_shape`` (or an ``example_input()`` function beside the factory), its quality
from an ``evaluate(model)`` function beside the factory (without one it says data is needed),
its text hooks from ``tokenize(texts)`` / ``embed(model, inputs)`` there,
its layers never to compress from ``ignore_layers(model)`` beside the factory, and its metric
and task from ``METRIC`` / ``TASK`` strings there.

``weights`` names a state_dict file (``.safetensors``, or ``.pt``/``.pth`` read with
``weights_only=True``) loaded strictly into whatever the source builds; a mismatch names the
missing keys, the unexpected keys and the shape differences. Every resolved entry carries a
``ModelSource`` (``model_source(entry)``): kind, name, package and version, model arguments,
weights file and its sha256, which is what a job records.

Every bad input raises ``ZooError`` naming the field (``model``, ``model_args``, ``weights``,
``input_shape``), the value and the fix.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import importlib.metadata as metadata
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from workers.model_refs import DOTTED, MODULES_SETTING, PLUGIN_GROUP, list_plugins
from workers.model_refs import dist_of as _dist_of
from workers.model_refs import hwsearch_version as _hwsearch_version
from workers.model_refs import plugin_entry_points as _plugins

from ._base import MODELS, Quality, ZooError, ZooModel, create_model, device_of

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "PLUGIN_GROUP",
    "ModelSource",
    "UserModel",
    "list_model_sources",
    "model_source",
    "resolve_model",
]

_DOTTED = DOTTED
_MAX_LISTED = 5  # keys listed per kind in a weights mismatch (the counts are always complete)
_MAX_MESSAGE = 300  # characters of a user's exception message quoted in an error
_MAX_INPUT_ELEMENTS = 1 << 26  # 256 MiB of float32: an example input is one sample, not a batch
_SOURCE_ATTR = "_hwsearch_model_source"
SourceKind = Literal["zoo", "plugin", "import"]


# ------------------------------------------------------------------------------------ the record
@dataclass(frozen=True)
class ModelSource:
    """Where a resolved model comes from: what a job records to rebuild it and to show it.

    ``kind`` is ``zoo``, ``plugin`` or ``import``; ``name`` is the zoo id, the plugin name or the
    import path as given; ``package`` / ``version`` the distribution that provides it (for an
    import path: the distribution owning its top-level package, when there is one);
    ``target`` a plugin's entry-point object (``module:attribute``); ``model_args`` the
    arguments it was built with; ``weights_path`` / ``weights_sha256`` the weights file loaded
    on top, if any.
    """

    kind: SourceKind
    name: str
    package: str | None = None
    version: str | None = None
    target: str | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict, hash=False)
    weights_path: str | None = None
    weights_sha256: str | None = None

    def __post_init__(self) -> None:
        # A private copy: the caller's dict may change after the record was made.
        object.__setattr__(self, "model_args", dict(self.model_args))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (a job's stored record)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "target": self.target,
            "model_args": dict(self.model_args),
            "weights_path": self.weights_path,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSource:
        """The record ``to_dict`` wrote."""
        return cls(
            kind=data["kind"],
            name=data["name"],
            package=data.get("package"),
            version=data.get("version"),
            target=data.get("target"),
            model_args=data.get("model_args") or {},
            weights_path=data.get("weights_path"),
            weights_sha256=data.get("weights_sha256"),
        )

    def describe(self) -> str:
        """One line for people: ``plugin example-resnet (hwsearch-example-plugin 0.1.0), weights
        sha256 1f2e3d4c5b6a``."""
        text = f"{self.kind} {self.name}"
        if self.package:
            text += f" ({self.package} {self.version or '?'})"
        if self.weights_sha256:
            text += f", weights sha256 {self.weights_sha256[:12]}"
        return text


def model_source(entry: ZooModel) -> ModelSource:
    """The source of a resolved entry; an entry made by ``create_model`` directly is described
    as a zoo entry, any other as an import path of its class."""
    recorded = getattr(entry, _SOURCE_ATTR, None)
    if isinstance(recorded, ModelSource):
        return recorded
    cls = type(entry)
    if getattr(cls, "name", None) in MODELS and MODELS.get(cls.name) is cls:
        return ModelSource("zoo", entry.model_id, "hwsearch", _hwsearch_version(), model_args=entry.kwargs)
    return ModelSource("import", f"{cls.__module__}:{cls.__qualname__}", model_args=entry.kwargs)


# ---------------------------------------------------------------------------- the adapter
class UserModel(ZooModel):
    """A bare ``nn.Module`` from a user's factory, adapted to the ZooModel contract.

    ``build()`` returns a fresh copy of the checked module (weights loaded, eval mode), so every
    caller starts from the same network. ``evaluate`` uses an ``evaluate(model)`` function
    beside the factory (returning a float or a ``Quality``); without one it raises ``ZooError``
    saying data is needed. ``name`` (and ``model_id``) is the import path or plugin name;
    ``metric`` and ``task`` are the factory module's ``METRIC`` and ``TASK`` strings if it
    declares them, else the generic values below.
    """

    # Per instance the name is the import path; these class values only document the adapter.
    name = "user-model"
    task = "user model (task given by its data or evaluator)"
    metric = "user_metric"
    description = "the value returned by the evaluator beside the model's factory"

    #: The factory module's ``TOKEN_BLOCKS`` (a ``kernels.TokenBlocks`` dict), if it declares one.
    token_blocks: Any = None

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str,
        example: torch.Tensor,
        evaluate_fn: Callable[[nn.Module], Any] | None = None,
        ignore_fn: Callable[[nn.Module], Any] | None = None,
        hooks_from: str | None = None,
        metric: str | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__()
        # ``name``, ``metric`` and ``task`` are class variables of the contract; each adapter
        # shadows them with its own (the import path; what the factory's module declares).
        vars(self)["name"] = name
        if metric:
            vars(self)["metric"] = metric
        if task:
            vars(self)["task"] = task
        self._module = module.eval()
        self._example = example
        self._evaluate_fn = evaluate_fn
        self._ignore_fn = ignore_fn
        self._hooks_from = hooks_from

    def build(self) -> nn.Module:
        return copy.deepcopy(self._module).eval()

    def example_input(self) -> torch.Tensor:
        return self._example.clone()

    def evaluate(self, model: nn.Module) -> Quality:
        if self._evaluate_fn is None:
            where = f" or define evaluate(model) in module {self._hooks_from}" if self._hooks_from else ""
            raise ZooError(
                "data",
                None,
                f"model {self.name!r} is a bare nn.Module and has no data to be judged on: give it "
                f"a dataset or an evaluator{where}",
            )
        result = self._evaluate_fn(model)
        label = f"{self._hooks_from}.evaluate" if self._hooks_from else "the model's evaluate()"
        if isinstance(result, Quality):
            value, described, extra = result.value, result.description, result.extra
            if result.metric != self.metric:
                described = f"{result.metric}: {described}"
        elif isinstance(result, int | float) and not isinstance(result, bool):
            value, described, extra = float(result), f"returned by {label}", {}
        else:
            raise ZooError(
                "model", self.name, f"{label} returned {type(result).__name__}; return a float or a Quality"
            )
        if not math.isfinite(value):
            raise ZooError("model", self.name, f"{label} returned {value}; it must return a finite number")
        return Quality(float(value), self.metric, described, dict(extra))

    def ignore_layers(self, model: nn.Module) -> list[str]:
        if self._ignore_fn is None:
            return []
        names = self._ignore_fn(model)
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ZooError("model", self.name, "ignore_layers(model) must return a list of layer names")
        return list(names)


# --------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class _Weights:
    """A weights file read and hashed; ``state`` is the state_dict it holds."""

    path: str
    sha256: str
    state: dict[str, torch.Tensor] = field(repr=False, hash=False, compare=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_weights(weights: str) -> _Weights:
    if not isinstance(weights, str | Path) or not str(weights).strip():
        raise ZooError("weights", weights, "give the path of a .safetensors or .pt/.pth state_dict file")
    path = Path(weights).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise ZooError(
            "weights",
            str(weights),
            "unknown file type; use .safetensors, or a state_dict saved with torch.save as .pt or .pth",
        )
    if not path.is_file():
        raise ZooError("weights", str(weights), "no such file; give the path of a state_dict file")
    try:
        sha = _sha256(path)
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        else:
            import torch

            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader's failure (truncated, not this format, pickled code)
        hint = f"cannot be read: {_quote(error)}; "
        if suffix == ".safetensors":
            hint += "write it with safetensors.torch.save_file(model.state_dict(), path)"
        else:
            hint += (
                "it is read with torch.load(weights_only=True), which loads tensors only: save "
                "model.state_dict() (not the model object) with torch.save"
            )
        raise ZooError("weights", str(weights), hint) from error
    return _Weights(str(path.resolve()), sha, _state_dict_of(loaded, str(weights)))


def _state_dict_of(loaded: Any, shown: str) -> dict[str, torch.Tensor]:
    import torch

    # Training checkpoints often wrap the state_dict under one of these keys.
    if isinstance(loaded, Mapping) and not _all_tensors(loaded):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), Mapping) and _all_tensors(loaded[key]):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded or not _all_tensors(loaded):
        raise ZooError(
            "weights",
            shown,
            f"holds {type(loaded).__name__}, not a state_dict (a dict of parameter names to tensors); "
            "save model.state_dict()",
        )
    return {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def _all_tensors(mapping: Mapping[Any, Any]) -> bool:
    import torch

    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", … ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _load_strict(model: nn.Module, weights: _Weights, shown: str) -> None:
    """Load ``weights`` into ``model`` requiring the same keys and shapes; the error names the
    missing keys, the unexpected keys and the shape differences (the first few, with counts)."""
    own = model.state_dict()
    # Tied parameters (one tensor under two names) are stored once by safetensors' save_model;
    # a key whose storage another present key shares is not missing.
    by_storage: dict[tuple[int, int], list[str]] = {}
    for key, tensor in own.items():
        if tensor.device.type != "meta" and tensor.numel():
            by_storage.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset()), []).append(
                key
            )
    tied = {key: names for names in by_storage.values() if len(names) > 1 for key in names}
    missing = [
        k for k in own if k not in weights.state and not any(t in weights.state for t in tied.get(k, ()))
    ]
    unexpected = [k for k in weights.state if k not in own]
    shapes = [
        f"{k} file {tuple(weights.state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in weights.state and weights.state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
        if shapes:
            parts.append(f"shape differences ({len(shapes)}): {_listed(shapes)}")
        hint = "; ".join(parts) + "; the file must be a state_dict of exactly this model (same model_args)"
        if unexpected and all(k.startswith("module.") for k in unexpected):
            hint += (
                "; its keys start with 'module.' (saved from DataParallel): save model.module.state_dict()"
            )
        raise ZooError("weights", shown, hint)
    import torch

    with torch.no_grad():
        result = model.load_state_dict(weights.state, strict=False)
    still = [k for k in result.missing_keys if k not in tied]
    if still or result.unexpected_keys:  # pragma: no cover - the check above covers these
        raise ZooError(
            "weights", shown, f"did not load: missing {still}, unexpected {result.unexpected_keys}"
        )


class _CheckedBuild:
    """Stands in for a full entry's ``build``: builds, loads the weights file strictly, and on
    the first call checks the forward pass on the entry's example input.

    A module-level class (not a closure) so an entry stays picklable for Ray workers.
    """

    def __init__(self, entry: ZooModel, weights: _Weights | None, shown: str | None, check: bool) -> None:
        self._entry = entry
        self._build: Callable[[ZooModel], nn.Module] = type(entry).build
        self._weights = weights
        self._shown = shown or ""
        self._check = check

    def __call__(self) -> nn.Module:
        model = self._build(self._entry)
        if self._weights is not None:
            _load_strict(model, self._weights, self._shown)
        model.eval()
        if self._check:
            _check_forward(model, self._entry.example_input(), self._entry.name, "model", None)
            self._check = False
        return model


# ------------------------------------------------------------------------------------ checks
def _quote(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _check_forward(
    model: nn.Module, example: torch.Tensor, shown: str, input_field: str, input_shape: Any
) -> None:
    import torch

    try:
        with torch.no_grad():
            model(example.to(device_of(model)))
    except Exception as error:
        if input_field == "input_shape":
            raise ZooError(
                "input_shape",
                input_shape,
                f"model {shown!r} fails on an input of shape {tuple(example.shape)}: {_quote(error)}; "
                "give the shape of one input the model accepts, batch first",
            ) from error
        raise ZooError(
            "model",
            shown,
            f"the model fails on its example input of shape {tuple(example.shape)}: {_quote(error)}",
        ) from error


def _check_model_args(model_args: Any) -> dict[str, Any]:
    if model_args is None:
        return {}
    if not isinstance(model_args, Mapping) or not all(isinstance(k, str) for k in model_args):
        raise ZooError(
            "model_args", model_args, 'give a JSON object of keyword arguments, e.g. {"width": 32}'
        )
    return dict(model_args)


def _check_input_shape(input_shape: Any) -> tuple[int, ...] | None:
    if input_shape is None:
        return None
    hint = "give the shape of one input, batch first, as positive integers, e.g. 1,3,32,32"
    if (
        isinstance(input_shape, str | bytes)
        or not isinstance(input_shape, Iterable)
        or not (shape := tuple(input_shape))
        or len(shape) > 8
        or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape)
        or min(shape := tuple(int(d) for d in shape)) < 1  # numpy integers become ints
    ):
        raise ZooError("input_shape", input_shape, hint)
    if shape[0] != 1:
        raise ZooError("input_shape", input_shape, f"the first dimension is the batch and must be 1; {hint}")
    if math.prod(shape) > _MAX_INPUT_ELEMENTS:
        raise ZooError("input_shape", input_shape, f"more than {_MAX_INPUT_ELEMENTS} elements; {hint}")
    return shape


def _entry_args(cls: type[ZooModel], model_args: dict[str, Any], shown: str) -> None:
    unknown = sorted(set(model_args) - set(cls.args))
    if unknown:
        raise ZooError(
            "model_args",
            model_args,
            f"{shown!r} takes {list(cls.args) or 'no arguments'}; remove {unknown}",
        )


# ----------------------------------------------------------------------------------- plugins
@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Mapping[str, list[str]]:
    # Reads every installed distribution's file list (about 0.3 s): once per process.
    return metadata.packages_distributions()


def _distribution_of_module(top: str) -> tuple[str | None, str | None]:
    try:
        names = _packages_distributions().get(top) or []
        return (names[0], metadata.version(names[0])) if names else (None, None)
    except Exception:  # best effort: a broken distribution elsewhere must not fail a resolve
        return None, None


# ---------------------------------------------------------------------------------- resolving
def resolve_model(
    model: str,
    *,
    model_args: dict[str, Any] | None = None,
    weights: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    allowed_modules: Iterable[str] | None = None,
) -> ZooModel:
    """The entry for ``model``: a zoo id, a plugin name, or an import path ``module:factory``.

    ``model_args`` go to the zoo entry's or plugin class's constructor, or to the factory.
    ``weights`` (a ``.safetensors`` or ``.pt``/``.pth`` state_dict) is loaded strictly into
    what the entry builds. ``input_shape`` (batch first) makes the example input of a factory
    that returns a bare ``nn.Module``. ``allowed_modules``, when not None, lists the top-level
    packages an import path may name (the service's ``HWSEARCH_MODEL_MODULES``); zoo entries
    and installed plugins are always allowed. ``model_source(entry)`` says where it came from.

    Raises ``ZooError`` naming the field (``model``, ``model_args``, ``weights``,
    ``input_shape``), the value and the fix.
    """
    if not isinstance(model, str) or not model.strip():
        raise ZooError("model", model, "give a zoo name, a plugin name or an import path module:factory")
    model = model.strip()
    args = _check_model_args(model_args)
    shape = _check_input_shape(input_shape)
    name, sep, arg = model.partition(":")

    if name in MODELS:
        cls = MODELS.get(name)
        _entry_args(cls, args, name)
        if sep and cls.args and cls.args[0] in args:
            raise ZooError(
                "model_args", args, f"{cls.args[0]!r} is given twice: after ':' in {model!r} and here"
            )
        entry = create_model(model, **args)
        source = ModelSource("zoo", entry.model_id, "hwsearch", _hwsearch_version(), model_args=entry.kwargs)
        return _finish_entry(entry, source, weights, shape, check=False)

    plugins = _plugins()
    if name in plugins:
        return _resolve_plugin(model, name, sep, arg, plugins[name], args, weights, shape)

    if not sep:
        raise ZooError("model", model, _unknown_hint(plugins))
    return _resolve_import(model, name, arg, args, weights, shape, allowed_modules)


def _unknown_hint(plugins: Mapping[str, Any]) -> str:
    zoo = ", ".join(MODELS.list())
    plugin_names = ", ".join(sorted(plugins)) or "none installed"
    return (
        f"not a zoo or plugin name, and not an import path module:factory (e.g. mypkg.nets:build_resnet); "
        f"zoo: {zoo}; plugins: {plugin_names}"
    )


def _resolve_plugin(
    model: str,
    name: str,
    sep: str,
    arg: str,
    eps: list[metadata.EntryPoint],
    args: dict[str, Any],
    weights: str | None,
    shape: tuple[int, ...] | None,
) -> ZooModel:
    if len(eps) > 1:
        packages = ", ".join(f"{p} {v}" for p, v in map(_dist_of, eps))
        raise ZooError(
            "model",
            model,
            f"plugin {name!r} is declared by more than one package ({packages}); uninstall one",
        )
    ep = eps[0]
    package, version = _dist_of(ep)
    where = f"plugin {name!r} of {package or 'an unknown package'} {version or ''}".rstrip()
    try:
        obj = ep.load()
    except Exception as error:
        raise ZooError(
            "model", model, f"{where} ({ep.value}) does not load: {_quote(error)}; fix or reinstall it"
        ) from error
    if sep:
        if not (isinstance(obj, type) and issubclass(obj, ZooModel) and obj.args):
            raise ZooError("model", model, f"{where} takes no argument after ':'; give model_args instead")
        if obj.args[0] in args:
            raise ZooError(
                "model_args", args, f"{obj.args[0]!r} is given twice: after ':' in {model!r} and here"
            )
        args = {obj.args[0]: arg, **args}
    source = ModelSource("plugin", model, package, version, target=ep.value, model_args=args)
    return _from_object(obj, model, args, weights, shape, source, _module_of(obj))


def _resolve_import(
    model: str,
    module_name: str,
    attr: str,
    args: dict[str, Any],
    weights: str | None,
    shape: tuple[int, ...] | None,
    allowed_modules: Iterable[str] | None,
) -> ZooModel:
    if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(attr):
        raise ZooError("model", model, _unknown_hint(_plugins()))
    top = module_name.split(".")[0]
    if allowed_modules is not None:
        allowed = {m.strip() for m in allowed_modules if m and m.strip()}
        if top not in allowed:
            raise ZooError(
                "model",
                model,
                f"import paths may only name the packages in the setting {MODULES_SETTING} "
                f"({', '.join(sorted(allowed)) or 'empty'}); add {top!r} to it where the service and "
                "its workers run, or install the model as a plugin",
            )
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or whatever the module raises while importing
        raise ZooError(
            "model",
            model,
            f"module {module_name!r} does not import ({_quote(error)}); check the name and that it is "
            "installed or on PYTHONPATH where the model is built",
        ) from error
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(
                n
                for n, v in vars(module).items()
                if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
            )
            raise ZooError(
                "model",
                model,
                f"module {module_name!r} has no attribute {attr!r}; its callables: "
                f"{_listed(public) or 'none'}",
            )
        obj = getattr(obj, part)
    package, version = _distribution_of_module(top)
    source = ModelSource("import", model, package, version, model_args=args)
    return _from_object(obj, model, args, weights, shape, source, module)


def _module_of(obj: Any) -> ModuleType | None:
    return inspect.getmodule(obj)


def _from_object(
    obj: Any,
    shown: str,
    args: dict[str, Any],
    weights: str | None,
    shape: tuple[int, ...] | None,
    source: ModelSource,
    hooks: ModuleType | None,
) -> ZooModel:
    """The entry for a plugin's or an import path's object: an entry, an entry class, a
    module, or a factory returning one of those."""
    from torch import nn

    if isinstance(obj, ZooModel | nn.Module):
        if args:
            raise ZooError(
                "model_args", args, f"{shown!r} is a ready {type(obj).__name__}, not a factory; it takes none"
            )
        # A copy: loading weights or recording the source must not change the user's object.
        made: Any = copy.copy(obj) if isinstance(obj, ZooModel) else copy.deepcopy(obj)
    elif isinstance(obj, type) and issubclass(obj, ZooModel):
        _entry_args(obj, args, shown)
        made = _call(obj, shown, args)
    elif callable(obj):
        try:
            inspect.signature(obj).bind(**args)
        except TypeError as error:
            raise ZooError(
                "model_args", args, f"{shown} does not take these: {error}; it is {_signature(obj)}"
            ) from error
        except ValueError:  # no signature to read (a builtin): let the call say
            pass
        made = _call(obj, shown, args)
        if isinstance(made, type) and issubclass(made, ZooModel):
            made = _call(made, shown, {})
    else:
        raise ZooError(
            "model",
            shown,
            f"names a {type(obj).__name__}, not a factory, a torch.nn.Module or a ZooModel",
        )

    if isinstance(made, ZooModel):
        return _finish_entry(made, source, weights, shape, check=True)
    if not isinstance(made, nn.Module):
        raise ZooError(
            "model",
            shown,
            f"the factory returned {type(made).__name__}, not a torch.nn.Module or a ZooModel; return the "
            "network (an nn.Module) or a ZooModel entry",
        )
    return _adapt_module(made, shown, weights, shape, source, hooks)


def _signature(obj: Any) -> str:
    try:
        return f"{getattr(obj, '__name__', 'factory')}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return repr(obj)


def _call(factory: Callable[..., Any], shown: str, args: dict[str, Any]) -> Any:
    try:
        return factory(**args)
    except ZooError:
        raise  # an entry's own input error already names its field
    except Exception as error:
        raise ZooError("model", shown, f"the factory raised {_quote(error)}") from error


def _hook(hooks: ModuleType | None, name: str) -> Callable[..., Any] | None:
    fn = getattr(hooks, name, None) if hooks is not None else None
    return fn if callable(fn) else None


def _adapt_module(
    module: nn.Module,
    shown: str,
    weights: str | None,
    shape: tuple[int, ...] | None,
    source: ModelSource,
    hooks: ModuleType | None,
) -> UserModel:
    import torch

    loaded = _read_weights(weights) if weights is not None else None
    if shape is not None:
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
        generator = torch.Generator().manual_seed(0)  # the same example every time
        example = torch.randn(shape, generator=generator).to(dtype)
        input_field = "input_shape"
    elif (make_example := _hook(hooks, "example_input")) is not None:
        hook_name = f"{hooks.__name__}.example_input" if hooks is not None else "example_input"
        try:
            example = make_example()
        except Exception as error:
            raise ZooError("model", shown, f"{hook_name}() raised {_quote(error)}") from error
        if not isinstance(example, torch.Tensor) or example.dim() == 0 or example.shape[0] != 1:
            raise ZooError("model", shown, f"{hook_name}() must return one batch-1 tensor")
        input_field = "model"
    else:
        beside = f", or define example_input() in module {hooks.__name__}" if hooks is not None else ""
        raise ZooError(
            "input_shape",
            None,
            f"{shown!r} returns a bare nn.Module, so the shape of one input is needed: give "
            f"input_shape, batch first (e.g. 1,3,32,32){beside}",
        )
    if loaded is not None:
        _load_strict(module, loaded, str(weights))
        source = _with_weights(source, loaded)
    module.eval()
    _check_forward(module, example, shown, input_field, shape)
    entry = UserModel(
        module,
        name=shown,
        example=example,
        evaluate_fn=_hook(hooks, "evaluate"),
        ignore_fn=_hook(hooks, "ignore_layers"),
        hooks_from=hooks.__name__ if hooks is not None else None,
        metric=_declared(hooks, "METRIC"),
        task=_declared(hooks, "TASK"),
    )
    token_blocks = getattr(hooks, "TOKEN_BLOCKS", None) if hooks is not None else None
    if token_blocks is not None:
        entry.token_blocks = token_blocks
    # Text data is tokenised (and, without labels, embedded) by the factory module's hooks.
    for hook in ("tokenize", "embed"):
        if (fn := _hook(hooks, hook)) is not None:
            setattr(entry, hook, fn)
    setattr(entry, _SOURCE_ATTR, source)
    return entry


def _declared(hooks: ModuleType | None, name: str) -> str | None:
    value = getattr(hooks, name, None) if hooks is not None else None
    return value if isinstance(value, str) and value else None


def _with_weights(source: ModelSource, loaded: _Weights) -> ModelSource:
    data = source.to_dict() | {"weights_path": loaded.path, "weights_sha256": loaded.sha256}
    return ModelSource.from_dict(data)


def _finish_entry(
    entry: ZooModel,
    source: ModelSource,
    weights: str | None,
    shape: tuple[int, ...] | None,
    *,
    check: bool,
) -> ZooModel:
    """Record the source on a full entry; with a weights file (or for code outside the zoo)
    its ``build`` also loads the file strictly and checks the forward pass once."""
    if shape is not None:
        raise ZooError(
            "input_shape",
            shape,
            f"{source.name!r} is a full entry with its own example input; leave input_shape out",
        )
    loaded = _read_weights(weights) if weights is not None else None
    if loaded is not None:
        source = _with_weights(source, loaded)
    if loaded is not None or check:
        # An instance attribute shadows the class's build for this entry only.
        vars(entry)["build"] = _CheckedBuild(entry, loaded, str(weights) if weights else None, check)
    setattr(entry, _SOURCE_ATTR, source)
    return entry


# ----------------------------------------------------------------------------------- listing
def list_model_sources(*, load: bool = False) -> list[dict[str, Any]]:
    """The models one can name: the zoo's entries, then the installed plugins, sorted by name.

    Each is ``{"name", "source" ("zoo" | "plugin"), "package", "version", "task", "metric",
    "description"}``; plugins add ``"target"`` (their entry point's ``module:attribute``).
    Plugins are read from entry-point metadata without importing them, so their task and metric
    are None unless ``load=True``, which imports each plugin (an error loading it is reported in
    ``"error"``, not raised). A plugin whose name a zoo entry or another plugin also takes gets
    an ``"error"`` too: resolving it would not reach it.
    """
    rows: list[dict[str, Any]] = []
    for name in MODELS.list():
        cls = MODELS.get(name)
        rows.append(
            {
                "name": name,
                "source": "zoo",
                "package": "hwsearch",
                "version": _hwsearch_version(),
                "task": cls.task,
                "metric": cls.metric,
                "description": cls.description,
            }
        )
    eps = {ep.value: ep for found in _plugins().values() for ep in found}
    for plugin in list_plugins():  # from metadata; shadowed or doubled names carry an error
        row: dict[str, Any] = {"task": None, "metric": None, "description": None, **plugin}
        if load and "error" not in row:
            try:
                obj = eps[row["target"]].load()
            except Exception as error:
                row["error"] = f"does not load: {_quote(error)}"
            else:
                for key in ("task", "metric", "description"):
                    value = getattr(obj, key, None)
                    row[key] = value if isinstance(value, str) else None
        rows.append(row)
    return rows
