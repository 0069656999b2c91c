"""Compression operators on real trained models: low-rank, pruning, quantization, tokens, accounting."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kernels import (
    apply,
    count_cost,
    fake_quant_activation,
    fake_quant_weight,
    low_rank,
    prune_tokens,
    singular_values,
    time_callable,
    time_model,
    to_int8_dynamic,
    trace,
)
from kernels._quant import is_dynamic_int8
from search_spaces import Choice, Plan, Space, SpaceError, plan_cost, tokens_after_pruning
from workers.zoo import create_model


@pytest.fixture(scope="module")
def cnn() -> tuple[object, nn.Module, torch.Tensor]:
    entry = create_model("digits-cnn")
    return entry, entry.build(), entry.example_input()


@pytest.fixture(scope="module")
def vit() -> tuple[object, nn.Module, torch.Tensor]:
    entry = create_model("digits-vit")
    return entry, entry.build(), entry.example_input()


def _reconstruct(op: nn.Module) -> torch.Tensor:
    first, second = op[0].weight.detach().double(), op[1].weight.detach().double()
    if first.dim() == 2:  # Linear: W ≈ second @ first
        return second @ first
    if first.shape[-1] == 1 and first.shape[-2] == 1:  # 1×1 conv
        return torch.einsum("or,ri->oi", second[:, :, 0, 0], first[:, :, 0, 0])[..., None, None]
    # spatial SVD: first [r, i, kh, 1], second [o, r, 1, kw]
    return torch.einsum("riy,orx->oiyx", first[..., 0], second[:, :, 0, :])


@pytest.mark.parametrize("layer_name,rank", [("conv3", 24), ("conv2", 48), ("fc1", 16), ("conv1", 2)])
def test_truncated_svd_error_equals_tail_singular_energy(cnn, layer_name: str, rank: int) -> None:
    _, model, _ = cnn
    layer = model.get_submodule(layer_name)
    op = low_rank(layer, rank)
    err = (_reconstruct(op) - layer.weight.detach().double()).pow(2).sum().item()
    s = singular_values(layer)
    tail = s[rank:].pow(2).sum().item()
    assert err == pytest.approx(tail, rel=1e-4, abs=1e-9)
    assert tail > 0  # a real truncation, not a no-op


@pytest.mark.parametrize("layer_name", ["conv3", "conv1", "fc1"])
def test_full_rank_factorisation_reproduces_the_layer(cnn, layer_name: str) -> None:
    _, model, _ = cnn
    layer = model.get_submodule(layer_name)
    s = singular_values(layer)
    op = low_rank(layer, len(s))
    inp = (
        torch.randn(4, layer.in_channels, 6, 6)
        if isinstance(layer, nn.Conv2d)
        else torch.randn(4, layer.in_features)
    )
    with torch.no_grad():
        assert torch.allclose(op(inp), layer(inp), atol=1e-4)


@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 1), (1, 2, 0), (3, 2, 1), (3, 1, 0), (5, 1, 2)])
def test_low_rank_conv_keeps_geometry(kernel: int, stride: int, padding: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel, stride=stride, padding=padding)
    x = torch.randn(2, 8, 9, 11)
    op = low_rank(conv, len(singular_values(conv)))
    with torch.no_grad():
        assert op(x).shape == conv(x).shape
        assert torch.allclose(op(x), conv(x), atol=1e-4)


def test_rank_plan_keeps_accuracy_at_half_the_macs(cnn) -> None:
    entry, model, x = cnn
    plan = Plan({"conv2": Choice(rank=48), "conv3": Choice(rank=24), "conv4": Choice(rank=16)})
    compressed = apply(model, plan, x)
    before, after = count_cost(model, x), count_cost(compressed, x)
    # every MAC of digits-cnn is in a compressible (conv / linear) layer
    assert after.macs <= 0.5 * before.macs
    acc_before, acc_after = entry.evaluate(model).value, entry.evaluate(compressed).value
    assert acc_before >= 0.97
    # digits-cnn is trained at first use on each machine, and the trained weights differ
    # between machines (BLAS threading): the drop was 0.37 points with one machine's weights
    # and 1.11 points with another's (540 held-out images: one image is 0.19 points).
    assert acc_after >= acc_before - 0.02


@pytest.mark.parametrize("model_id", ["digits-cnn", "mobilenet-v2"])
def test_pruned_layers_are_physically_smaller_and_run(model_id: str) -> None:
    entry = create_model(model_id)
    model, x = entry.build(), entry.example_input()
    layers = trace(model, x)
    plan = Plan.uniform(layers, Choice(keep=0.5))
    pruned = apply(model, plan, x)
    assert count_cost(pruned, x).params < 0.6 * count_cost(model, x).params
    shrunk = 0
    for layer in layers:
        if layer.prunable:
            mod = pruned.get_submodule(layer.name)
            out = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
            assert out < layer.out_channels, layer.name
            assert isinstance(mod, nn.Conv2d | nn.Linear)  # smaller dense layer, no mask
            shrunk += 1
    assert shrunk > 0
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
    assert not any("mask" in name for name, _ in pruned.named_buffers())


def test_pruning_keeps_coupled_groups_consistent(cnn) -> None:
    _, model, x = cnn
    pruned = apply(model, Plan({"conv2": Choice(keep=0.5), "conv4": Choice(keep=0.5)}), x)
    assert pruned.conv2.out_channels == pruned.conv4.out_channels == 32  # residual partners
    assert pruned.conv3.in_channels == 32 and pruned.fc1.in_features == 32
    with pytest.raises(SpaceError, match="share one keep"):
        apply(model, Plan({"conv2": Choice(keep=0.5)}), x)


def test_quantization_error_falls_as_bits_grow(cnn) -> None:
    _, model, _ = cnn
    from workers.zoo.digits import digits_split

    x = digits_split()[2][:128]
    with torch.no_grad():
        ref = model(x)
    layers = trace(model, x[:1])
    errors = []
    for bits in (2, 3, 4, 6, 8, 16):
        q = apply(model, Plan.uniform(layers, Choice(wbits=bits, abits=bits)), x[:1])
        with torch.no_grad():
            errors.append((q(x) - ref).pow(2).mean().item())
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    w = model.conv3.weight.detach()
    werr = [(fake_quant_weight(w, b) - w).abs().max().item() for b in (2, 4, 8)]
    assert werr[0] > werr[1] > werr[2]
    t = torch.randn(1000)
    aerr = [(fake_quant_activation(t, b) - t).abs().max().item() for b in (2, 4, 8)]
    assert aerr[0] > aerr[1] > aerr[2]


def test_int8_linear_is_within_quantization_error() -> None:
    # The FFN up-projection of the real MiniLM, on activations it really sees.
    entry = create_model("minilm-l6")
    model = entry.build()
    name, layer = next(
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m.out_features > m.in_features
    )
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1]))
    )
    with torch.no_grad():
        model(entry.example_input())
    handle.remove()
    x = seen[0]
    with torch.no_grad():
        ref = layer(x)
        out = to_int8_dynamic(_copy(layer))(x)
        sim = nn.functional.linear(
            fake_quant_activation(x, 8), fake_quant_weight(layer.weight, 8), layer.bias
        )
    # Worst-case rounding error of y = W x with per-channel weight step dw and per-tensor
    # activation step dx: sum_k |x_k| dw/2 + |W_ok| dx/2 + dw dx / 4. torch's x86 int8 path
    # quantizes activations to 7 bits (reduce_range), hence 127 levels.
    w = layer.weight.detach()
    dw = w.abs().amax(dim=1) / 127
    dx = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 127
    bound = (
        (x.abs() @ torch.ones_like(w).T) * dw / 2 + (w.abs().sum(dim=1) * dx / 2) + w.shape[1] * dw * dx / 4
    )
    err = (out - ref).abs()
    assert (err <= bound + 1e-5).all(), (name, (err - bound).max().item())
    assert 0 < err.mean() < 0.1 * bound.mean()  # typical errors are far below the worst case
    rel = ((out - ref).norm() / ref.norm()).item()
    rel_sim = ((sim - ref).norm() / ref.norm()).item()
    assert rel < 4 * rel_sim  # the same order as simulated 8-bit error


def _copy(layer: nn.Linear) -> nn.Linear:
    new = nn.Linear(layer.in_features, layer.out_features)
    new.load_state_dict(layer.state_dict())
    return new


def test_int8_execution_uses_real_int8_kernels(vit) -> None:
    _, model, x = vit
    layers = trace(model, x)
    plan = Plan.uniform(layers, Choice(wbits=8, abits=8))
    deployed = apply(model, plan, x, execution="int8")
    assert sum(is_dynamic_int8(m) for m in deployed.modules()) == sum(
        spec.kind.value == "linear" for spec in layers
    )
    with torch.no_grad():
        assert torch.allclose(deployed(x), model(x), atol=0.3)
    with pytest.raises(SpaceError, match="execution"):
        apply(model, plan, x, execution="fp4")  # type: ignore[arg-type]


def test_identity_plan_and_original_untouched(cnn, vit) -> None:
    for _, model, x in (cnn, vit):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        same = apply(model, Plan(), x)
        with torch.no_grad():
            assert (same(x) - model(x)).abs().max().item() <= 1e-6
        layers = trace(model, x)
        heavy = Plan.uniform(layers, Choice(rank=8, wbits=4, abits=4, token_keep=0.5))
        apply(model, heavy, x)
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k


def test_token_keep_one_is_exactly_the_identity(vit) -> None:
    _, model, x = vit
    tokens = torch.randn(2, 17, 64)
    attention = torch.rand(2, 4, 17, 17).softmax(-1)
    assert prune_tokens(tokens, attention, 1.0, True) is tokens
    plan = Plan({"blocks.0": Choice(token_keep=1.0)})
    out = apply(model, plan, x)
    assert not out.blocks[0]._forward_hooks


def test_token_keep_half_halves_the_tokens_and_macs_after_the_pruning_point(vit) -> None:
    _, model, x = vit
    pruned = apply(model, Plan({"blocks.0": Choice(token_keep=0.5)}), x)
    seen: dict[str, int] = {}

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen[name] = args[0].shape[1]

        return fn

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in pruned.named_modules()
        if n.startswith("blocks.") and n.count(".") == 1
    ]
    with torch.no_grad():
        pruned(x)
    for h in handles:
        h.remove()
    n = 17
    after = tokens_after_pruning(n, 0.5, True)
    assert seen == {"blocks.0": n, "blocks.1": after, "blocks.2": after, "blocks.3": after}
    assert after - 2 == (n - 1) // 2  # half of the 16 patch tokens survive (plus CLS and the fused token)
    dense, cut = count_cost(model, x), count_cost(pruned, x)
    per_token = sum(
        m.in_features * m.out_features
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("blocks.1.")
    )
    dim = 64
    block_macs = lambda t: t * per_token + 2 * t * t * dim  # noqa: E731
    assert dense.macs - cut.macs == 3 * (block_macs(n) - block_macs(after))
    assert block_macs(after) / block_macs(n) < 0.6


@pytest.mark.parametrize(
    "model_id",
    ["digits-cnn", "digits-vit", "mobilenet-v2", "minilm-l6", "fbnet", "nasbench201", "efficientnet-lite0"],
)
def test_macs_match_torch_flop_counter_for_random_plans(model_id: str) -> None:
    import numpy as np

    entry = create_model(model_id)
    model, x = entry.build(), entry.example_input()
    layers = trace(model, x)
    space = Space.build(
        layers,
        rank_fractions=(0.25, 0.5),
        keep=(0.5, 0.75),
        wbits=(8, 4),
        abits=(8,),
        token_keep=(0.5, 0.7),
        channel_multiple=4,
        rank_multiple=4,
    )
    rng = np.random.default_rng(0)
    for plan in [Plan()] + [space.sample(rng) for _ in range(3)]:
        compressed = apply(model, plan, x)
        cost = count_cost(compressed, x)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            compressed(x)
        assert cost.macs * 2 == counter.get_total_flops()
        assert cost.model_params == sum(p.numel() for p in compressed.parameters())
        # The analytic cost from the inventory alone agrees exactly with the built model.
        predicted = plan_cost(layers, plan)
        assert predicted.macs == cost.macs
        assert predicted.params == cost.params
        assert predicted.weight_bytes == cost.weight_bytes


def test_weight_bytes_at_chosen_bits() -> None:
    model = nn.Sequential(nn.Linear(64, 32))
    x = torch.randn(1, 64)
    layers = trace(model, x)
    for bits, expected in (
        (32, (64 * 32 + 32) * 4),
        (8, 64 * 32 + 32 * 4 + 32 * 4),
        (4, 64 * 32 // 2 + 32 * 4 + 32 * 4),
        (16, 64 * 32 * 2 + 32 * 4),
    ):
        q = apply(model, Plan({"0": Choice(wbits=bits)}), x)
        assert count_cost(q, x).weight_bytes == expected, bits
    assert [layer.name for layer in layers] == ["0"]


def test_timing_harness_reports_ratio_to_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's arithmetic on a fake clock, so the test holds whatever the machine's load:
    in round k the candidate costs COST_MS[k] and the reference twice that, so every per-round
    ratio is exactly 2, and the rounds alternate which of the two runs first. (Real speed-ups of
    real kernels are bench/kernel_speed.py's to measure: a 2-matmuls-against-1 ratio asserted
    here came out under 1.2 on a loaded 2-core machine.)"""
    from kernels import _bench

    cost_ms = (9.0, 4.0, 1.0, 6.0, 3.0, 5.0, 2.0)  # the warm-up round, then 6 timed rounds
    clock_s = [0.0]
    calls: list[str] = []

    def call(who: str, factor: float) -> None:
        clock_s[0] += factor * cost_ms[len(calls) // 2] / 1000.0  # two calls per round
        calls.append(who)

    monkeypatch.setattr(_bench, "time", SimpleNamespace(perf_counter=lambda: clock_s[0]))
    t = time_callable(lambda: call("c", 1.0), lambda: call("r", 2.0), repeats=6, warmup=1)
    assert calls == ["c", "r"] + ["c", "r", "r", "c"] * 3
    assert t.median_ms == pytest.approx(3.5)  # median of 4, 1, 6, 3, 5, 2
    assert t.reference_median_ms == pytest.approx(7.0)
    assert t.speedup == pytest.approx(2.0) and t.speedup_p10 == pytest.approx(2.0)
    assert 1.0 - 1e-9 <= t.p10_ms <= t.median_ms <= t.p90_ms <= 6.0 + 1e-9
    assert t.repeats == 6 and t.device == "cpu"
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_callable(lambda: None, repeats=0)


def test_timing_harness_on_the_real_clock() -> None:
    """On the real clock, a ratio far beyond any load's noise: the reference sleeps 20 ms, the
    candidate does nothing (a sleep never ends early, and no load stalls a no-op call for
    milliseconds in most of 5 rounds)."""
    t = time_callable(lambda: None, lambda: time.sleep(0.02), repeats=5, warmup=0)
    assert t.reference_median_ms is not None and t.reference_median_ms >= 20.0
    assert t.speedup is not None and t.speedup > 10.0
    assert t.p10_ms <= t.median_ms <= t.p90_ms


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI machines have none")
def test_timing_and_apply_on_cuda(cnn) -> None:
    _, model, x = cnn
    plan = Plan({"conv2": Choice(rank=48), "fc1": Choice(wbits=8, abits=8)})
    gpu_model, gpu_x = model.cuda(), x.cuda()
    try:
        compressed = apply(gpu_model, plan, gpu_x)
        timing = time_model(compressed, gpu_x, reference=gpu_model, repeats=5, warmup=2)
        assert timing.device == "cuda" and timing.speedup is not None
    finally:
        model.cpu()


# ------------------------------------------------------------- one weight-size accounting
ACCOUNTING_PLANS = {
    "uncompressed": {},
    "w8": {"wbits": 8},
    "w4": {"wbits": 4},
    "w3-odd-bits": {"wbits": 3},
    "rank0.5": {"rank": 0.5},
    "keep0.5": {"keep": 0.5},
    "rank0.5-keep0.75-w4": {"rank": 0.5, "keep": 0.75, "wbits": 4},
}


@pytest.mark.parametrize(
    "model_id", ["digits-cnn", "digits-vit", "nasbench201", "fbnet", "mobilenet-v2", "minilm-l6"]
)
def test_compress_and_predict_count_the_same_weight_bytes(model_id: str) -> None:
    """``kernels.count_cost`` on the built model (what `hwsearch compress` prints) and
    ``search_spaces.plan_cost`` on the inventory (what `hwsearch predict` and the search use)
    agree exactly on params and weight bytes, for the zoo's models and a few plans."""
    from latency_models import get_target, predict
    from service.cli import uniform_plan
    from workers.zoo import prepare

    prepared = prepare(model_id)
    layers = prepared.layers
    for name, knobs in ACCOUNTING_PLANS.items():
        plan = uniform_plan(layers, knobs).validate(layers) if knobs else Plan()
        built = count_cost(prepared.apply(plan), prepared.example_input)
        inventory = plan_cost(layers, plan)
        assert (inventory.params, inventory.weight_bytes) == (built.params, built.weight_bytes), name
        assert predict(get_target("zcu102"), layers, plan).weight_bytes == built.weight_bytes, name
        # What the accounting leaves out is reported apart, and is only non-layer parameters.
        whole = sum(p.numel() for p in prepared.model.parameters())
        if name == "uncompressed":
            assert built.model_params == whole
            assert built.other_bytes == (whole - built.params) * 4
