"""Prepare a model once: build it, make its example input, name the layers never to compress
and trace its inventory, in one call every caller uses (search, evaluators, profiling, export,
the CLI), so no caller can forget ``ignore_layers`` and compress a layer it must not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._base import CalibrationSet, ZooError, ZooModel
from ._sources import resolve_model

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kernels import CalibrationReport, OnnxExport, TorchScriptExport
    from search_spaces import LayerSpec, Plan

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    """A built model with what compressing it needs: its zoo entry, the example input, the
    layers never to compress (``ignore``) and, traced on first use, its layer inventory."""

    entry: ZooModel
    model: nn.Module
    example_input: torch.Tensor
    ignore: tuple[str, ...]
    #: Whether the inventory records coupled channel groups (Torch-Pruning's dependency graph,
    #: needed for channel pruning; the slowest part of tracing).
    coupling: bool = True

    @functools.cached_property
    def layers(self) -> list[LayerSpec]:
        """The layer inventory (``kernels.trace``), ignored layers listed without knobs."""
        from kernels import trace

        return trace(self.model, self.example_input, ignore=self.ignore, coupling=self.coupling)

    @functools.cached_property
    def calibration(self) -> CalibrationSet | None:
        """What compressed copies are calibrated on: the entry's own calibration set (a job's
        calibration split, the zoo's held-out photos or sentences), else, for a model with
        weights and BatchNorm but no data, inputs synthesised from its BatchNorm statistics;
        None when there is neither (then ``apply(calibrate=True)`` applies uncalibrated)."""
        own = self.entry.calibration_set()
        if own is not None or not getattr(self.entry, "has_weights", True):
            return own
        return synthesized_calibration(self.model, self.example_input)

    def apply(
        self,
        plan: Plan,
        *,
        execution: Literal["simulate", "int8"] = "simulate",
        calibrate: bool = False,
        report: CalibrationReport | None = None,
    ) -> nn.Module:
        """A compressed copy of the model (``kernels.apply``), never touching ignored layers;
        with ``calibrate``, calibrated on ``self.calibration`` when there is one (``report``
        receives what calibration did; it stays empty without calibration data)."""
        from kernels import apply

        batches = self.calibration.batches if calibrate and self.calibration is not None else None
        return apply(
            self.model,
            plan,
            self.example_input,
            execution=execution,
            ignore=self.ignore,
            calibration=batches,
            report=report,
        )

    def export_onnx(self, plan: Plan, path: str | Path, *, calibrate: bool = True) -> OnnxExport:
        """``plan`` applied (calibrated on ``self.calibration`` when ``calibrate`` and there is
        one, as a search judges it) and written as ONNX by ``kernels.export_onnx``, its int8 layers
        quantised by onnxruntime on the same calibration inputs."""
        from kernels import export_onnx

        batches = self.calibration.batches if calibrate and self.calibration is not None else None
        compressed = self.apply(plan, calibrate=batches is not None)
        return export_onnx(compressed, self.example_input, path, calibration=batches)

    def export_for(
        self, runtime: str, plan: Plan | None, path: str | Path, *, calibrate: bool = True
    ) -> OnnxExport | TorchScriptExport:
        """``plan`` (None: the uncompressed model) as the file a device agent running ``runtime``
        times: ONNX (``export_onnx``) for onnxruntime, a TorchScript trace of the model as a CPU
        deployment runs it (``execution="int8"``, ``kernels.export_torchscript``) for torch."""
        from kernels import export_onnx, export_torchscript

        if runtime == "torch":
            batches = self.calibration.batches if calibrate and self.calibration is not None else None
            model = (
                self.model
                if plan is None
                else self.apply(plan, execution="int8", calibrate=batches is not None)
            )
            return export_torchscript(model, self.example_input, path)
        if plan is None:
            return export_onnx(self.model, self.example_input, path)
        return self.export_onnx(plan, path, calibrate=calibrate)


def synthesized_calibration(model: nn.Module, example_input: torch.Tensor) -> CalibrationSet | None:
    """Inputs synthesised from ``model``'s BatchNorm statistics (ZeroQ), or None where that is
    not possible (no BatchNorm, or inputs that are not floating point, such as token ids)."""
    from kernels import can_synthesize, synthesize_inputs

    if not can_synthesize(model, example_input):
        return None
    made = synthesize_inputs(model, example_input)
    return CalibrationSet(
        batches=list(made.batches), n_inputs=made.n_inputs, description=made.description, synthetic=True
    )


def adapt_blocks(entry: ZooModel, net: nn.Module) -> list[str]:
    """Mark the transformer blocks the entry declares (``token_blocks``: a ``kernels.TokenBlocks``
    or its dict), so a user's own transformer offers the token keep knob; returns their names."""
    declared = getattr(entry, "token_blocks", None)
    if declared is None:
        return []
    from kernels import TokenBlocks, adapt_token_blocks

    try:
        return adapt_token_blocks(net, TokenBlocks.from_value(declared))
    except ValueError as exc:
        raise ZooError("model", entry.model_id, f"its TOKEN_BLOCKS adapter: {exc}") from None


def prepare(model: str | ZooModel, *, coupling: bool = True, **kwargs: Any) -> Prepared:
    """Build ``model`` (a zoo id such as ``"mobilenet-v2"`` or ``"nasbench201:<arch>"``, a plugin
    name or an import path, resolved by ``resolve_model``; or a ZooModel instance) and return it
    prepared; ``kwargs`` are the model's arguments.

    Raises ``ZooError`` (an ``InputError``) for an unknown model or bad arguments.
    """
    # One path for every model: a zoo id goes through the same resolver as a plugin or an
    # import path (which also records where the model came from).
    entry = resolve_model(model, model_args=kwargs or None) if isinstance(model, str) else model
    net = entry.build()
    adapt_blocks(entry, net)
    return Prepared(
        entry=entry,
        model=net,
        example_input=entry.example_input(),
        ignore=tuple(entry.ignore_layers(net)),
        coupling=coupling,
    )
