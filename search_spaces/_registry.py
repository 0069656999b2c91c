"""One registry by name for every extension point (models, strategies, predictors, target
families, targets): the same ``register`` / ``create`` / ``list(pattern)`` everywhere.

Registering a second, different entry under a taken name is an error unless ``replace=True``
(registering the same object again is a no-op, so re-imported modules are harmless); an
unknown name raises the registry's ``InputError`` subclass with the valid names listed.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ._errors import InputError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name.

    ``kind`` names the entries in errors ("model", "strategy", ...); ``error`` is the
    ``InputError`` subclass raised for unknown or clashing names; ``loader`` (optional) is run
    once, under a lock, before the first lookup: built-ins that live in data files or heavy
    modules register themselves there. ``lazy`` maps names to a module importer that
    registers them on first ``get`` (listed without being imported).
    """

    def __init__(
        self,
        kind: str,
        error: type[InputError] = InputError,
        *,
        loader: Callable[[], None] | None = None,
        lazy: dict[str, Callable[[], object]] | None = None,
    ) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, T] = {}
        self._loader = loader
        self._loaded = loader is None
        self._loading = False
        self._lock = threading.RLock()
        self._lazy = dict(lazy or {})

    # ---- loading ---------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        # Thread-safe: the service answers requests from a thread pool, and a second thread must
        # not see the registry between "loading started" and "loaded".
        if self._loaded:
            return
        with self._lock:  # re-entrant: the loader registers through register()
            if self._loaded or self._loading or self._loader is None:
                return
            self._loading = True
            try:
                self._loader()
                self._loaded = True
            finally:
                self._loading = False

    # ---- the three verbs -------------------------------------------------------------------
    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name``; a different entry under a taken name needs ``replace``."""
        self._ensure_loaded()
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old is not entry and not replace:
                raise self.error(
                    f"{self.kind}.name", name, "already registered; pass replace=True to update it"
                )
            self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry ``name``; the error lists the valid names."""
        self._ensure_loaded()
        if name not in self._entries and name in self._lazy:
            self._lazy[name]()  # imports the module that registers it
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(
                self.kind, name, f"unknown {self.kind}; valid names: {', '.join(self.list()) or 'none'}"
            ) from None

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names (and lazily imported built-ins) matching a glob pattern, sorted."""
        self._ensure_loaded()
        names = set(self._entries) | set(self._lazy)
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a throw-away entry clean up with this)."""
        self._ensure_loaded()
        with self._lock:
            self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())
