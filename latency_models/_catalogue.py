"""The versioned catalogue: user targets and fitted predictors on disk, one active version per target.

Layout under the catalogue root (the service's data dir):
``targets/<name>.json`` — user-defined targets;
``predictors/<target>/<version>/predictor.json`` + ``report.json`` — each fit, never overwritten;
``predictors/<target>/ACTIVE`` — the version in use.

Every target name is checked against the one name pattern (``search_spaces.NAME_PATTERN``)
before it becomes part of a path, here as well as where it came in: a name like ``..`` would
otherwise write ``ACTIVE`` at the data directory's root.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import platformdirs

from search_spaces import NAME_HINT, is_name

from ._errors import LatencyModelError
from ._predictor import Predictor, load_predictor
from ._target import Target, check_target_name, get_target, register_target

_log = logging.getLogger(__name__)


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$HWSEARCH_DATA_DIR`` (of ``env``, default the process environment) or the user data
    dir: the catalogue of targets and predictors, and the service's database and artifacts."""
    env = os.environ if env is None else env
    root = env.get("HWSEARCH_DATA_DIR") or platformdirs.user_data_dir("hwsearch")
    return Path(root)


def catalogue(root: str | Path | None = None) -> Catalogue:
    """The catalogue under ``root`` (default ``data_dir()``), its user targets registered.

    Library code takes a ``Catalogue`` as an argument; only the edges (the CLI, the service's
    settings) choose its folder, so no process passes its data directory through the
    environment."""
    cat = Catalogue(data_dir() if root is None else root)
    cat.load_targets()
    return cat


class Catalogue:
    """Targets and predictor versions stored under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- targets -------------------------------------------------------------------------
    def add_target(self, target: Target) -> Target:
        """Store a user target (JSON) and register it for this process."""
        check_target_name(target.name)
        folder = self.root / "targets"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{target.name}.json.tmp"
        tmp.write_text(json.dumps(target.to_dict(), indent=2))
        tmp.replace(folder / f"{target.name}.json")
        return register_target(target, replace=True)

    def load_targets(self) -> list[str]:
        """Register every stored user target; returns their names."""
        names = []
        for path in sorted((self.root / "targets").glob("*.json")):
            if not is_name(path.stem):
                # Stored before names were checked (or put there by hand): skipped, not fatal,
                # so one such file does not take every request that reads the catalogue down.
                _log.warning(
                    "skipping target file %s: %r is not a valid target name (%s); rename the file "
                    'and its "name"',
                    path,
                    path.stem,
                    NAME_HINT,
                )
                continue
            target = Target.from_dict(json.loads(path.read_text()))
            register_target(target, replace=True)
            names.append(target.name)
        return names

    def target(self, name: str) -> Target:
        """A target with its active predictor version filled in."""
        self.load_targets()
        return replace(get_target(name), predictor_version=self.active_version(name))

    # ---- predictors ----------------------------------------------------------------------
    def _folder(self, target: str) -> Path:
        # Every predictor path (save, versions, report, activate, ACTIVE) goes through here.
        return self.root / "predictors" / check_target_name(target, "target")

    def save_predictor(
        self, target: str, predictor: Predictor, report: dict[str, Any], *, activate: bool = True
    ) -> str:
        """Store a fitted predictor and its validation report as a new version; returns the version id."""
        version = time.strftime("v%Y%m%d-%H%M%S", time.gmtime())
        folder = self._folder(target)
        n = 1
        while (folder / version).exists():  # two fits within one second
            n += 1
            version = f"{version.split('.')[0]}.{n}"
        predictor.save(folder / version)
        (folder / version / "report.json").write_text(json.dumps(report, indent=2))
        if activate:
            self.activate(target, version)
        return version

    def versions(self, target: str) -> list[str]:
        folder = self._folder(target)
        return (
            sorted(p.name for p in folder.iterdir() if (p / "predictor.json").exists())
            if folder.exists()
            else []
        )

    def report(self, target: str, version: str) -> dict[str, Any]:
        """The validation report stored with a predictor version."""
        if version not in self.versions(target):
            raise LatencyModelError(
                "version", version, f"one of {self.versions(target) or 'no versions yet'}"
            )
        report: dict[str, Any] = json.loads((self._folder(target) / version / "report.json").read_text())
        return report

    def activate(self, target: str, version: str) -> None:
        if version not in self.versions(target):
            raise LatencyModelError(
                "version", version, f"one of {self.versions(target) or 'no versions yet'}"
            )
        tmp = self._folder(target) / "ACTIVE.tmp"
        tmp.write_text(version)
        tmp.replace(self._folder(target) / "ACTIVE")

    def active_version(self, target: str) -> str | None:
        path = self._folder(target) / "ACTIVE"
        return path.read_text().strip() if path.exists() else None

    def learned_targets(self) -> list[str]:
        """Targets with an active learned predictor (the sources a transfer can borrow from), sorted."""
        folder = self.root / "predictors"
        if not folder.exists():
            return []
        return sorted(p.name for p in folder.iterdir() if is_name(p.name) and (p / "ACTIVE").exists())

    def predictor(self, target: str) -> tuple[Predictor, dict[str, Any]] | None:
        """The active predictor of ``target`` and its report, or None when it has none."""
        version = self.active_version(target)
        if version is None:
            return None
        folder = self._folder(target) / version
        return load_predictor(folder), json.loads((folder / "report.json").read_text())
