"""The persistent inventory cache (workers/_inventories.py) and calibration's use of it."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from latency_models import catalogue, get_target, predict
from search_spaces import LayerSpec, Plan
from workers import _inventories
from workers._inventories import InventoryCache
from workers.calibration import fit, validate
from workers.zoo import prepare
from workers.zoo.nasbench201 import OPS

FBNET = "fbnet"


def _archs(n: int, seed: int) -> list[str]:
    """``n`` distinct NAS-Bench-201 arch strings drawn from the 15,625."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(OPS) ** 6, size=n, replace=False)
    out = []
    for code in picked:
        ops = [OPS[(int(code) // len(OPS) ** e) % len(OPS)] for e in range(6)]
        edges = [ops[0:1], ops[1:3], ops[3:6]]
        out.append("+".join("|" + "|".join(f"{op}~{i}" for i, op in enumerate(g)) + "|" for g in edges))
    return out


@pytest.fixture()
def traces(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every trace the cache runs, in order (the real trace, counted)."""
    calls: list[tuple[str, bool]] = []
    real = _inventories._trace

    def counted(model_id: str, coupling: bool) -> list[LayerSpec]:
        calls.append((model_id, coupling))
        return real(model_id, coupling)

    monkeypatch.setattr(_inventories, "_trace", counted)
    return calls


def _same(a: list[LayerSpec], b: list[LayerSpec]) -> None:
    """Every field of every layer equal (``extra`` too, which LayerSpec's == ignores)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for f in dataclasses.fields(LayerSpec):
            assert getattr(x, f.name) == getattr(y, f.name), (x.name, f.name)
            assert type(getattr(x, f.name)) is type(getattr(y, f.name)), (x.name, f.name)


@pytest.mark.parametrize("coupling", [False, True])
def test_cached_inventory_equals_a_fresh_trace(
    tmp_path: Path, traces: list[tuple[str, bool]], coupling: bool
) -> None:
    model = f"nasbench201:{_archs(1, seed=3)[0]}"
    first = InventoryCache(tmp_path).get(model, coupling)
    again = InventoryCache(tmp_path)  # a new process: nothing in memory, the file on disk
    read = again.get(model, coupling)
    assert again.traced == 0 and len(traces) == 1
    fresh = prepare(model, coupling=coupling).layers
    _same(read, fresh)
    _same(first, fresh)


def test_fbnet_inventory_round_trips(tmp_path: Path, traces: list[tuple[str, bool]]) -> None:
    InventoryCache(tmp_path).get(FBNET, False)
    _same(InventoryCache(tmp_path).get(FBNET, False), prepare(FBNET, coupling=False).layers)
    assert len(traces) == 1


def test_coupling_is_part_of_the_key(tmp_path: Path, traces: list[tuple[str, bool]]) -> None:
    model = f"nasbench201:{_archs(1, seed=4)[0]}"
    cache = InventoryCache(tmp_path)
    cache.get(model, False)
    cache.get(model, True)
    assert traces == [(model, False), (model, True)]
    assert cache.path(model, False) != cache.path(model, True)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_model", "bad_layer"])
def test_a_corrupt_cache_file_is_retraced(
    tmp_path: Path, traces: list[tuple[str, bool]], damage: str
) -> None:
    model = f"nasbench201:{_archs(1, seed=5)[0]}"
    fresh = InventoryCache(tmp_path).get(model, False)
    path = InventoryCache(tmp_path).path(model, False)
    assert path is not None and path.is_file()
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff not json")
    elif damage == "other_model":
        body = json.loads(text)
        body["model"] = "nasbench201:something-else"
        path.write_text(json.dumps(body))
    else:
        body = json.loads(text)
        body["layers"][0]["kind"] = "no-such-kind"
        path.write_text(json.dumps(body))
    cache = InventoryCache(tmp_path)
    _same(cache.get(model, False), fresh)
    assert cache.traced == 1 and len(traces) == 2
    # the retrace rewrote the file: the next reader does not trace
    reread = InventoryCache(tmp_path)
    _same(reread.get(model, False), fresh)
    assert reread.traced == 0


def test_a_changed_trace_version_is_not_reused(
    tmp_path: Path, traces: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = f"nasbench201:{_archs(1, seed=6)[0]}"
    InventoryCache(tmp_path).get(model, False)
    old_path = InventoryCache(tmp_path).path(model, False)
    # new tracer code (as when kernels.trace starts recording graph ops): another key
    monkeypatch.setattr(_inventories, "trace_key", lambda: "a-newer-tracer")
    cache = InventoryCache(tmp_path)
    assert cache.path(model, False) != old_path
    cache.get(model, False)
    assert cache.traced == 1 and len(traces) == 2
    # an old file renamed onto the new key's path still names the old key: not served
    new_path = cache.path(model, False)
    assert new_path is not None and old_path is not None
    new_path.write_text(old_path.read_text())
    again = InventoryCache(tmp_path)
    again.get(model, False)
    assert again.traced == 1


def test_the_trace_key_covers_the_tracer_source() -> None:
    key = _inventories.trace_key()
    assert len(key) == 64 and key == _inventories.trace_key()
    assert "kernels" in _inventories._TRACE_PACKAGES and "workers.zoo" in _inventories._TRACE_PACKAGES


def test_models_outside_the_zoo_are_not_stored(tmp_path: Path) -> None:
    cache = InventoryCache(tmp_path)
    assert cache.path("mypackage.models:build", False) is None
    assert cache.path(f"nasbench201:{_archs(1, seed=7)[0]}", False) is not None
    assert InventoryCache(None).path("fbnet", False) is None


def _csv(path: Path, archs: list[str]) -> None:
    """Rows whose latency is a monotone function of raspi4's prior (the fit ranks as the prior)."""
    target = get_target("raspi4")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "plan", "batch", "latency_ms"])
        for arch in archs:
            layers = prepare(f"nasbench201:{arch}", coupling=False).layers
            writer.writerow(
                [f"nasbench201:{arch}", "", 1, 2.0 * predict(target, layers, Plan()).latency_ms + 0.3]
            )


def test_validate_twice_traces_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, traces: list[tuple[str, bool]]
) -> None:
    monkeypatch.setenv("HWSEARCH_DATA_DIR", str(tmp_path / "data"))
    archs = _archs(60, seed=8)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    _csv(train, archs[:10])
    _csv(test, archs[10:])
    cat = catalogue(tmp_path / "data")
    fit("raspi4", train, kind="calibrated-prior", test_fraction=0.0, cat=cat)
    assert len(traces) == 10
    first = validate("raspi4", test, cat=cat)
    assert len(traces) == 60 and len(set(traces)) == 60
    assert all(not coupling for _, coupling in traces)  # no plan prunes: the cheap trace
    second = validate("raspi4", test, cat=cat)
    assert len(traces) == 60, "the second validation traced again"
    assert second["mape"] == first["mape"] and second["spearman"] == first["spearman"]
    stored = list((tmp_path / "data" / "inventories").glob("*.json"))
    assert len(stored) == 60
    assert not list(itertools.chain((tmp_path / "data" / "inventories").glob(".*.tmp")))
