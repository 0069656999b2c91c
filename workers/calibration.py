"""Calibrating a target from measurements: a table → features → a fitted predictor.

Two table formats (docs/latency.md, "Measurement tables"), told apart by their header: per
network (a ``model`` column; rows resolved against the zoo, a network's features from its traced
inventory) and per layer (a ``kind`` column; each measured layer costed as a one-layer network,
fitted with ``Predictor.fit_layers`` so the result predicts whole networks as the sum of their
layers). Lives in ``workers`` because resolving model ids needs the zoo; the predictors, the
catalogue and the report live in ``latency_models``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from latency_models import (
    FEATURE_NAMES,
    Catalogue,
    LatencyModelError,
    MeasurementError,
    NetworkMeasurement,
    Predictor,
    Target,
    catalogue,
    create_predictor,
    get_target,
    layer_features,
    list_targets,
    measurement_format,
    metrics,
    network_features,
    proxy_baselines,
    read_layer_measurements,
    read_network_measurements,
)
from search_spaces import LayerSpec, SpaceError

#: The built-in target a new target of each family starts from (its specs, renamed).
FAMILY_TEMPLATES = {"gpu": "gtx-1080ti", "cpu": "xeon-gold-6240", "mobile": "cortex-a76", "fpga": "zcu102"}


@dataclass(frozen=True)
class Table:
    features: np.ndarray
    latency_ms: np.ndarray
    models: list[str]
    #: "network" (one row per measured network) or "layer" (one row per measured layer).
    format: str = "network"


def _inventory(
    model_id: str, needs_coupling: bool, cache: dict[tuple[str, bool], list[LayerSpec]]
) -> list[LayerSpec]:
    key = (model_id, needs_coupling)
    if key not in cache:
        from workers.zoo import prepare

        cache[key] = prepare(model_id, coupling=needs_coupling).layers
    return cache[key]


def features_of(target: Target, rows: Sequence[NetworkMeasurement]) -> Table:
    """Feature rows of measured networks; an unknown model or a bad plan names its CSV row."""
    from workers.zoo import ZooError

    cache: dict[tuple[str, bool], list[LayerSpec]] = {}
    out = np.zeros((len(rows), len(FEATURE_NAMES)))
    for i, row in enumerate(rows):
        line = i + 2
        needs_coupling = any(c.keep < 1.0 for c in row.plan.choices.values())
        try:
            layers = _inventory(row.model, needs_coupling, cache)
        except ZooError as exc:
            raise MeasurementError(f"row {line}, column 'model'", row.model, str(exc)) from None
        try:
            out[i] = network_features(target, layers, row.plan.validate(layers), row.batch)
        except SpaceError as exc:
            raise MeasurementError(f"row {line}, column 'plan'", exc.field, f"{exc}") from None
    return Table(out, np.array([r.latency_ms for r in rows]), [r.model for r in rows])


def layer_table(target: Target, source: str | Path) -> Table:
    """Feature rows of a per-layer table: each measured layer costed as a one-layer network."""
    rows = read_layer_measurements(source)
    return Table(
        layer_features(target, rows),
        np.array([r.latency_ms for r in rows]),
        [f"{r.layer.kind.value}:{r.layer.name}" for r in rows],
        format="layer",
    )


def read_table(target: Target, source: str | Path) -> Table:
    """Either format, told apart by the header (``model`` → per network, ``kind`` → per layer),
    validated in full; a bad row raises MeasurementError naming its row and column."""
    if measurement_format(source) == "layer":
        return layer_table(target, source)
    return features_of(target, read_network_measurements(source))


def _new_target(name: str, family: str | None) -> Target:
    """A target named ``name`` built from ``family``'s template specs (not stored)."""
    if family is None:
        raise LatencyModelError(
            "--target",
            name,
            f"unknown target; pass --family (one of {sorted(FAMILY_TEMPLATES)}) "
            "to create it from measurements, or use one of: " + ", ".join(list_targets()),
        )
    if family not in FAMILY_TEMPLATES:
        raise LatencyModelError("--family", family, f"one of {sorted(FAMILY_TEMPLATES)} is required")
    template = get_target(FAMILY_TEMPLATES[family])
    target = replace(
        template,
        name=name,
        description=f"user target created from measurements; specs start from {template.name} ({family})",
        sources={k: f"copied from built-in target {template.name}: {v}" for k, v in template.sources.items()},
        predictor_version=None,
    )
    return Target.from_dict(target.to_dict())


def ensure_target(name: str, family: str | None, *, cat: Catalogue | None = None) -> Target:
    """The target ``name``; when it does not exist and ``family`` is given, a new one built from
    the family's template specs (stored in ``cat``, default the data dir's catalogue, so a user
    can bring a device with nothing but measurements)."""
    cat = cat or catalogue()
    if name in list_targets():
        return cat.target(name)
    return cat.add_target(_new_target(name, family))


def _fitted(kind: str, table: Table) -> Predictor:
    """A new ``kind`` predictor fitted on ``table``: additive over layers for a per-layer table."""
    predictor = create_predictor(kind)
    if table.format == "layer":
        return predictor.fit_layers(table.features, table.latency_ms)
    return predictor.fit(table.features, table.latency_ms)


def fit(
    target_name: str,
    measurements: str | Path,
    *,
    family: str | None = None,
    kind: str = "boosted-residual",
    test_fraction: float = 0.2,
    seed: int = 0,
    budget_ms: float | None = None,
    cat: Catalogue | None = None,
) -> dict[str, Any]:
    """Fit a new predictor version for a target from a per-network or per-layer CSV into ``cat``
    (default: the data dir's catalogue); returns the report.

    The report comes from a held-out ``test_fraction`` of the rows (networks or layers, with
    MACs-proxy and linear baselines on the same split); the stored model is then refitted on
    all rows. Everything (the table, the target, the fits) is checked and computed before
    anything is written: a failure leaves the catalogue as it was.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise LatencyModelError("--test-fraction", test_fraction, "a fraction in [0, 1) is required")
    create_predictor(kind)  # an unknown kind fails here, before any work
    cat = cat or catalogue()  # registers the stored user targets (reads only)
    existing = target_name in list_targets()
    target = cat.target(target_name) if existing else _new_target(target_name, family)
    table = read_table(target, measurements)
    if len(table.latency_ms) < 3:
        unit = "layers" if table.format == "layer" else "networks"
        raise MeasurementError(
            "measurements", len(table.latency_ms), f"at least 3 measured {unit} are required"
        )
    report = validate_split(
        target, table, kind=kind, test_fraction=test_fraction, seed=seed, budget_ms=budget_ms
    )
    predictor = _fitted(kind, table)
    report["n_fit"] = len(table.latency_ms)
    activate, why = ranks_at_least_as_well_as_prior(report)
    report["activated"] = activate
    if why:
        report["activation_note"] = why
        report["note"] = f"{report['note']}; {why}" if report.get("note") else why
    if not existing:
        cat.add_target(target)
    version = cat.save_predictor(target.name, predictor, report, activate=activate)
    report["version"] = version
    return report


#: Spearman differences below this are ties (floating-point noise of equal rankings).
RANK_TIE = 1e-9
#: Fewer held-out rows than this cannot be ranked meaningfully: the gate is not applied.
MIN_RANKED_ROWS = 3


def ranks_at_least_as_well_as_prior(report: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether a fit may become the target's active predictor, and why not when it may not.

    A search compares plans, so a fit is activated only when its held-out Spearman correlation
    is at least the analytic prior's on the same held-out rows: a fit whose MAPE looks fine but
    ranks worse (the demo's host-cpu fit on digits-cnn plans within timing noise had Spearman
    -0.20) would otherwise replace a prior that ranks better. A tie activates: a monotone
    calibration of the prior ranks exactly as the prior does while fixing its scale, which
    constraints in milliseconds need. With fewer than ``MIN_RANKED_ROWS`` held-out rows (as
    with ``test_fraction`` 0) there is nothing to rank, and the fit is activated (its report
    says the ranking was not checked).
    """
    if "spearman" not in report:
        return True, None
    if int(report.get("n_test") or 0) < MIN_RANKED_ROWS:
        return True, (
            f"ranking not checked: {report.get('n_test')} held-out rows are too few for a rank "
            f"correlation (at least {MIN_RANKED_ROWS} are needed)"
        )
    learned = float(report["spearman"])
    prior_raw = report.get("baselines", {}).get("analytic_prior", {}).get("spearman")
    # a prior that predicts one value for every held-out row cannot rank: it counts as 0
    prior = 0.0 if prior_raw is None or np.isnan(float(prior_raw)) else float(prior_raw)
    if not np.isnan(learned) and learned >= prior - RANK_TIE:
        return True, None
    return False, (
        f"not activated: held-out Spearman {learned:.2f} is below the analytic prior's "
        f"{prior:.2f} on the same {report.get('n_test')} rows, so the target keeps its previous "
        f"costs; the version is stored: activate it anyway with "
        f"PUT /api/v1/targets/{report['target']}/predictors/active"
    )


def validate_split(
    target: Target, table: Table, *, kind: str, test_fraction: float, seed: int, budget_ms: float | None
) -> dict[str, Any]:
    n = len(table.latency_ms)
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    test, train = order[:n_test], order[n_test:]
    report: dict[str, Any] = {
        "target": target.name,
        "kind": kind,
        "format": table.format,
        "n_train": len(train),
        "n_test": len(test),
    }
    if table.format == "layer":
        report["note"] = (
            "fitted per layer: a network is predicted as the sum of its layers, without a "
            "per-network overhead (a per-layer table does not measure one); test rows are layers"
            + (
                "; boosted-residual keeps its calibrated prior only (trees do not add over layers)"
                if kind == "boosted-residual"
                else ""
            )
        )
    if n_test == 0:
        return report
    x_tr, y_tr, x_te, y_te = (
        table.features[train],
        table.latency_ms[train],
        table.features[test],
        table.latency_ms[test],
    )
    predicted, low, high = _fitted(kind, Table(x_tr, y_tr, [], table.format)).predict(x_te)
    report.update(metrics(predicted, y_te, budget_ms, (low, high)).to_dict())
    base = proxy_baselines(x_tr, y_tr, x_te, FEATURE_NAMES.index("total_macs"))
    report["baselines"] = {name: metrics(pred, y_te, budget_ms).to_dict() for name, pred in base.items()}
    prior = x_te[:, FEATURE_NAMES.index("prior_ms")]
    report["baselines"]["analytic_prior"] = metrics(prior, y_te, budget_ms).to_dict()
    report["holdout"] = holdout_pairs(table.models, test, y_te, predicted, prior)
    return report


#: At most this many held-out rows are kept in a report (for the calibration plot); the test
#: split is a random permutation, so its first rows are a random sample of it.
MAX_HOLDOUT_ROWS = 2000


def holdout_pairs(
    names: Sequence[str],
    rows: np.ndarray,
    measured_ms: np.ndarray,
    predicted_ms: np.ndarray,
    prior_ms: np.ndarray,
) -> dict[str, Any]:
    """The held-out rows as columns (what the dashboard's calibration plot draws): each row's
    name (model or layer), measured, predicted and analytic-prior latency in ms."""
    keep = slice(0, MAX_HOLDOUT_ROWS)
    return {
        "name": [names[int(i)] if int(i) < len(names) else "" for i in rows[keep]],
        "measured_ms": [float(v) for v in measured_ms[keep]],
        "predicted_ms": [float(v) for v in predicted_ms[keep]],
        "prior_ms": [float(v) for v in prior_ms[keep]],
        "n_total": len(rows),
    }


def validate(
    target_name: str,
    measurements: str | Path,
    budget_ms: float | None = None,
    *,
    cat: Catalogue | None = None,
) -> dict[str, Any]:
    """Score the target's active predictor on a measurement table it may not have seen.

    A per-network table works with any predictor (a per-layer fit then predicts each network as
    the sum of its layers). A per-layer table needs a predictor fitted per layer: one fitted on
    whole networks carries a per-network overhead and trees that do not apply to one layer.
    """
    cat = cat or catalogue()
    target = cat.target(target_name)
    active = cat.predictor(target.name)
    if active is None:
        raise LatencyModelError(
            "--target", target_name, "has no fitted predictor; run `hwsearch latency fit` first"
        )
    predictor, fit_report = active
    table = read_table(target, measurements)
    if table.format == "layer" and fit_report.get("format", "network") != "layer":
        raise LatencyModelError(
            "--measurements",
            str(measurements),
            f"is a per-layer table, but the active predictor of {target.name} was fitted on whole "
            "networks (it predicts networks, overhead included, not single layers); validate it "
            "with a per-network table, or fit it from a per-layer table first",
        )
    predicted, low, high = predictor.predict(table.features)
    report = {
        "target": target.name,
        "version": target.predictor_version,
        "format": table.format,
        "n_train": fit_report.get("n_fit"),
        "n_test": len(table.latency_ms),
        **metrics(predicted, table.latency_ms, budget_ms, (low, high)).to_dict(),
    }
    report["baselines"] = {
        "analytic_prior": metrics(
            table.features[:, FEATURE_NAMES.index("prior_ms")], table.latency_ms, budget_ms
        ).to_dict()
    }
    return report
