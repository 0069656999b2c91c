"""``guided``: hwsearch's predictor-guided strategy.

Each round it screens thousands of candidate plans at once, on predicted cost (the vectorised
batch predictor of every target) and on a quality surrogate, and proposes for real evaluation
only the candidates that would move the feasible Pareto front the most:

1. Candidates: sparse plans (a few layer knobs changed from the uncompressed model), local
   moves around the evaluated front, the uniform plans and local moves around them, and some
   uniformly random plans, all in option-index space (no Python loop per plan).
2. Hard constraints by construction: candidates over a latency ceiling are dropped in the
   screen, FPGA resources and every other ceiling are checked exactly on the shortlist with
   ``latency_models.predict``, so no infeasible plan is proposed. Near a ceiling the
   predictor's uncertainty (the learned predictor's interval, or 15% for a prior) gives the
   probability that the plan also fits on the device, which scales its hypervolume gain.
3. Quality surrogate: per-layer sensitivity probes from the weights (``_sensitivity``)
   summed per knob and per third of the network, weighted by non-negative least squares on
   the real evaluations so far and calibrated by isotonic regression (quality collapses
   non-linearly); before any evaluation it ranks by total damage. An optimistic bonus of
   the surrogate's residual spread keeps it exploring.
4. Selection: greedy hypervolume improvement (times that probability) of the predicted points
   over the real feasible front (moocore), re-computed after each pick so a batch spreads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.optimize import nnls
from scipy.special import ndtr
from sklearn.isotonic import IsotonicRegression

from search_spaces import KNOBS, Plan

from ._baselines import uniform_plans
from ._pareto import front_mask, hypervolume
from ._problem import Problem
from ._sensitivity import damage_table
from ._strategy import Observation, Strategy, register_strategy

IntArray = npt.NDArray[np.int64]
_BINS = 3


@register_strategy
class GuidedStrategy(Strategy):
    name = "guided"
    description = (
        "hwsearch's: screens thousands of plans on predicted cost and a learned quality surrogate "
        "(weight-sensitivity probes), evaluates only those that move the feasible front"
    )
    pool_size = 3072
    shortlist = 160

    def __init__(self, problem: Problem, seed: int) -> None:
        super().__init__(problem, seed)
        space = problem.space
        self.n_layers = len(space.layers)
        self.n_opts = np.array(
            [[len(space.knobs_of(layer.name).options(k)) for k in KNOBS] for layer in space.layers],
            dtype=np.int64,
        )
        self.free = np.flatnonzero(self.n_opts.ravel() > 1)
        self.damage = damage_table(problem.model, space) if problem.model is not None else None
        self.bins = np.minimum(_BINS - 1, (np.arange(self.n_layers) * _BINS) // max(1, self.n_layers))
        first: dict[str, int] = {}
        self.ties: list[tuple[int, int]] = []  # (member, first member of its group)
        for i, layer in enumerate(space.layers):
            if layer.group is None or not layer.prunable:
                continue
            if layer.group in first:
                self.ties.append((i, first[layer.group]))
            else:
                first[layer.group] = i
        # The uniform plans are candidates too, and bases for local moves: a plan that
        # compresses every layer a little is far from the uncompressed model in knob changes.
        uniform = uniform_plans(problem)
        self.uniform = np.stack([space.encode(p) for p in uniform]).reshape(
            len(uniform), self.n_layers, len(KNOBS)
        )
        self.seen: set[bytes] = set()
        self.obs_idx: list[IntArray] = []
        self.obs_drop: list[float] = []
        self.obs_points: list[tuple[float, ...] | None] = []  # feasible, real, normalised objectives
        self.beta = np.ones(len(KNOBS) * _BINS)
        self.iso: IsotonicRegression | None = None
        self.sigma = 0.05

    # ---- features and surrogate ----------------------------------------------------------
    def _features(self, idx: IntArray) -> npt.NDArray[np.float64]:
        """(n, knobs × bins) summed damage; idx has shape (n, layers, knobs)."""
        n = len(idx)
        if self.damage is None:
            d = (idx > 0).astype(np.float64)
        else:
            layer = np.arange(self.n_layers)[None, :, None]
            knob = np.arange(len(KNOBS))[None, None, :]
            d = self.damage[layer, knob, idx]
        out = np.zeros((n, len(KNOBS), _BINS))
        for b in range(_BINS):
            out[:, :, b] = d[:, self.bins == b, :].sum(axis=1)
        return out.reshape(n, -1)

    def _predict_drop(self, feats: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        score = feats @ self.beta
        if self.iso is not None:
            return np.asarray(self.iso.predict(score), dtype=np.float64)
        return np.clip(score, 0.0, 1.0)

    def _refit(self) -> None:
        if len(self.obs_drop) < 3:
            return
        x = self._features(np.stack(self.obs_idx))
        y = np.asarray(self.obs_drop)
        scale = np.maximum(x.std(axis=0), 1e-9)
        lam = 1e-2 * len(y)
        a = np.vstack([x / scale, np.sqrt(lam) * np.eye(x.shape[1])])
        b = np.concatenate([y, np.zeros(x.shape[1])])
        coef, _ = nnls(a, b)
        self.beta = coef / scale
        score = x @ self.beta
        self.iso = IsotonicRegression(y_min=0.0, out_of_bounds="clip").fit(score, y)
        resid = y - self.iso.predict(score)
        self.sigma = float(max(0.01, np.sqrt(np.mean(resid**2))))

    # ---- candidates ----------------------------------------------------------------------
    def _tie(self, idx: IntArray) -> IntArray:
        k = KNOBS.index("keep")
        for member, head in self.ties:
            idx[:, member, k] = idx[:, head, k]
        return idx

    def _moves(self, base: IntArray, n: int, mean_changes: float) -> IntArray:
        out = np.repeat(base.reshape(1, -1), n, axis=0)
        if len(self.free) == 0:
            return out.reshape(n, self.n_layers, len(KNOBS))
        changes = np.minimum(self.rng.geometric(1.0 / mean_changes, size=n), len(self.free))
        opts = self.n_opts.ravel()
        for row in range(n):
            pos = self.rng.choice(self.free, size=changes[row], replace=False)
            out[row, pos] = self.rng.integers(0, opts[pos])
        return out.reshape(n, self.n_layers, len(KNOBS))

    def _pool(self) -> IntArray:
        n = self.pool_size
        identity = np.zeros((self.n_layers, len(KNOBS)), dtype=np.int64)
        parts = [self._moves(identity, n * 2 // 5, mean_changes=3.0)]
        front = [self.obs_idx[i] for i in self._front_members()]
        if front:
            per = max(1, (n * 2 // 5) // len(front))
            parts += [self._moves(f, per, mean_changes=2.0) for f in front]
        per = max(1, (n // 10) // len(self.uniform))
        parts += [self.uniform, *(self._moves(u, per, mean_changes=2.0) for u in self.uniform)]
        rand = self.rng.integers(0, self.n_opts[None, :, :], size=(n // 10, self.n_layers, len(KNOBS)))
        parts.append(rand)
        pool = self._tie(np.concatenate(parts))
        flat = pool.reshape(len(pool), -1)
        _, first = np.unique(flat, axis=0, return_index=True)
        keep = [i for i in sorted(first) if flat[i].tobytes() not in self.seen]
        return pool[keep]

    def _front_members(self) -> list[int]:
        feasible = [i for i, p in enumerate(self.obs_points) if p is not None]
        if not feasible:
            return []
        pts = np.array([self.obs_points[i] for i in feasible], dtype=np.float64)
        mask = front_mask(pts)
        return [feasible[i] for i in np.flatnonzero(mask)]

    # ---- Strategy ------------------------------------------------------------------------
    def ask(self, n: int) -> list[Plan]:
        problem = self.problem
        pool = self._pool()
        if len(pool) == 0:
            return []
        flat = pool.reshape(len(pool), -1)
        latency = problem.screen_latency_ms(flat)
        ok = np.ones(len(pool), dtype=bool)
        # Probability that the plan also meets each ceiling on the device, under the predictor's
        # uncertainty (a learned predictor's interval; 15% for a prior): it scales a candidate's
        # hypervolume gain, so plans just under a ceiling are tried after safer ones.
        p_ok = np.ones(len(pool))
        for t, budget in enumerate(problem.latency_budgets_ms()):
            if budget is not None:
                ok &= latency[:, t] <= budget
                sigma = np.maximum(problem.latency_sigma(t) * latency[:, t], 1e-12)
                p_ok *= ndtr((budget - latency[:, t]) / sigma)
        if not ok.any():  # nothing meets the ceilings: aim at the cheapest, the exact check decides
            ok = latency.min(axis=1) <= np.min(latency.min(axis=1)) * 1.05
        pool, flat, latency, p_ok = pool[ok], flat[ok], latency[ok], p_ok[ok]
        drop = self._predict_drop(self._features(pool))
        bonus = self.sigma * (1.0 if len(self.obs_drop) < 10 else 0.5)
        quality = np.clip(1.0 - drop + bonus, 0.0, None)
        floor = problem.spec.quality_floor
        if floor is not None and problem.reference_quality:
            good = quality >= floor / problem.reference_quality
            if good.any():
                pool, flat, latency, quality = pool[good], flat[good], latency[good], quality[good]
        ref_lat = np.array([c["latency_ms"] for c in problem.reference_costs])
        screen = np.column_stack([-quality, latency / ref_lat[None, :]])
        order = np.flatnonzero(front_mask(screen))
        if len(order) < self.shortlist:  # widen with the best-quality rest
            rest = np.setdiff1d(np.arange(len(pool)), order)
            rest = rest[np.argsort(-quality[rest])][: self.shortlist - len(order)]
            order = np.concatenate([order, rest])
        order = order[: self.shortlist]
        candidates: list[tuple[Plan, list[float], bytes, float]] = []
        for i in order:
            plan = problem.space.decode(flat[i])
            costs = problem.costs(plan)
            if problem.violations(None, costs):
                continue
            objectives = problem.objectives(float(quality[i]) * (problem.reference_quality or 1.0), costs)
            candidates.append((plan, objectives, flat[i].tobytes(), float(p_ok[i])))
        chosen: list[Plan] = []
        ref = problem.reference_point()
        points = [list(p) for p in self.obs_points if p is not None]
        while candidates and len(chosen) < n:
            base = hypervolume(points, ref) if points else 0.0
            gains = [(hypervolume([*points, c[1]], ref) - base) * c[3] for c in candidates]
            best = int(np.argmax(gains))
            if gains[best] <= 0.0:
                best = int(self.rng.integers(len(candidates)))
            plan, objectives, key, _ = candidates.pop(best)
            chosen.append(plan)
            points.append(objectives)
            self.seen.add(key)
        return chosen

    def tell(self, observations: Sequence[Observation]) -> None:
        for obs in observations:
            try:
                idx = self.problem.space.encode(obs.plan).reshape(self.n_layers, len(KNOBS))
            except ValueError:
                continue
            self.seen.add(idx.reshape(-1).tobytes())
            if obs.objectives is None or obs.quality is None:
                continue
            q_ref = self.problem.reference_quality or 1.0
            self.obs_idx.append(idx)
            self.obs_drop.append(1.0 - obs.quality / q_ref)
            self.obs_points.append(tuple(obs.objectives) if obs.feasible else None)
        self._refit()
