"""A user's own evaluator, named by import path (``mypkg.eval:map50``), for any other task.

The contract: ``function(model)`` runs the model on the user's data and returns either a finite
number (the metric is then named after the function) or a dict:

- ``{"map50": 0.43}``: one numeric entry, which is the metric;
- ``{"metric": "map50", "map50": 0.43, "map": 0.31, "n": 500, "low": 0.40, "high": 0.46}``:
  ``metric`` names the primary entry, the other numbers go to ``extra``; ``n`` (the number of
  examples) and ``low`` / ``high`` (a 95% interval) are optional but make the value comparable.

Higher must be better. A NaN, an infinity or a non-number is an error at call time, naming the
evaluator: a search must not rank models on a value that is not one.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from ._errors import DatasetError
from ._quality import QualityEstimate

__all__ = ["EVALUATOR_HINT", "ImportedEvaluator", "load_evaluator"]

_FIELD = "evaluator"
EVALUATOR_HINT = (
    "an import path 'package.module:function' (e.g. 'mypkg.eval:map50') to a function(model) that "
    "returns a float, or a dict naming its metric"
)
_RESERVED = ("metric", "n", "low", "high")


def _is_dotted_name(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def load_evaluator(path: str) -> ImportedEvaluator:
    """Import ``path`` (``module:function``, the function may be ``Class.method``) and wrap it.

    Raises DatasetError (field ``evaluator``) when the path has no colon or is malformed, the
    module does not import (or raises while importing), the attribute is missing, or it is not
    callable; each names the value and the fix.
    """
    if not isinstance(path, str) or path.count(":") != 1:
        raise DatasetError(_FIELD, path, f"expected {EVALUATOR_HINT}")
    module_name, attribute = path.split(":")
    if not _is_dotted_name(module_name) or not _is_dotted_name(attribute):
        raise DatasetError(
            _FIELD, path, f"module and function must be dotted Python names; expected {EVALUATOR_HINT}"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise DatasetError(
            _FIELD,
            path,
            f"module {module_name!r} does not import ({type(exc).__name__}: {exc}); install its package "
            "where the workers run, or fix the module name",
        ) from exc
    except Exception as exc:  # the user's module ran and failed: say so rather than crash the job
        raise DatasetError(
            _FIELD,
            path,
            f"importing module {module_name!r} raised {type(exc).__name__}: {exc}; fix the module",
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise DatasetError(
                _FIELD,
                path,
                f"module {module_name!r} has no attribute {attribute!r}; name a function defined in it",
            )
        target = getattr(target, part)
    if not callable(target):
        raise DatasetError(
            _FIELD,
            path,
            f"{attribute!r} is a {type(target).__name__}, not callable; name a function(model) that returns "
            "a float or a dict",
        )
    return ImportedEvaluator(path, target)


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a real number (a 0-d array or tensor counts), else None."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, numbers.Real) and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


class ImportedEvaluator:
    """A user's evaluator function; calling it returns a QualityEstimate (see the module docstring)."""

    def __init__(self, path: str, function: Callable[[Any], Any]) -> None:
        self.path = path
        self.function = function
        self.default_metric = path.rsplit(":", 1)[1].rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"ImportedEvaluator({self.path!r})"

    def _bad(self, result: Any, hint: str) -> DatasetError:
        shown = repr(result)
        shown = shown if len(shown) <= 200 else shown[:200] + "..."
        return DatasetError(_FIELD, self.path, f"returned {shown}: {hint}")

    def _finite(self, result: Any, key: str | None, value: Any) -> float:
        number = _number(value)
        where = "" if key is None else f"entry {key!r} "
        if number is None:
            raise self._bad(result, f"{where}is not a number; return a finite float or a dict of them")
        if not math.isfinite(number):
            raise self._bad(result, f"{where}is not finite; return a finite quality (higher is better)")
        return number

    def __call__(self, model: Any) -> QualityEstimate:
        try:
            result = self.function(model)
        except Exception as exc:
            raise DatasetError(
                _FIELD, self.path, f"raised {type(exc).__name__}: {exc}; fix the evaluator function"
            ) from exc
        if not isinstance(result, Mapping):
            return QualityEstimate(
                value=self._finite(result, None, result),
                n=None,
                low=None,
                high=None,
                metric=self.default_metric,
            )
        return self._from_mapping(result)

    def _from_mapping(self, result: Mapping[Any, Any]) -> QualityEstimate:
        if not all(isinstance(key, str) for key in result):
            raise self._bad(result, "dict keys must be strings (metric names)")
        metrics = {
            key: self._finite(result, key, value) for key, value in result.items() if key not in _RESERVED
        }
        metric = result.get("metric")
        if metric is None:
            if len(metrics) != 1:
                raise self._bad(
                    result,
                    f"{len(metrics)} metric entries and no 'metric' key; return one entry, or name the "
                    "primary one with 'metric'",
                )
            metric = next(iter(metrics))
        elif not isinstance(metric, str) or metric not in metrics:
            raise self._bad(result, f"'metric' must name one of its numeric entries {sorted(metrics)}")
        n_value = result.get("n")
        if n_value is not None and (
            isinstance(n_value, bool) or not isinstance(n_value, numbers.Integral) or n_value < 1
        ):
            raise self._bad(result, "'n' (the number of examples) must be a whole number >= 1")
        bounds = [result.get("low"), result.get("high")]
        if (bounds[0] is None) != (bounds[1] is None):
            raise self._bad(result, "give both 'low' and 'high' (a 95% interval) or neither")
        low = None if bounds[0] is None else self._finite(result, "low", bounds[0])
        high = None if bounds[1] is None else self._finite(result, "high", bounds[1])
        if low is not None and high is not None and low > high:
            raise self._bad(result, "'low' is above 'high'")
        value = metrics.pop(metric)
        return QualityEstimate(
            value=value,
            n=None if n_value is None else int(n_value),
            low=low,
            high=high,
            metric=metric,
            extra=metrics,
        )
