"""Vectorised prediction of many plans at once, from the Space's index encoding.

``BatchPredictor(target, space).latency_ms(encoded)`` costs P plans (rows of
``space.encode(plan)``). A layer's latency depends only on a few discrete things: its own
rank and bit options, the keep options of the groups feeding and leaving it, and (in a
transformer block) how many tokens enter. So each layer's latency is tabulated once over
those, with the same GEMMs as ``plan_gemms`` and the same family prior, and a batch of plans
is a handful of table look-ups per layer (the tests check it equals per-plan ``predict``).
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

from search_spaces import GEMM_KINDS, KNOBS, LayerKind, Space

from ._family import create_family
from ._gemm import Gemms, graph_work
from ._target import Target

Array = npt.NDArray[np.float64]
Index = npt.NDArray[np.int64]
_K = {k: j for j, k in enumerate(KNOBS)}


def _kept(channels: float, keep: Array) -> Array:
    """search_spaces.kept_channels(channels, keep, 1), elementwise (round half to even, as Python)."""
    n = np.clip(np.round(channels * keep), min(1.0, channels), channels)
    return np.where(keep >= 1.0, channels, n)


class BatchPredictor:
    """Analytic-prior latency of many plans of one Space on one target."""

    def __init__(self, target: Target, space: Space) -> None:
        self.target = target
        self.space = space
        self.family = create_family(target.family)
        layers = space.layers
        self.options = {k: [list(space.knobs_of(layer.name).options(k)) for layer in layers] for k in KNOBS}
        index = {layer.name: i for i, layer in enumerate(layers)}
        first_of_group: dict[str, int] = {}
        for i, layer in enumerate(layers):
            if layer.group is not None:
                first_of_group.setdefault(layer.group, i)
        self.out_rep = [first_of_group.get(layer.group, -1) if layer.group else -1 for layer in layers]
        self.in_rep = [first_of_group.get(layer.in_group, -1) if layer.in_group else -1 for layer in layers]
        self.blocks = [i for i, layer in enumerate(layers) if layer.kind is LayerKind.ATTENTION]
        self.block_of = [index.get(layer.block, -1) if layer.block else -1 for layer in layers]
        self.max_tokens = max([layers[b].tokens for b in self.blocks], default=1)
        self._tables: list[Array | None] = [self._table(i) for i in range(len(layers))]
        # Pooling and non-GEMM graph work: memory-bound and the same under every plan.
        self._graph_ms = float(self.family.estimate_graph(target, graph_work(layers)).sum())
        # Element strides of each table, so a look-up is one gather from the flat table.
        self._strides = [[st // 8 for st in t.strides] if t is not None else [] for t in self._tables]

    # ---- one layer's GEMM slots, vectorised over any number of settings ----------------------
    def _slots(
        self, i: int, keep_out: Array, keep_in: Array, tokens: Array, rank: Array, w: Array, a: Array
    ) -> tuple[Gemms, npt.NDArray[np.bool_]]:
        """Two GEMM slots per setting (the second unused unless low-rank or attention)."""
        layer = self.space.layers[i]
        x = len(keep_out)
        shape = (x, 2)
        g, m, nn_, k = np.ones(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape)
        wb, ab = np.full(shape, 32.0), np.full(shape, 32.0)
        inb, outb = np.zeros(shape), np.zeros(shape)
        valid = np.zeros(shape, dtype=bool)
        if layer.kind is LayerKind.ATTENTION:
            n = tokens
            d, h = float(layer.out_channels), float(max(1, layer.heads))
            act = n * d * 4.0
            g[:] = h
            m[:, 0], nn_[:, 0], k[:, 0] = n, n, d / h
            m[:, 1], nn_[:, 1], k[:, 1] = n, d / h, n
            inb[:, 0], outb[:, 0] = 2 * act, n * n * h * 4.0
            inb[:, 1], outb[:, 1] = act + n * n * h * 4.0, act
            valid[:] = True
        elif layer.kind in GEMM_KINDS:
            c_out = _kept(float(layer.out_channels), keep_out)
            c_in = _kept(float(layer.in_channels), keep_in)
            groups = np.full(x, float(layer.groups))
            if layer.kind is LayerKind.DEPTHWISE_CONV2D:
                c_in, groups = c_out, c_out
            wb[:], ab[:] = w[:, None], a[:, None]
            low = ~np.isnan(rank)
            kh, kw = layer.kernel_size
            if layer.kind is LayerKind.LINEAR:
                rows = tokens
                r = np.where(low, np.minimum(np.nan_to_num(rank), np.minimum(c_in, c_out)), 0.0)
                in_b, out_b = rows * c_in * a / 8, rows * c_out * 4.0
                m[:] = rows[:, None]
                nn_[:, 0], k[:, 0] = np.where(low, r, c_out), c_in
                nn_[:, 1], k[:, 1] = c_out, r
                inb[:, 0], outb[:, 0] = in_b, np.where(low, rows * r * 4.0, out_b)
                inb[:, 1], outb[:, 1] = rows * r * a / 8, out_b
            else:
                oh, ow = layer.output_hw
                ih, iw = layer.input_hw
                in_b, out_b = c_in * ih * iw * a / 8, c_out * oh * ow * 4.0
                if (kh, kw) == (1, 1):
                    r = np.where(low, np.minimum(np.nan_to_num(rank), np.minimum(c_in, c_out)), 0.0)
                    m0, k0, k1, mid = float(oh * ow), c_in, r, r * oh * ow
                else:
                    r = np.where(low, np.minimum(np.nan_to_num(rank), np.minimum(c_in * kh, c_out * kw)), 0.0)
                    m0, k0, k1, mid = float(oh * iw), c_in * kh, r * kw, r * oh * iw
                # Slot 0: the dense conv, or the first factor; slot 1: the second factor.
                g[:, 0] = np.where(low, 1.0, groups)
                m[:, 0] = np.where(low, m0, float(oh * ow))
                nn_[:, 0] = np.where(low, r, c_out / groups)
                k[:, 0] = np.where(low, k0, (c_in / groups) * kh * kw)
                inb[:, 0], outb[:, 0] = in_b, np.where(low, mid * 4.0, out_b)
                m[:, 1], nn_[:, 1], k[:, 1] = float(oh * ow), c_out, k1
                inb[:, 1], outb[:, 1] = mid * a / 8, out_b
            valid[:, 0] = True
            valid[:, 1] = low
        gemms = Gemms(
            layer=np.full(2 * x, i, dtype=np.int64),
            groups=g.ravel(),
            m=m.ravel(),
            n=nn_.ravel(),
            k=k.ravel(),
            wbits=wb.ravel(),
            abits=ab.ravel(),
            in_bytes=inb.ravel(),
            out_bytes=outb.ravel(),
        )
        return gemms, valid.ravel()

    # ---- tables ---------------------------------------------------------------------------
    def _axes(self, i: int) -> list[list[float]]:
        """The values each table axis of layer ``i`` runs over: rank, wbits, abits, keep out,
        keep in, tokens entering (NaN stands for rank None)."""

        def opts(knob: str, j: int) -> list[float]:
            return [np.nan if v is None else float(v) for v in self.options[knob][j]] if j >= 0 else [1.0]

        layer = self.space.layers[i]
        in_block = self.block_of[i] >= 0 or layer.kind is LayerKind.ATTENTION
        tokens = [float(t) for t in range(self.max_tokens + 1)] if in_block else [float(layer.tokens)]
        return [
            opts("rank", i),
            opts("wbits", i),
            opts("abits", i),
            opts("keep", self.out_rep[i]),
            opts("keep", self.in_rep[i]),
            tokens,
        ]

    def _table(self, i: int) -> Array | None:
        layer = self.space.layers[i]
        if layer.kind not in GEMM_KINDS and layer.kind is not LayerKind.ATTENTION:
            return None
        axes = self._axes(i)
        grid = np.array(list(itertools.product(*axes)), dtype=np.float64)
        rank, w, a, ko, ki, tok = (grid[:, j] for j in range(6))
        gemms, valid = self._slots(i, ko, ki, tok, rank, w, a)
        latency = self.family.estimate(self.target, gemms).latency_ms * valid
        table: Array = latency.reshape(len(grid), 2).sum(axis=1).reshape([len(ax) for ax in axes])
        return table

    def _tokens_in(self, idx: Index) -> dict[int, Index]:
        """Tokens entering each attention block, per plan (integers: table indices)."""
        layers = self.space.layers
        out: dict[int, Index] = {}
        current: Array | None = None
        for b in self.blocks:
            spec = layers[b]
            n = np.full(len(idx), float(spec.tokens)) if current is None else current
            out[b] = n.astype(np.int64)
            keep = np.asarray(self.options["token_keep"][b], dtype=np.float64)[idx[:, b, _K["token_keep"]]]
            start = 1.0 if spec.cls_token else 0.0
            cand = n - start
            kept = np.maximum(1.0, np.round(keep * cand))
            same = (keep >= 1.0) | (cand <= 1) | (kept >= cand)
            current = np.where(same, n, start + kept + 1.0)
        return out

    def latency_ms(self, encoded: npt.NDArray[np.integer]) -> Array:
        """Analytic-prior latency (ms) of each encoded plan."""
        idx = np.asarray(encoded, dtype=np.int64).reshape(len(encoded), len(self.space.layers), len(KNOBS))
        tokens = self._tokens_in(idx)
        total = np.full(len(idx), self._graph_ms)
        zero = np.zeros(len(idx), dtype=np.int64)
        for i, table in enumerate(self._tables):
            if table is None:
                continue
            own = idx[:, i]
            ko = idx[:, self.out_rep[i], _K["keep"]] if self.out_rep[i] >= 0 else zero
            ki = idx[:, self.in_rep[i], _K["keep"]] if self.in_rep[i] >= 0 else zero
            block = i if self.space.layers[i].kind is LayerKind.ATTENTION else self.block_of[i]
            tok = tokens[block] if block >= 0 else zero
            s = self._strides[i]
            flat = (
                own[:, _K["rank"]] * s[0]
                + own[:, _K["wbits"]] * s[1]
                + own[:, _K["abits"]] * s[2]
                + ko * s[3]
                + ki * s[4]
                + tok * s[5]
            )
            total += table.ravel()[flat]
        return total
