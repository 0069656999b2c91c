"""Learned latency predictors: fitted on measurements, saved as text, loaded without running code.

Predictor is the extension point: a new kind is one subclass registered with
``register_predictor``; tests/test_predictors.py runs the contract on every registered kind.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
from scipy.optimize import nnls

from search_spaces import LayerSpec, Plan, Registry

from ._errors import LatencyModelError
from ._features import FEATURE_NAMES, GROUPS, PER_GROUP, network_features
from ._target import Target

Array = npt.NDArray[np.float64]
FORMAT_VERSION = 3  # 3: graph features (GRAPH_FEATURES) appended; prior_ms includes non-GEMM work


class Predictor(abc.ABC):
    """Predicts a network's latency (ms) from a row of ``FEATURE_NAMES``.

    Contract:
    - ``fit(features, latency_ms)`` accepts as few as 3 rows and returns ``self``;
    - ``fit_layers(features, latency_ms)`` fits on one-layer rows (``layer_features`` of a
      per-layer table) so that the fitted model is additive: a network's prediction is the sum
      of its layers' predictions, with no per-network constant. A kind that cannot be additive
      keeps the default, which refuses;
    - ``predict(features)`` returns (median, low, high) in ms, an 80% interval, all positive,
      ``low <= median <= high``;
    - ``save(folder)`` writes only JSON and text (no pickle), and ``load(folder)`` of what it
      wrote gives identical predictions with no code executed from the files.
    """

    kind: ClassVar[str]
    #: The fewest training rows the kind is worth fitting on (model choice skips it below).
    min_rows: ClassVar[int] = 3

    def features(self, target: Target, layers: Sequence[LayerSpec], plan: Plan, batch: int = 1) -> Array:
        """The row this predictor predicts from for ``plan`` over ``layers`` on ``target``:
        ``network_features`` (a kind that needs more, such as a transfer from another target's
        predictor, appends its own columns)."""
        return network_features(target, layers, plan, batch)

    @abc.abstractmethod
    def fit(self, features: Array, latency_ms: Array) -> Predictor: ...

    def fit_layers(self, features: Array, latency_ms: Array) -> Predictor:
        """Fit on measured layers so that networks cost the sum of their layers (see the contract)."""
        raise LatencyModelError(
            "predictor",
            self.kind,
            "cannot be fitted from a per-layer table (it is not additive over layers); "
            "use calibrated-prior or a per-network table",
        )

    def fit_point(self, features: Array, latency_ms: Array) -> Predictor:
        """Fit the point prediction only, without the interval's own held-out folds: what
        cross-validation (``select_predictor``) needs from each fold. Default: ``fit``."""
        return self.fit(features, latency_ms)

    @abc.abstractmethod
    def predict(self, features: Array) -> tuple[Array, Array, Array]: ...

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (text blobs allowed)."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: dict[str, Any]) -> Predictor: ...

    def save(self, folder: str | Path) -> Path:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "features": list(FEATURE_NAMES),
            "state": self.state(),
        }
        tmp = path / "predictor.json.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(path / "predictor.json")  # atomic: a reader never sees half a model
        return path / "predictor.json"


PREDICTORS: Registry[type[Predictor]] = Registry("predictor", LatencyModelError)


def register_predictor(cls: type[Predictor]) -> type[Predictor]:
    """Class decorator: add a Predictor subclass under ``cls.kind``."""
    PREDICTORS.register(cls.kind, cls)
    return cls


def list_predictors(pattern: str = "*") -> list[str]:
    """Registered predictor kinds matching a glob pattern, sorted."""
    return PREDICTORS.list(pattern)


def create_predictor(kind: str) -> Predictor:
    """A new, unfitted predictor of ``kind``; the error lists the valid names."""
    return PREDICTORS.get(kind)()


def load_predictor(folder: str | Path) -> Predictor:
    """Load a saved predictor; a file from another format version or feature set is refused."""
    path = Path(folder) / "predictor.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LatencyModelError(
            "predictor file", str(path), f"a readable predictor.json is required ({exc})"
        ) from None
    if doc.get("format") != FORMAT_VERSION:
        raise LatencyModelError(
            "predictor file", doc.get("format"), f"format {FORMAT_VERSION} is required; refit"
        )
    if doc.get("features") != list(FEATURE_NAMES):
        raise LatencyModelError("predictor file", "features", "it was fitted on other features; refit")
    return PREDICTORS.get(str(doc.get("kind"))).from_state(doc["state"])


def _calibration_design(features: Array) -> Array:
    """Columns a calibrated prior combines: per kind the prior latency, MACs and GEMM count, the
    pooling layers, and a constant (the per-network overhead)."""
    cols = []
    for g in range(len(GROUPS)):
        base = g * len(PER_GROUP)
        for name in ("prior_ms", "macs", "count"):
            cols.append(features[:, base + PER_GROUP.index(name)])
    cols.append(features[:, FEATURE_NAMES.index("pooling_count")])
    # The graph features, as the study's 5a uses them (docs/latency_nb201.md): the memory-bound
    # work's prior as one column, the elementwise op count, and dead layers' count and prior.
    # Few columns on purpose: below 3 rows per coefficient every fit runs leave-one-out, and
    # one column per graph class (14) made fits 3-4x slower for no measured gain.
    cols.append(features[:, _GRAPH_PRIOR].sum(axis=1))
    cols += [features[:, FEATURE_NAMES.index(name)] for name in _GRAPH_DESIGN]
    cols.append(np.ones(len(features)))
    return np.stack(cols, axis=1)


#: The memory-roofline prior of every graph class (elementwise, activation, norm, ...).
_GRAPH_PRIOR = [
    i
    for i, n in enumerate(FEATURE_NAMES)
    if n.startswith("graph_") and n.endswith("_prior_ms") and n != "graph_dead_prior_ms"
]
#: The other graph columns a calibrated prior combines.
_GRAPH_DESIGN = ("graph_elementwise_count", "graph_dead_count", "graph_dead_prior_ms")


_PRIOR_COLS = [3 * g for g in range(len(GROUPS))]


def _tied(x: Array, constant: bool = True) -> Array:
    """The design of one prior scale plus (when ``constant``) a constant."""
    prior = x[:, _PRIOR_COLS].sum(axis=1, keepdims=True)
    return np.concatenate([prior, x[:, -1:]], axis=1) if constant else prior


def _robust_fit(x: Array, y: Array, constant: bool = True) -> Array:
    """Non-negative coefficients minimising a soft-L1 loss on log(predicted / measured);
    ``constant``: the last column is the constant (it alone cannot start the fit)."""
    from scipy.optimize import least_squares

    used = np.any(x != 0, axis=0)
    if constant:
        used[-1] = True
    if not used.all():
        # A column that is 0 on every row (a layer kind the table lacks) has no data behind it:
        # its coefficient is 0, and leaving it out of the optimisation makes the fit several
        # times faster (NB201 uses 2 of the 6 GEMM kinds).
        coef_used = _robust_fit(x[:, used], y, constant)
        out = np.zeros(x.shape[1])
        out[used] = coef_used
        return out
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    xs = x / scale
    start = nnls(xs, y)[0]
    free = slice(0, x.shape[1] - 1 if constant else x.shape[1])
    if not np.any(start[free] > 0):
        start[free] = float(np.median(y / np.maximum(xs[:, free].sum(axis=1), 1e-12)))
    start = np.maximum(start, 1e-9)

    def residual(c: Array) -> Array:
        out: Array = np.log(np.maximum(xs @ c, 1e-9)) - np.log(y)
        return out

    fit = least_squares(residual, start, bounds=(0.0, np.inf), loss="soft_l1", f_scale=0.1, max_nfev=2000)
    coef: Array = fit.x / scale
    return coef


def _loo_log_error(x: Array, y: Array, constant: bool = True) -> float:
    """Mean absolute log error of leave-one-out fits."""
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coef = _robust_fit(x[keep], y[keep], constant)
        errors.append(abs(float(np.log(max(float(x[i] @ coef), 1e-9) / y[i]))))
    return float(np.mean(errors))


#: The predicted interval is an 80% one (the contract of ``Predictor.predict``).
INTERVAL_COVERAGE = 0.8
#: Below this many rows the interval comes from the training residuals (too few for folds).
MIN_ROWS_HELD_OUT_INTERVAL = 10


def _held_out_log_ratios(
    fit_predict: Callable[[Array, Array, Array], Array], x: Array, y: Array, folds: int = 5
) -> Array:
    """log(measured / predicted) of every row, each predicted by a model fitted without its fold."""
    order = np.random.default_rng(0).permutation(len(y))
    out = np.zeros(len(y))
    for f in range(min(folds, len(y))):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        out[test] = np.log(y[test] / np.maximum(fit_predict(x[train], y[train], x[test]), 1e-9))
    return out


def _interval_log_q(log_ratios: Array, coverage: float = INTERVAL_COVERAGE) -> tuple[float, float]:
    """Bounds of the central ``coverage`` interval of log(measured / predicted), with the
    split-conformal finite-sample correction (the ceil((n + 1)·level)-th of n ratios), so that
    held-out ratios give an interval that covers about ``coverage`` of new rows."""
    n = len(log_ratios)
    if n < 3:
        return (0.0, 0.0)
    upper = min(1.0, float(np.ceil((n + 1) * (1 + coverage) / 2)) / n)
    return (
        float(np.quantile(log_ratios, 1.0 - upper, method="lower")),
        float(np.quantile(log_ratios, upper, method="higher")),
    )


class _LinearInDesign(Predictor):
    """What the kinds linear in a design of the features share: ``coef`` over ``_design``'s
    columns, the 80% interval from held-out log ratios (training ones below
    ``MIN_ROWS_HELD_OUT_INTERVAL`` rows), prediction and state. Not registered."""

    def __init__(self) -> None:
        self.coef: Array = np.zeros(0)
        self.log_q: tuple[float, float] = (0.0, 0.0)

    @staticmethod
    @abc.abstractmethod
    def _design(features: Array) -> Array: ...

    @abc.abstractmethod
    def _fit(self, features: Array, latency_ms: Array, *, constant: bool, interval: bool = True) -> Self: ...

    def _fit_interval(self, features: Array, y: Array, *, constant: bool) -> None:
        """``log_q`` of the fitted ``coef``: from 5-fold held-out log ratios, each fold refitted
        the same way (training residuals understate the error on new rows; bench/intervals.py
        measures the coverage both ways), or from the training ratios below 10 rows."""
        if len(y) >= MIN_ROWS_HELD_OUT_INTERVAL:

            def fold(x_tr: Array, y_tr: Array, x_te: Array) -> Array:
                return type(self)()._fit(x_tr, y_tr, constant=constant, interval=False).predict(x_te)[0]

            self.log_q = _interval_log_q(_held_out_log_ratios(fold, features, y))
        else:
            self.log_q = _interval_log_q(np.log(y / np.maximum(self._design(features) @ self.coef, 1e-9)))

    def predict(self, features: Array) -> tuple[Array, Array, Array]:
        mid = np.maximum(self._design(np.asarray(features, dtype=np.float64)) @ self.coef, 1e-6)
        lo, hi = self.log_q
        return mid, mid * np.exp(min(lo, 0.0)), mid * np.exp(max(hi, 0.0))

    def state(self) -> dict[str, Any]:
        return {"coef": self.coef.tolist(), "log_q": list(self.log_q)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        out = cls()
        out.coef = np.asarray(state["coef"], dtype=np.float64)
        out.log_q = (float(state["log_q"][0]), float(state["log_q"][1]))
        return out


@register_predictor
class CalibratedPrior(_LinearInDesign):
    """Latency = Σ_kind (a_k · prior_ms_k + b_k · MACs_k + c_k · GEMMs_k) + d · pools + e, all ≥ 0.

    The nn-Meter decomposition with the analytic prior as the main feature. Fitted on the log
    ratio of predicted to measured latency with a robust (soft-L1) loss, started from a
    non-negative least-squares solution: relative errors count, and a failed measurement far
    below the rest (NAS-Bench-201 on raspi4 has cells "measured" at 0.01 ms) cannot pull the
    fit. Non-negative coefficients keep it monotone in every feature. With few rows the
    per-kind fit is kept only when leave-one-out says it beats one scale of the prior plus a
    constant (docs/latency_nb201.md studies both on NB201). The 80% interval comes from
    5-fold held-out log ratios (training ones below 10 rows). ``fit_layers`` fits the same
    model on measured layers with the constant held at 0, which makes it additive over layers.
    """

    kind = "calibrated-prior"
    _design = staticmethod(_calibration_design)

    def fit(self, features: Array, latency_ms: Array) -> CalibratedPrior:
        return self._fit(features, latency_ms, constant=True)

    def fit_point(self, features: Array, latency_ms: Array) -> CalibratedPrior:
        return self._fit(features, latency_ms, constant=True, interval=False)

    def fit_layers(self, features: Array, latency_ms: Array) -> CalibratedPrior:
        """Fit on one-layer rows with the constant held at 0: a layer's own fixed cost goes to
        its kind's per-GEMM term, which sums over a network; a per-layer table says nothing of
        the per-network overhead, so networks are predicted without it."""
        return self._fit(features, latency_ms, constant=False)

    def _fit(
        self, features: Array, latency_ms: Array, *, constant: bool, interval: bool = True
    ) -> CalibratedPrior:
        features = np.asarray(features, dtype=np.float64)
        y = np.asarray(latency_ms, dtype=np.float64)
        design = _calibration_design(features)
        x = design if constant else design[:, :-1]
        tied_x = _tied(design, constant)
        self.coef = np.zeros(design.shape[1])
        self.coef[: x.shape[1]] = _robust_fit(x, y, constant)
        tied = _robust_fit(tied_x, y, constant)
        if len(y) < 3 * x.shape[1] and _loo_log_error(tied_x, y, constant) < _loo_log_error(x, y, constant):
            # Few rows for this many coefficients and one scale of the prior (plus a constant)
            # predicts held-out rows (leave-one-out) better than the per-kind fit: keep it.
            self.coef = np.zeros(design.shape[1])
            self.coef[_PRIOR_COLS] = tied[0]
            self.coef[-1] = tied[1] if constant else 0.0
        # A kind (or pooling) absent from every training row has no data behind its
        # coefficients: its MACs and GEMM terms are 0 and its prior runs at the table's overall
        # scale of the prior, so a network with kinds the table lacks is still costed sensibly.
        absent = ~np.any(design != 0, axis=0)
        absent[-1] = False
        self.coef[absent] = 0.0
        prior_cols = np.array(_PRIOR_COLS)
        self.coef[prior_cols[absent[prior_cols]]] = tied[0]
        if interval:
            self._fit_interval(features, y, constant=constant)
        return self


@register_predictor
class ScaledPrior(_LinearInDesign):
    """Latency = s · analytic prior + c (s > 0, c ≥ 0): the prior's own order with its scale fitted.

    It ranks plans exactly as the analytic prior does, so model choice (``select_predictor``)
    falls back to it when no learned kind ranks held-out rows better than the prior: the
    target keeps the prior's order and gets milliseconds for its constraints. Fitted like the
    calibrated prior (robust soft-L1 loss on the log ratio, from a non-negative least-squares
    start); the 80% interval from 5-fold held-out log ratios (training ones below 10 rows).
    """

    kind = "scaled-prior"
    min_rows = 2

    def __init__(self) -> None:
        super().__init__()
        self.coef = np.array([1.0, 0.0])

    @staticmethod
    def _design(features: Array) -> Array:
        prior = np.asarray(features, dtype=np.float64)[:, FEATURE_NAMES.index("prior_ms")]
        return np.stack([prior, np.ones(len(prior))], axis=1)

    def fit(self, features: Array, latency_ms: Array) -> ScaledPrior:
        return self._fit(features, latency_ms, constant=True)

    def fit_point(self, features: Array, latency_ms: Array) -> ScaledPrior:
        return self._fit(features, latency_ms, constant=True, interval=False)

    def fit_layers(self, features: Array, latency_ms: Array) -> ScaledPrior:
        """One scale of the prior with no constant: additive over layers."""
        return self._fit(features, latency_ms, constant=False)

    def _fit(
        self, features: Array, latency_ms: Array, *, constant: bool, interval: bool = True
    ) -> ScaledPrior:
        x = self._design(features)
        y = np.asarray(latency_ms, dtype=np.float64)
        coef = _robust_fit(x if constant else x[:, :1], y, constant)
        # A zero scale would predict one value for every plan and rank none of them.
        self.coef = np.array([max(float(coef[0]), 1e-12), float(coef[1]) if constant else 0.0])
        if interval:
            self._fit_interval(np.asarray(features, dtype=np.float64), y, constant=constant)
        return self


@register_predictor
class BoostedResidual(Predictor):
    """Gradient-boosted trees (LightGBM) on log(latency / calibrated prior).

    The calibrated prior carries what physics explains; the trees learn the rest from the
    features (log-scaled). Below ``min_rows`` training rows the trees are skipped: the
    calibrated prior alone is the better model there. The 80% interval comes from 5-fold
    held-out log ratios of the whole model (split-conformal quantiles); predictors stored before
    that kept LightGBM quantile models (10% and 90%) of the training residuals, and still load.
    """

    kind = "boosted-residual"
    min_rows = 30

    def __init__(self) -> None:
        self.base = CalibratedPrior()
        self.models: dict[str, str] = {}
        #: Bounds of log(measured / predicted) from held-out folds; None for a predictor stored
        #: before they were kept, whose interval comes from its quantile trees ("lo", "hi").
        self.log_q: tuple[float, float] | None = None

    @staticmethod
    def _x(features: Array) -> Array:
        return np.log1p(np.maximum(np.asarray(features, dtype=np.float64), 0.0))

    @staticmethod
    def tree_params(n_rows: int) -> dict[str, Any]:
        """LightGBM's settings for ``n_rows`` training rows (the objective aside)."""
        return {
            "n_estimators": 300,
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_child_samples": max(5, n_rows // 50),
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "reg_lambda": 1.0,
            "verbose": -1,
            "random_state": 0,
            "n_jobs": 1,
        }

    def fit(self, features: Array, latency_ms: Array) -> BoostedResidual:
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(latency_ms, dtype=np.float64)
        trees = len(y) >= self.min_rows
        self._fit_point(x, y, trees=trees, base_interval=not trees)
        if trees:
            # The interval from held-out folds of the whole model (prior + trees, trees in every
            # fold as in the final model): quantile trees fitted on the training residuals
            # covered 35-65% of held-out rows with their "80%" interval (bench/intervals.py).
            def fold(x_tr: Array, y_tr: Array, x_te: Array) -> Array:
                model = BoostedResidual()._fit_point(x_tr, y_tr, trees=True, base_interval=False)
                return model.predict(x_te)[0]

            self.log_q = _interval_log_q(_held_out_log_ratios(fold, x, y))
        return self

    def fit_point(self, features: Array, latency_ms: Array) -> BoostedResidual:
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(latency_ms, dtype=np.float64)
        return self._fit_point(x, y, trees=len(y) >= self.min_rows, base_interval=False)

    def _fit_point(self, x: Array, y: Array, *, trees: bool, base_interval: bool) -> BoostedResidual:
        """The calibrated prior and, with ``trees``, the trees on its log residuals."""
        import lightgbm as lgb

        self.base._fit(x, y, constant=True, interval=base_interval)
        self.models = {}
        self.log_q = (0.0, 0.0)
        if not trees:
            return self
        resid = np.log(y / self.base.predict(x)[0])
        # Huber: robust to failed measurements.
        model = lgb.LGBMRegressor(**self.tree_params(len(y)), objective="huber", alpha=0.3)
        model.fit(self._x(x), resid)
        self.models = {"mid": model.booster_.model_to_string()}
        return self

    def fit_layers(self, features: Array, latency_ms: Array) -> BoostedResidual:
        """The calibrated prior alone, fitted on layers: trees on one-layer rows would be applied
        to network rows (sums over many layers) they never saw, and they do not add over layers."""
        self.base.fit_layers(features, latency_ms)
        self.models = {}
        self.log_q = None
        return self

    def predict(self, features: Array) -> tuple[Array, Array, Array]:
        base, base_lo, base_hi = self.base.predict(features)
        if not self.models:
            return base, base_lo, base_hi
        import lightgbm as lgb

        x = self._x(features)
        out = {name: np.asarray(lgb.Booster(model_str=text).predict(x)) for name, text in self.models.items()}
        mid = base * np.exp(out["mid"])
        if self.log_q is not None:
            lo_q, hi_q = self.log_q
            return mid, mid * np.exp(min(lo_q, 0.0)), mid * np.exp(max(hi_q, 0.0))
        lo = np.minimum(base * np.exp(out["lo"]), mid)
        hi = np.maximum(base * np.exp(out["hi"]), mid)
        return mid, lo, hi

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"base": self.base.state(), "models": self.models}
        if self.log_q is not None:
            out["log_q"] = list(self.log_q)
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BoostedResidual:
        out = cls()
        out.base = CalibratedPrior.from_state(state["base"])
        out.models = {str(k): str(v) for k, v in state["models"].items()}
        if "log_q" in state:
            out.log_q = (float(state["log_q"][0]), float(state["log_q"][1]))
        return out
