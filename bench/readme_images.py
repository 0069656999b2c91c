"""Regenerate the README's dashboard images from a real ``make run`` demo.

Starts ``hwsearch serve --demo`` on a throw-away data directory and SQLite database (so a user's
jobs and fitted targets do not leak in), waits until the demo has profiled this CPU and its
search has finished, and screenshots the demo job's page and the targets page in chromium
(Debian's, as the dashboard tests use). Writes docs/img/dashboard-job.png and
docs/img/dashboard-targets.png, and prints what the demo found (span of the front, fit quality)
as JSON so the README's captions can be checked against it.

    .venv/bin/python bench/readme_images.py               # ~5 min on 2 cores
    .venv/bin/python bench/readme_images.py --out /tmp/x  # somewhere else
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_demo(url: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            jobs = httpx.get(f"{url}/api/v1/jobs", timeout=10).json()["items"]
        except (httpx.HTTPError, KeyError, ValueError):
            jobs = []
        if jobs and jobs[0]["status"] in ("succeeded", "failed", "cancelled"):
            job: dict[str, Any] = jobs[0]
            return job
        time.sleep(3)
    raise TimeoutError(f"the demo job did not finish within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="hwsearch-readme-") as tmp:
        env = {
            **os.environ,
            "HWSEARCH_DATA_DIR": str(Path(tmp) / "data"),
            "DATABASE_URL": f"sqlite:///{tmp}/hwsearch.db",
        }
        env.pop("RAY_ADDRESS", None)
        hwsearch = Path(sys.executable).parent / "hwsearch"
        server = subprocess.Popen(
            [str(hwsearch), "serve", "--host", "127.0.0.1", "--port", str(port), "--demo"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp) / "serve.log", "w"),  # noqa: SIM115 - closed with the process
        )
        try:
            job = _wait_for_demo(url, args.timeout_s)
            if job["status"] != "succeeded":
                raise SystemExit(f"the demo job {job['status']}: {job['error']}")
            view = httpx.get(f"{url}/jobs/{job['id']}/view.json", timeout=30).json()["view"]
            spans = {}
            for target in view["targets"]:
                latencies = [p["latency_ms"][target] for p in [view["reference"], *view["front"]]]
                spans[target] = round(max(latencies) / min(latencies), 2)
            args.out.mkdir(parents=True, exist_ok=True)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{url}/jobs/{job['id']}", wait_until="networkidle")
                page.wait_for_function("() => window.hwsearchPainted")
                page.screenshot(path=str(args.out / "dashboard-job.png"), full_page=True)
                page.goto(f"{url}/targets", wait_until="networkidle")
                page.screenshot(path=str(args.out / "dashboard-targets.png"), full_page=True)
                browser.close()
            predictors = httpx.get(f"{url}/api/v1/targets/host-cpu/predictors", timeout=30).json()
            active = next((v for v in predictors["versions"] if v["version"] == predictors["active"]), {})
            print(
                json.dumps(
                    {
                        "job": job["id"],
                        "evaluations": job["evaluations"],
                        "hypervolume": job["hypervolume"],
                        "front_points": len(view["front"]),
                        "front_latency_span_with_reference": spans,
                        "host_cpu_active_predictor": predictors["active"],
                        "host_cpu_validation": (active.get("report") or {}).get("validation"),
                    },
                    indent=2,
                    default=str,
                )
            )
        finally:
            server.terminate()
            server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
