"""The ZooModel contract, run on every registered entry: a new model is tested by being registered."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kernels import apply, count_cost, trace
from search_spaces import LayerKind, Space
from workers.zoo import ZooError, create_model, list_models, model_class


def test_registry_lists_the_issue_models() -> None:
    assert set(list_models()) >= {
        "digits-cnn",
        "digits-vit",
        "mobilenet-v2",
        "efficientnet-lite0",
        "minilm-l6",
        "nasbench201",
        "fbnet",
    }
    assert list_models("digits-*") == ["digits-cnn", "digits-vit"]


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ZooError) as info:
        create_model("resnet-9000")
    for name in list_models():
        assert name in str(info.value)
    with pytest.raises(ZooError, match="takes no argument"):
        create_model("digits-cnn:big")
    with pytest.raises(ZooError, match="unknown arguments"):
        create_model("digits-cnn", width=3)


@pytest.mark.parametrize("name", list_models())
def test_contract(name: str) -> None:
    cls = model_class(name)
    for attr in ("name", "task", "metric", "description"):
        assert isinstance(getattr(cls, attr), str) and getattr(cls, attr)
    entry = create_model(name)
    if hasattr(entry, "n_calibration_images"):
        entry.n_calibration_images = 32  # fewer photos: test time (the default set is 256)
    model = entry.build()
    assert isinstance(model, nn.Module) and not model.training
    x = entry.example_input()
    assert x.shape[0] == 1
    with torch.no_grad():
        model(x)

    layers = trace(model, x, ignore=entry.ignore_layers(model))
    assert layers and len({layer.name for layer in layers}) == len(layers)
    assert any(layer.decomposable for layer in layers)
    assert any(layer.prunable for layer in layers) or any(
        layer.kind is LayerKind.ATTENTION for layer in layers
    )

    space = Space.build(
        layers, rank_fractions=(0.5,), keep=(0.75,), wbits=(8,), abits=(8,), token_keep=(0.7,)
    )
    plan = space.sample(np.random.default_rng(0))
    assert plan.choices, "a sampled plan compresses something"
    compressed = apply(model, plan, x, ignore=tuple(entry.ignore_layers(model)))
    before, after = count_cost(model, x), count_cost(compressed, x)
    assert after.weight_bytes < before.weight_bytes

    reference = entry.evaluate(model)
    quality = entry.evaluate(compressed)
    for q in (reference, quality):
        assert q.metric == cls.metric and q.description
        assert 0.0 <= q.value <= 1.0 + 1e-6
    if cls.metric != "top1_accuracy":  # reference-based metrics: the uncompressed model is perfect
        assert reference.value == pytest.approx(1.0, abs=1e-5)
    assert quality.value <= reference.value + 1e-6 or cls.metric == "top1_accuracy"
