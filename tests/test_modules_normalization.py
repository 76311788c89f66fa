"""Normalisation-family modules are plain: each is its spec's Call built (helpers of prototxt2py.nn with readable
arguments), copies and pickles, holds no IR/spec/protobuf object, and keeps Caffe's float32 parameters when the
net runs in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plain_module_checks import check_modules

import prototxt2py
from prototxt2py.layers.base import Call
from prototxt2py.reader import read_net_text

NET = """
layer { name: "in" type: "Input" top: "x" top: "s"
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } shape { dim: 3 dim: 4 } } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" }
layer { name: "bn_custom" type: "BatchNorm" bottom: "x" top: "bn2"
        batch_norm_param { use_global_stats: false moving_average_fraction: 0.9 eps: 0.001 } }
layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param { bias_term: true } }
layer { name: "sc_two" type: "Scale" bottom: "x" bottom: "s" top: "sc2" scale_param { bias_term: true } }
layer { name: "sc_bare_two" type: "Scale" bottom: "x" bottom: "s" top: "sc3" }
layer { name: "b" type: "Bias" bottom: "x" top: "b" bias_param { axis: 2 num_axes: 2 } }
layer { name: "b_two" type: "Bias" bottom: "x" bottom: "s" top: "b2" }
layer { name: "n" type: "Normalize" bottom: "x" top: "n"
        norm_param { across_spatial: false channel_shared: false } }
"""


def net_of(text: str, phase: str = "TEST") -> prototxt2py.backends.torch_runtime.CaffeNet:
    return prototxt2py.load(read_net_text(text), phase=phase)


def test_modules_are_their_calls_and_hold_plain_values() -> None:
    net = net_of(NET)
    targets = check_modules(net, ("normalization",))
    assert set(targets) == {"bn", "bn_custom", "sc", "sc_two", "sc_bare_two", "b", "b_two", "n"}
    calls = {node.name: node.spec.module(node) for node in net.graph.nodes if node.name in targets}
    # what generated code will show: Caffe's defaults left out, the prototxt's decimals kept
    assert calls["bn"] == Call("BatchNorm", (3,))
    assert calls["bn_custom"] == Call("BatchNorm", (3,), (("use_global_stats", False),
                                                         ("moving_average_fraction", 0.9), ("eps", 0.001)))
    assert calls["sc"] == Call("Scale", ((3,),), (("bias", True),))
    assert calls["sc_two"] == Call("Scale", ((3, 4),), (("bias", True), ("learned", False)))
    assert calls["sc_bare_two"] == Call("Scale", (), (("learned", False),))
    assert calls["b"] == Call("Bias", ((4, 5),), (("axis", 2),))
    assert calls["b_two"] == Call("Bias")
    assert calls["n"] == Call("Normalize", (3,), (("across_spatial", False), ("channel_shared", False)))


def test_blob_names_and_identity_fillers() -> None:
    net = net_of(NET)
    assert net.layer("bn").blob_names == ("mean", "variance", "scale_factor")
    assert net.layer("sc").blob_names == ("weight", "bias")
    assert net.layer("sc_two").blob_names == ("bias",)  # the factor is bottom 1: only the bias is a blob
    assert net.layer("sc_bare_two").blob_names == ()
    assert torch.equal(net.layer("sc").weight, torch.ones(3)) and torch.equal(net.layer("sc").bias, torch.zeros(3))
    assert torch.equal(net.layer("n").weight, torch.ones(3))  # SSD's default scale filler: constant 1
    assert all(not b.requires_grad for b in net.layer_blobs("bn"))  # statistics are buffers


def test_float_fields_stay_float32_in_float64() -> None:
    """Caffe reads eps / moving_average_fraction as float: a float64 run must use those float32 values."""
    net = net_of(NET).double()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5))
    s = rng.standard_normal((3, 4))
    bn = net.layer("bn")
    with torch.no_grad():
        bn.mean.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
        bn.variance.copy_(torch.tensor([0.25, 4.0, 1e-6], dtype=torch.float64))
        bn.scale_factor.fill_(0.5)
    out = net(torch.from_numpy(x), torch.from_numpy(s), all_blobs=True)
    mean = np.array([1.0, -2.0, 4.0])[:, None, None]
    var = np.array([0.5, 8.0, 2e-6])[:, None, None]
    want = (x - mean) / np.sqrt(var + np.float64(np.float32(1e-5)))
    np.testing.assert_allclose(out["bn"].numpy(), want, rtol=1e-13, atol=0)

    custom = net.layer("bn_custom")  # batch statistics in TEST: the sums are updated with float32(0.9)
    net(torch.from_numpy(x), torch.from_numpy(s))
    assert custom.scale_factor.item() == np.float64(np.float32(0.9)) + 1  # two passes: s = 0 -> 1 -> maf + 1
    assert custom.eps == np.float64(np.float32(0.001))


@pytest.mark.slow
def test_torch_compile_matches_eager_and_updates_statistics() -> None:
    torch._dynamo.reset()
    net, compiled_net = net_of(NET), net_of(NET)
    x, s = torch.randn(2, 3, 4, 5), torch.randn(3, 4)
    want = net(x, s)
    got = torch.compile(compiled_net, backend="aot_eager")(x, s)
    for name, value in got.items():
        torch.testing.assert_close(value, want[name], rtol=1e-6, atol=1e-6)
    for blob, ref in zip(compiled_net.layer_blobs("bn_custom"), net.layer_blobs("bn_custom"), strict=True):
        torch.testing.assert_close(blob, ref)  # the in-place moving sums survive compilation


def test_plain_filler_variance_norm_is_honoured() -> None:
    """Fillers reach the runtime as plain values (variance_norm by name): FAN_OUT must not fall back to FAN_IN."""
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 400 } } }
        layer { name: "s" type: "Scale" bottom: "x" top: "y"
                scale_param { filler { type: "xavier" variance_norm: FAN_OUT } } }
    """)
    weight = net.layer("s").weight  # shape (400,): fan_in = 400 / 400 = 1, fan_out = 400 (no axis 1)
    assert weight.abs().max() <= (3 / 400) ** 0.5 and weight.abs().max() > 0
