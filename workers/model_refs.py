"""What a model or evaluator reference names, checked without importing torch or the reference.

The service validates a JobSpec in the API process, which never imports torch (DESIGN.md), so
everything it checks about a model source is here: the zoo's names (``ZOO_MODELS``, kept equal to
the registry by a test), installed plugins read from entry-point *metadata* (nothing is
imported), and import paths ``package.module:attribute`` whose top-level package the service
allows (the setting ``HWSEARCH_MODEL_MODULES``). ``workers.zoo.resolve_model`` then builds what
these name, where the workers run.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import re
from collections.abc import Collection
from typing import Any, Literal

__all__ = [
    "MODULES_SETTING",
    "PLUGIN_GROUP",
    "ZOO_MODELS",
    "ModelRefError",
    "check_import_path",
    "dist_of",
    "hwsearch_version",
    "list_plugins",
    "model_kind",
    "plugin_entry_points",
]

#: The entry-point group a distribution declares its models in.
PLUGIN_GROUP = "hwsearch.models"
#: The setting (environment variable of the service and its workers) listing the top-level
#: packages a job's import paths (model factory, evaluator) may name.
MODULES_SETTING = "HWSEARCH_MODEL_MODULES"
#: The zoo's model names, so a spec can be checked without importing the zoo (torch); a test
#: keeps this equal to ``workers.zoo.list_models()``.
ZOO_MODELS = (
    "digits-cnn",
    "digits-vit",
    "efficientnet-lite0",
    "fbnet",
    "minilm-l6",
    "mobilenet-v2",
    "nasbench201",
)

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
DOTTED = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")


class ModelRefError(ValueError):
    """A reference that cannot name anything; the message says what is allowed."""


def plugin_entry_points() -> dict[str, list[metadata.EntryPoint]]:
    """Entry points of the plugin group by name (a name two distributions declare has two)."""
    found: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def dist_of(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    """The distribution name and version that declares ``ep`` (None, None when unknown)."""
    dist = ep.dist
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


@functools.lru_cache(maxsize=1)
def hwsearch_version() -> str | None:
    try:
        return metadata.version("hwsearch")
    except metadata.PackageNotFoundError:  # a checkout run without installing it
        return None


def list_plugins() -> list[dict[str, Any]]:
    """The installed plugins from their metadata alone (nothing is imported): name, package,
    version, entry-point target, and ``error`` when the name is taken twice."""
    rows: list[dict[str, Any]] = []
    for name, eps in sorted(plugin_entry_points().items()):
        for ep in eps:
            package, version = dist_of(ep)
            row: dict[str, Any] = {
                "name": name,
                "source": "plugin",
                "package": package,
                "version": version,
                "target": ep.value,
            }
            if name in ZOO_MODELS:
                row["error"] = f"shadowed by the zoo entry {name!r}; the plugin must use another name"
            elif len(eps) > 1:
                others = ", ".join(str(dist_of(e)[0]) for e in eps if e is not ep)
                row["error"] = f"also declared by {others}; uninstall one"
            rows.append(row)
    return rows


def check_import_path(value: str, what: str, allowed_modules: Collection[str] | None) -> str:
    """``value`` as an import path ``package.module:attribute`` whose top-level package is in
    ``allowed_modules`` (None: any). ``what`` names it in messages (``a model factory``)."""
    module, sep, attr = value.partition(":")
    if not sep or not DOTTED.fullmatch(module) or not DOTTED.fullmatch(attr):
        raise ModelRefError(
            f"{value!r} is not an import path; write {what} as package.module:function "
            "(e.g. mypkg.nets:build_resnet)"
        )
    top = module.split(".")[0]
    if allowed_modules is not None and top not in allowed_modules:
        listed = ", ".join(sorted(allowed_modules)) or "empty"
        raise ModelRefError(
            f"import paths may only name the packages in the setting {MODULES_SETTING} ({listed}); "
            f"add {top!r} to it where the service and its workers run, or install the model as a plugin"
        )
    return value


def model_kind(
    value: str, allowed_modules: Collection[str] | None = None
) -> Literal["zoo", "plugin", "import"]:
    """Which way ``value`` names a model: a zoo id (``name`` or ``name:argument``), an installed
    plugin, or an import path (checked against ``allowed_modules``). The zoo's arguments are
    checked by the caller (``JobSpec``)."""
    name = value.partition(":")[0]
    if name in ZOO_MODELS:
        return "zoo"
    if name in plugin_entry_points():
        return "plugin"
    if ":" not in value:
        plugins = ", ".join(sorted(plugin_entry_points())) or "none installed"
        raise ModelRefError(
            f"unknown model {value!r}: not a zoo or plugin name, and not an import path module:factory "
            f"(e.g. mypkg.nets:build_resnet); zoo: {', '.join(ZOO_MODELS)}; plugins: {plugins}"
        )
    check_import_path(value, "a model factory", allowed_modules)
    return "import"
