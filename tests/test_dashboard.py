"""The dashboard in a real browser: Debian's chromium driven by Playwright (launched headless
with --no-sandbox; Playwright's own browser download does not work offline).

Every page loads with no console errors and is screenshotted into test-artifacts/screenshots/;
the front plot has as many points as the API's front; clicking a point shows its plan; an
invalid job shows its error next to the field. The uncompressed model (trial 0) is the
reference: marked on every plot, first in the front's table, and every front row has its
speed-up and size ratio against it; a front of more objectives than the plotted axis says so and
highlights the 2-D front on that axis; host measurements are tied to their predicted points.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TARGETS = ("zcu102",)
SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": list(TARGETS),
    "space": {"keep": [0.5, 0.75], "wbits": [4, 8]},
    "strategy": "guided",
    "budget": {"evaluations": 300},
    "constraints": ["latency_ms<=0.222"],
}
LAYERS = ("conv1", "conv2", "conv3", "conv4", "fc1", "fc2")  # digits-cnn's, as bench/synthetic.py plans them
REFERENCE = "reference (uncompressed)"
#: A job costed on two targets, host-cpu first: its front is 3-objective, its host plans measured.
TWO_TARGETS = ("host-cpu", "zcu102")


def _calibrate_host(data_dir: Path) -> None:
    """A real host-cpu predictor in ``data_dir``: digits-cnn plans timed on this machine, fitted,
    and active. 15 plans of one small model on a loaded machine may rank its held-out rows no
    better than the analytic prior, and such a fit is stored inactive (workers/calibration.py);
    the pages are tested on an active one, so it is activated as the API's activate route would."""
    from latency_models import catalogue
    from workers.profiling import calibrate_host

    cat = catalogue(data_dir)
    calibrate_host(("digits-cnn",), 15, repeats=5, cat=cat)
    if cat.active_version("host-cpu") is None:
        cat.activate("host-cpu", cat.versions("host-cpu")[-1])


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, serve: Any, synthetic: ModuleType
) -> Iterator[dict[str, Any]]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs Debian's chromium package)")
    tmp = tmp_path_factory.mktemp("dash")
    env = {"HWSEARCH_DATA_DIR": str(tmp), "DATABASE_URL": f"sqlite:///{tmp / 'hwsearch.db'}"}
    _calibrate_host(tmp)
    app = create_app(Settings.from_env(env), dispatcher=False)
    with serve(app) as url:
        store = app.state.store
        job = store.create_job(SPEC)
        for t in synthetic.trials(job["id"], 300, 0, targets=TARGETS):
            store.add_trial(t)
        layers = [{"name": n, "kind": "conv2d", "full_rank": 32, "out_channels": 32} for n in LAYERS]
        store.set_status(
            job["id"], "succeeded", progress={"evaluations": 300, "hypervolume": 0.12, "layers": layers}
        )
        big = store.create_job({**SPEC, "budget": {"evaluations": 10000}})
        for t in synthetic.trials(big["id"], 10000, 1, targets=TARGETS):
            store.add_trial(t)
        store.set_status(big["id"], "succeeded", progress={"evaluations": 10000, "hypervolume": 0.2})
        store.create_schedule(
            name="nightly", cron="0 2 * * *", timezone="Europe/Berlin", spec=SPEC, enabled=True
        )
        two = store.create_job({**SPEC, "targets": list(TWO_TARGETS), "constraints": []})
        two_trials = synthetic.trials(two["id"], 200, 3, targets=TWO_TARGETS)
        for t in two_trials:
            store.add_trial(t)
        store.set_status(two["id"], "succeeded", progress={"evaluations": 200, "hypervolume": 0.1})
        # Measured on this CPU: the first three front plans (as a search's measure_front stores them).
        for number in [t["number"] for t in app.state.fronts.get(store, store.get_job(two["id"]))][:3]:
            host_ms = next(t for t in two_trials if t["number"] == number)["costs"]["host-cpu"]["latency_ms"]
            store.add_measurement(two["id"], number, {"latency_ms": host_ms * 1.3, "repeats": 5})
        empty = store.create_job(SPEC)  # queued, no trial yet
        failed = store.create_job(SPEC)  # every trial failed, then the job
        for t in synthetic.trials(failed["id"], 5, 2, targets=TARGETS):
            failure = {"status": "failed", "quality": None, "feasible": False, "error": "RuntimeError: x"}
            store.add_trial({**t, **failure})
        store.set_status(
            failed["id"], "failed", progress={"evaluations": 5}, error="RuntimeError: all failed"
        )
        # A registered device agent (issue 19): the targets page lists it (and its page is checked
        # for console errors and accessibility like every other).
        store.register_device(
            name="board-a",
            target="zcu102",
            runtime="onnxruntime",
            threads=2,
            info={"cpu": "Cortex-A72", "cores": 4, "os": "Linux-6.1-aarch64", "onnxruntime": "1.32.0"},
            owner="ui",
        )
        store.create_profile(
            target="zcu102",
            spec={"models": ["digits-cnn"], "plans_per_model": 6, "timeout_s": 60},
            owner="ui",
        )
        yield {
            "url": url,
            "job": job["id"],
            "big": big["id"],
            "empty": empty["id"],
            "two": two["id"],
            "failed": failed["id"],
            "token": store.create_token("ui"),
            "data_dir": tmp,
            "store": store,
        }


@pytest.fixture(scope="module")
def browser(site: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="networkidle")
    # A job page runs plotly.js after its first frame; wait until it drew the interactive plots.
    page.wait_for_function("() => !document.getElementById('front-plot') || window.hwsearchPainted")
    # The initial plan comes from a fetch after the first paint: wait for it where the page has a
    # front, or a test that reads the selected plan races it (CI failed on that once).
    page.wait_for_function(
        "() => { const s = document.getElementById('plan-section');"
        " return !s || s.hidden || document.getElementById('plan-title').dataset.trial !== undefined; }"
    )
    return page, errors


@pytest.mark.parametrize(
    "path",
    [
        "/jobs",
        "/jobs/{job}",
        "/jobs/{big}",
        "/jobs/{empty}",
        "/jobs/{failed}",
        "/compare?jobs={job},{big}",
        "/targets",
        "/schedules",
        "/submit",
    ],
)
def test_every_page_loads_without_console_errors(site: dict[str, Any], browser: Any, path: str) -> None:
    page, errors = _open(browser, site["url"] + path.format(**site))
    assert page.locator("h1").count() == 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    name = path.strip("/").split("?")[0].replace("/", "-").replace("{", "").replace("}", "") or "home"
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert errors == []
    page.close()


def test_the_front_plot_has_the_apis_front_and_a_click_shows_the_plan(
    site: dict[str, Any], browser: Any
) -> None:
    import httpx

    api_front = httpx.get(f"{site['url']}/api/v1/jobs/{site['job']}/front").json()["front"]
    page, errors = _open(browser, f"{site['url']}/jobs/{site['job']}")
    plotted = page.evaluate(
        "() => document.getElementById('front-plot').data.find(t => t.name === 'front').customdata"
    )
    assert sorted(plotted) == sorted(t["number"] for t in api_front) and len(plotted) > 1
    # The page opens on its initial plan; click another front marker in the SVG and the plan
    # heatmap of that trial appears instead.
    page.wait_for_function("() => document.getElementById('plan-title').dataset.trial !== undefined")
    initial = int(page.evaluate("() => document.getElementById('plan-title').dataset.trial"))
    index = next(i for i, n in enumerate(plotted) if n != initial)
    first = plotted[index]
    point = page.locator("#front-plot .scatterlayer .trace").nth(2).locator(".point").nth(index)
    point.click(force=True)
    page.wait_for_function(f"() => document.getElementById('plan-title').dataset.trial === '{first}'")
    trial = first
    assert page.locator(f".front-row[data-trial='{trial}']").get_attribute("aria-selected") == "true"
    heat = page.evaluate("() => document.getElementById('plan-plot').data[0]")
    plan = httpx.get(f"{site['url']}/api/v1/jobs/{site['job']}/trials/{trial}/plan").json()
    assert heat["x"] == list(LAYERS)  # every searched layer, as the search reported them
    for i, name in enumerate(LAYERS):  # rank as a fraction of the layer's full rank (32 here)
        rank = plan["layers"].get(name, {}).get("rank")
        assert heat["z"][0][i] == (1.0 if rank is None else rank / 32)
    assert page.locator("#plan-links a").count() == 2
    assert errors == []


def test_ten_thousand_trials_plot_the_whole_front_and_thin_the_rest(
    site: dict[str, Any], browser: Any
) -> None:
    import httpx

    api_front = httpx.get(f"{site['url']}/api/v1/jobs/{site['big']}/front").json()["front"]
    page, errors = _open(browser, f"{site['url']}/jobs/{site['big']}")
    counts = page.evaluate("() => document.getElementById('front-plot').data.map(t => [t.name, t.x.length])")
    by_name = dict(counts)
    assert by_name["front"] == len(api_front) and by_name[REFERENCE] == 1
    # Thinned: 2,000 dominated points at most, besides the front, the reference and the points
    # of a 2-D front on some axis (kept so a highlighted point is always drawn).
    view = httpx.get(f"{site['url']}/jobs/{site['big']}/view.json").json()["view"]
    kept = {n for numbers in view["front_2d"].values() for n in numbers} | {0}
    assert sum(n for name, n in counts if name != REFERENCE) == len(view["points"])
    assert len(view["points"]) <= 2000 + len(api_front) + len(kept)
    assert errors == []


def test_the_page_paints_its_plots_and_table_before_plotly_runs(site: dict[str, Any], browser: Any) -> None:
    """With JavaScript off, the job page still shows the front (a server-drawn SVG with every
    front point), the hypervolume curve and the front's table; once plotly.js runs, the
    interactive plots replace the SVGs."""
    import httpx

    api_front = httpx.get(f"{site['url']}/api/v1/jobs/{site['big']}/front").json()["front"]
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{site['url']}/jobs/{site['big']}")
    front_marks = page.locator("#front-plot svg.preview g[data-series='front'] circle")
    assert front_marks.count() == len(api_front)
    thinned = page.locator("#front-plot svg.preview g[data-series='feasible'] circle").count()
    infeasible = page.locator("#front-plot svg.preview g[data-series='infeasible'] path").count()
    view = httpx.get(f"{site['url']}/jobs/{site['big']}/view.json").json()["view"]
    assert 0 < thinned + infeasible == len(view["points"]) - len(api_front)
    assert page.locator("#hv-plot svg.preview polyline").count() == 1
    # The reference, a star of its own legend entry, drawn over the rest.
    assert page.locator(f"#front-plot svg.preview g[data-series='{REFERENCE}'] polygon").count() == 1
    assert REFERENCE in (page.text_content("#front-plot svg.preview") or "")
    rows = page.eval_on_selector_all(".front-row", "rs => rs.map(r => Number(r.dataset.trial))")
    assert rows[0] == 0 and sorted(rows) == sorted({0} | {t["number"] for t in api_front})
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "job-before-plotly.png"), full_page=True)
    context.close()
    page, errors = _open(browser, f"{site['url']}/jobs/{site['big']}")
    assert page.locator("svg.preview").count() == 0
    assert page.locator("#front-plot .main-svg").count() > 0
    assert errors == []


def test_an_invalid_job_shows_its_error_by_the_field(site: dict[str, Any], browser: Any) -> None:
    page, errors = _open(browser, f"{site['url']}/submit")
    page.fill("#token", site["token"])
    page.fill("#budget", "0")  # the spec's own validation: the budget field
    page.click("#submit")
    page.wait_for_function("() => document.getElementById('budget-error').textContent.length > 0")
    assert "greater than or equal to 1" in page.inner_text("#budget-error")
    page.fill("#budget", "10")
    page.fill("#targets", "no-such-device")  # the catalogue's check: the targets field
    page.click("#submit")
    page.wait_for_function("() => document.getElementById('targets-error').textContent.length > 0")
    assert "unknown target" in page.inner_text("#targets-error")
    assert page.get_attribute("#targets", "aria-invalid") == "true"
    assert page.inner_text("#budget-error") == ""  # earlier errors are cleared
    page.fill("#targets", "zcu102")
    page.click("#submit")
    page.wait_for_selector("#result a")
    assert "queued" in page.inner_text("#result")
    page.keyboard.press("Tab")  # keyboard navigation reaches the form's controls
    # The browser logs the two refused submissions (422) as failed loads; nothing else.
    assert [e for e in errors if "status of 422" not in e] == []
    assert len(errors) == 2


def test_an_invalid_schedule_shows_its_errors_by_the_fields(site: dict[str, Any], browser: Any) -> None:
    page, errors = _open(browser, f"{site['url']}/submit")
    page.fill("#token", site["token"])
    page.fill("#budget", "10")
    page.fill("#targets", "zcu102")
    page.fill("#cron", "every night")
    page.fill("#timezone", "America")  # a folder of the zone database, not a zone
    page.click("#submit")
    page.wait_for_function("() => document.getElementById('timezone-error').textContent.length > 0")
    assert "five-field cron expression" in page.inner_text("#cron-error")
    assert "not an IANA time zone" in page.inner_text("#timezone-error")
    assert page.get_attribute("#cron", "aria-invalid") == "true"
    page.fill("#cron", "0 2 * * *")
    page.fill("#timezone", "Europe/Berlin")
    page.fill("#budget", "0")  # the spec's errors land by the same fields for a schedule
    page.click("#submit")
    page.wait_for_function("() => document.getElementById('budget-error').textContent.length > 0")
    assert page.inner_text("#cron-error") == "" and page.inner_text("#timezone-error") == ""
    page.fill("#budget", "10")
    page.click("#submit")
    page.wait_for_selector("#result a[href='/schedules']")
    created = page.inner_text("#result")
    assert created.startswith("schedule ") and "next firing" in created
    schedule_id = created.split()[1]
    listed, list_errors = _open(browser, f"{site['url']}/schedules")
    assert schedule_id in listed.inner_text("main")
    assert [e for e in errors if "status of 422" not in e] == [] and len(errors) == 2 and list_errors == []


def test_the_calibration_plot_draws_the_fits_held_out_rows_and_the_band(
    site: dict[str, Any], browser: Any
) -> None:
    folder = site["data_dir"] / "predictors" / "host-cpu"
    version = (folder / "ACTIVE").read_text().strip()
    holdout = json.loads((folder / version / "report.json").read_text())["holdout"]
    page, errors = _open(browser, f"{site['url']}/targets")
    traces = page.evaluate(
        "() => document.getElementById('calib-host-cpu').data.map(t => [t.name, t.x, t.y])"
    )
    by_name = {name: (x, y) for name, x, y in traces}
    assert by_name["learned predictor"] == (holdout["measured_ms"], holdout["predicted_ms"])
    band_x, band_y = by_name["±10% band"]
    assert [round(y / x, 6) for x, y in zip(band_x, band_y, strict=True)] == [0.9, 0.9, 1.1, 1.1]
    assert page.locator(f"#target-host-cpu td:has-text('{version}')").count() == 1
    assert "learned (fitted on 15 measurements" in page.inner_text("#target-host-cpu")
    assert errors == []


def test_the_front_can_be_seen_by_weight_size_and_energy(site: dict[str, Any], browser: Any) -> None:
    import httpx

    api_front = httpx.get(f"{site['url']}/api/v1/jobs/{site['job']}/front").json()["front"]
    page, errors = _open(browser, f"{site['url']}/jobs/{site['job']}")
    options = page.eval_on_selector_all("#x-axis option", "os => os.map(o => o.value)")
    assert options == ["latency:zcu102", "size", "energy:zcu102"]

    def front_trace() -> dict[str, Any]:
        trace: dict[str, Any] = page.evaluate(
            "() => { const t = document.getElementById('front-plot').data.find(t => t.name === 'front');"
            " return {x: t.x, n: t.customdata, color: t.marker.color}; }"
        )
        return trace

    page.select_option("#x-axis", "size")
    trace = front_trace()
    by_number = {t["number"]: t["costs"]["zcu102"] for t in api_front}
    assert trace["x"] == [by_number[n]["weight_bytes"] / 1e6 for n in trace["n"]]
    title = page.evaluate("() => document.getElementById('front-plot').layout.xaxis.title.text")
    assert "weight size" in title
    page.select_option("#x-axis", "energy:zcu102")
    page.select_option("#colour-by", "size")
    trace = front_trace()
    assert trace["x"] == [by_number[n]["energy_mj"] for n in trace["n"]]
    assert trace["color"] == [by_number[n]["weight_bytes"] / 1e6 for n in trace["n"]]
    assert errors == []


def test_the_front_table_is_keyboard_navigable(site: dict[str, Any], browser: Any) -> None:
    page, errors = _open(browser, f"{site['url']}/jobs/{site['job']}")
    rows = page.eval_on_selector_all(".front-row", "rs => rs.map(r => r.dataset.trial)")
    page.focus(".front-row")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => document.getElementById('plan-title').dataset.trial === '{rows[2]}'")
    assert page.evaluate("() => document.activeElement.dataset.trial") == rows[2]
    assert errors == []


def test_a_running_job_updates_in_place(site: dict[str, Any], browser: Any, synthetic: ModuleType) -> None:
    """The job page and the jobs list poll while the job runs: new trials and the final status
    appear without a reload (a marker set on the window survives), and the plan shown stays
    selected."""
    import httpx

    from service.store import Store

    store: Store = site["store"]
    job = store.create_job({**SPEC, "budget": {"evaluations": 40}})
    trials = synthetic.trials(job["id"], 40, 7, targets=TARGETS)
    for t in trials[:10]:
        store.add_trial(t)
    store.set_status(job["id"], "running", progress={"evaluations": 10})
    page, errors = _open(browser, f"{site['url']}/jobs/{job['id']}")
    page.evaluate("() => { window.notReloaded = true; }")
    assert page.inner_text("#job-status") == "running"
    selected = page.evaluate("() => document.getElementById('plan-title').dataset.trial")
    jobs_page, jobs_errors = _open(browser, f"{site['url']}/jobs")
    jobs_page.evaluate("() => { window.notReloaded = true; }")
    status_cell = f"tr:has(a[href='/jobs/{job['id']}']) td:nth-child(2)"
    assert jobs_page.inner_text(status_cell) == "running"
    for t in trials[10:]:
        store.add_trial(t)
    store.set_status(job["id"], "succeeded", progress={"evaluations": 40, "hypervolume": 0.3})
    page.wait_for_function(
        "() => document.getElementById('job-status').textContent === 'succeeded'", timeout=15000
    )
    assert page.evaluate("() => window.notReloaded") is True
    assert page.inner_text("#job-progress").startswith("40/40 evaluations")
    plotted = page.evaluate(
        "() => document.getElementById('front-plot').data"
        f".filter(t => t.name !== '{REFERENCE}').map(t => t.x.length)"
    )
    assert sum(plotted) == 40  # every trial is plotted (none failed, fewer than the thinning limit)
    assert page.evaluate("() => document.getElementById('plan-title').dataset.trial") == selected
    # The table came again with the poll: the final front, the selected row still marked.
    api_front = httpx.get(f"{site['url']}/api/v1/jobs/{job['id']}/front").json()["front"]
    assert page.eval_on_selector_all(".front-row", "rs => rs.map(r => Number(r.dataset.trial))") == [0] + [
        t["number"] for t in api_front if t["number"] != 0
    ]
    marked = page.eval_on_selector_all(
        ".front-row[aria-selected='true']", "rs => rs.map(r => r.dataset.trial)"
    )
    assert marked == ([selected] if int(selected) in {0} | {t["number"] for t in api_front} else [])
    jobs_page.wait_for_function(
        f"() => document.querySelector(\"{status_cell}\").textContent === 'succeeded'", timeout=15000
    )
    assert jobs_page.evaluate("() => window.notReloaded") is True
    assert errors == [] and jobs_errors == []


@pytest.mark.parametrize(
    "path", ["/jobs", "/jobs/{job}", "/compare?jobs={job},{big}", "/targets", "/schedules", "/submit"]
)
def test_pages_have_no_serious_accessibility_violations(
    site: dict[str, Any], browser: Any, path: str
) -> None:
    """axe-core (the engine of Lighthouse's accessibility audit) on each page: no violation of
    moderate, serious or critical impact (labels, names, contrast, nesting, ARIA misuse)."""
    from axe_playwright_python.sync_playwright import Axe

    page, errors = _open(browser, site["url"] + path.format(**site))
    violations = Axe().run(page).response["violations"]
    serious = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in violations
        if v["impact"] in ("moderate", "serious", "critical")
    ]
    assert serious == [], "\n".join(serious)
    assert errors == []


def test_compare_overlays_the_chosen_jobs_fronts(site: dict[str, Any], browser: Any) -> None:
    import httpx

    page, errors = _open(browser, f"{site['url']}/compare")
    page.check(f"#pick-{site['job']}")
    page.check(f"#pick-{site['big']}")
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    counts = page.evaluate(
        "() => document.getElementById('compare-plot').data.filter(t => !t.name.endsWith('(uncompressed)'))"
        ".map(t => t.x.length)"
    )
    api = f"{site['url']}/api/v1/jobs"
    fronts = [len(httpx.get(f"{api}/{j}/front").json()["front"]) for j in (site["job"], site["big"])]
    assert sorted(counts) == sorted(fronts)
    # Both jobs were costed on zcu102: it is offered as the common target to compare on.
    assert page.eval_on_selector_all("#on-target option", "os => os.map(o => o.value)") == ["", "zcu102"]
    page.select_option("#on-target", "zcu102")
    title = page.evaluate("() => document.getElementById('compare-plot').layout.title.text")
    assert title.endswith("on zcu102")
    page, errors2 = _open(browser, f"{site['url']}/compare?jobs={site['job']},nosuchjob")
    assert "No job nosuchjob" in page.inner_text("main")
    assert page.evaluate("() => document.getElementById('compare-plot').data.length") == 2  # front, reference
    assert errors == [] and errors2 == []


def test_a_job_without_evaluated_trials_says_why(site: dict[str, Any], browser: Any) -> None:
    page, errors = _open(browser, f"{site['url']}/jobs/{site['failed']}")
    assert page.inner_text("#failure-list") == "RuntimeError: x (5)"
    assert page.is_hidden("#plan-section")
    note = page.evaluate("() => document.getElementById('front-plot').layout.annotations[0].text")
    assert note == "no trial has been evaluated successfully"
    page, errors2 = _open(browser, f"{site['url']}/jobs/{site['empty']}")
    assert page.is_hidden("#failures") and page.is_hidden("#plan-section")
    note = page.evaluate("() => document.getElementById('front-plot').layout.annotations[0].text")
    assert note == "no trial yet"
    assert errors == [] and errors2 == []


# ------------------------------------------------------------ the reference, fronts, polish
def _job_trials(site: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = site["store"].trials(job_id)[0]
    return trials


def _front_2d(trials: list[dict[str, Any]], metric: str, target: str) -> set[int]:
    """Brute force: feasible trials no other feasible trial beats in quality and the one cost."""
    ok = [
        (t["number"], t["quality"], t["costs"][target][metric])
        for t in trials
        if t["feasible"] and t["quality"]
    ]
    return {n for n, q, c in ok if not any(q2 >= q and c2 <= c and (q2 > q or c2 < c) for _, q2, c2 in ok)}


def test_the_reference_is_marked_and_first_in_the_table_with_speedups(
    site: dict[str, Any], browser: Any
) -> None:
    """Trial 0 is a star of its own legend entry in plotly's plot, the table's first row
    (labelled), and every row's speed-up and size ratio are against it; view.json carries it."""
    import httpx

    trials = {t["number"]: t for t in _job_trials(site, site["job"])}
    ref = trials[0]["costs"]["zcu102"]
    view = httpx.get(f"{site['url']}/jobs/{site['job']}/view.json").json()["view"]
    assert view["reference"]["number"] == 0 and view["reference"]["quality"] == trials[0]["quality"]
    page, errors = _open(browser, f"{site['url']}/jobs/{site['job']}")
    star = page.evaluate(
        f"() => document.getElementById('front-plot').data.filter(t => t.name === '{REFERENCE}')"
        ".map(t => [t.customdata, t.x, t.marker.symbol])"
    )
    assert star == [[[0], [ref["latency_ms"]], "star"]]
    first = page.locator(".front-row").first
    assert first.get_attribute("data-trial") == "0" and REFERENCE in first.inner_text()
    assert first.locator("td.speedup").inner_text() == "1.00×"
    assert first.locator("td.size-ratio").inner_text() == "1.00×"
    rows = page.locator(".front-row")
    assert rows.count() > 3
    for i in range(1, rows.count()):
        row = rows.nth(i)
        cost = trials[int(row.get_attribute("data-trial") or "-1")]["costs"]["zcu102"]
        assert row.locator("td.speedup").inner_text() == f"{ref['latency_ms'] / cost['latency_ms']:.2f}×"
        assert (
            row.locator("td.size-ratio").inner_text() == f"{cost['weight_bytes'] / ref['weight_bytes']:.2f}×"
        )
    # Clicking the reference's row shows its plan: nothing changed.
    first.click()
    page.wait_for_function("() => document.getElementById('plan-title').dataset.trial === '0'")
    assert "uncompressed" in page.evaluate("() => document.getElementById('plan-plot').layout.title.text")
    assert errors == []


def test_the_page_opens_on_the_best_front_point_cheaper_than_the_reference(
    site: dict[str, Any], browser: Any
) -> None:
    import httpx

    for job in ("job", "two"):
        api_front = httpx.get(f"{site['url']}/api/v1/jobs/{site[job]}/front").json()["front"]
        trials = {t["number"]: t for t in _job_trials(site, site[job])}
        first_target = next(iter(trials[0]["costs"]))
        ref_ms = trials[0]["costs"][first_target]["latency_ms"]
        cheaper = [
            t for t in api_front if t["number"] != 0 and t["costs"][first_target]["latency_ms"] < ref_ms
        ]
        expected = max(cheaper, key=lambda t: t["quality"])["number"]
        page, errors = _open(browser, f"{site['url']}/jobs/{site[job]}")
        page.wait_for_function("() => document.getElementById('plan-title').dataset.trial !== undefined")
        assert page.evaluate("() => document.getElementById('plan-title').dataset.trial") == str(expected)
        assert page.locator(f".front-row[data-trial='{expected}']").get_attribute("aria-selected") == "true"
        assert errors == []


def test_two_targets_say_the_front_is_projected_and_offer_the_2d_front(
    site: dict[str, Any], browser: Any
) -> None:
    """Costed on two targets, the front is non-dominated in three objectives: the page says so,
    highlights the front in quality and the x axis alone, and a toggle shows the full front."""
    import httpx

    trials = _job_trials(site, site["two"])
    api_front = {
        t["number"] for t in httpx.get(f"{site['url']}/api/v1/jobs/{site['two']}/front").json()["front"]
    }
    page, errors = _open(browser, f"{site['url']}/jobs/{site['two']}")
    note = page.locator("#projection-note")
    assert note.is_visible() and "non-dominated in 3 objectives" in note.inner_text()
    assert "latency_ms@host-cpu, latency_ms@zcu102" in note.inner_text()
    assert page.is_checked("#front-2d")

    def traces() -> dict[str, list[int]]:
        got: dict[str, list[int]] = dict(
            page.evaluate("() => document.getElementById('front-plot').data.map(t => [t.name, t.customdata])")
        )
        return got

    for axis, target in (("latency:host-cpu", "host-cpu"), ("latency:zcu102", "zcu102")):
        page.select_option("#x-axis", axis)
        shown = traces()
        expected = _front_2d(trials, "latency_ms", target)
        assert set(shown["2-D front on this axis"]) == expected
        assert set(shown["front"]) == api_front  # the full front stays drawn
        # The point of the note: projected, some of the full front's points are dominated.
        assert api_front - expected
    page.uncheck("#front-2d")
    shown = traces()
    assert "2-D front on this axis" not in shown and set(shown["front"]) == api_front
    assert (
        page.evaluate(
            "() => document.getElementById('front-plot').data.find(t => t.name === 'front').marker.symbol"
        )
        == "circle"
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.check("#front-2d")
    page.screenshot(path=str(SHOTS / "job-two-targets-2d-front.png"), full_page=True)
    # One target and a latency-only objective: the front is the 2-D front; no note, no toggle.
    one, errors2 = _open(browser, f"{site['url']}/jobs/{site['job']}")
    assert one.locator("#projection-note").is_hidden() and one.locator("#front-2d-toggle").is_hidden()
    assert errors == [] and errors2 == []


def test_measured_diamonds_are_tied_to_their_predicted_points(site: dict[str, Any], browser: Any) -> None:
    trials = {t["number"]: t for t in _job_trials(site, site["two"])}
    measured = sorted(n for n, t in trials.items() if t.get("measured"))
    assert len(measured) == 3
    page, errors = _open(browser, f"{site['url']}/jobs/{site['two']}")
    page.select_option("#x-axis", "latency:host-cpu")
    got = page.evaluate(
        "() => Object.fromEntries(document.getElementById('front-plot').data"
        ".filter(t => t.name.startsWith('measured')).map(t => [t.name, t]))"
    )
    diamonds = got["measured on host-cpu"]
    assert sorted(diamonds["customdata"]) == measured and diamonds["marker"]["symbol"] == "diamond"
    assert "predicted" in diamonds["hovertemplate"] and "measured" in diamonds["hovertemplate"]
    links = got["measured ↔ predicted"]
    for i, number in enumerate(diamonds["customdata"]):
        t = trials[number]
        m, p = t["measured"]["latency_ms"], t["costs"]["host-cpu"]["latency_ms"]
        assert links["x"][3 * i : 3 * i + 3] == [m, p, None]
        assert links["y"][3 * i : 3 * i + 3] == [t["quality"], t["quality"], None]
        assert diamonds["text"][i] == f"{p:.4f}"
    # A device agent measures one of those plans on the job's other target (issue 19): the trial
    # keeps this machine's measurement and gains the device's; each axis plots its own.
    store = site["store"]
    number = measured[0]
    device_ms = 2.5 * trials[number]["costs"]["zcu102"]["latency_ms"]
    assert store.add_device_measurement(
        site["two"], number, {"target": "zcu102", "latency_ms": device_ms, "device": "board-a"}
    )
    t = store.trial(site["two"], number)
    assert t["measured"].get("target", "host-cpu") == "host-cpu"  # this machine's, kept
    assert t["measured_on"]["zcu102"]["latency_ms"] == device_ms and "host-cpu" in t["measured_on"]
    page, errors = _open(browser, f"{site['url']}/jobs/{site['two']}")
    page.select_option("#x-axis", "latency:zcu102")
    on_device = page.evaluate(
        "() => document.getElementById('front-plot').data.find(t => t.name === 'measured on zcu102')"
    )
    assert on_device["customdata"] == [number] and on_device["x"] == [device_ms]
    headers = page.eval_on_selector_all("#front-head th", "hs => hs.map(h => h.textContent)")
    assert "measured ms (host-cpu)" in headers and "measured ms (zcu102)" in headers
    cell = page.inner_text(f".front-row[data-trial='{number}'] td.measured[data-target='zcu102']")
    assert cell == f"{device_ms:.4f}"
    assert errors == []


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


@pytest.mark.parametrize(
    ("path", "plot"), [("/jobs/{two}", "front-plot"), ("/compare?jobs={job},{two}", "compare-plot")]
)
def test_the_mode_bar_leaves_the_title_alone(
    site: dict[str, Any], browser: Any, path: str, plot: str
) -> None:
    page, errors = _open(browser, site["url"] + path.format(**site))
    page.hover(f"#{plot} .nsewdrag")  # the mode bar shows while the pointer is on the plot
    page.wait_for_function(
        f"() => getComputedStyle(document.querySelector('#{plot} .modebar')).opacity === '1'"
    )
    bar = page.locator(f"#{plot} .modebar").bounding_box()
    title = page.locator(f"#{plot} .gtitle").bounding_box()
    assert bar and title and bar["width"] > 0 and title["width"] > 0
    assert not _overlap(bar, title), (bar, title)
    assert errors == []


def test_compare_starts_empty_then_labels_a_common_target(site: dict[str, Any], browser: Any) -> None:
    page, errors = _open(browser, f"{site['url']}/compare")
    assert page.locator("#compare-empty").is_visible()
    assert "tick two or more jobs" in page.inner_text("#compare-empty")
    assert page.locator("#compare-plot").count() == 0  # no empty axes
    # zcu102 is the one target both were costed on (the first of one, the second of the other).
    page, errors2 = _open(browser, f"{site['url']}/compare?jobs={site['job']},{site['two']}")
    assert page.locator("#compare-empty").count() == 0
    assert page.input_value("#on-target") == "zcu102"
    layout = page.evaluate("() => document.getElementById('compare-plot').layout")
    assert layout["xaxis"]["title"]["text"] == "latency (ms) on zcu102"
    stars = page.evaluate(
        "() => document.getElementById('compare-plot').data.filter(t => t.marker.symbol === 'star')"
        ".map(t => [t.name, t.customdata])"
    )
    assert stars == [[f"{site['job']}: {REFERENCE}", [0]], [f"{site['two']}: {REFERENCE}", [0]]]
    page.select_option("#on-target", "")  # each job's first target: the axis says which
    label = page.evaluate("() => document.getElementById('compare-plot').layout.xaxis.title.text")
    assert label == "latency (ms), each job on its first target (zcu102, host-cpu)"
    assert errors == [] and errors2 == []


def test_the_submit_form_offers_activation_bits_and_token_keep(site: dict[str, Any], browser: Any) -> None:
    import httpx

    page, errors = _open(browser, f"{site['url']}/submit")
    page.fill("#token", site["token"])
    page.fill("#budget", "10")
    page.fill("#abits", "5")  # not a bit width the space offers
    page.fill("#token_keep", "1.5")  # a ratio above 1
    page.click("#submit")
    page.wait_for_function(
        "() => ['abits-error', 'token_keep-error']"
        ".every(id => document.getElementById(id).textContent.length > 0)"
    )
    assert "Input should be" in page.inner_text("#abits-error")
    assert "less than or equal to 1" in page.inner_text("#token_keep-error")
    assert page.get_attribute("#abits", "aria-invalid") == "true"
    assert page.get_attribute("#token_keep", "aria-invalid") == "true"
    assert page.inner_text("#wbits-error") == "" and page.inner_text("#space-error") == ""
    page.fill("#abits", "8")
    page.fill("#token_keep", "")
    page.click("#submit")
    page.wait_for_selector("#result a")
    job_id = page.inner_text("#result a")
    spec = httpx.get(f"{site['url']}/api/v1/jobs/{job_id}").json()["spec"]
    assert spec["space"]["abits"] == [8] and spec["space"]["token_keep"] == []
    assert page.inner_text("#abits-error") == ""
    assert [e for e in errors if "status of 422" not in e] == [] and len(errors) == 1


def test_a_newcomer_walks_the_demo(site: dict[str, Any], browser: Any) -> None:
    """What ``make run`` shows, walked as a new user: the jobs list, the demo job's page with the
    reference marked, the compare page with two jobs on a labelled axis. The demo's own spec
    (service.demo.DEMO_SPEC) searched for real with a small budget; host-cpu as the site's
    fixture fitted it (the demo's longer host profiling is not repeated here) and the front not
    timed on this CPU. The second job is the same spec by another strategy."""
    import ray

    from latency_models import catalogue
    from service.demo import DEMO_SPEC
    from workers.search import JobSpec, MemorySink, run_search

    # A Ray of its own: ray.init() with no address joins the newest local cluster, which on a
    # shared machine may be another test's, shut down under this search.
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    store = site["store"]
    base = JobSpec.model_validate(DEMO_SPEC)
    ids = []
    for strategy in (base.strategy, "random"):
        spec = base.model_copy(
            update={"budget": base.budget.model_copy(update={"evaluations": 8}), "strategy": strategy}
        )
        job = store.create_job(spec.model_dump(mode="json"))
        sink = MemorySink()
        result = run_search(
            spec, sink, job_id=job["id"], catalogue=catalogue(site["data_dir"]), measure_front=False
        )
        for trial in sink.job_trials(job["id"]):
            store.add_trial(trial.to_dict())
        store.set_status(
            job["id"], result.status, progress={"evaluations": 8, "hypervolume": result.hypervolume}
        )
        assert result.status == "succeeded"
        ids.append(job["id"])
    if started_here:
        ray.shutdown()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page, errors = _open(browser, f"{site['url']}/jobs")
    assert page.locator(f"a[href='/jobs/{ids[0]}']").count() == 1
    page.screenshot(path=str(SHOTS / "demo-1-jobs.png"), full_page=True)
    page.click(f"a[href='/jobs/{ids[0]}']")
    page.wait_for_function(
        "() => window.hwsearchPainted && document.getElementById('plan-title').dataset.trial"
    )
    star = page.evaluate(
        "() => document.getElementById('front-plot').data"
        f".filter(t => t.name === '{REFERENCE}').map(t => t.customdata)"
    )
    assert star == [[0]]
    assert page.locator(".front-row").first.get_attribute("data-trial") == "0"
    # The win a newcomer should see: on some target, the front (the reference with it, as the
    # page plots them) spans at least 2x in latency.
    view = page.evaluate(f"async () => (await fetch('/jobs/{ids[0]}/view.json')).json()")["view"]
    spans = {}
    for target in base.targets:
        latencies = [p["latency_ms"][target] for p in [view["reference"], *view["front"]]]
        spans[target] = max(latencies) / min(latencies)
    assert max(spans.values()) >= 2.0, spans
    page.screenshot(path=str(SHOTS / "demo-2-job.png"), full_page=True)
    page.goto(f"{site['url']}/compare?jobs={','.join(ids)}", wait_until="networkidle")
    page.wait_for_function("() => document.getElementById('compare-plot').layout")
    assert page.input_value("#on-target") == base.targets[0]  # both jobs have every target
    label = page.evaluate("() => document.getElementById('compare-plot').layout.xaxis.title.text")
    assert label == f"latency (ms) on {base.targets[0]}"
    names = page.evaluate("() => document.getElementById('compare-plot').data.map(t => t.name)")
    assert [n for n in names if n.endswith(REFERENCE)] == [f"{i}: {REFERENCE}" for i in ids]
    page.screenshot(path=str(SHOTS / "demo-3-compare.png"), full_page=True)
    assert errors == []


def test_the_submit_form_offers_plugins_and_registered_datasets(
    site: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    """The installed example plugin is offered beside the zoo (labelled with its package), a
    dataset uploaded through the API is offered with "none" first, and the form puts the chosen
    one into the JobSpec as data.dataset; a queued job's page says where its model and data
    come from."""
    import subprocess
    import sys
    import zipfile

    import httpx

    folder = tmp_path / "digits"
    maker = ROOT / "examples/plugin/make_dataset.py"
    subprocess.run(
        [sys.executable, str(maker), str(folder), "--per-class", "3"], check=True, capture_output=True
    )
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*.png")):
            z.write(path, path.relative_to(folder).as_posix())
    r = httpx.post(
        f"{site['url']}/api/v1/datasets",
        params={"name": "my-digits"},
        content=archive.read_bytes(),
        headers={"Authorization": f"Bearer {site['token']}"},
    )
    assert r.status_code == 201, r.text
    dataset = r.json()
    page, errors = _open(browser, f"{site['url']}/submit")
    plugin = page.locator("#model option[value='example-resnet']")
    assert plugin.count() == 1 and "hwsearch-example-plugin" in plugin.inner_text()
    assert page.locator("#model optgroup[label='zoo (built in)'] option").count() == 7
    options = page.eval_on_selector_all("#dataset option", "os => os.map(o => [o.value, o.textContent])")
    assert options[0] == ["", "none: the model's own evaluation"]
    assert [o[0] for o in options[1:]] == [dataset["id"]] and "my-digits" in options[1][1]
    page.fill("#token", site["token"])
    page.select_option("#model", "example-resnet")
    page.select_option("#dataset", dataset["id"])
    page.fill("#targets", "zcu102")
    page.fill("#budget", "4")
    page.click("#submit")
    page.wait_for_selector("#result a")
    job_id = page.inner_text("#result a")
    spec = httpx.get(f"{site['url']}/api/v1/jobs/{job_id}").json()["spec"]
    assert spec["model"] == "example-resnet" and spec["data"]["dataset"] == dataset["id"]
    page.goto(f"{site['url']}/jobs/{job_id}", wait_until="networkidle")
    assert "plugin" in page.inner_text("#model-source")
    assert dataset["id"] in page.inner_text("#data-source")
    assert "split when the job starts" in page.inner_text("#data-source")
    # The model's own evaluation when none is chosen.
    page.goto(f"{site['url']}/jobs/{site['job']}", wait_until="networkidle")
    assert page.inner_text("#data-source") == "Data: the model's own evaluation."
    assert "zoo entry" in page.inner_text("#model-source")
    assert errors == []


def test_a_profile_in_progress_updates_in_place(site: dict[str, Any], browser: Any) -> None:
    """The targets page follows a profile being measured, as a job page follows its search: the
    tasks measured and the status change without a reload."""
    from service.store import Store

    store: Store = site["store"]
    device = store.register_device(
        name="board-live", target="zc706", runtime="onnxruntime", threads=1, info={}, owner="ui"
    )
    profile = store.create_profile(
        target="zc706", spec={"models": ["digits-cnn"], "plans_per_model": 3}, owner="ui"
    )
    # Claimed as the fit dispatcher would (the site's own queued profile goes first).
    while (claimed := store.claim_profile("tests")) is not None and claimed["id"] != profile["id"]:
        pass
    assert store.add_tasks(profile["id"], [{"model": "m", "plan": {}, "files": {}}] * 3, deadline_s=600)
    page, errors = _open(browser, f"{site['url']}/targets")
    page.evaluate("() => { window.notReloaded = true; }")
    row = f"tr[data-profile='{profile['id']}']"
    assert page.inner_text(f"{row} .profile-status") == "measuring"
    assert page.inner_text(f"{row} .profile-count") == "0/3"
    done = {
        "latency_ms": 1.0,
        "reference_ms": 2.0,
        "speedup": 2.0,
        "repeats": 3,
        "threads": 1,
        "runtime": "x",
    }
    for _ in range(2):
        task = store.lease_task(device["id"], 60)
        assert task is not None
        store.complete_task(task["id"], device["id"], task["lease_id"], done)
    page.wait_for_function(
        f"() => document.querySelector(\"{row} .profile-count\").textContent === '2/3'", timeout=15000
    )
    assert page.eval_on_selector(f"{row} progress", "p => p.value") == 2
    store.fail_profile(profile["id"], "stopped by the test")
    page.wait_for_function(
        f"() => document.querySelector(\"{row} .profile-status\").textContent === 'failed'", timeout=15000
    )
    assert "stopped by the test" in page.inner_text(f"{row} .profile-note")
    assert page.evaluate("() => window.notReloaded") is True
    assert errors == []
