"""Structure-family modules are plain: each is its spec's Call built (``nn.Flatten``/``nn.Softmax`` where those are
Caffe's semantics, prototxt2py.nn helpers otherwise), copies and pickles, holds no IR/spec/protobuf object, and
follows ``.double()``; plus the cases the golden suite lacks (Flatten's empty axis range, DummyData's random
fillers, float32 coefficients in float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from plain_module_checks import check_modules

import prototxt2py
from prototxt2py.layers.base import Call
from prototxt2py.reader import read_net_text

NET = """
layer { name: "in" type: "Input" top: "x" top: "y" top: "idx" top: "sel"
        input_param { shape { dim: 2 dim: 4 dim: 3 dim: 3 } shape { dim: 2 dim: 4 dim: 3 dim: 3 }
                      shape { dim: 3 } shape { dim: 2 dim: 1 } } }
layer { name: "cat" type: "Concat" bottom: "x" bottom: "y" top: "cat" }
layer { name: "cat0" type: "Concat" bottom: "x" bottom: "y" top: "cat0" concat_param { concat_dim: 0 } }
layer { name: "sl" type: "Slice" bottom: "cat" top: "sl1" top: "sl2" slice_param { slice_point: 3 } }
layer { name: "sl_eq" type: "Slice" bottom: "x" top: "h1" top: "h2" slice_param { axis: 0 } }
layer { name: "split" type: "Split" bottom: "x" top: "x1" top: "x2" }
layer { name: "sil" type: "Silence" bottom: "h2" }
layer { name: "fl" type: "Flatten" bottom: "x1" top: "fl" }
layer { name: "fl_mid" type: "Flatten" bottom: "x1" top: "fl_mid" flatten_param { axis: 1 end_axis: -2 } }
layer { name: "fl_empty" type: "Flatten" bottom: "x1" top: "fl_empty" flatten_param { axis: 2 end_axis: 1 } }
layer { name: "rs" type: "Reshape" bottom: "x2" top: "rs" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "crop" type: "Crop" bottom: "cat" bottom: "x" top: "crop"
        crop_param { axis: 1 offset: 2 offset: 0 offset: 0 } }
layer { name: "tile" type: "Tile" bottom: "x" top: "tile" tile_param { tiles: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "y" top: "sum" }
layer { name: "wsum" type: "Eltwise" bottom: "x" bottom: "y" top: "wsum" eltwise_param { coeff: 0.1 coeff: -1 } }
layer { name: "prod" type: "Eltwise" bottom: "x" bottom: "y" top: "prod"
        eltwise_param { operation: PROD stable_prod_grad: false } }
layer { name: "max" type: "Eltwise" bottom: "x" bottom: "y" top: "max" eltwise_param { operation: MAX } }
layer { name: "sm" type: "Softmax" bottom: "x" top: "sm" }
layer { name: "red" type: "Reduction" bottom: "x" top: "red"
        reduction_param { operation: MEAN axis: 1 coeff: 0.3 } }
layer { name: "am" type: "ArgMax" bottom: "x" top: "am" argmax_param { axis: 1 top_k: 2 } }
layer { name: "ri" type: "BatchReindex" bottom: "x" bottom: "idx" top: "ri" }
layer { name: "flt" type: "Filter" bottom: "x" bottom: "sel" top: "flt" }
layer { name: "par" type: "Parameter" top: "par" parameter_param { shape { dim: 2 dim: 3 } } }
layer { name: "dd" type: "DummyData" top: "d1" top: "d2"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 dim: 5 }
                           data_filler { type: "constant" value: 0.1 }
                           data_filler { type: "xavier" variance_norm: FAN_OUT } } }
layer { name: "dd0" type: "DummyData" top: "d0" dummy_data_param { shape { dim: 3 } } }
"""

CALLS = {
    "cat": Call("Concat"),
    "cat0": Call("Concat", (), (("axis", 0),)),
    "sl": Call("Slice", (2,), (("slice_point", (3,)),)),
    "sl_eq": Call("Slice", (2,), (("axis", 0),)),
    "split": Call("Split", (2,)),
    "sil": Call("Silence"),
    "fl": Call("nn.Flatten"),
    "fl_mid": Call("nn.Flatten", (), (("end_dim", -2),)),
    "fl_empty": Call("Reshape", ((1,),), (("axis", 2), ("num_axes", 0))),
    "rs": Call("Reshape", ((0, -1),)),
    "crop": Call("Crop", (), (("axis", 1), ("offset", (2, 0, 0)))),
    "tile": Call("Tile", (2,)),
    "sum": Call("Eltwise"),
    "wsum": Call("Eltwise", (), (("coeff", (0.1, -1.0)),)),
    "prod": Call("Eltwise", (), (("operation", "PROD"), ("stable_prod_grad", False))),
    "max": Call("Eltwise", (), (("operation", "MAX"),)),
    "sm": Call("nn.Softmax", (), (("dim", 1),)),
    "red": Call("Reduction", (), (("operation", "MEAN"), ("axis", 1), ("coeff", 0.3))),
    "am": Call("ArgMax", (), (("top_k", 2), ("axis", 1))),
    "ri": Call("BatchReindex"),
    "flt": Call("Filter"),
    "par": Call("ParameterLayer", ((2, 3),)),
    "dd": Call("DummyData", (((2, 3), (4, 5)),), (("data_filler", (
        (("type", "constant"), ("value", 0.1)), (("type", "xavier"), ("variance_norm", "FAN_OUT")))),)),
    "dd0": Call("DummyData", (((3,),),)),
}


def net_of(text: str, phase: str = "TEST") -> prototxt2py.backends.torch_runtime.CaffeNet:
    return prototxt2py.load(read_net_text(text), phase=phase)


def feed(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(2, 4, 3, 3, generator=g, dtype=dtype) for _ in range(2))
    return x, y, torch.tensor([1.0, 0.0, 1.0], dtype=dtype), torch.tensor([[0.0], [2.0]], dtype=dtype)


def test_modules_are_their_calls_and_hold_plain_values() -> None:
    net = net_of(NET)
    targets = check_modules(net, ("structure",))
    assert set(targets) == set(CALLS)
    for node in net.graph.nodes:
        if node.name in CALLS:
            assert node.spec.module(node) == CALLS[node.name], node.name


def test_outputs_match_plain_torch() -> None:
    net = net_of(NET)
    x, y, idx, sel = feed()
    out = net(x, y, idx, sel, all_blobs=True)
    assert torch.equal(out["fl_empty"], x.reshape(2, 4, 1, 3, 3))  # Caffe inserts an axis for an empty range
    assert torch.equal(out["fl_mid"], x.reshape(2, 12, 3))
    assert torch.equal(out["crop"], torch.cat([x, y], 1)[:, 2:6])
    assert torch.equal(out["wsum"], x * np.float32(0.1) - y)
    assert torch.equal(out["d1"], torch.full((2, 3), 0.1))
    bound = math.sqrt(3.0 / 4.0)  # xavier FAN_OUT on (4, 5): fan_out = 20 / 5
    assert out["d2"].shape == (4, 5) and out["d2"].abs().max() <= bound
    assert torch.equal(out["d0"], torch.zeros(3))
    assert out["flt"].shape == (1, 4, 3, 3) and torch.equal(out["flt"][0], x[1])


def test_float64_keeps_float32_coefficients_and_dummy_data_follows_dtype() -> None:
    net = net_of(NET).double()
    x, y, idx, sel = feed(torch.float64)
    out = net(x, y, idx, sel, all_blobs=True)
    c = np.float64(np.float32(0.1))
    assert torch.equal(out["wsum"], x * c - y)
    mean_coeff = np.float64(np.float32(0.3) / np.float32(36))  # Caffe folds 1/36 into the float coeff
    torch.testing.assert_close(out["red"], x.reshape(2, 36).sum(1) * mean_coeff, rtol=1e-15, atol=0)
    assert out["d1"].dtype == torch.float64 and out["d2"].dtype == torch.float64
    assert torch.equal(out["d1"], torch.full((2, 3), c, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "positive_unitball", "msra"])
def test_dummy_data_random_fillers_redraw(kind: str) -> None:
    net = net_of(f"""
        layer {{ name: "dd" type: "DummyData" top: "d"
                dummy_data_param {{ shape {{ dim: 3 dim: 50 }} data_filler {{ type: "{kind}" }} }} }}
    """)
    first, second = net()["d"], net()["d"]
    assert first.shape == (3, 50) and not torch.equal(first, second)
    if kind == "positive_unitball":
        torch.testing.assert_close(first.sum(1), torch.ones(3))
    if kind == "uniform":
        assert 0 <= first.min() and first.max() <= 1


def test_unknown_dummy_filler_is_refused_at_build() -> None:
    with pytest.raises(prototxt2py.errors.Prototxt2pyError, match="unknown filler type 'nope'"):
        net_of('layer { name: "dd" type: "DummyData" top: "d" '
               'dummy_data_param { shape { dim: 3 } data_filler { type: "nope" } } }')


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    torch._dynamo.reset()
    net = net_of(NET)
    inputs = feed()
    want = net(*inputs)
    got = torch.compile(net, backend="aot_eager")(*inputs)
    assert sorted(got) == sorted(want)
    for name, value in got.items():
        if name not in ("d1", "d2", "d0"):  # DummyData: random tops are drawn anew
            torch.testing.assert_close(value, want[name], rtol=0, atol=0)
