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
weights plus their bit widths in the plan), `trial.json` (quality and predicted costs),
`source.json` (where the model came from: zoo, plugin or import path, its arguments and the
sha256 of the weights file it was built with).

Load it with hwsearch installed{where}:

```python
from safetensors.torch import load_file
from search_spaces import Plan
from workers.zoo import prepare, resolve_model

plan = Plan.from_json(open("plan.json").read())
entry = resolve_model({resolve_args})
model = prepare(entry).apply(plan)
model.load_state_dict(load_file("model.safetensors"))
model.eval()
```

Quality when built: {quality_metric} = {quality}.
"""


def _resolve_args(spec: dict[str, Any]) -> str:
    """The arguments of ``resolve_model`` that rebuild the job's model, as Python source."""
    args = [repr(spec["model"])]
    if spec.get("model_args"):
        args.append(f"model_args={spec['model_args']!r}")
    if spec.get("weights"):
        args.append("weights=" + repr(str(spec["weights"])))
    if spec.get("input_shape"):
        args.append(f"input_shape={tuple(spec['input_shape'])!r}")
    return ", ".join(args)


def export_compressed(
    model: str | dict[str, Any], trial: dict[str, Any], path: str | Path, job_id: str = ""
) -> Path:
    """Build the compressed model of ``trial`` and write its zip to ``path`` (atomically).

    ``model`` is the job's spec (a JobSpec dict: its model source, arguments, weights and input
    shape) or a zoo model id."""
    import torch
    from safetensors.torch import save as save_tensors

    from search_spaces import Plan
    from workers.zoo import model_source, prepare, resolve_model

    torch.set_num_threads(1)
    spec: dict[str, Any] = {"model": model} if isinstance(model, str) else dict(model)
    entry = resolve_model(
        spec["model"],
        model_args=spec.get("model_args") or None,
        weights=spec.get("weights"),
        input_shape=tuple(spec["input_shape"]) if spec.get("input_shape") else None,
    )
    source = model_source(entry)
    model_id = spec["model"]
    plan = Plan.from_dict(trial["plan"])
    compressed = prepare(entry).apply(plan)
    state = {k: v.detach().contiguous().clone() for k, v in compressed.state_dict().items()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.safetensors", save_tensors(state))
        z.writestr("plan.json", json.dumps(plan.to_dict(), indent=2))
        z.writestr("trial.json", json.dumps(trial, indent=2, default=str))
        z.writestr("source.json", json.dumps(source.to_dict(), indent=2))
        z.writestr(
            "README.md",
            README.format(
                model_id=model_id,
                job_id=job_id,
                number=trial.get("number"),
                quality_metric=trial.get("quality_metric"),
                quality=trial.get("quality"),
                source=source.describe(),
                resolve_args=_resolve_args(spec),
                where=_where(source.kind, source.package),
            ),
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out)
    return out


def _where(kind: str, package: str | None) -> str:
    if kind == "plugin":
        return f" and the plugin package `{package}` installed"
    if kind == "import":
        return " and the model's own module importable (on PYTHONPATH), with the weights file beside"
    return ""
