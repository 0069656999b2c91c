"""Compressed models as downloadable artifacts: a zip of the weights, the plan and a README.

The weights are a safetensors file (no pickle: nothing runs when it is loaded). Loading needs
hwsearch: rebuild the zoo model, apply the plan, load the weights (the README shows how).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

README = """# {model_id}: compressed by hwsearch (job {job_id}, trial {number})

Files: `plan.json` (the per-layer plan), `model.safetensors` (the weights of the compressed
model, as `kernels.apply(..., execution="simulate")` builds it: fake-quantized layers keep float
weights plus their bit widths in the plan), `trial.json` (quality and predicted costs).

Load it with hwsearch installed:

```python
from safetensors.torch import load_file
from search_spaces import Plan
from workers.zoo import prepare

plan = Plan.from_json(open("plan.json").read())
model = prepare("{model_id}").apply(plan)
model.load_state_dict(load_file("model.safetensors"))
model.eval()
```

Quality when built: {quality_metric} = {quality}.
"""


def export_compressed(model_id: str, trial: dict[str, Any], path: str | Path, job_id: str = "") -> Path:
    """Build the compressed model of ``trial`` and write its zip to ``path`` (atomically)."""
    import torch
    from safetensors.torch import save as save_tensors

    from search_spaces import Plan
    from workers.zoo import prepare

    torch.set_num_threads(1)
    plan = Plan.from_dict(trial["plan"])
    model = prepare(model_id).apply(plan)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.safetensors", save_tensors(state))
        z.writestr("plan.json", json.dumps(plan.to_dict(), indent=2))
        z.writestr("trial.json", json.dumps(trial, indent=2, default=str))
        z.writestr(
            "README.md",
            README.format(
                model_id=model_id,
                job_id=job_id,
                number=trial.get("number"),
                quality_metric=trial.get("quality_metric"),
                quality=trial.get("quality"),
            ),
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out)
    return out
