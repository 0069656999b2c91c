"""A user's own models and data, through the one path every job takes (``job_entry``).

- A timm-style ViT written in a file of the user's (fused qkv, the softmax's dropout, a CLS
  token), never seen by hwsearch: its transformer blocks offer the token keep knob through the
  ``TOKEN_BLOCKS`` adapter beside its factory, and a search of it ends on a local Ray.
- The example plugin judged on an ImageFolder: the split, n and 95% interval of each quality,
  the model source and the data recorded in the job's progress.
- JobSpec refuses every bad reference before a job exists; a dataset with more classes than the
  model has outputs fails the job before any trial, naming the field.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from search_spaces import Choice, LayerKind, Plan, Space
from workers.search import JobSpec, MemorySink, SearchError, run_search
from workers.search._entry import job_entry
from workers.search._problem import Problem
from workers.zoo import model_source, prepare

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"

USER_VIT = textwrap.dedent(
    '''
    """A timm-style ViT of the user's own: hwsearch's classes are not used."""
    import torch
    from torch import nn

    TOKEN_BLOCKS = {"blocks": "blocks.*", "probabilities": "attn.attn_drop", "cls_token": True}


    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.scale = (dim // heads) ** -0.5
            self.qkv = nn.Linear(dim, dim * 3)
            self.attn_drop = nn.Dropout(0.0)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
            return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


    class Block(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim)
            self.attn = Attention(dim, heads)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))


    class TinyViT(nn.Module):
        def __init__(self, dim=32, depth=3, heads=4, classes=10):
            super().__init__()
            self.patch = nn.Linear(4, dim)  # 2x2 patches of an 8x8 grey image: 16 tokens
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            b = x.shape[0]
            patches = x.reshape(b, 1, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, 16, 4)
            x = torch.cat([self.cls.expand(b, -1, -1), self.patch(patches)], dim=1) + self.pos
            x = self.blocks(x)
            return self.head(self.norm(x[:, 0]))


    def build(dim=32):
        torch.manual_seed(0)
        return TinyViT(dim=dim).eval()


    def agreement(model):
        """Top-1 agreement with the uncompressed network on 64 fixed random inputs."""
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, 1, 8, 8, generator=g)
        with torch.no_grad():
            return float((model(x).argmax(1) == build()(x).argmax(1)).float().mean())
    '''
)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "my_vit.py").write_text(USER_VIT)
    return folder


@pytest.fixture
def on_path(user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(user_dir))
    return user_dir


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "digits"
    subprocess.run(
        [sys.executable, str(PLUGIN / "make_dataset.py"), str(out), "--per-class", "12"],
        check=True,
        capture_output=True,
    )
    return out


def _spec(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({"targets": ["cortex-a76"], **fields})


# ------------------------------------------------------------------ the token knob, adapted
def test_a_users_vit_offers_the_token_knob_through_the_adapter(on_path: Path) -> None:
    spec = _spec(model="my_vit:build", input_shape=[1, 1, 8, 8], evaluator="my_vit:agreement")
    prepared = prepare(job_entry(spec))
    attention = [layer for layer in prepared.layers if layer.kind is LayerKind.ATTENTION]
    assert [layer.name for layer in attention] == ["blocks.0", "blocks.1", "blocks.2"]
    assert {(layer.heads, layer.tokens, layer.cls_token) for layer in attention} == {(4, 17, True)}
    # The attention's own projections carry the residual stream: never channel-pruned.
    by_name = {layer.name: layer for layer in prepared.layers}
    assert not by_name["blocks.0.attn.qkv"].prunable and not by_name["blocks.0.attn.proj"].prunable

    space = Space.build(prepared.layers, token_keep=[0.5])
    assert sorted(n for n, knobs in space.knobs.items() if len(knobs.token_keep) > 1) == [
        "blocks.0",
        "blocks.1",
        "blocks.2",
    ]

    plan = Plan({"blocks.0": Choice(token_keep=0.5)})
    compressed = prepared.apply(plan)
    seen: dict[str, int] = {}
    for name in ("blocks.1", "blocks.2"):
        compressed.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, int(args[0].shape[1]))
        )
    with torch.no_grad():
        logits = compressed(prepared.example_input)
    assert logits.shape == (1, 10)
    # 16 patch tokens at keep 0.5: the CLS token, 8 kept and one fused token.
    assert seen == {"blocks.1": 10, "blocks.2": 10}
    # The original network is untouched and the evaluator judges the compressed one.
    assert prepared.entry.evaluate(prepared.model).value == 1.0
    assert 0.0 <= prepared.entry.evaluate(compressed).value <= 1.0


def test_a_bad_token_adapter_names_what_is_missing(on_path: Path, user_dir: Path) -> None:
    (user_dir / "bad_vit.py").write_text(
        USER_VIT.replace('"probabilities": "attn.attn_drop"', '"probabilities": "attn.softmax"')
    )
    spec = _spec(model="bad_vit:build", input_shape=[1, 1, 8, 8], evaluator="bad_vit:agreement")
    with pytest.raises(SearchError, match=r"model: .*TOKEN_BLOCKS.*no submodule 'attn.softmax'"):
        Problem.build(spec)


def test_a_users_vit_is_searched_on_ray(user_dir: Path, tmp_path: Path) -> None:
    """In a process of its own: Ray's workers import the user's module from PYTHONPATH, as they
    would where the service's workers run."""
    spec = {
        "model": "my_vit:build",
        "input_shape": [1, 1, 8, 8],
        "evaluator": "my_vit:agreement",
        "targets": ["cortex-a76"],
        "space": {"token_keep": [0.5, 0.75], "wbits": [8]},
        "budget": {"evaluations": 4},
        "concurrency": 1,
    }
    script = textwrap.dedent(
        """
        import json, sys
        from workers.search import JobSpec, MemorySink, run_search
        spec = JobSpec.model_validate(json.loads(sys.argv[1]))
        sink = MemorySink()
        result = run_search(spec, sink, measure_front=False)
        print(json.dumps({"status": result.status, "trials": [t.to_dict() for t in sink.trials.values()]}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_dir), str(ROOT)])}
    env["HWSEARCH_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "succeeded"
    trials = out["trials"]
    assert len(trials) == 4 and all(t["status"] == "ok" for t in trials), trials
    assert {t["quality_metric"] for t in trials} == {"agreement"}
    assert trials[0]["quality"] == 1.0  # the uncompressed model agrees with itself
    token_plans = [t for t in trials if any(c["token_keep"] < 1 for c in t["plan"]["layers"].values())]
    assert token_plans, [t["plan"] for t in trials]


# ------------------------------------------------------------------------- the user's data
def test_the_plugin_is_judged_on_an_image_folder(digits_dir: Path) -> None:
    spec = _spec(model="example-resnet", data={"path": str(digits_dir)}, eval_examples=60, seed=3)
    entry = job_entry(spec)
    prepared = prepare(entry)
    record = entry.data_record  # type: ignore[attr-defined]
    assert record["kind"] == "image_labels" and record["n_total"] == 120
    assert record["n_calibration"] == 30 and record["n_evaluation"] == 60
    quality = entry.evaluate(prepared.model)
    assert quality.metric == "top1_accuracy"
    assert quality.extra["n"] == 60 and quality.extra["low"] <= quality.value <= quality.extra["high"]
    assert quality.value > 0.8  # a trained network on its own held-out digits
    source = model_source(entry.entry)  # type: ignore[attr-defined]
    assert (source.kind, source.package) == ("plugin", "hwsearch-example-plugin")
    # The same seed splits the same way; another seed differently.
    again = job_entry(spec).data_record  # type: ignore[attr-defined]
    other = job_entry(_spec(**{**spec.model_dump(), "seed": 4})).data_record  # type: ignore[attr-defined]
    assert again["examples_sha256"] == record["examples_sha256"] != other["examples_sha256"]


def test_a_search_records_the_source_the_data_and_each_interval(digits_dir: Path, tmp_path: Path) -> None:
    spec = _spec(
        model="example-resnet",
        data={"path": str(digits_dir)},
        eval_examples=40,
        space={"wbits": [4, 8]},
        budget={"evaluations": 3},
        concurrency=1,
    )
    statuses: list[dict[str, Any]] = []
    sink = MemorySink()
    result = run_search(spec, sink, measure_front=False, on_progress=statuses.append)
    assert result.status == "succeeded"
    progress = statuses[-1]
    assert progress["source"]["package"] == "hwsearch-example-plugin"
    assert progress["data"]["path"] == str(digits_dir) and progress["data"]["n_evaluation"] == 40
    for trial in sink.trials.values():
        assert trial.quality_detail is not None and trial.quality_detail["n"] == 40
        assert trial.quality_detail["low"] <= (trial.quality or 0) <= trial.quality_detail["high"]


def test_more_classes_than_outputs_fails_before_any_trial(on_path: Path, tmp_path: Path) -> None:
    from PIL import Image

    for label in range(12):  # 12 classes, and the network has 10 outputs
        folder = tmp_path / "twelve" / f"c{label:02d}"
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("L", (8, 8), color=label * 20 + i).save(folder / f"{i}.png")
    spec = _spec(model="my_vit:build", input_shape=[1, 1, 8, 8], data={"path": str(tmp_path / "twelve")})
    with pytest.raises(SearchError, match=r"^data: .*12 classes but the model has 10 outputs"):
        Problem.build(spec)


# -------------------------------------------------------------------- bad references
@pytest.mark.parametrize(
    ("fields", "context", "loc", "message"),
    [
        ({"model": "resnet50"}, None, ("model",), "not a zoo or plugin name"),
        ({"model": "my-pkg:build"}, None, ("model",), "not an import path"),
        (
            {"model": "evil.nets:build"},
            {"model_modules": frozenset({"mine"})},
            ("model",),
            "HWSEARCH_MODEL_MODULES",
        ),
        ({"model": "mine.nets:build"}, {"model_modules": frozenset({"mine"})}, None, None),
        (
            {"model": "digits-cnn", "evaluator": "os:system"},
            {"model_modules": frozenset()},
            ("evaluator",),
            "HWSEARCH_MODEL_MODULES",
        ),
        ({"model": "digits-cnn", "evaluator": "no_colon"}, None, ("evaluator",), "not an import path"),
        ({"model": "digits-cnn", "eval_examples": 10}, None, (), "has no data"),
        ({"model": "digits-cnn", "data": {}}, None, ("data",), "exactly one of dataset"),
        (
            {"model": "digits-cnn", "data": {"dataset": "x", "path": "/d"}},
            None,
            ("data",),
            "exactly one of dataset",
        ),
        ({"model": "digits-cnn", "data": {"dataset": "../x"}}, None, ("data", "dataset"), "pattern"),
        (
            {"model": "digits-cnn", "data": {"path": "/d", "preprocessing": {"size": 3}}},
            None,
            ("data", "preprocessing"),
            "unknown key",
        ),
        (
            {"model": "digits-cnn", "data": {"path": "/etc/x"}},
            {"file_roots": ("/srv/data",)},
            ("data", "path"),
            "HWSEARCH_FILE_ROOTS",
        ),
        (
            {"model": "digits-cnn", "data": {"path": "/srv/data/../etc"}},
            {"file_roots": ("/srv/data",)},
            ("data", "path"),
            "without '..'",
        ),
        (
            {"model": "digits-cnn", "data": {"path": "/srv/data/d"}},
            {"file_roots": ("/srv/data",)},
            None,
            None,
        ),
        ({"model": "digits-cnn", "weights": "w.pt"}, {"file_roots": ()}, ("weights",), "HWSEARCH_FILE_ROOTS"),
        ({"model": "digits-cnn", "input_shape": [2, 3, 8, 8]}, None, ("input_shape",), "batch and must be 1"),
        ({"model": "digits-cnn", "input_shape": []}, None, ("input_shape",), "at least 1"),
        (
            {"model": "digits-cnn", "model_args": {"not-a-name": 1}},
            None,
            ("model_args",),
            "keyword-argument names",
        ),
        ({"model": "digits-cnn", "model_args": {"x": "y" * 5000}}, None, ("model_args",), "at most 4096"),
    ],
)
def test_jobspec_refuses_bad_references(
    fields: dict[str, Any], context: dict[str, Any] | None, loc: tuple[str, ...] | None, message: str | None
) -> None:
    data = {"targets": ["cortex-a76"], **fields}
    if loc is None:
        JobSpec.model_validate(data, context=context)
        return
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(data, context=context)
    errors = info.value.errors()
    assert any(tuple(e["loc"][: len(loc)]) == loc and str(message) in e["msg"] for e in errors), errors


def test_old_specs_keep_their_fingerprint() -> None:
    """Fields added for user models are left out of the fingerprint at their defaults, so a
    stored job's fingerprint (resume, schedules) does not change."""
    import hashlib

    spec = _spec(model="digits-cnn")
    old = spec.model_dump_json(
        exclude={"budget", "concurrency", "plans_per_task", "model_args", "weights", "input_shape", "data"}
        | {"evaluator", "eval_examples", "recovery"}  # recovery: issue 17's, calibrated by default
    )
    assert spec.fingerprint() == hashlib.sha256(old.encode()).hexdigest()[:12]
    assert _spec(model="digits-cnn", model_args={"x": 1}).fingerprint() != spec.fingerprint()


def test_layers_hwsearch_cannot_compress_are_kept_and_named() -> None:
    """An LSTM and an embedding table: traced, searched where possible, the rest kept with why."""
    from torch import nn

    from kernels import kept_layers, trace

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.lstm = nn.LSTM(8, 8, batch_first=True)
            self.norm = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, _ = self.lstm(self.emb(x))
            return self.fc(self.norm(y[:, -1]))

    model = Tagger().eval()
    example = torch.tensor([[1, 2, 3]])
    layers = trace(model, example)
    # fc is the one GEMM; the rest of the graph (the LayerNorm, copies) is costed, never compressed
    assert [layer.name for layer in layers if layer.kind is not LayerKind.ELEMENTWISE] == ["fc"]
    graph = {layer.extra["op_class"] for layer in layers if layer.kind is LayerKind.ELEMENTWISE}
    assert "norm" in graph
    kept = {row["name"]: row for row in kept_layers(model, layers, ignore=())}
    assert set(kept) == {"emb", "lstm", "norm"}  # fc is searchable
    assert kept["lstm"]["reason"].startswith("recurrent layer: hwsearch has no compressed operator")
    assert kept["emb"]["params"] == 80 and kept["emb"]["reason"].startswith("embedding table")
    assert kept["norm"]["reason"].startswith("normalisation layer")
    ignored = {row["name"]: row["reason"] for row in kept_layers(model, layers, ignore=["fc"])}
    assert ignored["fc"].startswith("named by the model's ignore_layers")


def test_an_artifact_records_its_source_and_loads_with_the_users_factory(tmp_path: Path) -> None:
    """An import-path model with a weights file: the zip names the source and the weights'
    sha256, and its README's recipe rebuilds the compressed model from the user's factory."""
    import hashlib
    import zipfile

    from hwsearch_example_plugin.model import trained_resnet
    from safetensors.torch import load_file

    from workers.artifacts import export_compressed
    from workers.search import JobSpec
    from workers.search._entry import job_entry

    weights = tmp_path / "resnet.pt"
    torch.save(trained_resnet().state_dict(), weights)
    spec = _spec(
        model="hwsearch_example_plugin.model:build_resnet", weights=str(weights), input_shape=[1, 1, 8, 8]
    ).model_dump(mode="json")
    trial = {"number": 3, "plan": {"layers": {"fc": {"wbits": 8}}}, "quality": 0.9, "quality_metric": "m"}
    out = export_compressed(spec, trial, tmp_path / "t3.zip", "job1")
    with zipfile.ZipFile(out) as z:
        source = json.loads(z.read("source.json"))
        readme = z.read("README.md").decode()
        state = z.read("model.safetensors")
        recorded_spec = json.loads(z.read("spec.json"))
    assert source["kind"] == "import" and source["name"] == "hwsearch_example_plugin.model:build_resnet"
    assert source["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert 'job_entry(JobSpec.model_validate(json.load(open("spec.json"))))' in readme
    assert recorded_spec["model"] == spec["model"] and recorded_spec["input_shape"] == [1, 1, 8, 8]
    # The README's recipe: rebuild the job's entry from spec.json, apply the plan (calibrated, as
    # the job judged it), load the weights.
    (tmp_path / "model.safetensors").write_bytes(state)
    entry = job_entry(JobSpec.model_validate(recorded_spec))
    rebuilt = prepare(entry).apply(Plan.from_dict(trial["plan"]), calibrate=True)
    rebuilt.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    x = entry.example_input()
    with torch.no_grad():
        assert rebuilt(x).shape == (1, 10)


@pytest.mark.parametrize(
    ("body", "message"),
    [("return float('nan')", "is not finite"), ("return 'good'", "is not a number")],
    ids=["nan", "text"],
)
def test_an_evaluator_that_returns_no_number_fails_the_trial_naming_it(
    on_path: Path, user_dir: Path, body: str, message: str
) -> None:
    module = f"bad_eval_{abs(hash(body))}"  # a module per case: imports are cached
    (user_dir / f"{module}.py").write_text(f"def score(model):\n    {body}\n")
    from workers.search._runner import Evaluator

    spec = _spec(model="my_vit:build", input_shape=[1, 1, 8, 8], evaluator=f"{module}:score")
    result = Evaluator(spec.model_dump(mode="json"), None).evaluate([Plan().to_dict()])[0]
    assert "quality" not in result
    assert result["error"].startswith(f"DatasetError: evaluator: got '{module}:score'")
    assert message in result["error"]


def test_minilm_is_judged_on_the_users_sentences(tmp_path: Path) -> None:
    """JSON lines through the model source's tokenize/embed hooks: pairs with scores give a
    Spearman correlation, text alone the cosine to the uncompressed model."""
    pairs = [
        ("A man is playing a guitar.", "A person plays an instrument.", 4.0),
        ("A man is playing a guitar.", "The stock market fell sharply.", 0.2),
        ("Children are playing in a park.", "Kids play outside.", 4.5),
        ("Children are playing in a park.", "The recipe needs two eggs.", 0.1),
        ("The cat sleeps on the sofa.", "A cat is napping on a couch.", 4.8),
        ("The cat sleeps on the sofa.", "Rain is expected tomorrow.", 0.3),
        ("He is cooking dinner.", "A man prepares a meal.", 4.2),
        ("He is cooking dinner.", "The train left the station.", 0.4),
    ]
    rows = [{"text": a, "text_pair": b, "score": s} for a, b, s in pairs * 2]
    path = tmp_path / "sts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    entry = job_entry(_spec(model="minilm-l6", data={"path": str(path), "calibration_fraction": 0.25}))
    prepared = prepare(entry)
    quality = entry.evaluate(prepared.model)
    assert quality.metric == "spearman" and quality.extra["n"] == 12
    assert quality.value > 0.5  # related pairs score higher than unrelated ones

    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps({"text": a}) for a, _, _ in pairs) + "\n")
    entry = job_entry(_spec(model="minilm-l6", data={"path": str(plain)}))
    prepared = prepare(entry)
    assert entry.evaluate(prepared.model).value == pytest.approx(1.0, abs=1e-6)


def test_a_users_text_classifier_is_judged_through_its_tokenize_hook(on_path: Path, tmp_path: Path) -> None:
    """A bare nn.Module whose module defines tokenize(texts): JSON lines with labels give accuracy."""
    (on_path / "my_text.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            VOCAB = {"good": 0, "great": 1, "bad": 2, "awful": 3}


            class BagOfWords(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(4, 2)
                    with torch.no_grad():
                        self.fc.weight.copy_(torch.tensor([[-1.0, -1.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0]]))
                        self.fc.bias.zero_()

                def forward(self, x):
                    return self.fc(x)


            def build():
                return BagOfWords().eval()


            def tokenize(texts):
                rows = torch.zeros(len(texts), 4)
                for i, text in enumerate(texts):
                    for word in text.split():
                        if word in VOCAB:
                            rows[i, VOCAB[word]] += 1
                return rows
            """
        )
    )
    rows = [("good great", "pos"), ("awful bad", "neg"), ("great", "pos"), ("bad", "neg")] * 5
    path = tmp_path / "reviews.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows) + "\n")
    spec = _spec(model="my_text:build", input_shape=[1, 4], data={"path": str(path)})
    entry = job_entry(spec)
    quality = entry.evaluate(prepare(entry).model)
    # Labels numbered in sorted order (neg=0, pos=1); the hand-set weights classify every row.
    assert quality.metric == "top1_accuracy" and quality.value == 1.0 and quality.extra["n"] == 15
