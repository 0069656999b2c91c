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
    # Two cores in CI; more threads than cores makes tiny kernels dramatically slower.
    torch.set_num_threads(min(2, torch.get_num_threads()))
