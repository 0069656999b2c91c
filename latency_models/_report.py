"""Validation report of a latency predictor on held-out measurements, with cheap baselines beside it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import kendalltau, spearmanr

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Metrics:
    """Accuracy of predicted against measured latency on the test rows."""

    mape: float
    within_5pct: float
    within_10pct: float
    spearman: float
    kendall: float
    false_feasible_rate: float | None
    #: Share of rows whose measured latency lies in the predicted 80% interval (None: no interval).
    interval_coverage: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metrics(
    predicted_ms: Array,
    measured_ms: Array,
    budget_ms: float | None = None,
    interval_ms: tuple[Array, Array] | None = None,
) -> Metrics:
    """MAPE, share within ±5% / ±10%, rank correlations, the false-feasible rate at a budget
    (the share of networks predicted within ``budget_ms`` that really exceed it), and with
    ``interval_ms`` (low, high) the share of rows measured inside their predicted interval."""
    p = np.asarray(predicted_ms, dtype=np.float64)
    y = np.asarray(measured_ms, dtype=np.float64)
    rel = np.abs(p - y) / y
    ff: float | None = None
    if budget_ms is not None:
        predicted_ok = p <= budget_ms
        ff = float(np.mean(y[predicted_ok] > budget_ms)) if predicted_ok.any() else 0.0
    same = bool(np.all(p == p[0])) if len(p) else True
    return Metrics(
        mape=float(rel.mean()),
        within_5pct=float(np.mean(rel <= 0.05)),
        within_10pct=float(np.mean(rel <= 0.10)),
        spearman=float("nan") if same or len(p) < 2 else float(spearmanr(p, y)[0]),
        kendall=float("nan") if same or len(p) < 2 else float(kendalltau(p, y)[0]),
        false_feasible_rate=ff,
        interval_coverage=(
            None
            if interval_ms is None
            else float(np.mean((np.asarray(interval_ms[0]) <= y) & (y <= np.asarray(interval_ms[1]))))
        ),
    )


def proxy_baselines(train_x: Array, train_y: Array, test_x: Array, macs_column: int) -> dict[str, Array]:
    """Cheap baselines on the same split: a MACs proxy (a·MACs + b, least squares) and a linear
    model (ridge) on the same features, so a predictor's gain over them is visible."""
    from sklearn.linear_model import Ridge

    a, b = (
        np.polyfit(train_x[:, macs_column], train_y, 1)
        if len(train_y) >= 2
        else (0.0, float(np.mean(train_y)))
    )
    macs_pred = np.maximum(a * test_x[:, macs_column] + b, 1e-6)
    ridge = Ridge(alpha=1.0).fit(np.log1p(train_x), train_y)
    linear_pred = np.maximum(ridge.predict(np.log1p(test_x)), 1e-6)
    return {"macs_proxy": macs_pred, "linear": linear_pred}
