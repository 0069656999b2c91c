"""What every command group of the CLI shares: the ``--json`` flag and JSON printing, the one
exit-2 path for bad input (``fail`` and the group that maps ``InputError``), and the search
options with the JobSpec they build (the same spec for ``search``, ``submit`` and
``schedule add``).

Nothing here imports ``workers`` at module level, so ``import service.cli`` stays free of torch.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

__all__ = [
    "DATASET_ID",
    "AbitsOpt",
    "BudgetEvalOpt",
    "ConcurrencyOpt",
    "ConstraintOpt",
    "DataOpt",
    "EvalExamplesOpt",
    "EvaluatorOpt",
    "ExitOnInputError",
    "InputShapeOpt",
    "JsonFlag",
    "KeepOpt",
    "ModelArgsOpt",
    "ModelOpt",
    "NoCalibrateOpt",
    "RankOpt",
    "RecoverFrontOpt",
    "RecoveryStepsOpt",
    "SeedOpt",
    "StrategyOpt",
    "TargetOpt",
    "TokensOpt",
    "WbitsOpt",
    "WeightsOpt",
    "data_field",
    "error_text",
    "fail",
    "job_spec",
    "parse_input_shape",
    "parse_model_args",
    "plural",
    "print_json",
    "progress_bar",
    "quiet_torch",
    "ratio_cell",
    "recovery_fields",
    "rounded",
    "source_fields",
]

#: Exit code of every error the user can fix by changing the command line or the environment.
INPUT_ERROR_EXIT = 2

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit 2 (bad input; never a traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=INPUT_ERROR_EXIT)


class ExitOnInputError(TyperGroup):
    """The top-level command group: any ``search_spaces.InputError`` a command raises (a
    SpaceError, LatencyModelError, SearchError, ZooError or SettingsError, from however deep)
    ends as ``error: <its message>`` and exit 2, here and nowhere else.

    It sits in ``invoke`` rather than in ``main()`` so that tests driving ``app`` through
    Typer's CliRunner see the same exit codes as the installed ``hwsearch`` script; the
    sub-groups (``latency``, ``token``, ``schedule``) run inside this ``invoke`` and are covered.
    """

    def invoke(self, ctx: Any) -> Any:
        # Imported here: ``hwsearch --help`` need not load search_spaces (and numpy).
        from search_spaces import InputError

        try:
            return super().invoke(ctx)
        except InputError as exc:
            fail(str(exc))


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON, keys in their given order."""
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def ratio_cell(value: float | None, suffix: str = "×") -> str:
    """A speed-up or size ratio as printed (``2.68×``), ``-`` when unknown."""
    return "-" if value is None else f"{value:.2f}{suffix}"


def plural(count: int, noun: str) -> str:
    """``1 layer``, ``2 layers`` (nouns that take an s)."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def rounded(value: Any, digits: int = 12) -> Any:
    """A float as printed: rounded off the last bits of float noise (a cosine of
    1.0000000000000002 is 1.0); anything else unchanged."""
    return round(value, digits) if isinstance(value, float) else value


def progress_bar(length: int, label: str = "evaluations") -> Any:
    """A progress bar on stderr, hidden when stderr is not a terminal (a bar in a log or a pipe
    is only its label, a stray line among the output)."""
    return typer.progressbar(length=length, label=label, file=sys.stderr, hidden=not sys.stderr.isatty())


def quiet_torch() -> None:
    """Silence torch.ao / torch-pruning deprecation chatter, which is not for end users."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


# Options shared by `search` (local), `submit` and `schedule add` (to the service): one JobSpec either way.
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Zoo name or plugin name (see `hwsearch models`), or an import path module:factory "
        "(e.g. mypkg.nets:build_resnet)."
    ),
]
# Where the model and the data come from (issue 16): the same flags on inspect, compress, predict,
# search, submit and schedule add; ``source_fields`` turns them into JobSpec fields.
ModelArgsOpt = Annotated[
    str | None,
    typer.Option(
        "--model-args",
        help="Keyword arguments of the model's factory, a JSON object, e.g. '{\"width\": 32}'.",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights", help="A state_dict file (.safetensors, or .pt/.pth from torch.save) loaded strictly."
    ),
]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="Shape of one input, batch first, e.g. 1,3,32,32 (a factory returning an nn.Module).",
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="The data quality is judged on: an ImageFolder directory, a folder of images, a .jsonl "
        "file, or a registered dataset id (`hwsearch dataset list`).",
    ),
]
EvaluatorOpt = Annotated[
    str | None,
    typer.Option(
        "--evaluator", help="An evaluator module:function called with the model, returning a float or a dict."
    ),
]
EvalExamplesOpt = Annotated[
    int | None, typer.Option("--eval-examples", help="Evaluate at most N examples of the data.")
]
TargetOpt = Annotated[
    list[str] | None, typer.Option(help="Target (see `hwsearch targets`); repeat for several.")
]
# Search flags left out are left out of the JobSpec too, so its defaults (workers/search/_spec.py,
# the same for the API) apply; the help repeats them (a test keeps the two equal).
StrategyOpt = Annotated[
    str | None, typer.Option(help="random, uniform, nsga2, tpe or guided.  [default: guided]")
]
BudgetEvalOpt = Annotated[
    int | None,
    typer.Option(help="Quality evaluations (trial 0, the uncompressed model, counts).  [default: 50]"),
]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed.  [default: 0]")]
ConstraintOpt = Annotated[
    list[str] | None,
    typer.Option(help="Hard constraint, e.g. latency_ms<=5, dsp@zcu102<=2000, quality>=0.9; repeatable."),
]
RankOpt = Annotated[
    str | None,
    typer.Option(
        help="Rank fractions offered, e.g. 0.25,0.5. Without any space flag: rank 0.25,0.5,0.75, "
        "keep 0.5,0.75, wbits 4,8."
    ),
]
KeepOpt = Annotated[str | None, typer.Option(help="Channel keep ratios offered, e.g. 0.5,0.75.")]
WbitsOpt = Annotated[str | None, typer.Option(help="Weight bit widths offered, e.g. 4,8.")]
AbitsOpt = Annotated[str | None, typer.Option(help="Activation bit widths offered, e.g. 8.")]
TokensOpt = Annotated[str | None, typer.Option(help="Token keep rates offered, e.g. 0.5,0.7.")]
ConcurrencyOpt = Annotated[int | None, typer.Option(help="Ray evaluator actors.  [default: 2]", min=1)]
# Quality that survives compression (issue 17): ``recovery_fields`` turns these into JobSpec.recovery.
NoCalibrateOpt = Annotated[
    bool,
    typer.Option(
        "--no-calibrate",
        help="Judge plans straight after compression, without calibrating them on the calibration "
        "data (calibration is on by default).",
    ),
]
RecoverFrontOpt = Annotated[
    int | None,
    typer.Option(
        "--recover-front",
        help="After the search, fine-tune the K front plans that add most to the front by "
        "distillation and judge them again (the recovery stage; off by default).",
    ),
]
RecoveryStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--recovery-steps",
        help="Optimiser steps per recovered plan (with --recover-front).  [default: 200]",
    ),
]


def recovery_fields(
    no_calibrate: bool, recover_front: int | None, recovery_steps: int | None
) -> dict[str, Any]:
    """The JobSpec field of ``--no-calibrate``, ``--recover-front K`` and ``--recovery-steps N``:
    ``{}`` when all are left at their defaults (the JobSpec's own defaults apply: calibration on,
    no recovery stage), else ``{"recovery": {"calibrate": False?, "finetune": {"plans": K,
    "steps": N?}}}`` with only what was given. The JobSpec checks the numbers (naming
    ``recovery.finetune.plans`` / ``.steps``); ``--recovery-steps`` without ``--recover-front``
    exits 2 here, naming both flags."""
    if recovery_steps is not None and recover_front is None:
        fail(
            f"--recovery-steps {recovery_steps} needs --recover-front K: the steps are those of each "
            "recovered front plan; give --recover-front K (e.g. --recover-front 3), or drop "
            "--recovery-steps"
        )
    recovery: dict[str, Any] = {}
    if no_calibrate:
        recovery["calibrate"] = False
    if recover_front is not None:
        finetune: dict[str, Any] = {"plans": recover_front}
        if recovery_steps is not None:
            finetune["steps"] = recovery_steps
        recovery["finetune"] = finetune
    return {"recovery": recovery} if recovery else {}


def _floats(text: str | None, flag: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{flag}: {text!r} is not a comma-separated list of numbers, e.g. {flag} 0.25,0.5")


#: A registered dataset's id (the pattern of ``DataSpec.dataset`` in workers/search/_spec.py).
DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def parse_model_args(text: str) -> dict[str, Any]:
    """``--model-args``: a JSON object of keyword arguments; anything else exits 2."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(
            f"--model-args: {text!r} is not valid JSON ({exc.msg} at character {exc.pos}); give a JSON "
            """object of keyword arguments, e.g. --model-args '{"width": 32}'"""
        )
    if not isinstance(value, dict):
        fail(
            f"--model-args: {text!r} is a JSON {type(value).__name__}, not an object; give keyword "
            """arguments by name, e.g. --model-args '{"width": 32}'"""
        )
    return value


def parse_input_shape(text: str) -> list[int]:
    """``--input-shape 1,3,32,32``: positive integers, batch first; anything else exits 2 (the
    JobSpec then checks the batch and the sizes, naming ``input_shape``)."""
    parts = [part.strip() for part in text.replace("x", ",").split(",")]
    if not all(part.isascii() and part.isdigit() and int(part) >= 1 for part in parts):
        fail(
            f"--input-shape: {text!r} is not a list of positive integers; give the shape of one input, "
            "batch first, e.g. --input-shape 1,3,32,32"
        )
    return [int(part) for part in parts]


def data_field(value: str) -> dict[str, str]:
    """``--data``: an existing path (made absolute) or a registered dataset's id; else exit 2."""
    path = Path(value).expanduser()
    if value and path.exists():
        return {"path": str(path.absolute())}
    if DATASET_ID.fullmatch(value):
        return {"dataset": value}
    fail(
        f"--data: {value!r} is neither an existing file or folder here nor a dataset id; give an "
        "ImageFolder directory, a folder of images or a .jsonl file, or the id of a registered dataset "
        "(`hwsearch dataset add` registers one, `hwsearch dataset list` shows them)"
    )


def source_fields(
    *,
    model_args: str | None = None,
    weights: str | None = None,
    input_shape: str | None = None,
    data: str | None = None,
    evaluator: str | None = None,
    eval_examples: int | None = None,
) -> dict[str, Any]:
    """The JobSpec fields of the model and data flags given (those left out stay out, so the
    JobSpec's defaults apply). Paths are made absolute: the weights file and a data folder are
    read where the model is built (this machine, or the service's workers after ``submit``)."""
    fields: dict[str, Any] = {}
    if model_args is not None:
        fields["model_args"] = parse_model_args(model_args)
    if weights is not None:
        fields["weights"] = str(Path(weights).expanduser().absolute()) if weights.strip() else weights
    if input_shape is not None:
        fields["input_shape"] = parse_input_shape(input_shape)
    if data is not None:
        fields["data"] = data_field(data)
    if evaluator is not None:
        fields["evaluator"] = evaluator
    if eval_examples is not None:
        fields["eval_examples"] = eval_examples
    return fields


def error_text(message: str) -> str:
    """A pydantic error message without the "Value error, " / "Assertion failed, " prefix it
    puts before the messages our validators raise."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _validation_message(exc: Any) -> str:
    parts = []
    for err in exc.errors():
        # targets[0], space.wbits[1]: the loc written as the field is reached in the JSON.
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "spec"
        parts.append(f"{where}: {error_text(err['msg'])} (got {err.get('input')!r})")
    return "; ".join(parts)


def job_spec(
    spec_file: Path | None,
    model: str | None,
    target: list[str] | None,
    strategy: str | None,
    budget: int | None,
    seed: int | None,
    constraint: list[str] | None,
    space_flags: dict[str, str | None],
    concurrency: int | None,
    known_targets: Collection[str] | None = None,
    sources: Mapping[str, Any] | None = None,
    recovery: Mapping[str, Any] | None = None,
) -> Any:
    """The JobSpec of a spec file or of the search flags; bad input exits 2 naming every field
    wrong at once. Flags not given are left out, so the JobSpec's defaults apply (the API's).
    ``known_targets``, when given, are the only valid target names (a local catalogue).
    ``sources`` are the fields of the model and data flags (``source_fields``); with a spec
    file they are not allowed (the file says where its model and data come from).
    ``recovery`` is ``recovery_fields(...)``: with a spec file too, what its flags give
    replaces those keys of the file's ``recovery`` (``calibrate``, ``finetune``)."""
    from pydantic import ValidationError

    from workers.search import JobSpec

    context = None if known_targets is None else {"targets": frozenset(known_targets)}
    try:
        if spec_file is not None:
            if sources:
                flags = ", ".join("--" + key.replace("_", "-") for key in sources)
                fail(f"{flags}: a JobSpec file names its model and data itself; give these in the file")
            try:
                data = json.loads(spec_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                fail(f"--spec: {spec_file}: a readable JobSpec JSON file is required ({exc})")
            if recovery and isinstance(data, dict):
                given = data.get("recovery")
                data["recovery"] = {**(given if isinstance(given, dict) else {}), **recovery["recovery"]}
            return JobSpec.model_validate(data, context=context)
        if not model or not target:
            fail("--model and --target are required (or a JobSpec file)")
        space: dict[str, Any] = {
            "rank_fractions": _floats(space_flags["rank"], "--rank"),
            "keep": _floats(space_flags["keep"], "--keep"),
            "wbits": [int(b) for b in _floats(space_flags["wbits"], "--wbits")],
            "abits": [int(b) for b in _floats(space_flags["abits"], "--abits")],
            "token_keep": _floats(space_flags["tokens"], "--tokens"),
        }
        data = {"model": model, "targets": target, "constraints": constraint or []}
        given = {
            "space": space if any(space.values()) else None,
            "strategy": strategy,
            "budget": None if budget is None else {"evaluations": budget},
            "seed": seed,
            "concurrency": concurrency,
        }
        data.update({key: value for key, value in given.items() if value is not None})
        data.update(sources or {})
        data.update(recovery or {})
        return JobSpec.model_validate(data, context=context)
    except ValidationError as exc:
        fail(_validation_message(exc))
