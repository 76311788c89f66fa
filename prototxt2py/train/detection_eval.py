"""SSD's detection evaluation (weiliu89/caffe ``ssd``: ``Solver::TestDetection``, bbox_util's ``ComputeAP``).

With ``eval_type: "detection"`` a test pass does not average its outputs: each output is a DetectionEvaluate
top whose rows ``[image, label, score, true_pos, false_pos]`` (``image`` -1: ``[-1, label, ground-truth
boxes, -1, -1]``) are gathered over the ``test_iter`` batches, and the output's score is the mean over labels of
the average precision (``ap_version``: "11point" as VOC2007, "MaxIntegral" as VOC2012/ILSVRC, "Integral").
Arithmetic is the C++'s float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import SolverError

f32 = np.float32
AP_VERSIONS = ("11point", "MaxIntegral", "Integral")
EPS = f32(1e-6)


def average_precision(true_pos: Sequence[tuple[float, int]], false_pos: Sequence[tuple[float, int]],
                      num_pos: int, ap_version: str) -> float:
    """``ComputeAP``: the (score, 0 or 1) pairs of one label's detections over the test set, and its number of
    ground-truth boxes. ``p * fabs(r1 - r2)`` is float arithmetic as GCC 6 and later compile it (``fabs(float)``
    from ``<math.h>``); a Caffe built with GCC 5 or older did it in double and may differ in the last bit."""
    if len(true_pos) != len(false_pos):
        raise SolverError("detection evaluation: true and false positives differ in number")
    if not true_pos or num_pos == 0:
        return 0.0

    def cumsum(pairs: Sequence[tuple[float, int]]) -> list[int]:  # descending scores, ties in order
        ranked = sorted(pairs, key=lambda pair: -pair[0])
        return np.cumsum([flag for _, flag in ranked]).tolist()

    tp, fp = cumsum(true_pos), cumsum(false_pos)
    if tp[-1] > num_pos:
        raise SolverError(f"detection evaluation: {tp[-1]} true positives of a label with {num_pos} ground-truth "
                          "boxes (DetectionEvaluate rows from another source?)")
    prec = [f32(t) / f32(t + f) for t, f in zip(tp, fp, strict=True)]
    rec = [f32(t) / f32(num_pos) for t in tp]
    ap = f32(0)
    if ap_version == "11point":
        max_precs = [f32(0)] * 11
        start = len(tp) - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if float(rec[i]) < j / 10.0:  # in double, as the C++ (7 of 10 is below 0.7 there)
                    start = i
                    if j > 0:
                        max_precs[j - 1] = max_precs[j]
                    break
                max_precs[j] = max(max_precs[j], prec[i])
        for j in range(10, -1, -1):
            ap = f32(ap + max_precs[j] / f32(11))
    elif ap_version == "MaxIntegral":
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(len(tp) - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            if abs(cur_rec - rec[i]) > EPS:
                ap = f32(ap + cur_prec * abs(cur_rec - rec[i]))
            cur_rec = rec[i]
        ap = f32(ap + cur_rec * cur_prec)
    elif ap_version == "Integral":
        prev = f32(0)
        for p, r in zip(prec, rec, strict=True):
            if abs(r - prev) > EPS:
                ap = f32(ap + p * abs(r - prev))
            prev = r
    else:
        raise SolverError(f"unknown ap_version '{ap_version}' (expected one of {', '.join(AP_VERSIONS)})")
    return float(ap)


class DetectionScores:
    """The rows of each test net output over one test pass (``TestDetection``'s ``all_true_pos``,
    ``all_false_pos`` and ``all_num_pos``)."""

    def __init__(self) -> None:
        self.true_pos: dict[int, dict[int, list[tuple[float, int]]]] = {}
        self.false_pos: dict[int, dict[int, list[tuple[float, int]]]] = {}
        self.num_pos: dict[int, dict[int, int]] = {}

    def add(self, output: int, name: str, values: np.ndarray) -> None:
        """One batch's values of output number ``output`` (named ``name``), flattened."""
        if values.size % 5:
            raise SolverError(f"eval_type 'detection' needs test net outputs of rows of 5 (DetectionEvaluate's), "
                              f"output '{name}' has {values.size} values")
        for image, label, score, tp, fp in values.reshape(-1, 5).tolist():
            label = int(label)
            if int(image) == -1:  # the number of ground-truth boxes of a label
                positives = self.num_pos.setdefault(output, {})
                positives[label] = positives.get(label, 0) + int(score)
            elif int(tp) or int(fp):  # (0, 0): matched a difficult box that is not evaluated
                self.true_pos.setdefault(output, {}).setdefault(label, []).append((score, int(tp)))
                self.false_pos.setdefault(output, {}).setdefault(label, []).append((score, int(fp)))

    def mean_ap(self, ap_version: str, warn: Callable[[str], None],
                per_class: Callable[[str], None] | None = None) -> list[float]:
        """The mAP of each output, for as many outputs as had detections (the C++ loop's bound); labels without
        detections count as 0 (warned), as the C++ divides by every label's count."""
        out = []
        for i in range(len(self.true_pos)):
            if i not in self.true_pos or i not in self.num_pos:
                raise SolverError(f"detection evaluation: output #{i} has no detection rows while a later output "
                                  "has (Caffe: 'Missing output_blob true_pos')")
            total = f32(0)
            for label, count in sorted(self.num_pos[i].items()):
                if label not in self.true_pos[i]:
                    warn(f"Missing true_pos for label: {label}")
                    continue
                ap = average_precision(self.true_pos[i][label], self.false_pos[i][label], count, ap_version)
                total = f32(total + f32(ap))
                if per_class is not None:
                    per_class(f"class{label}: {ap:g}")
            out.append(float(f32(total / f32(len(self.num_pos[i])))))
        return out
