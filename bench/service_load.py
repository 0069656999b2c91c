"""The service under load, SQLite and PostgreSQL side by side in one run (issue 5's bench).

Run: ``.venv/bin/python bench/service_load.py [--clients 50] [--requests 20] [--out FILE]``
(default ``bench/results/service.json``) and ``.venv/bin/python bench/service_load.py --markdown
bench/results/service.json`` for the table. (Not ``bench/service.py``: a script of that name,
run from bench/, would shadow the ``service`` package.)

For each database a real ``hwsearch serve`` process (one uvicorn worker, dispatcher off so no
search competes for the CPU) is started on a fresh database, and:

- **submissions**: ``--clients`` concurrent clients each POST ``--requests`` JobSpecs;
- **front reads**: the same clients each GET the front (JSON) of a job holding ``--trials``
  trials, recomputed from the trials on every request;
- **trial ingestion**: ``Store.add_trial`` (what the dispatcher's sink calls) storing
  ``--trials`` trials from one writer, then the same number again from 4 writer threads.

Latency is per request, measured by the client (httpx, asyncio, in this process); p50 / p99
and requests per second over the phase. The clients share the machine's cores with the
server, so these are numbers for this 2-core machine, not a capacity figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

from service.db import make_engine, migrate
from service.store import Store
from workers.search import JobSpec

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SPEC = {
    "model": "digits-cnn",
    "targets": ["xeon-gold-6240", "zcu102"],
    "space": {"rank_fractions": [0.25, 0.5], "keep": [0.5, 0.75], "wbits": [4, 8]},
    "strategy": "guided",
    "budget": {"evaluations": 100},
}


def trial(job_id: str, number: int, rng: np.random.Generator) -> dict[str, Any]:
    q = float(rng.uniform(0.2, 1.0))
    lat = float(rng.uniform(0.02, 0.04))
    layers = {
        f"conv{i}": {"rank": None, "keep": 0.75, "wbits": 8, "abits": 32, "token_keep": 1.0}
        for i in (2, 3, 4)
    }
    return {
        "job_id": job_id,
        "number": number,
        "plan": {"layers": layers},
        "status": "ok",
        "quality": q,
        "quality_metric": "top1_accuracy",
        "costs": {
            t: {
                "latency_ms": lat * (1 + i),
                "provenance": "analytic prior (uncalibrated)",
                "weight_bytes": 1000,
            }
            for i, t in enumerate(SPEC["targets"])
        },
        "feasible": bool(rng.random() < 0.8),
        "violations": [],
        "error": None,
        "eval_s": 0.05,
        "predict_s": 0.001,
        "strategy": "guided",
        "measured": None,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def load(url: str, token: str, clients: int, requests: int, method: str, path: str) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    first_errors: list[str] = []

    async def client() -> None:
        nonlocal errors
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as c:
            for _ in range(requests):
                t0 = time.perf_counter()
                try:
                    r = await (c.post(path, json=SPEC) if method == "POST" else c.get(path))
                except httpx.HTTPError as exc:  # a dropped connection is an error, not a crash
                    latencies.append(time.perf_counter() - t0)
                    errors += 1
                    if len(first_errors) < 3:
                        first_errors.append(repr(exc))
                    continue
                latencies.append(time.perf_counter() - t0)
                if r.status_code >= 400:
                    errors += 1
                    if len(first_errors) < 3:
                        first_errors.append(f"{r.status_code} {r.text[:300]}")

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests_per_s": len(latencies) / wall,
        "first_errors": first_errors,
    }


def ingest(store: Store, job_id: str, n: int, writers: int, first: int) -> float:
    rng = np.random.default_rng(first)
    rows = [trial(job_id, first + i, rng) for i in range(n)]
    chunks = [rows[w::writers] for w in range(writers)]
    start = time.perf_counter()
    threads = [threading.Thread(target=lambda ch=ch: [store.add_trial(t) for t in ch]) for ch in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - start)


def one_backend(name: str, url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    engine = make_engine(url)
    migrate(engine)
    store = Store(engine)
    token = store.create_token("bench")
    out: dict[str, Any] = {"database": name}
    job = store.create_job(JobSpec.model_validate(SPEC).model_dump(mode="json"))
    out["ingest_trials_per_s_1_writer"] = ingest(store, job["id"], args.trials, 1, 0)
    out["ingest_trials_per_s_4_writers"] = ingest(store, job["id"], args.trials, 4, args.trials)
    port = free_port()
    env = {**os.environ, "HWSEARCH_DATA_DIR": str(tmp), "DATABASE_URL": url, "HWSEARCH_DISPATCHER": "false"}
    exe = Path(sys.executable).with_name("hwsearch")
    log = (tmp / f"serve-{name}.log").open("wb")
    server = subprocess.Popen(
        [str(exe), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: the service did not start")
            time.sleep(0.3)
        out["submissions"] = asyncio.run(
            load(base, token, args.clients, args.requests, "POST", "/api/v1/jobs")
        )
        front = f"/api/v1/jobs/{job['id']}/front"
        out["front_reads"] = asyncio.run(load(base, token, args.clients, args.requests, "GET", front))
        out["front_size"] = len(httpx.get(base + front).json()["front"])
        out["trials_in_job"] = 2 * args.trials
    except BaseException:
        print((tmp / f"serve-{name}.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        server.terminate()
        server.wait(30)
        log.close()
        engine.dispose()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_start": os.getloadavg()[0],
        "clients": args.clients,
        "requests_per_client": args.requests,
        "backends": [],
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results["backends"].append(one_backend("sqlite", f"sqlite:///{tmp / 'bench.db'}", args, tmp))
        schema = "bench_" + uuid.uuid4().hex[:8]
        admin = sa.create_engine(PG)
        try:
            with admin.begin() as c:
                c.execute(sa.text(f"CREATE SCHEMA {schema}"))
            url = f"{PG}?options=-csearch_path%3D{schema}"
            results["backends"].append(one_backend("postgresql", url, args, tmp))
        except sa.exc.OperationalError as exc:
            results["postgresql_skipped"] = str(exc.orig)
        finally:
            try:
                with admin.begin() as c:
                    c.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            except sa.exc.OperationalError:
                pass
    results["load_avg_end"] = os.getloadavg()[0]
    return results


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"{res['clients']} concurrent clients × {res['requests_per_client']} requests each; "
        f"run {res['date']}, "
        f"load average {res['load_avg_start']:.1f} → {res['load_avg_end']:.1f}.",
        "",
        "| database | phase | requests | errors | p50 ms | p99 ms | requests/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for b in res["backends"]:
        for phase in ("submissions", "front_reads"):
            p = b[phase]
            lines.append(
                f"| {b['database']} | {phase.replace('_', ' ')} | {p['requests']} | {p['errors']} | "
                f"{p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['requests_per_s']:.0f} |"
            )
    lines += [
        "",
        "| database | trials stored/s, 1 writer | 4 writers | front size (of trials) |",
        "|---|---:|---:|---|",
    ]
    for b in res["backends"]:
        lines.append(
            f"| {b['database']} | {b['ingest_trials_per_s_1_writer']:.0f} | "
            f"{b['ingest_trials_per_s_4_writers']:.0f} | "
            f"{b['front_size']} of {b['trials_in_job']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--trials", type=int, default=1000, help="trials per ingestion phase (two phases)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "service.json"))
    parser.add_argument("--markdown", metavar="JSON")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    res = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()
