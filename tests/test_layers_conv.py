"""Convolution geometries the golden suite does not reach: a kernel overhanging the padded input by less
than the stride. Caffe sizes the output with C++ integer division, which truncates toward zero, so such a
layer has one output per axis computed over the part of the window inside the input (im2col reads zeros
beyond it); floor division would give none and torch refuses the kernel.

Expected values are Caffe's ``ConvolutionLayer`` (``compute_output_shape``, im2col + GEMM forward, the
backward's col2im) and ``Im2colLayer`` written out in plain numpy, independently of the implementation; the
runtime (autograd, inference plan), the generated module and the ONNX export are each compared with it."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_codegen import exec_source

import prototxt2py
from prototxt2py.backends.codegen import generate
from prototxt2py.backends.onnx_export import to_onnx_model
from prototxt2py.errors import UnsupportedLayerError
from prototxt2py.reader import read_net_text


def caffe_size(n: int, k: int, s: int, p: int, d: int) -> int:
    """``compute_output_shape``: ``(n + 2p - ext) / s + 1`` in C++ ints (truncating toward zero)."""
    over = n + 2 * p - (d * (k - 1) + 1)
    return int(over / s) + 1


def im2col(x: np.ndarray, kernel, stride, pad, dilation) -> tuple[np.ndarray, tuple[int, ...]]:
    """Caffe's ``im2col_nd_cpu`` for one image ``(C, *spatial)``: rows ``c * prod(kernel) + offset``, zeros
    wherever the window leaves the input."""
    c, spatial = x.shape[0], x.shape[1:]
    out = tuple(caffe_size(n, k, s, p, d) for n, k, s, p, d in zip(spatial, kernel, stride, pad, dilation,
                                                                       strict=True))
    cols = np.zeros((c, *kernel, *out))
    for offs in itertools.product(*(range(k) for k in kernel)):
        for pos in itertools.product(*(range(o) for o in out)):
            src = [q * s - p + o * d for q, s, p, o, d in zip(pos, stride, pad, offs, dilation, strict=True)]
            if all(0 <= v < n for v, n in zip(src, spatial, strict=True)):
                cols[(slice(None), *offs, *pos)] = x[(slice(None), *src)]
    return cols.reshape(c * int(np.prod(kernel)), -1), out


def col2im(cols: np.ndarray, shape, kernel, stride, pad, dilation) -> np.ndarray:
    """Caffe's ``col2im_nd_cpu``: the adjoint of :func:`im2col` (window values summed back, outside dropped)."""
    c, spatial = shape[0], shape[1:]
    out = tuple(caffe_size(n, k, s, p, d) for n, k, s, p, d in zip(spatial, kernel, stride, pad, dilation,
                                                                       strict=True))
    cols = cols.reshape(c, *kernel, *out)
    x = np.zeros(shape)
    for offs in itertools.product(*(range(k) for k in kernel)):
        for pos in itertools.product(*(range(o) for o in out)):
            src = [q * s - p + o * d for q, s, p, o, d in zip(pos, stride, pad, offs, dilation, strict=True)]
            if all(0 <= v < n for v, n in zip(src, spatial, strict=True)):
                x[(slice(None), *src)] += cols[(slice(None), *offs, *pos)]
    return x


def caffe_conv(x, w, b, stride, pad, dilation, group, top_diff):
    """Forward and backward of Caffe's ConvolutionLayer (float64): ``(top, bottom diff, weight diff, bias diff)``."""
    kernel = w.shape[2:]
    cout, cin_g = w.shape[0], w.shape[1]
    tops, dxs = [], []
    dw, db = np.zeros_like(w), np.zeros_like(b)
    for n in range(x.shape[0]):
        cols, out = im2col(x[n], kernel, stride, pad, dilation)
        k = cin_g * int(np.prod(kernel))
        y = np.zeros((cout, cols.shape[1]))
        g_out = cout // group
        dcols = np.zeros_like(cols)
        td = top_diff[n].reshape(cout, -1)
        for g in range(group):
            wg = w[g * g_out:(g + 1) * g_out].reshape(g_out, k)
            cg = cols[g * k:(g + 1) * k]
            y[g * g_out:(g + 1) * g_out] = wg @ cg
            dw[g * g_out:(g + 1) * g_out] += (td[g * g_out:(g + 1) * g_out] @ cg.T).reshape(g_out, cin_g, *kernel)
            dcols[g * k:(g + 1) * k] = wg.T @ td[g * g_out:(g + 1) * g_out]
        tops.append((y + b[:, None]).reshape(cout, *out))
        db += td.sum(1)
        dxs.append(col2im(dcols, x.shape[1:], kernel, stride, pad, dilation))
    return np.stack(tops), np.stack(dxs), dw, db


def conv_net(shape, cout, kernel, stride, pad, dilation, group, layer_type="Convolution"):
    dims = " ".join(f"dim: {d}" for d in shape)
    geometry = " ".join([*(f"kernel_size: {k}" for k in kernel), *(f"stride: {s}" for s in stride),
                         *(f"pad: {p}" for p in pad), *(f"dilation: {d}" for d in dilation)])
    out = f"num_output: {cout} group: {group} " if layer_type == "Convolution" else ""
    text = (f'name: "overhang"\nlayer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n'
            f'layer {{ name: "conv" type: "{layer_type}" bottom: "x" top: "y" '
            f"convolution_param {{ {out}{geometry} }} }}\n")
    return prototxt2py.load(read_net_text(text))


#: (input shape, num_output, kernel, stride, pad, dilation, group): every case overhangs on some axis.
CASES = [
    ((1, 1, 2, 4), 1, (3, 3), (3, 3), (0, 0), (1, 1), 1),  # the helper's case: 2x4 input, 3x3 kernel, stride 3
    ((2, 2, 2, 2), 3, (2, 2), (2, 2), (0, 0), (2, 2), 1),  # dilated kernel of extent 3 on 2x2
    ((1, 4, 3, 5), 4, (5, 3), (3, 2), (0, 0), (1, 1), 2),  # grouped, overhang in height only
    ((2, 3, 1, 2), 2, (4, 4), (4, 4), (1, 1), (1, 1), 1),  # pad inside the overhang
    ((1, 2, 3), 2, (5,), (4,), (0,), (1,), 1),  # 1-D
    ((1, 1, 2, 3, 2), 2, (3, 3, 3), (2, 2, 2), (0, 0, 0), (1, 1, 1), 1),  # 3-D
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-k{c[2]}-s{c[3]}-p{c[4]}-d{c[5]}-g{c[6]}" for c in CASES])
def test_overhanging_kernel_gives_caffes_single_output(case) -> None:
    shape, cout, kernel, stride, pad, dilation, group = case
    rng = np.random.default_rng(7)
    net = conv_net(shape, cout, kernel, stride, pad, dilation, group)
    want_shape = (shape[0], cout, *(caffe_size(n, k, s, p, d) for n, k, s, p, d in
                                    zip(shape[2:], kernel, stride, pad, dilation, strict=True)))
    assert net.graph.blob_shapes()["y"] == want_shape
    assert 1 in want_shape[2:]
    module = net.layer("conv")
    w = rng.standard_normal(tuple(module.weight.shape))
    b = rng.standard_normal(cout)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w))
        module.bias.copy_(torch.from_numpy(b))
    x = rng.standard_normal(shape)
    top_diff = rng.standard_normal(want_shape)
    top, dx, dw, db = caffe_conv(x, w, b, stride, pad, dilation, group, top_diff)

    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    y = net(xt)["y"]
    y.backward(torch.from_numpy(top_diff).float())
    np.testing.assert_allclose(y.detach().numpy(), top, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(module.weight.grad.numpy(), dw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(module.bias.grad.numpy(), db, rtol=1e-4, atol=1e-5)

    with torch.inference_mode():  # the eval-mode plan
        np.testing.assert_allclose(net.eval()(xt.detach())["y"].numpy(), top, rtol=1e-4, atol=1e-5)

    code = generate(net.graph)
    generated = exec_source(code.source)[code.class_name]()
    state = net.state_dict()
    generated.load_state_dict({new: state[old] for old, new in code.keys.items()}, strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(generated(xt.detach()).numpy(), top, rtol=1e-4, atol=1e-5)

    model = to_onnx_model(net)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.astype(np.float32)})
    np.testing.assert_allclose(got, top, rtol=1e-4, atol=1e-5)


def test_overhang_by_the_stride_or_more_is_still_refused() -> None:
    """Truncation gives one output only while the overhang is under the stride: 2 - 4 = -2 over stride 2
    is -1, so the size is 0, as in Caffe (whose blob would then be empty)."""
    message = r"output size 0 <= 0 \(input 2, kernel 4, pad 0, stride 2\)"
    with pytest.raises(prototxt2py.Prototxt2pyError, match=message):
        conv_net((1, 1, 2, 2), 1, (4, 4), (2, 2), (0, 0), (1, 1), 1)


def test_im2col_overhang_reads_zeros_beyond_the_input() -> None:
    rng = np.random.default_rng(3)
    net = conv_net((2, 3, 2, 5), 0, (3, 2), (3, 2), (0, 0), (1, 1), 1, layer_type="Im2col")
    x = rng.standard_normal((2, 3, 2, 5))
    want = np.stack([im2col(img, (3, 2), (3, 2), (0, 0), (1, 1))[0].reshape(3 * 6, 1, 2) for img in x])
    assert net.graph.blob_shapes()["y"] == (2, 18, 1, 2)
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.tensor(x, dtype=torch.float32))["y"].numpy(), want, rtol=1e-6)
    model = to_onnx_model(net)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x.astype(np.float32)})[0], want, rtol=1e-6)


def test_overhang_is_refused_with_symbolic_sizes() -> None:
    """With ``--dynamic`` the overhang (hence the ONNX end pad) would change with the input size."""
    net = conv_net((1, 1, 2, 4), 1, (3, 3), (3, 3), (0, 0), (1, 1), 1)
    with pytest.raises(UnsupportedLayerError, match="overhangs the padded input"):
        to_onnx_model(net, dynamic=True)


@pytest.mark.parametrize("layer_type", ["Convolution", "Deconvolution"])
def test_channels_on_another_axis_batch_every_axis_before_them(layer_type: str) -> None:
    """``axis: 2`` on (2, 3, C, H, W): Caffe's ``num_`` is 2 * 3, each (C, H, W) convolved with the same weight,
    so the result is the axis-1 convolution of the input with its first two axes merged."""
    rng = np.random.default_rng(5)
    shape = (2, 3, 4, 5, 5)
    text = (f'name: "axis2"\nlayer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ '
            f'{" ".join(f"dim: {d}" for d in shape)} }} }} }}\n'
            f'layer {{ name: "conv" type: "{layer_type}" bottom: "x" top: "y" convolution_param {{ num_output: 6 '
            "axis: 2 kernel_size: 3 stride: 2 pad: 1 group: 2 } }\n")
    net = prototxt2py.load(read_net_text(text))
    module = net.layer("conv")
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(rng.standard_normal(tuple(module.weight.shape))))
        module.bias.copy_(torch.from_numpy(rng.standard_normal(6)))
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    conv = torch.nn.functional.conv_transpose2d if layer_type == "Deconvolution" else torch.nn.functional.conv2d
    with torch.no_grad():
        want = conv(x.reshape(6, 4, 5, 5), module.weight, module.bias, stride=2, padding=1, groups=2)
        got = net(x)["y"]
    assert tuple(got.shape) == net.graph.blob_shapes()["y"] == (2, 3, *want.shape[1:])
    torch.testing.assert_close(got, want.reshape(2, 3, *want.shape[1:]))
    if layer_type == "Convolution":  # and the numpy transcription of Caffe agrees
        w, b = module.weight.detach().double().numpy(), module.bias.detach().double().numpy()
        top = caffe_conv(x.double().numpy().reshape(6, 4, 5, 5), w, b, (2, 2), (1, 1), (1, 1), 2,
                         np.zeros((6, 6, 3, 3)))[0]
        np.testing.assert_allclose(got.numpy().reshape(top.shape), top, rtol=1e-4, atol=1e-5)
