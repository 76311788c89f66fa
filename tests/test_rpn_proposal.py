"""py-faster-rcnn's RPN ``ProposalLayer`` (``rpn.proposal_layer.ProposalLayer``), built in: anchors against the
figures ``generate_anchors`` prints, hand-worked proposals (clip, size filter, NMS, top N), phase settings, the
Faster R-CNN test nets of the corpus end to end (runtime and generated code), and its errors."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from golden import CORPUS, DEVICE, generated_module
from hypothesis import given, settings
from hypothesis import strategies as st

import prototxt2py
from prototxt2py.backends.codegen import generate
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.layers import param_str_mapping
from prototxt2py.layers.forks.rcnn import rpn_anchors
from prototxt2py.layers.forks.rcnn_nn import ProposalLayer
from prototxt2py.reader import read_net_text

#: py-faster-rcnn's ``generate_anchors()`` for its defaults (base 16, ratios 0.5/1/2, scales 8/16/32), as the
#: module prints it when run
PY_FASTER_RCNN_ANCHORS = [
    [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
]

ZF_TEST = CORPUS / "rbgirshick__py-faster-rcnn/models/pascal_voc/ZF/faster_rcnn_end2end/test.prototxt"
RPN_TEST = CORPUS / "rbgirshick__py-faster-rcnn/models/pascal_voc/ZF/faster_rcnn_alt_opt/rpn_test.pt"


def test_anchors_are_generate_anchors_figures() -> None:
    assert rpn_anchors((8, 16, 32), (0.5, 1, 2)) == tuple(map(tuple, PY_FASTER_RCNN_ANCHORS))
    # one ratio, one scale: the base square itself; ratio 0.5 rounds 22.6 up to 23 and 11.5 to even (12)
    assert rpn_anchors((1,), (1,)) == ((0, 0, 15, 15),)
    assert rpn_anchors((1,), (0.5,)) == ((-3.5, 2, 18.5, 13),)


def _three_boxes(s: list[float], scale: float = 1.0, **kw):
    """One anchor (the square [0, 0, 15, 15]) at three positions of a 1x3 map, image 16 x 48. Zero deltas
    decode a box one pixel larger (``bbox_transform_inv`` takes the centre as x1 + w/2), clipped to y2 = 15:
    box 0 is [0, 0, 16, 15]; box 1 moves to [1, 0, 17, 15] (overlap 256 / 288 = 0.89 with box 0); box 2 shrinks
    to [36, 0, 44, 15] (9 wide)."""
    m = ProposalLayer(16, rpn_anchors((1,), (1,)), scores=True, **kw)
    scores = torch.tensor([[0, 0, 0], s], dtype=torch.float32).reshape(1, 2, 1, 3)
    deltas = torch.zeros(1, 4, 1, 3)
    deltas[0, 0, 0, 1] = -0.9375  # centre 24 -> 9
    deltas[0, 2, 0, 2] = float(np.log(np.float32(0.5)))  # width 16 -> 8
    rois, kept = m(scores, deltas, torch.tensor([[16.0, 48.0, scale]]))
    return rois.tolist(), kept.flatten().tolist()


def test_hand_worked_proposals() -> None:
    # box 2 is under 16 wide (9 px) and dropped; box 1 overlaps box 0 by 0.89 > 0.7 and goes
    assert _three_boxes([0.9, 0.8, 0.95]) == ([[0, 0, 0, 16, 15]], [pytest.approx(0.9)])
    assert _three_boxes([0.8, 0.9, 0.95]) == ([[0, 1, 0, 17, 15]], [pytest.approx(0.9)])
    # at image scale 0.5 the least side is 8: box 2 stays and leads
    assert _three_boxes([0.9, 0.8, 0.95], scale=0.5)[0] == [[0, 36, 0, 44, 15], [0, 0, 0, 16, 15]]
    # a looser threshold keeps box 1; post_nms_top_n cuts the list, pre_nms_top_n cuts before the NMS
    assert _three_boxes([0.9, 0.8, 0.95], nms_thresh=0.9)[0] == [[0, 0, 0, 16, 15], [0, 1, 0, 17, 15]]
    assert _three_boxes([0.9, 0.8, 0.95], nms_thresh=0.9, post_nms_top_n=1)[0] == [[0, 0, 0, 16, 15]]
    assert _three_boxes([0.8, 0.9, 0.95], nms_thresh=0.9, pre_nms_top_n=1)[0] == [[0, 1, 0, 17, 15]]
    # equal scores: reversed argsort then the NMS's own reversed argsort put the earlier position first
    assert _three_boxes([0.5, 0.5, 0.95])[0] == [[0, 0, 0, 16, 15]]
    # ... but the cut to pre_nms_top_n, after the first sort alone, keeps the later one
    assert _three_boxes([0.5, 0.5, 0.95], pre_nms_top_n=1)[0] == [[0, 1, 0, 17, 15]]


def test_boxes_clip_to_the_image_and_deltas_use_float32() -> None:
    m = ProposalLayer(16, rpn_anchors((4,), (1,)), min_size=1)
    deltas = torch.tensor([0.1, -0.2, 0.3, 0.301]).reshape(1, 4, 1, 1)  # float32 exp(0.301) is an ulp off expf
    rois = m(torch.ones(1, 2, 1, 1), deltas, torch.tensor([[50.0, 40.0, 1.0]]))
    # anchor [-24, -24, 39, 39] (64 wide, centre 8): x centre 8 + 0.1 * 64, height 64 * e^0.301
    def expf(v: float) -> np.float32:  # C's expf: the float64 exponential of the float32 delta, rounded once
        return np.float32(np.exp(np.float64(np.float32(v))))

    w, h = expf(0.3) * np.float32(64), expf(0.301) * np.float32(64)
    cx, cy = np.float32(0.1) * np.float32(64) + np.float32(8), np.float32(-0.2) * np.float32(64) + np.float32(8)
    x1, x2 = cx - np.float32(0.5) * w, cx + np.float32(0.5) * w
    y1, y2 = cy - np.float32(0.5) * h, cy + np.float32(0.5) * h
    assert x1 < 0 and x2 > 39 and y1 < 0 and y2 < 49
    assert rois.tolist() == [[0, 0, 0, 39, float(y2)]]  # x1, y1 clipped to 0, x2 to the image's 39


NET = """
input: "s" input_shape { dim: 1 dim: 18 dim: 4 dim: 5 }
input: "d" input_shape { dim: 1 dim: 36 dim: 4 dim: 5 }
input: "info" input_shape { dim: 1 dim: 3 }
layer { name: "proposal" type: "Python" bottom: "s" bottom: "d" bottom: "info" top: "rois" %s
  python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "%s" } }
"""


def _net(tops: str = "", param_str: str = "'feat_stride': 16", phase: str = "TEST") -> prototxt2py.CaffeNet:
    return prototxt2py.load(read_net_text(textwrap.dedent(NET % (tops, param_str)), "net.prototxt"), phase=phase)


def test_phase_settings_and_param_str_forms() -> None:
    test = _net().layer("proposal")
    assert (test.pre_nms_top_n, test.post_nms_top_n, test.nms_thresh, test.min_size) == (6000, 300, 0.7, 16)
    train = _net(phase="TRAIN").layer("proposal")
    assert (train.pre_nms_top_n, train.post_nms_top_n) == (12000, 2000)
    flow = _net(param_str="{'feat_stride': 8, 'scales': [4, 8, 16]}").layer("proposal")
    assert flow.feat_stride == 8 and flow.anchors == rpn_anchors((4, 8, 16), (0.5, 1, 2))
    block = _net(param_str="'feat_stride': 16\\n'scales': (4, 8, 16)").layer("proposal")
    assert block.anchors == flow.anchors
    assert _net("top: \"scores\"").graph.blob_shapes()["scores"] == (1, 1)  # a pass's shapes with one ROI
    assert _net().graph.blob_shapes()["rois"] == (1, 5)


@pytest.mark.parametrize("param_str, message", [
    ("'scales': [8]", "python_param.param_str needs 'feat_stride'"),
    ("'feat_stride': -16", "feat_stride must be a positive number, got -16"),
    ("'feat_stride': 16, 'scales': []", "scales must be a list of 1 to 64 numbers"),
    ("__import__('os')", "is not a YAML mapping of literals"),
    ("'feat_stride': 16, 'scales': [8, 16]", r"6 anchors need scores \(1, 12, H, W\) and deltas \(1, 24, H, W\), "
                                             r"got \(1, 18, 4, 5\) and \(1, 36, 4, 5\)"),
])
def test_errors_name_the_layer(param_str: str, message: str) -> None:
    with pytest.raises(Prototxt2pyError, match=message) as e:
        _net(param_str=param_str)
    assert "proposal" in str(e.value)


def test_one_image_only() -> None:
    with pytest.raises(Prototxt2pyError, match="proposal layer takes one image .* got a batch of 2"):
        prototxt2py.load(read_net_text(textwrap.dedent(NET.replace("dim: 1 dim: 18", "dim: 2 dim: 18") % (
            "", "'feat_stride': 16")), "net.prototxt"))
    with pytest.raises(ValueError, match="got a batch of 2"):
        layer = ProposalLayer(16, rpn_anchors((8, 16, 32), (0.5, 1, 2)))
        layer(torch.zeros(2, 18, 2, 2), torch.zeros(2, 36, 2, 2), torch.ones(2, 3))


def _random_weights(net: prototxt2py.CaffeNet) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.01)


@pytest.mark.skipif(not ZF_TEST.is_file(), reason="needs the shared corpus")
def test_faster_rcnn_test_net_runs_and_generates_the_same_code() -> None:
    net = prototxt2py.load(str(ZF_TEST)).eval()
    _random_weights(net)
    x = torch.randn(1, 3, 224, 320, generator=torch.Generator().manual_seed(1))
    info = torch.tensor([[224.0, 320.0, 1.0]])
    with torch.no_grad():
        out = net(x, info, all_blobs=True)
    rois = out["rois"]
    assert rois.shape[1] == 5 and 0 < rois.shape[0] <= 300
    assert out["cls_prob"].shape == (rois.shape[0], 21) and out["bbox_pred"].shape == (rois.shape[0], 84)
    assert bool((rois[:, 0] == 0).all()) and bool((rois[:, 3] <= 319).all()) and bool((rois[:, 4] <= 223).all())
    code = generate(net.graph)
    assert "ProposalLayer(" in code.source and "(-84.0, -40.0, 99.0, 55.0)" in code.source
    module = generated_module(net)
    with torch.no_grad():
        got = module(x, info)
    torch.testing.assert_close(got["cls_prob"], out["cls_prob"], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not RPN_TEST.is_file(), reason="needs the shared corpus")
def test_rpn_test_net_gives_rois_and_scores() -> None:
    net = prototxt2py.load(str(RPN_TEST)).eval()
    _random_weights(net)
    with torch.no_grad():
        out = net(torch.randn(1, 3, 160, 192), torch.tensor([[160.0, 192.0, 1.0]]))
    assert out["rois"].shape[0] == out["scores"].shape[0] and out["scores"].shape[1] == 1
    assert bool((out["scores"][:-1, 0] >= out["scores"][1:, 0]).all())  # kept in descending score order


def _session(net: prototxt2py.CaffeNet):
    ort = pytest.importorskip("onnxruntime")
    from prototxt2py.backends.onnx_export import to_onnx_model

    model = to_onnx_model(net)
    return model, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("case", range(6))
def test_onnx_graph_gives_the_modules_rois_bit_for_bit(case: int) -> None:
    """Random maps (every other one with tied scores), both phases' settings, extra scales: onnxruntime's
    ROIs and scores equal the module's exactly (a one-off run of 200 such cases found no difference)."""
    rng = np.random.default_rng(case)
    h, w = (int(v) for v in rng.integers(1, 40, 2))
    scales = (8, 16, 32) if case % 3 else (2, 4, 8, 16, 32)
    a = 3 * len(scales)
    text = NET.replace("dim: 18 dim: 4 dim: 5", f"dim: {2 * a} dim: {h} dim: {w}").replace(
        "dim: 36 dim: 4 dim: 5", f"dim: {4 * a} dim: {h} dim: {w}")
    param_str = "{'feat_stride': 16, 'scales': [" + ", ".join(map(str, scales)) + "]}"
    net = prototxt2py.load(read_net_text(textwrap.dedent(text % ('top: "scores"', param_str)), "net.prototxt"),
                           phase="TRAIN" if case % 2 else "TEST").eval()
    s = rng.random((1, 2 * a, h, w), dtype=np.float32)
    if case % 2 == 0:
        s = np.round(s * 8) / 8  # many equal scores
    d = (rng.standard_normal((1, 4 * a, h, w)) * [0.1, 0.5, 2][case % 3]).astype(np.float32)
    info = np.array([[h * 16 * 0.9, w * 16 * 1.1, [1.0, 1.6, 0.6][case % 3]]], dtype=np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(s), torch.from_numpy(d), torch.from_numpy(info))
    _, session = _session(net)
    rois, scores = session.run(None, {"s": s, "d": d, "info": info})
    assert rois.shape[0] > 0
    np.testing.assert_array_equal(rois, want["rois"].numpy())
    np.testing.assert_array_equal(scores, want["scores"].numpy())


@pytest.mark.skipif(not ZF_TEST.is_file(), reason="needs the shared corpus")
def test_faster_rcnn_test_net_whole_in_onnxruntime() -> None:
    net = prototxt2py.load(str(ZF_TEST), input_shapes={"data": (1, 3, 224, 320)}).eval()
    _random_weights(net)
    model, session = _session(net)
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert dims == {"bbox_pred": ["proposal_rois", 84], "cls_prob": ["proposal_rois", 21]}
    x = torch.randn(1, 3, 224, 320, generator=torch.Generator().manual_seed(2))
    info = torch.tensor([[224.0, 320.0, 1.6]])
    with torch.no_grad():
        want = net(x, info)
    outputs = session.run(None, {"data": x.numpy(), "im_info": info.numpy()})
    got = dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))
    assert got["cls_prob"].shape == tuple(want["cls_prob"].shape)
    np.testing.assert_allclose(got["cls_prob"], want["cls_prob"].numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["bbox_pred"], want["bbox_pred"].numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not ZF_TEST.is_file(), reason="needs the shared corpus")
def test_pycaffe_im_detect_flow() -> None:
    """What py-faster-rcnn's ``im_detect`` does through pycaffe: reshape the input blobs, forward with keyword
    inputs, read the proposals from ``net.blobs['rois']`` beside the outputs."""
    from prototxt2py import caffe

    net = caffe.Net(str(ZF_TEST), caffe.TEST)
    data = np.random.default_rng(0).standard_normal((1, 3, 160, 240)).astype(np.float32)
    info = np.array([[160, 240, 1.0]], np.float32)
    net.blobs["data"].reshape(*data.shape)
    net.blobs["im_info"].reshape(*info.shape)
    out = net.forward(data=data, im_info=info)
    rois = net.blobs["rois"].data.copy()
    assert rois.shape[0] > 0 and rois.shape[1] == 5
    assert out["cls_prob"].shape == (rois.shape[0], 21) and out["bbox_pred"].shape == (rois.shape[0], 84)
    np.testing.assert_allclose(out["cls_prob"].sum(axis=1), 1, rtol=1e-5)


PARAM_STR_LIKE = r"\{?('[a-z_]{1,12}': [\[\(]?[-0-9., e]{0,20}[\]\)]?,? ?){0,4}\}?"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.from_regex(PARAM_STR_LIKE)))
def test_param_str_reader_returns_a_mapping_or_one_error(text: str) -> None:
    """Whatever a model file puts in ``param_str``: a mapping, or ValueError (the loader's one line)."""
    try:
        assert isinstance(param_str_mapping(text), dict)
    except ValueError as e:
        assert "python_param.param_str" in str(e)


NUMBERS = st.one_of(st.floats(allow_nan=False), st.integers(-10, 10**6), st.just(5e-324), st.just(1e308))


@settings(max_examples=200, deadline=None)
@given(NUMBERS, st.lists(NUMBERS, max_size=3), st.lists(NUMBERS, max_size=3))
def test_hostile_settings_build_or_fail_with_one_line(stride: float, scales: list, ratios: list) -> None:
    """Extreme strides, scales and ratios in ``param_str``: the net builds (anchors may be huge) or the loader
    names the layer; nothing else escapes."""
    text = f"{{'feat_stride': {stride!r}, 'scales': {scales!r}, 'ratios': {ratios!r}}}"
    try:
        graph = prototxt2py.graph(read_net_text(textwrap.dedent(NET % ("", text.replace("'", "\\'"))),
                                                "net.prototxt"))
    except Prototxt2pyError as e:
        assert "proposal" in str(e)
        return
    assert len(graph.node("proposal").attrs.anchors) == len(scales) * len(ratios) == 9


@pytest.mark.skipif(not ZF_TEST.is_file(), reason="needs the shared corpus")
def test_faster_rcnn_onnx_with_symbolic_sizes_runs_any_image_size() -> None:
    """``--dynamic``: the anchors follow the score map's run-time size, so one export serves the image sizes
    py-faster-rcnn feeds (shorter side scaled to 600, any aspect ratio)."""
    ort = pytest.importorskip("onnxruntime")
    from prototxt2py.backends.onnx_export import to_onnx_model

    net = prototxt2py.load(str(ZF_TEST), input_shapes={"data": (1, 3, 224, 320)}).eval()
    _random_weights(net)
    session = ort.InferenceSession(to_onnx_model(net, dynamic=True).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for height, width in ((160, 256), (288, 192)):
        x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height))
        info = torch.tensor([[float(height), float(width), 1.0]])
        with torch.no_grad():
            want = net(x, info, all_blobs=True)
        outputs = session.run(None, {"data": x.numpy(), "im_info": info.numpy()})
        got = dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))
        assert got["cls_prob"].shape == (want["rois"].shape[0], 21)
        np.testing.assert_allclose(got["cls_prob"], want["cls_prob"].numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(DEVICE.type == "cpu", reason="needs PROTOTXT2PY_TEST_DEVICE naming another device (a GPU)")
def test_proposals_on_the_test_device_equal_the_cpus() -> None:
    """The module on a GPU (``scripts/gpu_checks.sh``): the same ROIs as on the CPU, bit for bit (every step is
    an exactly rounded float operation; the exponential in double)."""
    rng = np.random.default_rng(3)
    s = torch.from_numpy(np.round(rng.random((1, 18, 24, 31), dtype=np.float32) * 16) / 16)
    d = torch.from_numpy((rng.standard_normal((1, 36, 24, 31)) * 0.3).astype(np.float32))
    info = torch.tensor([[384.0, 496.0, 1.6]])
    layer = ProposalLayer(16, rpn_anchors((8, 16, 32), (0.5, 1, 2)), scores=True)
    want = layer(s, d, info)
    got = layer(s.to(DEVICE), d.to(DEVICE), info.to(DEVICE))
    assert got[0].device.type == DEVICE.type
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1].cpu(), want[1], rtol=0, atol=0)


def test_layers_listing_names_the_built_in_python_layer() -> None:
    from prototxt2py.layer_table import layer_rows

    rows = {name: (family, support) for name, family, support, _ in layer_rows()}
    assert rows["Python: rpn.proposal_layer.ProposalLayer"] == ("forks", {"shape": True, "torch": True, "onnx": True})
