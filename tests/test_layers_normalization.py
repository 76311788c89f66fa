"""Normalisation family edges the golden suite does not cover: SSD's Normalize, 2-D and single-sample
BatchNorm in TRAIN, the BatchNorm fold, fresh (unweighted) layers, scalar and two-bottom Scale/Bias forms,
and Caffe's refusals. Expected values are computed independently with numpy (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prototxt2py
from prototxt2py.errors import GraphError, ShapeError
from prototxt2py.reader import read_net_text


def net_from(text: str, phase: str = "TEST"):
    return prototxt2py.load(read_net_text(text), phase=phase)


def input_layer(*shapes: tuple[int, ...], tops: tuple[str, ...] = ("x",)) -> str:
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes)
    top = " ".join(f'top: "{t}"' for t in tops)
    return f'layer {{ name: "in" type: "Input" {top} input_param {{ {dims} }} }}\n'


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run(net, feed: dict[str, np.ndarray], top: str, top_diff: np.ndarray):
    """Forward, then backward with ``top_diff`` seeded on ``top``; returns (top, {input: grad})."""
    tensors = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in feed.items()}
    out = net(**tensors, all_blobs=True)[top]
    (out * torch.from_numpy(top_diff)).sum().backward()
    return out.detach().numpy(), {k: t.grad.numpy() for k, t in tensors.items()}


# -- Normalize -------------------------------------------------------------------------------------------
def test_normalize_across_spatial_channel_shared():
    net = net_from(input_layer((2, 3, 2, 2)) + """
        layer { name: "n" type: "Normalize" bottom: "x" top: "y"
                norm_param { scale_filler { type: "constant" value: 2.5 } } }""")
    assert net.graph.node("n").param_shapes == [()]
    x, dy = rand(2, 3, 2, 2), rand(2, 3, 2, 2, seed=1)
    y, grads = run(net, {"x": x}, "y", dy)

    xd, dyd, eps = x.astype(np.float64), dy.astype(np.float64), 1e-10
    norm = np.sqrt((xd**2).sum(axis=(1, 2, 3), keepdims=True) + eps)
    np.testing.assert_allclose(y, 2.5 * xd / norm, rtol=1e-5, atol=1e-6)
    dot = (xd * dyd).sum(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(grads["x"], 2.5 * (dyd - xd * dot / norm**2) / norm, rtol=1e-4, atol=1e-6)
    weight_grad = net.layer("n").weight.grad.numpy()
    assert weight_grad.shape == ()
    np.testing.assert_allclose(weight_grad, (xd / norm * dyd).sum(), rtol=1e-4, atol=1e-6)


def test_normalize_per_position_per_channel_scale():
    net = net_from(input_layer((2, 3, 4, 5)) + """
        layer { name: "n" type: "Normalize" bottom: "x" top: "y"
                norm_param { across_spatial: false channel_shared: false eps: 0.01 } }""")
    assert net.graph.node("n").param_shapes == [(3,)]
    scale = np.array([20.0, -1.5, 0.5], dtype=np.float32)
    with torch.no_grad():
        net.layer("n").weight.copy_(torch.from_numpy(scale))
    x, dy = rand(2, 3, 4, 5), rand(2, 3, 4, 5, seed=1)
    y, grads = run(net, {"x": x}, "y", dy)

    xd, dyd, s = x.astype(np.float64), dy.astype(np.float64), scale.astype(np.float64)[None, :, None, None]
    norm = np.sqrt((xd**2).sum(axis=1, keepdims=True) + 0.01)
    np.testing.assert_allclose(y, s * xd / norm, rtol=1e-5, atol=1e-5)
    # SSD Caffe's input gradient leaves the per-channel scale out of the dot product (not the true derivative).
    dot = (xd * dyd).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(grads["x"], s * (dyd - xd * dot / norm**2) / norm, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.layer("n").weight.grad.numpy(), (xd / norm * dyd).sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-5)


def test_normalize_rejects_more_than_four_axes():
    with pytest.raises(ShapeError, match="2 to 4 axes"):
        prototxt2py.graph(read_net_text(input_layer((1, 2, 3, 4, 5)) +
                                        'layer { name: "n" type: "Normalize" bottom: "x" top: "y" }'))


# -- BatchNorm -------------------------------------------------------------------------------------------
BN = 'layer {{ name: "bn" type: "BatchNorm" bottom: "x" top: "y" {param} }}'


def caffe_bn_backward(y: np.ndarray, dy: np.ndarray, std: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    m = y.size / std.size
    return (dy - (dy.sum(dims, keepdims=True) + y * (dy * y).sum(dims, keepdims=True)) / m) / std


def test_batchnorm_2d_train_updates_sums_and_backward():
    net = net_from(input_layer((5, 3)) + BN.format(param="batch_norm_param { moving_average_fraction: 0.9 }"),
                   phase="TRAIN")
    bn = net.layer("bn")
    mean0, var0 = np.array([1.0, -2.0, 0.5], np.float32), np.array([3.0, 1.0, 2.0], np.float32)
    with torch.no_grad():
        bn.mean.copy_(torch.from_numpy(mean0))
        bn.variance.copy_(torch.from_numpy(var0))
        bn.scale_factor.fill_(2.0)
    x, dy = rand(5, 3) * 3 + 1, rand(5, 3, seed=1)
    y, grads = run(net, {"x": x}, "y", dy)

    xd = x.astype(np.float64)
    mu, var = xd.mean(0, keepdims=True), xd.var(0, keepdims=True)
    std = np.sqrt(var + 1e-5)
    want = (xd - mu) / std
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads["x"], caffe_bn_backward(want, dy.astype(np.float64), std, (0,)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.scale_factor.numpy(), [2.0 * 0.9 + 1], rtol=1e-6)
    np.testing.assert_allclose(bn.mean.numpy(), mean0 * 0.9 + mu[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.variance.numpy(), var0 * 0.9 + var[0] * 5 / 4, rtol=1e-5, atol=1e-6)


def test_batchnorm_single_value_per_channel_in_train():
    """m == 1: the output is 0 and the stored variance gets no m/(m-1) correction (Caffe uses 1)."""
    net = net_from(input_layer((1, 4)) + BN.format(param=""), phase="TRAIN")
    x = rand(1, 4)
    y = net(x=torch.from_numpy(x))["y"]
    assert torch.equal(y, torch.zeros(1, 4))
    bn = net.layer("bn")
    np.testing.assert_allclose(bn.mean.numpy(), x[0], rtol=1e-6)
    np.testing.assert_allclose(bn.variance.numpy(), np.zeros(4), atol=0)
    np.testing.assert_allclose(bn.scale_factor.numpy(), [1.0])


def test_batchnorm_fresh_layer_scale_factor_zero_means_zero_stats():
    net = net_from(input_layer((2, 3, 2)) + BN.format(param="batch_norm_param { eps: 0.25 }"))
    x = rand(2, 3, 2)
    y = net(x=torch.from_numpy(x))["y"].numpy()
    np.testing.assert_allclose(y, x / np.sqrt(0.25), rtol=1e-6)


def test_batchnorm_affine_folds_with_scale():
    net = net_from(input_layer((2, 3, 4, 4)) + BN.format(param="") + """
        layer { name: "sc" type: "Scale" bottom: "y" top: "z" scale_param { bias_term: true } }""")
    bn, sc = net.layer("bn"), net.layer("sc")
    with torch.no_grad():
        bn.mean.copy_(torch.tensor([2.5, -5.0, 1.0]))
        bn.variance.copy_(torch.tensor([10.0, 2.5, 0.5]))
        bn.scale_factor.fill_(2.5)
        sc.weight.copy_(torch.tensor([0.5, -1.5, 2.0]))
        sc.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    multiplier, offset = bn.affine()
    np.testing.assert_allclose(multiplier.numpy(), 1 / np.sqrt(np.array([4.0, 1.0, 0.2]) + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(offset.numpy(), -np.array([1.0, -2.0, 0.4]) * multiplier.numpy(), rtol=1e-6)

    x = rand(2, 3, 4, 4)
    z = net(x=torch.from_numpy(x))["z"].detach().numpy()
    g, b = sc.weight.detach().numpy(), sc.bias.detach().numpy()
    folded_mult, folded_off = multiplier.numpy() * g, offset.numpy() * g + b
    np.testing.assert_allclose(z, x * folded_mult[:, None, None] + folded_off[:, None, None], rtol=1e-5, atol=1e-6)

    bn.train()
    with pytest.raises(RuntimeError, match="batch statistics"):
        bn.affine()


def test_batchnorm_rejects_1d_input_and_learned_statistics():
    with pytest.raises(ShapeError, match="channel axis"):
        prototxt2py.graph(read_net_text(input_layer((4,)) + BN.format(param="")))
    with pytest.raises(GraphError, match="lr_mult"):
        prototxt2py.graph(read_net_text(input_layer((2, 3)) + BN.format(param="param { lr_mult: 1 }")))


# -- Scale / Bias ----------------------------------------------------------------------------------------
def test_scale_scalar_and_rest_of_axes_shapes():
    g = prototxt2py.graph(read_net_text(input_layer((2, 3, 4, 5)) + """
        layer { name: "s0" type: "Scale" bottom: "x" top: "a" scale_param { num_axes: 0 bias_term: true } }
        layer { name: "s1" type: "Scale" bottom: "x" top: "b" scale_param { axis: -2 num_axes: -1 } }
        layer { name: "b0" type: "Bias" bottom: "x" top: "c" bias_param { axis: 0 num_axes: 2 } }"""))
    assert g.node("s0").param_shapes == [(), ()]
    assert g.node("s1").param_shapes == [(4, 5)]
    assert g.node("b0").param_shapes == [(2, 3)]


def test_scale_scalar_learned_and_identity_defaults():
    net = net_from(input_layer((2, 3, 4)) + """
        layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { num_axes: 0 bias_term: true } }
        layer { name: "id" type: "Scale" bottom: "x" top: "z" }
        layer { name: "b" type: "Bias" bottom: "x" top: "w" }""")
    with torch.no_grad():
        net.layer("s").weight.fill_(-1.5)
        net.layer("s").bias.fill_(0.25)
    x, dy = rand(2, 3, 4), rand(2, 3, 4, seed=1)
    y, _ = run(net, {"x": x}, "y", dy)
    np.testing.assert_allclose(y, x * -1.5 + 0.25, rtol=1e-6)
    np.testing.assert_allclose(net.layer("s").weight.grad.numpy(), (x.astype(np.float64) * dy).sum(), rtol=1e-5)
    np.testing.assert_allclose(net.layer("s").bias.grad.numpy(), dy.astype(np.float64).sum(), rtol=1e-5)
    blobs = net(x=torch.from_numpy(x), all_blobs=True)
    assert torch.equal(blobs["z"], torch.from_numpy(x)) and torch.equal(blobs["w"], torch.from_numpy(x))


def test_scale_two_bottom_with_bias_term_and_scalar_bottom():
    net = net_from(input_layer((2, 3, 4), (), tops=("x", "s")) + """
        layer { name: "sc" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { bias_term: true } }""")
    node = net.graph.node("sc")
    assert node.param_shapes == [()]
    assert net.layer("sc").blob_names == ("bias",)
    with torch.no_grad():
        net.layer("sc").bias.fill_(0.5)
    x, s, dy = rand(2, 3, 4), np.array(1.75, np.float32), rand(2, 3, 4, seed=1)
    y, grads = run(net, {"x": x, "s": s}, "y", dy)
    np.testing.assert_allclose(y, x * 1.75 + 0.5, rtol=1e-6)
    np.testing.assert_allclose(grads["s"], (x.astype(np.float64) * dy).sum(), rtol=1e-5)
    np.testing.assert_allclose(grads["x"], dy * 1.75, rtol=1e-6)


@pytest.mark.parametrize(("layer_type", "shape"), [("Scale", (3, 5)), ("Bias", (4,))])
def test_two_bottom_shape_mismatch(layer_type: str, shape: tuple[int, ...]):
    with pytest.raises(ShapeError, match="does not match"):
        prototxt2py.graph(read_net_text(input_layer((2, 3, 4, 5), shape, tops=("x", "s")) +
                                        f'layer {{ name: "l" type: "{layer_type}" bottom: "x" bottom: "s" top: "y" }}'))


def test_learned_operand_past_the_end():
    with pytest.raises(ShapeError, match="extends past"):
        prototxt2py.graph(read_net_text(input_layer((2, 3)) +
                                        'layer { name: "s" type: "Scale" bottom: "x" top: "y" '
                                        "scale_param { axis: 1 num_axes: 2 } }"))
