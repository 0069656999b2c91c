"""``hwsearch agent``: run this machine (or a board) as a measuring device of the service."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ._common import fail

__all__ = ["agent"]


def agent(
    target: Annotated[
        str, typer.Option("--target", help="The target this device measures (created if new).")
    ],
    url: Annotated[
        str | None, typer.Option("--url", help="The service (default HWSEARCH_URL or http://127.0.0.1:8000).")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="An API token with write scope (default HWSEARCH_TOKEN).")
    ] = None,
    runtime: Annotated[
        str, typer.Option("--runtime", help="What runs the models: onnxruntime.")
    ] = "onnxruntime",
    threads: Annotated[int, typer.Option("--threads", help="Intra-op threads for every timing.", min=1)] = 1,
    name: Annotated[str | None, typer.Option("--name", help="How the dashboard lists this device.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timing rounds per task.", min=3)] = 15,
    max_tasks: Annotated[
        int | None, typer.Option("--max-tasks", help="Stop after this many tasks.", min=1)
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option("--idle-exit", help="Stop after this many seconds with nothing to do.")
    ] = None,
) -> None:
    """Measure on this device what the service leases to it: register, lease a task, time the
    plan's ONNX model against the uncompressed one, post the result, repeat (docs/devices.md)."""
    from service.agent import Agent, AgentError

    token = token or os.environ.get("HWSEARCH_TOKEN")
    if not token:
        fail(
            "--token (or HWSEARCH_TOKEN) is required: create one with `hwsearch token create` on the service"
        )
    base = url or os.environ.get("HWSEARCH_URL") or "http://127.0.0.1:8000"
    try:
        worker = Agent(
            base,
            token,
            target,
            runtime=runtime,
            threads=threads,
            name=name,
            repeats=repeats,
            log=lambda msg: typer.echo(msg, err=True),
        )
        done = worker.run(max_tasks=max_tasks, idle_exit_s=idle_exit)
    except AgentError as exc:
        fail(str(exc))
    typer.echo(f"{done} tasks measured")
