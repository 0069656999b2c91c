"""One registry behaviour for every extension point: models, strategies, predictors, target
families and targets register, create and list the same way (tests run on each of them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from latency_models import LatencyModelError
from latency_models._family import FAMILIES_REGISTRY
from latency_models._predictor import PREDICTORS
from latency_models._target import TARGETS
from search_spaces import InputError, Registry
from workers.search import SearchError
from workers.search._strategy import STRATEGIES
from workers.zoo import ZooError
from workers.zoo._base import MODELS


@dataclass(frozen=True)
class Case:
    registry: Registry[Any]
    error: type[InputError]
    entry: Callable[[], Any]  # a throw-away entry to register


REGISTRIES = {
    "models": Case(MODELS, ZooError, lambda: type("Throwaway", (), {})),
    "strategies": Case(STRATEGIES, SearchError, lambda: type("Throwaway", (), {})),
    "predictors": Case(PREDICTORS, LatencyModelError, lambda: type("Throwaway", (), {})),
    "families": Case(FAMILIES_REGISTRY, LatencyModelError, lambda: object()),
    "targets": Case(TARGETS, LatencyModelError, lambda: object()),
}


@pytest.fixture(params=sorted(REGISTRIES))
def case(request: pytest.FixtureRequest) -> Case:
    return REGISTRIES[request.param]


def test_lists_sorted_names_filtered_by_pattern(case: Case) -> None:
    names = case.registry.list()
    assert names and names == sorted(names)
    first = names[0]
    assert case.registry.list(first) == [first]
    assert case.registry.list(first[:1] + "*") == [n for n in names if n.startswith(first[:1])]
    assert case.registry.list("no-such-*") == []


def test_unknown_name_names_the_kind_the_value_and_the_valid_names(case: Case) -> None:
    with pytest.raises(case.error) as info:
        case.registry.get("no-such-entry")
    error = info.value
    assert isinstance(error, InputError)
    assert error.field == case.registry.kind and error.value == "no-such-entry"
    assert all(name in error.hint for name in case.registry.list())


def test_register_create_replace_and_remove(case: Case) -> None:
    name = "zz-throwaway"
    entry, other = case.entry(), case.entry()
    try:
        assert case.registry.register(name, entry) is entry
        assert case.registry.register(name, entry) is entry  # the same entry again: harmless
        assert case.registry.get(name) is entry and name in case.registry.list()
        with pytest.raises(case.error, match="already registered"):
            case.registry.register(name, other)
        assert case.registry.get(name) is entry  # a refused registration changes nothing
        case.registry.register(name, other, replace=True)
        assert case.registry.get(name) is other
    finally:
        case.registry.unregister(name)
    assert name not in case.registry.list()


def test_loader_runs_once_and_lazy_entries_import_on_first_use() -> None:
    calls: list[str] = []

    def load() -> None:
        calls.append("load")
        registry.register("a", 1)

    def import_b() -> None:
        calls.append("import b")
        registry.register("b", 2)

    registry: Registry[int] = Registry("thing", loader=load, lazy={"b": import_b})
    assert registry.list() == ["a", "b"]  # lazy names are listed before they are imported
    assert calls == ["load"]
    assert registry.get("b") == 2 and calls == ["load", "import b"]
    assert registry.get("a") == 1 and calls == ["load", "import b"]
