"""The ``hwsearch`` command line (the console script is ``service.cli:main``).

The package is cut by what a command needs, with imports flowing one way
(``__init__`` → command modules → ``_common``; no command module imports this one):

- ``_common``: ``--json`` and JSON printing, ``fail`` (exit 2), the group that maps every
  ``search_spaces.InputError`` to exit 2, and the search, model and data options with their
  JobSpec builder;
- ``local``: ``models``, ``inspect``, ``compress``, ``targets``, ``predict``, ``search``;
- ``latency``: the ``latency fit | validate | profile-host`` group;
- ``remote``: ``serve``, ``token create``, and the REST clients ``submit``, ``status``,
  ``front``, ``export``, ``cancel`` and ``schedule add | list | remove``;
- ``datasets``: ``dataset add | list | rm``, datasets registered with the service (REST);
- ``agent``: ``agent``, a device that measures what the service leases to it (``service.agent``),
  and ``profile``, which has a target's agents measure plans and fits its predictor (REST).

``inspect``, ``compress``, ``predict``, ``search``, ``submit`` and ``schedule add`` take the same
model and data flags (``--model``, ``--model-args``, ``--weights``, ``--input-shape``, ``--data``,
``--evaluator``, ``--eval-examples``), which become the same JobSpec fields everywhere.

Commands import ``workers`` (torch, Ray) inside their bodies, so ``import service`` stays free
of both. Bad input exits with code 2 and a one-paragraph message, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from . import agent, datasets, latency, local, remote
from ._common import ExitOnInputError, job_spec
from .local import parse_uniform, uniform_plan

__all__ = ["app", "job_spec", "main", "parse_uniform", "uniform_plan"]

app = typer.Typer(
    name="hwsearch",
    help="Hardware-aware search of per-layer ranks, pruning, bit widths and token keep rates.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=ExitOnInputError,
    # Plain help: the rich layout prints a "<bool>" type after every flag (and --help).
    rich_markup_mode=None,
)

# In the order `hwsearch --help` lists them (the groups come after the commands).
_COMMANDS: tuple[Callable[..., None], ...] = (
    local.models,
    local.inspect,
    local.compress,
    local.targets,
    local.predict,
    local.search,
    remote.serve,
    remote.submit,
    remote.status,
    remote.front,
    remote.export,
    remote.cancel,
    agent.agent,
    agent.profile,
)
for _command in _COMMANDS:
    app.command()(_command)
app.add_typer(latency.app, name="latency")
app.add_typer(remote.token_app, name="token")
app.add_typer(remote.schedule_app, name="schedule")
app.add_typer(datasets.app, name="dataset")


def main() -> None:
    """Entry point of the ``hwsearch`` script."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
