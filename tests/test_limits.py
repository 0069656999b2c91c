"""Limits before work and names that become paths (issue 14, findings 6 and 8).

Each finding is reproduced and now refused twice: by ``JobSpec.model_validate`` / the catalogue
(the library), and by a real ``hwsearch serve`` (uvicorn, SQLite in a temporary directory),
where the bad request is a 422 naming the field and leaves nothing behind: no job is queued and
the data directory's file listing is unchanged. Findings:

- ``evaluations: null`` with ``wall_time_s`` 1e300, Infinity or NaN was accepted (Infinity was
  stored and later read back as malformed JSON);
- a 200,000-entry ``rank_fractions`` list was accepted;
- ``digits-cnn:<any text>`` passed validation and failed only in the worker;
- target names: ``..`` was accepted (a fit for it wrote ``data/ACTIVE`` at the data
  directory's root), a 300-character name was a 500, non-ASCII names were accepted.
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from latency_models import Catalogue, LatencyModelError, Target, get_target, list_targets
from search_spaces import (
    MAX_CHOICES,
    MAX_CONSTRAINTS,
    MAX_NAME_CHARS,
    MAX_PATTERNS,
    MAX_WALL_TIME_S,
    NAME_PATTERN,
    BadName,
    InputError,
    LayerKind,
    LayerSpec,
    Space,
    SpaceError,
    check_name,
    is_name,
)
from workers.search import JobSpec
from workers.search._spec import ZOO_ARGUMENTS, ZOO_MODELS

ROOT = Path(__file__).resolve().parents[1]
SPEC: dict[str, Any] = {
    "model": "digits-cnn",
    "targets": ["xeon-gold-6240"],
    "space": {"keep": [0.5, 0.75], "wbits": [4, 8]},
    "strategy": "random",
    "budget": {"evaluations": 6},
}
NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
BAD_NAMES = ["..", ".", "a/b", "a" * 300, "é", "", ".hidden", "a..b", "-x", "a b", "a\n", "a\\b", "x" * 65]
GOOD_NAMES = ["a", "a100", "my-board_v2.1", "Z.9", "x" * MAX_NAME_CHARS, "v1.", "0"]


def _errors(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(data)
    return [dict(e) for e in info.value.errors()]


def _locs(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(e["loc"]) for e in _errors(data)]


# ------------------------------------------------------------------------- budgets and numbers
@pytest.mark.parametrize("wall_time_s", [1e300, math.inf, -math.inf, math.nan, MAX_WALL_TIME_S + 1])
def test_an_unbounded_wall_time_is_refused(wall_time_s: float) -> None:
    errors = _errors({**SPEC, "budget": {"evaluations": None, "wall_time_s": wall_time_s}})
    assert [tuple(e["loc"]) for e in errors] == [("budget", "wall_time_s")]
    assert "finite" in errors[0]["msg"] or str(int(MAX_WALL_TIME_S)) in errors[0]["msg"]


def test_the_longest_wall_time_is_accepted_and_a_budget_still_ends() -> None:
    spec = JobSpec.model_validate({**SPEC, "budget": {"evaluations": None, "wall_time_s": MAX_WALL_TIME_S}})
    assert spec.budget.wall_time_s == MAX_WALL_TIME_S == 7 * 24 * 3600
    assert ("budget",) in _locs({**SPEC, "budget": {"evaluations": None, "wall_time_s": None}})


@pytest.mark.parametrize(
    "patch,loc",
    [
        ({"space": {"rank_fractions": [math.nan]}}, ("space", "rank_fractions", 0)),
        ({"space": {"keep": [0.5, math.inf]}}, ("space", "keep", 1)),
        ({"space": {"token_keep": [-math.inf]}}, ("space", "token_keep", 0)),
        (
            {"constraints": [{"metric": "latency_ms", "op": "<=", "value": math.nan}]},
            ("constraints", 0, "value"),
        ),
        ({"constraints": ["latency_ms<=1e999"]}, ("constraints", 0, "value")),  # overflows to inf
        ({"constraints": ["quality>=0.5", "dsp<=Infinity"]}, ("constraints",)),  # not a number at all
    ],
)
def test_every_float_refuses_nan_and_infinity(patch: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert loc in _locs({**SPEC, **patch})


# ------------------------------------------------------------------------------- list lengths
@pytest.mark.parametrize("knob", ["rank_fractions", "keep", "token_keep", "wbits", "abits"])
def test_a_knob_offers_at_most_max_choices(knob: str) -> None:
    value = 8 if knob.endswith("bits") else 0.5
    ok = JobSpec.model_validate({**SPEC, "space": {knob: [value] * MAX_CHOICES}})
    assert len(getattr(ok.space, knob)) == MAX_CHOICES
    errors = _errors({**SPEC, "space": {knob: [value] * 200_000}})
    assert [tuple(e["loc"]) for e in errors] == [("space", knob)]
    # The message names the length given and the cap.
    assert "200000" in errors[0]["msg"] and str(MAX_CHOICES) in errors[0]["msg"]


@pytest.mark.parametrize(
    "patch,loc",
    [
        ({"space": {"keep": [0.5], "include": ["conv*"] * (MAX_PATTERNS + 1)}}, ("space", "include")),
        ({"space": {"keep": [0.5], "exclude": ["x" * 201]}}, ("space", "exclude", 0)),
        ({"constraints": ["latency_ms<=5"] * (MAX_CONSTRAINTS + 1)}, ("constraints",)),
        ({"constraints": ["latency_ms<=" + "5" * 300]}, ("constraints",)),
        ({"targets": [f"t{i}" for i in range(9)]}, ("targets",)),
        ({"objectives": ["quality", "latency_ms"] * 3}, ("objectives",)),
        ({"strategy": "s" * 500}, ("strategy",)),
        ({"model": "m" * 500}, ("model",)),
    ],
)
def test_every_list_and_string_has_a_cap(patch: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert loc in _locs({**SPEC, **patch})


def test_space_build_caps_its_lists_too() -> None:
    layers = [LayerSpec("fc", LayerKind.LINEAR, 16, 16, prunable=True, decomposable=True)]
    with pytest.raises(
        SpaceError, match=rf"space\.rank_fractions: got '200000 items'; at most {MAX_CHOICES}"
    ):
        Space.build(layers, rank_fractions=[0.5] * 200_000)
    with pytest.raises(SpaceError, match=r"space\.include"):
        Space.build(layers, keep=[0.5], include=["*"] * (MAX_PATTERNS + 1))
    with pytest.raises(SpaceError, match=r"space\.layers\['fc'\]\.keep"):
        Space.from_dict({"layers": {"fc": {"keep": [1.0] * (MAX_CHOICES + 1)}}}, layers)
    assert Space.build(layers, rank_fractions=[0.5] * MAX_CHOICES).size == 2  # duplicates collapse


# ----------------------------------------------------------------------------- model arguments
@pytest.mark.parametrize(
    "model,words",
    [
        ("digits-cnn:garbage", ["digits-cnn", "takes no argument", "garbage"]),
        ("mobilenet-v2:", ["takes no argument"]),
        ("nasbench201:garbage", ["not a valid arch", "nasbench201:|"]),
        ("nasbench201:", ["not a valid arch"]),
        ("nasbench201:" + NB201_ARCH.replace("skip_connect", "max_pool"), ["not a valid arch"]),
        ("fbnet:k3", ["not a valid arch", "fbnet:skip-"]),
        ("nasbench201: " + NB201_ARCH, ["not a valid arch"]),  # no stray whitespace in stored ids
    ],
)
def test_model_arguments_are_checked_at_submission(model: str, words: list[str]) -> None:
    errors = _errors({**SPEC, "model": model})
    assert [tuple(e["loc"]) for e in errors] == [("model",)]
    for word in words:
        assert word in errors[0]["msg"]


def test_valid_model_arguments_are_accepted() -> None:
    for name, argument in ZOO_ARGUMENTS.items():
        assert JobSpec.model_validate({**SPEC, "model": f"{name}:{argument.example}"}).model.startswith(name)


def test_the_argument_table_matches_the_zoo_registry() -> None:
    from workers.zoo import create_model, list_models, model_class

    assert list(ZOO_MODELS) == list_models()
    for name in list_models():
        cls = model_class(name)
        if not cls.args:
            assert name not in ZOO_ARGUMENTS and cls.arg_pattern is None, name
            continue
        argument = ZOO_ARGUMENTS[name]
        assert (argument.keyword, argument.pattern) == (cls.args[0], cls.arg_pattern), name
        assert argument.example == getattr(cls, "default_arch", argument.example)
        assert re.fullmatch(argument.pattern, argument.example)
        assert create_model(f"{name}:{argument.example}").model_id == f"{name}:{argument.example}"


def _mutations(text: str, alphabet: str, rng: random.Random, n: int) -> Iterator[str]:
    for _ in range(n):
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(chars) + 1)
            action = rng.choice(("insert", "delete", "replace"))
            if action == "insert" or not chars:
                chars.insert(i, rng.choice(alphabet))
            elif action == "delete":
                del chars[min(i, len(chars) - 1)]
            else:
                chars[min(i, len(chars) - 1)] = rng.choice(alphabet)
        yield "".join(chars)


@pytest.mark.parametrize("name", sorted(ZOO_ARGUMENTS))
def test_each_argument_pattern_agrees_with_the_entry_parser(name: str) -> None:
    """The pattern the service checks and the parser the worker runs accept the same strings
    (the parser also forgives surrounding whitespace, which the service refuses)."""
    from workers.zoo import ZooError, fbnet, nasbench201

    module = {"nasbench201": nasbench201, "fbnet": fbnet}[name]
    vocabulary = module.OPS if name == "nasbench201" else module.KINDS
    rng = random.Random(14)
    canonical = []
    for _ in range(200):  # random valid architectures, written canonically
        if name == "nasbench201":
            canonical.append(
                module.format_arch(
                    tuple(tuple(rng.choice(vocabulary) for _ in range(k + 1)) for k in range(3))
                )
            )
        else:
            canonical.append(module.format_arch([rng.choice(vocabulary) for _ in range(module.N_BLOCKS)]))
    alphabet = "".join(sorted(set("".join(canonical)))) + " 9.é"
    pattern = re.compile(ZOO_ARGUMENTS[name].pattern)
    tried = accepted = 0
    for text in canonical + [m for c in canonical[:50] for m in _mutations(c, alphabet, rng, 40)]:
        try:
            module.parse_arch(text)
            parsed = True
        except ZooError:
            parsed = False
        matched = pattern.fullmatch(text) is not None
        assert matched == (parsed and text == text.strip()), text
        tried, accepted = tried + 1, accepted + matched
    assert tried > 2000 and 200 <= accepted < tried  # both sides of the boundary were exercised


def test_validating_a_spec_with_arguments_stays_torch_free() -> None:
    code = (
        "import sys\n"
        "from workers.search._spec import JobSpec, ZOO_ARGUMENTS\n"
        "for name, arg in ZOO_ARGUMENTS.items():\n"
        "    JobSpec.model_validate({'model': f'{name}:{arg.example}', 'targets': ['a100']})\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name", [*BAD_NAMES, None, 7, "ＡＢＣ", "a\u200bb", "x/../y"])
def test_check_name_refuses_unsafe_names(name: Any) -> None:
    assert not is_name(name)
    with pytest.raises(BadName) as info:
        check_name("target", name)
    assert isinstance(info.value, InputError) and info.value.field == "target"
    assert len(str(info.value)) < 400  # a 300-character name is summarised, not echoed


@pytest.mark.parametrize("name", GOOD_NAMES + sorted(list_targets()))
def test_check_name_accepts_plain_names(name: str) -> None:
    assert is_name(name) and check_name("target", name) == name
    assert re.fullmatch(NAME_PATTERN, name)


def test_the_name_pattern_reads_the_same_in_pydantic() -> None:
    """NAME_PATTERN goes into JSON Schema (and pydantic's Rust regex engine): no lookaround."""
    from pydantic import BaseModel, Field

    class M(BaseModel):
        name: str = Field(pattern=NAME_PATTERN)

    for name in GOOD_NAMES:
        assert M(name=name).name == name
    for name in BAD_NAMES:
        if len(name) <= MAX_NAME_CHARS:  # the length is checked apart
            with pytest.raises(ValidationError):
                M(name=name)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_target_definitions_and_specs_refuse_bad_names(name: str) -> None:
    data = get_target("raspi4").to_dict() | {"name": name}
    with pytest.raises(LatencyModelError, match=r"target\.name"):
        Target.from_dict(data)
    assert ("targets", 0) in _locs({**SPEC, "targets": [name]})


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "é", "a" * 300])
def test_the_catalogue_never_turns_a_bad_name_into_a_path(name: str, tmp_path: Path) -> None:
    cat = Catalogue(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for call in (
        lambda: cat.versions(name),
        lambda: cat.active_version(name),
        lambda: cat.activate(name, "v1"),
        lambda: cat.report(name, "v1"),
        lambda: cat.predictor(name),
        lambda: cat.save_predictor(name, None, {}),  # type: ignore[arg-type]
    ):
        with pytest.raises(LatencyModelError):
            call()
    bad = Target(name, "cpu", "", {8: 1e9}, 1.0, 0.0, 0.0, 0.5)  # built directly: no from_dict
    with pytest.raises(LatencyModelError):
        cat.add_target(bad)
    assert sorted(tmp_path.rglob("*")) == before == []


def test_a_stored_target_with_a_bad_name_is_skipped_not_fatal(tmp_path: Path) -> None:
    folder = tmp_path / "targets"
    folder.mkdir()
    good = get_target("raspi4").to_dict() | {"name": "lab-ok"}
    (folder / "lab-ok.json").write_text(json.dumps(good))
    (folder / "é.json").write_text(json.dumps(good | {"name": "é"}))  # stored before names were checked
    assert Catalogue(tmp_path).load_targets() == ["lab-ok"]


# ----------------------------------------------------------------------- the real service
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, serve: Any) -> Iterator[tuple[httpx.Client, Path]]:
    from service.app import create_app
    from service.settings import Settings

    tmp = tmp_path_factory.mktemp("limits")
    data = tmp / "data"
    env = {"HWSEARCH_DATA_DIR": str(data), "DATABASE_URL": f"sqlite:///{tmp / 'hwsearch.db'}"}
    app = create_app(Settings.from_env(env), dispatcher=False)
    with serve(app) as url:
        token = app.state.store.create_token("limits")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            yield client, data


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _post_raw(client: httpx.Client, path: str, text: str) -> httpx.Response:
    return client.post(path, content=text, headers={"Content-Type": "application/json"})


def _spec_text(**budget_or_space: str) -> str:
    """A spec as raw JSON text, with ``budget``/``space`` values written verbatim (``Infinity``)."""
    parts = {k: v for k, v in SPEC.items() if k not in budget_or_space}
    body = json.dumps(parts)[:-1]
    return body + "".join(f', "{k}": {v}' for k, v in budget_or_space.items()) + "}"


@pytest.mark.parametrize(
    "raw,loc",
    [
        ('{"evaluations": null, "wall_time_s": 1e300}', ["body", "budget", "wall_time_s"]),
        ('{"evaluations": null, "wall_time_s": Infinity}', ["body", "budget", "wall_time_s"]),
        ('{"evaluations": null, "wall_time_s": -Infinity}', ["body", "budget", "wall_time_s"]),
        ('{"evaluations": null, "wall_time_s": NaN}', ["body", "budget", "wall_time_s"]),
    ],
)
def test_the_api_refuses_unbounded_budgets(live: tuple[httpx.Client, Path], raw: str, loc: list[Any]) -> None:
    client, data = live
    before = _listing(data)
    assert json.dumps(float("inf")) == "Infinity"  # what a Python client sends
    r = _post_raw(client, "/api/v1/jobs", _spec_text(budget=raw))
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["detail"]]
    assert client.get("/api/v1/jobs").json()["total"] == 0
    assert _listing(data) == before


def test_the_api_refuses_huge_lists_bad_numbers_and_bad_model_arguments(
    live: tuple[httpx.Client, Path],
) -> None:
    client, data = live
    before = _listing(data)
    cases = [
        (
            _spec_text(space=json.dumps({"rank_fractions": [0.5] * 200_000})),
            ["body", "space", "rank_fractions"],
        ),
        (_spec_text(space='{"keep": [NaN]}'), ["body", "space", "keep", 0]),
        (json.dumps({**SPEC, "model": "digits-cnn:garbage"}), ["body", "model"]),
        (json.dumps({**SPEC, "model": "nasbench201:|bogus~0|"}), ["body", "model"]),
        (json.dumps({**SPEC, "constraints": ["latency_ms<=1e999"]}), ["body", "constraints", 0, "value"]),
    ]
    for text, loc in cases:
        r = _post_raw(client, "/api/v1/jobs", text)
        assert r.status_code == 422, r.text[:500]
        assert loc in [e["loc"] for e in r.json()["detail"]], r.text[:500]
    assert "200000" in _post_raw(client, "/api/v1/jobs", cases[0][0]).text  # the length given
    assert client.get("/api/v1/jobs").json()["total"] == 0
    assert _listing(data) == before
    # The same specs within the limits are queued (the refusals above are not blanket ones).
    ok = {**SPEC, "model": f"nasbench201:{NB201_ARCH}", "budget": {"evaluations": None, "wall_time_s": 3600}}
    assert client.post("/api/v1/jobs", json=ok).status_code == 201
    assert client.get("/api/v1/jobs").json()["total"] == 1


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a" * 300, "é", ".hidden", "a..b"])
def test_the_api_refuses_bad_target_names(live: tuple[httpx.Client, Path], name: str) -> None:
    client, data = live
    before = _listing(data)
    spec = get_target("raspi4").to_dict() | {"name": name}
    created = client.post("/api/v1/targets", json=spec)
    assert created.status_code == 422, created.text
    assert created.json()["detail"][0]["loc"] == ["body", "target.name"]
    table = "model,latency_ms\ndigits-cnn,1\ndigits-cnn,2\ndigits-cnn,3\n"
    # Percent-encoded, so that no client or proxy resolves '.' and '..' before the server sees them.
    path = "/api/v1/targets/" + "".join(f"%{b:02X}" for b in name.encode()) + "/measurements"
    uploaded = client.post(path, params={"family": "cpu"}, content=table)
    if "/" in name:  # the server decodes it into two path segments: no route has that shape
        assert uploaded.status_code == 404, uploaded.text
    else:
        assert uploaded.status_code == 422, uploaded.text
        assert uploaded.json()["detail"][0]["loc"] == ["path", "name"]
    assert name not in {t["name"] for t in client.get("/api/v1/targets").json()}
    assert _listing(data) == before  # no target file, no upload, no ACTIVE anywhere


def test_the_api_accepts_a_plain_target_name(live: tuple[httpx.Client, Path]) -> None:
    client, data = live
    spec = get_target("raspi4").to_dict() | {"name": "lab-limits.v1"}
    assert client.post("/api/v1/targets", json=spec).status_code == 201
    assert (data / "targets" / "lab-limits.v1.json").is_file()


def test_the_api_refuses_bad_schedule_names(live: tuple[httpx.Client, Path]) -> None:
    client, _ = live
    body = {"name": "nightly", "cron": "0 2 * * *", "timezone": "UTC", "spec": SPEC}
    for name in ["..", "a/b", "é", "a" * 300, "nightly run"]:
        r = client.post("/api/v1/schedules", json={**body, "name": name})
        assert r.status_code == 422, r.text
        assert [e["loc"] for e in r.json()["detail"]] == [["body", "name"]]
    created = client.post("/api/v1/schedules", json=body)
    assert created.status_code == 201, created.text
    patched = client.patch(f"/api/v1/schedules/{created.json()['id']}", json={"name": ".."})
    assert patched.status_code == 422 and patched.json()["detail"][0]["loc"] == ["body", "name"]
    openapi = client.get("/openapi.json").json()
    assert openapi["components"]["schemas"]["ScheduleIn"]["properties"]["name"]["pattern"] == NAME_PATTERN
