"""Model choice by cross-validation on the user's own rows.

``select_predictor`` fits every candidate kind on k-fold splits of a measurement table, scores
each on its held-out rows (Spearman, MAPE, share within ±10%) and keeps the best ranking one. A
search compares plans, so ranking comes first; "scaled-prior" (the analytic prior's order with
a fitted scale) is always a candidate, so the chosen kind never ranks held-out rows worse than
the prior does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from ._errors import LatencyModelError
from ._features import FEATURE_NAMES
from ._measurements import MeasurementError
from ._predictor import PREDICTORS, Array, Predictor, create_predictor, list_predictors
from ._report import metrics

__all__ = ["AUTO", "FALLBACK", "Selection", "auto_kinds", "select_predictor"]

#: The ``--kind`` that asks for model choice.
AUTO = "auto"
#: The kind kept when no learned kind ranks better than the analytic prior.
FALLBACK = "scaled-prior"
#: Kinds that need more than a table (a source target): candidates only when one is given.
NEEDS_SOURCE = ("transfer",)
#: Simpler first: the tie-break after Spearman and MAPE.
SIMPLICITY = ("scaled-prior", "calibrated-prior", "transfer", "boosted-residual")
#: Spearman differences below this are ties.
RANK_TIE = 1e-9
#: Below this many rows the folds are leave-one-out.
LOO_BELOW = 10
#: Rows listed in the report as the worst held-out predictions.
WORST_ROWS = 5


def auto_kinds() -> list[str]:
    """The registered kinds ``--kind auto`` compares (those needing a source excluded)."""
    return [k for k in list_predictors() if k not in NEEDS_SOURCE]


@dataclass
class Selection:
    """What model choice compared and what it kept.

    ``table``: one entry per candidate kind: ``spearman``, ``mape``, ``within_10pct`` on the
    held-out rows, or ``skipped`` with the reason. ``chosen``: the kept kind; ``spearman``: its
    held-out Spearman; ``prior_spearman``: the analytic prior's on the same rows.
    """

    chosen: str
    spearman: float
    prior_spearman: float
    folds: int
    table: dict[str, dict[str, Any]]
    worst_rows: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "chosen": self.chosen,
            "spearman": _clean(self.spearman),
            "prior_spearman": _clean(self.prior_spearman),
            "folds": self.folds,
            "table": self.table,
            "worst_rows": self.worst_rows,
        }
        if self.note:
            out["note"] = self.note
        return out


def _clean(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def _spearman(a: Array, b: Array) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])


def _order(kind: str) -> int:
    return SIMPLICITY.index(kind) if kind in SIMPLICITY else len(SIMPLICITY)


def select_predictor(
    features: Array,
    latency_ms: Array,
    kinds: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    *,
    candidates: Mapping[str, Callable[[], Predictor]] | None = None,
    names: Sequence[str] | None = None,
    per_layer: bool = False,
) -> Selection:
    """Fit every kind in ``kinds`` (default ``auto_kinds()``) plus "scaled-prior" and the
    ``candidates`` (kind → factory, e.g. a transfer with its source) on k-fold splits
    (k = min(``folds``, n); leave-one-out below 10 rows), score each on its held-out rows and
    keep the best: highest Spearman, then lower MAPE, then the simpler kind.

    ``features`` holds ``FEATURE_NAMES`` columns; a candidate may read extra columns after them
    (the table kinds see only ``FEATURE_NAMES``). ``names``: each row's label for the worst
    rows. ``per_layer``: fit with ``fit_layers`` (a kind that cannot is skipped, with why).
    Scaled-prior ranks plans exactly as the analytic prior, so its held-out Spearman is the
    prior's; when no kind ranks better, it is kept (the report says so).

    A table whose rows all have the same latency cannot rank: MeasurementError.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(latency_ms, dtype=np.float64)
    n = len(y)
    if n < 3:
        raise MeasurementError("measurements", n, "at least 3 measured rows are required to choose a model")
    if np.ptp(y) == 0:
        raise MeasurementError(
            "latency_ms",
            float(y[0]),
            f"every one of the {n} rows has the same latency, so no model can be ranked against "
            "another (Spearman is undefined); measure networks or plans that differ in latency, "
            "or pass an explicit --kind",
        )
    if not np.all(y > 0):
        raise MeasurementError("latency_ms", float(y.min()), "every latency must be positive")
    factories: dict[str, Callable[[], Predictor]] = {}
    for kind in [FALLBACK, *(auto_kinds() if kinds is None else kinds)]:
        PREDICTORS.get(kind)  # an unknown kind fails here, with the valid names
        factories.setdefault(kind, functools.partial(create_predictor, kind))
    wide = set(candidates or {})
    factories.update(candidates or {})
    k = n if n < LOO_BELOW else min(folds, n)
    order = np.random.default_rng(seed).permutation(n)
    tests = [order[f::k] for f in range(k)]
    n_train = n - max(len(t) for t in tests)
    base = x[:, : len(FEATURE_NAMES)]
    prior = base[:, FEATURE_NAMES.index("prior_ms")]
    prior_rho = _spearman(prior, y)
    table: dict[str, dict[str, Any]] = {}
    held_out: dict[str, Array] = {}
    for kind, factory in factories.items():
        sample = factory()
        if n_train < sample.min_rows:
            table[kind] = {
                "skipped": f"needs at least {sample.min_rows} training rows; the folds leave {n_train} "
                f"of {n} (measure at least {sample.min_rows + math.ceil(n / k)})"
            }
            continue
        xk = x if kind in wide else base
        pred = np.zeros(n)
        try:
            for test in tests:
                train = np.setdiff1d(order, test)
                model = factory()
                if per_layer:
                    model = model.fit_layers(xk[train], y[train])
                else:  # the point fit only: the fold's own interval is never used
                    model = model.fit_point(xk[train], y[train])
                pred[test] = model.predict(xk[test])[0]
        except LatencyModelError as exc:
            table[kind] = {"skipped": str(exc)}
            continue
        m = metrics(pred, y).to_dict()
        rho = prior_rho if kind == FALLBACK else _spearman(pred, y)
        table[kind] = {"spearman": _clean(rho), "mape": m["mape"], "within_10pct": m["within_10pct"]}
        held_out[kind] = pred
    scored = [kind for kind in held_out if table[kind]["spearman"] is not None]
    note = None
    if not scored:
        chosen = FALLBACK
        note = "no kind could be scored on held-out rows; the prior's order is kept with a fitted scale"
    else:
        best = max(float(table[kind]["spearman"]) for kind in scored)
        tied = [kind for kind in scored if float(table[kind]["spearman"]) >= best - RANK_TIE]
        chosen = min(tied, key=lambda kind: (float(table[kind]["mape"]), _order(kind)))
        if chosen == FALLBACK and len(scored) > 1:
            note = (
                "no learned kind ranks the held-out rows better than the analytic prior "
                f"(Spearman {prior_rho:.3f}): the prior's order is kept, with a fitted scale"
            )
    worst: list[dict[str, Any]] = []
    if chosen in held_out:
        err = np.abs(np.log(held_out[chosen] / y))
        for i in np.argsort(-err)[:WORST_ROWS]:
            worst.append(
                {
                    "row": int(i) + 2,  # CSV line (header = 1)
                    "name": names[int(i)] if names is not None and int(i) < len(names) else "",
                    "measured_ms": float(y[i]),
                    "predicted_ms": float(held_out[chosen][i]),
                    "log_ratio": float(np.log(held_out[chosen][i] / y[i])),
                }
            )
    rho_chosen = table.get(chosen, {}).get("spearman")
    return Selection(
        chosen=chosen,
        spearman=float("nan") if rho_chosen is None else float(rho_chosen),
        prior_spearman=prior_rho,
        folds=k,
        table=table,
        worst_rows=worst,
        note=note,
    )
