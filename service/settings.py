"""Service settings from the environment, validated once at start-up.

A wrong value stops start-up with a message that names the variable, the value and the fix
(``SettingsError``). Nothing here imports torch or ray.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from latency_models import data_dir as default_data_dir
from search_spaces import InputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_PACKAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: How many times its zip's size a dataset may unpack to (a zip bomb is refused as it unpacks).
DATASET_UNPACK_FACTOR = 4


class SettingsError(InputError):
    """A bad environment variable: names it (``field``), its value and what is allowed."""

    @staticmethod
    def _format(field: str, value: Any, hint: str) -> str:
        return f"{field}={value!r}: {hint}"


#: Every environment variable the service reads (the CLI's HWSEARCH_URL and HWSEARCH_TOKEN
#: are read by the client commands, not by the service).
VARIABLES = (
    "DATABASE_URL",
    "HWSEARCH_DATA_DIR",
    "RAY_ADDRESS",
    "HWSEARCH_READS_OPEN",
    "HWSEARCH_MAX_UPLOAD_BYTES",
    "HWSEARCH_DISPATCHER",
    "HWSEARCH_ORPHAN_AFTER_S",
    "HWSEARCH_METRICS_OPEN",
    "HWSEARCH_MAX_BODY_BYTES",
    "HWSEARCH_MAX_UPLOAD_ROWS",
    "HWSEARCH_MAX_QUEUED_JOBS",
    "HWSEARCH_RATE_LIMIT",
    "HWSEARCH_STALL_S",
    "HWSEARCH_MODEL_MODULES",
    "HWSEARCH_FILE_ROOTS",
    "HWSEARCH_MAX_DATASET_BYTES",
    "HWSEARCH_AGENT_LEASE_S",
    "HWSEARCH_PROFILE_TIMEOUT_S",
)


@dataclass(frozen=True)
class Settings:
    """Every setting the service reads (the names are the environment variables)."""

    data_dir: Path
    database_url: str
    ray_address: str | None
    reads_open: bool
    max_upload_bytes: int
    run_dispatcher: bool
    #: A running job whose heartbeat is older than this is taken to be orphaned and resumed.
    orphan_after_s: float
    #: Whether /metrics answers without a token (default: as reads do).
    metrics_open: bool = True
    #: The largest JSON body a route reads (measurement uploads have ``max_upload_bytes``).
    max_body_bytes: int = 1024 * 1024
    #: The most rows a measurement upload may have.
    max_upload_rows: int = 2_000_000
    #: The most queued jobs one owner may have at a time (a 429 beyond).
    max_queued_jobs: int = 100
    #: Requests per minute one client (its token, else its address) may make (a 429 beyond).
    rate_limit_per_minute: int = 1200
    #: A running job whose evaluations have all been waiting this long (no trial finished: its
    #: evaluators lost and not replaceable) fails with the reason instead of hanging.
    stall_s: float = 900.0
    #: The top-level packages a job's import paths (model factory, evaluator) may name; empty:
    #: only zoo models and installed plugins (nothing sent over HTTP names other code).
    model_modules: tuple[str, ...] = ()
    #: The absolute folders whose files a job's ``weights`` and ``data.path`` may name; empty:
    #: no path at all (registered datasets are used instead).
    file_roots: tuple[str, ...] = ()
    #: The largest dataset zip ``POST /api/v1/datasets`` accepts (413 beyond); its content may
    #: unpack to at most ``DATASET_UNPACK_FACTOR`` times as much.
    max_dataset_bytes: int = 512 * 1024 * 1024
    #: How long a device agent holds a measurement task without a heartbeat; an expired lease
    #: goes back to the queue (the agent beats every third of it).
    agent_lease_s: float = 60.0
    #: A profile whose tasks are not all measured this long after they were queued fails (its
    #: devices disappeared), keeping what was measured.
    profile_timeout_s: float = 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = default_data_dir(env)
        if data_dir.exists() and not data_dir.is_dir():
            raise SettingsError("HWSEARCH_DATA_DIR", str(data_dir), "a directory is required")
        url = env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'hwsearch.db'}"
        scheme = urlparse(url).scheme.split("+")[0]
        if scheme not in ("sqlite", "postgresql"):
            raise SettingsError(
                "DATABASE_URL",
                url,
                "a sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB URL is required",
            )
        if scheme == "postgresql" and "+" not in urlparse(url).scheme:
            url = "postgresql+psycopg" + url[len("postgresql") :]  # the driver that is installed
        ray_address = env.get("RAY_ADDRESS") or None
        if ray_address is not None and not (ray_address == "auto" or ":" in ray_address):
            raise SettingsError("RAY_ADDRESS", ray_address, "HOST:PORT, ray://HOST:PORT or auto is required")
        reads_open = _flag(env, "HWSEARCH_READS_OPEN", True)
        return cls(
            data_dir=data_dir,
            database_url=url,
            ray_address=ray_address,
            reads_open=reads_open,
            max_upload_bytes=_positive_int(env, "HWSEARCH_MAX_UPLOAD_BYTES", 20 * 1024 * 1024),
            run_dispatcher=_flag(env, "HWSEARCH_DISPATCHER", True),
            orphan_after_s=_positive_int(env, "HWSEARCH_ORPHAN_AFTER_S", 30),
            metrics_open=_flag(env, "HWSEARCH_METRICS_OPEN", reads_open),
            max_body_bytes=_positive_int(env, "HWSEARCH_MAX_BODY_BYTES", 1024 * 1024),
            max_upload_rows=_positive_int(env, "HWSEARCH_MAX_UPLOAD_ROWS", 2_000_000),
            max_queued_jobs=_positive_int(env, "HWSEARCH_MAX_QUEUED_JOBS", 100),
            rate_limit_per_minute=_positive_int(env, "HWSEARCH_RATE_LIMIT", 1200),
            stall_s=_positive_int(env, "HWSEARCH_STALL_S", 900),
            model_modules=_packages(env, "HWSEARCH_MODEL_MODULES"),
            file_roots=_folders(env, "HWSEARCH_FILE_ROOTS"),
            max_dataset_bytes=_positive_int(env, "HWSEARCH_MAX_DATASET_BYTES", 512 * 1024 * 1024),
            agent_lease_s=_positive_int(env, "HWSEARCH_AGENT_LEASE_S", 60),
            profile_timeout_s=_positive_int(env, "HWSEARCH_PROFILE_TIMEOUT_S", 3600),
        )


def _items(env: Mapping[str, str], name: str, separators: str) -> list[str]:
    raw = env.get(name) or ""
    for sep in separators[1:]:
        raw = raw.replace(sep, separators[0])
    return [part.strip() for part in raw.split(separators[0]) if part.strip()]


def _packages(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Comma-separated top-level package names (``mypkg,otherpkg``), each an identifier."""
    packages = _items(env, name, ",")
    for package in packages:
        if not _PACKAGE.fullmatch(package):
            raise SettingsError(
                name,
                env.get(name),
                f"{package!r} is not a top-level package name: comma-separated names such as "
                "mypkg,otherpkg are required (no dots, no module paths)",
            )
    return tuple(dict.fromkeys(packages))


def _folders(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Absolute folders separated by os.pathsep or commas, normalised (no '..', no trailing '/')."""
    folders = []
    for folder in _items(env, name, os.pathsep + ","):
        if not os.path.isabs(folder) or ".." in Path(folder).parts or "\x00" in folder:
            raise SettingsError(
                name,
                env.get(name),
                f"{folder!r} is not an absolute folder path without '..': absolute folders separated "
                f"by {os.pathsep!r} or ',' are required, e.g. /srv/models{os.pathsep}/srv/data",
            )
        folders.append(os.path.normpath(folder))
    return tuple(dict.fromkeys(folders))


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise SettingsError(name, raw, "true or false is required")


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, raw, "a positive whole number is required") from None
    if value <= 0:
        raise SettingsError(name, raw, "a positive whole number is required")
    return value
