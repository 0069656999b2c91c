"""The models a job may name: the zoo's entries and the installed plugins (``GET /models``).

Nothing here imports torch or a plugin: the API process never does (DESIGN.md). Plugins are
listed from their entry-point metadata (``workers.model_refs.list_plugins``: name, package,
version, the object it names); their task and metric are known only once a worker imports
them, so they are None here. The zoo's task, metric and description come from
``zoo_models.json``, a torch-free copy of the registry's class attributes that a test keeps
equal to ``workers.zoo`` (``model_class(name).task`` / ``.metric`` / ``.description``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from workers.model_refs import ZOO_MODELS, hwsearch_version, list_plugins

from .deps import Read
from .schemas import API

router = APIRouter(prefix=API)

#: The zoo's entries as ``workers.zoo`` describes them: name → {task, metric, description}.
ZOO_INFO_FILE = Path(__file__).with_name("zoo_models.json")


@functools.lru_cache(maxsize=1)
def zoo_info() -> dict[str, dict[str, str]]:
    info: dict[str, dict[str, str]] = json.loads(ZOO_INFO_FILE.read_text())
    return info


def list_models() -> list[dict[str, Any]]:
    """The zoo's entries (package ``hwsearch``), then every installed plugin, each with the same
    keys: name, source (``zoo`` | ``plugin``), package, version, task, metric, description,
    target (a plugin's ``module:object``), error (a plugin that cannot be used: why)."""
    info = zoo_info()
    rows: list[dict[str, Any]] = []
    for name in ZOO_MODELS:
        entry = info.get(name, {})
        rows.append(
            {
                "name": name,
                "source": "zoo",
                "package": "hwsearch",
                "version": hwsearch_version(),
                "task": entry.get("task"),
                "metric": entry.get("metric"),
                "description": entry.get("description"),
                "target": None,
                "error": None,
            }
        )
    for plugin in list_plugins():
        rows.append(
            {
                "name": plugin["name"],
                "source": "plugin",
                "package": plugin.get("package"),
                "version": plugin.get("version"),
                "task": None,  # known once a worker imports it (`hwsearch models` there shows it)
                "metric": None,
                "description": None,
                "target": plugin.get("target"),
                "error": plugin.get("error"),
            }
        )
    return rows


@router.get("/models", dependencies=[Read])
async def models() -> dict[str, Any]:
    """The zoo's entries and the installed plugins (read from metadata: nothing is imported)."""
    return {"items": await run_in_threadpool(list_models)}
