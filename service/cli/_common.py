"""What every command group of the CLI shares: the ``--json`` flag and JSON printing, the one
exit-2 path for bad input (``fail`` and the group that maps ``InputError``), and the search
options with the JobSpec they build (the same spec for ``search``, ``submit`` and
``schedule add``).

Nothing here imports ``workers`` at module level, so ``import service.cli`` stays free of torch.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

__all__ = [
    "AbitsOpt",
    "BudgetEvalOpt",
    "ConcurrencyOpt",
    "ConstraintOpt",
    "ExitOnInputError",
    "JsonFlag",
    "KeepOpt",
    "ModelOpt",
    "RankOpt",
    "SeedOpt",
    "StrategyOpt",
    "TargetOpt",
    "TokensOpt",
    "WbitsOpt",
    "fail",
    "job_spec",
    "print_json",
    "quiet_torch",
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


def quiet_torch() -> None:
    """Silence torch.ao / torch-pruning deprecation chatter, which is not for end users."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


# Options shared by `search` (local), `submit` and `schedule add` (to the service): one JobSpec either way.
ModelOpt = Annotated[str | None, typer.Option(help="Zoo model (see `hwsearch models`).")]
TargetOpt = Annotated[
    list[str] | None, typer.Option(help="Target (see `hwsearch targets`); repeat for several.")
]
StrategyOpt = Annotated[str, typer.Option(help="random, uniform, nsga2, tpe or guided.")]
BudgetEvalOpt = Annotated[
    int, typer.Option(help="Quality evaluations (trial 0, the uncompressed model, counts).")
]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
ConstraintOpt = Annotated[
    list[str] | None,
    typer.Option(help="Hard constraint, e.g. latency_ms<=5, dsp@zcu102<=2000, quality>=0.9; repeatable."),
]
RankOpt = Annotated[str | None, typer.Option(help="Rank fractions offered, e.g. 0.25,0.5.")]
KeepOpt = Annotated[str | None, typer.Option(help="Channel keep ratios offered, e.g. 0.5,0.75.")]
WbitsOpt = Annotated[str | None, typer.Option(help="Weight bit widths offered, e.g. 4,8.")]
AbitsOpt = Annotated[str | None, typer.Option(help="Activation bit widths offered, e.g. 8.")]
TokensOpt = Annotated[str | None, typer.Option(help="Token keep rates offered, e.g. 0.5,0.7.")]
ConcurrencyOpt = Annotated[int, typer.Option(help="Ray evaluator actors.", min=1)]


def _floats(text: str | None, flag: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{flag}: {text!r} is not a comma-separated list of numbers, e.g. {flag} 0.25,0.5")


def _validation_message(exc: Any) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def job_spec(
    spec_file: Path | None,
    model: str | None,
    target: list[str] | None,
    strategy: str,
    budget: int,
    seed: int,
    constraint: list[str] | None,
    space_flags: dict[str, str | None],
    concurrency: int,
) -> Any:
    """The JobSpec of a spec file or of the search flags; bad input exits 2 naming the field."""
    from pydantic import ValidationError

    from workers.search import JobSpec

    try:
        if spec_file is not None:
            try:
                data = json.loads(spec_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                fail(f"--spec: {spec_file}: a readable JobSpec JSON file is required ({exc})")
            return JobSpec.model_validate(data)
        if not model or not target:
            fail("--model and --target are required (or a JobSpec file)")
        space: dict[str, Any] = {
            "rank_fractions": _floats(space_flags["rank"], "--rank"),
            "keep": _floats(space_flags["keep"], "--keep"),
            "wbits": [int(b) for b in _floats(space_flags["wbits"], "--wbits")],
            "abits": [int(b) for b in _floats(space_flags["abits"], "--abits")],
            "token_keep": _floats(space_flags["tokens"], "--tokens"),
        }
        if not any(space.values()):
            space = {"rank_fractions": [0.25, 0.5, 0.75], "keep": [0.5, 0.75], "wbits": [4, 8]}
        return JobSpec.model_validate(
            {
                "model": model,
                "targets": target,
                "space": space,
                "strategy": strategy,
                "budget": {"evaluations": budget},
                "seed": seed,
                "constraints": constraint or [],
                "concurrency": concurrency,
            }
        )
    except ValidationError as exc:
        fail(_validation_message(exc))
