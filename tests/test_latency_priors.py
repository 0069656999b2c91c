"""Analytic priors: every target and family, monotone in every knob, honest labels, target files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from inventories import LAYERS, SPACE

from latency_models import (
    ANALYTIC,
    LatencyModelError,
    Target,
    create_family,
    get_target,
    list_families,
    list_targets,
    load_target_file,
    plan_gemms,
    predict,
)
from search_spaces import Choice, Plan, plan_cost


def test_builtin_catalogue() -> None:
    names = list_targets()
    for required in (
        "a100",
        "jetson-orin",
        "gtx-1080ti",
        "cortex-a76",
        "raspi4",
        "adreno-640",
        "zcu102",
        "zc706",
        "xeon-gold-6240",
    ):
        assert required in names
    families = set()
    for name in names:
        target = get_target(name)
        families.add(target.family)
        assert target.description
        for key in ("peak_macs_per_s", "memory_bandwidth_gb_s", "dispatch_overhead_ms", "compute_efficiency"):
            assert target.sources.get(key), f"{name}: no source for {key}"
        if target.family == "fpga":
            assert target.fpga is not None and target.sources.get("fpga")
    assert families == {"gpu", "cpu", "mobile", "fpga"} == set(list_families())


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(LatencyModelError, match=r"valid names: .*a100"):
        get_target("tpu-v9")
    with pytest.raises(LatencyModelError, match="valid names: cpu, fpga, gpu, mobile"):
        create_family("npu")


def test_gemms_carry_exactly_the_plan_macs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        plan = SPACE.sample(rng)
        assert int(plan_gemms(LAYERS, plan).macs.sum()) == plan_cost(LAYERS, plan).macs


def _bump(plan: Plan, layer: str, knob: str, rng: np.random.Generator) -> Plan | None:
    """The same plan with one knob of one layer (or its coupled group) set to a larger option."""
    options = [o for o in SPACE.knobs_of(layer).options(knob) if o is not None]
    current = getattr(plan[layer], knob)
    if knob == "rank":
        if current is None:
            return None
        larger = [o for o in options if o > current]
    else:
        larger = [o for o in options if o > current]
    if not larger:
        return None
    value = larger[int(rng.integers(len(larger)))]
    spec = next(s for s in LAYERS if s.name == layer)
    names = (
        [s.name for s in LAYERS if spec.group is not None and s.group == spec.group]
        if knob == "keep"
        else [layer]
    )
    choices = dict(plan.choices)
    for name in names:
        choices[name] = replace(plan[name], **{knob: value})
    return Plan(choices)


@pytest.mark.parametrize("target_name", list_targets())
@pytest.mark.parametrize("knob", ["rank", "keep", "wbits", "abits", "token_keep"])
def test_prior_is_monotone(target_name: str, knob: str) -> None:
    """More rank, channels, bits or tokens never cost less (the family contract)."""
    target = get_target(target_name)
    rng = np.random.default_rng(abs(hash((target_name, knob))) % 2**32)
    offering = [s.name for s in LAYERS if len(SPACE.knobs_of(s.name).options(knob)) > 1]
    checked = 0
    for _ in range(150):
        plan = SPACE.sample(rng)
        layer = offering[int(rng.integers(len(offering)))]
        bigger = _bump(plan, layer, knob, rng)
        if bigger is None:
            continue
        small, large = predict(target, LAYERS, plan), predict(target, LAYERS, bigger)
        assert large.latency_ms >= small.latency_ms - 1e-12, (layer, plan[layer], bigger[layer])
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("target_name", list_targets())
def test_prediction_is_labelled_and_positive(target_name: str) -> None:
    target = get_target(target_name)
    p = predict(target, LAYERS, Plan())
    assert p.provenance == ANALYTIC == "analytic prior (uncalibrated)"
    assert p.latency_ms > 0 and abs(sum(p.layer_latency_ms.values()) - p.latency_ms) < 1e-9
    assert set(p.layer_latency_ms) <= {s.name for s in LAYERS}
    if target.family == "fpga":
        assert p.dsp is not None and p.lut is not None and p.bram36 is not None
        assert p.feasible and p.dsp <= target.fpga.dsp  # type: ignore[union-attr]
    else:
        assert p.dsp is None and p.feasible


def test_fpga_lut_core_gains_at_low_bits_and_resources_are_checked() -> None:
    # Few DSPs, so the wide layers spill onto the LUT core.
    base = get_target("zcu102")
    board = replace(base, fpga=replace(base.fpga, dsp=64))  # type: ignore[arg-type]
    dense = predict(board, LAYERS, Plan.uniform(LAYERS, Choice(wbits=16, abits=16)))
    low = predict(board, LAYERS, Plan.uniform(LAYERS, Choice(wbits=4, abits=4)))
    assert low.latency_ms < dense.latency_ms
    assert (low.lut or 0) > 0  # LUT multipliers only pay off at low bit widths
    need = predict(board, LAYERS, Plan()).bram36 or 0
    assert need >= 1
    tiny = replace(board, name="tiny", fpga=replace(board.fpga, bram36=need - 1))  # type: ignore[arg-type]
    assert not predict(tiny, LAYERS, Plan()).feasible


def test_target_file_round_trip_json_and_yaml(tmp_path: Path) -> None:
    import yaml

    data = get_target("raspi4").to_dict() | {"name": "my-board"}
    js, ym = tmp_path / "t.json", tmp_path / "t.yaml"
    js.write_text(json.dumps(data))
    ym.write_text(yaml.safe_dump(data))
    assert load_target_file(js) == load_target_file(ym) == Target.from_dict(data)
    assert load_target_file(js).name == "my-board"


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"family": "tpu"}, "family"),
        ({"memory_bandwidth_gb_s": -1}, "memory_bandwidth_gb_s"),
        ({"peak_macs_per_s": {}}, "peak_macs_per_s"),
        ({"peak_macs_per_s": {"eight": 1e9}}, "peak_macs_per_s"),
        ({"compute_efficiency": 1.5}, "compute_efficiency"),
        ({"name": "bad name!"}, "target.name"),
        ({"colour": "blue"}, "unknown keys"),
        ({"family": "fpga", "fpga": None}, "fpga"),
    ],
)
def test_bad_target_definitions_name_the_field(patch: dict[str, object], field: str) -> None:
    data = get_target("raspi4").to_dict() | patch
    with pytest.raises(LatencyModelError) as info:
        Target.from_dict(data)
    assert field in str(info.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(LatencyModelError, match="readable"):
        load_target_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(LatencyModelError, match="valid JSON"):
        load_target_file(bad)


@pytest.mark.parametrize("target_name", list_targets())
def test_batch_prediction_equals_per_plan_prediction(target_name: str) -> None:
    from latency_models import BatchPredictor

    target = get_target(target_name)
    rng = np.random.default_rng(3)
    plans = [Plan()] + [SPACE.sample(rng) for _ in range(60)]
    encoded = np.stack([SPACE.encode(p) for p in plans])
    batch = BatchPredictor(target, SPACE).latency_ms(encoded)
    single = np.array([predict(target, LAYERS, p).latency_ms for p in plans])
    np.testing.assert_allclose(batch, single, rtol=1e-12)


def test_builtin_targets_load_once_under_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service looks targets up from a thread pool: the first lookups race to load them."""
    import threading

    from latency_models import _target
    from search_spaces import Registry

    fresh = Registry("target", _target.LatencyModelError, loader=_target._load_builtin)
    monkeypatch.setattr(_target, "TARGETS", fresh)
    barrier = threading.Barrier(8)
    errors: list[Exception] = []

    def lookup() -> None:
        barrier.wait()
        try:
            _target.get_target("zcu102")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lookup) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
