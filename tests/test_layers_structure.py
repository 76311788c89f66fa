"""Structure-family edges the golden cases do not reach: exact ties (ArgMax, Eltwise MAX), PROD gradients at
zero, legacy axis fields, Filter's data-dependent batch, DummyData fillers and parameter validation.

Expected values are computed independently from Caffe's definitions with numpy / plain Python."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import prototxt2py
from prototxt2py.errors import GraphError, ShapeError
from prototxt2py.reader import read_net_text


def net_of(text: str, phase: str = "TEST") -> prototxt2py.backends.torch_runtime.CaffeNet:
    return prototxt2py.load(read_net_text(text), phase=phase)


def caffe_topk(row: list[float], k: int) -> list[tuple[float, int]]:
    """Caffe's ArgMax: (value, index) pairs ordered by std::greater, i.e. ties go to the larger index."""
    return sorted(((v, i) for i, v in enumerate(row)), reverse=True)[:k]


def test_argmax_ties_flattened_with_values() -> None:
    x = np.array([[1, 3, 3, 0, 3, 2], [5, 5, 5, 5, 5, 5]], dtype=np.float32)
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 6 } } }
        layer { name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 4 out_max_val: true } }
    """)
    y = net(torch.from_numpy(x))["y"].numpy()
    assert y.shape == (2, 2, 4)
    for n in range(2):
        want = caffe_topk(x[n].tolist(), 4)
        assert y[n, 0].tolist() == [i for _, i in want]
        assert y[n, 1].tolist() == [v for v, _ in want]
    assert y[0, 0].tolist() == [4, 2, 1, 5]


def test_argmax_ties_along_axis() -> None:
    x = np.array([[[2, 7], [2, 1], [0, 7]]], dtype=np.float32)  # (1, 3, 2), ties along axis 1
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 2 } } }
        layer { name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 1 top_k: 2 } }
    """)
    y = net(torch.from_numpy(x))["y"].numpy()
    assert y.shape == (1, 2, 2)
    for w in range(2):
        assert y[0, :, w].tolist() == [i for _, i in caffe_topk(x[0, :, w].tolist(), 2)]
    assert y[0, :, 0].tolist() == [1, 0] and y[0, :, 1].tolist() == [2, 0]


def test_eltwise_max_tie_rules_and_gradient() -> None:
    # column 0: a == b (bottom 1 wins); column 1: c equals the running max (bottom 0 keeps it);
    # column 2: c strictly greater; column 3: all equal (bottom 1)
    a = torch.tensor([[1.0, 4.0, 0.0, 2.0]], requires_grad=True)
    b = torch.tensor([[1.0, 3.0, 1.0, 2.0]], requires_grad=True)
    c = torch.tensor([[0.0, 4.0, 5.0, 2.0]], requires_grad=True)
    net = net_of("""
        layer { name: "in" type: "Input" top: "a" top: "b" top: "c"
                input_param { shape { dim: 1 dim: 4 } } }
        layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y"
                eltwise_param { operation: MAX } }
    """)
    y = net(a, b, c)["y"]
    assert y.tolist() == [[1.0, 4.0, 5.0, 2.0]]
    y.backward(torch.tensor([[10.0, 20.0, 30.0, 40.0]]))
    assert a.grad.tolist() == [[0.0, 20.0, 0.0, 0.0]]
    assert b.grad.tolist() == [[10.0, 0.0, 0.0, 40.0]]
    assert c.grad.tolist() == [[0.0, 0.0, 30.0, 0.0]]


PROD_NET = """
    layer {{ name: "in" type: "Input" top: "a" top: "b" top: "c" input_param {{ shape {{ dim: 4 }} }} }}
    layer {{ name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y"
            eltwise_param {{ operation: PROD stable_prod_grad: {stable} }} }}
"""


def test_eltwise_prod_stable_gradient_order() -> None:
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(4).astype(np.float32) for _ in range(3)]
    g = rng.standard_normal(4).astype(np.float32)
    ts = [torch.from_numpy(x).requires_grad_(True) for x in xs]
    net_of(PROD_NET.format(stable="true"))(*ts)["y"].backward(torch.from_numpy(g))
    # Caffe: product of the other bottoms in bottom order, then times the top diff (float32 throughout)
    assert np.array_equal(ts[0].grad.numpy(), (xs[1] * xs[2]) * g)
    assert np.array_equal(ts[1].grad.numpy(), (xs[0] * xs[2]) * g)
    assert np.array_equal(ts[2].grad.numpy(), (xs[0] * xs[1]) * g)


def test_eltwise_prod_unstable_gradient_divides_by_bottom() -> None:
    xs = [np.array([0.0, 2.0, -1.5, 3.0], np.float32), np.array([2.0, 0.5, 4.0, 0.0], np.float32),
          np.array([1.0, 3.0, 0.25, 2.0], np.float32)]
    ts = [torch.from_numpy(x).requires_grad_(True) for x in xs]
    net_of(PROD_NET.format(stable="false"))(*ts)["y"].backward(torch.ones(4))
    top = xs[0] * xs[1] * xs[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        for t, x in zip(ts, xs, strict=True):
            np.testing.assert_array_equal(t.grad.numpy(), top / x)  # 0/0 = nan where the bottom is 0
    assert math.isnan(ts[0].grad[0]) and math.isnan(ts[1].grad[3])


def test_legacy_concat_dim_and_slice_dim() -> None:
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 6 dim: 3 } } }
        layer { name: "s" type: "Slice" bottom: "x" top: "p" top: "q" slice_param { slice_dim: 2 slice_point: 1 } }
        layer { name: "c" type: "Concat" bottom: "q" bottom: "p" top: "y" concat_param { concat_dim: 2 } }
    """)
    x = torch.arange(36, dtype=torch.float32).reshape(2, 6, 3)
    out = net(x, all_blobs=True)
    assert tuple(out["p"].shape) == (2, 6, 1) and tuple(out["q"].shape) == (2, 6, 2)
    np.testing.assert_array_equal(out["y"].numpy(), np.concatenate([x[:, :, 1:], x[:, :, :1]], axis=2))
    assert net.graph.blob_shapes()["y"] == (2, 6, 3)


def test_filter_reports_full_batch_statically_and_selects_at_run_time() -> None:
    text = """
        layer { name: "in" type: "Input" top: "d" top: "e" top: "sel"
                input_param { shape { dim: 4 dim: 2 } shape { dim: 4 } shape { dim: 4 dim: 1 } } }
        layer { name: "f" type: "Filter" bottom: "d" bottom: "e" bottom: "sel" top: "fd" top: "fe" }
    """
    net = net_of(text)
    assert net.graph.blob_shapes()["fd"] == (4, 2)  # Caffe's shape at net setup
    d = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    e = torch.tensor([10.0, 11.0, 12.0, 13.0])
    out = net(d, e, torch.tensor([[0.0], [-1.0], [0.0], [0.5]]))
    assert out["fd"].tolist() == [[2.0, 3.0], [6.0, 7.0]]
    assert out["fe"].tolist() == [11.0, 13.0]


def test_dummydata_legacy_dims_per_top_and_random_refill() -> None:
    net = net_of("""
        layer { name: "d" type: "DummyData" top: "a" top: "b"
                dummy_data_param { num: 2 num: 1 channels: 3 height: 1 width: 4
                                   data_filler { type: "constant" value: 2 }
                                   data_filler { type: "gaussian" std: 1 } } }
    """)
    first, second = net(all_blobs=True), net(all_blobs=True)
    assert tuple(first["a"].shape) == (2, 3, 1, 4) and tuple(first["b"].shape) == (1, 3, 1, 4)
    assert torch.equal(first["a"], torch.full((2, 3, 1, 4), 2.0))
    assert not torch.equal(first["b"], second["b"])  # Caffe refills non-constant fillers every pass


def test_dummydata_bilinear_odd_kernel_matches_caffe() -> None:
    net = net_of("""
        layer { name: "d" type: "DummyData" top: "w"
                dummy_data_param { shape { dim: 1 dim: 1 dim: 3 dim: 3 } data_filler { type: "bilinear" } } }
    """)
    k = 3
    f = math.ceil(k / 2)
    c = np.float32((k - 1) / (2.0 * f))
    x = np.arange(k, dtype=np.float32)
    w1 = 1 - np.abs(x / np.float32(f) - c)
    np.testing.assert_array_equal(net()["w"].numpy()[0, 0], w1[:, None] * w1[None, :])


def test_reduction_mean_folds_divisor_into_float32_coeff() -> None:
    x = np.random.default_rng(5).standard_normal((2, 3, 7)).astype(np.float32)
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 7 } } }
        layer { name: "r" type: "Reduction" bottom: "x" top: "y"
                reduction_param { operation: MEAN axis: -2 coeff: 0.7 } }
    """)
    y = net(torch.from_numpy(x))["y"].numpy()
    coeff = np.float32(0.7) / np.float32(21)
    np.testing.assert_allclose(y, x.reshape(2, -1).astype(np.float64).sum(1) * coeff, rtol=1e-6)
    assert y.shape == (2,)


@pytest.mark.parametrize(
    ("layer", "error"),
    [
        ('type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: -1 } }', GraphError),
        ('type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 5 dim: -1 } }', ShapeError),
        ('type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: 0 dim: 0 } }', ShapeError),
        ('type: "Flatten" bottom: "x" top: "x"', GraphError),
        ('type: "Concat" bottom: "x" bottom: "x" top: "y" concat_param { axis: 1 concat_dim: 1 }', GraphError),
        ('type: "Slice" bottom: "x" top: "y" top: "z" slice_param { axis: 1 }', ShapeError),
        ('type: "Slice" bottom: "x" top: "y" top: "z" slice_param { slice_point: 1 slice_point: 2 }', ShapeError),
        ('type: "Crop" bottom: "x" bottom: "x" top: "y" crop_param { axis: 1 offset: 1 }', ShapeError),
        ('type: "Tile" bottom: "x" top: "y"', GraphError),
        ('type: "Eltwise" bottom: "x" bottom: "x" top: "y" eltwise_param { coeff: 1 }', GraphError),
        ('type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 0 top_k: 3 }', ShapeError),
    ],
)
def test_invalid_parameters_are_refused(layer: str, error: type[Exception]) -> None:
    text = f"""
        layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
        layer {{ name: "l" {layer} }}
    """
    with pytest.raises(error, match="layer 'l'"):
        prototxt2py.graph(read_net_text(text))
