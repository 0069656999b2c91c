"""The two measurement CSV formats: good tables parse, bad ones name the row and column."""

from __future__ import annotations

import io

import pytest

from latency_models import MeasurementError, read_layer_measurements, read_network_measurements
from search_spaces import Choice, LayerKind

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
        ("name,kind,in_channels,out_channels,wbits,latency_ms\na,linear,4,4,5,1\n", "row 2.wbits"),
        ("name,kind,in_channels,latency_ms\na,linear,4,1\n", "missing columns ['out_channels']"),
    ],
)
def test_bad_layer_tables_name_row_and_column(text: str, where: str) -> None:
    with pytest.raises(MeasurementError) as info:
        read_layer_measurements(io.StringIO(text))
    assert where in str(info.value)


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(MeasurementError, match="readable"):
        read_network_measurements(tmp_path / "nope.csv")
