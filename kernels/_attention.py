"""Self-attention and the transformer-block protocol that token pruning and tracing rely on."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

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


# ------------------------------------------------------------------ a user's transformer blocks
@dataclass(frozen=True)
class TokenBlocks:
    """Where token pruning finds the blocks of a transformer that is not built on AttentionBlock.

    ``blocks`` is a glob on module names matching every transformer block (``"blocks.*"``; a
    ``*`` matches within one part of the dotted name);
    ``probabilities`` names, relative to a block, the submodule whose *output* is the attention
    probabilities ``[batch, heads, tokens, tokens]`` (in a timm-style block: ``"attn.attn_drop"``,
    the dropout applied to the softmax; with timm's fused attention switched off). The Linear
    layers of the module holding it (``attn``: qkv, proj) carry the residual stream and are never
    channel-pruned. ``cls_token`` says whether token 0 is a classification token (never pruned).
    A block must map [batch, tokens, dim] to [batch, tokens, dim] and run that submodule once.
    """

    blocks: str
    probabilities: str
    cls_token: bool = True

    @classmethod
    def from_value(cls, value: Any) -> TokenBlocks:
        """From a TokenBlocks or a dict with its fields (a model module's ``TOKEN_BLOCKS``)."""
        if isinstance(value, TokenBlocks):
            return value
        if not isinstance(value, dict) or not {"blocks", "probabilities"} <= set(value):
            raise ValueError(
                f"TOKEN_BLOCKS must be a dict with 'blocks' (a glob on module names, e.g. 'blocks.*') "
                f"and 'probabilities' (e.g. 'attn.attn_drop'), but got {value!r}"
            )
        unknown = sorted(set(value) - {"blocks", "probabilities", "cls_token"})
        if unknown:
            raise ValueError(
                f"TOKEN_BLOCKS has unknown keys {unknown}; known: blocks, probabilities, cls_token"
            )
        return cls(str(value["blocks"]), str(value["probabilities"]), bool(value.get("cls_token", True)))


_ADAPTER_ATTR = "_hwsearch_token_blocks"


def adapt_token_blocks(model: nn.Module, adapter: TokenBlocks) -> list[str]:
    """Mark the blocks of ``model`` that ``adapter`` names, so tracing lists them as attention
    layers and plans may set their token keep rate; returns their names. Raises ValueError
    naming what is missing when no module matches or a block lacks the probabilities module."""
    modules = dict(model.named_modules())
    # A '*' matches within one part of a dotted name: "blocks.*" names the blocks, not their children.
    depth = adapter.blocks.count(".")
    names = [n for n in modules if n and n.count(".") == depth and fnmatch.fnmatchcase(n, adapter.blocks)]
    if not names:
        raise ValueError(f"no module of the model matches blocks={adapter.blocks!r}")
    for name in names:
        if f"{name}.{adapter.probabilities}" not in modules:
            raise ValueError(
                f"block {name!r} has no submodule {adapter.probabilities!r} (probabilities); name the "
                "module whose output is the attention probabilities, relative to the block"
            )
    for name in names:
        setattr(modules[name], _ADAPTER_ATTR, adapter)
    return names


def token_adapter(module: nn.Module) -> TokenBlocks | None:
    """The adapter a block was marked with by ``adapt_token_blocks`` (None for other modules)."""
    adapter = getattr(module, _ADAPTER_ATTR, None)
    return adapter if isinstance(adapter, TokenBlocks) else None


def is_token_block(module: nn.Module) -> bool:
    """An AttentionBlock, or a user's block marked by ``adapt_token_blocks``."""
    return isinstance(module, AttentionBlock) or token_adapter(module) is not None


def attention_linears(block: nn.Module) -> list[nn.Module]:
    """The Linear layers of a block's attention (never channel-pruned: residual stream)."""
    if isinstance(block, AttentionBlock):
        attn = block.attn
        return [attn.q, attn.k, attn.v, attn.proj]
    adapter = token_adapter(block)
    if adapter is None:
        return []
    parent = adapter.probabilities.rpartition(".")[0]
    holder = block.get_submodule(parent) if parent else block
    return [m for m in holder.modules() if isinstance(m, nn.Linear)]


def probabilities_module(block: nn.Module) -> nn.Module | None:
    """The submodule whose output is a marked block's attention probabilities."""
    adapter = token_adapter(block)
    return None if adapter is None else block.get_submodule(adapter.probabilities)


def has_cls_token(block: nn.Module) -> bool:
    adapter = token_adapter(block)
    return adapter.cls_token if adapter is not None else bool(getattr(block, "has_cls_token", True))
