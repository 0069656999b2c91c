"""Per-layer sensitivity probes from the weights alone (no data, no quality evaluations).

For every option of every knob of every layer, a relative damage in [0, 1]:

- rank r: the share of the weight's Frobenius norm outside the top-r singular values of the
  matrix the low-rank operator factorises (exactly the truncation error, see kernels/_lowrank);
- keep k: the share of the squared norm in the output channels with the smallest norms that
  pruning to k removes (the importance the pruner itself ranks by);
- wbits b: the relative error of per-channel symmetric fake-quantisation at b bits, computed;
- abits b: 2^(1-b), the relative step of a b-bit activation grid (no data is used);
- token keep t: 1 - t.

HAWQ and HALOC rank layers by such sensitivities before searching; here they are the
features of the guided strategy's quality surrogate, whose weights are learned from the real
evaluations, so a probe only has to order options within a layer sensibly.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from kernels import fake_quant_weight, singular_values
from search_spaces import KNOBS, LayerKind, Space


def damage_table(model: nn.Module, space: Space) -> npt.NDArray[np.float64]:
    """Array (layers, knobs, max options): damage of option j of knob k on layer i (0 = none)."""
    modules = dict(model.named_modules())
    width = max(
        (len(space.knobs_of(layer.name).options(k)) for layer in space.layers for k in KNOBS), default=1
    )
    table = np.zeros((len(space.layers), len(KNOBS), width))
    with torch.no_grad():
        for i, layer in enumerate(space.layers):
            kn = space.knobs_of(layer.name)
            module = modules.get(layer.name)
            weight = getattr(module, "weight", None)
            w = weight.detach().double() if isinstance(weight, torch.Tensor) else None
            norm2 = float((w**2).sum()) if w is not None else 0.0
            for j, rank in enumerate(kn.options("rank")):
                if rank is None or module is None or norm2 == 0.0:
                    continue
                s2 = singular_values(module).double() ** 2
                table[i, 0, j] = float(torch.sqrt(s2[rank:].sum() / s2.sum()))
            for j, keep in enumerate(kn.options("keep")):
                if keep >= 1.0 or w is None or norm2 == 0.0:
                    continue
                per_channel = (w.reshape(w.shape[0], -1) ** 2).sum(dim=1).sort().values
                n_cut = w.shape[0] - round(keep * w.shape[0])
                table[i, 1, j] = float(per_channel[:n_cut].sum() / norm2)
            for j, bits in enumerate(kn.options("wbits")):
                if bits >= 32 or w is None or norm2 == 0.0:
                    continue
                err = fake_quant_weight(w.float(), bits).double() - w
                table[i, 2, j] = float(np.sqrt(float((err**2).sum()) / norm2))
            for j, bits in enumerate(kn.options("abits")):
                if bits < 32:
                    table[i, 3, j] = 2.0 ** (1 - bits)
            for j, keep in enumerate(kn.options("token_keep")):
                if layer.kind is LayerKind.ATTENTION:
                    table[i, 4, j] = 1.0 - keep
    return table
