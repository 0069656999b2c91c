"""Imports flow one way: service → workers → {kernels, latency_models} → search_spaces, and no
module imports itself back through others (no import circle anywhere, inside a package too)."""

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


# ---------------------------------------------------------------------------- import circles
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in RANK for p in sorted((ROOT / package).rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks: imports for annotations only, never run."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _module_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports, at module level or inside functions (a lazy import
    still ties the two modules together), resolved to the module named: importing
    ``a.b.c`` is an edge to ``a.b.c``, not to the packages above it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # ``from pkg import sub`` imports the submodule ``pkg.sub``.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle."""
    modules = _modules()
    graph = {name: sorted(_module_imports(name, path, modules)) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_module_names_resolve() -> None:
    # Guard: relative imports resolve to real modules (an edge inside a package is found).
    modules = _modules()
    assert "workers.search._objectives" in _module_imports(
        "workers.search._problem", modules["workers.search._problem"], modules
    )


def test_no_import_circles() -> None:
    circles = _circles()
    assert not circles, "import circles (cut each by giving the shared part its own module): " + "; ".join(
        " ↔ ".join(c) for c in circles
    )
