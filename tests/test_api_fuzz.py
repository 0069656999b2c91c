"""Schemathesis against the service's own OpenAPI schema: no request it generates gets a 5xx.

A real uvicorn server (SQLite in a temporary directory, no dispatcher, so no search starts)
is fuzzed with a valid token on every operation, 30 examples per operation.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.settings import Settings


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, serve: Any) -> Iterator[tuple[str, str]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    env = {
        "HWSEARCH_DATA_DIR": str(tmp),
        "DATABASE_URL": f"sqlite:///{tmp / 'hwsearch.db'}",
        # The fuzzer is one client sending thousands of requests: the rate limit would cut its
        # coverage short (tests/test_abuse.py tests the limit).
        "HWSEARCH_RATE_LIMIT": "1000000",
        "HWSEARCH_MAX_QUEUED_JOBS": "1000000",
    }
    app = create_app(Settings.from_env(env), dispatcher=False)
    with serve(app) as url:
        token = app.state.store.create_token("fuzz")
        errors = _Errors()
        logging.getLogger("uvicorn.error").addHandler(errors)
        yield url, token
        logging.getLogger("uvicorn.error").removeHandler(errors)
        # An exception in the app is a 500 even where the client saw the connection drop.
        assert not errors.records, "\n".join(errors.records[:5])


def test_no_request_gets_a_server_error(live: tuple[str, str], tmp_path: Path) -> None:
    # Schemathesis' own CLI: its pytest plugin does not run under pytest 9.
    url, token = live
    st = Path(sys.executable).with_name("schemathesis")
    out = subprocess.run(
        [
            *(str(st), "run", f"{url}/openapi.json", "--checks", "not_a_server_error"),
            *("--header", f"Authorization: Bearer {token}", "--max-examples", "30", "--workers", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Fuzzing" in out.stdout and "Operations:" in out.stdout
