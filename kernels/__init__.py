"""Everything in hwsearch that touches a torch model.

``trace`` turns a model into LayerSpecs, ``apply`` compresses it by a Plan, ``count_cost``
counts its params, MACs and weight bytes, and ``time_model`` measures it. Importing this
package never initialises CUDA.
"""

from __future__ import annotations

from ._accounting import Cost, count_cost
from ._apply import apply
from ._attention import AttentionBlock, SelfAttention, TokenBlocks, adapt_token_blocks, is_token_block
from ._bench import Timing, time_callable, time_model
from ._kept import kept_layers
from ._lowrank import LowRankConv2d, LowRankLinear, full_rank, low_rank, singular_values
from ._prune import prune_channels
from ._quant import QuantizedLayer, fake_quant_activation, fake_quant_weight, quantize, to_int8_dynamic
from ._tokens import add_token_pruning, prune_tokens
from ._trace import trace

__all__ = [
    "AttentionBlock",
    "Cost",
    "LowRankConv2d",
    "LowRankLinear",
    "QuantizedLayer",
    "SelfAttention",
    "Timing",
    "TokenBlocks",
    "adapt_token_blocks",
    "add_token_pruning",
    "apply",
    "count_cost",
    "fake_quant_activation",
    "fake_quant_weight",
    "full_rank",
    "is_token_block",
    "kept_layers",
    "low_rank",
    "prune_channels",
    "prune_tokens",
    "quantize",
    "singular_values",
    "time_callable",
    "time_model",
    "to_int8_dynamic",
    "trace",
]
