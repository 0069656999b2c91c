"""Small hand-written layer inventories shared by the latency-model tests (no torch)."""

from __future__ import annotations

from search_spaces import LayerKind, LayerSpec, Space

# A small inventory with every kind the priors cost: convs (with a coupled group and a
# depthwise conv), a transformer block (attention + its linears) and a classifier.
LAYERS = (
    LayerSpec(
        "stem",
        LayerKind.CONV2D,
        3,
        32,
        (3, 3),
        (2, 2),
        input_hw=(64, 64),
        output_hw=(32, 32),
        group="stem",
        prunable=True,
        decomposable=True,
    ),
    LayerSpec(
        "pw",
        LayerKind.CONV2D,
        32,
        64,
        (1, 1),
        input_hw=(32, 32),
        output_hw=(32, 32),
        group="pw",
        in_group="stem",
        prunable=True,
        decomposable=True,
    ),
    LayerSpec(
        "dw",
        LayerKind.DEPTHWISE_CONV2D,
        64,
        64,
        (3, 3),
        groups=64,
        input_hw=(32, 32),
        output_hw=(32, 32),
        group="pw",
        in_group="pw",
        prunable=True,
    ),
    LayerSpec(
        "proj",
        LayerKind.CONV2D,
        64,
        64,
        (1, 1),
        input_hw=(32, 32),
        output_hw=(32, 32),
        in_group="pw",
        decomposable=True,
    ),
    LayerSpec("blk", LayerKind.ATTENTION, 64, 64, tokens=65, heads=4, cls_token=True, block="blk"),
    LayerSpec("blk.q", LayerKind.LINEAR, 64, 64, tokens=65, block="blk", decomposable=True),
    LayerSpec(
        "blk.fc1",
        LayerKind.LINEAR,
        64,
        256,
        tokens=65,
        block="blk",
        group="blk.fc1",
        prunable=True,
        decomposable=True,
    ),
    LayerSpec(
        "blk.fc2", LayerKind.LINEAR, 256, 64, tokens=65, block="blk", in_group="blk.fc1", decomposable=True
    ),
    LayerSpec("blk2", LayerKind.ATTENTION, 64, 64, tokens=65, heads=4, cls_token=True, block="blk2"),
    LayerSpec("blk2.fc1", LayerKind.LINEAR, 64, 256, tokens=65, block="blk2", decomposable=True),
    LayerSpec("head", LayerKind.LINEAR, 64, 10, decomposable=True),
)
SPACE = Space.build(
    LAYERS,
    rank_fractions=(0.25, 0.5, 0.75),
    keep=(0.25, 0.5, 0.75),
    wbits=(2, 4, 8, 16),
    abits=(4, 8, 16),
    token_keep=(0.25, 0.5, 0.75),
    rank_multiple=1,
    channel_multiple=1,
)
