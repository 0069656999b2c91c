"""Vectorised prediction of many plans at once, from the Space's index encoding.

``BatchPredictor(target, space).latency_ms(encoded)`` costs P plans (rows of
``space.encode(plan)``) with numpy over [P, layers, 2 GEMM slots] arrays: the same GEMMs as
``plan_gemms`` (checked equal by the tests), the same family prior, no Python loop over
plans. This is what a search uses to screen hundreds of thousands of candidates.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from search_spaces import GEMM_KINDS, KNOBS, LayerKind, Space

from ._family import create_family
from ._gemm import Gemms
from ._target import Target

Array = npt.NDArray[np.float64]


def _kept(channels: Array | float, keep: Array) -> Array:
    """search_spaces.kept_channels(channels, keep, 1), elementwise (round half to even, as Python)."""
    c = np.broadcast_to(np.asarray(channels, dtype=np.float64), keep.shape)
    n = np.clip(np.round(c * keep), np.minimum(1.0, c), c)
    return np.where(keep >= 1.0, c, n)


class BatchPredictor:
    """Analytic-prior latency of many plans of one Space on one target."""

    def __init__(self, target: Target, space: Space) -> None:
        self.target = target
        self.space = space
        self.family = create_family(target.family)
        layers = space.layers
        n_layers = len(layers)
        width = max(len(space.knobs_of(layer.name).options(k)) for layer in layers for k in KNOBS)
        # Option tables [knob][layer, option]; rank None is stored as NaN.
        self.tables = {k: np.full((n_layers, width), np.nan) for k in KNOBS}
        for i, layer in enumerate(layers):
            knobs = space.knobs_of(layer.name)
            for k in KNOBS:
                opts = [np.nan if v is None else float(v) for v in knobs.options(k)]
                self.tables[k][i, : len(opts)] = opts
        first_of_group: dict[str, int] = {}
        for i, layer in enumerate(layers):
            if layer.group is not None:
                first_of_group.setdefault(layer.group, i)
        self.out_rep = np.array(
            [first_of_group.get(layer.group, -1) if layer.group else -1 for layer in layers]
        )
        self.in_rep = np.array(
            [first_of_group.get(layer.in_group, -1) if layer.in_group else -1 for layer in layers]
        )
        self.blocks = [i for i, layer in enumerate(layers) if layer.kind is LayerKind.ATTENTION]
        self.block_of = np.array(
            [
                layers.index(next(x for x in layers if x.name == layer.block))
                if layer.block is not None and any(x.name == layer.block for x in layers)
                else -1
                for layer in layers
            ]
        )

    def _values(self, encoded: npt.NDArray[np.integer]) -> dict[str, Array]:
        idx = np.asarray(encoded, dtype=np.int64).reshape(len(encoded), len(self.space.layers), len(KNOBS))
        rows = np.arange(len(self.space.layers))
        return {k: self.tables[k][rows[None, :], idx[:, :, j]] for j, k in enumerate(KNOBS)}

    def gemms(self, encoded: npt.NDArray[np.integer]) -> tuple[Gemms, Array]:
        """The GEMM slots of every plan ([P·L·2] arrays) and their validity mask."""
        v = self._values(encoded)
        layers = self.space.layers
        p, n_layers = v["keep"].shape
        keep_out = np.where(self.out_rep[None, :] >= 0, v["keep"][:, np.maximum(self.out_rep, 0)], 1.0)
        keep_in = np.where(self.in_rep[None, :] >= 0, v["keep"][:, np.maximum(self.in_rep, 0)], 1.0)
        # Tokens entering each attention block, in order.
        tokens_in = np.ones((p, n_layers))
        current: Array | None = None
        for b in self.blocks:
            spec = layers[b]
            n = np.full(p, float(spec.tokens)) if current is None else current
            tokens_in[:, b] = n
            start = 1.0 if spec.cls_token else 0.0
            cand = n - start
            keep = v["token_keep"][:, b]
            kept = np.maximum(1.0, np.round(keep * cand))
            same = (keep >= 1.0) | (cand <= 1) | (kept >= cand)
            current = np.where(same, n, start + kept + 1.0)

        shape = (p, n_layers, 2)
        g, m, nn_, k = np.ones(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape)
        wb, ab = np.full(shape, 32.0), np.full(shape, 32.0)
        inb, outb = np.zeros(shape), np.zeros(shape)
        valid = np.zeros(shape, dtype=bool)
        for i, layer in enumerate(layers):
            if layer.kind is LayerKind.ATTENTION:
                n = tokens_in[:, i]
                d, h = float(layer.out_channels), float(max(1, layer.heads))
                act = n * d * 4.0
                g[:, i, :] = h
                m[:, i, 0], nn_[:, i, 0], k[:, i, 0] = n, n, d / h
                m[:, i, 1], nn_[:, i, 1], k[:, i, 1] = n, d / h, n
                inb[:, i, 0], outb[:, i, 0] = 2 * act, n * n * h * 4.0
                inb[:, i, 1], outb[:, i, 1] = act + n * n * h * 4.0, act
                valid[:, i, :] = True
                continue
            if layer.kind not in GEMM_KINDS:
                continue
            c_out = _kept(float(layer.out_channels), keep_out[:, i])
            c_in = _kept(float(layer.in_channels), keep_in[:, i])
            groups = np.full(p, float(layer.groups))
            if layer.kind is LayerKind.DEPTHWISE_CONV2D:
                c_in, groups = c_out, c_out
            w, a = v["wbits"][:, i], v["abits"][:, i]
            wb[:, i, :], ab[:, i, :] = w[:, None], a[:, None]
            rank = v["rank"][:, i]
            low = ~np.isnan(rank)
            kh, kw = layer.kernel_size
            if layer.kind is LayerKind.LINEAR:
                rows = (
                    tokens_in[:, self.block_of[i]]
                    if self.block_of[i] >= 0
                    else np.full(p, float(layer.tokens))
                )
                r = np.where(low, np.minimum(np.nan_to_num(rank), np.minimum(c_in, c_out)), 0.0)
                in_b, out_b = rows * c_in * a / 8, rows * c_out * 4.0
                m[:, i, :] = rows[:, None]
                nn_[:, i, 0], k[:, i, 0] = np.where(low, r, c_out), c_in
                nn_[:, i, 1], k[:, i, 1] = c_out, r
                inb[:, i, 0], outb[:, i, 0] = in_b, np.where(low, rows * r * 4.0, out_b)
                inb[:, i, 1], outb[:, i, 1] = rows * r * a / 8, out_b
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
                g[:, i, 0] = np.where(low, 1.0, groups)
                m[:, i, 0] = np.where(low, m0, float(oh * ow))
                nn_[:, i, 0] = np.where(low, r, c_out / groups)
                k[:, i, 0] = np.where(low, k0, (c_in / groups) * kh * kw)
                inb[:, i, 0], outb[:, i, 0] = in_b, np.where(low, mid * 4.0, out_b)
                m[:, i, 1], nn_[:, i, 1], k[:, i, 1] = float(oh * ow), c_out, k1
                inb[:, i, 1], outb[:, i, 1] = mid * a / 8, out_b
            valid[:, i, 0] = True
            valid[:, i, 1] = low
        layer_idx = np.broadcast_to(np.arange(n_layers)[None, :, None], shape)
        gemms = Gemms(
            layer=layer_idx.reshape(-1).astype(np.int64),
            groups=g.reshape(-1),
            m=m.reshape(-1),
            n=nn_.reshape(-1),
            k=k.reshape(-1),
            wbits=wb.reshape(-1),
            abits=ab.reshape(-1),
            in_bytes=inb.reshape(-1),
            out_bytes=outb.reshape(-1),
        )
        return gemms, valid.reshape(-1)

    def latency_ms(self, encoded: npt.NDArray[np.integer]) -> Array:
        """Analytic-prior latency (ms) of each encoded plan."""
        gemms, valid = self.gemms(encoded)
        per_gemm = self.family.estimate(self.target, gemms).latency_ms * valid
        total: Array = per_gemm.reshape(len(encoded), -1).sum(axis=1)
        return total
