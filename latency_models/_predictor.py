"""Learned latency predictors: fitted on measurements, saved as text, loaded without running code.

Predictor is the extension point: a new kind is one subclass registered with
``register_predictor``; tests/test_predictors.py runs the contract on every registered kind.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy.optimize import nnls

from ._errors import LatencyModelError
from ._features import FEATURE_NAMES, GROUPS, PER_GROUP

Array = npt.NDArray[np.float64]
FORMAT_VERSION = 1


class Predictor(abc.ABC):
    """Predicts a network's latency (ms) from a row of ``FEATURE_NAMES``.

    Contract:
    - ``fit(features, latency_ms)`` accepts as few as 3 rows and returns ``self``;
    - ``predict(features)`` returns (median, low, high) in ms, an 80% interval, all positive,
      ``low <= median <= high``;
    - ``save(folder)`` writes only JSON and text (no pickle), and ``load(folder)`` of what it
      wrote gives identical predictions with no code executed from the files.
    """

    kind: ClassVar[str]

    @abc.abstractmethod
    def fit(self, features: Array, latency_ms: Array) -> Predictor: ...

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


_PREDICTORS: dict[str, type[Predictor]] = {}


def register_predictor(cls: type[Predictor]) -> type[Predictor]:
    _PREDICTORS[cls.kind] = cls
    return cls


def list_predictors() -> list[str]:
    return sorted(_PREDICTORS)


def create_predictor(kind: str) -> Predictor:
    if kind not in _PREDICTORS:
        raise LatencyModelError(
            "predictor", kind, f"unknown predictor; valid names: {', '.join(list_predictors())}"
        )
    return _PREDICTORS[kind]()


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
    kind = doc.get("kind")
    if kind not in _PREDICTORS:
        raise LatencyModelError(
            "predictor file", kind, f"unknown predictor; valid names: {list_predictors()}"
        )
    return _PREDICTORS[kind].from_state(doc["state"])


def _calibration_design(features: Array) -> Array:
    """Columns a calibrated prior combines: per kind prior latency and GEMM count, and a constant."""
    cols = []
    for g in range(len(GROUPS)):
        base = g * len(PER_GROUP)
        cols.append(features[:, base + PER_GROUP.index("prior_ms")])
        cols.append(features[:, base + PER_GROUP.index("count")])
    cols.append(np.ones(len(features)))
    return np.stack(cols, axis=1)


@register_predictor
class CalibratedPrior(Predictor):
    """Latency = Σ_kind (a_k · prior_ms_k + b_k · GEMMs_k) + c, all coefficients ≥ 0 (NNLS).

    Few parameters, monotone in the prior by construction: the right model with 10 samples.
    Rows are weighted by 1/latency (capped at 4/median) so the fit minimises relative error. The
    interval comes from the training residuals' log-ratio quantiles.
    """

    kind = "calibrated-prior"

    def __init__(self) -> None:
        self.coef: Array = np.zeros(0)
        self.tied = False
        self.log_q: tuple[float, float] = (0.0, 0.0)

    def fit(self, features: Array, latency_ms: Array) -> CalibratedPrior:
        features = np.asarray(features, dtype=np.float64)
        y = np.asarray(latency_ms, dtype=np.float64)
        full = _calibration_design(features)
        prior_cols = [2 * g for g in range(len(GROUPS))]
        # Too few rows for a coefficient per kind: one scale of the whole prior plus a constant
        # (a monotone map, so the prior's ranking of networks is kept).
        self.tied = len(y) < 3 * full.shape[1]
        if self.tied:
            design = np.stack([features[:, FEATURE_NAMES.index("prior_ms")], np.ones(len(y))], axis=1)
        else:
            design = full
        # Relative error, but no row may dominate: real tables hold failed measurements far
        # below the rest (NAS-Bench-201 on raspi4 has cells "measured" at 0.01 ms).
        w = 1.0 / np.maximum(y, 0.25 * float(np.median(y)))
        # Scale columns so NNLS is well conditioned; undo afterwards.
        scale = np.maximum(np.abs(design * w[:, None]).max(axis=0), 1e-12)
        coef = nnls(design * w[:, None] / scale, y * w)[0] / scale
        if self.tied:
            self.coef = np.zeros(full.shape[1])
            self.coef[prior_cols] = coef[0]
            self.coef[-1] = coef[1]
        else:
            self.coef = coef
        if not np.any(self.coef[prior_cols] > 0):
            # Degenerate (the constant explains the rows best): keep the prior's shape, scaled.
            ratio = np.median(y / np.maximum(features[:, FEATURE_NAMES.index("prior_ms")], 1e-12))
            self.coef = np.zeros(full.shape[1])
            self.coef[prior_cols] = ratio
        resid = np.log(y / np.maximum(full @ self.coef, 1e-9))
        self.log_q = (
            (float(np.quantile(resid, 0.1)), float(np.quantile(resid, 0.9))) if len(y) >= 3 else (0.0, 0.0)
        )
        return self

    def predict(self, features: Array) -> tuple[Array, Array, Array]:
        mid = np.maximum(_calibration_design(np.asarray(features, dtype=np.float64)) @ self.coef, 1e-6)
        lo, hi = self.log_q
        return mid, mid * np.exp(min(lo, 0.0)), mid * np.exp(max(hi, 0.0))

    def state(self) -> dict[str, Any]:
        return {"coef": self.coef.tolist(), "log_q": list(self.log_q)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CalibratedPrior:
        out = cls()
        out.coef = np.asarray(state["coef"], dtype=np.float64)
        out.log_q = (float(state["log_q"][0]), float(state["log_q"][1]))
        return out


@register_predictor
class BoostedResidual(Predictor):
    """Gradient-boosted trees (LightGBM) on log(latency / calibrated prior).

    The calibrated prior carries what physics explains; the trees learn the rest from the
    features (log-scaled). Below ``min_rows`` training rows the trees are skipped: the
    calibrated prior alone is the better model there. The interval comes from LightGBM
    quantile models (10% and 90%) fitted on the same residuals.
    """

    kind = "boosted-residual"
    min_rows = 30

    def __init__(self) -> None:
        self.base = CalibratedPrior()
        self.models: dict[str, str] = {}

    @staticmethod
    def _x(features: Array) -> Array:
        return np.log1p(np.maximum(np.asarray(features, dtype=np.float64), 0.0))

    def fit(self, features: Array, latency_ms: Array) -> BoostedResidual:
        import lightgbm as lgb

        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(latency_ms, dtype=np.float64)
        self.base.fit(x, y)
        self.models = {}
        if len(y) < self.min_rows:
            return self
        resid = np.log(y / self.base.predict(x)[0])
        common: dict[str, Any] = {
            "n_estimators": 300,
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_child_samples": max(5, len(y) // 50),
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "reg_lambda": 1.0,
            "verbose": -1,
            "random_state": 0,
            "n_jobs": 1,
        }
        objectives: tuple[tuple[str, dict[str, Any]], ...] = (
            ("mid", {"objective": "huber", "alpha": 0.3}),  # robust to failed measurements
            ("lo", {"objective": "quantile", "alpha": 0.1}),
            ("hi", {"objective": "quantile", "alpha": 0.9}),
        )
        for name, objective in objectives:
            model = lgb.LGBMRegressor(**common, **objective)
            model.fit(self._x(x), resid)
            self.models[name] = model.booster_.model_to_string()
        return self

    def predict(self, features: Array) -> tuple[Array, Array, Array]:
        base, base_lo, base_hi = self.base.predict(features)
        if not self.models:
            return base, base_lo, base_hi
        import lightgbm as lgb

        x = self._x(features)
        out = {name: np.asarray(lgb.Booster(model_str=text).predict(x)) for name, text in self.models.items()}
        mid = base * np.exp(out["mid"])
        lo = np.minimum(base * np.exp(out["lo"]), mid)
        hi = np.maximum(base * np.exp(out["hi"]), mid)
        return mid, lo, hi

    def state(self) -> dict[str, Any]:
        return {"base": self.base.state(), "models": self.models}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BoostedResidual:
        out = cls()
        out.base = CalibratedPrior.from_state(state["base"])
        out.models = {str(k): str(v) for k, v in state["models"].items()}
        return out
