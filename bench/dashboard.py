"""The job page in a real browser, with 1,000 and 10,000 trials, thinned and unthinned, side by
side in one run (issue 6's bench: "with 10,000 trials the page paints in under 1 s here").

Run: ``.venv/bin/python bench/dashboard.py [--repeats 5] [--out bench/results/dashboard.json]``
and ``.venv/bin/python bench/dashboard.py --markdown bench/results/dashboard.json`` for the table.

One app (uvicorn in this process, SQLite, dispatcher off) serves jobs of synthetic trials on two
targets (bench/synthetic.py: latency with an interval, energy, weight bytes; quality a noisy
function of latency, so the front holds ~1-2% of the trials). Debian's chromium (headless,
through Playwright) opens each job page, and for each case, interleaved round by round:

- **shown_ms**: from navigation start to the first animation frame with the page's plots and
  table on screen as the server drew them (SVG and HTML, service/svg_plot.py;
  ``window.hwsearchPreviewPainted``, two ``requestAnimationFrame`` after they were parsed);
  **fcp_ms**: Chromium's first contentful paint;
- **painted_ms**: from navigation start to the first animation frame after plotly.js drew the
  interactive plots (``window.hwsearchPainted``: two ``requestAnimationFrame`` after drawing),
  in a fresh browser context each time, so plotly.js (4.6 MB) is fetched and parsed every time;
- **html_ms**: the server's time for the page's HTML, as the browser saw it (responseEnd -
  requestStart), which includes deriving the view when the view cache is cold;
- **redraw_ms**: switching the x axis (a full ``Plotly.react`` of the front plot), in the page;
- **js_heap_mb**: ``performance.memory.usedJSHeapSize`` after painting.

The first round of each case is run with the server's view cache cleared (cold), the rest warm.
Medians over the rounds are reported with min and max. These are numbers for this shared 2-core
machine; single timings here drift 20-45%, hence the repeats.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from synthetic import TARGETS, trials  # bench/synthetic.py: this script's folder is on sys.path

from service.app import create_app
from service.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": list(TARGETS),
    "space": {"rank_fractions": [0.25, 0.5], "keep": [0.5, 0.75], "wbits": [4, 8]},
    "strategy": "guided",
    "budget": {"evaluations": 10000},
    "constraints": ["latency_ms@zcu102<=0.16"],
}

PAINTED = """() => new Promise(resolve => {
  const check = () => window.hwsearchPainted ? resolve(window.hwsearchPainted) : setTimeout(check, 5);
  check();
})"""
SHOWN = """() => { const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  return {shown_ms: window.hwsearchPreviewPainted, fcp_ms: fcp ? fcp.startTime : null}; }"""
NAV = """() => { const n = performance.getEntriesByType("navigation")[0];
  const js = performance.getEntriesByType("resource").find(e => e.name.includes("plotly"));
  const script = performance.getEntriesByName("hwsearch-script")[0].startTime;
  return {ttfb_ms: n.responseStart - n.requestStart, plotly_parsed_ms: script,
          plotly_transfer_bytes: js ? js.transferSize : 0}; }"""
REDRAW = """() => { const el = document.getElementById("x-axis"); el.value = "size";
  const t0 = performance.now(); el.dispatchEvent(new Event("change")); return performance.now() - t0; }"""


def measure(page: Any, url: str) -> dict[str, float]:
    page.goto(url, wait_until="commit")
    painted = float(page.evaluate(PAINTED))
    shown = page.evaluate(SHOWN)
    nav = page.evaluate(NAV)
    redraw = float(page.evaluate(REDRAW))
    heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null")
    points = page.evaluate(
        "() => document.getElementById('front-plot').data.reduce((s, t) => s + t.x.length, 0)"
    )
    return {
        "shown_ms": float(shown["shown_ms"]),
        "fcp_ms": shown["fcp_ms"],
        "painted_ms": painted,
        "ttfb_ms": float(nav["ttfb_ms"]),
        "plotly_parsed_ms": float(nav["plotly_parsed_ms"]),
        "draw_ms": painted - float(nav["plotly_parsed_ms"]),
        "plotly_transfer_bytes": float(nav["plotly_transfer_bytes"]),
        "redraw_ms": redraw,
        "js_heap_mb": heap,
        "points": points,
    }


VISITS = ("first", "from_list", "second", "third")


def visits(browser: Any, url: str) -> dict[str, dict[str, float]]:
    """Visits of ``url`` in fresh browser contexts. *first*: straight to the page, which fetches
    and compiles plotly.js. *from_list*: the jobs list first (it prefetches plotly.js), then the
    page, as a user clicking through. *second*, *third*: the page again; Chromium keeps compiled
    code of a cached script after its second load, so the third is a user moving between pages."""
    out: dict[str, dict[str, float]] = {}
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    listed = context.new_page()
    listed.goto(url.split("/jobs/")[0] + "/jobs", wait_until="networkidle")
    out["from_list"] = measure(listed, url)
    context.close()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    for visit in ("first", "second", "third"):
        out[visit] = measure(page, url)
    context.close()
    return out


def run(repeats: int, sizes: list[int]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="hwsearch-bench-dash-"))
    app = create_app(
        Settings.from_env({"HWSEARCH_DATA_DIR": str(tmp), "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite'}"}),
        dispatcher=False,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    store = app.state.store
    jobs = {}
    for n in sizes:
        job = store.create_job({**SPEC, "budget": {"evaluations": n}})
        for t in trials(job["id"], n, seed=n):
            store.add_trial(t)
        store.set_status(job["id"], "succeeded", progress={"evaluations": n})
        jobs[n] = job["id"]
    cases = [(n, plot_all) for n in sizes for plot_all in (False, True)]
    rows: dict[str, list[dict[str, dict[str, float]]]] = {f"{n}:{a}": [] for n, a in cases}
    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        visits(browser, f"{base}/jobs/{jobs[sizes[0]]}")  # warm the browser process itself
        for r in range(repeats):
            for n, plot_all in cases:
                if r == 0:  # the first round derives every view from the trials (cold server cache)
                    app.state.views._cache.clear()
                    app.state.views._trials.clear()
                    app.state.fronts._cache.clear()
                url = f"{base}/jobs/{jobs[n]}" + ("?all=1" if plot_all else "")
                m = visits(browser, url)
                rows[f"{n}:{plot_all}"].append(m)
                print(
                    n,
                    "all" if plot_all else "thinned",
                    {v: (round(m[v]["shown_ms"]), round(m[v]["painted_ms"])) for v in VISITS},
                    "ttfb",
                    round(m["from_list"]["ttfb_ms"]),
                )
        browser.close()
    server.should_exit = True
    out: dict[str, Any] = {"repeats": repeats, "machine": _machine(), "cases": []}
    for n, plot_all in cases:
        runs = rows[f"{n}:{plot_all}"]
        summary: dict[str, Any] = {
            "trials": n,
            "thinned": not plot_all,
            "points_plotted": runs[0]["first"]["points"],
            "cold_ttfb_ms": runs[0]["from_list"]["ttfb_ms"],  # the first request of round 1
            "runs": runs,
        }
        for visit in VISITS:
            summary[visit] = {
                key: _stats([m[visit][key] for m in runs[1:] or runs if m[visit][key] is not None])
                for key in (
                    "shown_ms",
                    "fcp_ms",
                    "painted_ms",
                    "ttfb_ms",
                    "plotly_parsed_ms",
                    "draw_ms",
                    "redraw_ms",
                    "js_heap_mb",
                )
            }
        out["cases"].append(summary)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _machine() -> dict[str, Any]:
    import os
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()}


def markdown(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [
        "| trials | plotted | points | plots shown ms (server-drawn): first visit | from the jobs list "
        "| interactive ms (plotly.js drew): first visit | from the jobs list | second | third "
        "| of the third: plotly.js ready / drawing ms | server ms (warm / cold cache) | x-axis redraw ms "
        "| JS heap MB |",
        "|---:|---|---:|---|---|---|---|---|---|---|---|---:|---:|",
    ]

    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"

    for c in data["cases"]:
        third = c["third"]
        lines.append(
            f"| {c['trials']:,} | {'thinned' if c['thinned'] else 'all'} | {c['points_plotted']:,} "
            f"| {cell(c['first']['shown_ms'])} | {cell(c['from_list']['shown_ms'])} "
            f"| {cell(c['first']['painted_ms'])} | {cell(c['from_list']['painted_ms'])} "
            f"| {cell(c['second']['painted_ms'])} "
            f"| {cell(third['painted_ms'])} "
            f"| {third['plotly_parsed_ms']['median']:.0f} / {third['draw_ms']['median']:.0f} "
            f"| {third['ttfb_ms']['median']:.0f} / {c['cold_ttfb_ms']:.0f} "
            f"| {third['redraw_ms']['median']:.0f} | {third['js_heap_mb']['median']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dashboard.json")
    parser.add_argument("--markdown", type=Path, help="print the table of a results file and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return
    result = run(args.repeats, [int(s) for s in args.sizes.split(",")])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(args.out))


if __name__ == "__main__":
    main()
