"""SSD's box geometry and random training augmentation (weiliu89/caffe ``ssd``: ``bbox_util.cpp``,
``sampler.cpp``, ``im_transforms.cpp``, ``DataTransformer::{DistortImage, ExpandImage, CropImage,
TransformAnnotation}``), for the ``AnnotatedData`` reader.

Boxes are normalised ``[xmin, ymin, xmax, ymax]`` float32 lists, computed in the C++'s float order. An
annotation is a list of groups ``(group_label, [(instance_id, box, difficult), ...])``. Images are OpenCV-style
``(H, W, C)`` uint8 arrays. Random draws come from a numpy generator (Caffe's boost stream cannot be
reproduced): the same distributions, drawn in the fork's order. As in the fork, each stage of an encoded record
(distortion, expansion, crop) is stored again as a JPEG, so later stages see JPEG-compressed pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import DataError

F32 = np.float32
Box = list  # [xmin, ymin, xmax, ymax] as float32 values
Groups = list  # [(group_label, [(instance_id, box, difficult), ...]), ...]


def size(b: Box) -> F32:
    """``BBoxSize`` of a normalised box (0 for an inverted one)."""
    if b[2] < b[0] or b[3] < b[1]:
        return F32(0)
    return F32(F32(b[2] - b[0]) * F32(b[3] - b[1]))


def intersect(a: Box, b: Box) -> Box:
    """``IntersectBBox``: [0, 0, 0, 0] for boxes apart."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return [F32(0)] * 4
    return [max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]


def coverage(a: Box, b: Box) -> F32:
    """``BBoxCoverage``: the share of ``a`` inside ``b``."""
    inter = size(intersect(a, b))
    return F32(inter / size(a)) if inter > 0 else F32(0)


def jaccard(a: Box, b: Box) -> F32:
    """``JaccardOverlap`` of normalised boxes."""
    i = intersect(a, b)
    w, h = F32(i[2] - i[0]), F32(i[3] - i[1])
    if w > 0 and h > 0:
        inter = F32(w * h)
        return F32(inter / F32(F32(size(a) + size(b)) - inter))
    return F32(0)


def clip(b: Box) -> Box:
    return [max(min(v, F32(1)), F32(0)) for v in b]


def update_by_resize(box: Box, old_w: int, old_h: int, new_w: int, new_h: int) -> Box:
    """``UpdateBBoxByResizePolicy`` for WARP: to pixels of the old size, scaled and clipped to the new one,
    normalised again (float32, in the C++'s order)."""
    nw, nh = F32(new_w), F32(new_h)
    x0, y0 = F32(box[0] * F32(old_w)), F32(box[1] * F32(old_h))
    x1, y1 = F32(box[2] * F32(old_w)), F32(box[3] * F32(old_h))
    x0 = max(F32(0), F32(F32(x0 * nw) / F32(old_w)))
    x1 = min(nw, F32(F32(x1 * nw) / F32(old_w)))
    y0 = max(F32(0), F32(F32(y0 * nh) / F32(old_h)))
    y1 = min(nh, F32(F32(y1 * nh) / F32(old_h)))
    return [F32(x0 / nw), F32(y0 / nh), F32(x1 / nw), F32(y1 / nh)]


def meets_emit(crop: Box, box: Box, emit_type: str, emit_overlap: float) -> bool:
    """``MeetEmitConstraint``: the box's centre inside the crop window (CENTER), or the share of the box
    inside it above ``emit_overlap`` (MIN_OVERLAP)."""
    if emit_type == "CENTER":
        cx, cy = F32(F32(box[0] + box[2]) / F32(2)), F32(F32(box[1] + box[3]) / F32(2))
        return bool(crop[0] <= cx <= crop[2] and crop[1] <= cy <= crop[3])
    return bool(coverage(box, crop) > F32(emit_overlap))


def project(crop: Box, box: Box) -> Box | None:
    """``ProjectBBox``: the box in the crop window's normalised coordinates, clipped to it; None when it lies
    outside or keeps no area."""
    if box[0] >= crop[2] or box[2] <= crop[0] or box[1] >= crop[3] or box[3] <= crop[1]:
        return None
    w, h = F32(crop[2] - crop[0]), F32(crop[3] - crop[1])
    out = clip([F32(F32(box[0] - crop[0]) / w), F32(F32(box[1] - crop[1]) / h), F32(F32(box[2] - crop[0]) / w),
                F32(F32(box[3] - crop[1]) / h)])
    return out if size(out) > 0 else None


def transform_annotation(groups: Groups, crop: Box, emit: tuple[str, float] | None, mirror: bool = False,
                         resize: tuple[int, int, int, int] | None = None) -> Groups:
    """``TransformAnnotation``: each box through the resize policy (``resize``: old width, old height, new
    width, new height), the emit constraint, the projection into ``crop`` and the mirror flip; groups left
    without a box are dropped."""
    out = []
    for label, members in groups:
        kept = []
        for instance, box, difficult in members:
            if resize is not None:
                box = update_by_resize(box, *resize)
            if emit is not None and not meets_emit(crop, box, *emit):
                continue
            proj = project(crop, box)
            if proj is None:
                continue
            if mirror:
                proj = [F32(1 - proj[2]), proj[1], F32(1 - proj[0]), proj[3]]
            kept.append((instance, proj, difficult))
        if kept:
            out.append((label, kept))
    return out


def _uniform(rng: np.random.Generator, low: float, high: float) -> F32:
    """``caffe_rng_uniform(1, low, high)`` (low == high gives low)."""
    return F32(low + (high - low) * rng.random()) if high > low else F32(low)


def _convert(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``cv::Mat::convertTo(out, -1, alpha, beta)`` of uint8 pixels: rounded to nearest even, saturated."""
    return np.clip(np.rint(img.astype(np.float32) * F32(alpha) + F32(beta)), 0, 255).astype(np.uint8)


def _hsv_channel(img: np.ndarray, channel: int, alpha: float, beta: float) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[..., channel] = _convert(hsv[..., channel], alpha, beta)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def distort(img: np.ndarray, p: Any, rng: np.random.Generator) -> np.ndarray:
    """``ApplyDistort``: brightness, then contrast before or after saturation and hue (a coin flip), then a
    random channel order, each with its probability."""

    def brightness(im: np.ndarray) -> np.ndarray:
        if _uniform(rng, 0, 1) < p.brightness_prob:
            delta = _uniform(rng, -p.brightness_delta, p.brightness_delta)
            return _convert(im, 1, delta) if abs(delta) > 0 else im
        return im

    def contrast(im: np.ndarray) -> np.ndarray:
        if _uniform(rng, 0, 1) < p.contrast_prob:
            delta = _uniform(rng, p.contrast_lower, p.contrast_upper)
            return _convert(im, delta, 0) if abs(delta - 1) > 1e-3 else im
        return im

    def saturation(im: np.ndarray) -> np.ndarray:
        if _uniform(rng, 0, 1) < p.saturation_prob:
            return _hsv_channel(im, 1, _uniform(rng, p.saturation_lower, p.saturation_upper), 0)
        return im

    def hue(im: np.ndarray) -> np.ndarray:
        if _uniform(rng, 0, 1) < p.hue_prob:
            delta = _uniform(rng, -p.hue_delta, p.hue_delta)
            return _hsv_channel(im, 0, 1, delta) if abs(delta) > 0 else im
        return im

    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"distort_param needs 3-channel images, got {img.shape[2] if img.ndim == 3 else 1}")
    steps = (brightness, contrast, saturation, hue) if _uniform(rng, 0, 1) > 0.5 else (
        brightness, saturation, hue, contrast)
    for step in steps:
        img = step(img)
    if _uniform(rng, 0, 1) < p.random_order_prob:
        img = np.ascontiguousarray(img[..., rng.permutation(3)])
    return img


def expand(img: np.ndarray, groups: Groups, p: Any, fill: np.ndarray, emit: tuple[str, float] | None,
           rng: np.random.Generator) -> tuple[np.ndarray, Groups]:
    """``ExpandImage``: with probability ``prob``, the image placed at a random whole-pixel offset on a canvas
    ``ratio`` times its size (ratio uniform in [1, max_expand_ratio)) filled with ``fill`` (the mean values,
    else 0); boxes follow."""
    if _uniform(rng, 0, 1) > p.prob or abs(p.max_expand_ratio - 1.0) < 1e-2:
        return img, groups
    ratio = _uniform(rng, 1, p.max_expand_ratio)
    ih, iw = img.shape[:2]
    h, w = int(F32(ih) * ratio), int(F32(iw) * ratio)
    h_off, w_off = F32(math.floor(_uniform(rng, 0, h - ih))), F32(math.floor(_uniform(rng, 0, w - iw)))
    window = [F32(-w_off / F32(iw)), F32(-h_off / F32(ih)), F32(F32(w - w_off) / F32(iw)),
              F32(F32(h - h_off) / F32(ih))]
    canvas = np.empty((h, w, img.shape[2]), np.uint8)
    canvas[...] = fill
    canvas[int(h_off):int(h_off) + ih, int(w_off):int(w_off) + iw] = img
    return canvas, transform_annotation(groups, window, emit)


def _satisfies(sample: Box, objects: list[Box], c: Any) -> bool:
    """``SatisfySampleConstraint``, as the fork writes it: true without constraints; else an object passing
    every check given returns true, and so does the end of the loop once any object passed a check before
    failing a later one (the C++'s ``found`` is never reset between objects)."""
    checks = []
    if c.has("min_jaccard_overlap") or c.has("max_jaccard_overlap"):
        checks.append(("jaccard_overlap", lambda o: jaccard(sample, o)))
    if c.has("min_sample_coverage") or c.has("max_sample_coverage"):
        checks.append(("sample_coverage", lambda o: coverage(sample, o)))
    if c.has("min_object_coverage") or c.has("max_object_coverage"):
        checks.append(("object_coverage", lambda o: coverage(o, sample)))
    if not checks:
        return True
    found = False
    for obj in objects:
        passed = True
        for name, measure in checks:
            v = measure(obj)
            if (c.has(f"min_{name}") and v < F32(getattr(c, f"min_{name}"))) or (
                    c.has(f"max_{name}") and v > F32(getattr(c, f"max_{name}"))):
                passed = False
                break
            found = True
        if passed and found:
            return True
    return found


def _sample_box(s: Any, rng: np.random.Generator) -> Box:
    """``SampleBBox``: a random scale and aspect ratio, at a random position inside the image."""
    scale = _uniform(rng, s.min_scale, s.max_scale)
    aspect = _uniform(rng, s.min_aspect_ratio, s.max_aspect_ratio)
    aspect = max(aspect, F32(float(scale) ** 2))
    aspect = min(aspect, F32(1 / float(scale) ** 2))
    bw, bh = F32(scale * F32(math.sqrt(aspect))), F32(scale / F32(math.sqrt(aspect)))
    w_off, h_off = _uniform(rng, 0, 1 - bw), _uniform(rng, 0, 1 - bh)
    return [w_off, h_off, F32(w_off + bw), F32(h_off + bh)]


def sample_crop(img: np.ndarray, groups: Groups, samplers: Any, emit: tuple[str, float] | None,
                rng: np.random.Generator) -> tuple[np.ndarray, Groups]:
    """``GenerateBatchSamples`` then ``CropImage``: every batch sampler tries ``max_trials`` random windows
    (at most ``max_sample`` kept) meeting its constraint on the objects; one window of all is picked at random
    and the image cropped to it (corners truncated to whole pixels); boxes are projected into the window."""
    objects = [box for _, members in groups for _, box, _ in members]
    found: list[Box] = []
    for b in samplers:
        if not b.use_original_image:
            continue
        s = b.sampler
        if not (0 < s.min_scale <= s.max_scale <= 1 and 0 < s.min_aspect_ratio <= s.max_aspect_ratio):
            raise DataError("batch_sampler needs 0 < min_scale <= max_scale <= 1 and 0 < min_aspect_ratio <= "
                            "max_aspect_ratio")
        kept = 0
        for _ in range(b.max_trials):
            if b.has("max_sample") and kept >= b.max_sample:
                break
            box = _sample_box(s, rng)
            if _satisfies(box, objects, b.sample_constraint):
                kept += 1
                found.append(box)
    if not found:
        return img, groups
    window = clip(found[int(rng.integers(len(found)))])
    ih, iw = img.shape[:2]
    x0, y0 = F32(window[0] * F32(iw)), F32(window[1] * F32(ih))
    x1, y1 = F32(window[2] * F32(iw)), F32(window[3] * F32(ih))
    w_off, h_off, w, h = int(x0), int(y0), int(F32(x1 - x0)), int(F32(y1 - y0))
    if w <= 0 or h <= 0:
        return img, groups  # OpenCV would refuse an empty region; a window under a pixel keeps the image
    return np.ascontiguousarray(img[h_off:h_off + h, w_off:w_off + w]), transform_annotation(groups, window, emit)
