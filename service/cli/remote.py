"""The service's commands: ``serve`` and ``token create|list|revoke`` run where the service runs; the
others (``submit``, ``status``, ``front``, ``cancel``, ``schedule ...``) talk to its REST API
(``HWSEARCH_URL``, default http://127.0.0.1:8000, with ``HWSEARCH_TOKEN`` for changes), never
to the database.

The top-level commands are registered on the app by ``service.cli``; ``token_app`` and
``schedule_app`` are the sub-groups it mounts under ``token`` and ``schedule``. A bad
environment variable raises SettingsError (an InputError), which the app turns into exit 2.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from ._common import (
    AbitsOpt,
    BudgetEvalOpt,
    ConcurrencyOpt,
    ConstraintOpt,
    DataOpt,
    EvalExamplesOpt,
    EvaluatorOpt,
    InputShapeOpt,
    JsonFlag,
    KeepOpt,
    ModelArgsOpt,
    ModelOpt,
    NoCalibrateOpt,
    RankOpt,
    RecoverFrontOpt,
    RecoveryStepsOpt,
    SeedOpt,
    StrategyOpt,
    TargetOpt,
    TokensOpt,
    WbitsOpt,
    WeightsOpt,
    error_text,
    fail,
    job_spec,
    plural,
    print_json,
    progress_bar,
    ratio_cell,
    recovery_fields,
    source_fields,
)

__all__ = ["Api", "cancel", "export", "front", "schedule_app", "serve", "status", "submit", "token_app"]

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = ("succeeded", "exhausted", "failed", "cancelled")


class Api:
    """A small client of /api/v1; errors exit 2 with the service's message."""

    def __init__(self) -> None:
        import httpx

        self.base = (os.environ.get("HWSEARCH_URL") or DEFAULT_URL).rstrip("/")
        token = os.environ.get("HWSEARCH_TOKEN")
        self.has_token = bool(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.client.request(method, f"/api/v1{path}", **kw)
        except httpx.HTTPError as exc:
            self.unreachable(exc)
        return self.answer(r)

    def unreachable(self, exc: Exception) -> NoReturn:
        fail(f"HWSEARCH_URL={self.base}: the service does not answer ({exc}); start it with `hwsearch serve`")

    def answer(self, r: Any) -> Any:
        """The JSON (or text) of a response; an error status exits 2 with the service's message."""
        if r.status_code == 401:
            if self.has_token:
                fail(
                    f"the service rejected this token (401): HWSEARCH_TOKEN is not a valid token of "
                    f"{self.base} (unknown, revoked or expired); create one with `hwsearch token create` "
                    "where the service runs"
                )
            fail("the service needs a token: set HWSEARCH_TOKEN (create one with `hwsearch token create`)")
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = r.text
            detail = body.get("detail", body) if isinstance(body, dict) else body
            if isinstance(detail, list):  # FastAPI's validation errors: where, then what
                detail = "; ".join(
                    f"{'.'.join(map(str, e.get('loc', ())))}: {error_text(str(e.get('msg', e)))}"
                    if isinstance(e, dict)
                    else str(e)
                    for e in detail
                )
            fail(f"{r.status_code}: {detail}")
        if r.status_code == 204:
            return None
        return r.json() if "json" in r.headers.get("content-type", "") else r.text


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8000,
    demo: Annotated[
        bool, typer.Option(help="On an empty database, queue a demo search and print an API token.")
    ] = False,
) -> None:
    """Run the service: REST API, dispatcher (jobs on Ray) and scheduler."""
    import uvicorn

    from ..app import create_app
    from ..settings import Settings

    settings = Settings.from_env()
    if demo:
        from ..db import make_engine, migrate
        from ..store import Store

        engine = make_engine(settings.database_url)
        migrate(engine)
        store = Store(engine)
        if not store.has_tokens():
            typer.echo(f"API token (shown once): {store.create_token('demo')}")
        engine.dispose()
    typer.echo(f"hwsearch on http://{host}:{port} (database {settings.database_url})")
    uvicorn.run(create_app(settings, demo=demo), host=host, port=port, log_level="info")


token_app = typer.Typer(
    help="API tokens (stored hashed; shown once).", no_args_is_help=True, rich_markup_mode=None
)


def _local_store() -> Any:
    """The service's database, opened directly (token commands run where the service runs)."""
    from ..db import make_engine, migrate
    from ..settings import Settings
    from ..store import Store

    engine = make_engine(Settings.from_env().database_url)
    migrate(engine)
    return Store(engine)


@token_app.command("create")
def token_create(
    owner: Annotated[
        str | None,
        typer.Option(help="Who the token acts for; its jobs and schedules are theirs (default: --name)."),
    ] = None,
    scopes: Annotated[
        str | None,
        typer.Option(help="read, write, admin, comma-separated (default: read,write; the first token: all)."),
    ] = None,
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d, 12h, 2w (default: none).")] = None,
    name: Annotated[
        str | None, typer.Option(help="What the token is for (default: the owner, else cli).")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Create an API token in the service's database (run where the service runs); the token
    is printed once (only its hash is stored)."""
    from ..auth import parse_expiry, parse_scopes

    store = _local_store()
    token = store.create_token(
        name or owner or "cli",
        owner=owner,
        scopes=None if scopes is None else parse_scopes(scopes),
        expires_in=None if expires is None else parse_expiry(expires),
    )
    if json_output:
        row = store.list_tokens()[-1]
        print_json(
            {**row, "token": token, **{k: str(row[k]) for k in ("created_at", "expires_at") if row[k]}}
        )
        return
    typer.echo(token)


@token_app.command("list")
def token_list(json_output: JsonFlag = False) -> None:
    """The tokens of the service's database (never their secrets): id, owner, scopes, expiry."""
    rows = _local_store().list_tokens()
    if json_output:
        print_json([{k: (str(v) if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in rows])
        return
    if not rows:
        typer.echo("no tokens yet; create one with `hwsearch token create`")
        return
    typer.echo(f"{'id':>4}  {'owner':<16} {'scopes':<17} {'name':<16} {'expires (UTC)':<17} state")
    for r in rows:
        expires = r["expires_at"].strftime("%Y-%m-%d %H:%M") if r["expires_at"] else "never"
        state = "active" if r["active"] else ("revoked" if r["revoked_at"] else "expired")
        scope_list = ",".join(r["scopes"])
        typer.echo(
            f"{r['id']:>4}  {r['owner']:<16} {scope_list:<17} {r['name'][:16]:<16} {expires:<17} {state}"
        )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (`hwsearch token list`).")],
) -> None:
    """Revoke a token: it stops working at once (it stays listed as revoked)."""
    from ..store import NotFound

    try:
        _local_store().revoke_token(token_id)
    except NotFound:
        fail(f"no token {token_id}: `hwsearch token list` shows the ids")
    typer.echo(f"token {token_id} revoked")


def submit(
    spec_file: Annotated[Path | None, typer.Argument(help="A JobSpec JSON file (or use the flags).")] = None,
    model: ModelOpt = None,
    target: TargetOpt = None,
    strategy: StrategyOpt = None,
    budget: BudgetEvalOpt = None,
    seed: SeedOpt = None,
    constraint: ConstraintOpt = None,
    rank: RankOpt = None,
    keep: KeepOpt = None,
    wbits: WbitsOpt = None,
    abits: AbitsOpt = None,
    tokens: TokensOpt = None,
    concurrency: ConcurrencyOpt = None,
    model_args: ModelArgsOpt = None,
    weights: WeightsOpt = None,
    input_shape: InputShapeOpt = None,
    data: DataOpt = None,
    evaluator: EvaluatorOpt = None,
    eval_examples: EvalExamplesOpt = None,
    no_calibrate: NoCalibrateOpt = False,
    recover_front: RecoverFrontOpt = None,
    recovery_steps: RecoveryStepsOpt = None,
    detach: Annotated[bool, typer.Option(help="Print the job id and return at once.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Submit a search to the service; prints the job id, then follows it unless --detach.

    --weights and a --data folder are read by the service's workers, under the folders it
    allows (HWSEARCH_FILE_ROOTS); upload data with `hwsearch dataset add` instead."""
    sources = source_fields(
        model_args=model_args,
        weights=weights,
        input_shape=input_shape,
        data=data,
        evaluator=evaluator,
        eval_examples=eval_examples,
    )
    spec = job_spec(
        spec_file,
        model,
        target,
        strategy,
        budget,
        seed,
        constraint,
        {"rank": rank, "keep": keep, "wbits": wbits, "abits": abits, "tokens": tokens},
        concurrency,
        sources=sources,
        recovery=recovery_fields(no_calibrate, recover_front, recovery_steps),
    )
    api = Api()
    job = api.call("POST", "/jobs", json=spec.model_dump(mode="json"))
    typer.echo(job["id"])
    if detach:
        return
    done = 0
    with progress_bar(job["budget"] or 0) as bar:
        while job["status"] not in FINISHED:
            time.sleep(1.0)
            job = api.call("GET", f"/jobs/{job['id']}")
            bar.update(max(0, job["evaluations"] - done))
            done = max(done, job["evaluations"])
    _show_job(job, json_output)
    if job["status"] == "failed":
        raise typer.Exit(1)


def _show_job(job: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(job)
        return
    hv = job["hypervolume"]
    typer.echo(
        f"{job['id']}  {job['status']:<9}  {job['model']} on {', '.join(job['targets'])}  "
        f"{job['strategy']}  {job['evaluations']}/{job['budget']} evaluations"
        + (f"  hypervolume {hv:.4f}" if hv is not None else "")
        + (f"  error: {job['error']}" if job.get("error") else "")
    )


def status(
    job_id: Annotated[str | None, typer.Argument(help="A job id; without one, the latest jobs.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Show a job, or list the latest jobs."""
    api = Api()
    if job_id:
        _show_job(api.call("GET", f"/jobs/{job_id}"), json_output)
        return
    page = api.call("GET", "/jobs", params={"limit": 20})
    if json_output:
        print_json(page)
        return
    if not page["items"]:
        # An empty list printed nothing at all; /healthz says what the service is busy with
        # (a "demo" field while ``serve --demo`` profiles this CPU, when the service reports it).
        try:
            doing = api.client.get("/healthz").json().get("demo")
        except Exception:  # an older service or no /healthz: the plain message is still true
            doing = None
        typer.echo("no jobs yet" + (f"; {doing}" if doing else ""))
        return
    for job in page["items"]:
        _show_job(job, False)


def front(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV instead of a table.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """The job's Pareto front (derived from its trials)."""
    api = Api()
    if csv_output:
        typer.echo(api.call("GET", f"/jobs/{job_id}/front", params={"format": "csv"}), nl=False)
        return
    doc = api.call("GET", f"/jobs/{job_id}/front")
    if json_output:
        print_json(doc)
        return
    hv = doc["hypervolume"]
    typer.echo(
        f"{plural(len(doc['front']), 'plan')} on the front; hypervolume "
        + ("-" if hv is None else f"{hv:.4f}")
    )
    targets: list[str] = doc.get("targets") or []
    reference = doc.get("reference")
    if reference is not None:
        lat = "  ".join(f"{reference['costs'][n]['latency_ms']:.4f} ms@{n} (1.00×)" for n in targets)
        wbytes = reference["costs"][targets[0]].get("weight_bytes") if targets else None
        size = "" if wbytes is None else f"  {wbytes:,} B (size 1.00×)"
        typer.echo(f"ref {0:>3}  quality {reference['quality']:.4f}  {lat}{size}  uncompressed reference")
    else:
        typer.echo("(no reference yet: trial 0, the uncompressed model, has not finished)")
    for t in doc["front"]:
        if t["number"] == 0 and reference is not None:
            continue  # shown above
        lat = "  ".join(
            f"{t['costs'][n]['latency_ms']:.4f} ms@{n} ({ratio_cell(t.get(f'speedup@{n}'))})" for n in targets
        )
        recovered = t.get("recovered") or {}
        after = (
            f"  recovered {recovered['quality']:.4f} ({recovered.get('steps')} steps)"
            if recovered.get("quality") is not None
            else ""
        )
        size = ratio_cell(t.get("size_ratio"))
        typer.echo(f"{t['number']:>7}  quality {t['quality']:.4f}  {lat}  size {size}{after}")
    if doc.get("recovered_trials"):
        numbers = ", ".join(str(t["number"]) for t in doc.get("front_recovered") or [])
        typer.echo(f"on recovered quality the front is trials {numbers}")


def export(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    trial: Annotated[int, typer.Argument(help="A trial number (see `hwsearch front JOB`).", min=0)],
    format: Annotated[
        str,
        typer.Option("--format", help="onnx (ONNX Runtime), safetensors (the weights) or zip (all)."),
    ] = "onnx",
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write it (default JOB-trial-N.FORMAT here).")
    ] = None,
) -> None:
    """Download a trial's compressed model from the service: ONNX (checked against torch when it
    was built; int8 layers as QDQ), the safetensors weights, or the whole zip with its README."""
    if format not in ("onnx", "safetensors", "zip"):
        fail(f"--format {format!r}: choose one of onnx, safetensors, zip")
    import httpx

    target = out if out is not None else Path(f"{job_id}-trial-{trial}.{format}")
    api = Api()
    partial = target.with_name(f".{target.name}.part")
    try:
        # Building a model the first time runs on the service's workers: minutes, not seconds.
        with api.client.stream(
            "GET", f"/api/v1/jobs/{job_id}/trials/{trial}/model", params={"format": format}, timeout=700
        ) as r:
            if r.status_code >= 400:
                r.read()
                api.answer(r)
            target.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        api.unreachable(exc)
    partial.replace(target)  # whole or nothing at --out
    typer.echo(f"{target} ({target.stat().st_size:,} bytes)")


def cancel(job_id: Annotated[str, typer.Argument(help="A job id.")]) -> None:
    """Cancel a job (a running one stops within seconds; finished trials are kept)."""
    job = Api().call("POST", f"/jobs/{job_id}/cancel")
    typer.echo(f"{job['id']}: {job['status']}" + (" (cancel requested)" if job["cancel_requested"] else ""))


schedule_app = typer.Typer(
    help="Cron schedules that re-run a search (each firing is a job).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@schedule_app.command("add")
def schedule_add(
    cron: Annotated[str, typer.Option(help="Five-field cron expression, e.g. '0 2 * * *'.")],
    name: Annotated[str, typer.Option(help="A name for the schedule.")] = "nightly",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the cron expression.")] = "UTC",
    spec_file: Annotated[Path | None, typer.Argument(help="A JobSpec JSON file (or use the flags).")] = None,
    model: ModelOpt = None,
    target: TargetOpt = None,
    strategy: StrategyOpt = None,
    budget: BudgetEvalOpt = None,
    seed: SeedOpt = None,
    constraint: ConstraintOpt = None,
    rank: RankOpt = None,
    keep: KeepOpt = None,
    wbits: WbitsOpt = None,
    abits: AbitsOpt = None,
    tokens: TokensOpt = None,
    concurrency: ConcurrencyOpt = None,
    model_args: ModelArgsOpt = None,
    weights: WeightsOpt = None,
    input_shape: InputShapeOpt = None,
    data: DataOpt = None,
    evaluator: EvaluatorOpt = None,
    eval_examples: EvalExamplesOpt = None,
    no_calibrate: NoCalibrateOpt = False,
    recover_front: RecoverFrontOpt = None,
    recovery_steps: RecoveryStepsOpt = None,
    drift_target: Annotated[
        str | None,
        typer.Option(
            "--drift-target",
            help="Also re-measure a fixed probe set on this target's device agents at every firing and "
            "flag its predictor when the error grows past its validated error (docs/devices.md).",
        ),
    ] = None,
    drift_models: Annotated[
        str, typer.Option("--drift-models", help="Comma-separated zoo or plugin models of the drift probe.")
    ] = "digits-cnn",
    drift_plans: Annotated[
        int, typer.Option("--drift-plans", help="Plans per model of the drift probe.", min=3)
    ] = 8,
    drift_tolerance: Annotated[
        float,
        typer.Option(
            "--drift-tolerance", help="Flag when the fresh MAPE exceeds this times the validated MAPE."
        ),
    ] = 1.5,
    json_output: JsonFlag = False,
) -> None:
    """Add a schedule; prints its id and next firing."""
    sources = source_fields(
        model_args=model_args,
        weights=weights,
        input_shape=input_shape,
        data=data,
        evaluator=evaluator,
        eval_examples=eval_examples,
    )
    spec = job_spec(
        spec_file,
        model,
        target,
        strategy,
        budget,
        seed,
        constraint,
        {"rank": rank, "keep": keep, "wbits": wbits, "abits": abits, "tokens": tokens},
        concurrency,
        sources=sources,
        recovery=recovery_fields(no_calibrate, recover_front, recovery_steps),
    )
    body: dict[str, Any] = {
        "name": name,
        "cron": cron,
        "timezone": timezone,
        "spec": spec.model_dump(mode="json"),
    }
    if drift_target is not None:
        body["drift"] = {
            "target": drift_target,
            "models": [m.strip() for m in drift_models.split(",") if m.strip()],
            "plans_per_model": drift_plans,
            "tolerance": drift_tolerance,
        }
    sch = Api().call("POST", "/schedules", json=body)
    if json_output:
        print_json(sch)
        return
    typer.echo(f"{sch['id']}  {next_firing_text(sch['next_run_at'], sch['timezone'])}")


@schedule_app.command("list")
def schedule_list(json_output: JsonFlag = False) -> None:
    """Schedules with their next firing and last runs (regressions flagged)."""
    rows = Api().call("GET", "/schedules")
    if json_output:
        print_json(rows)
        return
    if not rows:
        typer.echo("no schedules (add one with `hwsearch schedule add`)")
    for s in rows:
        flag = "  REGRESSION: the last run's front is worse than the previous one" if s["regression"] else ""
        if s.get("drift_flagged"):
            flag += f"  DRIFT: {s['drift']['target']}'s predictor errs more than it was validated to"
        spec = s.get("spec") or {}
        what = f"{spec.get('model', '?')} on {', '.join(spec.get('targets') or ['?'])}"
        when = next_firing_text(s["next_run_at"], s["timezone"]) if s["enabled"] else "disabled"
        typer.echo(
            f"{s['id']}  {s['name']}  {what}  '{s['cron']}' {s['timezone']}  {when}  "
            f"{plural(len(s['last_runs']), 'run')}{flag}"
        )


def next_firing_text(next_run_at: str | None, timezone: str) -> str:
    """``next 2026-12-04 02:00 Europe/Berlin (01:00 UTC)``: the firing in the schedule's own
    zone, then in UTC (the zone's name as the service stores it)."""
    if not next_run_at:
        return "next: -"
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    when = datetime.fromisoformat(next_run_at)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    utc = when.astimezone(UTC)
    try:
        local = when.astimezone(ZoneInfo(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        return f"next {utc:%Y-%m-%d %H:%M} UTC"
    if timezone.upper() in ("UTC", "ETC/UTC"):
        return f"next {utc:%Y-%m-%d %H:%M} UTC"
    same_day = local.date() == utc.date()
    return f"next {local:%Y-%m-%d %H:%M} {timezone} ({utc:{'%H:%M' if same_day else '%Y-%m-%d %H:%M'}} UTC)"


@schedule_app.command("remove")
def schedule_remove(schedule_id: Annotated[str, typer.Argument(help="A schedule id.")]) -> None:
    """Remove a schedule (the jobs it created stay)."""
    Api().call("DELETE", f"/schedules/{schedule_id}")
    typer.echo(f"{schedule_id}: removed")
