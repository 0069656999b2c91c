"""The front and the page view of a running job, from its new trials against from every trial,
side by side in one run, on SQLite and PostgreSQL.

Run: ``.venv/bin/python bench/front_cache.py [--trials 10000] [--rounds 20] [--batch 10]``
(results in ``bench/results/front_cache.json``; ``--markdown FILE`` prints the table).

A job holds ``--trials`` trials; each round writes ``--batch`` more (as a running search does
between two polls of the jobs list) and then, in alternating order, reads the job's front:

- **extended**: ``FrontCache.get`` on a cache that holds the front of the previous round: it
  reads the trials written since (``Store.trials_added``) and takes the front of the cached
  front and those;
- **derived**: ``FrontCache.get`` on an empty cache: it reads every trial and derives the front.

And the job page's view (what ``/jobs/{id}`` and its polls of ``view.json`` plot):

- **view_kept**: ``ViewCache.get`` on a cache that keeps the running job's decoded trials: it
  reads the trials written since and derives the view from all of them;
- **view_read**: ``ViewCache.get`` on an empty cache: it reads every trial first.

Both fronts, and both views, are checked to be equal every round. Medians over the rounds
(min-max).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/dashboard.py and bench/synthetic.py: this script's folder is first on sys.path.
from dashboard import SPEC
from synthetic import trials

from service.db import make_engine, migrate
from service.fronts import FrontCache, ViewCache
from service.store import Store

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def one_backend(url: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = make_engine(url)
    migrate(engine)
    store = Store(engine)
    job = store.create_job({**SPEC, "budget": {"evaluations": 100000}})
    for t in trials(job["id"], args.trials, seed=0):
        store.add_trial(t)
    store.set_status(job["id"], "running", progress={"evaluations": args.trials})
    kept = FrontCache()
    kept.get(store, store.get_job(job["id"]))
    kept_views, view_fronts = ViewCache(), FrontCache()
    kept_views.get(store, view_fronts, store.get_job(job["id"]), plot_all=False)
    times: dict[str, list[float]] = {"extended": [], "derived": [], "view_kept": [], "view_read": []}
    number = args.trials
    for r in range(args.rounds):
        for t in trials(job["id"], args.batch, seed=number, start=number):
            store.add_trial(t)
        number += args.batch
        fresh_job = store.get_job(job["id"])
        fronts = {}
        for case in ("extended", "derived") if r % 2 == 0 else ("derived", "extended"):
            cache = kept if case == "extended" else FrontCache()
            t0 = time.perf_counter()
            fronts[case] = [t["number"] for t in cache.get(store, fresh_job)]
            times[case].append((time.perf_counter() - t0) * 1e3)
        if fronts["extended"] != fronts["derived"]:
            raise SystemExit(f"round {r}: the extended front differs from the derived one")
        views = {}
        for case in ("view_kept", "view_read") if r % 2 == 0 else ("view_read", "view_kept"):
            t0 = time.perf_counter()
            if case == "view_kept":
                views[case] = kept_views.get(store, view_fronts, fresh_job, plot_all=False)
            else:
                views[case] = ViewCache().get(store, FrontCache(), fresh_job, plot_all=False)
            times[case].append((time.perf_counter() - t0) * 1e3)
        if views["view_kept"] != views["view_read"]:
            raise SystemExit(f"round {r}: the view from kept trials differs from the one read afresh")
    engine.dispose()
    return {
        case: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "runs_ms": v}
        for case, v in times.items()
    } | {"front_size": len(fronts["derived"]), "trials_at_end": number}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "front_cache.json")
    parser.add_argument("--markdown", type=Path, help="print the table of a results file and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    tmp = Path(tempfile.mkdtemp(prefix="hwsearch-bench-front-"))
    result: dict[str, Any] = {
        "trials": args.trials,
        "rounds": args.rounds,
        "batch": args.batch,
        "backends": {},
    }
    for name, url in (("sqlite", f"sqlite:///{tmp / 'db.sqlite'}"), ("postgresql", PG)):
        result["backends"][name] = one_backend(url, args)
        print(
            name,
            {k: round(result["backends"][name][k]["median_ms"], 1) for k in CASES},
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))


CASES = ("extended", "derived", "view_kept", "view_read")


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| database | trials | front | front extended ms | front derived ms | page view, trials kept ms "
        "| page view, trials read ms |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for name, b in result["backends"].items():
        cells = [f"{b[c]['median_ms']:.1f} ({b[c]['min_ms']:.1f}-{b[c]['max_ms']:.1f})" for c in CASES]
        lines.append(f"| {name} | {b['trials_at_end']:,} | {b['front_size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
