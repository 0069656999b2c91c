"""Your model, your data, through the service (issue 16): registered datasets over REST (a real
ImageFolder zip uploaded, listed, read, deleted by its owner only; every bad upload refused with
nothing left behind), the settings that decide which import paths and files a job may name,
``GET /api/v1/models`` (the zoo and the installed example plugin, nothing imported), and, end to
end, the example plugin searched by ``hwsearch serve`` on its embedded Ray, judged on a dataset
uploaded as a zip, its job page rendered in chromium.

Against real servers (uvicorn on a free port, ``hwsearch serve`` in its own process), SQLite,
and the store's dataset queries on PostgreSQL too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import postgres_url
from processes import free_port, hwsearch_serve, wait_for

from service.app import create_app
from service.db import make_engine, migrate
from service.settings import Settings, SettingsError
from service.store import Conflict, NotFound, Store

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PLUGIN = "example-resnet"
PLUGIN_PACKAGE = "hwsearch-example-plugin"
#: The dataset zips may be at most this big here (the refused one is bigger).
MAX_DATASET_BYTES = 200_000
#: Far below a dataset zip: dataset uploads have their own cap, not the JSON bodies'.
MAX_BODY_BYTES = 8_000
SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": ["xeon-gold-6240"],
    "space": {"keep": [0.5, 0.75]},
    "strategy": "random",
    "budget": {"evaluations": 4},
}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(folder).as_posix())
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example plugin's dataset (60 real 8×8 digit PNGs, 6 per class) as a folder and a zip."""
    tmp = tmp_path_factory.mktemp("digits")
    folder = tmp / "digits"
    subprocess.run(
        [sys.executable, str(ROOT / "examples/plugin/make_dataset.py"), str(folder), "--per-class", "6"],
        check=True,
        capture_output=True,
    )
    return {"folder": folder, "zip": _zip_folder(folder, tmp / "digits.zip")}


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "HWSEARCH_DATA_DIR": str(data_dir),
        "DATABASE_URL": f"sqlite:///{data_dir / 'hwsearch.db'}",
        "HWSEARCH_MAX_DATASET_BYTES": str(MAX_DATASET_BYTES),
        "HWSEARCH_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        **extra,
    }


@pytest.fixture()
def api(tmp_path: Path, serve: Any) -> Iterator[dict[str, Any]]:
    """A served app (no dispatcher) and tokens: the first (admin), alice's and bob's."""
    data_dir = tmp_path / "data"
    app = create_app(Settings.from_env(_env(data_dir)), dispatcher=False)
    with serve(app) as url:
        store: Store = app.state.store
        tokens = {
            "admin": store.create_token("ops"),
            "alice": store.create_token("alice", owner="alice"),
            "bob": store.create_token("bob", owner="bob"),
        }
        with httpx.Client(base_url=url, timeout=60) as client:
            yield {"client": client, "store": store, "tokens": tokens, "data_dir": data_dir, "url": url}


def _upload(
    api: dict[str, Any], body: Any, who: str = "alice", name: str | None = "digits"
) -> httpx.Response:
    params = {"name": name} if name is not None else {}
    return api["client"].post(
        "/api/v1/datasets", params=params, content=body, headers=_auth(api["tokens"][who])
    )


def _stored(data_dir: Path) -> list[str]:
    """Everything under <data dir>/datasets (hidden staging folders included) and uploads/."""
    found = []
    for sub in ("datasets", "uploads"):
        folder = data_dir / sub
        if folder.exists():
            found += [f"{sub}/{p.relative_to(folder)}" for p in folder.iterdir()]
    return sorted(found)


# ------------------------------------------------------------------------------- datasets
def test_a_dataset_is_uploaded_listed_read_and_deleted_by_its_owner(
    api: dict[str, Any], digits: dict[str, Path]
) -> None:
    client, data_dir = api["client"], api["data_dir"]
    raw = digits["zip"].read_bytes()
    assert MAX_BODY_BYTES < len(raw) < MAX_DATASET_BYTES  # over the JSON cap: the dataset cap applies
    r = _upload(api, raw)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["owner"] == "alice" and ds["name"] == "digits" and ds["kind"] == "image_labels"
    assert ds["n_examples"] == 60 and ds["n_classes"] == 10 and ds["files"] == 60
    assert ds["classes"] == [str(i) for i in range(10)]
    assert ds["class_counts"] == {str(i): 6 for i in range(10)}
    assert ds["zip_sha256"] == hashlib.sha256(raw).hexdigest()
    assert ds["size_bytes"] == sum(p.stat().st_size for p in digits["folder"].rglob("*.png"))
    # Stored whole under the data directory; the uploaded zip is gone.
    manifest = json.loads((data_dir / "datasets" / ds["id"] / "dataset.json").read_text())
    assert manifest["id"] == ds["id"] and manifest["owner"] == "alice"
    assert len(list((data_dir / "datasets" / ds["id"]).rglob("*.png"))) == 60
    assert _stored(data_dir) == [f"datasets/{ds['id']}"]
    # A streamed (chunked) upload too, and without a name: the id names it.
    chunks = (raw[i : i + 4096] for i in range(0, len(raw), 4096))
    r = _upload(api, chunks, who="bob", name=None)
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["name"] == second["id"] and second["owner"] == "bob"
    listed = client.get("/api/v1/datasets").json()
    assert listed["total"] == 2 and [d["id"] for d in listed["items"]] == [second["id"], ds["id"]]
    assert client.get("/api/v1/datasets", params={"owner": "alice"}).json()["total"] == 1
    assert client.get(f"/api/v1/datasets/{ds['id']}").json() == ds
    assert client.get("/api/v1/datasets/nope").status_code == 404
    # Only its owner (or an admin) deletes it; a queued job that uses it keeps it (409 naming it).
    r = client.delete(f"/api/v1/datasets/{ds['id']}", headers=_auth(api["tokens"]["bob"]))
    assert r.status_code == 403 and "alice" in r.json()["detail"]
    job = client.post(
        "/api/v1/jobs", json={**SPEC, "data": {"dataset": ds["id"]}}, headers=_auth(api["tokens"]["bob"])
    )
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["data"]["dataset"] == ds["id"]
    r = client.delete(f"/api/v1/datasets/{ds['id']}", headers=_auth(api["tokens"]["alice"]))
    assert r.status_code == 409 and job.json()["id"] in r.json()["detail"]
    assert (data_dir / "datasets" / ds["id"] / "dataset.json").exists()
    client.post(f"/api/v1/jobs/{job.json()['id']}/cancel", headers=_auth(api["tokens"]["bob"]))
    r = client.delete(f"/api/v1/datasets/{ds['id']}", headers=_auth(api["tokens"]["alice"]))
    assert r.status_code == 204, r.text
    assert client.get(f"/api/v1/datasets/{ds['id']}").status_code == 404
    assert _stored(data_dir) == [f"datasets/{second['id']}"]  # its files gone, nothing left over
    r = client.delete(f"/api/v1/datasets/{second['id']}", headers=_auth(api["tokens"]["admin"]))
    assert r.status_code == 204 and _stored(data_dir) == []
    assert client.get("/api/v1/datasets").json()["total"] == 0
    # Writing needs a token; reading does not (reads are open by default).
    assert client.post("/api/v1/datasets", content=raw).status_code == 401


def _zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _bad_uploads(digits: dict[str, Path]) -> dict[str, tuple[bytes, str]]:
    """Each refused upload and a piece of the message that says why."""
    pngs = {
        p.relative_to(digits["folder"]).as_posix(): p.read_bytes() for p in digits["folder"].rglob("*.png")
    }
    # In its folder (a zip of one class folder alone is a flat folder of unlabelled images).
    one_class = {f"digits/{k}": v for k, v in pngs.items() if k.startswith("3/")}
    corrupt = {**pngs, "7/broken.png": b"\x89PNG\r\n\x1a\n this is not an image"}
    return {
        "zip slip": (
            _zip_of({**pngs, "../evil.png": next(iter(pngs.values()))}),
            "leaves the dataset folder",
        ),
        "one class": (_zip_of(one_class), "two"),
        "corrupt image": (_zip_of(corrupt), "broken.png"),
        "empty zip": (_zip_of({}), "holds no files"),
        "not a zip": (b"PK this is not a zip at all" * 10, "not a readable zip"),
    }


@pytest.mark.parametrize("case", ["zip slip", "one class", "corrupt image", "empty zip", "not a zip"])
def test_a_bad_upload_is_refused_and_leaves_nothing(
    api: dict[str, Any], digits: dict[str, Path], case: str
) -> None:
    body, why = _bad_uploads(digits)[case]
    r = _upload(api, body)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body"] and why in error["msg"], error
    assert ".zip" not in error["msg"] or "digits.zip" in error["msg"]  # named as the client knows it
    assert _stored(api["data_dir"]) == []  # no dataset, no staging folder, no uploaded zip
    assert api["client"].get("/api/v1/datasets").json()["total"] == 0  # no row


def test_an_upload_over_the_limit_is_413_and_leaves_nothing(api: dict[str, Any]) -> None:
    big = _zip_of({"a/x.png": os.urandom(MAX_DATASET_BYTES), "b/y.png": b"y"})
    r = _upload(api, big)  # Content-Length says it: refused before the body is read
    assert r.status_code == 413 and "HWSEARCH_MAX_DATASET_BYTES" in r.text, r.text
    chunks = (big[i : i + 16384] for i in range(0, len(big), 16384))
    r = _upload(api, chunks)  # chunked: refused as it streams past the limit
    assert r.status_code == 413, r.text
    assert _stored(api["data_dir"]) == []
    assert api["client"].get("/api/v1/datasets").json()["total"] == 0


def test_a_bad_name_is_422_before_the_body_is_read(api: dict[str, Any], digits: dict[str, Path]) -> None:
    r = _upload(api, digits["zip"].read_bytes(), name="../my data")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "name"], r.text
    assert _stored(api["data_dir"]) == []


def test_a_job_naming_an_unknown_dataset_is_422(api: dict[str, Any]) -> None:
    client, token = api["client"], api["tokens"]["alice"]
    r = client.post("/api/v1/jobs", json={**SPEC, "data": {"dataset": "nosuchdataset"}}, headers=_auth(token))
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "data", "dataset"] and "nosuchdataset" in error["msg"]
    schedule = {
        "name": "nightly",
        "cron": "0 2 * * *",
        "timezone": "UTC",
        "spec": {**SPEC, "data": {"dataset": "x1"}},
    }
    r = client.post("/api/v1/schedules", json=schedule, headers=_auth(token))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "spec", "data", "dataset"], (
        r.text
    )
    assert client.get("/api/v1/jobs").json()["total"] == 0 and client.get("/api/v1/schedules").json() == []


# ------------------------------------------------------------------------------- settings
def test_import_paths_and_files_are_refused_unless_the_settings_allow_them(
    tmp_path: Path, serve: Any, digits: dict[str, Path]
) -> None:
    factory = "hwsearch_example_plugin.model:trained_resnet"
    imported = {**SPEC, "model": factory, "input_shape": [1, 1, 8, 8]}
    by_path = {**SPEC, "model": PLUGIN, "data": {"path": str(digits["folder"])}}
    # Defaults: no import path, no file.
    closed = create_app(Settings.from_env(_env(tmp_path / "closed")), dispatcher=False)
    with serve(closed) as url:
        token = closed.state.store.create_token("ops")
        r = httpx.post(f"{url}/api/v1/jobs", json=imported, headers=_auth(token))
        assert r.status_code == 422, r.text
        [error] = r.json()["detail"]
        assert error["loc"] == ["body", "model"] and "HWSEARCH_MODEL_MODULES" in error["msg"]
        r = httpx.post(f"{url}/api/v1/jobs", json=by_path, headers=_auth(token))
        assert r.status_code == 422, r.text
        [error] = r.json()["detail"]
        assert error["loc"] == ["body", "data", "path"] and "HWSEARCH_FILE_ROOTS" in error["msg"]
        weights = {**SPEC, "model": PLUGIN, "weights": "/etc/passwd"}
        r = httpx.post(f"{url}/api/v1/jobs", json=weights, headers=_auth(token))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "weights"], r.text
        assert httpx.get(f"{url}/api/v1/jobs").json()["total"] == 0
    # Listed: the package's import paths and the folder's files are accepted.
    env = _env(
        tmp_path / "open",
        HWSEARCH_MODEL_MODULES="hwsearch_example_plugin, mypkg",
        HWSEARCH_FILE_ROOTS=f"/nonexistent{os.pathsep}{digits['folder'].parent}",
    )
    opened = create_app(Settings.from_env(env), dispatcher=False)
    with serve(opened) as url:
        token = opened.state.store.create_token("ops")
        for spec in (imported, by_path):
            r = httpx.post(f"{url}/api/v1/jobs", json=spec, headers=_auth(token))
            assert r.status_code == 201, r.text
        outside = {**by_path, "data": {"path": "/etc"}}
        r = httpx.post(f"{url}/api/v1/jobs", json=outside, headers=_auth(token))
        assert r.status_code == 422 and "HWSEARCH_FILE_ROOTS" in r.text, r.text
        sneaky = {**by_path, "data": {"path": f"{digits['folder']}/../../../etc"}}
        assert httpx.post(f"{url}/api/v1/jobs", json=sneaky, headers=_auth(token)).status_code == 422
        other = {**imported, "model": "otherpkg.nets:build"}
        r = httpx.post(f"{url}/api/v1/jobs", json=other, headers=_auth(token))
        assert r.status_code == 422 and "HWSEARCH_MODEL_MODULES" in r.text, r.text


def test_the_new_settings_are_checked_at_start_up(tmp_path: Path) -> None:
    base = {"HWSEARCH_DATA_DIR": str(tmp_path)}
    for variable, value in [
        ("HWSEARCH_MODEL_MODULES", "mypkg.nets"),
        ("HWSEARCH_MODEL_MODULES", "my-pkg"),
        ("HWSEARCH_FILE_ROOTS", "relative/folder"),
        ("HWSEARCH_FILE_ROOTS", "/srv/../etc"),
        ("HWSEARCH_MAX_DATASET_BYTES", "0"),
        ("HWSEARCH_MAX_DATASET_BYTES", "lots"),
    ]:
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env({**base, variable: value})
    s = Settings.from_env(
        {
            **base,
            "HWSEARCH_MODEL_MODULES": "a, b,,a",
            "HWSEARCH_FILE_ROOTS": f"/srv/x/{os.pathsep}/data,/srv/x",
        }
    )
    assert s.model_modules == ("a", "b") and s.file_roots == ("/srv/x", "/data")
    default = Settings.from_env(base)
    assert default.model_modules == () and default.file_roots == ()
    assert default.max_dataset_bytes == 512 * 1024 * 1024


# ------------------------------------------------------------------------------- models
def test_models_lists_the_zoo_and_the_installed_plugin(api: dict[str, Any]) -> None:
    from workers.model_refs import ZOO_MODELS

    items = api["client"].get("/api/v1/models").json()["items"]
    zoo = [m for m in items if m["source"] == "zoo"]
    assert [m["name"] for m in zoo] == list(ZOO_MODELS) and len(zoo) == 7
    assert all(m["package"] == "hwsearch" and m["task"] and m["metric"] and m["description"] for m in zoo)
    assert next(m for m in zoo if m["name"] == "digits-cnn")["metric"] == "top1_accuracy"
    [plugin] = [m for m in items if m["name"] == PLUGIN]
    assert plugin["source"] == "plugin" and plugin["package"] == PLUGIN_PACKAGE
    assert plugin["version"] == "0.1.0" and plugin["target"] == "hwsearch_example_plugin.model:ExampleResNet"
    assert plugin["error"] is None and plugin["task"] is None


def test_the_zoo_table_of_the_api_is_the_registrys() -> None:
    from service.api.models import zoo_info
    from workers.model_refs import ZOO_MODELS
    from workers.zoo import list_models, model_class

    expected = {
        name: {
            "task": model_class(name).task,
            "metric": model_class(name).metric,
            "description": model_class(name).description,
        }
        for name in list_models()
    }
    assert zoo_info() == expected, "regenerate service/api/zoo_models.json from workers.zoo"
    assert sorted(ZOO_MODELS) == sorted(expected)


def test_listing_models_and_checking_uploads_import_neither_torch_nor_ray(digits: dict[str, Path]) -> None:
    code = f"""
import sys, tempfile
from service.api.models import list_models
from workers.datasets import register_dataset_zip
assert any(m["name"] == {PLUGIN!r} for m in list_models())
register_dataset_zip({str(digits["zip"])!r}, tempfile.mkdtemp(), "d1", name="d", max_bytes=10**8)
print(",".join(m for m in ("torch", "ray") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------- storage
@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hwsearch.db'}"
    else:
        yield from postgres_url()


@pytest.fixture()
def store(database_url: str) -> Iterator[Store]:
    engine = make_engine(database_url)
    migrate(engine)
    yield Store(engine)
    engine.dispose()


def _manifest(dataset_id: str) -> dict[str, Any]:
    return {
        "id": dataset_id,
        "name": f"n-{dataset_id}",
        "kind": "image_labels",
        "n_examples": 4,
        "n_classes": 2,
        "classes": ["a", "b"],
        "class_counts": {"a": 2, "b": 2},
        "files": 4,
        "size_bytes": 3 * 2**32,  # over 32 bits: a big dataset's size fits
        "zip_sha256": "0" * 64,
        "content": "content",
    }


def test_the_store_keeps_datasets_and_finds_the_jobs_using_them(store: Store) -> None:
    first = store.create_dataset(_manifest("d1"), owner="alice")
    store.create_dataset(_manifest("d10"), owner="bob")
    assert first["size_bytes"] == 3 * 2**32 and "content" not in first
    assert store.get_dataset("d1") == first
    with pytest.raises(NotFound):
        store.get_dataset("d2")
    items, total = store.list_datasets()
    assert total == 2 and [d["id"] for d in items] == ["d10", "d1"]  # newest first
    assert [d["id"] for d in store.list_datasets(owner="alice")[0]] == ["d1"]
    # d10's job mentions "d1" in its text but uses d10; a finished job does not hold d1.
    uses_d10 = store.create_job({**SPEC, "data": {"dataset": "d10"}})
    done = store.create_job({**SPEC, "data": {"dataset": "d1"}})
    store.set_status(done["id"], "succeeded")
    assert store.dataset_users("d1") == [] and store.dataset_users("d10") == [uses_d10["id"]]
    running = store.create_job({**SPEC, "data": {"dataset": "d1"}})
    assert store.claim("w") is not None  # the oldest queued: uses_d10
    assert store.claim("w") is not None  # then running's
    assert store.get_job(running["id"])["status"] == "running"
    assert store.dataset_users("d1") == [running["id"]]
    with pytest.raises(Conflict, match=running["id"]):
        store.delete_dataset("d1")
    store.set_status(running["id"], "failed")
    store.delete_dataset("d1")
    with pytest.raises(NotFound):
        store.delete_dataset("d1")
    assert store.list_datasets()[1] == 1


def test_the_migration_matches_the_models_and_goes_down_and_up(tmp_path: Path) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext

    from service.db import MIGRATIONS, Base

    engine = make_engine(f"sqlite:///{tmp_path / 'hwsearch.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        command.downgrade(config, "0005")
        command.upgrade(config, "head")
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in diffs if "datasets" in repr(d)] == []
    engine.dispose()


# ------------------------------------------------------------------------------- end to end
def test_the_example_plugin_is_searched_on_an_uploaded_dataset_and_its_page_shows_both(
    tmp_path: Path, digits: dict[str, Path]
) -> None:
    """``hwsearch serve`` (SQLite, its embedded Ray): the plugin's digits uploaded as a zip, a
    job of the plugin judged on them, run to its end; its trials carry top-1 accuracy on the
    evaluation split with n and a 95% interval, its progress the plugin's package and the
    dataset; its page, in chromium, shows the package, the dataset and the split."""
    data_dir = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data_dir / 'hwsearch.db'}")
    migrate(engine)
    token = Store(engine).create_token("alice", owner="alice")
    engine.dispose()
    env = _env(data_dir, HWSEARCH_CACHE_DIR=str(tmp_path / "cache"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with hwsearch_serve(env, log, port), httpx.Client(base_url=base, timeout=60) as client:
        wait_for(lambda: client.get("/healthz").status_code == 200, 120, "the service", log)
        r = client.post(
            "/api/v1/datasets",
            params={"name": "digits"},
            content=digits["zip"].read_bytes(),
            headers=_auth(token),
        )
        assert r.status_code == 201, r.text
        dataset = r.json()
        spec = {
            **SPEC,
            "model": PLUGIN,
            "data": {"dataset": dataset["id"]},
            "budget": {"evaluations": 4},
            "concurrency": 1,
            # The recovery stage on labelled data: distillation plus the labels' cross-entropy.
            "recovery": {"finetune": {"plans": 1, "steps": 20, "lr": 1e-3, "batch": 8, "loss": "kd+ce"}},
        }
        r = client.post("/api/v1/jobs", json=spec, headers=_auth(token))
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "exhausted", "failed", "cancelled") else None

        job = wait_for(finished, 420, "the job", log)
        assert job["status"] == "succeeded", job
        source, data = job["progress"]["source"], job["progress"]["data"]
        assert source["kind"] == "plugin" and source["name"] == PLUGIN
        assert source["package"] == PLUGIN_PACKAGE and source["version"] == "0.1.0"
        assert data["dataset"] == dataset["id"] and data["kind"] == "image_labels"
        assert data["n_calibration"] + data["n_evaluation"] == 60 and data["n_calibration"] > 0
        trials = client.get(f"/api/v1/jobs/{job_id}/trials").json()["items"]
        assert len(trials) == 4 and all(t["status"] == "ok" for t in trials), trials
        for t in trials:
            assert t["quality_metric"] == "top1_accuracy"
            detail = t["quality_detail"]
            assert detail["n"] == data["n_evaluation"]
            assert 0 <= detail["low"] <= t["quality"] <= detail["high"] <= 1
        reference = next(t for t in trials if t["number"] == 0)
        assert reference["quality"] > 0.5  # the trained plugin recognises the digits
        # Every compressed plan was calibrated on the calibration split before it was scored.
        for t in trials:
            if t["number"] > 0:
                assert t["calibration"]["how"].startswith(
                    f"calibrated on {data['n_calibration']} examples of the calibration split"
                ), t["calibration"]
        (recovered,) = [t for t in trials if t["recovered"] is not None]
        record = recovered["recovered"]
        assert record["steps"] == 20 and record["loss"] == "kd+ce" and 0 <= record["quality"] <= 1
        assert record["quality_detail"]["n"] == data["n_evaluation"]
        assert (data_dir / record["weights"]).exists()
        front = client.get(f"/api/v1/jobs/{job_id}/front").json()
        assert recovered["number"] in front["recovered_trials"]
        r = client.get(f"/api/v1/jobs/{job_id}/trials/{recovered['number']}/model", timeout=300)
        assert r.status_code == 200, r.text
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            assert "recovered: 20 steps" in z.read("README.md").decode()
            assert json.loads(z.read("trial.json"))["recovered"]["weights"] == record["weights"]
        # A trial's compressed model is rebuilt from the job's whole spec: the plugin, recorded.
        compressed = next(t for t in trials if t["number"] > 0)
        r = client.get(f"/api/v1/jobs/{job_id}/trials/{compressed['number']}/model", timeout=300)
        assert r.status_code == 200, r.text
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            recorded = json.loads(z.read("source.json"))
            # The plugin's compressed model as ONNX too, checked against torch when it was built.
            check = json.loads(z.read("onnx.json"))
            assert "model.onnx" in z.namelist() and check["max_abs_error"] <= check["tolerance"], check
        assert recorded["kind"] == "plugin" and recorded["package"] == PLUGIN_PACKAGE
        _check_job_page(base, job_id, dataset["id"], data)
        _search_through_the_cli(base, token, digits["folder"], tmp_path)


def _search_through_the_cli(base: str, token: str, folder: Path, tmp_path: Path) -> None:
    """The same, as a user types it: the folder added with `hwsearch dataset add` (zipped and
    streamed by the CLI), the plugin searched on it with `hwsearch submit`, followed to its end."""
    hwsearch = str(Path(sys.executable).with_name("hwsearch"))
    env = {**os.environ, "HWSEARCH_URL": base, "HWSEARCH_TOKEN": token}
    added = subprocess.run(
        [hwsearch, "dataset", "add", str(folder), "--name", "digits-cli", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    dataset = json.loads(added.stdout)
    assert dataset["n_examples"] == 60 and dataset["n_classes"] == 10
    search = ["--target", "xeon-gold-6240", "--keep", "0.5,0.75", "--strategy", "random", "--budget", "3"]
    submitted = subprocess.run(
        [
            hwsearch,
            "submit",
            "--model",
            PLUGIN,
            "--data",
            dataset["id"],
            *search,
            "--concurrency",
            "1",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    job = json.loads(submitted.stdout[submitted.stdout.index("{") :])
    assert job["status"] == "succeeded" and job["evaluations"] == 3, job
    assert job["progress"]["source"]["package"] == PLUGIN_PACKAGE
    assert job["progress"]["data"]["dataset"] == dataset["id"]


def _check_job_page(base: str, job_id: str, dataset_id: str, data: dict[str, Any]) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/jobs/{job_id}", wait_until="networkidle")
        page.wait_for_function("() => window.hwsearchPainted")
        model_line = page.inner_text("#model-source")
        assert PLUGIN in model_line and PLUGIN_PACKAGE in model_line and "0.1.0" in model_line, model_line
        data_line = page.inner_text("#data-source")
        assert dataset_id in data_line and "image_labels" in data_line, data_line
        split = f"{data['n_calibration']} calibration / {data['n_evaluation']} evaluation"
        assert page.inner_text("#data-split") == split
        # Quality with its 95% interval, n in the header.
        assert f"n={data['n_evaluation']}" in page.inner_text("#front-head")
        assert page.locator(".quality-interval").count() >= 1
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "job-plugin-dataset.png"), full_page=True)
        assert errors == []
        browser.close()
