"""ONNX export of compressed models (issue 19): every zoo model, a plan of each knob, int8 as
QDQ from onnxruntime's static quantisation, and the failures that must leave nothing behind.

Each export is run again here through onnxruntime on inputs of its own (other batch sizes
included), not only trusted from the report ``export_onnx`` returns.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kernels import ExportError, QuantizedLayer, export_onnx, onnx_session
from search_spaces import Choice, Plan, Space
from workers.zoo import list_models, prepare

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def digits() -> Any:
    return prepare("digits-cnn")


def _ops(path: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _initializer_elements(path: Path) -> int:
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def _ort(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = onnx_session(path)
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _uniform(prepared: Any, **knobs: Any) -> Plan:
    """Every layer that offers a knob's value gets it (the smallest rank offered for
    ``rank_fractions``); coupled groups tied."""
    options: dict[str, Any] = {k: (v,) for k, v in knobs.items()}
    space = Space.build(prepared.layers, **options)
    choices = {}
    for name, layer in space.knobs.items():
        values: dict[str, Any] = {}
        for knob, value in knobs.items():
            if knob == "rank_fractions":
                ranks = [r for r in layer.rank if r is not None]
                if ranks:
                    values["rank"] = min(ranks)
            elif value in layer.options(knob):
                values[knob] = value
        if values:
            choices[name] = Choice(**values)
    return space.tie_groups(Plan(choices))


@pytest.mark.parametrize("model_id", list_models())
def test_every_zoo_model_exports_compressed_and_matches_torch(model_id: str, tmp_path: Path) -> None:
    """A random plan of the float knobs the model offers (low rank, channel keep, token keep):
    the graph onnxruntime runs computes what the compressed torch model does."""
    prepared = prepare(model_id)
    space = Space.build(prepared.layers, rank_fractions=(0.5,), keep=(0.75,), token_keep=(0.5,))
    plan = space.tie_groups(space.sample(np.random.default_rng(1)))
    compressed = prepared.apply(plan)
    report = export_onnx(compressed, prepared.example_input, tmp_path / "m.onnx")
    assert report.max_abs_error <= report.tolerance and report.int8_layers == ()
    x = prepared.example_input
    with torch.no_grad():
        want = compressed(x)
    want = want if isinstance(want, torch.Tensor) else want[0]
    got = _ort(tmp_path / "m.onnx", x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=report.tolerance, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # nothing staged is left behind


def test_low_rank_exports_as_two_smaller_dense_ops(digits: Any, tmp_path: Path) -> None:
    whole = export_onnx(digits.model, digits.example_input, tmp_path / "full.onnx")
    plan = _uniform(digits, rank_fractions=0.25)
    report = export_onnx(digits.apply(plan), digits.example_input, tmp_path / "rank.onnx")
    assert report.max_abs_error <= report.tolerance and whole.max_abs_error <= whole.tolerance
    gemms = [o for o in _ops(tmp_path / "rank.onnx") if o in ("Conv", "Gemm", "MatMul")]
    factorised = sum(1 for c in plan.choices.values() if c.rank is not None)
    assert (
        factorised > 0
        and len(gemms)
        == len([o for o in _ops(tmp_path / "full.onnx") if o in ("Conv", "Gemm", "MatMul")]) + factorised
    )
    assert _initializer_elements(tmp_path / "rank.onnx") < _initializer_elements(tmp_path / "full.onnx")


def test_channel_pruning_exports_smaller_weights_and_a_dynamic_batch(digits: Any, tmp_path: Path) -> None:
    plan = _uniform(digits, keep=0.5)
    compressed = digits.apply(plan)
    report = export_onnx(compressed, digits.example_input, tmp_path / "keep.onnx")
    full = export_onnx(digits.model, digits.example_input, tmp_path / "full.onnx")
    assert report.dynamic_batch
    assert _initializer_elements(tmp_path / "keep.onnx") < 0.6 * _initializer_elements(tmp_path / "full.onnx")
    assert full.bytes > report.bytes
    batch = torch.cat([digits.example_input] * 5) + 0.1 * torch.randn(5, *digits.example_input.shape[1:])
    with torch.no_grad():
        want = compressed(batch)
    assert torch.allclose(_ort(tmp_path / "keep.onnx", batch), want, atol=report.tolerance, rtol=0)


@pytest.mark.parametrize("wbits", [8, 4])
def test_quantised_layers_become_int8_qdq_from_static_quantisation(
    digits: Any, tmp_path: Path, wbits: int
) -> None:
    """W8A8 / W4A8 plans, calibrated: their layers are int8 QDQ nodes onnxruntime quantised on the
    calibration inputs, and the int8 graph agrees with the simulated torch model."""
    plan = _uniform(digits, wbits=wbits, abits=8)
    compressed = digits.apply(plan, calibrate=True)
    quantised = [n for n, m in compressed.named_modules() if isinstance(m, QuantizedLayer)]
    batches = digits.calibration.batches
    report = export_onnx(compressed, digits.example_input, tmp_path / "q.onnx", calibration=batches)
    assert set(report.int8_layers) == set(quantised) and report.int8_nodes == len(quantised)
    ops = _ops(tmp_path / "q.onnx")
    assert ops.count("QuantizeLinear") >= len(quantised) and "DequantizeLinear" in ops
    assert report.int8_agreement is not None and report.int8_agreement >= 0.9
    assert report.n_check_inputs >= 200  # the calibration images, checked one batch at a time
    if wbits < 8:
        assert any("runs at W8A8" in note for note in report.notes)
    # int8 weights: the file is far smaller than the float one.
    float_export = export_onnx(compressed, digits.example_input, tmp_path / "f.onnx")
    assert report.bytes < 0.5 * float_export.bytes
    assert float_export.int8_layers == () and any("no calibration inputs" in n for n in float_export.notes)


def test_token_pruning_is_a_top_k_in_the_graph(tmp_path: Path) -> None:
    prepared = prepare("digits-vit")
    plan = _uniform(prepared, token_keep=0.5)
    assert any(c.token_keep < 1 for c in plan.choices.values())
    compressed = prepared.apply(plan)
    report = export_onnx(compressed, prepared.example_input, tmp_path / "t.onnx")
    assert "TopK" in _ops(tmp_path / "t.onnx") and report.max_abs_error <= report.tolerance
    # Not specialised to the example: other images select other tokens, and still match.
    x = torch.rand(3, *prepared.example_input.shape[1:])
    with torch.no_grad():
        want = compressed(x)
    assert torch.allclose(_ort(tmp_path / "t.onnx", x), want, atol=report.tolerance, rtol=0)


def test_a_model_onnx_cannot_express_fails_and_leaves_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    module = tmp_path / "hw_unexportable.py"
    module.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(8, 4)

                def forward(self, x):
                    # A Bessel function: torch computes it, ONNX has no operator for it.
                    return torch.special.bessel_j0(self.fc(x))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    net = __import__("hw_unexportable").Net().eval()
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="bessel_j0"):
        export_onnx(net, torch.randn(1, 8), out / "m.onnx")
    assert list(out.iterdir()) == []
    sys.modules.pop("hw_unexportable", None)


def test_torch_int8_models_are_refused_with_the_way_out(digits: Any, tmp_path: Path) -> None:
    plan = Plan({"fc1": Choice(wbits=8)})
    int8 = digits.apply(plan, execution="int8")
    with pytest.raises(ExportError, match="execution='simulate'"):
        export_onnx(int8, digits.example_input, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
