"""Low-rank operators: truncated SVD of Linear layers and of Conv2d kernels.

Which factorisation is used when:
- ``nn.Linear`` (out × in) → two Linears ``in → r → out`` from the truncated SVD of W.
- ``nn.Conv2d`` 1×1 (groups 1) → two 1×1 convs ``in → r → out``, same SVD on the (out × in) matrix.
- ``nn.Conv2d`` k×k (groups 1) → spatial SVD (Jaderberg et al., 2014; Tai et al., 2016): W
  [out, in, kh, kw] is reshaped to the (in·kh) × (out·kw) matrix whose truncated SVD gives a
  kh×1 conv ``in → r`` followed by a 1×kw conv ``r → out``. One rank knob, exact (optimal in
  Frobenius norm for that reshaping), and both factors are dense convs every backend runs
  fast. Tucker-2 (1×1 → k×k → 1×1) needs two ranks and an iterative HOSVD; it is not used.
- Depthwise and grouped convs are not decomposed (their weights are already tiny per group).

The truncation error in Frobenius norm squared equals the tail singular energy
``sum(s[r:] ** 2)`` (Eckart-Young), which the tests check.
"""

from __future__ import annotations

import torch
from torch import nn


def _svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # float64 for the decomposition: the factors are rounded back to the layer's dtype.
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    return u[:, :rank], s[:rank], vh[:rank]


def singular_values(layer: nn.Module) -> torch.Tensor:
    """Singular values of the matrix the low-rank operator of ``layer`` factorises."""
    return torch.linalg.svdvals(_as_matrix(layer).double())


def _as_matrix(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return layer.weight.detach()
    if isinstance(layer, nn.Conv2d):
        w = layer.weight.detach()
        out_c, in_c, kh, kw = w.shape
        if (kh, kw) == (1, 1):
            return w.reshape(out_c, in_c)
        # M[(i, y), (o, x)] = W[o, i, y, x]
        return w.permute(1, 2, 0, 3).reshape(in_c * kh, out_c * kw)
    raise TypeError(f"low-rank factorisation supports nn.Linear and nn.Conv2d, got {type(layer).__name__}")


def full_rank(layer: nn.Module) -> int:
    m = _as_matrix(layer)
    return min(m.shape)


class LowRankLinear(nn.Sequential):
    """``in → rank → out``: two Linears from the truncated SVD of a Linear's weight."""

    def __init__(self, first: nn.Linear, second: nn.Linear) -> None:
        super().__init__(first, second)
        self.rank = first.out_features

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int) -> LowRankLinear:
        _check_rank(rank, min(layer.in_features, layer.out_features))
        u, s, vh = _svd(layer.weight, rank)
        root = s.sqrt()
        dtype = layer.weight.dtype
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            first.weight.copy_((root[:, None] * vh).to(dtype))
            second.weight.copy_((u * root[None, :]).to(dtype))
            if layer.bias is not None and second.bias is not None:
                second.bias.copy_(layer.bias)
        return cls(first, second)


class LowRankConv2d(nn.Sequential):
    """Two convs from the truncated SVD of a Conv2d: 1×1 → 1×1, or kh×1 → 1×kw (spatial SVD)."""

    def __init__(self, first: nn.Conv2d, second: nn.Conv2d) -> None:
        super().__init__(first, second)
        self.rank = first.out_channels

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, rank: int) -> LowRankConv2d:
        if layer.groups != 1:
            raise ValueError(f"`groups == 1` must hold for a low-rank conv, but got (groups={layer.groups})")
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError("low-rank conv supports zero padding given as integers only")
        w = layer.weight.detach()
        out_c, in_c, kh, kw = w.shape
        _check_rank(rank, full_rank(layer))
        u, s, vh = _svd(_as_matrix(layer), rank)
        root = s.sqrt()
        sh, sw = layer.stride
        ph, pw = layer.padding
        dh, dw = layer.dilation
        bias = layer.bias is not None
        if (kh, kw) == (1, 1):
            # Padding goes on the first factor: its zero border maps to zero, so the second
            # factor adds only the bias there, as the original padded 1×1 conv does.
            first = nn.Conv2d(in_c, rank, 1, stride=(sh, sw), padding=(ph, pw), bias=False)
            second = nn.Conv2d(rank, out_c, 1, bias=bias)
            w1 = (root[:, None] * vh).reshape(rank, in_c, 1, 1)
            w2 = (u * root[None, :]).reshape(out_c, rank, 1, 1)
        else:
            first = nn.Conv2d(
                in_c, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False
            )
            second = nn.Conv2d(
                rank, out_c, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), bias=bias
            )
            # u: (in·kh) × r → first[r, i, y, 0]; vh: r × (out·kw) → second[o, r, 0, x]
            w1 = (u * root[None, :]).T.reshape(rank, in_c, kh, 1)
            w2 = (root[:, None] * vh).reshape(rank, out_c, 1, kw).permute(1, 0, 2, 3)
        with torch.no_grad():
            first.weight.copy_(w1.to(w.dtype))
            second.weight.copy_(w2.to(w.dtype))
            if layer.bias is not None and second.bias is not None:
                second.bias.copy_(layer.bias)
        return cls(first, second)


def low_rank(layer: nn.Module, rank: int) -> nn.Module:
    """The low-rank operator for ``layer`` at ``rank`` (see the module docstring for which one)."""
    if isinstance(layer, nn.Linear):
        return LowRankLinear.from_linear(layer, rank)
    if isinstance(layer, nn.Conv2d):
        return LowRankConv2d.from_conv(layer, rank)
    raise TypeError(f"low-rank factorisation supports nn.Linear and nn.Conv2d, got {type(layer).__name__}")


def _check_rank(rank: int, full: int) -> None:
    if not 1 <= rank <= full:
        raise ValueError(f"`1 <= rank <= full_rank` must hold, but got (rank={rank}, full_rank={full})")
