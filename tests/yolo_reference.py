"""Loop-based numpy port of eric612/MobileNet-YOLO's Yolov3DetectionOutput CPU forward (Forward_cpu of
src/caffe/layers/yolov3_detection_output_layer.cpp with get_region_box from src/caffe/util/bbox_util.cpp, the
non-gaussian case) that tests/test_yolo.py uses as the truth for prototxt2py's Yolov3DetectionOutput. It keeps the
layer's loop order (bottom, image, cell, anchor, class), its float32 storage with the double-precision steps where the
C++ mixes in double literals, correct_yolo_boxes' integer arithmetic, the class-agnostic greedy NMS over every image of
the batch at once (all rows get image id 0), the strict ``>`` confidence test and the ``>=`` NMS test, no clipping of
the boxes, and the one-row-per-image ``[i, -1, ..., -1]`` output when nothing is kept. exp of a float is taken to be
std::exp(float), i.e. libm's expf (a build whose unqualified exp resolves to the double ::exp rounds differently by an
ulp or so), and ties in confidence keep their generation order, so compare confidences and coordinates with a tolerance
of a few ulps. Running this file checks the port on a small hand-built case.
"""

import ctypes
import ctypes.util
import math

import numpy as np

F32 = np.float32
F64 = np.float64


class _Prediction:
    """PredictionResult<float>: the fields Forward_cpu sets (x, y, w, h, confidence as float, classType as int)."""

    __slots__ = ("x", "y", "w", "h", "confidence", "class_type")

    def __init__(self, x, y, w, h, class_type, confidence):
        self.x, self.y, self.w, self.h = F32(x), F32(y), F32(w), F32(h)
        self.class_type = int(class_type)
        self.confidence = F32(confidence)


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _f2i(v) -> int:
    """A float converted to int (truncation); the C++ leaves NaN/inf/out of range undefined, so refuse them."""
    v = float(v)
    if not math.isfinite(v) or not (-(2**31) <= math.trunc(v) < 2**31):
        raise ValueError(f"float {v} does not convert to a C int")
    return math.trunc(v)


def _load_expf():
    """The C library's expf (what std::exp(float) calls on Linux), or None where it cannot be loaded."""
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        fn = libm.expf
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float]
    return fn


_LIBM_EXPF = _load_expf()


def _expf(x) -> np.float32:
    """std::exp(float): libm's expf when available (glibc's is within 0.502 ulp, so about 1 in 1500 results differ
    from the correctly rounded value), else the exact exponential rounded to float32; inf past FLT_MAX, NaN stays."""
    x = float(x)
    if _LIBM_EXPF is not None:
        return F32(_LIBM_EXPF(x))
    if x > 100.0:  # far past log(FLT_MAX) ~ 88.72
        return F32(np.inf)
    return F32(math.exp(x))


def _sigmoid(x) -> np.float32:
    """sigmoid<float>: 1. / (1. + exp(-x)) with exp on the float, the rest in double, returned as float."""
    return F32(1.0 / (1.0 + float(_expf(-F32(x)))))


def _get_region_box(x, biases, n, index, i, j, lw, lh, w, h, stride):
    """get_region_box<float>: centre (cell + sigmoid offset) / grid side, size exp(raw) * anchor / network size."""
    return [
        (F32(i) + x[index + 0 * stride]) / F32(lw),
        (F32(j) + x[index + 1 * stride]) / F32(lh),
        _expf(x[index + 2 * stride]) * biases[2 * n] / F32(w),
        _expf(x[index + 3 * stride]) * biases[2 * n + 1] / F32(h),
    ]


def _correct_yolo_boxes(det: _Prediction, w: int, h: int, netw: int, neth: int, relative: int) -> None:
    """correct_yolo_boxes: letterbox undo with int new_w/new_h; an identity when netw/w == neth/h (always here)."""
    if F32(netw) / F32(w) < F32(neth) / F32(h):
        new_w = netw
        new_h = _cdiv(h * netw, w)
    else:
        new_h = neth
        new_w = _cdiv(w * neth, h)
    det.x = F32((F64(det.x) - F64(netw - new_w) / 2.0 / F64(netw)) / F64(F32(new_w) / F32(netw)))
    det.y = F32((F64(det.y) - F64(neth - new_h) / 2.0 / F64(neth)) / F64(F32(new_h) / F32(neth)))
    det.w = det.w * (F32(netw) / F32(new_w))
    det.h = det.h * (F32(neth) / F32(new_h))
    if not relative:
        det.x = det.x * F32(w)
        det.w = det.w * F32(w)
        det.y = det.y * F32(h)
        det.h = det.h * F32(h)


def _overlap(x1, w1, x2, w2):
    """Length of the overlap of two centred 1-D segments in float; negative when they are apart. Works on float32
    scalars and arrays alike (np.where keeps the ternaries' NaN behaviour: a false comparison picks the second)."""
    l1 = x1 - w1 / F32(2)
    l2 = x2 - w2 / F32(2)
    left = np.where(l1 > l2, l1, l2)
    r1 = x1 + w1 / F32(2)
    r2 = x2 + w2 / F32(2)
    right = np.where(r1 < r2, r1, r2)
    return right - left


def _box_intersection(a, b):
    w = _overlap(a[0], a[2], b[0], b[2])
    h = _overlap(a[1], a[3], b[1], b[3])
    return np.where((w < 0) | (h < 0), F32(0), w * h)


def _box_union(a, b):
    i = _box_intersection(a, b)
    return a[2] * a[3] + b[2] * b[3] - i


def _box_iou(a, b):
    return _box_intersection(a, b) / _box_union(a, b)


def _apply_nms(boxes: list[_Prediction], threshold) -> list[int]:
    """ApplyNms: greedy in list order, any class against any class; j is dropped when iou(i, j) >= threshold.

    The loop over j is done for all j > i at once: whether i drops j depends on i and j alone, and the C++ skipping of
    an already dropped j only avoids dropping it twice, so the result is the same as the element-by-element loop.
    """
    xs = np.array([p.x for p in boxes], dtype=np.float32)
    ys = np.array([p.y for p in boxes], dtype=np.float32)
    ws = np.array([p.w for p in boxes], dtype=np.float32)
    hs = np.array([p.h for p in boxes], dtype=np.float32)
    suppressed = np.zeros(len(boxes), dtype=bool)
    with np.errstate(all="ignore"):
        for i in range(len(boxes) - 1):
            if suppressed[i]:
                continue
            box1 = [xs[i], ys[i], ws[i], hs[i]]
            box2 = [xs[i + 1 :], ys[i + 1 :], ws[i + 1 :], hs[i + 1 :]]
            suppressed[i + 1 :] |= _box_iou(box1, box2) >= threshold
    return [i for i in range(len(boxes)) if not suppressed[i]]


def yolov3_detection_output(
    bottoms,
    num_classes,
    num_box,
    confidence_threshold,
    nms_threshold,
    biases,
    anchors_scale,
    mask_group_num,
    mask,
) -> np.ndarray:
    """Top blob of Yolov3DetectionOutput (gaussian_box false) for NCHW bottoms, as float32 of shape (1, 1, K, 7).

    Kept rows are [0, class + 1, confidence, xmin, ymin, xmax, ymax] in descending confidence; with none kept, one row
    [i, -1, -1, -1, -1, -1, -1] per image. Arguments mirror yolov3_detection_output_param (mask and anchors_scale are
    stored as float by the layer, as are biases and both thresholds).
    """
    bottoms = [np.asarray(bt, dtype=np.float32) for bt in bottoms]
    if not bottoms:
        raise ValueError("Yolov3DetectionOutput needs at least one bottom")
    if any(bt.ndim != 4 for bt in bottoms):
        raise ValueError("bottoms must be 4-D (N, C, H, W)")
    if mask_group_num <= 0 or len(bottoms) != mask_group_num:
        raise ValueError(f"{len(bottoms)} bottoms but mask_group_num {mask_group_num}")
    num_classes, num_box = int(num_classes), int(num_box)
    biases_f = [F32(v) for v in biases]
    mask_f = [F32(v) for v in mask]
    scales_f = [F32(v) for v in anchors_scale]
    conf_thr = F32(confidence_threshold)
    nms_thr = F32(nms_threshold)
    groups_num = len(mask) // mask_group_num
    length = 4 + num_classes + 1

    with np.errstate(all="ignore"):
        predicts: list[_Prediction] = []
        mask_offset = 0
        class_score = np.zeros(num_classes, dtype=np.float32)
        for t, bottom in enumerate(bottoms):
            nb, channels, side_h, side_w = bottom.shape
            stride = side_w * side_h
            if channels < num_box * length:
                raise ValueError(f"bottom {t} has {channels} channels, the layer reads {num_box * length}")
            data = bottom.reshape(-1)
            swap = np.zeros_like(data)
            count1 = channels * stride
            nw = _f2i(F32(side_w) * scales_f[t])
            nh = _f2i(F32(side_h) * scales_f[t])
            for b in range(nb):
                for s in range(stride):
                    for n in range(num_box):
                        index = n * length * stride + s + b * count1
                        for c in range(length):
                            index2 = c * stride + index
                            if c == 2 or c == 3:
                                swap[index2] = data[index2]
                            elif c > 4:
                                class_score[c - 5] = _sigmoid(data[index2])
                            else:
                                swap[index2] = _sigmoid(data[index2])
                        y2 = s // side_w
                        x2 = s % side_w
                        obj_score = swap[index + 4 * stride]
                        for c in range(num_classes):
                            class_score[c] = class_score[c] * obj_score
                            if class_score[c] > conf_thr:
                                anchor = _f2i(mask_f[n + mask_offset])
                                box = _get_region_box(swap, biases_f, anchor, index, x2, y2, side_w, side_h, nw, nh,
                                                      stride)
                                pred = _Prediction(box[0], box[1], box[2], box[3], c, class_score[c])
                                _correct_yolo_boxes(pred, side_w, side_h, nw, nh, 1)
                                predicts.append(pred)
            mask_offset += groups_num

        # std::sort with a strict "greater confidence" comparator leaves the order of equal confidences unspecified
        # (libstdc++ happens to keep it for 16 or fewer boxes, where it only insertion-sorts); here ties stay in
        # generation order.
        predicts.sort(key=lambda p: -float(p.confidence))
        idxes = _apply_nms(predicts, nms_thr) if predicts else []

        if not idxes:
            num = bottoms[0].shape[0]
            rows = bottoms[-1].shape[0]  # the top is sized by swap_, shaped like the last bottom
            if num > rows:
                raise ValueError("first bottom has more images than the last: the layer writes past its top")
            top = np.full((1, 1, rows, 7), -1, dtype=np.float32)
            for i in range(num):
                top[0, 0, i, 0] = i
            return top

        top = np.zeros((1, 1, len(idxes), 7), dtype=np.float32)
        for k, i in enumerate(idxes):
            p = predicts[i]
            top[0, 0, k, 0] = 0
            top[0, 0, k, 1] = p.class_type + 1
            top[0, 0, k, 2] = p.confidence
            half_w = float(p.w) / 2.0
            half_h = float(p.h) / 2.0
            top[0, 0, k, 3] = F32(float(p.x) - half_w)
            top[0, 0, k, 4] = F32(float(p.y) - half_h)
            top[0, 0, k, 5] = F32(float(p.x) + half_w)
            top[0, 0, k, 6] = F32(float(p.y) + half_h)
        return top


def _self_check() -> None:
    num_classes, num_box = 3, 2
    length = 4 + num_classes + 1
    biases = [10, 14, 23, 27, 37, 58, 81, 82]
    anchors_scale = [32, 16]
    mask = [2, 3, 0, 1]  # bottom 0 uses anchors 2, 3; bottom 1 uses anchors 0, 1
    big = 20.0  # sigmoid(20) rounds to 1.0f

    b0 = np.full((2, num_box * length, 2, 2), -10.0, dtype=np.float32)
    b1 = np.full((2, num_box * length, 4, 4), -10.0, dtype=np.float32)

    def put(bottom, img, n, y, x, obj, cls, tx=0.0, ty=0.0, tw=0.0, th=0.0, extra=None):
        ch = n * length
        bottom[img, ch + 0, y, x] = tx
        bottom[img, ch + 1, y, x] = ty
        bottom[img, ch + 2, y, x] = tw
        bottom[img, ch + 3, y, x] = th
        bottom[img, ch + 4, y, x] = obj
        bottom[img, ch + 5 + cls, y, x] = big
        for c, v in (extra or {}).items():
            bottom[img, ch + 5 + c, y, x] = v

    # A: image 0, 2x2 grid, cell (y1, x0), anchor 3 (81x82 over a 64-pixel net), class 2
    put(b0, 0, 1, 1, 0, obj=4.0, cls=2)
    # B: image 0, 4x4 grid, cell (y2, x1), anchor 0 (10x14), class 0; class 2 at sigmoid(0) = 0.5 gives a same-box
    # lower-scored detection of another class (class-agnostic NMS removes it)
    put(b1, 0, 0, 2, 1, obj=3.0, cls=0, extra={2: 0.0})
    # C: same cell, anchor 1 (23x27) scaled down to about B's box, lower score: removed by B
    put(b1, 0, 1, 2, 1, obj=1.0, cls=0, tw=math.log(10 / 23), th=math.log(14 / 27))
    # D: image 0, 4x4 grid, cell (y3, x3), anchor 0, class 1
    put(b1, 0, 0, 3, 3, obj=2.0, cls=1)
    # A's twin in image 1 with a lower score: NMS runs over the whole batch, so A removes it
    put(b0, 1, 1, 1, 0, obj=0.5, cls=2)
    # E: image 1, 2x2 grid, cell (y0, x1), anchor 2 (37x58), class 1: kept, reported with image id 0
    put(b0, 1, 0, 0, 1, obj=1.5, cls=1)

    def sig(v):
        return F32(1.0 / (1.0 + math.exp(-v)))

    args = dict(num_classes=num_classes, num_box=num_box, biases=biases, anchors_scale=anchors_scale,
                mask_group_num=2, mask=mask)
    top = yolov3_detection_output([b0, b1], confidence_threshold=0.3, nms_threshold=0.45, **args)
    expected = np.array([
        # label, confidence, xmin, ymin, xmax, ymax; centres (cell + 0.5) / side, sizes anchor / 64, no clipping
        [0, 3, sig(4.0), 0.25 - 81 / 128, 0.75 - 82 / 128, 0.25 + 81 / 128, 0.75 + 82 / 128],  # A
        [0, 1, sig(3.0), 0.375 - 10 / 128, 0.625 - 14 / 128, 0.375 + 10 / 128, 0.625 + 14 / 128],  # B
        [0, 2, sig(2.0), 0.875 - 10 / 128, 0.875 - 14 / 128, 0.875 + 10 / 128, 0.875 + 14 / 128],  # D
        [0, 2, sig(1.5), 0.75 - 37 / 128, 0.25 - 58 / 128, 0.75 + 37 / 128, 0.25 + 58 / 128],  # E
    ], dtype=np.float32)
    assert top.shape == (1, 1, 4, 7) and top.dtype == np.float32, top.shape
    cols = [0, 1, 3, 4, 5, 6]
    np.testing.assert_array_equal(top[0, 0][:, cols], expected[:, cols])
    np.testing.assert_allclose(top[0, 0, :, 2], expected[:, 2], rtol=1e-6)
    assert top[0, 0, 0, 3] < 0 and top[0, 0, 0, 6] > 1  # A sticks out of the image: nothing clips it

    # without NMS every candidate comes out, in descending confidence: C, A's twin and B's class-2 twin reappear
    top_all = yolov3_detection_output([b0, b1], confidence_threshold=0.3, nms_threshold=1.5, **args)
    np.testing.assert_allclose(top_all[0, 0, :, 2], [sig(4.0), sig(3.0), sig(2.0), sig(1.5), sig(1.0), sig(0.5),
                                                     F32(0.5) * sig(3.0)], rtol=1e-6)
    np.testing.assert_array_equal(top_all[0, 0, :, 1], [3, 1, 2, 2, 1, 3, 3])
    np.testing.assert_allclose(top_all[0, 0, 4, 3:], expected[1, 3:], rtol=1e-5)  # C's box is about B's

    # the confidence test is strict: a threshold equal to E's score drops E
    top_e = yolov3_detection_output([b0, b1], confidence_threshold=float(top[0, 0, 3, 2]), nms_threshold=0.45, **args)
    np.testing.assert_array_equal(top_e[0, 0, :, 1], [3, 1, 2])

    # the NMS test is >=: with threshold 0 even disjoint boxes (IoU 0) are suppressed
    far = [_Prediction(0.1, 0.1, 0.1, 0.1, 0, 0.9), _Prediction(0.9, 0.9, 0.1, 0.1, 0, 0.8)]
    assert _box_iou([far[0].x, far[0].y, far[0].w, far[0].h], [far[1].x, far[1].y, far[1].w, far[1].h]) == 0
    assert _apply_nms(far, F32(0.0)) == [0]
    assert _apply_nms(far, F32(1e-6)) == [0, 1]

    # nothing above 0.999: one [i, -1, ...] row per image of the batch
    none = yolov3_detection_output([b0, b1], confidence_threshold=0.999, nms_threshold=0.45, **args)
    np.testing.assert_array_equal(none, np.array([[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]],
                                                 dtype=np.float32))
    print("yolo_reference self-check passed")


if __name__ == "__main__":
    _self_check()
