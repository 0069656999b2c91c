"""The two measurement CSV formats: good tables parse, bad ones name the row and column; measured
layers become feature rows in the network vocabulary."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from inventories import LAYERS

from latency_models import (
    FEATURE_NAMES,
    LayerMeasurement,
    MeasurementError,
    get_target,
    layer_features,
    measurement_format,
    network_features,
    read_layer_measurements,
    read_network_measurements,
)
from search_spaces import Choice, LayerKind, Plan

NB = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def test_network_table_parses() -> None:
    text = (
        "model,plan,batch,latency_ms,energy_mj\n"
        f"nasbench201:{NB},,1,3.5,\n"
        'digits-cnn,"{""layers"": {""conv2"": {""rank"": 8}}}",4,0.8,1.2\n'
    )
    rows = read_network_measurements(io.StringIO(text))
    assert [r.model for r in rows] == [f"nasbench201:{NB}", "digits-cnn"]
    assert rows[0].batch == 1 and rows[0].plan.choices == {} and rows[0].energy_mj is None
    assert rows[1].batch == 4 and rows[1].plan["conv2"] == Choice(rank=8) and rows[1].energy_mj == 1.2


def test_layer_table_parses() -> None:
    text = (
        "name,kind,in_channels,out_channels,kernel_h,kernel_w,input_h,input_w,output_h,output_w,rank,wbits,latency_ms\n"
        "a,conv2d,16,32,3,3,8,8,8,8,8,8,0.12\n"
        "b,linear,64,10,,,,,,,,,0.01\n"
    )
    rows = read_layer_measurements(io.StringIO(text))
    assert rows[0].layer.kind is LayerKind.CONV2D and rows[0].layer.kernel_size == (3, 3)
    assert rows[0].choice == Choice(rank=8, wbits=8) and rows[0].latency_ms == 0.12
    assert rows[1].layer.kind is LayerKind.LINEAR and rows[1].choice == Choice()


@pytest.mark.parametrize(
    "text,where",
    [
        ("model,latency_ms\ndigits-cnn,fast\n", "row 2, column 'latency_ms'"),
        ("model,latency_ms\ndigits-cnn,-1\n", "row 2, column 'latency_ms'"),
        ("model,latency_ms\ndigits-cnn,1\ndigits-cnn,\n", "row 3, column 'latency_ms'"),
        ("model,latency_ms\n,1\n", "row 2, column 'model'"),
        ("model\ndigits-cnn\n", "missing columns ['latency_ms']"),
        ("model,latency_ms,colour\ndigits-cnn,1,red\n", "unknown columns"),
        ("model,batch,latency_ms\ndigits-cnn,0,1\n", "row 2, column 'batch'"),
        ("model,batch,latency_ms\ndigits-cnn,2.5,1\n", "row 2, column 'batch'"),
        ("model,plan,latency_ms\ndigits-cnn,{oops,1\n", "row 2, column 'plan'"),
        ("model,latency_ms\n", "at least one data row"),
    ],
)
def test_bad_network_tables_name_row_and_column(text: str, where: str) -> None:
    with pytest.raises(MeasurementError) as info:
        read_network_measurements(io.StringIO(text))
    assert where in str(info.value)


@pytest.mark.parametrize(
    "text,where",
    [
        ("name,kind,in_channels,out_channels,latency_ms\na,lstm,1,1,1\n", "row 2, column 'kind'"),
        ("name,kind,in_channels,out_channels,latency_ms\na,linear,1.5,1,1\n", "row 2, column 'in_channels'"),
        ("name,kind,in_channels,out_channels,wbits,latency_ms\na,linear,4,4,5,1\n", "row 2, column 'wbits'"),
        ("name,kind,in_channels,latency_ms\na,linear,4,1\n", "missing columns ['out_channels']"),
        (
            "name,kind,in_channels,out_channels,latency_ms\na,linear,4,4,1\nb,linear,4,4,-2\n",
            "row 3, column 'latency_ms'",
        ),
        ("name,kind,in_channels,out_channels,latency_ms\na,linear,4,4,\n", "row 2, column 'latency_ms'"),
        ("name,kind,in_channels,out_channels,latency_ms\na,elementwise,4,4,1\n", "row 2, column 'kind'"),
        ("name,kind,in_channels,out_channels,latency_ms\na,linear,0,4,1\n", "row 2, column 'in_channels'"),
        ("name,kind,in_channels,out_channels,colour,latency_ms\na,linear,4,4,red,1\n", "unknown columns"),
        # A conv needs the spatial size it ran at; attention its tokens and heads.
        (
            "name,kind,in_channels,out_channels,kernel_h,kernel_w,latency_ms\na,conv2d,4,4,3,3,1\n",
            "row 2, column 'input_h'",
        ),
        (
            "name,kind,in_channels,out_channels,tokens,latency_ms\na,attention,64,64,65,1\n",
            "row 2, column 'heads'",
        ),
        (
            "name,kind,in_channels,out_channels,groups,input_h,input_w,output_h,output_w,latency_ms\n"
            "a,grouped_conv2d,6,6,4,8,8,8,8,1\n",
            "row 2, column 'groups'",
        ),
        # Choices are checked against the layer: rank within its full rank, knobs its kind offers.
        ("name,kind,in_channels,out_channels,rank,latency_ms\na,linear,4,8,5,1\n", "row 2, column 'rank'"),
        (
            "name,kind,in_channels,out_channels,groups,input_h,input_w,output_h,output_w,rank,latency_ms\n"
            "a,depthwise_conv2d,8,8,8,4,4,4,4,2,1\n",
            "row 2, column 'rank'",
        ),
        ("name,kind,in_channels,out_channels,keep,latency_ms\na,linear,4,8,1.5,1\n", "row 2, column 'keep'"),
        (
            "name,kind,in_channels,out_channels,token_keep,latency_ms\na,linear,4,8,0.5,1\n",
            "row 2, column 'token_keep'",
        ),
        (
            "name,kind,in_channels,out_channels,tokens,heads,token_keep,latency_ms\na,attention,64,64,65,4,0.5,1\n",
            "row 2, column 'token_keep'",
        ),
        (
            "name,kind,in_channels,out_channels,tokens,heads,wbits,latency_ms\na,attention,64,64,65,4,8,1\n",
            "row 2, column 'wbits'",
        ),
    ],
)
def test_bad_layer_tables_name_row_and_column(text: str, where: str) -> None:
    with pytest.raises(MeasurementError) as info:
        read_layer_measurements(io.StringIO(text))
    assert where in str(info.value)


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(MeasurementError, match="readable"):
        read_network_measurements(tmp_path / "nope.csv")


def test_format_is_told_by_the_header(tmp_path: Path) -> None:
    for text, fmt in (
        ("model,latency_ms\ndigits-cnn,1\n", "network"),
        ("name,kind,in_channels,out_channels,latency_ms\na,linear,4,4,1\n", "layer"),
    ):
        (tmp_path / "m.csv").write_text(text)
        assert measurement_format(tmp_path / "m.csv") == fmt
    (tmp_path / "m.csv").write_text("net,ms\nx,1\n")
    with pytest.raises(MeasurementError, match=r"'model' column.*'kind' column"):
        measurement_format(tmp_path / "m.csv")


def test_keep_prunes_the_measured_layers_output_channels() -> None:
    text = (
        "name,kind,in_channels,out_channels,kernel_h,kernel_w,input_h,input_w,output_h,output_w,keep,latency_ms\n"
        "a,conv2d,16,32,3,3,8,8,8,8,,1\n"
        "a,conv2d,16,32,3,3,8,8,8,8,0.5,1\n"
    )
    x = layer_features(get_target("raspi4"), read_layer_measurements(io.StringIO(text)))
    macs = x[:, FEATURE_NAMES.index("conv_kxk_macs")]
    assert macs[0] == 32 * 16 * 9 * 64 and macs[1] == macs[0] / 2


@pytest.mark.parametrize("target_name", ["raspi4", "zcu102"])
def test_layer_features_add_up_to_the_network(target_name: str) -> None:
    """A network's features are the sum of its layers' (one-layer networks), batch aside: what
    lets a predictor fitted on measured layers cost whole networks."""
    target = get_target(target_name)
    plan = Plan({"stem": Choice(rank=4, wbits=8, abits=8), "blk.fc1": Choice(rank=8, wbits=4, abits=8)})
    rows = [LayerMeasurement(layer, plan[layer.name], 1.0) for layer in LAYERS]
    summed = layer_features(target, rows).sum(axis=0)
    whole = network_features(target, list(LAYERS), plan)
    batch = FEATURE_NAMES.index("batch")
    np.testing.assert_allclose(np.delete(summed, batch), np.delete(whole, batch), rtol=1e-12)
