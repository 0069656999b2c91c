"""The Predictor contract, on every registered kind: fit on a small synthetic table, text round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from inventories import LAYERS

from latency_models import (
    FEATURE_NAMES,
    LatencyModelError,
    LayerMeasurement,
    Predictor,
    create_predictor,
    get_target,
    layer_features,
    list_predictors,
    load_predictor,
    network_features,
)
from search_spaces import Choice, Plan, Space


def _table(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic device: 1.7× the raspi4 prior on convs, a fixed 0.3 ms overhead, 3% noise."""
    target = get_target("raspi4")
    space = Space.build(
        LAYERS,
        rank_fractions=(0.25, 0.5),
        keep=(0.5, 0.75),
        wbits=(8,),
        abits=(8,),
        channel_multiple=1,
        rank_multiple=1,
    )
    rng = np.random.default_rng(seed)
    x = np.array([network_features(target, list(LAYERS), space.sample(rng)) for _ in range(n)])
    truth = 1.7 * x[:, FEATURE_NAMES.index("prior_ms")] + 0.3
    return x, truth * np.exp(rng.normal(0, 0.03, n))


@pytest.mark.parametrize("kind", list_predictors())
@pytest.mark.parametrize("n_train", [5, 60])
def test_contract_fit_predict_round_trip(kind: str, n_train: int, tmp_path: Path) -> None:
    x, y = _table(n_train + 200)
    predictor = create_predictor(kind).fit(x[:n_train], y[:n_train])
    mid, lo, hi = predictor.predict(x[n_train:])
    assert (mid > 0).all() and (lo <= mid).all() and (mid <= hi).all()
    mape = np.mean(np.abs(mid - y[n_train:]) / y[n_train:])
    assert mape < 0.08, mape  # the synthetic device is learnable from 5 rows
    path = predictor.save(tmp_path / kind)
    doc = json.loads(path.read_text())  # plain JSON: nothing executes on load
    assert doc["kind"] == kind and doc["features"] == list(FEATURE_NAMES)
    again = load_predictor(tmp_path / kind)
    for a, b in zip(again.predict(x[n_train:]), (mid, lo, hi), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", list_predictors())
@pytest.mark.parametrize("n_train", [30, 120])
def test_contract_the_80_percent_interval_covers_held_out_rows(kind: str, n_train: int) -> None:
    """On 400 held-out rows of the synthetic device, 65-95% lie inside the predicted 80%
    interval, averaged over 3 draws. (boosted-residual's former interval, quantile trees on the
    training residuals, covered 41% and 36% here; bench/intervals.py compares both.)"""
    coverage = []
    for seed in range(3):
        x, y = _table(n_train + 400, seed=seed)
        _, lo, hi = create_predictor(kind).fit(x[:n_train], y[:n_train]).predict(x[n_train:])
        coverage.append(np.mean((lo <= y[n_train:]) & (y[n_train:] <= hi)))
    assert 0.65 <= float(np.mean(coverage)) <= 0.95, coverage


#: The kinds whose ``fit_layers`` must give a model additive over layers (the catalogue fits them
#: from per-layer tables). Every other registered kind must refuse a per-layer table.
ADDITIVE = ("calibrated-prior", "boosted-residual", "scaled-prior")


def _layer_table(seed: int = 0) -> tuple[Space, np.random.Generator, np.ndarray, np.ndarray]:
    """Measured layers of 8 random plans: 1.5× the raspi4 prior plus a fixed 0.05 ms per layer
    (a constant a per-network fit would take as its overhead), 5% noise."""
    target = get_target("raspi4")
    space = Space.build(LAYERS, rank_fractions=(0.5,), wbits=(8,), abits=(8,), rank_multiple=1)
    rng = np.random.default_rng(seed)
    rows = [
        LayerMeasurement(layer, plan[layer.name], 1.0)
        for plan in (space.sample(rng) for _ in range(8))
        for layer in LAYERS
    ]
    x = layer_features(target, rows)
    y = (1.5 * x[:, FEATURE_NAMES.index("prior_ms")] + 0.05) * np.exp(rng.normal(0, 0.05, len(x)))
    return space, rng, x, y


def test_the_additive_kinds_are_registered() -> None:
    assert set(ADDITIVE) <= set(list_predictors())


@pytest.mark.parametrize("kind", list_predictors())
def test_contract_fit_layers_is_additive(kind: str) -> None:
    """Fitted on measured layers, an additive kind costs a network as the sum of its layers (no
    per-network constant), interval included; any other kind refuses the per-layer table."""
    space, rng, x, y = _layer_table()
    if kind not in ADDITIVE:
        with pytest.raises(LatencyModelError, match="per-layer"):
            create_predictor(kind).fit_layers(x, y)
        return
    predictor = create_predictor(kind).fit_layers(x, y)
    target = get_target("raspi4")
    plan = space.sample(rng)
    one = [LayerMeasurement(layer, plan[layer.name], 1.0) for layer in LAYERS]
    per_layer = predictor.predict(layer_features(target, one))
    whole_features = network_features(target, list(LAYERS), plan)
    whole = predictor.predict(whole_features[None])
    for part, total in zip(per_layer, whole, strict=True):
        np.testing.assert_allclose(part.sum(), total[0], rtol=1e-9)
    # And fitted: the network's true cost is the sum over its layers of 1.5× prior + 0.05 ms.
    truth = 1.5 * whole_features[FEATURE_NAMES.index("prior_ms")] + 0.05 * len(LAYERS)
    assert 0.8 < whole[0][0] / truth < 1.25, (whole[0][0], truth)


class _Flat(Predictor):
    """Test-only kind that keeps the base class's ``fit_layers``: the mean latency, always."""

    kind = "test-flat"

    def __init__(self) -> None:
        self.mean_ms = 1.0

    def fit(self, features: np.ndarray, latency_ms: np.ndarray) -> _Flat:
        self.mean_ms = float(np.mean(latency_ms))
        return self

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mid = np.full(len(features), self.mean_ms)
        return mid, mid, mid

    def state(self) -> dict[str, float]:
        return {"mean_ms": self.mean_ms}

    @classmethod
    def from_state(cls, state: dict[str, float]) -> _Flat:
        out = cls()
        out.mean_ms = float(state["mean_ms"])
        return out


def test_a_kind_that_is_not_additive_refuses_a_per_layer_table() -> None:
    """The base class's ``fit_layers`` (what a kind not listed in ADDITIVE keeps) refuses, naming
    the kind and the way out."""
    _, _, x, y = _layer_table()
    with pytest.raises(LatencyModelError, match="per-layer") as info:
        _Flat().fit_layers(x, y)
    assert info.value.field == "predictor" and info.value.value == "test-flat"
    assert "calibrated-prior" in info.value.hint


@pytest.mark.parametrize("per_layer", [False, True])
def test_kinds_absent_from_training_run_at_the_tables_scale(per_layer: bool) -> None:
    """Measured on convs only, a network with linears and attention still gets a sane cost: the
    kinds the table lacks run at its overall scale of the prior (not at an arbitrary coefficient
    no data constrained)."""
    target = get_target("raspi4")
    convs = [layer for layer in LAYERS if layer.kind.value.endswith("conv2d")]
    rng = np.random.default_rng(0)
    rows = [
        LayerMeasurement(layer, Choice(rank=rank, wbits=bits, abits=bits), 1.0)
        for layer in convs
        for rank in ((None, 2, 4, 6, 8) if layer.decomposable else (None,))
        for bits in (32, 16, 8, 4)
    ]
    assert len(rows) >= 60  # enough rows for the per-kind fit (no fall-back to one scale)
    x = layer_features(target, rows)
    y = 2.0 * x[:, FEATURE_NAMES.index("prior_ms")] * np.exp(rng.normal(0, 0.02, len(x)))
    predictor = create_predictor("calibrated-prior")
    predictor = predictor.fit_layers(x, y) if per_layer else predictor.fit(x, y)
    whole = network_features(target, list(LAYERS), Plan())
    mid = predictor.predict(whole[None])[0][0]
    assert 1.6 < mid / whole[FEATURE_NAMES.index("prior_ms")] < 2.4


def test_network_features_follow_the_plan() -> None:
    target = get_target("raspi4")
    dense = network_features(target, list(LAYERS), Plan())
    small = network_features(target, list(LAYERS), Plan({"blk.fc1": Choice(rank=8)}))
    i = FEATURE_NAMES.index("linear_count")
    assert small[i] == dense[i] + 1  # a low-rank layer runs two GEMMs
    assert small[FEATURE_NAMES.index("total_macs")] < dense[FEATURE_NAMES.index("total_macs")]
    batch = network_features(target, list(LAYERS), Plan(), batch=8)
    assert batch[FEATURE_NAMES.index("total_macs")] == 8 * dense[FEATURE_NAMES.index("total_macs")]


def test_load_refuses_foreign_files(tmp_path: Path) -> None:
    x, y = _table(20)
    create_predictor("calibrated-prior").fit(x, y).save(tmp_path)
    doc = json.loads((tmp_path / "predictor.json").read_text())
    (tmp_path / "predictor.json").write_text(json.dumps(doc | {"features": ["macs"]}))
    with pytest.raises(LatencyModelError, match="other features"):
        load_predictor(tmp_path)
    (tmp_path / "predictor.json").write_text(json.dumps(doc | {"format": 99}))
    with pytest.raises(LatencyModelError, match="format"):
        load_predictor(tmp_path)
    with pytest.raises(LatencyModelError, match="valid names"):
        create_predictor("random-forest-pickle")
