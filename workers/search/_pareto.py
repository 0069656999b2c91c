"""Pareto fronts and hypervolume (moocore's maintained implementations), on minimised objectives."""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
import numpy.typing as npt


def front_mask(points: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """True for the non-dominated rows of ``points`` (every column minimised; duplicates kept once)."""
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    finite = np.isfinite(p).all(axis=1)
    mask = np.zeros(len(p), dtype=bool)
    if finite.any():
        mask[np.flatnonzero(finite)] = moocore.is_nondominated(p[finite], maximise=False, keep_weakly=False)
    return mask


def hypervolume(points: npt.ArrayLike, reference: Sequence[float]) -> float:
    """Hypervolume dominated by ``points`` up to ``reference`` (minimised objectives).

    Points that do not strictly dominate the reference contribute nothing; the reference is
    fixed by the problem, so values of different runs and strategies compare.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, len(reference))
    ref = np.asarray(reference, dtype=np.float64)
    p = p[np.isfinite(p).all(axis=1) & (p < ref).all(axis=1)]
    if len(p) == 0:
        return 0.0
    return float(moocore.hypervolume(p, ref=ref))
