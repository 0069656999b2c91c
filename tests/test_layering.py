"""Imports flow one way: service → workers → {kernels, latency_models} → search_spaces."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"search_spaces": 0, "kernels": 1, "latency_models": 1, "workers": 2, "service": 3}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):  # includes imports inside functions
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _edges() -> list[tuple[str, str, Path]]:
    edges = []
    for package in RANK:
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in _imports(path) & set(RANK):
                if target != package:
                    edges.append((package, target, path))
    return edges


def test_edges_found() -> None:
    # Guard against the walk silently finding nothing (e.g. a renamed folder).
    assert any(src == "kernels" and dst == "search_spaces" for src, dst, _ in _edges())


@pytest.mark.parametrize(
    "src,dst,path", _edges(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v
)
def test_import_direction(src: str, dst: str, path: Path) -> None:
    assert {src, dst} != {"kernels", "latency_models"}, (
        f"{path}: kernels and latency_models never import each other"
    )
    assert RANK[dst] < RANK[src], (
        f"{path}: {src} may not import {dst} (service → workers → kernels/latency_models → search_spaces)"
    )


@pytest.mark.parametrize(
    "module,forbidden",
    [
        ("search_spaces", ("torch",)),
        ("latency_models", ("torch",)),
        ("service", ("torch", "ray")),
        # The API process: validating a JobSpec must not load a model or start Ray either.
        ("service.app", ("torch", "ray", "optuna")),
    ],
)
def test_light_packages_do_not_pull_heavy_imports(module: str, forbidden: tuple[str, ...]) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {module} pulled in {out.stdout.strip()}"


def test_importing_kernels_does_not_initialise_cuda() -> None:
    code = "import torch, kernels, workers.zoo; print(torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
