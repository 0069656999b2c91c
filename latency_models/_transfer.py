"""Few-shot transfer: a new target borrows a measured target's learned predictor.

The source predictor's prediction of a network (on the source target, from the network's own
layers) becomes a feature of the new target; a small correction is fitted on the new rows:
latency = s · source + Σ_kind a_k · prior_k + c (all ≥ 0), robust soft-L1 loss on the log
ratio, falling back (by leave-one-out) to s · source + c when the rows are few for that many
coefficients. With at least ``TransferPredictor.tree_rows`` rows, gradient-boosted trees fit
what the correction leaves (log residual). HELP (NeurIPS 2021) does this with meta-learning; here
it is a linear model on a ranking the source already learned, which needs no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from search_spaces import LayerSpec, Plan

from ._errors import LatencyModelError
from ._features import FEATURE_NAMES, GROUPS, PER_GROUP, network_features
from ._predictor import (
    MIN_ROWS_HELD_OUT_INTERVAL,
    PREDICTORS,
    Array,
    BoostedResidual,
    Predictor,
    _held_out_log_ratios,
    _interval_log_q,
    _loo_log_error,
    _robust_fit,
    register_predictor,
)
from ._target import Target

__all__ = ["SOURCE_COLUMN", "TransferPredictor", "loo_transfer_spearman"]

#: The column a transfer appends to ``FEATURE_NAMES``: the source predictor's latency (ms).
SOURCE_COLUMN = len(FEATURE_NAMES)
_PRIOR_KIND_COLS = [g * len(PER_GROUP) + PER_GROUP.index("prior_ms") for g in range(len(GROUPS))]


@register_predictor
class TransferPredictor(Predictor):
    """A correction of another target's learned predictor, fitted on a few rows of this one.

    ``features`` appends the source's prediction to ``network_features`` (column
    ``SOURCE_COLUMN``); ``fit`` and ``predict`` read it from there. Without a source (as the
    predictor contract creates it) the analytic prior stands in for the source, so the kind
    still fits and predicts from plain feature rows. The state stores the source target
    (``Target.to_dict``) and the source predictor's state: a saved transfer predicts without
    the source's catalogue.
    """

    kind = "transfer"
    #: From this many rows, trees fit the correction's log residual.
    tree_rows = 30

    def __init__(self, source_target: Target | None = None, source: Predictor | None = None) -> None:
        if (source_target is None) != (source is None):
            raise LatencyModelError("transfer", "source", "a source target and its predictor go together")
        self.source_target = source_target
        self.source = source
        #: Design columns of the correction ("source", "prior:<kind>", "constant") and their
        #: non-negative coefficients.
        self.columns: list[str] = ["source", "constant"]
        self.coef: Array = np.array([1.0, 0.0])
        self.residual: BoostedResidual | None = None
        self.log_q: tuple[float, float] = (0.0, 0.0)

    # ---- features ------------------------------------------------------------------------
    def features(self, target: Target, layers: Sequence[LayerSpec], plan: Plan, batch: int = 1) -> Array:
        """``network_features`` on ``target`` plus the source's prediction of the same network."""
        row = network_features(target, layers, plan, batch)
        if self.source is None or self.source_target is None:
            # no source: the analytic prior stands in for it (see the class docstring)
            return np.append(row, row[FEATURE_NAMES.index("prior_ms")])
        return np.append(row, self.source_ms(layers, plan, batch))

    def source_ms(self, layers: Sequence[LayerSpec], plan: Plan, batch: int = 1) -> float:
        """The source predictor's latency of ``plan`` over ``layers`` on the source target."""
        if self.source is None or self.source_target is None:
            raise LatencyModelError("transfer", "source", "this transfer predictor has no source")
        row = self.source.features(self.source_target, layers, plan, batch)
        return float(self.source.predict(row[None, :])[0][0])

    def _source_col(self, features: Array) -> Array:
        if features.shape[1] > SOURCE_COLUMN:
            col: Array = features[:, SOURCE_COLUMN]
            return col
        if self.source is not None:
            raise LatencyModelError(
                "features",
                f"{features.shape[1]} columns",
                f"a transfer from {self.source_target.name if self.source_target else '?'} needs the "
                "source's prediction as an extra column: build rows with predictor.features(...)",
            )
        col = features[:, FEATURE_NAMES.index("prior_ms")]
        return col

    def _design(self, features: Array, columns: Sequence[str]) -> Array:
        out = []
        for name in columns:
            if name == "source":
                out.append(self._source_col(features))
            elif name == "constant":
                out.append(np.ones(len(features)))
            else:
                out.append(features[:, _PRIOR_KIND_COLS[GROUPS.index(name.split(":", 1)[1])]])
        return np.stack(out, axis=1)

    # ---- fit -----------------------------------------------------------------------------
    def fit(self, features: Array, latency_ms: Array) -> TransferPredictor:
        return self._fit(np.asarray(features, dtype=np.float64), np.asarray(latency_ms, dtype=np.float64))

    def fit_point(self, features: Array, latency_ms: Array) -> TransferPredictor:
        x = np.asarray(features, dtype=np.float64)
        return self._fit(x, np.asarray(latency_ms, dtype=np.float64), interval=False)

    def _fit(self, x: Array, y: Array, interval: bool = True) -> TransferPredictor:
        present = [
            f"prior:{g}" for g, col in zip(GROUPS, _PRIOR_KIND_COLS, strict=True) if np.any(x[:, col] != 0)
        ]
        full = ["source", *present, "constant"]
        tied = ["source", "constant"]
        self.columns = full
        # Few rows for the per-kind correction: keep it only when leave-one-out says it
        # predicts held-out rows better than one scale of the source plus a constant.
        if 3 <= len(y) < 3 * len(full) and _loo_log_error(self._design(x, tied), y) <= _loo_log_error(
            self._design(x, full), y
        ):
            self.columns = tied
        self.coef = _robust_fit(self._design(x, self.columns), y)
        self.coef[0] = max(float(self.coef[0]), 1e-12)  # keeps the source's order
        self.residual = None
        if len(y) >= self.tree_rows:
            base = self._linear(x)
            self.residual = BoostedResidual()
            resid = np.log(y / base)
            import lightgbm as lgb

            model = lgb.LGBMRegressor(**BoostedResidual.tree_params(len(y)), objective="huber", alpha=0.3)
            model.fit(BoostedResidual._x(x), resid)
            self.residual.models = {"mid": model.booster_.model_to_string()}
        if not interval:
            return self
        if len(y) >= MIN_ROWS_HELD_OUT_INTERVAL:

            def fold(x_tr: Array, y_tr: Array, x_te: Array) -> Array:
                clone = TransferPredictor(self.source_target, self.source)._fit(x_tr, y_tr, interval=False)
                return clone.predict(x_te)[0]

            self.log_q = _interval_log_q(_held_out_log_ratios(fold, x, y))
        else:
            self.log_q = _interval_log_q(np.log(y / self.predict(x)[0]))
        return self

    def _linear(self, x: Array) -> Array:
        out: Array = np.maximum(self._design(x, self.columns) @ self.coef, 1e-6)
        return out

    def predict(self, features: Array) -> tuple[Array, Array, Array]:
        x = np.asarray(features, dtype=np.float64)
        mid = self._linear(x)
        if self.residual is not None and self.residual.models:
            import lightgbm as lgb

            booster = lgb.Booster(model_str=self.residual.models["mid"])
            mid = mid * np.exp(np.asarray(booster.predict(BoostedResidual._x(x))))
        lo, hi = self.log_q
        return mid, mid * np.exp(min(lo, 0.0)), mid * np.exp(max(hi, 0.0))

    # ---- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "source_target": None if self.source_target is None else self.source_target.to_dict(),
            "source": None
            if self.source is None
            else {"kind": self.source.kind, "state": self.source.state()},
            "columns": list(self.columns),
            "coef": self.coef.tolist(),
            "trees": None if self.residual is None else self.residual.models,
            "log_q": list(self.log_q),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TransferPredictor:
        source = state.get("source")
        target = state.get("source_target")
        out = cls(
            None if target is None else Target.from_dict(target),
            None if source is None else PREDICTORS.get(str(source["kind"])).from_state(source["state"]),
        )
        out.columns = [str(c) for c in state["columns"]]
        out.coef = np.asarray(state["coef"], dtype=np.float64)
        if state.get("trees"):
            out.residual = BoostedResidual()
            out.residual.models = {str(k): str(v) for k, v in state["trees"].items()}
        out.log_q = (float(state["log_q"][0]), float(state["log_q"][1]))
        return out


def loo_transfer_spearman(features: Array, latency_ms: Array) -> float:
    """Spearman of leave-one-out predictions of the corrected transfer on ``features`` (rows with
    the source's column): how well a source ranks the new target's rows once corrected; what
    ``--from auto`` picks the source by. NaN when undefined (fewer than 3 rows)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(latency_ms, dtype=np.float64)
    if len(y) < 3:
        return float("nan")
    pred = np.zeros(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        model = TransferPredictor()._fit(x[keep], y[keep], interval=False)
        pred[i] = model.predict(x[i : i + 1])[0][0]
    return float(spearmanr(pred, y)[0])
