"""Shared test set-up: quiet library warnings, one torch thread pool for the whole run."""

from __future__ import annotations

import warnings

import pytest


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
