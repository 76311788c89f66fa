"""Elementwise-family modules as plain Calls: stock ``torch.nn`` classes where they are Caffe's layer, helpers of
``prototxt2py.nn.elementwise`` otherwise; each is exactly its Call's build, holds nothing of the IR/protobuf,
deep-copies and pickles. Numeric checks the golden suite lacks: Power that ignores its input stays in the
autograd graph with Caffe's zero gradient; the shared PReLU slope is a 0-axis blob filled with 0.25."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_modules_pooling import assert_plain_modules, net_of, trace_with_leaf_helpers
from torch import nn

from prototxt2py.nn.elementwise import (
    AbsVal,
    BinaryThreshold,
    Clip,
    Exp,
    ForkDropout,
    Log,
    Power,
    ScaledELU,
    SharedPReLU,
    Swish,
)

ELEMENTWISE_NET = """
layer { name: "relu" type: "ReLU" bottom: "x" top: "relu" }
layer { name: "leaky" type: "ReLU" bottom: "x" top: "leaky" relu_param { negative_slope: 0.1 } }
layer { name: "relu6" type: "ReLU6" bottom: "x" top: "relu6" }
layer { name: "sig" type: "Sigmoid" bottom: "x" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "x" top: "tanh" }
layer { name: "abs" type: "AbsVal" bottom: "x" top: "abs" }
layer { name: "bnll" type: "BNLL" bottom: "x" top: "bnll" }
layer { name: "thr" type: "Threshold" bottom: "x" top: "thr" threshold_param { threshold: 0.25 } }
layer { name: "elu" type: "ELU" bottom: "x" top: "elu" elu_param { alpha: 0.5 } }
layer { name: "selu" type: "ELU" bottom: "x" top: "selu" elu_param { alpha: 1.6733 lambda: 1.0507 } }
layer { name: "silu" type: "Swish" bottom: "x" top: "silu" }
layer { name: "swish" type: "Swish" bottom: "x" top: "swish" swish_param { beta: 2 } }
layer { name: "clip" type: "Clip" bottom: "x" top: "clip" clip_param { min: -0.5 max: 0.5 } }
layer { name: "pow" type: "Power" bottom: "x" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "exp" type: "Exp" bottom: "x" top: "exp" exp_param { base: 2 scale: 0.5 shift: 1 } }
layer { name: "log" type: "Log" bottom: "exp" top: "log" log_param { base: 10 shift: 1 } }
layer { name: "prelu" type: "PReLU" bottom: "x" top: "prelu" }
layer { name: "sprelu" type: "PReLU" bottom: "x" top: "sprelu" prelu_param { channel_shared: true } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "drop" dropout_param { dropout_ratio: 0.3 } }
layer { name: "fdrop" type: "Dropout" bottom: "x" top: "fdrop" dropout_param { scale_train: false } }
"""

EXPECTED = {
    "relu": nn.ReLU, "leaky": nn.LeakyReLU, "relu6": nn.ReLU6, "sig": nn.Sigmoid, "tanh": nn.Tanh,
    "abs": AbsVal, "bnll": nn.Softplus, "thr": BinaryThreshold, "elu": nn.ELU, "selu": ScaledELU,
    "silu": nn.SiLU, "swish": Swish, "clip": Clip, "pow": Power, "exp": Exp, "log": Log, "prelu": nn.PReLU,
    "sprelu": SharedPReLU, "drop": nn.Dropout, "fdrop": ForkDropout,
}
TYPES = {"ReLU", "ReLU6", "Sigmoid", "TanH", "AbsVal", "BNLL", "Threshold", "ELU", "Swish", "Clip", "Power", "Exp",
         "Log", "PReLU", "Dropout"}
SHAPE = (2, 3, 4, 5)


def test_modules_are_their_calls() -> None:
    net = net_of(ELEMENTWISE_NET, SHAPE)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0))
    assert_plain_modules(net, TYPES, (x,))
    assert {name: type(net.layer(name)) for name in EXPECTED} == EXPECTED
    assert net.layer("leaky").negative_slope == pytest.approx(0.1)
    assert net.layer("drop").p == pytest.approx(0.3)
    # PReLU slopes: Caffe's blob shapes ((C,) and 0-axis) and default filler 0.25
    assert net.layer_blobs("prelu")[0].shape == (3,) and net.layer_blobs("sprelu")[0].shape == ()
    assert torch.equal(net.layer_blobs("prelu")[0], torch.full((3,), 0.25))
    assert net.layer_blobs("sprelu")[0].item() == 0.25


def test_modules_in_double_and_traced() -> None:
    net = net_of(ELEMENTWISE_NET, SHAPE)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    want = net(x, all_blobs=True)
    got = net.double()(x.double(), all_blobs=True)
    for name, value in want.items():
        assert got[name].dtype == torch.float64, name
        torch.testing.assert_close(got[name].float(), value, rtol=1e-5, atol=1e-6, msg=name)
    net.float()
    traced = trace_with_leaf_helpers(net)(x)
    for name, value in traced.items():
        assert torch.equal(value, want[name]), name


@pytest.mark.parametrize(("params", "constant"), [
    ("power: 0 scale: 3 shift: 2", 1.0),
    ("power: 2 scale: 0 shift: 3", 9.0),
    ("power: -1 scale: 0 shift: 0", float("inf")),
    ("power: 0.5 scale: 0 shift: -2", float("nan")),
])
def test_power_ignoring_its_input_stays_in_the_graph(params: str, constant: float) -> None:
    """Caffe's PowerLayer with ``power * scale == 0``: top = ``shift ^ power`` (1 for power 0) whatever the input
    (inf and nan included), bottom diff set to 0. The top requires grad like any layer's, so a loss through it
    backpropagates, and the input's gradient is exactly 0."""
    net = net_of(f'layer {{ name: "p" type: "Power" bottom: "x" top: "y" power_param {{ {params} }} }}', (2, 3))
    x = torch.tensor([[1.0, -2.0, 0.0], [float("inf"), float("nan"), 3.5]], requires_grad=True)
    y = net(x=x)["y"]
    assert y.requires_grad and y.grad_fn is not None
    np.testing.assert_array_equal(y.detach().numpy(), np.full((2, 3), constant, np.float32))
    (y * torch.randn(2, 3)).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros(2, 3))


def test_power_constant_of_a_net_input_without_grad() -> None:
    """Without autograd the constant top is a plain tensor of the input's shape and dtype."""
    y = Power(0.0, 1.0, 5.0)(torch.zeros(4, 2, dtype=torch.float64))
    assert y.dtype == torch.float64 and torch.equal(y, torch.ones(4, 2, dtype=torch.float64))
    assert not y.requires_grad


@pytest.mark.parametrize(("lo", "hi", "want"), [(-1.0, 1.0, [-1.0, -1.0, 0.25, 1.0, 1.0]),
                                                 (1.0, -1.0, [1.0, 1.0, 1.0, 1.0, 1.0])])
def test_clip_of_nan_is_min_with_zero_gradient(lo: float, hi: float, want: list[float]) -> None:
    """clip_layer.cpp: ``std::max(min, std::min(x, max))`` is ``min`` for NaN (each comparison with NaN fails and
    std::min/std::max return their first argument); the bottom diff is ``x >= min && x <= max``, 0 for NaN. The
    layer alone and fused after a convolution (oneDNN's post-op) give the same."""
    x = torch.tensor([float("nan"), -3.0, 0.25, 2.0, float("inf")], requires_grad=True)
    y = Clip(lo, hi)(x)
    assert y.tolist() == want
    y.sum().backward()
    assert x.grad.tolist() == ([0.0, 0.0, 1.0, 0.0, 0.0] if lo <= hi else [0.0] * 5)
    net = net_of('layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 16 '
                 'kernel_size: 3 pad: 1 } }\n'
                 f'layer {{ name: "cl" type: "Clip" bottom: "c" top: "c" clip_param {{ min: {lo} max: {hi} }} }}',
                 (1, 8, 32, 32)).eval()
    x = torch.randn(1, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    x[0, 0, 5, 5] = float("nan")
    with torch.no_grad():
        for out in (net(x)["c"], net(x, all_blobs=True)["c"]):
            assert not out.isnan().any() and bool((out[0, :, 4:7, 4:7] == lo).all())


def test_fork_dropout_through_the_net() -> None:
    """``scale_train: false``: TEST scales by 1 - ratio (Faster R-CNN's deploy nets rely on it)."""
    net = net_of(ELEMENTWISE_NET, SHAPE)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(net(x, all_blobs=True)["fdrop"], x * 0.5)
    torch.testing.assert_close(net(x, all_blobs=True)["drop"], x)
