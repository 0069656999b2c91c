"""The search-space vocabulary: validation, JSON round trips, encoding, sampling. No torch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from search_spaces import (
    ALLOWED_BITS,
    Choice,
    LayerKind,
    LayerSpec,
    Plan,
    Space,
    SpaceError,
    kept_channels,
    round_rank,
    tokens_after_pruning,
)

LAYERS = (
    LayerSpec(
        "stem",
        LayerKind.CONV2D,
        3,
        32,
        (3, 3),
        input_hw=(32, 32),
        output_hw=(32, 32),
        group="stem",
        prunable=True,
        decomposable=True,
    ),
    LayerSpec(
        "a", LayerKind.CONV2D, 32, 64, (3, 3), group="a", in_group="stem", prunable=True, decomposable=True
    ),
    LayerSpec(
        "dw", LayerKind.DEPTHWISE_CONV2D, 64, 64, (3, 3), groups=64, group="a", in_group="a", prunable=True
    ),
    LayerSpec(
        "b", LayerKind.CONV2D, 64, 64, (1, 1), group="a", in_group="a", prunable=True, decomposable=True
    ),
    LayerSpec("blk", LayerKind.ATTENTION, 64, 64, tokens=17, heads=4, cls_token=True, block="blk"),
    LayerSpec("pool", LayerKind.POOLING, 64, 64),
    LayerSpec("fc", LayerKind.LINEAR, 64, 10, in_group="a", decomposable=True),
)


def test_full_rank_by_kind() -> None:
    by = {layer.name: layer for layer in LAYERS}
    assert by["a"].full_rank == min(32 * 3, 64 * 3)  # spatial SVD of a 3×3 conv
    assert by["b"].full_rank == 64  # 1×1 conv: plain SVD
    assert by["fc"].full_rank == 10
    assert by["dw"].full_rank == 0 and by["blk"].full_rank == 0


@pytest.mark.parametrize(
    "plan,field,fragment",
    [
        ({"nope": {"rank": 2}}, "plan.layers['nope']", "unknown layer"),
        ({"fc": {"rank": 11}}, "plan.layers['fc'].rank", "full rank 10"),
        ({"fc": {"rank": 0}}, "plan.layers['fc'].rank", "positive integer"),
        ({"stem": {"keep": 0.0}}, "plan.layers['stem'].keep", "(0, 1]"),
        ({"stem": {"keep": 1.5}}, "plan.layers['stem'].keep", "(0, 1]"),
        ({"stem": {"wbits": 5}}, "plan.layers['stem'].wbits", str(list(ALLOWED_BITS))),
        ({"stem": {"abits": "8"}}, "plan.layers['stem'].abits", str(list(ALLOWED_BITS))),
        ({"fc": {"token_keep": 0.5}}, "plan.layers['fc'].token_keep", "attention blocks only"),
        ({"dw": {"rank": 4}}, "plan.layers['dw'].rank", "takes no rank"),
        ({"fc": {"keep": 0.5}}, "plan.layers['fc'].keep", "cannot be pruned"),
        (
            {"a": {"keep": 0.5}, "dw": {"keep": 0.5}, "b": {"keep": 0.75}},
            "plan.layers['b'].keep",
            "share one keep",
        ),
        ({"fc": {"rank": 2, "colour": "red"}}, "plan.layers['fc']", "unknown keys"),
    ],
)
def test_invalid_plans_name_field_value_and_fix(
    plan: dict[str, dict[str, object]], field: str, fragment: str
) -> None:
    with pytest.raises(SpaceError) as info:
        Plan.from_dict({"layers": plan}, LAYERS)
    assert info.value.field == field
    assert fragment in str(info.value)
    assert "got" in str(info.value)  # the value is echoed back


def test_plan_json_round_trip_and_identity_entries_dropped() -> None:
    plan = Plan(
        {
            "a": Choice(keep=0.5),
            "dw": Choice(keep=0.5, wbits=8),
            "b": Choice(rank=16, keep=0.5),
            "blk": Choice(token_keep=0.5),
            "stem": Choice(),
        }
    )
    again = Plan.from_json(plan.to_json(), LAYERS)
    assert again == plan and hash(again) == hash(plan)
    assert "stem" not in again.choices


def test_malformed_json_is_a_space_error() -> None:
    with pytest.raises(SpaceError, match="valid JSON"):
        Plan.from_json("{not json", LAYERS)


def test_rounding_helpers() -> None:
    assert kept_channels(64, 0.5, 8) == 32
    assert kept_channels(64, 0.3, 8) == 16  # 19.2 → nearest multiple of 8
    assert kept_channels(10, 0.01, 8) == 8  # never below one multiple
    assert kept_channels(6, 0.5, 8) == 6  # never above the original
    assert round_rank(13, 64, 8) == 16 and round_rank(100, 64, 8) == 64


def test_tokens_after_pruning() -> None:
    assert tokens_after_pruning(17, 1.0, True) == 17
    assert tokens_after_pruning(17, 0.5, True) == 1 + 8 + 1  # CLS + kept + fused
    assert tokens_after_pruning(64, 0.5, False) == 32 + 1


def _space() -> Space:
    return Space.build(
        LAYERS,
        rank_fractions=(0.25, 0.5),
        keep=(0.5, 0.75),
        wbits=(8, 4),
        abits=(8,),
        token_keep=(0.5, 0.7),
        rank_multiple=8,
        channel_multiple=8,
    )


def test_space_offers_knobs_by_kind() -> None:
    space = _space()
    assert space.knobs_of("a").rank[0] is None and all(r % 8 == 0 for r in space.knobs_of("a").rank[1:])
    assert space.knobs_of("dw").rank == (None,)
    assert space.knobs_of("blk").token_keep == (1.0, 0.5, 0.7)
    assert space.knobs_of("fc").keep == (1.0,)  # not prunable
    assert space.knobs_of("pool").wbits == (32,)
    # keep options are exact fractions of a rounded channel count
    assert all((k * 32).is_integer() for k in space.knobs_of("stem").keep)


def test_space_json_round_trip_and_validation() -> None:
    space = _space()
    again = Space.from_dict(json.loads(space.to_json()), LAYERS)
    assert again.to_dict() == space.to_dict()
    bad = json.loads(space.to_json())
    bad["layers"]["fc"]["rank"] = [None, 64]
    with pytest.raises(SpaceError, match=r"space.layers\['fc'\].rank"):
        Space.from_dict(bad, LAYERS)
    uneven = json.loads(space.to_json())
    uneven["layers"]["b"]["keep"] = [1.0]
    with pytest.raises(SpaceError, match="same keep options"):
        Space.from_dict(uneven, LAYERS)
    with pytest.raises(SpaceError, match="rank_multiple"):
        Space.build(LAYERS, rank_multiple=0)
    with pytest.raises(SpaceError, match="unknown layer"):
        Space.from_dict({"layers": {"ghost": {}}}, LAYERS)


def test_include_exclude_globs() -> None:
    space = Space.build(LAYERS, wbits=(8,), exclude=("st*",))
    assert space.knobs_of("stem").wbits == (32,) and space.knobs_of("a").wbits == (32, 8)
    space = Space.build(LAYERS, wbits=(8,), include=("fc",))
    assert space.knobs_of("a").wbits == (32,) and space.knobs_of("fc").wbits == (32, 8)


def test_encode_decode_round_trip_and_fixed_length() -> None:
    space = _space()
    rng = np.random.default_rng(0)
    for _ in range(200):
        plan = space.sample(rng)
        vec = space.encode(plan)
        assert vec.shape == (space.vector_length,)
        assert space.decode(vec) == plan
        assert space.features(plan).shape == (space.vector_length,)
    with pytest.raises(SpaceError, match="length"):
        space.decode([0, 1])
    with pytest.raises(SpaceError, match="index"):
        space.decode([99] * space.vector_length)


def test_sampling_respects_coupled_groups_and_covers_options() -> None:
    space = _space()
    rng = np.random.default_rng(1)
    seen_keeps = set()
    for _ in range(300):
        plan = space.mutate(space.sample(rng), rng, rate=0.5)
        space.validate_plan(plan)  # every sampled/mutated plan is valid and in the space
        assert plan["a"].keep == plan["dw"].keep == plan["b"].keep
        seen_keeps.add(plan["a"].keep)
    assert seen_keeps == set(space.knobs_of("a").keep)


def test_space_size_counts_groups_once() -> None:
    space = Space.build(LAYERS, keep=(0.5,), channel_multiple=1)
    assert space.size == 2 * 2  # the stem group and the a/dw/b group


def test_uniform_plan_only_touches_layers_that_offer_the_knob() -> None:
    plan = Plan.uniform(LAYERS, Choice(rank=16, keep=0.5, wbits=8, abits=8, token_keep=0.5))
    plan.validate(LAYERS)
    assert plan["fc"].rank == 10 and plan["fc"].keep == 1.0
    assert plan["dw"].rank is None and plan["dw"].keep == 0.5
    assert plan["blk"].token_keep == 0.5 and plan["pool"] == Choice()


def test_layerspec_dict_round_trip() -> None:
    for layer in LAYERS:
        assert LayerSpec.from_dict(layer.to_dict()) == layer
    with pytest.raises(SpaceError, match="kind"):
        LayerSpec.from_dict({"name": "x", "kind": "lstm"})
