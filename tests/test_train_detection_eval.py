"""SSD's ``eval_type: "detection"`` test passes (weiliu89/caffe ``ssd``: Solver::TestDetection, ComputeAP): the
DetectionEvaluate rows of every batch gathered, then the mean average precision, checked on a case worked by
hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("h5py")

from prototxt2py.train import SolverError, get_solver  # noqa: E402
from prototxt2py.train.detection_eval import average_precision  # noqa: E402

A, B, C, FAR = [0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.3, 0.3, 0.6, 0.6], [0.8, 0.0, 0.9, 0.1]
E, F, G = [0.1, 0.5, 0.3, 0.9], [0.6, 0.1, 0.9, 0.3], [0.4, 0.0, 0.6, 0.2]
NONE = [0, -1, -1, -1, -1, -1, -1]  # DetectionOutput's "nothing found" row: pads a batch to the HDF5 width
GT_PAD = [-1, 0, 0, 0, 0, 0, 0, 0]  # ends GetGroundTruth's loop
# batch 1: label 1 has A and B, found at 0.9 and 0.7, plus a miss at 0.8; label 2's C found at 0.6
# batch 2: label 1's E found at 0.5 after a miss at 0.95; G is difficult (not counted, its detection ignored);
#          label 2's F is never found
DET = [[[0, 1, 0.9, *A], [0, 1, 0.8, *FAR], [0, 1, 0.7, *B], [0, 2, 0.6, *C]],
       [[0, 1, 0.95, *FAR], [0, 1, 0.5, *E], [0, 1, 0.85, *G], NONE]]
GT = [[[0, 1, 0, *A, 0], [0, 1, 1, *B, 0], [0, 2, 2, *C, 0]],
      [[0, 1, 0, *E, 0], [0, 2, 1, *F, 0], [0, 1, 2, *G, 1]]]
# label 1 over the test set, by score: miss, hit, miss, hit, hit of 3 boxes: precision 0, 1/2, 1/3, 1/2, 3/5 at
# recall 0, 1/3, 1/3, 2/3, 1. Label 2: one hit of 2 boxes (precision 1 at recall 1/2).
# 11point: label 1's best precision at recall >= r is 3/5 for every r, label 2's 1 for r <= 0.5 (6 of 11 points)
# MaxIntegral: 3/5 * (1/3 + 1/3 + 1/3) = 3/5 and 1 * 1/2; Integral: 1/2 * 1/3 + 1/2 * 1/3 + 3/5 * 1/3 and 1/2
WANT = {"11point": (0.6 + 6 / 11) / 2, "MaxIntegral": (0.6 + 0.5) / 2, "Integral": (0.5 / 3 + 0.5 / 3 + 0.2 + 0.5) / 2}

NET = """name: "det"
layer { name: "data" type: "HDF5Data" top: "x" top: "y" include { phase: TRAIN }
  hdf5_data_param { source: "train_list.txt" batch_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" include { phase: TRAIN }
  inner_product_param { num_output: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" include { phase: TRAIN } }
layer { name: "boxes" type: "HDF5Data" top: "det" top: "gt" include { phase: TEST }
  hdf5_data_param { source: "test_list.txt" batch_size: 1 } }
layer { name: "eval" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "detection_eval"
  include { phase: TEST }
  detection_evaluate_param { num_classes: 3 background_label_id: 0 overlap_threshold: 0.5
    evaluate_difficult_gt: false } }
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # data sources are relative to the working directory, as in Caffe


def _case(folder: Path, solver_extra: str) -> Path:
    import h5py

    with h5py.File(folder / "train.h5", "w") as f:
        f["x"] = np.ones((4, 3), np.float32)
        f["y"] = np.zeros((4, 1), np.float32)
    with h5py.File(folder / "test.h5", "w") as f:
        f["det"] = np.array(DET, np.float32).reshape(2, 1, 4, 7)
        f["gt"] = np.array(GT, np.float32).reshape(2, 1, 3, 8)
    (folder / "train_list.txt").write_text(f"{folder / 'train.h5'}\n")
    (folder / "test_list.txt").write_text(f"{folder / 'test.h5'}\n")
    (folder / "net.prototxt").write_text(NET)
    solver = folder / "solver.prototxt"
    solver.write_text(f'net: "{folder / "net.prototxt"}"\ntest_iter: 2\ntest_interval: 100\nbase_lr: 0.01\n'
                      f'lr_policy: "fixed"\nmax_iter: 0\neval_type: "detection"\n{solver_extra}\n')
    return solver


PER_CLASS = {"11point": ("0.6", "0.545455"), "MaxIntegral": ("0.6", "0.5"), "Integral": ("0.533333", "0.5")}


@pytest.mark.parametrize("version", ["11point", "MaxIntegral", "Integral"])
def test_test_pass_scores_the_mean_average_precision(tmp_path: Path, version: str) -> None:
    lines: list[str] = []
    solver = get_solver(_case(tmp_path, f'ap_version: "{version}"\nshow_per_class_result: true'))
    solver.log = lines.append
    result = solver.test(0)
    assert result.outputs == [("detection_eval", pytest.approx(WANT[version], rel=1e-6))]
    one, two = PER_CLASS[version]
    assert lines[1:] == [f"class1: {one}", f"class2: {two}",
                         f"    Test net output #0: detection_eval = {result.outputs[0][1]:g}"]


def test_a_label_never_detected_counts_as_zero(tmp_path: Path) -> None:
    """num_pos has label 2 but no detection of it: warned, its AP missing from the sum, yet counted in the
    mean (the C++ divides by every label with ground truth)."""
    path = _case(tmp_path, 'ap_version: "MaxIntegral"')
    import h5py

    with h5py.File(tmp_path / "test.h5", "r+") as f:
        det = f["det"][...]
        det[0, 0, 3] = NONE  # batch 1's detection of C dropped: no detection of label 2 is left
        f["det"][...] = det
    warned: list[str] = []
    result = get_solver(path, warn=warned.append).test(0)
    assert warned == ["Missing true_pos for label: 2"]
    assert result.outputs == [("detection_eval", pytest.approx(0.6 / 2, rel=1e-6))]


def test_eleven_point_ap_compares_recall_in_double() -> None:
    """7 hits of 10 boxes: recall 7/10 in float32 is 0.69999999, below the 0.7 point in the C++'s double
    comparison, so the 0.7 point's precision is the next recall's (none: 0); in float32 it would count."""
    hits = [(1.0 - i / 100, 1) for i in range(7)]
    misses = [(s, 0) for s, _ in hits]
    ap = average_precision(hits, misses, 10, "11point")
    assert ap == pytest.approx(7 / 11, rel=1e-6)  # points 0.0-0.6 at precision 1; 0.7 not reached


def test_unknown_eval_type_or_ap_version_stop_at_start(tmp_path: Path) -> None:
    path = _case(tmp_path, 'ap_version: "VOC"')
    with pytest.raises(SolverError, match=r"unknown ap_version 'VOC' \(11point, MaxIntegral, Integral\)"):
        get_solver(path)
    path.write_text(path.read_text().replace('eval_type: "detection"', 'eval_type: "segmentation"'))
    with pytest.raises(SolverError, match=r"unknown eval_type 'segmentation'"):
        get_solver(path)
