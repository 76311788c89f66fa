"""Pooling-family cases the golden suite does not reach: geometries that torch's pooling cannot run natively
(pad above kernel/2, ceil windows lying wholly past an unpadded input, overhanging AVE divisors), exact ties,
STOCHASTIC pooling (GPU-only in Caffe), SPP on awkward sizes, MVN on constant rows and 2-D blobs, fork
spellings of FLOOR rounding, and the parameter checks Caffe makes.

Expected values are Caffe's PoolingLayer loops (Forward_cpu/Backward_cpu, the GPU StoPoolForwardTest kernel)
and MVN formulas written out in plain numpy, independently of the implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import prototxt2py
from prototxt2py.errors import GraphError, ShapeError
from prototxt2py.layers.pooling import PoolPlan
from prototxt2py.reader import read_net_text

FLT_MAX = np.finfo(np.float32).max


def net_of(layers: str, shape: tuple[int, ...], phase: str = "TEST") -> prototxt2py.CaffeNet:
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f'name: "t"\nlayer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n{layers}'
    return prototxt2py.load(read_net_text(text), phase=phase)


def caffe_out(n: int, k: int, p: int, s: int, ceil: bool) -> int:
    """``PoolingLayer::Reshape`` before the padding rule, in float as Caffe computes it."""
    q = float(np.float32(n + 2 * p - k) / np.float32(s))
    return (math.ceil(q) if ceil else math.floor(q)) + 1


def caffe_pooled(hw, kernel, pad, stride, ceil) -> tuple[int, int]:
    out = [caffe_out(n, k, p, s, ceil) for n, k, p, s in zip(hw, kernel, pad, stride, strict=True)]
    if pad[0] or pad[1]:
        out = [o - 1 if (o - 1) * s >= n + p else o for o, n, p, s in zip(out, hw, pad, stride, strict=True)]
    return out[0], out[1]


def ref_pool(x, pool, kernel, pad, stride, out, top_diff):
    """Caffe's CPU loops (MAX/AVE) and GPU test-mode STOCHASTIC kernel: (top, mask, bottom diff)."""
    n_, c_, height, width = x.shape
    (kh, kw), (ph, pw), (sh, sw), (oh, ow) = kernel, pad, stride, out
    top = np.zeros((n_, c_, oh, ow), np.float32)
    mask = np.full((n_, c_, oh, ow), -1.0, np.float32)
    dx = np.zeros_like(x)
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * sh - ph, j * sw - pw
                    if pool == "MAX":
                        he, we = min(hs + kh, height), min(ws + kw, width)
                        hs, ws = max(hs, 0), max(ws, 0)
                        best, arg = -FLT_MAX, -1
                        for h in range(hs, he):
                            for w in range(ws, we):
                                if x[n, c, h, w] > best:
                                    best, arg = x[n, c, h, w], h * width + w
                        top[n, c, i, j], mask[n, c, i, j] = best, arg
                        if arg >= 0:
                            dx[n, c, arg // width, arg % width] += top_diff[n, c, i, j]
                    elif pool == "AVE":
                        he, we = min(hs + kh, height + ph), min(ws + kw, width + pw)
                        size = np.float32((he - hs) * (we - ws))
                        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, height), min(we, width)
                        with np.errstate(divide="ignore", invalid="ignore"):
                            top[n, c, i, j] = x[n, c, hs:he, ws:we].sum(dtype=np.float32) / size
                            dx[n, c, hs:he, ws:we] += top_diff[n, c, i, j] / size
                    else:
                        win = x[n, c, hs:min(hs + kh, height), ws:min(ws + kw, width)]
                        total = win.sum(dtype=np.float32)
                        top[n, c, i, j] = (win * win).sum(dtype=np.float32) / total if total > 0 else 0
    return top, mask, dx


def run_pool(params: str, x: np.ndarray, tops: tuple[str, ...] = ("y",)):
    """Forward values of the tops and the gradient of <diff, y> with respect to x."""
    top_fields = " ".join(f'top: "{t}"' for t in tops)
    net = net_of(f'layer {{ name: "p" type: "Pooling" bottom: "x" {top_fields} pooling_param {{ {params} }} }}',
                 x.shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    blobs = net(x=xt, all_blobs=True)
    diff = np.random.default_rng(1).standard_normal(blobs["y"].shape).astype(np.float32)
    (blobs["y"] * torch.from_numpy(diff)).sum().backward()
    return [blobs[t].detach().numpy() for t in tops], xt.grad.numpy(), diff


def random_geometries(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < count:
        hw = tuple(int(v) for v in rng.integers(1, 10, 2))
        kernel = tuple(int(v) for v in rng.integers(1, 6, 2))
        pad = tuple(int(rng.integers(0, k)) if rng.random() < 0.6 else 0 for k in kernel)
        stride = tuple(int(v) for v in rng.integers(1, 5, 2))
        ceil = bool(rng.random() < 0.7)
        if min(caffe_pooled(hw, kernel, pad, stride, ceil)) >= 1:
            found.append((hw, kernel, pad, stride, ceil))
    return found


GEOMETRIES = random_geometries(120) + [
    ((7, 8), (3, 3), (2, 2), (2, 2), True),  # pad above kernel/2
    ((6, 6), (5, 5), (3, 3), (4, 4), True),  # pad above kernel/2 and the AVE window overhangs in + pad
    ((4, 5), (1, 2), (0, 0), (2, 2), True),  # unpadded ceil: last row of windows lies wholly past the input
    ((6, 4), (3, 1), (1, 0), (2, 2), True),  # pad_h only: the padding rule drops a width window too
    ((2, 3), (3, 3), (0, 0), (2, 2), True),  # kernel larger than the input
    ((4, 5), (4, 5), (0, 0), (2, 3), True),  # one window covering the plane, as global pooling
]


def test_geometries_cover_both_paths() -> None:
    """The reference comparison below is only meaningful if it runs both the native and the explicit path."""
    plans = [PoolPlan.make("AVE", hw, k, p, s, c) for hw, k, p, s, c in GEOMETRIES]
    assert any(p.native for p in plans) and any(not p.native for p in plans)
    assert any(not p.native and not p.uniform_divisor for p in plans)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_matches_caffe_loops(pool: str) -> None:
    rng = np.random.default_rng(2)
    for hw, kernel, pad, stride, ceil in GEOMETRIES:
        params = (f"pool: {pool} kernel_h: {kernel[0]} kernel_w: {kernel[1]} pad_h: {pad[0]} pad_w: {pad[1]} "
                  f"stride_h: {stride[0]} stride_w: {stride[1]} round_mode: {'CEIL' if ceil else 'FLOOR'}")
        x = rng.integers(-2, 3, (2, 2, *hw)).astype(np.float32)  # small integers: many exact ties
        tops = ("y", "mask") if pool == "MAX" else ("y",)
        got, grad, diff = run_pool(params, x, tops)
        out = caffe_pooled(hw, kernel, pad, stride, ceil)
        want, mask, dx = ref_pool(x, pool, kernel, pad, stride, out, diff)
        where = f"{pool} {hw} kernel {kernel} pad {pad} stride {stride} ceil {ceil}"
        np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=where)
        np.testing.assert_allclose(grad, dx, rtol=1e-5, atol=1e-6, err_msg=where)
        if pool == "MAX":
            np.testing.assert_array_equal(got[1], mask, err_msg=where)


def test_max_pool_ties_and_empty_windows() -> None:
    """Equal values: the first in row-major order wins (value, mask and gradient); a window lying wholly past
    the unpadded input keeps Caffe's -FLT_MAX and mask -1 and passes no gradient."""
    x = np.array([[[[1, 1, 0, 2], [1, 1, 2, 2], [0, 0, 0, 0]]]], np.float32)
    (y, mask), grad, diff = run_pool("pool: MAX kernel_h: 2 kernel_w: 2 stride_h: 2 stride_w: 3", x, ("y", "mask"))
    np.testing.assert_array_equal(y[0, 0], [[1, 2], [0, 0]])
    np.testing.assert_array_equal(mask[0, 0], [[0, 3], [8, 11]])
    want = np.zeros_like(x)
    want[0, 0, 0, 0], want[0, 0, 0, 3], want[0, 0, 2, 0], want[0, 0, 2, 3] = diff[0, 0].ravel()
    np.testing.assert_array_equal(grad, want)

    x = np.arange(20, dtype=np.float32).reshape(1, 1, 4, 5)
    (y, mask), grad, _ = run_pool("pool: MAX kernel_h: 1 kernel_w: 2 stride: 2", x, ("y", "mask"))
    assert y.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(y[0, 0, 2], [-FLT_MAX] * 3)
    np.testing.assert_array_equal(mask[0, 0, 2], [-1] * 3)


def test_stochastic_test_phase_is_weighted_average() -> None:
    rng = np.random.default_rng(3)
    for hw, kernel, stride in [((6, 7), (3, 3), (2, 2)), ((5, 5), (2, 3), (3, 1)), ((4, 5), (1, 2), (2, 2))]:
        x = np.maximum(rng.standard_normal((2, 3, *hw)), 0).astype(np.float32)
        x[0, 0] = -1  # a plane whose window sums are negative: output 0
        params = (f"pool: STOCHASTIC kernel_h: {kernel[0]} kernel_w: {kernel[1]} "
                  f"stride_h: {stride[0]} stride_w: {stride[1]}")
        (y,), grad, _ = run_pool(params, x)
        want, _, _ = ref_pool(x, "STOCHASTIC", kernel, (0, 0), stride, caffe_pooled(hw, kernel, (0, 0), stride, True),
                              None)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
        assert np.isfinite(grad).all()


def test_stochastic_train_phase_samples_by_value() -> None:
    torch.manual_seed(0)
    x = torch.tensor([1.0, 3.0]).repeat(20000, 1, 1, 1).view(20000, 1, 1, 2).requires_grad_(True)
    net = net_of('layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
                 'pooling_param { pool: STOCHASTIC kernel_h: 1 kernel_w: 2 } }', (20000, 1, 1, 2), phase="TRAIN")
    y = net(x=x)["y"]
    assert y.shape == (20000, 1, 1, 1)
    picked_three = (y == 3).double().mean().item()
    assert set(y.unique().tolist()) == {1.0, 3.0} and abs(picked_three - 0.75) < 0.02
    y.sum().backward()
    picked = torch.stack([y.detach().flatten() == 1, y.detach().flatten() == 3], 1).float()
    torch.testing.assert_close(x.grad.view(20000, 2), picked)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("hw", [(9, 9), (7, 10), (13, 6), (3, 4)])
def test_spp_matches_caffe_levels(pool: str, hw: tuple[int, int]) -> None:
    """SPP = pooling levels with Caffe's kernel/pad/stride formula, flattened and concatenated (9x9 gives
    pad 2 on kernel 3 at the 4x4 level, beyond torch's native limit)."""
    height = 3 if min(hw) >= 9 else 2
    x = np.random.default_rng(4).standard_normal((2, 3, *hw)).astype(np.float32)
    net = net_of(f'layer {{ name: "s" type: "SPP" bottom: "x" top: "y" '
                 f'spp_param {{ pyramid_height: {height} pool: {pool} }} }}', x.shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    y = net(x=xt)["y"]
    diff = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    (y * torch.from_numpy(diff)).sum().backward()
    parts, dx, offset = [], np.zeros_like(x), 0
    for level in range(height):
        bins = 2**level
        kernel = tuple(math.ceil(n / bins) for n in hw)
        pad = tuple((k * bins - n + 1) // 2 for k, n in zip(kernel, hw, strict=True))
        out = caffe_pooled(hw, kernel, pad, kernel, True)
        size = 3 * out[0] * out[1]
        level_diff = diff[:, offset:offset + size].reshape(2, 3, *out)
        top, _, level_dx = ref_pool(x, pool, kernel, pad, kernel, out, level_diff)
        parts.append(top.reshape(2, -1))
        dx += level_dx
        offset += size
    np.testing.assert_allclose(y.detach().numpy(), np.concatenate(parts, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-5, atol=1e-6)


def test_mvn_constant_rows_and_legacy_4d_top() -> None:
    """Per sample (across_channels): a constant row normalises to 0 with Caffe's finite gradient
    (dy - mean(dy)) / eps (autograd through the square root would give NaN); a 2-D blob gets Caffe's 4-D top
    (N, C, 1, 1)."""
    x = np.array([[2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 4.0, 7.0]], np.float32)
    net = net_of('layer { name: "m" type: "MVN" bottom: "x" top: "y" '
                 'mvn_param { across_channels: true eps: 0.01 } }', x.shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    y = net(x=xt)["y"]
    assert y.shape == (2, 4, 1, 1)
    dy = np.array([[1.0, -2.0, 0.5, 3.0], [0.3, -1.0, 2.0, 0.1]], np.float32)
    (y * torch.from_numpy(dy).view(2, 4, 1, 1)).sum().backward()
    centred = x - x.mean(1, keepdims=True)
    std = np.sqrt((centred**2).mean(1, keepdims=True)) + np.float32(0.01)
    want_y = centred / std
    want_dx = (dy - dy.mean(1, keepdims=True) - want_y * (want_y * dy).mean(1, keepdims=True)) / std
    np.testing.assert_allclose(y.detach().numpy().reshape(2, 4), want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), want_dx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spelling", ["round_mode: FLOOR", "ceil_mode: false", "torch_pooling: true"])
def test_floor_spellings(spelling: str) -> None:
    g = prototxt2py.graph(read_net_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 6 dim: 6 } } }\n'
        'layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
        f'pooling_param {{ kernel_size: 3 stride: 2 {spelling} }} }}'
    ))
    assert g.blob_shapes()["y"] == (1, 1, 2, 2)  # CEIL would give 3x3


@pytest.mark.parametrize(
    ("layer", "shape", "error", "message"),
    [
        ("Pooling", "pooling_param { global_pooling: true kernel_size: 2 }", GraphError, "global_pooling"),
        ("Pooling", "pooling_param { kernel_size: 2 kernel_h: 2 kernel_w: 2 }", GraphError, "kernel"),
        ("Pooling", "pooling_param { kernel_h: 2 }", GraphError, "kernel"),
        ("Pooling", "pooling_param { kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1 }", GraphError, "pad"),
        ("Pooling", "pooling_param { kernel_size: 2 pad: 2 }", ShapeError, "smaller than the kernel"),
        ("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }", ShapeError, "padding"),
        ("Pooling", "pooling_param { kernel_size: 7 round_mode: FLOOR }", ShapeError, "does not fit"),
        ("SPP", "spp_param { pyramid_height: 4 }", ShapeError, "too large for a 5x5"),
        ("LRN", "lrn_param { local_size: 4 }", GraphError, "odd"),
    ],
)
def test_caffe_refuses(layer: str, shape: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        net_of(f'layer {{ name: "l" type: "{layer}" bottom: "x" top: "y" {shape} }}', (1, 2, 5, 5))


def test_mask_top_only_for_max() -> None:
    with pytest.raises(ShapeError, match="only MAX"):
        net_of('layer { name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" '
               'pooling_param { pool: AVE kernel_size: 2 } }', (1, 1, 4, 4))


def test_pooling_needs_4_axes() -> None:
    with pytest.raises(ShapeError, match="4 axes"):
        net_of('layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 2 } }', (1, 4, 4))
