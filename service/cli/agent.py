"""``hwsearch agent``: run this machine (or a board) as a measuring device of the service;
``hwsearch profile``: have a target's agents measure a designed set of plans and fit its predictor."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ._common import JsonFlag, fail, print_json, progress_bar

__all__ = ["agent", "profile"]


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
        str,
        typer.Option(
            "--runtime", help="What runs the models: onnxruntime (ONNX files) or torch (TorchScript files)."
        ),
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
    plan's model file (ONNX, or TorchScript for --runtime torch) against the uncompressed one, post
    the result, repeat (docs/devices.md)."""
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


def profile(
    target: Annotated[str, typer.Option("--target", help="The target whose agents measure.")],
    models: Annotated[
        str, typer.Option("--models", help="Comma-separated zoo or plugin models.")
    ] = "digits-cnn,digits-vit,minilm-l6",
    plans: Annotated[
        int, typer.Option("--plans", help="Plans per model (the first is uncompressed).", min=3)
    ] = 12,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampled plans.", min=0)] = 0,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow it to its end; exit 0 only when the new predictor is active."),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Profile a target on its device agents: the models' plans are exported to ONNX and queued,
    the agents measure them, and the target's predictor is fitted from the results."""
    import time

    from .remote import Api

    api = Api()
    names = [m.strip() for m in models.split(",") if m.strip()]
    doc = api.call(
        "POST", f"/targets/{target}/profile", json={"models": names, "plans_per_model": plans, "seed": seed}
    )
    if not wait:
        print_json(doc) if json_output else typer.echo(doc["id"])
        return
    typer.echo(doc["id"], err=True)
    with progress_bar(len(names) * plans, label="tasks measured") as bar:
        shown = 0
        while True:
            doc = api.call("GET", f"/profiles/{doc['id']}")
            done = int(doc.get("tasks", {}).get("done", 0))
            bar.update(done - shown)
            shown = done
            if doc["status"] in ("succeeded", "failed"):
                break
            time.sleep(1.0)
    if json_output:
        print_json(doc)
    report = (doc.get("fit") or {}).get("report") or {}
    if doc["status"] != "succeeded":
        fail(f"profile {doc['id']} failed: {doc.get('error')}")
    if not report.get("activated"):
        fail(
            f"profile {doc['id']}: predictor {report.get('version')} fitted but not activated: "
            f"{report.get('activation_note', 'it did not validate better')}"
        )
    if not json_output:
        devices = len(doc.get("measured_by") or {})
        mape = report.get("mape", float("nan"))
        typer.echo(
            f"{target}: predictor {report['version']} active ({report.get('kind')}, {doc['n_tasks']} tasks "
            f"measured by {devices} device(s); held-out MAPE {mape:.1%})"
        )
