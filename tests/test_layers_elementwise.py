"""Elementwise layers where the golden suite has no case: exact kinks (inputs exactly on 0 / the clip bounds),
ReLU6, Dropout in TRAIN and its fork fields, degenerate parameters, in-place chains on a net input.

Expected values are Caffe's Forward_cpu/Backward_cpu formulas written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prototxt2py
from prototxt2py.errors import GraphError, ShapeError
from prototxt2py.nn.elementwise import ForkDropout, ScaledELU
from prototxt2py.reader import read_net_text

# Points on every kink of the layers below: 0, the clip bounds -0.5 / 0.8, 6, the threshold 0.3.
X = np.array([[-7.0, -1.0, -0.5, 0.0, 0.3, 0.8, 1.0, 6.0, 7.0]], dtype=np.float32)
DIFF = np.random.default_rng(0).standard_normal(X.shape).astype(np.float32)


def net_of(layers: str, shape: tuple[int, ...] = X.shape, phase: str = "TEST") -> prototxt2py.CaffeNet:
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f'name: "t"\nlayer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n{layers}'
    return prototxt2py.load(read_net_text(text), phase=phase)


def run(layers: str, top: str = "y", x: np.ndarray = X) -> tuple[np.ndarray, np.ndarray]:
    """Forward value of ``top`` and the gradient of <DIFF, top> with respect to the input."""
    net = net_of(layers, x.shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    y = net(x=xt, all_blobs=True)[top]
    if y.requires_grad:  # a Power that ignores its input (power or scale 0) is a constant: Caffe's diff is 0
        (y * torch.from_numpy(DIFF)).sum().backward()
    grad = np.zeros_like(x) if xt.grad is None else xt.grad.numpy()
    return y.detach().numpy(), grad


def layer(type_: str, params: str = "") -> str:
    return f'layer {{ name: "l" type: "{type_}" bottom: "x" top: "y" {params} }}\n'


KINKS = {
    "relu": (layer("ReLU"), np.maximum(X, 0), (X > 0).astype(np.float32)),
    "leaky": (
        layer("ReLU", "relu_param { negative_slope: 0.1 }"),
        np.maximum(X, 0) + np.float32(0.1) * np.minimum(X, 0),
        (X > 0) + np.float32(0.1) * (X <= 0),
    ),
    "absval": (layer("AbsVal"), np.abs(X), np.sign(X)),
    "clip": (layer("Clip", "clip_param { min: -0.5 max: 0.8 }"), np.clip(X, -0.5, 0.8), (X >= -0.5) & (X <= 0.8)),
    "clip_min_above_max": (layer("Clip", "clip_param { min: 1 max: -1 }"), np.ones_like(X), np.zeros_like(X)),
    "relu6": (layer("ReLU6"), np.clip(X, 0, 6), (X > 0) & (X < 6)),
    "elu": (
        layer("ELU", "elu_param { alpha: 0.5 }"),
        np.where(X > 0, X, 0.5 * (np.exp(np.minimum(X, 0)) - 1)),
        np.where(X > 0, 1.0, 0.5 * np.exp(np.minimum(X, 0))),
    ),
    "prelu_default_slope": (
        layer("PReLU"),
        np.maximum(X, 0) + 0.25 * np.minimum(X, 0),
        (X > 0) + 0.25 * (X <= 0),
    ),
    "power_zero": (layer("Power", "power_param { power: 0 scale: 3 }"), np.ones_like(X), np.zeros_like(X)),
    "power_scale_zero": (
        layer("Power", "power_param { power: 3 scale: 0 shift: 2 }"),
        np.full_like(X, 8.0),
        np.zeros_like(X),
    ),
}


@pytest.mark.parametrize("name", list(KINKS))
def test_kinks_match_caffe_backward(name: str) -> None:
    layers, want_y, local_grad = KINKS[name]
    y, grad = run(layers)
    np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, DIFF * local_grad.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_threshold_is_strict_and_float() -> None:
    net = net_of(layer("Threshold", "threshold_param { threshold: 0.3 }"))
    y = net(x=torch.from_numpy(X))["y"]
    assert y.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), (X > np.float32(0.3)).astype(np.float32))
    assert y.numpy()[0, 4] == 0.0  # x == threshold gives 0


def test_inplace_chain_on_input() -> None:
    """Power -> ReLU (in place) -> Sigmoid (in place): blob y holds the last value, gradients chain."""
    layers = (
        'layer { name: "p" type: "Power" bottom: "x" top: "y" power_param { scale: 2 shift: -1 } }\n'
        'layer { name: "r" type: "ReLU" bottom: "y" top: "y" }\n'
        'layer { name: "s" type: "Sigmoid" bottom: "y" top: "y" }\n'
    )
    y, grad = run(layers)
    u = 2 * X - 1
    s = 1 / (1 + np.exp(-np.maximum(u, 0)))
    np.testing.assert_allclose(y, s, rtol=1e-6)
    np.testing.assert_allclose(grad, DIFF * s * (1 - s) * (u > 0) * 2, rtol=1e-5, atol=1e-7)


def test_prelu_inplace_channelwise_slope_gradient() -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 2, 2)).astype(np.float32)
    net = net_of('layer { name: "l" type: "PReLU" bottom: "x" top: "x" }\n', x.shape)
    module = net.layer("l")
    assert tuple(module.weight.shape) == (3,)
    slopes = np.array([0.5, -0.25, 2.0], dtype=np.float32)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(slopes))
    diff = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    y = net(x=torch.from_numpy(x), all_blobs=True)["x"]
    (y * torch.from_numpy(diff)).sum().backward()
    c = slopes[None, :, None, None]
    np.testing.assert_allclose(y.detach().numpy(), np.where(x > 0, x, c * x), rtol=1e-6)
    want = (diff * x * (x <= 0)).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(module.weight.grad.numpy(), want, rtol=1e-5, atol=1e-6)


def test_prelu_channel_shared_blob_is_0d() -> None:
    net = net_of('layer { name: "l" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true } }\n')
    module = net.layer("l")
    assert module.blob_names == ("weight",)
    assert tuple(module.weight.shape) == ()
    assert module.weight.item() == 0.25


def test_prelu_needs_two_axes() -> None:
    with pytest.raises(ShapeError, match="at least 2 axes"):
        net_of(layer("PReLU"), shape=(5,))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ('type: "Exp" exp_param { base: -2 }', "strictly positive"),
        ('type: "Log" log_param { base: 0 }', "strictly positive"),
        ('type: "Log" log_param { base: 1 }', "base 1"),
        ('type: "Clip" clip_param { min: 0 }', "min and max"),
    ],
)
def test_invalid_parameters(params: str, message: str) -> None:
    with pytest.raises(GraphError, match=message):
        net_of(f'layer {{ name: "l" {params} bottom: "x" top: "y" }}\n')


def test_dropout_train_is_inverted_and_test_is_identity() -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(3).uniform(1, 2, (64, 256)).astype(np.float32)
    layers = layer("Dropout", "dropout_param { dropout_ratio: 0.25 }")
    train = net_of(layers, x.shape, phase="TRAIN")
    xt = torch.from_numpy(x).requires_grad_(True)
    y = train(x=xt)["y"]
    y.sum().backward()
    kept = y.detach().numpy() != 0
    assert abs(kept.mean() - 0.75) < 0.03  # > 5 standard deviations of the sample mean
    np.testing.assert_allclose(y.detach().numpy()[kept], x[kept] / np.float32(0.75), rtol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), kept / np.float32(0.75), rtol=1e-6)
    test = net_of(layers, x.shape, phase="TEST")
    np.testing.assert_array_equal(test(x=torch.from_numpy(x))["y"].numpy(), x)


def test_dropout_fork_fields() -> None:
    torch.manual_seed(0)
    x = torch.rand(128, 128) + 1
    unscaled = ForkDropout(0.4, scale_train=False)  # Faster R-CNN / R-FCN scale_train: false
    y = unscaled(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.6) < 0.02  # > 5 standard deviations of the sample mean
    assert torch.equal(y[kept], x[kept])
    unscaled.eval()
    np.testing.assert_allclose(unscaled(x).numpy(), x.numpy() * 0.6, rtol=1e-6)
    mc = ForkDropout(0.5, sample_test=True).eval()  # SegNet sample_weights_test: masks at test time
    y = mc(x)
    assert 0.45 < (y == 0).float().mean().item() < 0.55


def test_elu_lambda_scales_output() -> None:
    x = torch.from_numpy(X)
    want = 1.0507 * np.where(X > 0, X, 1.6733 * (np.exp(np.minimum(X, 0)) - 1))
    np.testing.assert_allclose(ScaledELU(1.6733, 1.0507)(x).numpy(), want, rtol=1e-6, atol=1e-7)
