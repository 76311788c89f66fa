"""FlowNet 2.0's layers (lmb-freiburg/flownet2) against line-by-line ports of the fork's CUDA kernels
(:mod:`flownet_reference`): Correlation, ChannelNorm, FlowWarp, Accum, Resample and DataAugmentation's running
mean, forward and (where the fork has one) backward; weights written at the training size; a FlowNet2-shaped
deploy net end to end and as generated code; bad settings as one line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import flownet_reference as ref
import numpy as np
import pytest
import torch
from golden import CORPUS, generated_module

import prototxt2py
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.proto import caffe_pb2
from prototxt2py.reader import read_net_text

F32 = np.float32
RNG = np.random.default_rng(7)


def _layer_net(shapes: list[tuple[int, ...]], layer: str) -> prototxt2py.CaffeNet:
    """A net of Input blobs ``x0, x1, ...`` of ``shapes`` feeding one layer (``bottom``/``top`` included)."""
    inputs = "".join(f'input: "x{i}" input_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n'
                     for i, s in enumerate(shapes))
    return prototxt2py.load(read_net_text(inputs + layer))


def _run(net, *xs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = net(*[torch.from_numpy(x) for x in xs])
    return next(iter(out.values())).numpy() if isinstance(out, dict) else out.numpy()


def _close(got: np.ndarray, want: np.ndarray, rtol: float = 2e-6, atol: float = 2e-6) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def test_the_reference_ports_pass_their_own_checks() -> None:
    """The ports against independent facts (identities, a naive float64 correlation, numerical gradients of the
    two backward ports), so that a wrong port cannot vouch for a wrong layer."""
    ref._self_check()


# -- Correlation -----------------------------------------------------------------------------------------------------
CORRELATIONS = [  # pad, kernel_size, max_displacement, stride_1, stride_2 (FlowNetC's is 20, 1, 20, 1, 2)
    (4, 1, 4, 1, 2),
    (2, 1, 2, 1, 1),
    (0, 1, 2, 2, 1),
    (3, 3, 2, 1, 1),
    (1, 3, 2, 2, 2),
    (0, 3, 1, 3, 1),
]


def _corr_layer(pad: int, k: int, md: int, s1: int, s2: int) -> str:
    return (f'layer {{ name: "corr" type: "Correlation" bottom: "x0" bottom: "x1" top: "corr" correlation_param {{ '
            f"pad: {pad} kernel_size: {k} max_displacement: {md} stride_1: {s1} stride_2: {s2} }} }}")


@pytest.mark.parametrize("params", CORRELATIONS)
def test_correlation_matches_the_forks_kernels(params: tuple[int, ...]) -> None:
    shape = (2, 5, 9, 11)
    a, b = RNG.normal(size=shape).astype(F32), RNG.normal(size=shape).astype(F32)
    net = _layer_net([shape, shape], _corr_layer(*params))
    want = ref.correlation(a, b, *params)
    assert net.graph.blob_shapes()["corr"] == want.shape
    _close(_run(net, a, b), want)
    # gradients: autograd of the forward against the fork's two backward kernels
    ta, tb = torch.from_numpy(a).requires_grad_(), torch.from_numpy(b).requires_grad_()
    top_diff = RNG.normal(size=want.shape).astype(F32)
    out = net(ta, tb)["corr"]
    out.backward(torch.from_numpy(top_diff))
    da, db = ref.correlation_backward(a, b, top_diff, *params)
    _close(ta.grad.numpy(), da, atol=1e-5)
    _close(tb.grad.numpy(), db, atol=1e-5)


def _correlation1d(b0: np.ndarray, b1: np.ndarray, pad: int, k: int, md: int, s1: int, s2: int,
                   direction: int) -> np.ndarray:
    """Correlation1D's CorrelateData (correlation_layer1d.cu), position by position: padding and border only along
    x (``y1 = y * stride_1``, ``x1 = x * stride_1 + max_displacement``), displacement ``(c % width + x_shift) *
    stride_2`` with ``x_shift`` -r (both ways) or 0 (``single_direction: 1``)."""
    p0, p1 = (np.pad(b, ((0, 0), (0, 0), (0, 0), (pad, pad))).astype(np.float64) for b in (b0, b1))
    n, c, h, w = p0.shape
    kr, r = (k - 1) // 2, md // s2
    th, tw = -(-(h - 2 * kr) // s1), -(-(w - 2 * (md + kr)) // s1)
    width, shift = (r + 1, 0) if direction == 1 else (2 * r + 1, -r)
    top = np.zeros((n, width, th, tw))
    for tc in range(width):
        s2o = (tc % width + shift) * s2
        for y in range(th):
            for x in range(tw):
                y1, x1 = y * s1, x * s1 + md
                patch0 = p0[:, :, y1:y1 + k, x1:x1 + k]
                patch1 = p1[:, :, y1:y1 + k, x1 + s2o:x1 + s2o + k]
                top[:, tc, y, x] = (patch0 * patch1).sum((1, 2, 3)) / (k * k * c)
    return top.astype(F32)


CORRELATIONS_1D = [(4, 1, 4, 1, 1, 0), (4, 1, 4, 1, 2, 1), (2, 3, 2, 2, 1, 0), (0, 1, 2, 1, 1, 1)]


@pytest.mark.parametrize("params", CORRELATIONS_1D)
def test_correlation1d_matches_the_forks_kernel(params: tuple[int, ...]) -> None:
    pad, k, md, s1, s2, direction = params
    shape = (2, 4, 7, 12)
    a, b = RNG.normal(size=shape).astype(F32), RNG.normal(size=shape).astype(F32)
    layer = (f'layer {{ name: "corr" type: "Correlation1D" bottom: "x0" bottom: "x1" top: "corr" correlation_param '
             f"{{ pad: {pad} kernel_size: {k} max_displacement: {md} stride_1: {s1} stride_2: {s2} "
             f"single_direction: {direction} }} }}")
    _close(_run(_layer_net([shape, shape], layer), a, b), _correlation1d(a, b, *params), atol=1e-5)


# -- Resample --------------------------------------------------------------------------------------------------------
RESAMPLES = [  # (in h, in w), (out h, out w), type, antialias
    ((12, 16), (6, 8), "LINEAR", True),
    ((12, 16), (6, 8), "LINEAR", False),
    ((10, 13), (7, 5), "LINEAR", True),
    ((6, 8), (12, 16), "LINEAR", True),
    ((6, 8), (9, 20), "LINEAR", True),
    ((10, 8), (4, 16), "LINEAR", True),  # shrinks in y, grows in x: antialiasing then narrows x's filter
    ((8, 8), (8, 8), "LINEAR", True),
    ((8, 4), (1, 8), "LINEAR", False),  # the mixed-up scales move the taps off the image: most of the row is 0
    ((8, 4), (1, 8), "LINEAR", True),  # ... and antialiasing narrows x's filter to nothing: all of it
    ((12, 16), (5, 7), "CUBIC", True),
    ((6, 8), (13, 17), "CUBIC", False),
    ((12, 16), (6, 8), "NEAREST", True),
    ((6, 9), (12, 18), "NEAREST", True),
]


@pytest.mark.parametrize(("size_in", "size_out", "kind", "antialias"), RESAMPLES)
def test_resample_matches_the_forks_kernels(size_in, size_out, kind, antialias) -> None:
    x = RNG.normal(size=(2, 3, *size_in)).astype(F32)
    layer = (f'layer {{ name: "r" type: "Resample" bottom: "x0" top: "r" resample_param {{ height: {size_out[0]} '
             f'width: {size_out[1]} type: {kind} antialias: {str(antialias).lower()} }} }}')
    net = _layer_net([x.shape], layer)
    _close(_run(net, x), ref.resample(x, *size_out, kind, antialias), rtol=1e-5, atol=1e-6)


def test_resample_takes_its_size_from_a_second_bottom() -> None:
    x, like = RNG.normal(size=(1, 2, 12, 16)).astype(F32), np.zeros((1, 5, 5, 7), F32)
    net = _layer_net([x.shape, like.shape], 'layer { name: "r" type: "Resample" bottom: "x0" bottom: "x1" top: "r" }')
    _close(_run(net, x, like), ref.resample(x, 5, 7, "LINEAR", True), rtol=1e-5, atol=1e-6)


# -- FlowWarp --------------------------------------------------------------------------------------------------------
def _flow(n: int, h: int, w: int) -> np.ndarray:
    """Flows that land inside, outside, in the last column's and row's band and exactly on pixels."""
    flow = RNG.uniform(-3, 3, size=(n, 2, h, w)).astype(F32)
    flow[0, 0, 0, :3] = [w - 1 + 0.25, w - 0.5, w + 0.0]  # right band of x = 0..2 -> x2 in [w-1, w) or w
    flow[0, 1, 1, :3] = [h - 1.5, h - 1.25, -1.0]
    flow[-1, :, -1, -1] = 0.0
    flow[-1, 0, 2, 4] = 2.0
    return flow


@pytest.mark.parametrize("fill", ["ZERO", "NOT_A_NUMBER"])
def test_flow_warp_matches_the_forks_kernels(fill: str) -> None:
    image = RNG.normal(size=(2, 3, 6, 7)).astype(F32)
    flow = _flow(2, 6, 7)
    layer = (f'layer {{ name: "w" type: "FlowWarp" bottom: "x0" bottom: "x1" top: "w" '
             f"flow_warp_param {{ fill_value: {fill} }} }}")
    net = _layer_net([image.shape, flow.shape], layer)
    want = ref.flow_warp(image, flow, fill_nan=fill == "NOT_A_NUMBER")
    got = _run(net, image, flow)
    _close(got, want)
    assert np.isnan(got).any() == (fill == "NOT_A_NUMBER")
    if fill == "ZERO":
        ti, tf = torch.from_numpy(image).requires_grad_(), torch.from_numpy(flow).requires_grad_()
        top_diff = RNG.normal(size=image.shape).astype(F32)
        net(ti, tf)["w"].backward(torch.from_numpy(top_diff))
        di, df = ref.flow_warp_backward(image, flow, top_diff)
        _close(ti.grad.numpy(), di, atol=1e-5)
        _close(tf.grad.numpy(), df, atol=1e-5)


# -- Accum -----------------------------------------------------------------------------------------------------------
ACCUMS = [  # bottom shapes, accum_param text
    ([(2, 2, 3, 4), (2, 3, 6, 8)], ""),
    ([(1, 2, 3, 4), (1, 1, 5, 7), (1, 3, 9, 9)], "have_reference: true"),
    ([(1, 2, 5, 6)], "size_divisible_by: 4"),
    ([(1, 2, 5, 6)], "top_height: 9 top_width: 11"),
    ([(1, 2, 5, 6)], "top_height: 9 top_width: 4"),  # not larger in both: the bottom's size
    ([(2, 2, 4, 4), (2, 1, 4, 4)], ""),
]


@pytest.mark.parametrize(("shapes", "param"), ACCUMS)
def test_accum_matches_the_forks_kernels(shapes, param: str) -> None:
    xs = [RNG.normal(size=s).astype(F32) for s in shapes]
    bottoms = " ".join(f'bottom: "x{i}"' for i in range(len(xs)))
    net = _layer_net(shapes, f'layer {{ name: "a" type: "Accum" {bottoms} top: "a" accum_param {{ {param} }} }}')
    p = caffe_pb2.AccumParameter()
    from google.protobuf import text_format

    text_format.Parse(param, p)
    want_shape = ref.accum_shape(shapes, p.top_height, p.top_width,
                                 p.size_divisible_by if p.HasField("size_divisible_by") else None, p.have_reference)
    assert net.graph.blob_shapes()["a"] == want_shape
    stacked = xs[:-1] if p.have_reference else xs
    _close(_run(net, *xs), ref.accum(stacked, *want_shape[2:]))


# -- ChannelNorm -----------------------------------------------------------------------------------------------------
def test_channel_norm_and_its_gradient_match_the_forks_code() -> None:
    x = RNG.normal(size=(2, 3, 4, 5)).astype(F32)
    x[0, :, 1, 2] = 0.0  # a zero vector: the fork's gradient is 0 there (the 1e-9), autograd's would be NaN
    net = _layer_net([x.shape], 'layer { name: "n" type: "ChannelNorm" bottom: "x0" top: "n" }')
    want = ref.channel_norm(x)
    _close(_run(net, x), want)
    tx = torch.from_numpy(x).requires_grad_()
    top_diff = RNG.normal(size=want.shape).astype(F32)
    net(tx)["n"].backward(torch.from_numpy(top_diff))
    _close(tx.grad.numpy(), ref.channel_norm_backward(x, want, top_diff))
    assert np.isfinite(tx.grad.numpy()).all()


def test_the_corpus_channel_norm_net_runs() -> None:
    path = CORPUS / "opencv__opencv_extra/testdata/dnn/layers/channel_norm.prototxt"
    net = prototxt2py.load(path)
    x = RNG.normal(size=(1, 3, 4, 3)).astype(F32)
    _close(_run(net, x), ref.channel_norm(x))


# -- DataAugmentation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_pixel", [True, False])
def test_data_augmentation_averages_its_mean_over_the_first_passes(per_pixel: bool) -> None:
    shape = (2, 3, 4, 5)
    layer = (f'layer {{ name: "aug" type: "DataAugmentation" bottom: "x0" top: "y" augmentation_param {{ '
             f"augment_during_test: true recompute_mean: 3 mean_per_pixel: {str(per_pixel).lower()} }} }}")
    net = _layer_net([shape], layer)
    batches = [RNG.uniform(0, 1, size=shape).astype(F32) for _ in range(5)]
    tops, (count, mean, channel_mean) = ref.data_augmentation_mean(batches, 3, per_pixel)
    for x, want in zip(batches, tops, strict=True):
        _close(_run(net, x), want)
    blobs = net.layer_blobs("aug")
    assert float(blobs[0]) == count == 5
    _close(blobs[1].numpy(), mean)
    _close(blobs[2].numpy(), channel_mean)


def test_data_augmentation_subtracts_the_prototxt_mean() -> None:
    x = RNG.uniform(0, 1, size=(1, 3, 2, 2)).astype(F32)
    layer = ('layer { name: "aug" type: "DataAugmentation" bottom: "x0" top: "y" augmentation_param { '
             "mean: 0.25 mean: 0.5 mean: 0.75 mean_per_pixel: false } }")
    _close(_run(_layer_net([x.shape], layer), x), x - np.array([0.25, 0.5, 0.75], F32).reshape(1, 3, 1, 1))


def _augmentation_weights(tmp_path: Path, blobs: list[np.ndarray]) -> Path:
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="aug", type="DataAugmentation")
    for array in blobs:
        b = layer.blobs.add()
        b.shape.dim.extend(array.shape)
        b.data.extend(array.ravel().tolist())
    path = tmp_path / "aug.caffemodel"
    path.write_bytes(net.SerializeToString())
    return path


@pytest.mark.parametrize("per_pixel", [True, False])
def test_a_mean_stored_at_the_training_size_is_adjusted_as_the_fork_does(tmp_path: Path, per_pixel: bool) -> None:
    """FlowNet2's weights hold the mean at the training crop's size (e.g. 384x512); its CustomCopyBlobs keeps
    the per-channel mean (and spreads it over a per-pixel mean of another size)."""
    stored_mean = RNG.uniform(0, 1, size=(1, 3, 6, 8)).astype(F32)
    channel = np.array([0.4, 0.45, 0.5], F32).reshape(1, 3, 1, 1)
    path = _augmentation_weights(tmp_path, [np.full((1, 1, 1, 1), 5000, F32), stored_mean, channel])
    text = ('input: "x0" input_shape { dim: 1 dim: 3 dim: 4 dim: 5 }\nlayer { name: "aug" type: "DataAugmentation" '
            f'bottom: "x0" top: "y" augmentation_param {{ recompute_mean: 1000 mean_per_pixel: '
            f"{str(per_pixel).lower()} }} }}")
    net = prototxt2py.load(read_net_text(text), weights=path)
    x = RNG.uniform(0, 1, size=(1, 3, 4, 5)).astype(F32)
    got = _run(net, x)
    used = channel if not per_pixel else stored_mean[0].reshape(3, -1).sum(1).reshape(1, 3, 1, 1) / F32(48)
    _close(got, x - used, atol=1e-6)
    assert float(net.layer_blobs("aug")[0]) == 5001  # one more pass; past recompute_mean, the mean stays
    # the torch-free store (convert, deploy) adjusts the same way
    from prototxt2py.blobstore import blobs_for

    g = prototxt2py.graph(read_net_text(text))
    stored = blobs_for(g, path).blobs(g.nodes[-1])
    _close(stored[2], used if per_pixel else channel, atol=1e-6)
    with pytest.raises(Prototxt2pyError, match=r"layer 'aug'.*pass count.*2 values"):
        prototxt2py.load(read_net_text(text), weights=_augmentation_weights(
            tmp_path, [np.zeros((1, 1, 1, 2), F32), stored_mean, channel]))


# -- a FlowNet2-shaped deploy net ------------------------------------------------------------------------------------
FLOWNET = textwrap.dedent("""\
    name: "flownet-small"
    input: "img0" input: "img1"
    input_shape { dim: 1 dim: 3 dim: 20 dim: 28 }
    input_shape { dim: 1 dim: 3 dim: 20 dim: 28 }
    layer { name: "Eltwise1" type: "Eltwise" bottom: "img0" top: "img0s"
            eltwise_param { operation: SUM coeff: 0.00392156862745098 } }
    layer { name: "Eltwise2" type: "Eltwise" bottom: "img1" top: "img1s"
            eltwise_param { operation: SUM coeff: 0.00392156862745098 } }
    layer { name: "img0s_aug" type: "DataAugmentation" bottom: "img0s" top: "img0_nomean"
            augmentation_param { augment_during_test: true recompute_mean: 1000 mean_per_pixel: false } }
    layer { name: "img1s_aug" type: "DataAugmentation" bottom: "img1s" top: "img1_nomean"
            augmentation_param { augment_during_test: true recompute_mean: 1000 mean_per_pixel: false } }
    layer { name: "Resample1" type: "Resample" bottom: "img0_nomean" top: "img0_r"
            resample_param { width: 32 height: 32 } }
    layer { name: "Resample2" type: "Resample" bottom: "img1_nomean" top: "img1_r"
            resample_param { width: 32 height: 32 } }
    layer { name: "conv1" type: "Convolution" bottom: "img0_r" bottom: "img1_r" top: "conv1a" top: "conv1b"
            convolution_param { num_output: 8 pad: 1 kernel_size: 3 stride: 2 weight_filler { type: "msra" } } }
    layer { name: "corr" type: "Correlation" bottom: "conv1a" bottom: "conv1b" top: "corr"
            correlation_param { pad: 4 kernel_size: 1 max_displacement: 4 stride_1: 1 stride_2: 2 } }
    layer { name: "cat" type: "Concat" bottom: "conv1a" bottom: "corr" top: "cat" }
    layer { name: "flow" type: "Convolution" bottom: "cat" top: "flow"
            convolution_param { num_output: 2 pad: 1 kernel_size: 3 weight_filler { type: "msra" } } }
    layer { name: "scaled" type: "Eltwise" bottom: "flow" top: "scaled" eltwise_param { operation: SUM coeff: 20.0 } }
    layer { name: "Accum1" type: "Accum" bottom: "scaled" bottom: "img0_r" top: "flow_up"
            accum_param { have_reference: true } }
    layer { name: "FlowWarp1" type: "FlowWarp" bottom: "img1_r" bottom: "flow_up" top: "warped" }
    layer { name: "diff" type: "Eltwise" bottom: "img0_r" bottom: "warped" top: "diff"
            eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
    layer { name: "ChannelNorm1" type: "ChannelNorm" bottom: "diff" top: "err" }
    layer { name: "ResampleOut" type: "Resample" bottom: "flow_up" top: "flow_out"
            resample_param { width: 28 height: 20 } }
    """)


def test_a_flownet2_shaped_net_runs_as_the_kernels_compose_and_as_generated_code() -> None:
    net = prototxt2py.load(read_net_text(FLOWNET))
    gen = generated_module(net)
    a, b = (RNG.uniform(0, 255, size=(1, 3, 20, 28)).astype(F32) for _ in range(2))
    with torch.no_grad():
        out = net(torch.from_numpy(a), torch.from_numpy(b))
        again = gen(torch.from_numpy(a), torch.from_numpy(b))
    for name in ("err", "flow_out"):
        assert torch.equal(out[name], again[name]), name
    # the same pipeline through the reference kernels (first pass: the mean is this image's)
    blobs = {n: [t.detach().numpy() for t in net.layer_blobs(n)] for n in ("conv1", "flow")}
    scale = F32(0.00392156862745098)
    (a0,), _ = ref.data_augmentation_mean([a * scale], 1000, False)
    (b0,), _ = ref.data_augmentation_mean([b * scale], 1000, False)
    a0, b0 = ref.resample(a0, 32, 32, "LINEAR", True), ref.resample(b0, 32, 32, "LINEAR", True)

    def conv(x, w, bias, stride, pad):
        t = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias), stride, pad)
        return t.numpy()

    c0, c1 = conv(a0, *blobs["conv1"], 2, 1), conv(b0, *blobs["conv1"], 2, 1)
    corr = ref.correlation(c0, c1, 4, 1, 4, 1, 2)
    flow = conv(np.concatenate([c0, corr], 1), *blobs["flow"], 1, 1) * F32(20)
    flow_up = ref.accum([flow], 32, 32)
    err = ref.channel_norm(a0 - ref.flow_warp(b0, flow_up))
    _close(out["err"].numpy(), err, rtol=1e-4, atol=1e-4)
    _close(out["flow_out"].numpy(), ref.resample(flow_up, 20, 28, "LINEAR", True), rtol=1e-4, atol=1e-4)


# -- refusals --------------------------------------------------------------------------------------------------------
REFUSED = [
    ([(1, 2, 5, 5)] * 2, 'type: "Correlation" bottom: "x0" bottom: "x1" correlation_param { kernel_size: 2 '
     "max_displacement: 1 }", "kernel_size must be odd, got 2"),
    ([(1, 2, 5, 5)] * 2, 'type: "Correlation" bottom: "x0" bottom: "x1" correlation_param { kernel_size: 1 '
     "max_displacement: 1 correlation_type: SUBTRACT }", "correlation_type SUBTRACT is not built in"),
    ([(1, 2, 5, 5)] * 2, 'type: "Correlation" bottom: "x0" bottom: "x1" correlation_param { kernel_size: 1 }',
     "correlation_param.max_displacement is required"),
    ([(1, 2, 5, 5)] * 2, 'type: "Correlation" bottom: "x0" bottom: "x1" correlation_param { kernel_size: 3 '
     "max_displacement: 2 }", "do not fit in the 5x5 bottoms padded by 0"),
    ([(1, 2, 5, 9)] * 2, 'type: "Correlation1D" bottom: "x0" bottom: "x1" correlation_param { kernel_size: 1 '
     "max_displacement: 2 pad: 2 single_direction: -1 }", "single_direction -1 is not supported"),
    ([(1, 2, 500, 500)] * 2, 'type: "Correlation" bottom: "x0" bottom: "x1" correlation_param { kernel_size: 1 '
     "max_displacement: 200 pad: 200 }", "160,801 displacements .* over the 65,536 computed"),
    ([(1, 1, 1, 300000)], 'type: "Resample" bottom: "x0" resample_param { width: 300000 height: 1 }',
     "Resample's resizing matrices would need 335.3 GiB, over the 8.0 GiB limit"),
    ([(1, 2, 5, 5)], 'type: "Resample" bottom: "x0" resample_param { type: AREA width: 2 height: 2 }',
     "AREA is not supported"),
    ([(1, 2, 5, 5)], 'type: "Resample" bottom: "x0"', "the top must be at least 1x1, got 0x0"),
    ([(1, 2, 10, 10)], 'type: "Resample" bottom: "x0" resample_param { type: NEAREST width: 20 height: 5 }',
     "NEAREST from 10x10 to 5x20 reads beyond the image"),
    ([(1, 3, 5, 5)], 'type: "DataAugmentation" bottom: "x0" augmentation_param { crop_width: 4 crop_height: 4 }',
     "crop_width/crop_height .* is not built in"),
    ([(1, 3, 5, 5), (1, 3, 5, 5)], 'type: "DataAugmentation" bottom: "x0" bottom: "x1"',
     "augmentation coefficients as a bottom or top .* is not built in"),
    ([(1, 3, 5, 5), (1, 3, 5, 5)], 'type: "FlowWarp" bottom: "x0" bottom: "x1"',
     r"the flow \(1, 3, 5, 5\) must be \(N, 2, H, W\)"),
    ([(1, 3, 5, 5), (1, 3, 1, 5)], 'type: "Accum" bottom: "x0" bottom: "x1" accum_param { have_reference: true }',
     "a 1x5 top is not computable"),
    ([(1, 3, 5, 5)], 'type: "ChannelNorm" bottom: "x0" top: "n" } layer { name: "e" type: "Eltwise" bottom: "x0" '
     "eltwise_param { operation: PROD }", "Eltwise PROD needs at least 2 bottoms"),
    ([(1, 3, 5, 5)], 'type: "Eltwise" bottom: "x0" eltwise_param { coeff: 2 }', "Eltwise takes at least 2 bottom"),
]


@pytest.mark.parametrize(("shapes", "layer", "message"), REFUSED)
def test_bad_settings_are_one_line_naming_the_layer(shapes, layer: str, message: str) -> None:
    with pytest.raises(Prototxt2pyError) as e:
        _layer_net(shapes, f'layer {{ name: "l" {layer} top: "t" }}')
    text = str(e.value)
    assert "\n" not in text and "layer '" in text
    assert __import__("re").search(message, text), text


def test_the_forks_diagonal_filler_maps_the_first_channels_through() -> None:
    """FlowNet2's ``diagonal`` filler (its final 1x1 ``scale_conv1``): kernel ``[n, n]`` holds ``diag_val[n]`` (1
    past the list) over the kernel's area, for ``n`` below both num and channels; every other weight is 0."""
    text = ('input: "x0" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\nlayer { name: "c" type: "Convolution" '
            'bottom: "x0" top: "c" convolution_param { num_output: 3 kernel_size: 3 weight_filler { '
            'type: "diagonal" diag_val: 2.0 } } }')
    want = np.zeros((3, 2, 3, 3), F32)
    want[0, 0], want[1, 1] = F32(2) / F32(9), F32(1) / F32(9)
    net = prototxt2py.load(read_net_text(text))
    np.testing.assert_array_equal(net.layer_blobs("c")[0].detach().numpy(), want)
    from prototxt2py.blobstore import blobs_for

    g = prototxt2py.graph(read_net_text(text))
    np.testing.assert_array_equal(blobs_for(g).blobs(g.nodes[-1])[0], want)


# -- ONNX ------------------------------------------------------------------------------------------------------------
def _onnx_outputs(net, tmp_path: Path, *xs: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from prototxt2py.backends.onnx_export import export_onnx

    path = tmp_path / "net.onnx"
    export_onnx(net, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = dict(zip([i.name for i in session.get_inputs()], xs, strict=True))
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))


def _bottoms(count: int) -> str:
    return " ".join(f'bottom: "x{i}"' for i in range(count))


ONNX_CASES = [
    *[([(2, 5, 9, 11)] * 2, _corr_layer(*params)) for params in CORRELATIONS[::2] + CORRELATIONS[3:4]],
    *[([(2, 4, 7, 12)] * 2, _corr_layer(*params[:5]).replace('"Correlation"', '"Correlation1D"').replace(
        "stride_2:", f"single_direction: {params[5]} stride_2:")) for params in CORRELATIONS_1D],
    *[([(1, 3, *size_in)], f'layer {{ name: "r" type: "Resample" bottom: "x0" top: "r" resample_param {{ height: '
       f'{size_out[0]} width: {size_out[1]} type: {kind} antialias: {str(aa).lower()} }} }}')
      for size_in, size_out, kind, aa in RESAMPLES],
    *[(shapes, f'layer {{ name: "a" type: "Accum" {_bottoms(len(shapes))} top: "a" accum_param {{ {param} }} }}')
      for shapes, param in ACCUMS],
    ([(2, 3, 6, 7), (2, 2, 6, 7)], 'layer { name: "w" type: "FlowWarp" bottom: "x0" bottom: "x1" top: "w" }'),
    ([(2, 3, 6, 7), (2, 2, 6, 7)], 'layer { name: "w" type: "FlowWarp" bottom: "x0" bottom: "x1" top: "w" '
     "flow_warp_param { fill_value: NOT_A_NUMBER } }"),
    ([(2, 3, 4, 5)], 'layer { name: "n" type: "ChannelNorm" bottom: "x0" top: "n" }'),
]


@pytest.mark.parametrize(("shapes", "layer"), ONNX_CASES)
def test_each_layer_exports_to_onnx_as_the_runtime_computes_it(tmp_path: Path, shapes, layer: str) -> None:
    net = _layer_net(shapes, layer)
    xs = [RNG.normal(size=s).astype(F32) for s in shapes]
    if "FlowWarp" in layer:
        xs[1] = _flow(*shapes[1][:1], *shapes[1][2:]) * F32(1.5)
    want = _run(net, *xs)
    got = next(iter(_onnx_outputs(net, tmp_path, *xs).values()))
    _close(got, want, rtol=1e-5, atol=1e-5)


def test_a_flownet2_shaped_net_runs_whole_in_onnxruntime_once_its_means_are_trained(tmp_path: Path) -> None:
    net = prototxt2py.load(read_net_text(FLOWNET))
    a, b = (RNG.uniform(0, 255, size=(1, 3, 20, 28)).astype(F32) for _ in range(2))
    with pytest.raises(Prototxt2pyError, match=r"img0s_aug.*still averaged over the first 1000 passes \(0 so far\)"):
        _onnx_outputs(net, tmp_path, a, b)
    with torch.no_grad():
        net(torch.from_numpy(a), torch.from_numpy(b))  # the means of one pass
        for name in ("img0s_aug", "img1s_aug"):
            net.layer_blobs(name)[0].fill_(1000)  # as trained weights hold them: past recompute_mean
        want = net(torch.from_numpy(a), torch.from_numpy(b))
    got = _onnx_outputs(net, tmp_path, a, b)
    for name in ("err", "flow_out"):
        _close(got[name], want[name].numpy(), rtol=1e-5, atol=2e-5)
