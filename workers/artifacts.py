"""Compressed models as downloadable artifacts: a zip of the weights, the plan and a README.

The weights are a safetensors file (no pickle: nothing runs when it is loaded). Loading needs
hwsearch and the model's source (zoo, plugin or the user's own factory): rebuild the model,
apply the plan, load the weights (the README shows how); ``source.json`` records the source
and the sha256 of the weights file the model was built with.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

README = """# {model_id}: compressed by hwsearch (job {job_id}, trial {number})

Model source: {source}.

Files: `plan.json` (the per-layer plan), `model.safetensors` (the weights of the compressed
model, as `kernels.apply(..., execution="simulate")` builds it: fake-quantized layers keep float
weights plus their bit widths in the plan), `model.onnx` (the same model for ONNX Runtime: low
rank and pruning as smaller dense ops, token pruning as top-k in the graph, layers at <= 8 bits
as int8 QDQ nodes from onnxruntime's static quantisation on the job's calibration inputs),
`onnx.json` (how the ONNX file was checked against torch: the float graph's maximum error and
the int8 graph's agreement; or why the model could not be exported), `trial.json` (quality and
predicted costs),
`source.json` (where the model came from: zoo, plugin or import path, its arguments and the
sha256 of the weights file it was built with), `spec.json` (the job's spec).

The weights are those of the model as judged: {weights_are}.

Load it with hwsearch installed{where}:

```python
import json
from safetensors.torch import load_file
from search_spaces import Plan
from workers.search import JobSpec
from workers.search._entry import job_entry
from workers.zoo import prepare

plan = Plan.from_json(open("plan.json").read())
entry = job_entry(JobSpec.model_validate(json.load(open("spec.json"))))
# The structure of the calibrated model (folded BatchNorms, static activation ranges) is rebuilt
# by calibrating again{calibration_needs}; the weights below then replace what calibration chose.
model = prepare(entry).apply(plan, calibrate={calibrate})
model.load_state_dict(load_file("model.safetensors"))
model.eval()
```

Quality when built: {quality_metric} = {quality} ({how}).

The ONNX file needs only onnxruntime:

```python
import numpy as np, onnxruntime as ort

session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
output = session.run(None, {{"input": inputs}})[0]  # inputs: a numpy batch, as the model takes
```
{onnx_line}
"""

#: The files a trial's zip holds that ``GET .../model?format=`` hands out alone.
MEMBERS = {"onnx": "model.onnx", "safetensors": "model.safetensors"}


def export_compressed(
    model: str | dict[str, Any],
    trial: dict[str, Any],
    path: str | Path,
    job_id: str = "",
    data_dir: str | Path | None = None,
) -> Path:
    """Build the compressed model of ``trial`` as it was judged and write its zip to ``path``
    (atomically): calibrated on the job's calibration data unless the job turned calibration
    off, and, for a recovered trial, with its recovered weights (``trial["recovered"]["weights"]``,
    relative to ``data_dir``, default ``latency_models.data_dir()``).

    ``model`` is the job's spec (a JobSpec dict: its model source, arguments, weights, input
    shape and data) or a zoo model id."""
    import torch
    from safetensors.torch import save as save_tensors

    from search_spaces import Plan
    from workers.search import JobSpec
    from workers.search._entry import job_entry
    from workers.zoo import model_source, prepare

    torch.set_num_threads(1)
    spec: dict[str, Any] = {"model": model} if isinstance(model, str) else dict(model)
    root = Path(data_dir) if data_dir is not None else _default_data_dir()
    job = JobSpec.model_validate({"targets": ["host-cpu"], **spec})
    entry = job_entry(job, data_dir=root)
    source = model_source(getattr(entry, "entry", entry))
    model_id = spec["model"]
    plan = Plan.from_dict(trial["plan"])
    prepared = prepare(entry)
    calibrate = job.recovery.calibrate
    compressed = prepared.apply(plan, calibrate=calibrate)
    calibrated = calibrate and prepared.calibration is not None
    how = (trial.get("calibration") or {}).get("how") or ("calibrated" if calibrated else "uncalibrated")
    weights_are = f"{how}"
    recovered = trial.get("recovered") or {}
    if recovered.get("weights"):
        weights_file = root / str(recovered["weights"])
        compressed.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
        how = recovered.get("how") or f"recovered: {recovered.get('steps')} steps"
        weights_are = how
    shown_quality = recovered.get("quality") if recovered.get("weights") else trial.get("quality")
    onnx_bytes, onnx_report = _onnx_of(compressed, prepared, calibrate)
    state = {k: v.detach().contiguous().clone() for k, v in compressed.state_dict().items()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.safetensors", save_tensors(state))
        z.writestr("plan.json", json.dumps(plan.to_dict(), indent=2))
        z.writestr("trial.json", json.dumps(trial, indent=2, default=str))
        z.writestr("source.json", json.dumps(source.to_dict(), indent=2))
        z.writestr("spec.json", json.dumps(job.model_dump(mode="json"), indent=2))
        if onnx_bytes is not None:
            z.writestr("model.onnx", onnx_bytes)
        z.writestr("onnx.json", json.dumps(onnx_report, indent=2))
        z.writestr(
            "README.md",
            README.format(
                model_id=model_id,
                job_id=job_id,
                number=trial.get("number"),
                quality_metric=trial.get("quality_metric"),
                quality=shown_quality,
                how=how,
                weights_are=weights_are,
                calibrate=calibrate,
                calibration_needs=(
                    " (on the job's data: it must be where spec.json says)" if job.data is not None else ""
                ),
                source=source.describe(),
                where=_where(source.kind, source.package),
                onnx_line=_onnx_line(onnx_report),
            ),
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out)
    return out


def _onnx_of(compressed: Any, prepared: Any, calibrate: bool) -> tuple[bytes | None, dict[str, Any]]:
    """The compressed model as ONNX bytes with its check report, or (None, the reason) when it
    cannot be exported: the zip is still built, and says why."""
    import tempfile

    from kernels import ExportError, export_onnx

    batches = prepared.calibration.batches if calibrate and prepared.calibration is not None else None
    with tempfile.TemporaryDirectory(prefix="hwsearch-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            report = export_onnx(compressed, prepared.example_input, path, calibration=batches)
        except ExportError as exc:
            return None, {"error": str(exc)}
        except Exception as exc:
            return None, {"error": f"{type(exc).__name__}: {exc}"[:1000]}
        data = report.to_dict()
        data.pop("path")
        return path.read_bytes(), data


def _onnx_line(report: dict[str, Any]) -> str:
    if "error" in report:
        return f"\nThis model could not be exported to ONNX: {report['error']}\n"
    line = f"\nChecked at export: float graph within {report['max_abs_error']:.2g} of torch"
    if report.get("int8_agreement") is not None:
        line += (
            f"; int8 graph against the simulated model: top-1 agreement {report['int8_agreement']:.3f}, "
            f"cosine {report['int8_cosine']:.4f}"
        )
    return line + " (onnx.json).\n"


def _default_data_dir() -> Path:
    from latency_models import data_dir

    return data_dir()


def _where(kind: str, package: str | None) -> str:
    if kind == "plugin":
        return f" and the plugin package `{package}` installed"
    if kind == "import":
        return " and the model's own module importable (on PYTHONPATH), with the weights file beside"
    return ""
