"""Faster R-CNN as OpenCV's samples spell it: ``type: "Proposal"`` with a ``proposal_param`` in place of
py-faster-rcnn's ``Python`` layer, and a ``DetectionOutput`` over the ROIs (``normalized_bbox: false``, priors
without variances) for the final detections. The proposal layer is the Python layer's arithmetic with the
settings it names; the detection stage is checked against OpenCV itself in test_opencv_crosscheck.py."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from golden import CORPUS, assert_same_detections, detection_rows, generated_module

import prototxt2py
from prototxt2py.backends.codegen import generate
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.layers.forks.rcnn import rpn_anchors
from prototxt2py.layers.forks.rcnn_nn import ProposalLayer
from prototxt2py.reader import read_net_text
from prototxt2py.summary import summary_table

ZF_TEST = CORPUS / "rbgirshick__py-faster-rcnn/models/pascal_voc/ZF/faster_rcnn_end2end/test.prototxt"

NET = """
input: "s" input_shape {{ dim: 1 dim: {s} dim: {h} dim: {w} }}
input: "d" input_shape {{ dim: 1 dim: {d} dim: {h} dim: {w} }}
input: "info" input_shape {{ dim: 1 dim: 3 }}
layer {{ name: "proposal" type: "{type}" bottom: "s" bottom: "d" bottom: "info" top: "rois" top: "scores"
  {param} }}
"""

PYTHON_PARAM = "python_param { module: 'rpn.proposal_layer' layer: 'ProposalLayer' param_str: \"'feat_stride': 16\" }"
OPENCV_PARAM = "proposal_param { ratio: 0.5 ratio: 1.0 ratio: 2.0 scale: 8 scale: 16 scale: 32 }"


def _net(param: str, layer_type: str = "Proposal", anchors: int = 9, h: int = 4, w: int = 5) -> prototxt2py.CaffeNet:
    text = NET.format(s=2 * anchors, d=4 * anchors, h=h, w=w, type=layer_type, param=param)
    return prototxt2py.load(read_net_text(textwrap.dedent(text), "net.prototxt")).eval()


def _maps(seed: int, anchors: int, h: int, w: int, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(seed)
    s = np.round(rng.random((1, 2 * anchors, h, w), dtype=np.float32) * 8) / 8  # tied scores too
    d = (rng.standard_normal((1, 4 * anchors, h, w)) * 0.4).astype(np.float32)
    info = np.array([[h * 16 * 0.9, w * 16 * 1.1, scale]], np.float32)
    return torch.from_numpy(s), torch.from_numpy(d), torch.from_numpy(info)


@pytest.mark.parametrize("seed", range(4))
def test_opencv_spelling_is_the_python_layer(seed: int) -> None:
    """OpenCV's sample stanza (the py-faster-rcnn anchors, default settings) gives the Python layer's ROIs and
    scores bit for bit: the same anchors, the TEST settings 6000 / 300 / 0.7 / 16."""
    h, w = 7 + seed * 5, 9 + seed * 3
    inputs = _maps(seed, 9, h, w, scale=(1.0, 1.6, 0.6, 2.0)[seed])
    with torch.no_grad():
        want = _net(PYTHON_PARAM, "Python", h=h, w=w)(*inputs)
        got = _net(OPENCV_PARAM, h=h, w=w)(*inputs)
    assert got["rois"].shape[0] > 1
    torch.testing.assert_close(got["rois"], want["rois"], rtol=0, atol=0)
    torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=0)


def test_settings_come_from_proposal_param() -> None:
    """Every field is used: base size, stride, ratios, scales (anchors as ``generate_anchors(8, [1, 2], [2, 4])``
    computes them by hand), pre/post NMS counts, the NMS threshold and the minimum size."""
    param = ("proposal_param { feat_stride: 8 base_size: 8 min_size: 4 ratio: 1 ratio: 2 scale: 2 scale: 4 "
             "pre_nms_topn: 50 post_nms_topn: 10 nms_thresh: 0.5 }")
    net = _net(param, anchors=4, h=11, w=13)
    anchors = ((-4.0, -4.0, 11.0, 11.0), (-12.0, -12.0, 19.0, 19.0), (-2.0, -8.0, 9.0, 15.0), (-8.0, -20.0, 15.0, 27.0))
    assert net.graph.node("proposal").attrs.anchors == anchors == rpn_anchors((2, 4), (1, 2), 8)
    source = generate(net.graph).source
    assert "pre_nms_top_n=50, post_nms_top_n=10, nms_thresh=0.5, min_size=4" in " ".join(source.split())
    layer = ProposalLayer(8, anchors, pre_nms_top_n=50, post_nms_top_n=10, nms_thresh=0.5, min_size=4, scores=True)
    inputs = _maps(5, 4, 11, 13, scale=0.5)
    with torch.no_grad():
        got = net(*inputs)
        want = layer(*inputs)
        default = _net("proposal_param { feat_stride: 8 base_size: 8 ratio: 1 ratio: 2 scale: 2 scale: 4 }",
                       anchors=4, h=11, w=13)(*inputs)
    assert got["rois"].shape[0] == 10 and default["rois"].shape[0] > 10
    torch.testing.assert_close(got["rois"], want[0], rtol=0, atol=0)


@pytest.mark.parametrize(("param", "message"), [
    ("proposal_param { feat_stride: 0 }", "proposal_param: feat_stride must be a positive number, got 0"),
    ("proposal_param { ratio: -1 }", "proposal_param: ratio must be a positive number, got -1.0"),
    ("proposal_param { scale: 8 scale: 0 }", "proposal_param: scale must be a positive number, got 0.0"),
    ("proposal_param { nms_thresh: 1.5 }", r"proposal_param: nms_thresh must be in \[0, 1\], got 1.5"),
    ("proposal_param { base_size: 100000 }", "proposal_param: base_size 100000 is larger than 65536"),
    ("proposal_param { ratio: 1 }", r"3 anchors need scores \(1, 6, H, W\) and deltas \(1, 12, H, W\)"),
])
def test_bad_settings_are_one_line_naming_the_layer(param: str, message: str) -> None:
    with pytest.raises(Prototxt2pyError, match=message) as caught:
        _net(param)
    assert "proposal" in str(caught.value) and "\n" not in str(caught.value)


def opencv_zf_net() -> str:
    """py-faster-rcnn's ZF test net the way OpenCV's samples run it (opencv_extra's faster_rcnn_zf.prototxt):
    the proposal layer as ``type: "Proposal"``, then the detections of a ``DetectionOutput`` over the ROIs."""
    text = ZF_TEST.read_text()
    python = text[text.index("  type: 'Python'"):text.index("layer {", text.index("  type: 'Python'"))]
    proposal = ("  type: 'Proposal'\n  bottom: 'rpn_cls_prob_reshape'\n  bottom: 'rpn_bbox_pred'\n"
                f"  bottom: 'im_info'\n  top: 'rois'\n  {OPENCV_PARAM}\n}}\n")
    return text.replace(python, proposal) + textwrap.dedent("""
        layer { name: "cls_prob_reshape" type: "Reshape" bottom: "cls_prob" top: "cls_prob_reshape"
          reshape_param { shape { dim: 1 dim: -1 } } }
        layer { name: "bbox_pred_reshape" type: "Reshape" bottom: "bbox_pred" top: "bbox_pred_reshape"
          reshape_param { shape { dim: 1 dim: -1 } } }
        layer { name: "proposal_crop" type: "Slice" bottom: "rois" top: "proposal_batch_ids" top: "proposal_bboxes"
          slice_param { axis: 1 slice_point: 1 } }
        layer { name: "proposal_reshape" type: "Reshape" bottom: "proposal_bboxes" top: "proposal_reshape"
          reshape_param { shape { dim: 1 dim: 1 dim: -1 } } }
        layer { name: "detection_out" type: "DetectionOutput" bottom: "bbox_pred_reshape"
          bottom: "cls_prob_reshape" bottom: "proposal_reshape" top: "detection_out"
          detection_output_param { num_classes: 21 share_location: false background_label_id: 0
            nms_param { nms_threshold: 0.3 } code_type: CENTER_SIZE keep_top_k: 100
            variance_encoded_in_target: true normalized_bbox: false } }
        """)


def _zf(tmp_path) -> prototxt2py.CaffeNet:
    path = tmp_path / "faster_rcnn_zf.prototxt"
    path.write_text(opencv_zf_net())
    net = prototxt2py.load(str(path), input_shapes={"data": (1, 3, 224, 320)}).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return net


@pytest.mark.skipif(not ZF_TEST.is_file(), reason="needs the shared corpus")
def test_opencv_faster_rcnn_net_runtime_code_and_onnx(tmp_path) -> None:
    """The whole OpenCV-style net: summary shapes, the runtime's detections decode the right ROIs, generated
    code and onnxruntime (priors whose count is the run-time number of ROIs) give the same detections."""
    net = _zf(tmp_path)
    table = summary_table(net.graph)
    assert "proposal (Proposal)" in table and "proposal_reshape (Reshape)" in table
    x = torch.randn(1, 3, 224, 320, generator=torch.Generator().manual_seed(1))
    info = torch.tensor([[224.0, 320.0, 1.0]])
    with torch.no_grad():
        out = net(x, info, all_blobs=True)
    rois, det = out["rois"], out["detection_out"]
    assert rois.shape[0] > 100 and out["proposal_reshape"].shape == (1, 1, 4 * rois.shape[0])
    rows = detection_rows(det.numpy(), False)
    assert det.shape[:2] == (1, 1) and 0 < len(rows) <= 100 and set(rows[:, 1]) <= set(range(1, 21))
    # each detection is its ROI moved by that ROI's class deltas, sides counting both edges (py-faster-rcnn's
    # bbox_transform_inv): find the ROI by its score
    probs, deltas = out["cls_prob"].numpy(), out["bbox_pred"].numpy().reshape(-1, 21, 4)
    for _, label, score, *box in rows[:10]:
        r = int(np.flatnonzero(probs[:, int(label)] == score)[0])
        x1, y1, x2, y2 = rois[r, 1:].numpy().astype(np.float64)
        w, h = x2 - x1 + 1, y2 - y1 + 1
        dx, dy, dw, dh = deltas[r, int(label)]
        cx, cy, bw, bh = x1 + w / 2 + dx * w, y1 + h / 2 + dy * h, np.exp(dw) * w, np.exp(dh) * h
        np.testing.assert_allclose(box, [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], rtol=1e-5, atol=1e-3)

    module = generated_module(net)
    with torch.no_grad():
        generated = module(x, info)["detection_out"]
    torch.testing.assert_close(generated, det, rtol=0, atol=0)

    ort = pytest.importorskip("onnxruntime")
    from prototxt2py.backends.onnx_export import to_onnx_model

    session = ort.InferenceSession(to_onnx_model(net).SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_det,) = session.run(["detection_out"], {"data": x.numpy(), "im_info": info.numpy()})
    assert_same_detections(detection_rows(onnx_det, False), rows, "onnxruntime")


def test_priors_without_variances_need_variance_encoded_in_target() -> None:
    text = """
        input: "loc" input_shape { dim: 1 dim: 8 }
        input: "conf" input_shape { dim: 1 dim: 4 }
        input: "prior" input_shape { dim: 1 dim: 1 dim: 8 }
        layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"
          detection_output_param { num_classes: 2 code_type: CENTER_SIZE normalized_bbox: false } }
        """
    with pytest.raises(Prototxt2pyError, match=r"layer 'det'.*priors \(1, 1, 8\) have no variances"):
        prototxt2py.load(read_net_text(textwrap.dedent(text), "net.prototxt"))


def test_pixel_boxes_decode_by_hand() -> None:
    """One pixel prior [10, 20, 29, 59] (20 x 40 counting both edges, centre (20, 40)) and deltas (0.1, -0.05,
    ln 2, 0): centre (22, 38), size 40 x 40, so [2, 18, 42, 58]. Read as normalised (SSD) it would be 19 x 39
    around (19.5, 39.5)."""
    text = """
        input: "loc" input_shape { dim: 1 dim: 8 }
        input: "conf" input_shape { dim: 1 dim: 2 }
        input: "prior" input_shape { dim: 1 dim: 1 dim: 4 }
        layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"
          detection_output_param { num_classes: 2 share_location: false code_type: CENTER_SIZE
            variance_encoded_in_target: true normalized_bbox: false nms_param { nms_threshold: 0.3 } } }
        """
    net = prototxt2py.load(read_net_text(textwrap.dedent(text), "net.prototxt")).eval()
    loc = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.1, -0.05, float(np.log(2.0)), 0.0]])
    with torch.no_grad():
        det = net(loc, torch.tensor([[0.25, 0.75]]), torch.tensor([[[10.0, 20.0, 29.0, 59.0]]]))["det"]
    torch.testing.assert_close(det.reshape(-1), torch.tensor([0.0, 1.0, 0.75, 2.0, 18.0, 42.0, 58.0]))
