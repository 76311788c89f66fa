"""SSD's PriorBox boxes computed with numpy, for the ONNX export (where they are a constant).

Why not the runtime module: building it imports torch, and ``convert --to onnx`` must not (issue 21). This is
the arithmetic of :meth:`.ssd_nn.PriorBox.priors` step by step in the same precisions (box sizes,
steps and centres in float32, edges in double, the result rounded to float32); a test checks the two are
equal bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

from ...lazy_numpy import np


def prior_sizes(a: Any) -> list[tuple[float, float]]:
    """``(width, height)`` of each prior in Caffe's order (min size, max size, then the ratios), in double: the
    callers round them to float32, the fork's ``float box_width``."""
    sizes = []
    for s, m in enumerate(a.min_sizes):
        first = m / 2.0 if a.reduce_boxes else float(m)
        sizes.append((first, first))
        if a.max_sizes:
            side = math.sqrt(m * a.max_sizes[s])
            sizes.append((side, side))
        sizes += [(m * math.sqrt(ar), m / math.sqrt(ar)) for ar in a.aspect_ratios if abs(ar - 1.0) >= 1e-6]
    return sizes


def prior_boxes(a: Any, layer_h: int, layer_w: int, img_h: int, img_w: int) -> np.ndarray:
    """``(1, 2, H * W * num_priors * 4)`` float32: the boxes ``(xmin, ymin, xmax, ymax)`` of every cell (row-major)
    and prior, then the variances; ``a`` is the layer's ``PriorBoxAttrs``."""
    wh = np.array(prior_sizes(a), dtype=np.float32).reshape(-1, 2).astype(np.float64)
    if a.step_w:
        step_w, step_h = np.float32(a.step_w), np.float32(a.step_h)
    else:  # float(image size) / feature map size, in float
        step_w, step_h = np.float32(img_w) / np.float32(layer_w), np.float32(img_h) / np.float32(layer_h)
    offset = np.float32(a.offset)
    cx = ((np.arange(layer_w, dtype=np.float32) + offset) * step_w).astype(np.float64).reshape(1, layer_w, 1)
    cy = ((np.arange(layer_h, dtype=np.float32) + offset) * step_h).astype(np.float64).reshape(layer_h, 1, 1)
    half_w, half_h = wh[:, 0] / 2.0, wh[:, 1] / 2.0
    edges = np.broadcast_arrays((cx - half_w) / img_w, (cy - half_h) / img_h, (cx + half_w) / img_w,
                                (cy + half_h) / img_h)
    boxes = np.stack(edges, axis=-1).astype(np.float32)  # (H, W, P, 4)
    if a.clip:
        boxes = np.clip(boxes, np.float32(0.0), np.float32(1.0))
    if len(a.variance) == 4:
        variance = np.broadcast_to(np.array(a.variance, dtype=np.float32), boxes.shape)
    else:
        variance = np.full(boxes.shape, a.variance[0], dtype=np.float32)
    return np.stack([boxes.reshape(-1), variance.reshape(-1)])[None]
