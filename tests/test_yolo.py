"""YOLOv3's Yolov3DetectionOutput (eric612/MobileNet-YOLO) against a loop-by-loop port of the fork's CPU forward
(:mod:`yolo_reference`): decoded boxes, scores, labels, the class-agnostic NMS and the no-detection rows; a small
YOLOv3-shaped net (nearest Upsample, two scales) end to end and as generated code; bad settings as one line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yolo_reference as ref
from golden import generated_module

import prototxt2py
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.reader import read_net_text

F32 = np.float32
RNG = np.random.default_rng(11)

PARAMS = dict(num_classes=3, num_box=2, confidence_threshold=0.3, nms_threshold=0.45,
              biases=[10.0, 14.0, 23.0, 27.0, 37.0, 58.0, 81.0, 82.0], anchors_scale=[32, 16], mask_group_num=2,
              mask=[2, 3, 0, 1])


def _param_text(p: dict) -> str:
    parts = []
    for key, value in p.items():
        values = value if isinstance(value, list) else [value]
        parts += [f"{key}: {v}" for v in values]
    return " ".join(parts)


def _layer_net(shapes: list[tuple[int, ...]], params: dict) -> prototxt2py.CaffeNet:
    inputs = "".join(f'input: "x{i}" input_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n'
                     for i, s in enumerate(shapes))
    bottoms = " ".join(f'bottom: "x{i}"' for i in range(len(shapes)))
    text = (inputs + f'layer {{ name: "det" type: "Yolov3DetectionOutput" {bottoms} top: "det" '
            f"yolov3_detection_output_param {{ {_param_text(params)} }} }}")
    return prototxt2py.load(read_net_text(text))


def _run(net, *xs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = net(*[torch.from_numpy(x) for x in xs])
    return next(iter(out.values())).numpy() if isinstance(out, dict) else out.numpy()


def _reference(xs: list[np.ndarray], p: dict) -> np.ndarray:
    return ref.yolov3_detection_output(xs, p["num_classes"], p["num_box"], p["confidence_threshold"],
                                       p["nms_threshold"], p["biases"], p["anchors_scale"], p["mask_group_num"],
                                       p["mask"])


@pytest.mark.parametrize(("threshold", "nms", "spread"), [(0.3, 0.45, 2.0), (0.05, 0.3, 3.0), (0.6, 0.7, 4.0),
                                                          (0.2, 0.0, 2.0), (0.2, 1.0, 2.0)])
def test_detections_match_the_forks_cpu_forward(threshold: float, nms: float, spread: float) -> None:
    p = dict(PARAMS, confidence_threshold=threshold, nms_threshold=nms)
    shapes = [(1, 2 * 8, 3, 4), (1, 2 * 8, 6, 8)]
    xs = [RNG.normal(0, spread, size=s).astype(F32) for s in shapes]
    want = _reference(xs, p)
    got = _run(_layer_net(shapes, p), *xs)
    assert got.shape == want.shape
    assert want.shape[2] == 1 if nms == 0 else want.shape[2] > 1  # IoU >= 0 always holds: one box is left
    np.testing.assert_array_equal(got[..., :2], want[..., :2])  # image ids and labels, in the fork's order
    np.testing.assert_allclose(got[..., 2:], want[..., 2:], rtol=1e-6, atol=1e-6)


def test_the_reference_port_passes_its_own_checks() -> None:
    """Hand-computed boxes, an NMS suppression and the no-detection rows: a wrong port cannot vouch for a wrong
    layer."""
    ref._self_check()


def test_thousands_of_candidates_match_the_fork() -> None:
    """Hundreds of kept boxes out of thousands of candidates."""
    p = dict(PARAMS, confidence_threshold=0.02, nms_threshold=0.5)
    shapes = [(1, 16, 12, 16), (1, 16, 24, 32)]
    xs = [RNG.normal(0, 2, size=s).astype(F32) for s in shapes]
    net = _layer_net(shapes, p)
    want = _reference(xs, p)
    got = _run(net, *xs)
    assert got.shape == want.shape and want.shape[2] > 300
    np.testing.assert_array_equal(got[..., :2], want[..., :2])
    np.testing.assert_allclose(got[..., 2:], want[..., 2:], rtol=1e-6, atol=1e-6)


def test_nothing_over_the_threshold_gives_one_row_of_minus_ones_per_image() -> None:
    p = dict(PARAMS, confidence_threshold=0.999)
    shapes = [(1, 16, 3, 4), (1, 16, 6, 8)]
    xs = [RNG.normal(size=s).astype(F32) for s in shapes]
    got = _run(_layer_net(shapes, p), *xs)
    np.testing.assert_array_equal(got, _reference(xs, p))
    np.testing.assert_array_equal(got, [[[[0, -1, -1, -1, -1, -1, -1]]]])


def test_one_scale_with_every_anchor() -> None:
    p = dict(PARAMS, num_box=3, mask_group_num=1, mask=[0, 1, 2], anchors_scale=[8], num_classes=2)
    shape = (1, 3 * 7, 5, 5)
    x = RNG.normal(0, 2, size=shape).astype(F32)
    want = _reference([x], p)
    got = _run(_layer_net([shape], p), x)
    np.testing.assert_array_equal(got[..., :2], want[..., :2])
    np.testing.assert_allclose(got[..., 2:], want[..., 2:], rtol=1e-6, atol=1e-6)


YOLO_NET = """\
name: "yolo-small"
input: "data" input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "msra" } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" relu_param { negative_slope: 0.1 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "msra" } } }
layer { name: "head1" type: "Convolution" bottom: "c2" top: "head1"
        convolution_param { num_output: 16 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "up" type: "Upsample" bottom: "c2" top: "up" upsample_param { scale: 2 } }
layer { name: "cat" type: "Concat" bottom: "up" bottom: "c1" top: "cat" }
layer { name: "head2" type: "Convolution" bottom: "cat" top: "head2"
        convolution_param { num_output: 16 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "detection_out" type: "Yolov3DetectionOutput" bottom: "head1" bottom: "head2" top: "detection_out"
        yolov3_detection_output_param { num_classes: 3 num_box: 2 confidence_threshold: 0.2 nms_threshold: 0.45
        biases: 10 biases: 14 biases: 23 biases: 27 biases: 37 biases: 58 biases: 81 biases: 82
        anchors_scale: 4 anchors_scale: 2 mask_group_num: 2 mask: 2 mask: 3 mask: 0 mask: 1 } }
"""


def test_a_yolov3_shaped_net_runs_and_its_generated_code_agrees() -> None:
    """Two heads (one after a nearest Upsample) into the detection output: the runtime's rows are the port's of the
    runtime's own head blobs, and the generated code's rows are the runtime's, bit for bit."""
    net = prototxt2py.load(read_net_text(YOLO_NET))
    gen = generated_module(net)
    x = torch.from_numpy(RNG.uniform(0, 1, size=(1, 3, 32, 32)).astype(F32))
    with torch.no_grad():
        blobs = net(x, all_blobs=True)
        again = gen(x)
    got = blobs["detection_out"]
    assert torch.equal(got, again["detection_out"] if isinstance(again, dict) else again)
    p = dict(PARAMS, confidence_threshold=0.2, anchors_scale=[4, 2])
    want = _reference([blobs["head1"].numpy(), blobs["head2"].numpy()], p)
    assert want.shape[2] > 1
    np.testing.assert_array_equal(got.numpy()[..., :2], want[..., :2])
    np.testing.assert_allclose(got.numpy()[..., 2:], want[..., 2:], rtol=1e-6, atol=1e-6)


REFUSED = [
    ([(2, 16, 3, 4), (2, 16, 6, 8)], {}, "holds 2 images: the fork decodes one image per pass"),
    ([(1, 16, 3, 4)], {}, "mask_group_num 2 needs as many bottoms, got 1"),
    ([(1, 15, 3, 4), (1, 16, 6, 8)], {}, r"bottom 0 \(1, 15, 3, 4\) must be \(1, num_box x \(5 \+ num_classes\) = 16"),
    ([(1, 16, 3, 4), (1, 16, 6, 8)], {"mask": [2, 3]}, r"bottom 1 reads mask\[2\], but mask has 2 values"),
    ([(1, 16, 3, 4), (1, 16, 6, 8)], {"mask": [2, 3, 0, 9]}, r"mask value 9 reads biases\[19\]"),
    ([(1, 16, 3, 4), (1, 16, 6, 8)], {"gaussian_box": "true"}, "gaussian_box .* is not built in"),
    ([(1, 16, 3, 4), (1, 16, 6, 8)], {"anchors_scale": [32]}, "anchors_scale has 1 values for 2 bottoms"),
]


@pytest.mark.parametrize(("shapes", "changes", "message"), REFUSED)
def test_bad_settings_are_one_line_naming_the_layer(shapes, changes: dict, message: str) -> None:
    with pytest.raises(Prototxt2pyError) as e:
        _layer_net(shapes, dict(PARAMS, **changes))
    text = str(e.value)
    assert "\n" not in text and "layer 'det'" in text
    assert re.search(message, text), text


def test_num_classes_is_required() -> None:
    p = {k: v for k, v in PARAMS.items() if k != "num_classes"}
    with pytest.raises(Prototxt2pyError, match="num_classes is required"):
        _layer_net([(1, 16, 3, 4), (1, 16, 6, 8)], p)


# -- ONNX ------------------------------------------------------------------------------------------------------------
def _onnx_rows(net, tmp_path, *xs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from prototxt2py.backends.onnx_export import export_onnx

    path = tmp_path / "yolo.onnx"
    export_onnx(net, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = dict(zip([i.name for i in session.get_inputs()], xs, strict=True))
    return session.run(None, feed)[0]


@pytest.mark.parametrize(("threshold", "nms"), [(0.3, 0.45), (0.05, 0.3), (0.6, 0.7), (0.999, 0.45)])
def test_onnxruntime_keeps_the_same_rows(tmp_path, threshold: float, nms: float) -> None:
    p = dict(PARAMS, confidence_threshold=threshold, nms_threshold=nms)
    shapes = [(1, 16, 3, 4), (1, 16, 6, 8)]
    xs = [RNG.normal(0, 3, size=s).astype(F32) for s in shapes]
    net = _layer_net(shapes, p)
    want = _run(net, *xs)
    got = _onnx_rows(net, tmp_path, *xs)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got[..., :2], want[..., :2])
    np.testing.assert_allclose(got[..., 2:], want[..., 2:], rtol=1e-5, atol=1e-6)


def test_a_yolov3_shaped_net_runs_whole_in_onnxruntime(tmp_path) -> None:
    net = prototxt2py.load(read_net_text(YOLO_NET))
    x = RNG.uniform(0, 1, size=(1, 3, 32, 32)).astype(F32)
    want = _run(net, x)
    got = _onnx_rows(net, tmp_path, x)
    assert got.shape == want.shape and want.shape[2] > 1
    np.testing.assert_array_equal(got[..., :2], want[..., :2])
    np.testing.assert_allclose(got[..., 2:], want[..., 2:], rtol=1e-5, atol=1e-5)


def test_a_zero_nms_threshold_has_no_onnx_form() -> None:
    from prototxt2py.backends.onnx_export import to_onnx_model
    from prototxt2py.errors import UnsupportedLayerError

    net = _layer_net([(1, 16, 3, 4), (1, 16, 6, 8)], dict(PARAMS, nms_threshold=0))
    with pytest.raises(UnsupportedLayerError, match="nms_threshold <= 0 suppresses boxes that do not overlap"):
        to_onnx_model(net)


# -- YOLOv2 ------------------------------------------------------------------------------------------------------------
def _sigmoid(x) -> np.float32:
    return np.float32(1.0 / (1.0 + float(np.exp(np.float32(-x)))))


def _v2_reference(xs: list[np.ndarray], num_classes: int, num_box: int, threshold: float, nms: float,
                  biases: list[float]) -> np.ndarray:
    """YoloDetectionOutputLayer::Forward_cpu (yolo_detection_output_layer.cpp), cell by cell: side = width, anchors
    of ``channels / num_box`` channels, the first-max softmax class, score = sigmoid(obj) x its probability kept at
    ``>=`` the threshold; then the YOLOv3 port's sort, NMS and rows (the same ApplyNms and output code)."""
    cands = []
    for x in xs:
        side, length = x.shape[3], x.shape[1] // num_box
        for j in range(side):
            for i in range(side):
                for n in range(num_box):
                    v = x[0, n * length:(n + 1) * length, j, i]
                    bx = np.float32(np.float32(i + _sigmoid(v[0])) / np.float32(side))
                    by = np.float32(np.float32(j + _sigmoid(v[1])) / np.float32(side))
                    bw = np.float32(np.float32(np.exp(v[2]) * np.float32(biases[2 * n])) / np.float32(side))
                    bh = np.float32(np.float32(np.exp(v[3]) * np.float32(biases[2 * n + 1])) / np.float32(side))
                    logits = v[5:5 + num_classes]
                    e = [np.float32(np.exp(np.float32(c - logits.max()))) for c in logits]
                    total = np.float32(0)
                    for value in e:
                        total = np.float32(total + value)
                    probs = [np.float32(value / total) for value in e]
                    best = 0
                    for c in range(num_classes):
                        if probs[c] > probs[best]:
                            best = c
                    score = np.float32(_sigmoid(v[4]) * probs[best])
                    if score >= np.float32(threshold):
                        cands.append((score, best, (bx, by, bw, bh)))
    cands.sort(key=lambda c: -c[0])  # stable: ties in the order found
    boxes = np.array([c[2] for c in cands], F32).reshape(-1, 4)
    kept, alive = [], list(range(len(cands)))
    while alive:
        k, alive = alive[0], alive[1:]
        kept.append(k)
        a, rest = boxes[k], boxes[alive]
        left = np.maximum(a[0] - a[2] / 2, rest[:, 0] - rest[:, 2] / 2)
        right = np.minimum(a[0] + a[2] / 2, rest[:, 0] + rest[:, 2] / 2)
        top = np.maximum(a[1] - a[3] / 2, rest[:, 1] - rest[:, 3] / 2)
        bottom = np.minimum(a[1] + a[3] / 2, rest[:, 1] + rest[:, 3] / 2)
        w, h = right - left, bottom - top
        inter = np.where((w < 0) | (h < 0), F32(0), w * h)
        iou = inter / (a[2] * a[3] + rest[:, 2] * rest[:, 3] - inter)
        alive = [m for m, over in zip(alive, iou >= np.float32(nms), strict=True) if not over]
    if not kept:
        return np.array([[[[0, -1, -1, -1, -1, -1, -1]]]], F32)
    rows = []
    for k in kept:
        score, label, (x, y, w, h) = cands[k]
        rows.append([0, label + 1, score, x - w / 2.0, y - h / 2.0, x + w / 2.0, y + h / 2.0])
    return np.array(rows, F32).reshape(1, 1, -1, 7)


V2_BIASES = [1.08, 1.19, 3.42, 4.41, 6.63, 11.38]


def _v2_net(shapes, threshold: float, nms: float, extra: str = "") -> prototxt2py.CaffeNet:
    inputs = "".join(f'input: "x{i}" input_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n'
                     for i, s in enumerate(shapes))
    bottoms = " ".join(f'bottom: "x{i}"' for i in range(len(shapes)))
    biases = " ".join(f"biases: {b}" for b in V2_BIASES)
    return prototxt2py.load(read_net_text(
        inputs + f'layer {{ name: "det" type: "YoloDetectionOutput" {bottoms} top: "det" yolo_detection_output_param '
        f"{{ num_classes: 4 num_box: 3 confidence_threshold: {threshold} nms_threshold: {nms} {biases} {extra} }} }}"))


@pytest.mark.parametrize(("shapes", "threshold", "nms"), [([(1, 27, 5, 5)], 0.2, 0.45), ([(1, 27, 4, 4)], 0.05, 0.3),
                                                         ([(1, 27, 3, 3), (1, 27, 6, 6)], 0.1, 0.5),
                                                         ([(1, 27, 5, 5)], 0.99, 0.45)])
def test_yolov2_detections_match_the_forks_cpu_forward(tmp_path, shapes, threshold: float, nms: float) -> None:
    xs = [RNG.normal(0, 2, size=s).astype(F32) for s in shapes]
    want = _v2_reference(xs, 4, 3, threshold, nms, V2_BIASES)
    net = _v2_net(shapes, threshold, nms)
    for got, tol in ((_run(net, *xs), 1e-6), (_onnx_rows(net, tmp_path, *xs), 1e-5)):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got[..., :2], want[..., :2])
        np.testing.assert_allclose(got[..., 2:], want[..., 2:], rtol=tol, atol=tol)
    gen = generated_module(net)
    with torch.no_grad():
        again = gen(*[torch.from_numpy(x) for x in xs])
    again = again["det"] if isinstance(again, dict) else again
    np.testing.assert_array_equal(again.numpy(), _run(net, *xs))


@pytest.mark.parametrize(("shapes", "extra", "message"), [
    ([(1, 27, 4, 5)], "", "bottom 0 is 4x5: the fork takes its width as the side of a square grid"),
    ([(2, 27, 4, 4)], "", "holds 2 images"),
    ([(1, 26, 4, 4)], "", r"must be \(1, num_box x \(5 \+ num_classes\) = 27, S, S\)"),
    ([(1, 27, 4, 4)], "coords: 5", "coords 5 is not supported"),
])
def test_yolov2_bad_settings_are_one_line(shapes, extra: str, message: str) -> None:
    with pytest.raises(Prototxt2pyError) as e:
        _v2_net(shapes, 0.2, 0.45, extra)
    assert "\n" not in str(e.value) and "layer 'det'" in str(e.value)
    assert re.search(message, str(e.value)), str(e.value)


def test_yolov2_keeps_a_score_equal_to_the_threshold() -> None:
    """The v2 layer keeps ``score >= threshold`` (v3's keeps ``>``): objectness 1 (a logit of 20) and four equal
    class logits give every candidate exactly 0.25."""
    x = np.zeros((1, 27, 3, 3), F32)
    x[0, [4, 13, 22]] = 20.0
    want = _v2_reference([x], 4, 3, 0.25, 0.45, V2_BIASES)
    got = _run(_v2_net([x.shape], 0.25, 0.45), x)
    assert want.shape[2] > 1 and np.all(want[0, 0, :, 2] == F32(0.25))
    np.testing.assert_array_equal(got[..., :3], want[..., :3])
    np.testing.assert_allclose(got[..., 3:], want[..., 3:], rtol=1e-6, atol=1e-6)
