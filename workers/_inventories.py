"""A persistent cache of traced layer inventories, keyed by model id, coupling and trace code.

Calibrating or validating on a measurement table needs every row's layer inventory; tracing
builds the network and runs a forward pass (tens of milliseconds for a NAS-Bench-201 cell,
1,000 of them take tens of seconds), so ``hwsearch latency fit`` / ``validate`` on the same
networks again would trace them all again. The inventory of a zoo id depends only on the id,
on ``coupling`` and on the code that builds and traces it, so it is stored once under
``<data dir>/inventories/<sha256>.json`` and read back afterwards.

The key hashes the source of ``kernels``, ``search_spaces`` and ``workers.zoo`` (plus
:data:`INVENTORY_FORMAT`): any change to the tracer, the LayerSpec vocabulary or a zoo
model's definition gives new keys, so an inventory written by older code is never reused.
Only built-in zoo ids are stored: a plugin's or an import path's code lives outside this
checkout, so its inventory is traced every time (and kept in memory for one table).
A file that cannot be read back (truncated, corrupt, another key) is traced again and
rewritten; files are written atomically (a temporary file renamed over the target).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from search_spaces import LayerSpec, SpaceError

__all__ = ["INVENTORY_FORMAT", "InventoryCache", "trace_key"]

#: Bump when the stored file's layout changes (the code hash covers the tracer's output).
INVENTORY_FORMAT = 1

#: LayerSpec's fields, in declaration order (what ``LayerSpec.to_dict`` writes).
_FIELDS = tuple(f.name for f in dataclasses.fields(LayerSpec))

#: Packages whose source determines a zoo model's traced inventory.
_TRACE_PACKAGES = ("kernels", "search_spaces", "workers.zoo")


@functools.lru_cache(maxsize=1)
def trace_key() -> str:
    """A hash of the code that builds and traces zoo models (and of INVENTORY_FORMAT).

    Computed once per process; hashing the sources (not a hand-kept version number) means a
    tracer change (e.g. recording graph ops) cannot be forgotten when bumping a constant.
    """
    import importlib

    digest = hashlib.sha256(f"inventory-format-{INVENTORY_FORMAT}".encode())
    for name in _TRACE_PACKAGES:
        module = importlib.import_module(name)
        root = Path(str(module.__file__)).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _trace(model_id: str, coupling: bool) -> list[LayerSpec]:
    """Build ``model_id`` and trace it (the one place that traces; tests count calls here)."""
    from workers.zoo import prepare

    return prepare(model_id, coupling=coupling).layers


def _layer_dict(layer: LayerSpec) -> dict[str, Any]:
    """``layer.to_dict()`` without ``dataclasses.asdict``'s deep copy (a third of a cold
    NAS-Bench-201 row's time went there); JSON serialisation copies the values anyway."""
    data = {name: getattr(layer, name) for name in _FIELDS}
    data["kind"] = layer.kind.value
    return data


def _is_builtin(model_id: str) -> bool:
    """Whether ``model_id`` names a built-in zoo model (whose code this checkout holds)."""
    from workers.zoo._base import MODELS

    return model_id.split(":", 1)[0] in MODELS


class InventoryCache:
    """Inventories by (model id, coupling): in memory, and on disk under ``root`` for zoo ids.

    ``root`` None keeps them in memory only. ``traced`` counts the traces this cache ran.
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self.traced = 0
        self._memory: dict[tuple[str, bool], list[LayerSpec]] = {}

    def path(self, model_id: str, coupling: bool) -> Path | None:
        """The file of ``model_id``'s inventory (None when it is not stored on disk)."""
        if self.root is None or not _is_builtin(model_id):
            return None
        name = hashlib.sha256(f"{model_id}\0{coupling}\0{trace_key()}".encode()).hexdigest()
        return self.root / f"{name}.json"

    def get(self, model_id: str, coupling: bool) -> list[LayerSpec]:
        """``model_id``'s inventory: from memory, from its file, else traced (and stored)."""
        key = (model_id, coupling)
        if key in self._memory:
            return self._memory[key]
        path = self.path(model_id, coupling)
        layers = self._read(path, model_id, coupling) if path is not None else None
        if layers is None:
            layers = _trace(model_id, coupling)
            self.traced += 1
            if path is not None:
                self._write(path, model_id, coupling, layers)
        self._memory[key] = layers
        return layers

    @staticmethod
    def _read(path: Path, model_id: str, coupling: bool) -> list[LayerSpec] | None:
        """The stored inventory, or None when absent or unreadable (it is traced again)."""
        try:
            raw: Any = json.loads(path.read_text())
            if raw.get("model") != model_id or raw.get("coupling") != coupling:
                return None  # a hash collision or a hand-edited file: never serve another model
            if raw.get("trace_key") != trace_key():
                return None
            return [LayerSpec.from_dict(d) for d in raw["layers"]]
        except (OSError, ValueError, TypeError, KeyError, AttributeError, SpaceError):
            return None

    @staticmethod
    def _write(path: Path, model_id: str, coupling: bool, layers: list[LayerSpec]) -> None:
        """Store atomically; a cache that cannot be written (read-only disk) only costs time."""
        body = {
            "model": model_id,
            "coupling": coupling,
            "trace_key": trace_key(),
            "layers": [_layer_dict(layer) for layer in layers],
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(body))  # one write: json.dump writes per token
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass


def default_cache() -> InventoryCache:
    """The cache under the data dir's ``inventories`` folder (``$HWSEARCH_DATA_DIR``)."""
    from latency_models import data_dir

    return InventoryCache(data_dir() / "inventories")
