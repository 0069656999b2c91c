"""Calibrating a target from measurements: a table → features → a fitted predictor.

Two table formats (docs/latency.md, "Measurement tables"), told apart by their header: per
network (a ``model`` column; rows resolved against the zoo, a network's features from its traced
inventory) and per layer (a ``kind`` column; each measured layer costed as a one-layer network,
fitted with ``Predictor.fit_layers`` so the result predicts whole networks as the sum of their
layers). Lives in ``workers`` because resolving model ids needs the zoo; the predictors, the
catalogue and the report live in ``latency_models``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from latency_models import (
    AUTO,
    FEATURE_NAMES,
    Catalogue,
    LatencyModelError,
    MeasurementError,
    NetworkMeasurement,
    Predictor,
    Target,
    TransferPredictor,
    catalogue,
    create_predictor,
    get_target,
    layer_features,
    list_targets,
    loo_transfer_spearman,
    measurement_format,
    metrics,
    network_features,
    proxy_baselines,
    read_layer_measurements,
    read_network_measurements,
    select_predictor,
)
from latency_models._select import FALLBACK
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
    """``model_id``'s inventory: from ``cache`` (this table's), else from the data dir's
    persistent inventory cache (workers/_inventories.py), which traces only what it lacks, so
    fitting and validating on the same networks again does not rebuild and trace each one."""
    key = (model_id, needs_coupling)
    if key not in cache:
        from workers._inventories import default_cache

        cache[key] = default_cache().get(model_id, needs_coupling)
    return cache[key]


def features_of(
    target: Target, rows: Sequence[NetworkMeasurement], predictor: Predictor | None = None
) -> Table:
    """Feature rows of measured networks; an unknown model or a bad plan names its CSV row.

    ``predictor``: build the rows it predicts from (``Predictor.features``; a transfer appends
    its source's prediction), default ``network_features``."""
    from workers.zoo import ZooError

    cache: dict[tuple[str, bool], list[LayerSpec]] = {}
    width = len(FEATURE_NAMES) + (_extra_columns(predictor) if predictor is not None else 0)
    out = np.zeros((len(rows), width))
    for i, row in enumerate(rows):
        line = i + 2
        needs_coupling = any(c.keep < 1.0 for c in row.plan.choices.values())
        try:
            layers = _inventory(row.model, needs_coupling, cache)
        except ZooError as exc:
            raise MeasurementError(f"row {line}, column 'model'", row.model, str(exc)) from None
        try:
            plan = row.plan.validate(layers)
            out[i] = (
                network_features(target, layers, plan, row.batch)
                if predictor is None
                else predictor.features(target, layers, plan, row.batch)
            )
        except SpaceError as exc:
            raise MeasurementError(f"row {line}, column 'plan'", exc.field, f"{exc}") from None
    return Table(out, np.array([r.latency_ms for r in rows]), [r.model for r in rows])


def _extra_columns(predictor: Predictor) -> int:
    """How many columns ``predictor.features`` appends to ``FEATURE_NAMES`` (0 or a transfer's 1)."""
    return 1 if isinstance(predictor, TransferPredictor) else 0


def layer_table(target: Target, source: str | Path) -> Table:
    """Feature rows of a per-layer table: each measured layer costed as a one-layer network."""
    rows = read_layer_measurements(source)
    return Table(
        layer_features(target, rows),
        np.array([r.latency_ms for r in rows]),
        [f"{r.layer.kind.value}:{r.layer.name}" for r in rows],
        format="layer",
    )


def read_table(target: Target, source: str | Path, predictor: Predictor | None = None) -> Table:
    """Either format, told apart by the header (``model`` → per network, ``kind`` → per layer),
    validated in full; a bad row raises MeasurementError naming its row and column.
    ``predictor``: per-network rows as it predicts from them (see ``features_of``)."""
    if measurement_format(source) == "layer":
        return layer_table(target, source)
    return features_of(target, read_network_measurements(source), predictor)


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


def _fitted(kind: str, table: Table, factory: Callable[[], Predictor] | None = None) -> Predictor:
    """A new ``kind`` predictor (from ``factory`` when given) fitted on ``table``: additive
    over layers for a per-layer table."""
    predictor = create_predictor(kind) if factory is None else factory()
    if table.format == "layer":
        return predictor.fit_layers(table.features, table.latency_ms)
    return predictor.fit(table.features, table.latency_ms)


def fit(
    target_name: str,
    measurements: str | Path,
    *,
    family: str | None = None,
    kind: str = AUTO,
    source: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    budget_ms: float | None = None,
    cat: Catalogue | None = None,
    against_active: bool = False,
) -> dict[str, Any]:
    """Fit a new predictor version for a target from a per-network or per-layer CSV into ``cat``
    (default: the data dir's catalogue); returns the report.

    ``against_active`` (a device profile's fit, issue 19): the new version is activated only if
    its held-out Spearman is at least that of the target's active version on the new rows (which
    that version never saw); the report's ``active_before`` holds the comparison.

    ``kind`` "auto" (the default) chooses the kind by k-fold cross-validation on the rows
    (``select_predictor``: the best held-out Spearman; the prior's order with a fitted scale when
    no learned kind ranks better); the report's ``selection`` holds the table. ``source``
    (``--from``): a target of the catalogue with a learned predictor, or "auto" (the one whose
    corrected predictions rank these rows best by leave-one-out), that a transfer predictor
    borrows from; the transfer then competes with the other kinds.

    The report comes from a held-out ``test_fraction`` of the rows (networks or layers, with
    MACs-proxy and linear baselines on the same split); the stored model is then refitted on
    all rows. Everything (the table, the target, the fits) is checked and computed before
    anything is written: a failure leaves the catalogue as it was.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise LatencyModelError("--test-fraction", test_fraction, "a fraction in [0, 1) is required")
    if kind != AUTO:
        create_predictor(kind)  # an unknown kind fails here, before any work
    if kind == "transfer" and source is None:
        raise LatencyModelError(
            "--kind", kind, "a transfer needs a source: pass --from TARGET or --from auto"
        )
    cat = cat or catalogue()  # registers the stored user targets (reads only)
    existing = target_name in list_targets()
    target = cat.target(target_name) if existing else _new_target(target_name, family)
    transfer: dict[str, Any] | None = None
    factories: dict[str, Callable[[], Predictor]] = {}
    if source is not None:
        if measurement_format(measurements) == "layer":
            raise LatencyModelError(
                "--from", source, "a transfer needs a per-network table (its source predicts whole networks)"
            )
        rows = read_network_measurements(measurements)
        _check_rows(len(rows), "network")
        table, factory, transfer = _transfer_source(cat, source, target, rows)
        factories["transfer"] = factory
    else:
        table = read_table(target, measurements)
    _check_rows(len(table.latency_ms), table.format)
    selection = None
    chosen = kind
    if kind == AUTO:
        selection = select_predictor(
            table.features,
            table.latency_ms,
            candidates=factories,
            seed=seed,
            names=table.models,
            per_layer=table.format == "layer",
        )
        chosen = selection.chosen
    report, activate, why = _validated(target, table, chosen, factories, test_fraction, seed, budget_ms)
    if kind == AUTO and not activate and chosen != FALLBACK:
        # The chosen kind ranked the cross-validation folds best but this split worse than the
        # prior: keep the prior's order (scaled), which the gate always lets through.
        first = chosen
        chosen = FALLBACK
        report, activate, why = _validated(target, table, chosen, factories, test_fraction, seed, budget_ms)
        why = (
            f"{first} was chosen by cross-validation but ranks the held-out split below the analytic "
            f"prior; {FALLBACK} (the prior's order with a fitted scale) is stored instead"
        )
        if selection is not None:
            selection.note = why
    if against_active and activate and existing:
        activate, why = _beats_active(cat, target.name, table, report, why)
    predictor = _fitted(chosen, _table_for(chosen, table), factories.get(chosen))
    report["n_fit"] = len(table.latency_ms)
    report["batches"] = sorted({int(b) for b in table.features[:, FEATURE_NAMES.index("batch")]})
    if selection is not None:
        report["selection"] = selection.to_dict()
        if selection.note:
            report["note"] = f"{report['note']}; {selection.note}" if report.get("note") else selection.note
    if transfer is not None:
        report["transfer"] = transfer
        if transfer.get("note"):
            note = str(transfer["note"])
            report["note"] = f"{report['note']}; {note}" if report.get("note") else note
    report["activated"] = activate
    if why and not activate:
        report["activation_note"] = why
        report["note"] = f"{report['note']}; {why}" if report.get("note") else why
    elif why:
        report["activation_note"] = why
        if why not in str(report.get("note", "")):
            report["note"] = f"{report['note']}; {why}" if report.get("note") else why
    if not existing:
        cat.add_target(target)
    version = cat.save_predictor(target.name, predictor, report, activate=activate)
    report["version"] = version
    return report


def _beats_active(
    cat: Catalogue, name: str, table: Table, report: dict[str, Any], why: str | None
) -> tuple[bool, str | None]:
    """Whether a new version ranks fresh measurements at least as well as the active version: the
    active one is scored on every new row (none of which it was fitted on), the new one on its
    held-out split. Fills ``report["active_before"]``."""
    active = cat.predictor(name)
    if active is None:
        return True, why
    predictor, _ = active
    try:
        predicted, _, _ = predictor.predict(table.features[:, : len(FEATURE_NAMES)])
        scored = metrics(np.asarray(predicted, dtype=float), table.latency_ms)
    except Exception as exc:  # a predictor of another table format: say so, do not block the fit
        failure = f"{type(exc).__name__}: {exc}"
        report["active_before"] = {"version": cat.active_version(name), "error": failure}
        return True, why
    before = {
        "version": cat.active_version(name),
        "spearman": scored.spearman,
        "mape": scored.mape,
        "n": len(table.latency_ms),
    }
    report["active_before"] = before
    new = report.get("spearman")
    if new is None or not np.isfinite(new) or new + 1e-9 >= scored.spearman:
        return True, why
    return False, (
        f"not activated: the active version {before['version']} ranks these new measurements with "
        f"Spearman {scored.spearman:.2f}, the new fit its held-out rows with {new:.2f}"
    )


def _check_rows(n: int, table_format: str) -> None:
    if n < 3:
        unit = "layers" if table_format == "layer" else "networks"
        raise MeasurementError("measurements", n, f"at least 3 measured {unit} are required")


def _table_for(kind: str, table: Table) -> Table:
    """The table a kind sees: a transfer reads its source's column, the others ``FEATURE_NAMES``."""
    if kind == "transfer":
        return table
    return replace(table, features=table.features[:, : len(FEATURE_NAMES)])


def _validated(
    target: Target,
    table: Table,
    kind: str,
    factories: dict[str, Callable[[], Predictor]],
    test_fraction: float,
    seed: int,
    budget_ms: float | None,
) -> tuple[dict[str, Any], bool, str | None]:
    """The held-out report of ``kind`` and the activation gate's verdict on it."""
    report = validate_split(
        target,
        _table_for(kind, table),
        kind=kind,
        test_fraction=test_fraction,
        seed=seed,
        budget_ms=budget_ms,
        factory=factories.get(kind),
    )
    activate, why = ranks_at_least_as_well_as_prior(report)
    return report, activate, why


def _transfer_source(
    cat: Catalogue, source: str, target: Target, rows: Sequence[NetworkMeasurement]
) -> tuple[Table, Callable[[], Predictor], dict[str, Any]]:
    """The source a transfer borrows from (``source``, or with "auto" the catalogue target whose
    corrected predictions rank ``rows`` best by leave-one-out), the table with its column, a
    factory of transfer predictors and what the report says of it."""
    learned = [name for name in cat.learned_targets() if name != target.name]
    if source == AUTO:
        if not learned:
            raise LatencyModelError(
                "--from",
                source,
                "no target of the catalogue has a learned predictor to transfer from; fit one first "
                "(`hwsearch latency fit --target SOURCE --measurements FILE`)",
            )
        names = learned
    elif source not in learned:
        raise LatencyModelError(
            "--from",
            source,
            "has no learned predictor to transfer from; targets that have one: "
            + (", ".join(learned) if learned else "none (fit one first with `hwsearch latency fit`)"),
        )
    else:
        names = [source]
    scores: dict[str, float | None] = {}
    best: tuple[float, str, Table, Target, Predictor, dict[str, Any]] | None = None
    for name in names:
        active = cat.predictor(name)
        if active is None:  # pragma: no cover - learned_targets lists only targets with one
            continue
        source_target = cat.target(name)
        probe = TransferPredictor(source_target, active[0])
        table = features_of(target, rows, predictor=probe)
        rho = loo_transfer_spearman(table.features, table.latency_ms)
        scores[name] = None if np.isnan(rho) else rho
        key = -np.inf if np.isnan(rho) else rho
        if best is None or key > best[0]:
            best = (key, name, table, source_target, active[0], active[1])
    assert best is not None  # names is never empty here
    _, name, table, source_target, source_predictor, source_report = best
    new_batches = sorted({r.batch for r in rows})
    source_batches = source_report.get("batches")
    info: dict[str, Any] = {
        "source": name,
        "source_kind": source_predictor.kind,
        "loo_spearman": scores,
        "batches": new_batches,
        "source_batches": source_batches,
    }
    if source_batches is None:
        info["note"] = (
            f"transfer from {name}: its fit did not record its batch sizes; these rows are batch "
            f"{new_batches}"
        )
    elif sorted(source_batches) != new_batches:
        info["note"] = (
            f"transfer from {name}, fitted at batch {source_batches}, to rows at batch {new_batches}: "
            "the source predicts each row at its own batch and the correction absorbs the difference"
        )

    def factory() -> Predictor:
        return TransferPredictor(source_target, source_predictor)

    return table, factory, info


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
    target: Target,
    table: Table,
    *,
    kind: str,
    test_fraction: float,
    seed: int,
    budget_ms: float | None,
    factory: Callable[[], Predictor] | None = None,
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
    predicted, low, high = _fitted(kind, Table(x_tr, y_tr, [], table.format), factory).predict(x_te)
    report.update(metrics(predicted, y_te, budget_ms, (low, high)).to_dict())
    nf = len(FEATURE_NAMES)  # the baselines see the feature set only (not a transfer's column)
    base = proxy_baselines(x_tr[:, :nf], y_tr, x_te[:, :nf], FEATURE_NAMES.index("total_macs"))
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
    table = read_table(target, measurements, predictor)
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


def drift_check(
    target_name: str,
    measurements: str | Path,
    *,
    tolerance: float = 1.5,
    cat: Catalogue | None = None,
) -> dict[str, Any]:
    """Whether the target's active predictor still holds on fresh measurements (a schedule's
    drift probe, issue 19): ``validate`` on them, and ``drift`` comparing their MAPE with the
    MAPE the active version was validated with (its held-out split). ``flagged`` when the fresh
    error exceeds ``tolerance`` times the validated one: the device changed (firmware, thermal
    limits, another runtime version) or the predictor was fitted on too little.

    The tolerance leaves room for the probe's own noise: a probe of a few dozen plans measures a
    MAPE that varies between nights even on an unchanged device."""
    if not tolerance > 1.0:
        raise LatencyModelError(
            "tolerance", tolerance, "must be > 1 (the fresh error may exceed the validated one by it)"
        )
    cat = cat or catalogue()
    report = validate(target_name, measurements, cat=cat)
    active = cat.predictor(target_name)
    validated = None if active is None else active[1].get("mape")
    fresh = report.get("mape")
    usable = validated is not None and np.isfinite(validated) and validated > 0 and fresh is not None
    ratio = float(fresh) / float(validated) if usable and fresh is not None and validated else None
    report["drift"] = {
        "version": report.get("version"),
        "fresh_mape": fresh,
        "validated_mape": validated,
        "ratio": ratio,
        "tolerance": tolerance,
        "flagged": bool(ratio is not None and ratio > tolerance),
        "n": report.get("n_test"),
        "spearman": report.get("spearman"),
        "note": None
        if usable
        else "the active version has no validated MAPE to compare with (refit it from a measured table)",
    }
    return report
