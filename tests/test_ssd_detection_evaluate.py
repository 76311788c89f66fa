"""SSD's DetectionEvaluate (weiliu89/caffe ``ssd``, detection_evaluate_layer.cpp and bbox_util.cpp's
GetDetectionResults/GetGroundTruth/JaccardOverlap), on a case whose every row follows from the C++ by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import SHARED

import prototxt2py
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.reader import read_net_text


def _net(params: str, det_rows: int = 9, gt_rows: int = 5) -> prototxt2py.CaffeNet:
    text = f"""
layer {{ name: "in" type: "Input" top: "det" top: "gt"
  input_param {{ shape {{ dim: 1 dim: 1 dim: {det_rows} dim: 7 }} shape {{ dim: 1 dim: 1 dim: {gt_rows} dim: 8 }} }} }}
layer {{ name: "eval" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "eval"
  detection_evaluate_param {{ num_classes: 3 {params} }} }}
"""
    return prototxt2py.load(read_net_text(text))


GT = [  # image, label, instance, xmin, ymin, xmax, ymax, difficult
    [0, 1, 0, 0.1, 0.1, 0.5, 0.5, 0],
    [0, 1, 1, 0.6, 0.6, 0.9, 0.9, 1],  # difficult
    [1, 2, 0, 0.0, 0.0, 0.4, 0.4, 0],
    [-1, 0, 0, 0, 0, 0, 0, 0],  # GetGroundTruth stops here (break) ...
    [1, 2, 1, 0.5, 0.5, 0.9, 0.9, 0],  # ... so this box, which d4 would match, is not ground truth
]
DET = [  # image, label, score, xmin, ymin, xmax, ymax
    [0, 1, 0.6, 0.1, 0.1, 0.5, 0.5],  # d0: g0 exactly, but after d1 took it: a false positive
    [0, 1, 0.9, 0.12, 0.1, 0.5, 0.5],  # d1: g0 at 0.95, the highest score: the true positive
    [0, 1, 0.7, 0.6, 0.6, 0.9, 0.9],  # d2: the difficult g1
    [0, 2, 0.8, 0.1, 0.1, 0.2, 0.2],  # d3: image 0 has no ground truth of label 2
    [1, 2, 0.3, 0.5, 0.5, 0.9, 0.9],  # d4: disjoint from g2
    [2, 1, 0.5, 0.1, 0.1, 0.2, 0.2],  # d5: image 2 has no ground truth
    [-1, 1, 0.4, 0, 0, 1, 1],  # skipped (image -1), yet counted in the top's size: a row of zeros
    [3, -1, -1, -1, -1, -1, -1],  # DetectionOutput's "nothing found" row: skipped, not counted
    [0, 2, 0.2, 0.1, 0.1, 0.2, 0.2],  # d8: a second false positive of image 0, label 2 (kept in input order)
]


def _run(net: prototxt2py.CaffeNet) -> np.ndarray:
    det = torch.tensor(DET, dtype=torch.float32).view(1, 1, -1, 7)
    gt = torch.tensor(GT, dtype=torch.float32).view(1, 1, -1, 8)
    return net(det=det, gt=gt)["eval"].numpy()


def _rows(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(1, 1, -1, 5)


@pytest.mark.parametrize(("difficult", "pos1", "d2"), [("false", 1, [0, 0]), ("true", 2, [1, 0])])
def test_rows_follow_caffe(difficult: str, pos1: int, d2: list[int]) -> None:
    got = _run(_net(f"background_label_id: 0 overlap_threshold: 0.5 evaluate_difficult_gt: {difficult}"))
    want = _rows([
        [-1, 1, pos1, -1, -1],  # ground-truth boxes of label 1 (the difficult one counted only when evaluated)
        [-1, 2, 1, -1, -1],  # label 2: g2 only (the box after the -1 row is never read)
        [0, 1, 0.9, 1, 0],  # image 0, label 1 by descending score: d1 takes g0
        [0, 1, 0.7, *d2],  # d2 on the difficult box: neither, or a true positive when difficult boxes count
        [0, 1, 0.6, 0, 1],  # d0: g0 already matched
        [0, 2, 0.8, 0, 1],  # no ground truth of the label in the image: input order
        [0, 2, 0.2, 0, 1],
        [1, 2, 0.3, 0, 1],  # overlap 0 with g2
        [2, 1, 0.5, 0, 1],  # no ground truth in the image
        [0, 0, 0, 0, 0],  # the image -1 detection's row
    ])
    np.testing.assert_array_equal(got, want)


def test_overlap_threshold_is_inclusive_and_defaults_hold() -> None:
    """``overlap_max >= overlap_threshold``: d1's overlap with g0 is 0.95 in float32, a true positive at exactly
    that threshold and a false positive just above it; the defaults (background 0, 0.5, difficult boxes
    evaluated) give the ``evaluate_difficult_gt: true`` rows."""
    x1, y1, x2, y2 = (np.float32(v) for v in (0.12, 0.1, 0.5, 0.5))
    inter = (x2 - x1) * (y2 - y1)
    size = (np.float32(0.5) - np.float32(0.1)) * (np.float32(0.5) - np.float32(0.1))
    iou = inter / (inter + size - inter)
    at = _run(_net(f"overlap_threshold: {float(iou)!r}"))
    above = _run(_net(f"overlap_threshold: {float(np.nextafter(iou, np.float32(1)))!r}"))
    assert at[0, 0, 2].tolist() == pytest.approx([0, 1, 0.9, 1, 0])
    assert above[0, 0, 2].tolist() == pytest.approx([0, 1, 0.9, 0, 1])
    np.testing.assert_array_equal(_run(_net("")), _run(_net("evaluate_difficult_gt: true")))


def test_threshold_is_compared_in_float32() -> None:
    """``float overlap_threshold_``: 0.7 is 0.69999999 in float32, and an overlap of exactly that (0.7 of the
    unit box) reaches it; in double it would fall short (a finding of a differential check)."""
    assert _one(_net("overlap_threshold: 0.7", 1, 1), [0.0, 0.0, 0.7, 1.0], [0.0, 0.0, 1.0, 1.0]) == [1, 0]


def test_background_label_in_the_inputs_is_one_error() -> None:
    """The C++ CHECKs the detections first (GetDetectionResults), then the ground truth."""
    with pytest.raises(Prototxt2pyError, match=r"layer 'eval'.*background label in the detection results"):
        _run(_net("background_label_id: 2"))  # d3, d4, d8 and g2 have label 2
    det = torch.tensor([[0, 1, 0.5, 0, 0, 1, 1]], dtype=torch.float32).view(1, 1, 1, 7)
    gt = torch.tensor([[0, 2, 0, 0, 0, 1, 1, 0]], dtype=torch.float32).view(1, 1, 1, 8)
    with pytest.raises(Prototxt2pyError, match=r"layer 'eval'.*background label in the dataset"):
        _net("background_label_id: 2", 1, 1)(det=det, gt=gt)


def _one(net: prototxt2py.CaffeNet, det_box: list[float], gt_box: list[float]) -> list[float]:
    """The (true_pos, false_pos) of one detection of label 1 against one ground-truth box, image 0."""
    det = torch.tensor([[0, 1, 0.9, *det_box]], dtype=torch.float32).view(1, 1, 1, 7)
    gt = torch.tensor([[0, 1, 0, *gt_box, 0]], dtype=torch.float32).view(1, 1, 1, 8)
    return net(det=det, gt=gt)["eval"][0, 0, -1, 3:].tolist()


def _sized(tmp_path: Path, params: str, sizes: str = "img0 100 200\nimg1 50 50\n") -> prototxt2py.CaffeNet:
    (tmp_path / "name_size.txt").write_text(sizes)
    return _net(f'name_size_file: "{tmp_path / "name_size.txt"}" {params}', 1, 1)


D, G = [0.12, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5]  # normalised overlap 0.95


def test_name_size_file_compares_pixel_boxes_image_by_image(tmp_path: Path) -> None:
    """With a name size file, OutputBBox scales the boxes to each image's size and JaccardOverlap counts
    pixels with both edges: in 200 x 100, D and G overlap 77 * 41 / (81 * 41) = 0.9506; in 50 x 50, 20 * 21 /
    (21 * 21) = 0.9524. Each image with detections takes the next size (count_), wrapping around."""
    assert _one(_net("overlap_threshold: 0.951", 1, 1), D, G) == [0, 1]  # normalised: 0.95
    net = _sized(tmp_path, "overlap_threshold: 0.951")
    assert [_one(net, D, G) for _ in range(3)] == [[0, 1], [1, 0], [0, 1]]  # sizes 0, 1, then 0 again
    net = _sized(tmp_path, "overlap_threshold: 0.9505")
    assert _one(net, D, G) == [1, 0]
    # disjoint boxes: the intersection [0, 0, 0, 0] still counts one pixel, 1 / (61 * 31 + 81 * 41 - 1)
    net = _sized(tmp_path, "overlap_threshold: 0.00019")
    assert _one(net, [0.6, 0.6, 0.9, 0.9], G) == [1, 0]
    assert _one(_net("overlap_threshold: 0.00019", 1, 1), [0.6, 0.6, 0.9, 0.9], G) == [0, 1]


@pytest.mark.parametrize(("resize", "threshold"), [
    ("", 2626 / 5151),  # WARP or none: (0, 25, 100, 50) against (0, 25, 100, 75) in 200 x 100
    ("resize_param { resize_mode: WARP height: 300 width: 300 }", 2626 / 5151),
    # the 2:1 image letterboxed into 300 x 300: rows 75-225 are the image, so y 0.25-0.75 spans it
    ("resize_param { resize_mode: FIT_LARGE_SIZE_AND_PAD height: 300 width: 300 }", 5151 / 10201),
    # scaled to height_scale x width_scale pixels, then clipped to the image: (0, 25, 50, 50) against
    # (0, 25, 50, 75), sizes w * h (ClipBBox's), the intersection with both edges: 51 * 26 / (50 * 25 + 50 * 50
    # - 51 * 26)
    ("resize_param { resize_mode: FIT_SMALL_SIZE height: 300 width: 300 height_scale: 100 width_scale: 100 }",
     51 * 26 / (50 * 25 + 50 * 50 - 51 * 26)),
])
def test_name_size_file_undoes_the_resize(tmp_path: Path, resize: str, threshold: float) -> None:
    det, gt = [0.0, 0.25, 0.5, 0.5], [0.0, 0.25, 0.5, 0.75]  # normalised overlap 0.5
    below = float(np.nextafter(np.float32(threshold), np.float32(0)))
    above = float(np.nextafter(np.float32(threshold), np.float32(1)))
    assert _one(_sized(tmp_path, f"overlap_threshold: {below!r} {resize}", "a 100 200\n"), det, gt) == [1, 0]
    assert _one(_sized(tmp_path, f"overlap_threshold: {above!r} {resize}", "a 100 200\n"), det, gt) == [0, 1]


def test_name_size_file_problems_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(Prototxt2pyError, match=r"layer 'eval'.*failed to open name size file '.*missing.txt'"):
        _net(f'name_size_file: "{tmp_path / "missing.txt"}"')
    with pytest.raises(Prototxt2pyError, match=r"resize_param needs height and width > 0, got 0 x 300"):
        _sized(tmp_path, "resize_param { resize_mode: WARP width: 300 }")
    # the C++ loop ends at the first entry that is not two integers: one size, then normalised boxes never
    net = _sized(tmp_path, "overlap_threshold: 0.951", "a 50 50\nb 10.5 7\nc 100 200\n")
    assert [_one(net, D, G) for _ in range(2)] == [[1, 0], [1, 0]]


def test_bad_bottom_shapes_and_params_are_one_line() -> None:
    with pytest.raises(Prototxt2pyError, match=r"needs detections \(1, 1, D, 7\) and ground truth \(1, 1, G, 8\)"):
        prototxt2py.load(read_net_text(
            'layer { name: "in" type: "Input" top: "det" top: "gt" input_param { shape { dim: 1 dim: 1 dim: 3 '
            'dim: 6 } shape { dim: 1 dim: 1 dim: 2 dim: 8 } } }\n'
            'layer { name: "eval" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "eval" '
            'detection_evaluate_param { num_classes: 3 } }'))
    with pytest.raises(Prototxt2pyError, match="num_classes is required"):
        prototxt2py.load(read_net_text(
            'layer { name: "in" type: "Input" top: "det" top: "gt" input_param { shape { dim: 1 dim: 1 dim: 3 '
            'dim: 7 } shape { dim: 1 dim: 1 dim: 2 dim: 8 } } }\n'
            'layer { name: "eval" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "eval" }'))
    with pytest.raises(Prototxt2pyError, match="overlap_threshold must be > 0"):
        _net("overlap_threshold: 0")


def test_mobilenet_ssd_test_net_summarises() -> None:
    """chuanqi305's MobileNet-SSD TEST net ends in DetectionEvaluate: it was an unknown layer type."""
    net = SHARED / "corpus/chuanqi305__MobileNet-SSD/voc/MobileNetSSD_test.prototxt"
    r = subprocess.run([sys.executable, "-m", "prototxt2py", "summary", str(net)], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr
    assert "detection_eval (DetectionEvaluate)" in r.stdout and "Outputs: detection_eval" in r.stdout
