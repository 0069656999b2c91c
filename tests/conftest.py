"""Shared test set-up: quiet library warnings, one torch thread pool for the whole run, and two
helpers the service tests share as fixtures:

- ``serve``: serves an app with uvicorn in a thread on a free port (``with serve(app) as url:``);
- ``synthetic``: bench/synthetic.py, the synthetic trials the benches use too (``synthetic.trial``
  for one trial with exact numbers, ``synthetic.trials`` for a job's worth).
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # torch.ao quantization and Torch-Pruning announce deprecations on every call.
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    # One thread: on a 2-core machine shared with anything else, torch's thread pool
    # oversubscribes and small kernels run up to 100× slower (seen here); one thread is
    # steady, and the models in the suite are small.
    torch.set_num_threads(1)


@contextmanager
def serving(app: Any, *, timeout_s: float = 30.0) -> Iterator[str]:
    """``app`` served by uvicorn in a daemon thread on a free port of 127.0.0.1; yields its URL
    once it answers (its lifespan started) and stops it, lifespan shutdown included, on exit."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and handed over: no other process can take the port
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"uvicorn did not start within {timeout_s} s (see the log above)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


@pytest.fixture(scope="session")
def serve() -> Callable[..., AbstractContextManager[str]]:
    """``with serve(app) as url:`` — the app served by uvicorn on a free port (``serving``)."""
    return serving


@pytest.fixture(scope="session")
def synthetic() -> ModuleType:
    """bench/synthetic.py (bench/ is not a package on the path; its scripts import it by name)."""
    path = ROOT / "bench" / "synthetic.py"
    spec = importlib.util.spec_from_file_location("bench_synthetic", path)
    if spec is None or spec.loader is None:  # pragma: no cover - the file is in the repository
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
