"""Fork layers (SSD, PSPNet, SegNet, Faster R-CNN, R-FCN, ShuffleNet, depthwise convolution, Axpy): no Caffe
golden data exists for them (BVLC Caffe cannot run them), so shapes of real corpus nets are checked against
sizes derived by hand from the published architectures and the forks' formulas, and every torch forward
against an independent plain-Python/numpy port of the fork's C++ code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from golden import CORPUS

import prototxt2py
from prototxt2py.errors import GraphError, ShapeError
from prototxt2py.layers.forks.ssd_nn import DetectionOutput
from prototxt2py.reader import read_net_text

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not available")
f32 = np.float32


def graph_of(text: str, **kw) -> prototxt2py.Graph:
    return prototxt2py.graph(read_net_text(text), **kw)


def net_of(text: str, phase: str = "TEST") -> prototxt2py.backends.torch_runtime.CaffeNet:
    return prototxt2py.load(read_net_text(text), phase=phase)


def c_round(v: float) -> int:
    """C's round(): halves away from zero."""
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


# ---------------------------------------------------------------------------------------------------------
# Shapes of real fork nets
# ---------------------------------------------------------------------------------------------------------
@needs_corpus
def test_mobilenet_ssd_deploy_shapes() -> None:
    g = prototxt2py.graph(CORPUS / "chuanqi305__MobileNet-SSD/deploy.prototxt")
    s = g.blob_shapes()
    # 300 -> conv0 (k3 s2 p1) 150 -> 75 -> 38 -> 19 (conv11) -> 10 (conv13); extra layers k3 s2 p1: 5, 3, 2, 1
    assert s["conv11"] == (1, 512, 19, 19) and s["conv13"] == (1, 1024, 10, 10)
    assert [s[f"conv{i}_2"][2] for i in (14, 15, 16, 17)] == [5, 3, 2, 1]
    # conv11: min 60, ar 2 + flip -> ratios {1, 2, 1/2}: 3 priors; the others add max_size and ar 3: 1+1+4 = 6
    assert s["conv11_mbox_priorbox"] == (1, 2, 19 * 19 * 3 * 4)
    priors = 19 * 19 * 3 + (10 * 10 + 5 * 5 + 3 * 3 + 2 * 2 + 1) * 6
    assert priors == 1917  # the published MobileNet-SSD prior count
    assert s["mbox_priorbox"] == (1, 2, priors * 4)
    assert s["mbox_loc"] == (1, priors * 4)
    assert s["mbox_conf_flatten"] == (1, priors * 21)
    why = g.unresolved()
    assert list(why) == ["detection_out"] and "keep_top_k=100" in why["detection_out"]


@needs_corpus
def test_pspnet50_shapes() -> None:
    g = prototxt2py.graph(CORPUS / "hszhao__PSPNet/evaluation/prototxt/pspnet50_ADE20K_473.prototxt")
    s = g.blob_shapes()
    # 473 -> conv1 k3 s2 p1: 237 -> pool k3 s2 p1 (ceil): 119 -> conv3 stride 2: 60, dilated stages keep 60
    assert s["conv1_1_3x3_s2"] == (1, 64, 237, 237)
    assert s["pool1_3x3_s2"] == (1, 128, 119, 119)  # the stem ends with 128 channels
    assert s["conv5_3"] == (1, 2048, 60, 60)
    # pyramid pooling: kernels 60/30/20/10 -> bins 1/2/3/6, each Interp'ed back to height/width 60
    for bins in (1, 2, 3, 6):
        assert s[f"conv5_3_pool{bins}"] == (1, 2048, bins, bins)
        assert s[f"conv5_3_pool{bins}_interp"] == (1, 512, 60, 60)
    assert s["conv5_3_concat"] == (1, 2048 + 4 * 512, 60, 60)
    # zoom_factor 8: 60 + (60 - 1) * 7 = 473, the input size again
    assert s["conv6_interp"] == (1, 150, 473, 473)
    assert g.node("conv1_1_3x3_s2/bn").param_shapes == [(1, 64, 1, 1)] * 4  # slope, bias, mean, variance
    assert g.unresolved() == {}


@needs_corpus
def test_segnet_inference_shapes() -> None:
    g = prototxt2py.graph(CORPUS / "alexgkendall__SegNet-Tutorial/Models/segnet_inference.prototxt",
                          input_shapes={"data": (1, 3, 360, 480)})
    s = g.blob_shapes()
    # 2x2/2 max pooling with Caffe's ceil: 360x480 -> 180x240 -> 90x120 -> 45x60 -> 23x30 -> 12x15
    assert s["pool4"] == s["pool4_mask"] == (1, 512, 23, 30)
    assert s["pool5"] == (1, 512, 12, 15)
    assert s["pool5_D"] == (1, 512, 23, 30)  # upsample_h 23, upsample_w 30
    assert s["pool4_D"] == (1, 512, 45, 60)  # upsample_h 45, upsample_w 60
    assert s["pool3_D"] == (1, 256, 90, 120)  # scale 2 only: 45 * 2, 60 * 2
    assert s["prob"] == (1, 11, 360, 480)  # CamVid's 11 classes
    assert g.node("conv1_1_bn").param_shapes == [(1, 64, 1, 1)] * 2  # SegNet BN: scale, shift


@needs_corpus
def test_segnet_inference_data_layer_is_unknowable() -> None:
    g = prototxt2py.graph(CORPUS / "alexgkendall__SegNet-Tutorial/Models/segnet_inference.prototxt")
    why = g.unresolved()
    assert list(why) == ["data"]
    assert "/SegNet/CamVid/test.txt" in why["data"] and "--input data=1,3,H,W" in why["data"]


@needs_corpus
def test_fast_rcnn_shapes() -> None:
    g = prototxt2py.graph(CORPUS / "rbgirshick__py-faster-rcnn/models/coco/VGG16/fast_rcnn/test.prototxt")
    s = g.blob_shapes()
    # VGG16 conv5_3 is 224 / 16 = 14; one declared ROI -> (1, 512, 7, 7); COCO: 81 classes, 4 * 81 box deltas
    assert s["conv5_3"] == (1, 512, 14, 14)
    assert s["pool5"] == (1, 512, 7, 7)
    assert s["cls_prob"] == (1, 81) and s["bbox_pred"] == (1, 324)


@needs_corpus
def test_faster_rcnn_python_proposal_is_built_in() -> None:
    """py-faster-rcnn's proposal layer is a built-in spec: the test net's shapes are Caffe's after set-up (one
    ROI), its parameters all known."""
    g = prototxt2py.graph(
        CORPUS / "rbgirshick__py-faster-rcnn/models/pascal_voc/VGG16/faster_rcnn_end2end/test.prototxt")
    assert g.unresolved() == {}
    assert type(g.node("proposal").spec).__name__ == "ProposalLayer"
    s = g.blob_shapes()
    assert s["rpn_cls_prob_reshape"] == (1, 18, 14, 14) and s["rois"] == (1, 5)
    assert s["pool5"] == (1, 512, 7, 7) and s["cls_prob"] == (1, 21) and s["bbox_pred"] == (1, 84)
    assert g.node("fc6").param_shapes == [(4096, 25088), (4096,)]


@needs_corpus
def test_depthwise_and_shuffle_nets() -> None:
    g = prototxt2py.graph(CORPUS / "PaddlePaddle__X2Paddle/test_benchmark/Caffe/MNasNet/deploy_MnasNet.prototxt")
    dw = g.node("conv2_1/dw")
    assert dw.param_shapes == [(32, 1, 3, 3)]  # one 3x3 filter per channel, no bias
    assert g.values[dw.outputs[0]].shape == (1, 32, 112, 112)
    assert dw.macs == 32 * 112 * 112 * 9
    assert g.node("conv3_1/dw").type == "DepthwiseConvolution"  # the alias spelling
    assert g.node("conv3_1/dw").param_shapes == [(48, 1, 3, 3)]
    g = prototxt2py.graph(
        CORPUS / "PaddlePaddle__X2Paddle/test_benchmark/Caffe/ShuffleNet/shufflenet_v2_x0.5.prototxt")
    node = g.node("stage_2_1/shuffle")
    assert g.values[node.outputs[0]].shape == g.values[node.inputs[0]].shape
    assert g.unresolved() == {}


def test_fork_data_layers() -> None:
    # SegNet: crop_height/crop_width fix the size, is_color the channels; labels are (N, 1, H, W) maps.
    # HED: image_data_param with transform_param.crop_size; gray images give 1 channel
    g = graph_of("""
        layer { name: "seg" type: "DenseImageData" top: "data" top: "label"
                dense_image_data_param { source: "pairs.txt" batch_size: 4 crop_height: 224 crop_width: 320 } }
        layer { name: "hed" type: "ImageLabelmapData" top: "img" top: "edges" transform_param { crop_size: 100 }
                image_data_param { source: "pairs.txt" batch_size: 2 is_color: false } }
    """)
    s = g.blob_shapes()
    assert s["data"] == (4, 3, 224, 320) and s["label"] == (4, 1, 224, 320)
    assert s["img"] == (2, 1, 100, 100) and s["edges"] == (2, 1, 100, 100)
    assert g.node("seg").spec.family == g.node("hed").spec.family == "forks"


# ---------------------------------------------------------------------------------------------------------
# PriorBox
# ---------------------------------------------------------------------------------------------------------
def ssd_prior_boxes(layer_hw, img_hw, min_sizes, max_sizes, ratios, flip, clip, variance, offset=0.5,
                    step=None, reduce=False) -> np.ndarray:
    """weiliu89/caffe ssd PriorBoxLayer, written out by hand."""
    lh, lw = layer_hw
    ih, iw = img_hw
    ars = [1.0]
    for ar in ratios:
        if all(abs(ar - r) >= 1e-6 for r in ars):
            ars.append(ar)
            if flip:
                ars.append(float(f32(1.0 / ar)))
    sw, sh = (step, step) if step else (f32(iw) / f32(lw), f32(ih) / f32(lh))
    boxes, variances = [], []
    for h in range(lh):
        for w in range(lw):
            cx, cy = f32(f32(w + offset) * f32(sw)), f32(f32(h + offset) * f32(sh))
            sizes = []
            for s, mn in enumerate(min_sizes):
                mn = int(mn)
                sizes.append((mn / 2.0,) * 2 if reduce else (mn, mn))
                if max_sizes:
                    sizes.append((math.sqrt(mn * int(max_sizes[s])),) * 2)
                sizes += [(mn * math.sqrt(ar), mn / math.sqrt(ar)) for ar in ars if abs(ar - 1) >= 1e-6]
            for bw, bh in sizes:
                bw, bh = float(f32(bw)), float(f32(bh))
                box = [(cx - bw / 2) / iw, (cy - bh / 2) / ih, (cx + bw / 2) / iw, (cy + bh / 2) / ih]
                boxes += [min(max(v, 0.0), 1.0) if clip else v for v in box]
                variances += list(variance) if len(variance) == 4 else [variance[0]] * 4
    return np.array([boxes, variances], dtype=f32)[None]


@needs_corpus
def test_prior_box_opencv_test_net() -> None:
    # bottom 0 is a (1, 1, 1, 2) map on a 10x10 image: step 5 across, 10 down; 2 min sizes with max sizes
    # and ratio 2 (+ flip): (3 + 1) * 2 = 8 priors per cell
    g = prototxt2py.graph(CORPUS / "opencv__opencv_extra/testdata/dnn/layers/prior_box.prototxt")
    assert g.blob_shapes()["priorbox"] == (1, 2, 2 * 8 * 4)
    net = prototxt2py.load(g)
    out = net(torch.zeros(1, 3, 10, 10), torch.zeros(1, 1, 1, 2))["priorbox"].numpy()
    want = ssd_prior_boxes((1, 2), (10, 10), [2, 3], [6, 7], [2], True, False, [0.1, 0.1, 0.2, 0.2])
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-7)
    # first cell, first prior: a 2x2 box around (2.5, 5) on a 10x10 image
    np.testing.assert_allclose(out[0, 0, :4], [0.15, 0.4, 0.35, 0.6], atol=1e-7)
    # second prior: sqrt(2 * 6) square
    half = math.sqrt(12) / 2
    np.testing.assert_allclose(out[0, 0, 4:8], [(2.5 - half) / 10, (5 - half) / 10, (2.5 + half) / 10,
                                                 (5 + half) / 10], atol=1e-7)


def test_prior_box_variants() -> None:
    # fractional min_size is truncated (7.9 -> 7), clip, one variance, explicit img_size/step, reduce_boxes,
    # a duplicated ratio (1 and 2 twice), and one bottom only
    net = net_of("""
        layer { name: "in" type: "Input" top: "f" input_param { shape { dim: 1 dim: 4 dim: 3 dim: 2 } } }
        layer { name: "pb" type: "PriorBox" bottom: "f" top: "p"
                prior_box_param { min_size: 7.9 aspect_ratio: 1 aspect_ratio: 2 aspect_ratio: 2 flip: false
                                  clip: true variance: 0.3 img_size: 12 step: 5 offset: 0.25
                                  reduce_boxes: true } }
    """)
    out = net(torch.zeros(1, 4, 3, 2))["p"].numpy()
    want = ssd_prior_boxes((3, 2), (12, 12), [7.9], [], [1, 2, 2], False, True, [0.3], 0.25, 5.0, True)
    assert out.shape == (1, 2, 3 * 2 * 2 * 4)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-7)
    assert out[0, 0].min() == 0.0 and out[0, 0, 2] == pytest.approx((0.25 * 5 + 3.5 / 2) / 12)


def test_prior_box_rejects_bad_params() -> None:
    text = """
        layer {{ name: "in" type: "Input" top: "f" input_param {{ shape {{ dim: 1 dim: 1 dim: 2 dim: 2 }} }} }}
        layer {{ name: "pb" type: "PriorBox" bottom: "f" bottom: "f" top: "p" prior_box_param {{ {} }} }}
    """
    with pytest.raises(GraphError, match="max_size must be greater"):
        graph_of(text.format("min_size: 4 max_size: 3"))
    with pytest.raises(GraphError, match="1 or 4 variance"):
        graph_of(text.format("min_size: 4 variance: 0.1 variance: 0.2"))
    with pytest.raises(ShapeError, match="image blob"):
        graph_of(text.replace('bottom: "f" bottom: "f"', 'bottom: "f"').format("min_size: 4"))


# ---------------------------------------------------------------------------------------------------------
# DetectionOutput
# ---------------------------------------------------------------------------------------------------------
def ssd_detection_output(loc, conf, prior, num_classes, share, code, keep_top_k, conf_thr, nms_thr, eta, top_k):
    """weiliu89/caffe ssd DetectionOutputLayer::Forward_cpu (background 0), loop by loop, in float32."""
    n, num_priors = loc.shape[0], prior.shape[2] // 4
    nl = 1 if share else num_classes
    loc = loc.reshape(n, num_priors, nl, 4)
    conf = conf.reshape(n, num_priors, num_classes)
    pbox, pvar = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)

    def decode(p, v, b):
        if code == 1:
            return [f32(p[k] + v[k] * b[k]) for k in range(4)]
        pw, ph = f32(p[2] - p[0]), f32(p[3] - p[1])
        if code == 3:
            return [f32(p[0] + v[0] * b[0] * pw), f32(p[1] + v[1] * b[1] * ph), f32(p[2] + v[2] * b[2] * pw),
                    f32(p[3] + v[3] * b[3] * ph)]
        pcx, pcy = f32(float(f32(p[0] + p[2])) / 2), f32(float(f32(p[1] + p[3])) / 2)
        cx, cy = f32(v[0] * b[0] * pw + pcx), f32(v[1] * b[1] * ph + pcy)
        w, h = math.exp(float(f32(v[2] * b[2]))) * float(pw), math.exp(float(f32(v[3] * b[3]))) * float(ph)
        w, h = float(f32(w)), float(f32(h))
        return [f32(float(cx) - w / 2), f32(float(cy) - h / 2), f32(float(cx) + w / 2), f32(float(cy) + h / 2)]

    def size(b):
        return f32(0) if b[2] < b[0] or b[3] < b[1] else f32(f32(b[2] - b[0]) * f32(b[3] - b[1]))

    def overlap(a, b):
        if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
            return f32(0)
        iw, ih = f32(min(a[2], b[2]) - max(a[0], b[0])), f32(min(a[3], b[3]) - max(a[1], b[1]))
        if iw > 0 and ih > 0:
            inter = f32(iw * ih)
            return f32(inter / f32(f32(size(a) + size(b)) - inter))
        return f32(0)

    rows = []
    for i in range(n):
        boxes = [[decode(pbox[p], pvar[p], loc[i, p, lc]) for p in range(num_priors)] for lc in range(nl)]
        kept_by_class, total = {}, 0
        for c in range(1, num_classes):
            cand = sorted(((conf[i, p, c], p) for p in range(num_priors) if conf[i, p, c] > conf_thr),
                          key=lambda t: -t[0])[: top_k if top_k > -1 else None]
            bx, thr, kept = boxes[0 if share else c], f32(nms_thr), []
            for _, p in cand:
                keep = all(overlap(bx[p], bx[k]) <= thr for k in kept)
                if keep:
                    kept.append(p)
                    if eta < 1 and thr > 0.5:
                        thr = f32(thr * f32(eta))
            kept_by_class[c] = kept
            total += len(kept)
        if -1 < keep_top_k < total:
            ranked = sorted(((conf[i, p, c], c, p) for c in sorted(kept_by_class) for p in kept_by_class[c]),
                            key=lambda t: -t[0])[:keep_top_k]
            kept_by_class = {}
            for _, c, p in ranked:
                kept_by_class.setdefault(c, []).append(p)
        for c in sorted(kept_by_class):
            rows += [[i, c, conf[i, p, c], *boxes[0 if share else c][p]] for p in kept_by_class[c]]
    if not rows:
        return np.array([[i] + [-1] * 6 for i in range(n)], dtype=f32).reshape(1, 1, n, 7)
    return np.array(rows, dtype=f32).reshape(1, 1, -1, 7)


@pytest.mark.parametrize(
    "share,code,keep_top_k,eta,top_k,thr,n",
    [(True, 2, 30, 1.0, 50, 0.2, 1), (False, 1, -1, 0.9, 20, 0.1, 2), (True, 3, 5, 1.0, -1, 0.3, 2),
     (True, 2, 100, 0.7, 40, -3.4e38, 1), (True, 2, 10, 1.0, 10, 0.99, 2)],
)
def test_detection_output_matches_ssd(share, code, keep_top_k, eta, top_k, thr, n) -> None:
    rng = np.random.default_rng(7)
    num_priors, num_classes = 60, 5
    nl = 1 if share else num_classes
    loc = (rng.standard_normal((n, num_priors * nl * 4)) * 0.3).astype(f32)
    conf = rng.random((n, num_priors, num_classes)).astype(f32)
    conf = (conf / conf.sum(-1, keepdims=True)).reshape(n, -1)
    corner = rng.random((num_priors, 2)).astype(f32) * 0.7
    wh = rng.random((num_priors, 2)).astype(f32) * 0.3 + 0.05
    prior = np.zeros((1, 2, num_priors * 4), dtype=f32)
    prior[0, 0] = np.concatenate([corner, corner + wh], 1).reshape(-1)
    prior[0, 1] = np.tile([0.1, 0.1, 0.2, 0.2], num_priors)
    module = DetectionOutput(num_classes, share, 0, ("CORNER", "CENTER_SIZE", "CORNER_SIZE")[code - 1], False,
                             keep_top_k, thr, 0.45, eta, top_k)
    got = module(*(torch.from_numpy(a) for a in (loc, conf, prior))).numpy()
    want = ssd_detection_output(loc, conf, prior, num_classes, share, code, keep_top_k, thr, 0.45, eta, top_k)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)



def test_prior_box_judges_duplicate_ratios_in_float32() -> None:
    """The fork keeps ``float ar`` and drops a ratio within 1e-6 of one it has: 2.000001 is 2.00000095 in float32,
    9.5e-7 from 2, so it is a duplicate there (3 priors per cell, not 5), in the graph, the runtime and ONNX;
    a flipped ratio is ``1. / ar`` of the float32 value."""
    text = """
        layer { name: "in" type: "Input" top: "f" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }
        layer { name: "pb" type: "PriorBox" bottom: "f" top: "p"
                prior_box_param { min_size: 16 aspect_ratio: 2 aspect_ratio: 2.000001 aspect_ratio: 0.3
                                  flip: true img_size: 300 } }
    """
    g = graph_of(text)
    assert g.values[g.outputs[0]].shape == (1, 2, 2 * 2 * 5 * 4)
    module = net_of(text).layer("pb")
    assert module.aspect_ratios == (1.0, 2.0, 0.5, float(np.float32(0.3)), float(np.float32(1.0 / np.float32(0.3))))
    onnx_model = pytest.importorskip("prototxt2py.backends.onnx_export").to_onnx_model(g)
    dims = [d.dim_value for d in onnx_model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 2, 80]


def _one_class_detection(code: str, top_k: int) -> DetectionOutput:
    return DetectionOutput(2, True, 0, code, False, -1, None, 0.45, 1.0, top_k)


def test_detection_output_drops_nan_scores_before_top_k() -> None:
    """``GetMaxScoreIndex`` keeps ``score > threshold`` before its sort and ``top_k``: a NaN score takes no place."""
    prior = torch.tensor([[[.1, .1, .4, .4, .5, .5, .9, .9], [.1, .1, .2, .2, .1, .1, .2, .2]]])
    conf = torch.tensor([[.1, math.nan, .1, .9]])
    got = _one_class_detection("CORNER", 1)(torch.zeros(1, 8), conf, prior)
    torch.testing.assert_close(got, torch.tensor([[[[0.0, 1.0, 0.9, 0.5, 0.5, 0.9, 0.9]]]]))


def test_detection_output_a_nan_overlap_suppresses() -> None:
    """``ApplyNMSFast`` keeps a box whose overlap is ``<= nms_threshold``: boxes decoded to infinity have NaN
    overlaps, and the second one is suppressed."""
    prior = torch.tensor([[[.1, .1, .4, .4, .5, .5, .9, .9], [.1, .1, .2, .2, .1, .1, .2, .2]]])
    loc = torch.tensor([[0.0, 0, 1000, 1000, 0, 0, 1000, 1000]])
    got = _one_class_detection("CENTER_SIZE", 2)(loc, torch.tensor([[.1, .9, .1, .8]]), prior)
    assert got.shape == (1, 1, 1, 7) and got[0, 0, 0, 2].item() == pytest.approx(0.9)


# ---------------------------------------------------------------------------------------------------------
# Permute, Interp, Upsample, ShuffleChannel, Axpy
# ---------------------------------------------------------------------------------------------------------
def test_permute_fills_unlisted_axes() -> None:
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
        layer { name: "p" type: "Permute" bottom: "x" top: "y" permute_param { order: 0 order: 2 } }
    """)
    x = np.arange(120, dtype=f32).reshape(2, 3, 4, 5)
    y = net(torch.from_numpy(x))["y"].numpy()
    np.testing.assert_array_equal(y, x.transpose(0, 2, 1, 3))  # order (0, 2) then the rest: 1, 3


def caffe_interp(x: np.ndarray, h2: int, w2: int, pad_beg: int, h_eff: int, w_eff: int) -> np.ndarray:
    """PSPNet's caffe_cpu_interp2 (non-packed) on a crop starting at -pad_beg, written out with loops."""
    n, c = x.shape[:2]
    out = np.zeros((n, c, h2, w2), dtype=f32)
    rh = f32(h_eff - 1) / f32(h2 - 1) if h2 > 1 else f32(0)
    rw = f32(w_eff - 1) / f32(w2 - 1) if w2 > 1 else f32(0)
    y0 = x0 = -pad_beg
    for i in range(h2):
        hr = f32(rh * i)
        h1 = int(hr)
        hp = 1 if h1 < h_eff - 1 else 0
        l1 = f32(hr - h1)
        l0 = f32(1) - l1
        for j in range(w2):
            wr = f32(rw * j)
            w1 = int(wr)
            wp = 1 if w1 < w_eff - 1 else 0
            m1 = f32(wr - w1)
            m0 = f32(1) - m1
            p = x[:, :, y0 + h1:, x0 + w1:]
            out[:, :, i, j] = l0 * (m0 * p[:, :, 0, 0] + m1 * p[:, :, 0, wp]) + l1 * (
                m0 * p[:, :, hp, 0] + m1 * p[:, :, hp, wp])
    return out


@pytest.mark.parametrize(
    "params,hw,pad",
    [
        ("zoom_factor: 3", (13, 10), 0),  # 5 + 4 * 2, 4 + 3 * 2
        ("shrink_factor: 2", (3, 2), 0),  # (5 - 1) // 2 + 1, (4 - 1) // 2 + 1
        ("height: 7 width: 1", (7, 1), 0),
        ("zoom_factor: 2 shrink_factor: 3", (3, 3), 0),  # shrink to 2x2 first, then zoom: 2 + 1
        ("zoom_factor: 2 pad_beg: -1 pad_end: -1", (5, 3), -1),  # crop to 3x2, then 3 + 2, 2 + 1
    ],
)
def test_interp_matches_pspnet(params: str, hw: tuple[int, int], pad: int) -> None:
    net = net_of(f"""
        layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 dim: 5 dim: 4 }} }} }}
        layer {{ name: "i" type: "Interp" bottom: "x" top: "y" interp_param {{ {params} }} }}
        layer {{ name: "loss" type: "Reduction" bottom: "y" top: "l" reduction_param {{ operation: SUMSQ }}
                loss_weight: 0.5 }}
    """)
    x = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out = net(x, all_blobs=True)
    assert tuple(out["y"].shape) == (2, 3, *hw)
    want = caffe_interp(x.detach().numpy(), *hw, pad, 5 + 2 * pad, 4 + 2 * pad)
    np.testing.assert_allclose(out["y"].detach().numpy(), want, rtol=1e-6, atol=1e-6)
    # the loss is 0.5 * sum(y^2), so dL/dx = J^T y with J the (linear) forward map, built column by column
    net.loss(out).backward()
    basis = np.eye(x.numel(), dtype=f32).reshape(-1, *x.shape)
    jac = np.stack([caffe_interp(e, *hw, pad, 5 + 2 * pad, 4 + 2 * pad).ravel() for e in basis], 1)
    np.testing.assert_allclose(x.grad.numpy().ravel(), jac.T @ want.ravel(), rtol=1e-5, atol=1e-5)


def test_interp_needs_a_size_rule() -> None:
    with pytest.raises(GraphError, match="zoom_factor, shrink_factor, or height and width"):
        graph_of("""
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
            layer { name: "i" type: "Interp" bottom: "x" top: "y" interp_param { height: 3 } }
        """)


UNPOOL = """
    layer {{ name: "in" type: "Input" top: "x" top: "m"
            input_param {{ shape {{ dim: 1 dim: 2 dim: 2 dim: 2 }} }} }}
    layer {{ name: "u" type: "Upsample" bottom: "x" bottom: "m" top: "y" upsample_param {{ {} }} }}
"""


def test_upsample_unpools_with_caffe_collisions() -> None:
    net = net_of(UNPOOL.format("upsample_h: 3 upsample_w: 3"))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]], requires_grad=True)
    m = torch.tensor([[[[0.0, 4.0], [4.0, 8.0]], [[2.0, 3.0], [6.0, 2.9]]]])  # collisions at 4 and (2, 2.9 -> 2)
    y = net(x, m)["y"]
    want = np.zeros((1, 2, 9), dtype=f32)
    for c in range(2):  # Caffe: zero, then top[mask[i]] = x[i] for i in order; later hits win
        for i in range(4):
            want[0, c, int(m[0, c].flatten()[i])] = x.detach()[0, c].flatten()[i]
    np.testing.assert_array_equal(y.detach().numpy().reshape(1, 2, 9), want)
    g = torch.arange(18, dtype=torch.float32).view(1, 2, 3, 3)
    y.backward(g)
    # Caffe's backward gathers top_diff[mask[i]] for every i, including the overwritten ones
    idx = m.long().view(1, 2, 4)
    np.testing.assert_array_equal(x.grad.view(1, 2, 4).numpy(), g.view(1, 2, 9).gather(2, idx).numpy())



@pytest.mark.parametrize("mode", ["fixed", "dynamic_batch", "dynamic"])
def test_upsample_to_a_smaller_size_is_refused_by_every_onnx_export(mode: str) -> None:
    """``MaxUnpool`` may not give an output smaller than its input: refused by name, never a model onnxruntime
    then rejects."""
    from prototxt2py.backends.onnx_export import to_onnx_model
    from prototxt2py.errors import UnsupportedLayerError

    g = graph_of(UNPOOL.format("upsample_h: 2 upsample_w: 6").replace("dim: 2 dim: 2 }", "dim: 3 dim: 3 }"))
    with pytest.raises(UnsupportedLayerError, match="unpooling 3x3 to a smaller 2x6"):
        to_onnx_model(g, dynamic_batch=mode == "dynamic_batch", dynamic=mode == "dynamic")

def test_upsample_scale_pad_out_and_yolo_nearest() -> None:
    g = graph_of(UNPOOL.format("scale: 2 pad_out_h: true"))
    assert g.blob_shapes()["y"] == (1, 2, 3, 4)
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }
        layer { name: "u" type: "Upsample" bottom: "x" top: "y" upsample_param { scale: 2 } }
    """)
    y = net(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))["y"]
    np.testing.assert_array_equal(y[0, 0].numpy(), [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])


def test_shuffle_channel() -> None:
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 6 dim: 1 dim: 1 } } }
        layer { name: "s" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 2 } }
    """)
    y = net(torch.arange(6.0).view(1, 6, 1, 1))["y"].flatten().tolist()
    assert y == [0, 3, 1, 4, 2, 5]  # channel src = cpg * i + j goes to dst = group * j + i
    with pytest.raises(ShapeError, match="not divisible by group 4"):
        graph_of("""
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 6 } } }
            layer { name: "s" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 4 } }
        """)


def test_axpy() -> None:
    net = net_of("""
        layer { name: "in" type: "Input" top: "a" top: "x" top: "y"
                input_param { shape { dim: 2 dim: 3 dim: 1 dim: 1 } shape { dim: 2 dim: 3 dim: 2 dim: 2 }
                              shape { dim: 2 dim: 3 dim: 2 dim: 2 } } }
        layer { name: "ax" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z" }
    """)
    rng = np.random.default_rng(0)
    a, x, y = (rng.standard_normal(s).astype(f32) for s in ((2, 3, 1, 1), (2, 3, 2, 2), (2, 3, 2, 2)))
    z = net(*(torch.from_numpy(v) for v in (a, x, y)))["z"].numpy()
    np.testing.assert_allclose(z, a * x + y, rtol=1e-6)


def test_depthwise_convolution_values() -> None:
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
        layer { name: "dw" type: "ConvolutionDepthwise" bottom: "x" top: "y"
                convolution_param { kernel_size: 2 pad: 1 stride: 2 bias_term: true } }
    """)
    conv = net.layer("dw")
    assert tuple(conv.weight.shape) == (2, 1, 2, 2) and tuple(conv.bias.shape) == (2,)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 3, 3)).astype(f32)
    w = rng.standard_normal((2, 1, 2, 2)).astype(f32)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
        conv.bias.copy_(torch.tensor([0.5, -1.0]))
    y = net(torch.from_numpy(x))["y"].detach().numpy()
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((1, 2, 2, 2), dtype=f32)  # (3 + 2 - 2) // 2 + 1 = 2
    for c in range(2):
        for i in range(2):
            for j in range(2):
                want[0, c, i, j] = (xp[0, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2] * w[c, 0]).sum() + [0.5, -1.0][c]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# ROIPooling, PSROIPooling, SmoothL1Loss
# ---------------------------------------------------------------------------------------------------------
def fast_rcnn_roi_pool(x, rois, ph, pw, scale):
    """rbgirshick/caffe-fast-rcnn ROIPoolingLayer::Forward_cpu with its argmax (and its backward)."""
    b, c, h, w = x.shape
    out = np.full((len(rois), c, ph, pw), -np.finfo(f32).max, dtype=f32)
    arg = np.full(out.shape, -1)
    for n, roi in enumerate(rois):
        bi = int(roi[0])
        x1, y1, x2, y2 = (c_round(float(f32(v * f32(scale)))) for v in roi[1:5])
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        bh, bw = f32(rh) / f32(ph), f32(rw) / f32(pw)
        for i in range(ph):
            for j in range(pw):
                hs = min(max(int(math.floor(f32(i) * bh)) + y1, 0), h)
                he = min(max(int(math.ceil(f32(i + 1) * bh)) + y1, 0), h)
                ws = min(max(int(math.floor(f32(j) * bw)) + x1, 0), w)
                we = min(max(int(math.ceil(f32(j + 1) * bw)) + x1, 0), w)
                if he <= hs or we <= ws:
                    out[n, :, i, j] = 0
                    continue
                for ch in range(c):
                    for yy in range(hs, he):
                        for xx in range(ws, we):
                            if x[bi, ch, yy, xx] > out[n, ch, i, j]:
                                out[n, ch, i, j] = x[bi, ch, yy, xx]
                                arg[n, ch, i, j] = yy * w + xx
    return out, arg


def test_roi_pooling_matches_fast_rcnn() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, (2, 3, 9, 11)).astype(f32)  # small integers: many exact ties
    rois = np.array([[0, 0, 0, 31, 31], [1, 4.5, 2, 20, 13], [1, 10, 10, 10, 10], [0, -8, 3, 5, 60],
                     [1, 30, 30, 50, 50], [0, 2, 2, 3.4, 20], [1, 0, 0, 43, 35]], dtype=f32)
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" top: "rois"
                input_param { shape { dim: 2 dim: 3 dim: 9 dim: 11 } shape { dim: 7 dim: 5 } } }
        layer { name: "roi" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y"
                roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 } }
    """)
    xt = torch.from_numpy(x).requires_grad_()
    y = net(xt, torch.from_numpy(rois))["y"]
    want, arg = fast_rcnn_roi_pool(x, rois, 3, 2, 0.25)
    np.testing.assert_array_equal(y.detach().numpy(), want)
    g = rng.standard_normal(want.shape).astype(f32)
    y.backward(torch.from_numpy(g))
    grad = np.zeros_like(x)  # Caffe's backward: each top diff goes to its bin's argmax
    for n, ch, i, j in np.ndindex(*arg.shape):
        if arg[n, ch, i, j] >= 0:
            grad[int(rois[n, 0]), ch].flat[arg[n, ch, i, j]] += g[n, ch, i, j]
    np.testing.assert_allclose(xt.grad.numpy(), grad, rtol=1e-6, atol=1e-6)


def rfcn_psroi_pool(x, rois, dim, group, scale):
    """daijifeng001/caffe-rfcn PSROIPoolingForward (its fused multiply-adds done in double); also returns
    each output's input window ``(batch, channel, hs, he, ws, we)``."""
    b, c, h, w = x.shape
    out = np.zeros((len(rois), dim, group, group), dtype=f32)
    windows = {}
    for n, roi in enumerate(rois):
        bi = int(roi[0])
        sw, sh = f32(c_round(roi[1])) * f32(scale), f32(c_round(roi[2])) * f32(scale)
        ew, eh = f32(c_round(roi[3]) + 1) * f32(scale), f32(c_round(roi[4]) + 1) * f32(scale)
        bw = max(f32(ew - sw), f32(0.1)) / f32(group)
        bh = max(f32(eh - sh), f32(0.1)) / f32(group)
        for d, i, j in np.ndindex(dim, group, group):
            hs = min(max(math.floor(f32(i * float(bh) + float(sh))), 0), h)
            he = min(max(math.ceil(f32((i + 1) * float(bh) + float(sh))), 0), h)
            ws = min(max(math.floor(f32(j * float(bw) + float(sw))), 0), w)
            we = min(max(math.ceil(f32((j + 1) * float(bw) + float(sw))), 0), w)
            ch = (d * group + i) * group + j
            windows[n, d, i, j] = (bi, ch, hs, he, ws, we)
            if he > hs and we > ws:
                out[n, d, i, j] = x[bi, ch, hs:he, ws:we].sum() / ((he - hs) * (we - ws))
    return out, windows


def test_psroi_pooling_matches_rfcn() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2 * 3 * 3, 8, 10)).astype(f32)
    rois = np.array([[0, 0, 0, 39, 31], [1, 6.5, 3, 22, 17], [1, 12, 12, 12, 12], [0, -8, 3, 5, 60],
                     [1, 50, 50, 70, 70]], dtype=f32)
    net = net_of("""
        layer { name: "in" type: "Input" top: "x" top: "rois"
                input_param { shape { dim: 2 dim: 18 dim: 8 dim: 10 } shape { dim: 5 dim: 5 } } }
        layer { name: "ps" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y"
                psroi_pooling_param { spatial_scale: 0.25 output_dim: 2 group_size: 3 } }
    """)
    xt = torch.from_numpy(x).requires_grad_()
    y = net(xt, torch.from_numpy(rois))["y"]
    want, windows = rfcn_psroi_pool(x, rois, 2, 3, 0.25)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-5, atol=1e-6)
    assert (want[4] == 0).all()  # ROI outside the map: every bin empty
    g = rng.standard_normal(want.shape).astype(f32)
    y.backward(torch.from_numpy(g))
    grad = np.zeros_like(x)  # Caffe's backward: top_diff / bin_area onto every input of the bin
    for key, (bi, ch, hs, he, ws, we) in windows.items():
        if he > hs and we > ws:
            grad[bi, ch, hs:he, ws:we] += g[key] / ((he - hs) * (we - ws))
    np.testing.assert_allclose(xt.grad.numpy(), grad, rtol=1e-5, atol=1e-6)


def test_smooth_l1_loss_with_weights() -> None:
    net = net_of("""
        layer { name: "in" type: "Input" top: "a" top: "b" top: "wi" top: "wo"
                input_param { shape { dim: 2 dim: 3 dim: 2 dim: 2 } } }
        layer { name: "l" type: "SmoothL1Loss" bottom: "a" bottom: "b" bottom: "wi" bottom: "wo" top: "loss"
                smooth_l1_loss_param { sigma: 2 } }
    """)
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((2, 3, 2, 2)).astype(f32) for _ in range(2))
    wi, wo = (rng.random((2, 3, 2, 2)).astype(f32) for _ in range(2))
    at = torch.from_numpy(a).requires_grad_()
    bt = torch.from_numpy(b).requires_grad_()
    out = net(at, bt, torch.from_numpy(wi), torch.from_numpy(wo))
    d = wi.astype(np.float64) * (a - b)
    small = np.abs(d) < 1 / 4
    err = np.where(small, 0.5 * d * d * 4, np.abs(d) - 0.5 / 4)
    assert out["loss"].shape == ()
    assert float(out["loss"].detach()) == pytest.approx((wo * err).sum() / 2, rel=1e-6)
    net.loss(out).backward()
    deriv = np.where(small, 4 * d, np.sign(d)) * wi * wo / 2
    np.testing.assert_allclose(at.grad.numpy(), deriv, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bt.grad.numpy(), -deriv, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------
# BN (SegNet, PSPNet)
# ---------------------------------------------------------------------------------------------------------
BN_NET = """
    layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 3 dim: 2 dim: 2 dim: 3 }} }} }}
    layer {{ name: "bn" type: "BN" bottom: "x" top: "y" {} }}
"""


def _set_blobs(net, *values) -> None:
    module = net.layer("bn")
    with torch.no_grad():
        for name, v in zip(module.blob_names, values, strict=True):
            getattr(module, name).copy_(torch.tensor(v, dtype=torch.float32).view(1, 2, 1, 1))


def test_segnet_bn_inference_and_learn() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 2, 3)).astype(f32)
    scale, shift = np.array([1.5, -0.5], f32).reshape(1, 2, 1, 1), np.array([0.25, 2.0], f32).reshape(1, 2, 1, 1)
    net = net_of(BN_NET.format("bn_param { bn_mode: INFERENCE }"))
    assert net.layer("bn").blob_names == ("scale", "shift")
    _set_blobs(net, scale.ravel(), shift.ravel())
    np.testing.assert_allclose(net(torch.from_numpy(x))["y"].detach().numpy(), x * scale + shift, rtol=1e-6)
    net = net_of(BN_NET.replace('top: "y"', 'top: "y" top: "m" top: "v"').format("bn_param { bn_mode: LEARN }"))
    _set_blobs(net, scale.ravel(), shift.ravel())
    out = net(torch.from_numpy(x))
    x64 = x.astype(np.float64)
    mean = x64.mean((0, 2, 3), keepdims=True)
    var = (x64 ** 2).mean((0, 2, 3), keepdims=True) - mean ** 2
    np.testing.assert_allclose(out["y"].detach().numpy(), (x64 - mean) / np.sqrt(var + 1e-9) * scale + shift,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["m"].detach().numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["v"].detach().numpy(), var, rtol=1e-4, atol=1e-6)


def test_pspnet_bn_frozen_and_training() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 2, 2, 3)).astype(f32)
    slope, bias, mean, var = ([1.5, -0.5], [0.25, 2.0], [0.1, -0.3], [2.0, 0.5])
    c = lambda v: np.array(v, np.float64).reshape(1, 2, 1, 1)  # noqa: E731
    net = net_of(BN_NET.format("bn_param { frozen: true eps: 0.001 }"), phase="TRAIN")
    _set_blobs(net, slope, bias, mean, var)
    xt = torch.from_numpy(x).requires_grad_()
    y = net(xt)["y"]
    want = (x - c(mean)) / np.sqrt(c(var) + 1e-3) * c(slope) + c(bias)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-5, atol=1e-6)
    y.sum().backward()  # frozen: only the bottom gets slope / std; slope and bias get nothing
    np.testing.assert_allclose(xt.grad.numpy(), np.broadcast_to(c(slope) / np.sqrt(c(var) + 1e-3), x.shape),
                               rtol=1e-5)
    assert net.layer("bn").scale.grad is None
    # not frozen, TRAIN: batch statistics, moving averages updated with momentum 0.9 (the default)
    net = net_of(BN_NET.format("bn_param { slope_filler { type: 'constant' value: 1 } }"), phase="TRAIN")
    _set_blobs(net, slope, bias, mean, var)
    y = net(torch.from_numpy(x))["y"].detach().numpy()
    bm, bv = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, (x - bm) / np.sqrt(bv + 1e-5) * c(slope) + c(bias), rtol=1e-4, atol=1e-5)
    m = net.layer("bn")
    np.testing.assert_allclose(m.mean.numpy(), 0.1 * bm + 0.9 * c(mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.variance.numpy(), 0.1 * bv + 0.9 * c(var), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# ONNX export of the fork layers: standard ops (Transpose, Resize, MaxUnpool, MaxRoiPool ...) must compute
# what the runtime computes (the runtime is checked against the fork ports above)
# ---------------------------------------------------------------------------------------------------------
def _rois() -> torch.Tensor:
    return torch.tensor([[0, 0, 0, 31, 31], [1, 4.5, 2, 20, 13], [1, 10, 10, 10, 10], [0, -8, 3, 5, 60],
                         [1, 30, 30, 50, 50], [0, 2, 2, 3.4, 20], [1, 0, 0, 43, 35]])


def _normal(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


#: case -> (input blobs with their values, the layer under test; bottoms named after the inputs, top "y")
ONNX_CASES = {
    "permute": ({"x": _normal(2, 3, 5, 4)},
                'type: "Permute" bottom: "x" permute_param { order: 0 order: 2 order: 3 }'),
    "interp_crop_zoom": ({"x": _normal(2, 3, 5, 4)},
                         'type: "Interp" bottom: "x" interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -1 }'),
    "interp_to_1x1": ({"x": _normal(2, 3, 5, 4)}, 'type: "Interp" bottom: "x" interp_param { height: 1 width: 1 }'),
    "shuffle": ({"x": _normal(1, 6, 2, 2)}, 'type: "ShuffleChannel" bottom: "x" shuffle_channel_param { group: 3 }'),
    "upsample_nearest": ({"x": _normal(1, 2, 2, 3)}, 'type: "Upsample" bottom: "x" upsample_param { scale: 2 }'),
    "upsample_unpool": ({"x": _normal(1, 2, 2, 2), "m": torch.tensor([[[[0.0, 4], [4, 8]], [[2, 3], [6, 2.9]]]])},
                        'type: "Upsample" bottom: "x" bottom: "m" upsample_param { upsample_h: 3 upsample_w: 3 }'),
    "roi_pooling": ({"x": _normal(2, 3, 9, 11), "r": _rois()}, 'type: "ROIPooling" bottom: "x" bottom: "r" '
                    "roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 }"),
    "bn_segnet": ({"x": _normal(3, 2, 2, 3)}, 'type: "BN" bottom: "x" bn_param { bn_mode: INFERENCE }'),
    "bn_pspnet": ({"x": _normal(3, 2, 2, 3)}, 'type: "BN" bottom: "x" bn_param { frozen: true eps: 0.001 }'),
    "bn_segnet_learn": ({"x": _normal(3, 2, 2, 3) * 3 + 1}, 'type: "BN" bottom: "x" top: "m" top: "v" '
                        'bn_param { bn_mode: LEARN }'),
    "axpy": ({"a": _normal(2, 3), "x": _normal(2, 3, 2, 2), "b": _normal(2, 3, 2, 2)},
             'type: "Axpy" bottom: "a" bottom: "x" bottom: "b"'),
    "prior_box": ({"x": _normal(1, 1, 3, 2), "img": _normal(1, 3, 30, 20)}, 'type: "PriorBox" bottom: "x" '
                  'bottom: "img" prior_box_param { min_size: 4 max_size: 9 aspect_ratio: 2 clip: true }'),
    "depthwise": ({"x": _normal(1, 4, 6, 6)}, 'type: "DepthwiseConvolution" bottom: "x" convolution_param { '
                  'kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "gaussian" std: 1 } bias_filler { '
                  'type: "constant" value: 0.3 } }'),
}


@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_onnx_export_matches_runtime(case: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    from prototxt2py.backends.onnx_export import to_onnx_model

    feed, layer = ONNX_CASES[case]
    inputs = "".join(f'layer {{ name: "in_{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                     + " ".join(f"dim: {d}" for d in v.shape) + " } } }\n" for k, v in feed.items())
    net = net_of(f'{inputs}layer {{ name: "l" top: "y" {layer} }}')
    gen = torch.Generator().manual_seed(0)
    for name in net.layer("l").blob_names:  # BN statistics: positive variances
        with torch.no_grad():
            getattr(net.layer("l"), name).uniform_(0.5, 1.5, generator=gen)
    session = ort.InferenceSession(to_onnx_model(net).SerializeToString())
    tops = [o.name for o in session.get_outputs()]
    want = net(**feed)
    for top, got in zip(tops, session.run(tops, {k: v.numpy() for k, v in feed.items()}), strict=True):
        np.testing.assert_allclose(got, want[top].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=top)


def _detection_net(param: str, shapes: dict[str, tuple[int, ...]]) -> prototxt2py.backends.torch_runtime.CaffeNet:
    inputs = "".join(f'layer {{ name: "in_{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                     + " ".join(f"dim: {d}" for d in v) + " } } }\n" for k, v in shapes.items())
    return net_of(f'{inputs}layer {{ name: "l" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" '
                  f"top: \"y\" detection_output_param {{ {param} }} }}")


def _runtime_and_onnx(net, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    from prototxt2py.backends.onnx_export import to_onnx_model

    session = ort.InferenceSession(to_onnx_model(net).SerializeToString())
    return [net(**{k: torch.from_numpy(v) for k, v in feed.items()})["y"].numpy(),
            session.run(["y"], feed)[0]]


def test_detection_output_keeps_a_box_whose_corners_cross() -> None:
    """CORNER offsets can decode to xmin > xmax; SSD's JaccardOverlap of such a box is 0 with any box, so both
    boxes of class 1 are kept (onnxruntime's NonMaxSuppression reorders corners and suppressed it)."""
    feed = {"loc": np.array([[0, 0, 0, 0, 4, 0, -4, 0]], f32), "conf": np.array([[0.1, 0.9, 0.2, 0.8]], f32),
            "prior": np.array([[[0.2, 0.2, 0.6, 0.6, 0.2, 0.2, 0.6, 0.6], [0.1] * 8]], f32)}
    net = _detection_net("num_classes: 2 background_label_id: 0 code_type: CORNER nms_param { nms_threshold: 0.45 }",
                         {k: v.shape for k, v in feed.items()})
    want = np.array([[0, 1, 0.9, 0.2, 0.2, 0.6, 0.6], [0, 1, 0.8, 0.6, 0.2, 0.2, 0.6]], f32)
    for got in _runtime_and_onnx(net, feed):
        np.testing.assert_allclose(got[0, 0], want, rtol=0, atol=1e-7)


def test_detection_output_compares_scores_with_the_float_threshold() -> None:
    """``score > confidence_threshold`` in float: a score of 0.3f does not pass a threshold of 0.3 (0.3f > 0.3
    in double), so there is no detection: Caffe's one row of -1 after the image index."""
    feed = {"loc": np.zeros((1, 4), f32), "conf": np.array([[0.5, 0.3]], f32),
            "prior": np.array([[[0.2, 0.2, 0.6, 0.6], [0.1] * 4]], f32)}
    net = _detection_net("num_classes: 2 confidence_threshold: 0.3 nms_param { nms_threshold: 0.45 }",
                         {k: v.shape for k, v in feed.items()})
    for got in _runtime_and_onnx(net, feed):
        np.testing.assert_array_equal(got[0, 0], [[0, -1, -1, -1, -1, -1, -1]])


@pytest.mark.parametrize(("layer", "message"), [
    ('type: "PriorBox" bottom: "x" bottom: "img" prior_box_param { min_size: 4 aspect_ratio: 0 flip: true }',
     "aspect_ratio values must be positive, got 0"),
    ('type: "DetectionOutput" bottom: "x" bottom: "x" bottom: "img" detection_output_param { num_classes: 2 '
     "background_label_id: -1 }", "share_location with background_label_id -1: the fork finds no location"),
])
def test_ssd_parameters_the_fork_cannot_run_are_refused(layer: str, message: str) -> None:
    with pytest.raises(prototxt2py.Prototxt2pyError, match=message):
        graph_of('layer { name: "in" type: "Input" top: "x" top: "img" input_param { shape { dim: 1 dim: 4 } '
                 f'shape {{ dim: 1 dim: 3 dim: 8 dim: 8 }} }} }}\nlayer {{ name: "l" top: "y" {layer} }}')
