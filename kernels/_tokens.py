"""Token pruning after a transformer block (EViT / HeatViT style).

After the block runs, the tokens are ranked by the attention they get: from the CLS token
(the mean over heads of its attention row) when the model has one, otherwise the mean
attention each token receives over heads and queries. The top ``round(keep · candidates)``
tokens are kept in their original order; the others are fused into one token, their
attention-weighted average, appended at the end. A CLS token is always kept, first.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import tokens_after_pruning

from ._attention import AttentionBlock, has_cls_token, probabilities_module


def prune_tokens(x: torch.Tensor, attention: torch.Tensor, keep: float, cls_token: bool) -> torch.Tensor:
    """Keep the most attended tokens of ``x`` [B, N, D] given ``attention`` [B, H, N, N]."""
    b, n, d = x.shape
    start = 1 if cls_token else 0
    # int(): a traced model (TorchScript, for the torch device agent) sees the size as a tensor;
    # the token count is fixed by the input's sequence length either way.
    n_out = tokens_after_pruning(int(n), keep, cls_token)
    if n_out == n:
        return x
    kept = n_out - start - 1
    # From the CLS row when there is one, else the mean attention each token receives.
    score = attention[:, :, 0, start:].mean(dim=1) if cls_token else attention.mean(dim=1).mean(dim=1)
    candidates = x[:, start:]
    top = score.topk(kept, dim=1).indices.sort(dim=1).values
    kept_tokens = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, d))
    # A tensor source, not the scalar False: TorchScript has no scatter_ with a bool value.
    none = torch.zeros_like(top, dtype=torch.bool)
    dropped = torch.ones_like(score, dtype=torch.bool).scatter(1, top, none)
    weight = score * dropped
    # Elementwise products and sums (not matmuls) so FLOP counters see only the model's GEMMs.
    fused = (candidates * weight.unsqueeze(-1)).sum(dim=1, keepdim=True)
    fused = fused / weight.sum(dim=1).clamp_min(1e-12).view(b, 1, 1)
    return torch.cat([x[:, :start], kept_tokens, fused], dim=1)


class _Recorder:
    """A forward hook keeping the last output of the module whose output is a marked block's
    attention probabilities (``adapt_token_blocks``)."""

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: object, output: torch.Tensor) -> None:
        self.last = output.detach()


class TokenPruningHook:
    """A forward hook that prunes a transformer block's output tokens; keeps module names intact.

    The block is an AttentionBlock (its ``attn`` records the probabilities) or a user's block
    marked by ``adapt_token_blocks`` (``recorder`` holds the probabilities)."""

    def __init__(self, keep: float, recorder: _Recorder | None = None) -> None:
        self.keep = keep
        self.recorder = recorder

    def __call__(self, module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        if self.recorder is not None:
            attention = self.recorder.last
        elif isinstance(module, AttentionBlock):
            attention = module.attn.last_attention
        else:
            raise TypeError("TokenPruningHook must be registered on a transformer block")
        if attention is None:
            raise RuntimeError("the block's attention recorded nothing: it must run its attention once")
        if attention.dim() != 4 or attention.shape[-1] != output.shape[1]:
            raise RuntimeError(
                f"the attention probabilities have shape {tuple(attention.shape)}, not [batch, heads, "
                f"{output.shape[1]}, {output.shape[1]}] for the block's {output.shape[1]} tokens"
            )
        return prune_tokens(output, attention, self.keep, has_cls_token(module))


def add_token_pruning(block: nn.Module, keep: float) -> None:
    """Make ``block`` (an AttentionBlock or a marked user block) pass on only a ``keep``
    fraction of its tokens (1.0: untouched)."""
    if keep >= 1.0:
        return
    recorder = None
    if isinstance(block, AttentionBlock):
        block.attn.record = True
    else:
        source = probabilities_module(block)
        if source is None:
            raise TypeError(f"{type(block).__name__} is not a transformer block hwsearch can token-prune")
        recorder = _Recorder()
        source.register_forward_hook(recorder)
    setattr(block, "token_keep", keep)  # noqa: B010 (nn.Module's attribute typing refuses a float)
    block.register_forward_hook(TokenPruningHook(keep, recorder))
