"""docker-compose.yml: the variables it gives the service are the service's real settings, it
fails fast on a missing secret, and every long-running service has a healthcheck.

No Docker engine runs on these machines, so the file is checked by reading it: ``${VAR:?msg}``
/ ``${VAR:-default}`` are resolved as compose resolves them, and the result must pass
``Settings.from_env``. Compose's own ``config -q`` runs too, with `docker compose` or
Debian's `docker-compose` (1.29), whichever is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
_VAR = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\}")


def resolve(text: str, env: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        value = env.get(m["name"], "")
        if value:
            return value
        if m["op"] == ":?":
            raise ValueError(f"{m['name']}: {m['arg']}")
        return m["arg"] or ""

    return _VAR.sub(one, text)


def compose(env: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(resolve(COMPOSE.read_text(), env))
    return doc


#: Ray's own variables (its token authentication), read by Ray on every node and in the service.
RAY_AUTH = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
SECRETS = {"POSTGRES_PASSWORD": "pw", "RAY_AUTH_TOKEN": "t0k"}


def test_the_service_gets_only_real_settings() -> None:
    doc = compose(SECRETS)
    env = {k: str(v) for k, v in doc["services"]["service"]["environment"].items()}
    assert set(env) <= set(VARIABLES) | RAY_AUTH, set(env) - set(VARIABLES) - RAY_AUTH
    assert {"DATABASE_URL", "RAY_ADDRESS", "HWSEARCH_DATA_DIR"} <= set(env)
    settings = Settings.from_env(env)
    assert settings.database_url == "postgresql+psycopg://hwsearch:pw@postgres:5432/hwsearch"
    assert settings.ray_address == "ray-head:6380"
    for name in ("ray-head", "ray-worker", "service"):
        ray_env = doc["services"][name]["environment"]
        assert set(ray_env) <= set(VARIABLES) | RAY_AUTH
        # Every Ray process and the service share one token: Ray's only access control.
        assert ray_env["RAY_AUTH_MODE"] == "token" and ray_env["RAY_AUTH_TOKEN"] == "t0k"


def test_a_missing_secret_fails_fast() -> None:
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        compose({"RAY_AUTH_TOKEN": "t0k"})
    with pytest.raises(ValueError, match="RAY_AUTH_TOKEN"):
        compose({"POSTGRES_PASSWORD": "pw"})


def test_long_running_services_have_healthchecks_and_wait_for_them() -> None:
    services = compose(SECRETS)["services"]
    assert set(services) == {"postgres", "ray-head", "ray-worker", "service"}
    for name in ("postgres", "ray-head", "service"):
        assert services[name]["healthcheck"]["test"]
    needs = services["service"]["depends_on"]
    assert needs["postgres"]["condition"] == needs["ray-head"]["condition"] == "service_healthy"
    # Ray's head must not take Redis's 6379 on a shared host.
    assert "--port=6380" in services["ray-head"]["command"]


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        command = [docker, "compose"]
    elif shutil.which("docker-compose"):
        command = [str(shutil.which("docker-compose"))]  # Debian's compose 1.29 reads the same file
    else:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed; the file was checked by reading it"
        )
    env = {"PATH": "/usr/bin:/bin"}
    missing = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env
    )
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stdout + missing.stderr
    out = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env={**env, **SECRETS},
    )
    assert out.returncode == 0, out.stdout + out.stderr
