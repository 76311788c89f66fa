"""Fork layers as plain runtime modules (helpers of the fork plugins' ``*_nn`` modules, or stock ``nn.Upsample`` /
``nn.ChannelShuffle`` where those are exactly the fork's computation): the runtime builds exactly each spec's
``Call``, modules copy/pickle without IR references, and the stock substitutions equal the fork's formulas.
The forks' own numbers are covered by ``test_layers_forks.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_modules_losses import check_modules, net_of

from prototxt2py.layers.forks.mobile_nn import ShuffleChannel
from prototxt2py.layers.forks.pspnet_nn import Interp
from prototxt2py.layers.forks.rcnn_nn import SmoothL1Loss
from prototxt2py.layers.forks.segnet_nn import SegNetUpsample
from prototxt2py.layers.forks.senet_nn import Axpy
from prototxt2py.layers.forks.ssd_nn import Permute
from prototxt2py.nn import helpers

NET = """
layer { name: "perm" type: "Permute" bottom: "x" top: "xp" permute_param { order: 0 order: 2 } }
layer { name: "prior" type: "PriorBox" bottom: "x" bottom: "img" top: "priors"
        prior_box_param { min_size: 4 max_size: 9 aspect_ratio: 2 clip: true variance: 0.1 variance: 0.1
                          variance: 0.2 variance: 0.2 } }
layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "priors" top: "det"
        detection_output_param { num_classes: 3 code_type: CENTER_SIZE keep_top_k: 5 confidence_threshold: 0.1
                                 nms_param { nms_threshold: 0.45 top_k: 10 } } }
layer { name: "interp_size" type: "Interp" bottom: "x" top: "i1" interp_param { height: 7 width: 9 } }
layer { name: "interp_zoom" type: "Interp" bottom: "x" top: "i2"
        interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -1 } }
layer { name: "up2" type: "Upsample" bottom: "x" top: "u2" upsample_param { scale: 2 } }
layer { name: "up3" type: "Upsample" bottom: "x" top: "u3" upsample_param { scale_h: 3 scale_w: 2 } }
layer { name: "unpool" type: "Upsample" bottom: "x" bottom: "mask" top: "u4" upsample_param { scale: 2 } }
layer { name: "roi" type: "ROIPooling" bottom: "x" bottom: "rois" top: "r1"
        roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 0.5 } }
layer { name: "psroi" type: "PSROIPooling" bottom: "x8" bottom: "rois" top: "r2"
        psroi_pooling_param { spatial_scale: 0.5 output_dim: 2 group_size: 2 } }
layer { name: "sl1" type: "SmoothL1Loss" bottom: "x" bottom: "x2" top: "l1" smooth_l1_loss_param { sigma: 3 } }
layer { name: "segbn" type: "BN" bottom: "x" top: "b1" bn_param { bn_mode: INFERENCE
        scale_filler { type: "constant" value: 2 } shift_filler { type: "constant" value: 3 } } }
layer { name: "pspbn" type: "BN" bottom: "x" top: "b2" bn_param { frozen: true eps: 1e-3
        slope_filler { type: "constant" value: 1 } } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "x8" top: "s1" shuffle_channel_param { group: 2 } }
layer { name: "shuffle2d" type: "ShuffleChannel" bottom: "v" top: "s2" shuffle_channel_param { group: 3 } }
layer { name: "axpy" type: "Axpy" bottom: "a" bottom: "x" bottom: "x2" top: "ax" }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "x" top: "dw" convolution_param { kernel_size: 3 pad: 1 } }
"""
SHAPES = {
    "x": (2, 4, 5, 6), "x2": (2, 4, 5, 6), "x8": (2, 8, 5, 6), "img": (2, 3, 20, 24), "mask": (2, 4, 5, 6),
    "loc": (2, 30 * 4 * 4), "conf": (2, 30 * 4 * 3), "rois": (3, 5), "v": (2, 6), "a": (2, 4, 1, 1),
}


@pytest.fixture(scope="module")
def net():
    return net_of(SHAPES, NET)


def test_fork_modules_are_their_calls(net) -> None:
    assert check_modules(net) == [
        "Permute", "PriorBox", "DetectionOutput", "nn.Upsample", "Interp", "nn.Upsample", "SegNetUpsample",
        "SegNetUpsample", "ROIPooling", "PSROIPooling", "SmoothL1Loss", "SegNetBN", "PSPNetBN",
        "nn.ChannelShuffle", "ShuffleChannel", "Axpy", "nn.Conv2d",
    ]
    kwargs = {n.name: dict(n.spec.module(n).kwargs) for n in net.graph.nodes if n.spec.overrides("module")}
    assert kwargs["det"] == {"code_type": "CENTER_SIZE", "keep_top_k": 5,
                             "confidence_threshold": pytest.approx(0.1), "nms_threshold": pytest.approx(0.45),
                             "top_k": 10}
    assert kwargs["interp_size"] == {"size": (7, 9), "mode": "bilinear", "align_corners": True}
    assert kwargs["interp_zoom"] == {"zoom_factor": 2, "pad_beg": -1, "pad_end": -1}
    assert kwargs["up2"] == {"scale_factor": 2.0, "mode": "nearest"}
    assert kwargs["up3"] == {"scale_h": 3}
    assert kwargs["sl1"] == {"sigma": 3.0}


def test_bn_blobs_and_fillers(net) -> None:
    """SegNet's BN: two trainable blobs filled by scale/shift fillers; PSPNet's frozen BN: four blobs, the
    statistics as buffers, the variance starting at 1."""
    seg, psp = net.layer("segbn"), net.layer("pspbn")
    assert seg.blob_names == ("scale", "shift") and psp.blob_names == ("scale", "shift", "mean", "variance")
    assert torch.all(seg.scale == 2) and torch.all(seg.shift == 3)
    assert [n for n, _ in psp.named_buffers()] == ["mean", "variance"]
    assert torch.all(psp.scale == 1) and torch.all(psp.mean == 0) and torch.all(psp.variance == 1)
    assert (psp.frozen, psp.eps) == (True, pytest.approx(1e-3))


def test_stock_substitutes_equal_the_fork_formulas() -> None:
    """``nn.Upsample`` nearest by powers of two is the fork's repeat; ``nn.ChannelShuffle`` is the grid
    transpose the 2-axis helper does; ``nn.Upsample`` bilinear with aligned corners is the Interp helper."""
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    for scale in (2, 4, 8):
        stock = torch.nn.Upsample(scale_factor=float(scale), mode="nearest")(x)
        assert torch.equal(stock, SegNetUpsample(scale, scale)(x))
    assert torch.equal(torch.nn.ChannelShuffle(3)(x), ShuffleChannel(3)(x))
    flat = x[:, :, 0, 0]
    assert torch.equal(ShuffleChannel(3)(flat), torch.nn.ChannelShuffle(3)(x)[:, :, 0, 0])
    interp = Interp(size=(11, 3))(x)
    assert torch.equal(torch.nn.Upsample(size=(11, 3), mode="bilinear", align_corners=True)(x), interp)


def test_smooth_l1_keeps_sigma_squared_as_float32() -> None:
    module = SmoothL1Loss(sigma=0.1)
    assert module.sigma2 == float(np.float32(0.1 * 0.1)) != 0.1 * 0.1
    a = torch.tensor([[0.0, 50.0, 99.0]], dtype=torch.float64)
    d = a.numpy()
    s2 = np.float64(np.float32(0.01))
    want = np.where(np.abs(d) < 1 / s2, 0.5 * d * d * s2, np.abs(d) - 0.5 / s2).sum()
    np.testing.assert_allclose(float(module(a, torch.zeros_like(a))), want, rtol=1e-15)


def test_prior_box_onnx_constant_is_the_runtime_output(net) -> None:
    node = net.graph.node("prior")
    x, img = torch.zeros(SHAPES["x"]), torch.zeros(SHAPES["img"])
    runtime = net.layer("prior")(x, img)
    assert torch.equal(node.spec.module(node).build().priors(5, 6, 20, 24), runtime)
    assert tuple(runtime.shape) == (1, 2, 5 * 6 * 4 * 4)


def test_fork_modules_run_in_double(net) -> None:
    """``.double()`` keeps working (float64 inputs through the helpers that pin float32 internally)."""
    x = torch.randn(SHAPES["x"], dtype=torch.float64)
    for name in ("perm", "interp_zoom", "up3", "segbn"):
        out = net.layer(name).double()(x)
        assert (out[0] if isinstance(out, tuple) else out).dtype == torch.float64
    rois = torch.tensor([[0, 0, 0, 7, 9], [1, 2, 2, 5, 5], [0, 1, 3, 11, 9]], dtype=torch.float64)
    assert net.layer("roi").double()(x, rois).shape == (3, 4, 2, 2)


@pytest.mark.slow
def test_fork_and_recurrent_helpers_compile() -> None:
    """``torch.compile`` runs helpers to their eager numbers (autograd Functions, loops over timesteps)."""
    x = torch.randn(2, 4, 5, 6)
    lstm = helpers()["LSTM"](4, 3)
    for blob in lstm.parameters():
        torch.nn.init.normal_(blob)
    cases = [
        (Permute((0, 2, 3, 1)), (x,)),
        (SegNetUpsample(3, 2), (x,)),
        (Axpy(), (torch.randn(2, 4, 1, 1), x, x)),
        (Interp(zoom_factor=2, pad_beg=-1, pad_end=-1), (x,)),
        (lstm, (torch.randn(3, 2, 4), torch.ones(3, 2))),
    ]
    for module, inputs in cases:
        want = module(*inputs)
        if hasattr(module, "reset"):
            module.reset()
        torch.testing.assert_close(torch.compile(module, backend="eager")(*inputs), want)


@pytest.mark.parametrize(("feature", "image", "param"), [
    ((1, 1, 3, 2), (1, 3, 30, 20), "min_size: 4 max_size: 9 aspect_ratio: 2 clip: true"),
    ((2, 8, 19, 19), (2, 3, 300, 300), "min_size: 60 max_size: 111 aspect_ratio: 2 aspect_ratio: 3 flip: true "
                                       "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5"),
    ((1, 4, 7, 11), (1, 3, 113, 97), "min_size: 7 min_size: 13 aspect_ratio: 1.7 flip: true variance: 0.3"),
    ((1, 4, 5, 5), (1, 3, 64, 64), "min_size: 10 step: 12.8 offset: 0.3 clip: true"),
    ((1, 4, 6, 4), (1, 3, 50, 70), "min_size: 9 max_size: 20 step_h: 7.5 step_w: 11 offset: 0.25"),
    ((1, 4, 10, 10), (1, 3, 1, 1), "min_size: 30 max_size: 60 aspect_ratio: 2 flip: true img_size: 300"),
    ((1, 4, 3, 3), (1, 3, 30, 30), "min_size: 21 max_size: 45 aspect_ratio: 2 reduce_boxes: true"),
])
def test_prior_box_numpy_boxes_are_the_module_s(feature: tuple, image: tuple, param: str) -> None:
    """The ONNX export's torch-free boxes (layers/forks/ssd_priors.py) equal the runtime module's, bit for bit."""
    import prototxt2py
    from prototxt2py.layers.forks.ssd_priors import prior_boxes
    from prototxt2py.reader import read_net_text

    text = (f'layer {{ name: "in" type: "Input" top: "x" top: "img" input_param {{ shape {{ {_dims(feature)} }} '
            f'shape {{ {_dims(image)} }} }} }}\n'
            f'layer {{ name: "prior" type: "PriorBox" bottom: "x" bottom: "img" top: "p" '
            f'prior_box_param {{ {param} }} }}')
    g = prototxt2py.graph(read_net_text(text, "prior.prototxt"))
    node = g.node("prior")
    a = node.attrs
    img_h, img_w = (a.img_h, a.img_w) if a.img_h else image[2:]
    ours = prior_boxes(a, feature[2], feature[3], img_h, img_w)
    runtime = node.spec.module(node).build().priors(feature[2], feature[3], img_h, img_w)
    assert ours.dtype == np.float32 and ours.shape == tuple(runtime.shape) == tuple(g.values[node.outputs[0]].shape)
    np.testing.assert_array_equal(ours.view(np.uint32), runtime.numpy().view(np.uint32))


def _dims(shape: tuple) -> str:
    return " ".join(f"dim: {d}" for d in shape)
