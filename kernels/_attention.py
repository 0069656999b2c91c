"""Self-attention and the transformer-block protocol that token pruning and tracing rely on."""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v and output projections.

    Separate projections (rather than one fused qkv Linear) let each be decomposed or
    quantized on its own. The matmuls are explicit so the attention probabilities can be
    recorded for token pruning and the MACs counted exactly. ``record = True`` keeps the last
    probabilities in ``last_attention`` with shape [batch, heads, tokens, tokens].
    """

    def __init__(self, dim: int, heads: int, bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"`dim % heads == 0` must hold, but got (dim={dim}, heads={heads})")
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.k = nn.Linear(dim, dim, bias=bias)
        self.v = nn.Linear(dim, dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.record = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if attn_mask is not None:
            scores = scores + attn_mask
        probs = scores.softmax(dim=-1)
        if self.record:
            self.last_attention = probs.detach()
        out = (probs @ v).transpose(1, 2).reshape(b, n, self.dim)
        return self.proj(out)


class AttentionBlock(nn.Module):
    """Base of every transformer block hwsearch can trace and token-prune.

    Contract for subclasses: hold a ``SelfAttention`` as ``self.attn``; ``forward(x)`` maps
    [batch, tokens, dim] to [batch, tokens', dim] and calls ``self.attn`` exactly once;
    ``has_cls_token`` says whether token 0 is a classification token (it is then never
    pruned and its attention row ranks the other tokens; otherwise the mean attention each
    token receives ranks it).
    """

    attn: SelfAttention
    has_cls_token: bool = True
    #: Set by token pruning (kernels.add_token_pruning); 1.0 means untouched.
    token_keep: float = 1.0
