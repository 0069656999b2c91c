"""Everything in hwsearch that touches a torch model.

``trace`` turns a model into LayerSpecs, ``apply`` compresses it by a Plan, ``count_cost``
counts its params, MACs and weight bytes, ``time_model`` measures it and ``export_onnx`` writes
it for ONNX Runtime. Importing this
package never initialises CUDA.
"""

from __future__ import annotations

from ._accounting import Cost, count_cost
from ._apply import CalibrationReport, apply
from ._attention import AttentionBlock, SelfAttention, TokenBlocks, adapt_token_blocks, is_token_block
from ._bench import Timing, time_callable, time_model
from ._calibrate import InputStats, input_statistics, recalibrate_batchnorm
from ._kept import kept_layers
from ._lowrank import (
    LowRankConv2d,
    LowRankLinear,
    calibrate_low_rank,
    full_rank,
    low_rank,
    low_rank_calibrated,
    singular_values,
)
from ._onnx import ExportError, OnnxExport, export_onnx, onnx_session, time_onnx
from ._prune import prune_channels
from ._quant import (
    LayerCalibration,
    QuantConfig,
    QuantizedLayer,
    QuantReport,
    fake_quant_activation,
    fake_quant_weight,
    fold_batchnorm,
    quantize,
    quantize_calibrated,
    to_int8_dynamic,
)
from ._synthesize import SynthesizedInputs, batchnorm_statistics_loss, can_synthesize, synthesize_inputs
from ._tokens import add_token_pruning, prune_tokens
from ._torchscript import TorchScriptExport, export_torchscript, load_torchscript, probe_torch_runtime
from ._trace import trace

__all__ = [
    "AttentionBlock",
    "CalibrationReport",
    "Cost",
    "ExportError",
    "InputStats",
    "LayerCalibration",
    "LowRankConv2d",
    "LowRankLinear",
    "OnnxExport",
    "QuantConfig",
    "QuantReport",
    "QuantizedLayer",
    "SelfAttention",
    "SynthesizedInputs",
    "Timing",
    "TokenBlocks",
    "TorchScriptExport",
    "adapt_token_blocks",
    "add_token_pruning",
    "apply",
    "batchnorm_statistics_loss",
    "calibrate_low_rank",
    "can_synthesize",
    "count_cost",
    "export_onnx",
    "export_torchscript",
    "fake_quant_activation",
    "fake_quant_weight",
    "fold_batchnorm",
    "full_rank",
    "input_statistics",
    "is_token_block",
    "kept_layers",
    "load_torchscript",
    "low_rank",
    "low_rank_calibrated",
    "onnx_session",
    "probe_torch_runtime",
    "prune_channels",
    "prune_tokens",
    "quantize",
    "quantize_calibrated",
    "recalibrate_batchnorm",
    "singular_values",
    "synthesize_inputs",
    "time_callable",
    "time_model",
    "time_onnx",
    "to_int8_dynamic",
    "trace",
]
