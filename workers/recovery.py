"""Quality that survives compression: calibrated judging of a plan, and the recovery stage.

This module imports torch: import it where models are built (Ray evaluators, the CLI), never in
the API process.

- ``judge_plan(prepared, plan, calibrate=True)``: the one way a plan is scored. The compressed
  copy is calibrated on the entry's calibration set (``Prepared.calibration``: a job's
  calibration split, the zoo's held-out photos or sentences, or inputs synthesised from
  BatchNorm statistics) before it is evaluated, and the result says how (``calibration``).
- ``recover_plan(prepared, plan, recipe, ...)``: fine-tunes the calibrated model by knowledge
  distillation from the uncompressed model on the calibration inputs (augmented; labels too with
  ``loss="kd+ce"``), ``recipe.steps`` optimiser steps, checkpointed atomically every few steps so
  that a killed task resumes where it stopped, then scores it on the evaluation data.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from search_spaces import InputError, Plan

if TYPE_CHECKING:
    from workers.zoo import Prepared, Quality

__all__ = [
    "Judged",
    "Recovered",
    "RecoveryCancelled",
    "RecoveryRecipe",
    "calibration_record",
    "judge_plan",
    "recover_plan",
    "recovery_dir",
]

#: Metrics whose model outputs are class logits (distilled by KL divergence); any other output
#: (an embedding, a regression) is distilled by cosine distance plus mean squared error.
LOGIT_METRICS = frozenset({"top1_accuracy", "top1_agreement"})
#: Below this many calibration inputs nothing is held out to pick the best checkpoint.
MIN_HOLDOUT_INPUTS = 10
#: Distillation temperature (Hinton et al., 2015); KL is scaled by T² so gradients keep their size.
KD_TEMPERATURE = 2.0


@dataclass
class Judged:
    """A plan's compressed model, its quality and how it was calibrated."""

    model: nn.Module
    quality: Quality
    calibration: dict[str, Any]


def calibration_record(prepared: Prepared, report: Any | None, calibrate: bool) -> dict[str, Any]:
    """``Trial.calibration``: how the scored model was obtained (DESIGN.md, honesty of numbers)."""
    data = prepared.calibration if calibrate else None
    if data is None or report is None:
        why = "calibration off (recovery.calibrate=false)" if not calibrate else "no calibration data"
        return {"how": "uncalibrated", "why": why}
    return {
        "how": f"calibrated on {data.description}",
        "n_inputs": data.n_inputs,
        "synthetic": data.synthetic,
        "seconds": round(float(report.seconds), 4),
        "steps": list(report.steps),
        "notes": list(report.notes),
    }


def judge_plan(prepared: Prepared, plan: Plan, *, calibrate: bool = True) -> Judged:
    """Compress (calibrated when ``calibrate`` and there is calibration data) and evaluate."""
    from kernels import CalibrationReport

    report = CalibrationReport()
    model = prepared.apply(plan, calibrate=calibrate, report=report)
    calibrated = (
        calibrate
        and prepared.calibration is not None
        and any(not c.is_identity for c in plan.choices.values())
    )
    quality = prepared.entry.evaluate(model)
    return Judged(model, quality, calibration_record(prepared, report if calibrated else None, calibrate))


# ------------------------------------------------------------------------------------ recovery
@dataclass(frozen=True)
class RecoveryRecipe:
    """How a plan is fine-tuned: ``steps`` optimiser steps of ``batch`` inputs at ``lr`` (Adam,
    cosine decay), ``loss`` ``"kd"`` or ``"kd+ce"``, checkpointed every ``checkpoint_every``."""

    steps: int = 200
    lr: float = 1e-3
    batch: int = 16
    loss: str = "kd"
    seed: int = 0
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        for name, value in (
            ("steps", self.steps),
            ("batch", self.batch),
            ("checkpoint_every", self.checkpoint_every),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"recovery.finetune.{name}", value, "a whole number >= 1, e.g. 200")
        if not 0 < self.lr <= 1:
            raise InputError("recovery.finetune.lr", self.lr, "a learning rate in (0, 1], e.g. 1e-4")
        if self.loss not in ("kd", "kd+ce"):
            raise InputError("recovery.finetune.loss", self.loss, "use 'kd' or 'kd+ce'")

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "lr": self.lr, "batch": self.batch, "loss": self.loss}


@dataclass
class Recovered:
    """A recovered plan: the fine-tuned model, its quality and the record stored with the trial."""

    model: nn.Module
    quality: Quality
    record: dict[str, Any]


class RecoveryCancelled(Exception):
    """Raised when ``should_stop`` asks a recovery to stop; its last checkpoint is kept."""


def recovery_dir(data_dir: Path, job_id: str, number: int) -> Path:
    """Where a trial's recovery keeps its checkpoint and its recovered weights."""
    return data_dir / "recovery" / job_id / str(number)


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stackable(batches: list[torch.Tensor]) -> bool:
    return all(b.shape[1:] == batches[0].shape[1:] and b.dtype == batches[0].dtype for b in batches)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Label-preserving augmentation of float image batches: random horizontal flips and shifts
    of up to 1/16 of the side. Other inputs (token ids, feature vectors) are used as they are."""
    if not x.is_floating_point() or x.dim() != 4:
        return x
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    limit = max(1, x.shape[-1] // 16)
    dy, dx = (int(v) for v in torch.randint(-limit, limit + 1, (2,), generator=generator))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def _output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, list | tuple):
        return _output(out[0])
    raise InputError("model", type(out).__name__, "recovery needs a model whose output is a tensor")


def _kd_loss(student: torch.Tensor, teacher: torch.Tensor, logits: bool) -> torch.Tensor:
    if logits and student.dim() >= 2:
        t = KD_TEMPERATURE
        return (
            F.kl_div(
                F.log_softmax(student.flatten(0, -2) / t, dim=-1),
                F.log_softmax(teacher.flatten(0, -2) / t, dim=-1),
                log_target=True,
                reduction="batchmean",
            )
            * t
            * t
        )
    s, r = student.flatten(1).float(), teacher.flatten(1).float()
    cosine = 1.0 - F.cosine_similarity(s, r, dim=1).mean()
    return cosine + F.mse_loss(s, r) / r.pow(2).mean().clamp_min(1e-12)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _finalize(model: nn.Module) -> None:
    from kernels import QuantizedLayer

    for m in model.modules():
        if isinstance(m, QuantizedLayer):
            m.requantize()


def recover_plan(
    prepared: Prepared,
    plan: Plan,
    recipe: RecoveryRecipe,
    *,
    checkpoint: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    calibrate: bool = True,
) -> Recovered:
    """Fine-tune ``plan``'s compressed model by distillation and score it again.

    The student starts from the calibrated model (``calibrate``), the teacher is the
    uncompressed model; both see the same augmented calibration inputs. BatchNorm layers stay in
    evaluation mode (their statistics are what calibration set; batches of a few inputs would
    only add noise). With ``checkpoint`` (a directory), the student and optimiser are saved
    atomically every ``recipe.checkpoint_every`` steps and at the end, and a call that finds a
    checkpoint resumes from its step: a killed task loses at most that many steps. The final
    weights go to ``checkpoint/weights.pt``. ``should_stop`` is asked between steps; when it says
    yes the checkpoint is saved and ``RecoveryCancelled`` raised.
    """
    data = prepared.calibration
    if data is None:
        raise InputError(
            "recovery",
            prepared.entry.name,
            "recovery fine-tunes on calibration inputs and this model has none: give data (--data) "
            "or use a model with BatchNorm, whose inputs can be synthesised",
        )
    labels = data.labels
    if recipe.loss == "kd+ce" and labels is None:
        raise InputError(
            "recovery.finetune.loss",
            recipe.loss,
            "kd+ce needs labelled calibration data (an ImageFolder or JSON lines with labels); use 'kd'",
        )
    start = time.perf_counter()
    teacher = prepared.model
    student = prepared.apply(plan, calibrate=calibrate)
    logits = getattr(prepared.entry, "metric", "") in LOGIT_METRICS
    batches = list(data.batches)
    stacked = torch.cat(batches) if _stackable(batches) else None
    # Row offsets of each batch in the concatenation (``CalibrationSet.labels`` follows it).
    offsets = [0]
    for b in batches:
        offsets.append(offsets[-1] + (int(b.shape[0]) if b.dim() > 0 else 1))
    # One input in five (rows of stacked inputs, or whole inputs of different shapes) is held
    # out of the fine-tuning: the distillation loss on them picks the checkpoint that is kept,
    # so that recovery on a few dozen inputs cannot end worse than it started (overfitting).
    n_units = int(stacked.shape[0]) if stacked is not None else len(batches)
    held = list(range(4, n_units, 5)) if n_units >= MIN_HOLDOUT_INPUTS else []
    trained = torch.tensor([i for i in range(n_units) if i not in set(held)])
    with torch.no_grad():
        if stacked is not None:
            held_targets = [_output(teacher(stacked[held]))] if held else []
        else:
            held_targets = [_output(teacher(batches[i])) for i in held]
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)

    def holdout_loss() -> float:
        """KD loss on the held-out inputs, through the quantisation-aware path (as trained)."""
        with torch.enable_grad():  # quantised layers apply their grid on this path only
            if stacked is not None:
                return float(_kd_loss(_output(student(stacked[held])).detach(), held_targets[0], logits))
            losses = [
                float(_kd_loss(_output(student(batches[i])).detach(), t, logits))
                for i, t in zip(held, held_targets, strict=True)
            ]
            return sum(losses) / len(losses)

    optimizer = torch.optim.Adam(params, lr=recipe.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.steps)
    generator = torch.Generator().manual_seed(recipe.seed)
    step = 0
    state_path = checkpoint / "state.pt" if checkpoint is not None else None
    resumed_from = 0
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        step = resumed_from = int(state["step"])
        best = state["best"]
    else:
        best = {"step": 0, "loss": holdout_loss() if held else None, "state": _copy_state(student)}
    start_loss = best["loss"] if resumed_from == 0 else None

    def save() -> None:
        if state_path is not None:
            _atomic_save(
                {
                    "step": step,
                    "student": student.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "best": best,
                },
                state_path,
            )

    teacher_was_training = teacher.training
    teacher.eval()
    student.eval()  # BatchNorm statistics and dropout stay fixed; gradients still flow
    last_loss = float("nan")
    try:
        while step < recipe.steps:
            if should_stop is not None and should_stop():
                save()
                raise RecoveryCancelled(f"recovery stopped at step {step} of {recipe.steps}")
            if stacked is not None:
                index = trained[
                    torch.randint(0, len(trained), (min(recipe.batch, len(trained)),), generator=generator)
                ]
                chunks = [(_augment(stacked[index], generator), index)]
            else:  # inputs of different shapes (sentences): one per forward, gradients summed
                picks = trained[torch.randint(0, len(trained), (recipe.batch,), generator=generator)].tolist()
                chunks = [(batches[i], torch.arange(offsets[i], offsets[i + 1])) for i in picks]
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for x, index in chunks:
                with torch.no_grad():
                    target = _output(teacher(x))
                out = _output(student(x))
                loss = _kd_loss(out, target, logits)
                if recipe.loss == "kd+ce" and labels is not None and index is not None:
                    loss = loss + F.cross_entropy(out, labels[index])
                (loss / len(chunks)).backward()
                total += float(loss.detach()) / len(chunks)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            last_loss = total
            if on_step is not None:
                on_step(step, total)
            if step % recipe.checkpoint_every == 0 or step == recipe.steps:
                if held:
                    loss_now = holdout_loss()
                    if loss_now < best["loss"]:
                        best = {"step": step, "loss": loss_now, "state": _copy_state(student)}
                else:
                    best = {"step": step, "loss": None, "state": None}
                save()
    finally:
        teacher.train(teacher_was_training)
    if best["state"] is not None and best["step"] != step:
        student.load_state_dict(best["state"])
    for p in params:
        p.requires_grad_(False)
    _finalize(student)
    student.eval()
    weights: str | None = None
    if checkpoint is not None:
        _atomic_save(student.state_dict(), checkpoint / "weights.pt")
        weights = str(checkpoint / "weights.pt")
    quality = prepared.entry.evaluate(student)
    detail = {k: float(quality.extra[k]) for k in ("n", "low", "high") if k in quality.extra}
    record = {
        "quality": quality.value,
        "metric": quality.metric,
        "quality_detail": detail or None,
        **recipe.to_dict(),
        "n_calibration": data.n_inputs,
        "calibration": data.description,
        "synthetic": data.synthetic,
        "final_loss": last_loss,
        "n_holdout": len(held),
        "holdout_loss_start": start_loss,
        "holdout_loss_best": best["loss"],
        "best_step": best["step"] if held else step,
        "resumed_from_step": resumed_from,
        "seconds": round(time.perf_counter() - start, 3),
        "weights": weights,
        "how": f"recovered: {recipe.steps} steps of distillation on {data.description}",
    }
    if checkpoint is not None:
        (checkpoint / "result.json").write_text(json.dumps(record, indent=2))
    return Recovered(student, quality, record)
