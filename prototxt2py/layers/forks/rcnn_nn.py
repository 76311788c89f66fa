"""Faster R-CNN / R-FCN torch modules: ROIPooling, PSROIPooling, SmoothL1Loss.

ROI corners round half away from zero and a bin's maximum is its first in row-major order, as the forks compute them.
"""

import math
import struct

import torch
import torch.nn.functional as F
from torch import nn


def _roi_round_half_away(t: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` rounds them to even)."""
    t = t.double()
    return torch.sign(t) * torch.floor(t.abs() + 0.5)


def _roi_batch(rois: torch.Tensor, batch: int) -> torch.Tensor:
    b = rois[:, 0].long()  # float -> int truncates
    if b.numel() and (int(b.min()) < 0 or int(b.max()) >= batch):
        raise ValueError(f"ROI batch index out of range for a batch of {batch}")
    return b


def _roi_first_max(v1, i1, v2, i2):
    """Combine two (max, argmax) candidates as a row-major scan with ``>`` does: the larger value, on a
    tie the smaller flat index."""
    take2 = (v2 > v1) | ((v2 == v1) & (i2 < i1))
    return torch.where(take2, v2, v1), torch.where(take2, i2, i1)


def _roi_bit_length(e: torch.Tensor, levels: int) -> torch.Tensor:
    """floor(log2(e)) for e >= 1, exactly (e < 1 gives 0)."""
    k = torch.zeros_like(e)
    for lv in range(1, levels):
        k += (e >= (1 << lv)).long()
    return k


def _roi_shifted(t: torch.Tensor, s: int, dim: int, fill: float) -> torch.Tensor:
    """``t`` moved ``s`` places towards 0 along ``dim``, padded with ``fill`` (never read by a query)."""
    n = t.shape[dim]
    pad = torch.full_like(t.narrow(dim, 0, min(s, n)), fill)
    return torch.cat([t.narrow(dim, s, n - s), pad], dim) if s < n else pad


def _roi_rect_max(x, b, hs, he, ws, we, with_index: bool):
    """Max (and with ``with_index`` first argmax as flat ``h * W + w``) of ``x[b, :, hs:he, ws:we]`` for
    every ROI bin.

    ``b (R,)``, ``hs/he (R, PH)``, ``ws/we (R, PW)``; returns ``(R, C, PH, PW)`` values (0 for empty bins)
    and argmaxes (-1 for empty bins). A 2-D sparse table of power-of-two window maxima, channels last so
    that a lookup reads one contiguous row, answers every bin with four overlapping lookups: the cost does
    not depend on the bin sizes.
    """
    bsz, c, height, width = x.shape
    r, ph, pw = b.shape[0], hs.shape[1], ws.shape[1]
    eh, ew = (he - hs).clamp(min=0), (we - ws).clamp(min=0)
    lh = max(int(eh.max()) if eh.numel() else 1, 1).bit_length()
    lw = max(int(ew.max()) if ew.numel() else 1, 1).bit_length()
    v = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
    i = torch.arange(height * width, dtype=torch.int32, device=x.device)
    i = (
        i.view(1, height, width, 1).expand(bsz, height, width, c)
        if with_index
        else None
    )

    def combine(va, ia, s: int, dim: int):
        vb = _roi_shifted(va, s, dim, -math.inf)
        if ia is None:
            return torch.maximum(va, vb), None
        return _roi_first_max(va, ia, vb, _roi_shifted(ia, s, dim, 0))

    row = [(v, i)]
    for j in range(1, lw):
        row.append(combine(*row[-1], 1 << (j - 1), 2))
    levels = [row]
    for k in range(1, lh):
        levels.append([combine(va, ia, 1 << (k - 1), 1) for va, ia in levels[-1]])
    # (Lh, Lw, B, H, W, C)
    table_v = torch.stack([torch.stack([va for va, _ in lv]) for lv in levels])
    table_i = None
    if with_index:
        table_i = torch.stack([torch.stack([ia for _, ia in lv]) for lv in levels])

    kh = _roi_bit_length(eh, lh).view(r, ph, 1).expand(r, ph, pw)
    kw = _roi_bit_length(ew, lw).view(r, 1, pw).expand(r, ph, pw)
    h1 = hs.clamp(0, height - 1).view(r, ph, 1).expand(r, ph, pw)
    w1 = ws.clamp(0, width - 1).view(r, 1, pw).expand(r, ph, pw)
    h2 = (he.view(r, ph, 1) - (1 << kh)).clamp(0, height - 1)
    w2 = (we.view(r, 1, pw) - (1 << kw)).clamp(0, width - 1)
    # row of the flattened (Lh, Lw, B, H, W) table
    cell = ((kh * lw + kw) * bsz + b.view(r, 1, 1)) * height
    rows_v = table_v.view(-1, c)
    rows_i = table_i.view(-1, c) if with_index else None
    best_v = best_i = None
    for hh, ww in ((h1, w1), (h1, w2), (h2, w1), (h2, w2)):
        at = ((cell + hh) * width + ww).reshape(-1)
        cv = rows_v.index_select(0, at)  # (R * PH * PW, C)
        ci = rows_i.index_select(0, at) if with_index else None
        if best_v is None:
            best_v, best_i = cv, ci
        elif with_index:
            best_v, best_i = _roi_first_max(best_v, best_i, cv, ci)
        else:
            best_v = torch.maximum(best_v, cv)
    empty = ((eh.view(r, ph, 1) <= 0) | (ew.view(r, 1, pw) <= 0)).reshape(-1, 1)
    best_v = torch.where(empty, torch.zeros((), dtype=x.dtype, device=x.device), best_v)
    best_v = best_v.view(r, ph, pw, c).permute(0, 3, 1, 2).contiguous()
    if with_index:
        none = torch.full((), -1, dtype=best_i.dtype, device=x.device)
        best_i = torch.where(empty, none, best_i)
        best_i = best_i.view(r, ph, pw, c).permute(0, 3, 1, 2).contiguous()
    return best_v, best_i


def _roi_pool_bins(rois, scale: float, ph: int, pw: int, height: int, width: int):
    """Fast R-CNN's bins: ROI corners ``round(coord * scale)``, size ``max(end - start + 1, 1)``, bin p
    spans ``[floor(p * size / n), ceil((p + 1) * size / n))`` (float32) shifted by the start, clipped to
    the map."""
    f32 = torch.float32
    scaled = rois[:, 1:5].float() * torch.tensor(scale, dtype=f32)
    x1, y1, x2, y2 = _roi_round_half_away(scaled).long().unbind(1)
    bin_h = ((y2 - y1 + 1).clamp(min=1).to(f32) / ph).unsqueeze(1)
    bin_w = ((x2 - x1 + 1).clamp(min=1).to(f32) / pw).unsqueeze(1)
    p_h = torch.arange(ph, dtype=f32, device=rois.device)
    p_w = torch.arange(pw, dtype=f32, device=rois.device)
    hs = (torch.floor(p_h * bin_h).long() + y1.unsqueeze(1)).clamp(0, height)
    he = (torch.ceil((p_h + 1) * bin_h).long() + y1.unsqueeze(1)).clamp(0, height)
    ws = (torch.floor(p_w * bin_w).long() + x1.unsqueeze(1)).clamp(0, width)
    we = (torch.ceil((p_w + 1) * bin_w).long() + x1.unsqueeze(1)).clamp(0, width)
    return hs, he, ws, we


class _ROIPoolFn(torch.autograd.Function):
    """Max pooling over ROI bins; backward sends each top diff to its bin's first maximum (Caffe's
    argmax), nothing to the ROIs."""

    @staticmethod
    def forward(ctx, x, rois, ph: int, pw: int, scale: float):
        rois = rois.reshape(rois.shape[0], -1)
        b = _roi_batch(rois, x.shape[0])
        hs, he, ws, we = _roi_pool_bins(rois, scale, ph, pw, x.shape[2], x.shape[3])
        with_index = ctx.needs_input_grad[0]
        top, arg = _roi_rect_max(x, b, hs, he, ws, we, with_index=with_index)
        ctx.save_for_backward(b, arg)
        ctx.in_shape = x.shape
        return top

    @staticmethod
    def backward(ctx, grad):
        b, arg = ctx.saved_tensors
        bsz, c, h, w = ctx.in_shape
        size = bsz * c * h * w
        channel = torch.arange(c, device=grad.device).view(1, c, 1, 1)
        base = (b.view(-1, 1, 1, 1) * c + channel) * (h * w)
        target = torch.where(
            arg >= 0, base + arg, size
        )  # empty bins go to a spare slot
        out = torch.zeros(size + 1, dtype=grad.dtype, device=grad.device)
        out.index_add_(0, target.reshape(-1), grad.reshape(-1))
        return out[:size].view(ctx.in_shape), None, None, None, None


class ROIPooling(nn.Module):
    """Fast R-CNN's ROIPooling: rois ``(R, 5)`` = (batch index, x1, y1, x2, y2) -> ``(R, C, ph, pw)``."""

    def __init__(
        self, pooled_h: int, pooled_w: int, spatial_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.pooled_h, self.pooled_w, self.spatial_scale = (
            pooled_h,
            pooled_w,
            spatial_scale,
        )

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return _ROIPoolFn.apply(
            x, rois, self.pooled_h, self.pooled_w, self.spatial_scale
        )


class PSROIPooling(nn.Module):
    """R-FCN's position-sensitive average pooling: bin (ph, pw) of output channel d averages input
    channel ``(d * G + ph) * G + pw``. Bin sums come from a float64 summed-area table (autograd gives
    Caffe's ``top_diff / bin_area`` spread over the bin)."""

    def __init__(self, output_dim: int, group_size: int, spatial_scale: float) -> None:
        super().__init__()
        self.output_dim, self.group_size = output_dim, group_size
        self.spatial_scale = spatial_scale

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        g, d = self.group_size, self.output_dim
        bsz, c, height, width = x.shape
        rois = rois.reshape(rois.shape[0], -1)
        b = _roi_batch(rois, bsz)
        f32 = torch.float32
        scale = torch.tensor(self.spatial_scale, dtype=f32)
        rounded = _roi_round_half_away(rois[:, 1:5].float()).float()
        start_w, start_h = rounded[:, 0] * scale, rounded[:, 1] * scale
        end_w, end_h = (rounded[:, 2] + 1) * scale, (rounded[:, 3] + 1) * scale
        tenth = torch.tensor(0.1, dtype=f32)
        bin_w = (torch.maximum(end_w - start_w, tenth) / g).unsqueeze(1)
        bin_h = (torch.maximum(end_h - start_h, tenth) / g).unsqueeze(1)
        p = torch.arange(g, dtype=torch.float64, device=x.device)

        def edges(start, size, limit: int):
            # the GPU kernel's p * bin + start is one fused multiply-add: exact in float64, rounded once
            lo = (p * size.double() + start.double().unsqueeze(1)).float()
            hi = ((p + 1) * size.double() + start.double().unsqueeze(1)).float()
            return torch.floor(lo).long().clamp(0, limit), torch.ceil(hi).long().clamp(
                0, limit
            )

        hs, he = edges(start_h, bin_h, height)
        ws, we = edges(start_w, bin_w, width)
        sat = F.pad(x.double().cumsum(2).cumsum(3), (1, 0, 1, 0))  # (B, C, H+1, W+1)
        r = b.shape[0]
        dev = x.device
        ch = torch.arange(d, device=dev).view(d, 1, 1) * g + torch.arange(
            g, device=dev
        ).view(1, g, 1)
        ch = (ch * g + torch.arange(g, device=dev).view(1, 1, g)).unsqueeze(
            0
        )  # (1, D, G, G)
        bb = b.view(r, 1, 1, 1)
        h0, h1 = hs.view(r, 1, g, 1), he.view(r, 1, g, 1)
        w0, w1 = ws.view(r, 1, 1, g), we.view(r, 1, 1, g)
        total = (
            sat[bb, ch, h1, w1]
            - sat[bb, ch, h0, w1]
            - sat[bb, ch, h1, w0]
            + sat[bb, ch, h0, w0]
        )
        area = ((h1 - h0) * (w1 - w0)).to(torch.float64)
        empty = area <= 0
        mean = total / torch.where(empty, torch.ones_like(area), area)
        return torch.where(empty, torch.zeros_like(mean), mean).to(x.dtype)


class SmoothL1Loss(nn.Module):
    """py-faster-rcnn's SmoothL1Loss: ``sum(w_out * f(w_in * (a - b))) / num`` with
    ``f(d) = 0.5 * sigma^2 * d^2`` for ``|d| < 1 / sigma^2``, else ``|d| - 0.5 / sigma^2`` (in double, as
    the kernel; sigma^2 kept as a float32 value, as the layer). The weights (bottoms 2 and 3) get no
    gradient; both predictions and targets do."""

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        self.sigma = sigma
        self.sigma2 = struct.unpack("f", struct.pack("f", sigma * sigma))[0]

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, *weights: torch.Tensor
    ) -> torch.Tensor:
        sigma2 = self.sigma2
        d = a - b
        if weights:
            d = weights[0].detach() * d
        d64 = d.double()
        small = d64.abs() < 1.0 / sigma2
        err = torch.where(small, 0.5 * d64 * d64 * sigma2, d64.abs() - 0.5 / sigma2).to(
            a.dtype
        )
        if weights:
            err = weights[1].detach() * err
        return err.sum() / a.shape[0]


def _rpn_descending(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argsort()[::-1]``: an ascending sort reversed, so equal scores come latest index first (what
    numpy's sort gives where it is stable; NaN sorts last, so comes first)."""
    return torch.sort(scores, stable=True).indices.flip(0)


def _rpn_nms(boxes: torch.Tensor, threshold: float, limit: int) -> torch.Tensor:
    """Greedy NMS over ``boxes`` ``(R, 4)`` already in processing order, as py-faster-rcnn's ``gpu_nms``
    (its test default): areas count both edges, a later box is dropped when its float32 overlap with a kept
    one is above ``threshold``. Stops after ``limit`` kept boxes (<= 0: no limit), which gives the prefix the
    full pass would. Returns the kept rows in order."""
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    removed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    thr = torch.tensor(threshold, dtype=torch.float32)
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    keep: list[int] = []
    i = 0
    while i < boxes.shape[0] and (limit <= 0 or len(keep) < limit):
        keep.append(i)
        j = slice(i + 1, None)
        w = torch.fmax(
            torch.minimum(x2[i], x2[j]) - torch.maximum(x1[i], x1[j]) + 1, zero
        )
        h = torch.fmax(
            torch.minimum(y2[i], y2[j]) - torch.maximum(y1[i], y1[j]) + 1, zero
        )
        inter = w * h
        removed[j] |= inter / (area[i] + area[j] - inter) > thr
        left = (~removed[j]).nonzero()
        i = i + 1 + int(left[0]) if left.numel() else boxes.shape[0]
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _rpn_shifted_anchors(
    anchors: tuple[tuple[float, float, float, float], ...],
    stride: float,
    height: int,
    width: int,
) -> torch.Tensor:
    """The anchors at every feature position ``(H * W * A, 4)`` in float64: position-major, row by row, the
    ``A`` anchors of a position together (py-faster-rcnn's ``shifts`` + ``anchors`` broadcast)."""
    base = torch.tensor(anchors, dtype=torch.float64)
    sx = torch.arange(width, dtype=torch.float64) * stride
    sy = torch.arange(height, dtype=torch.float64) * stride
    gy, gx = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack([gx, gy, gx, gy], dim=-1).reshape(-1, 1, 4)
    return (base.unsqueeze(0) + shifts).reshape(-1, 4)


class ProposalLayer(nn.Module):
    """py-faster-rcnn's RPN ``ProposalLayer`` (``rpn.proposal_layer``): ``anchors`` (``generate_anchors``'
    boxes around the first feature position) at every position, moved by the predicted deltas, clipped to the
    image, boxes under ``min_size`` (at the input scale) dropped, the ``pre_nms_top_n`` best by foreground
    score kept, greedy NMS, the first ``post_nms_top_n`` of what survives. Bottoms: scores ``(1, 2A, H, W)``
    (background then foreground), deltas ``(1, 4A, H, W)``, ``im_info`` (height, width, scale). Tops: ROIs
    ``(R, 5)`` (batch index 0, x1, y1, x2, y2) and, with ``scores``, their scores ``(R, 1)``. Arithmetic in
    float32 as numpy does it on float32 blobs. ``delta_stds``/``delta_means``: R-FCN's OHEM recipe trains the
    RPN on normalised targets, so its training pass takes the deltas back first (``d * stds + means``)."""

    def __init__(
        self,
        feat_stride: float,
        anchors: tuple[tuple[float, float, float, float], ...],
        pre_nms_top_n: int = 6000,
        post_nms_top_n: int = 300,
        nms_thresh: float = 0.7,
        min_size: float = 16,
        scores: bool = False,
        delta_means: tuple[float, float, float, float] | None = None,
        delta_stds: tuple[float, float, float, float] | None = None,
    ) -> None:
        super().__init__()
        self.feat_stride, self.anchors = feat_stride, anchors
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n
        self.nms_thresh, self.min_size, self.scores = nms_thresh, min_size, scores
        self.delta_means, self.delta_stds = delta_means, delta_stds

    def shifted_anchors(self, height: int, width: int) -> torch.Tensor:
        """Anchors at every position ``(H * W * A, 4)`` (float32, as ``bbox_transform_inv`` casts them)."""
        return _rpn_shifted_anchors(
            self.anchors, self.feat_stride, height, width
        ).float()

    @torch.no_grad()
    def forward(
        self, scores: torch.Tensor, deltas: torch.Tensor, im_info: torch.Tensor
    ):
        if scores.shape[0] != 1:
            raise ValueError(
                f"ProposalLayer takes one image (py-faster-rcnn asserts it), got a batch of {scores.shape[0]}"
            )
        a = len(self.anchors)
        height, width = scores.shape[-2:]
        anchors = self.shifted_anchors(height, width).to(scores.device)
        fg = scores[:, a:].permute(0, 2, 3, 1).reshape(-1).float()
        d = deltas.permute(0, 2, 3, 1).reshape(-1, 4).float()
        if (
            self.delta_stds is not None
        ):  # numpy's in-place float32 *= and += of float64 lists
            stds = torch.tensor(self.delta_stds, dtype=torch.float64, device=d.device)
            means = torch.tensor(self.delta_means, dtype=torch.float64, device=d.device)
            d = ((d.double() * stds).float().double() + means).float()
        info = im_info.reshape(im_info.shape[0], -1)[0].float()
        w = anchors[:, 2] - anchors[:, 0] + 1.0
        h = anchors[:, 3] - anchors[:, 1] + 1.0
        cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
        px, py = d[:, 0] * w + cx, d[:, 1] * h + cy
        # C's expf (what numpy called before its SIMD exp, which differs in the last bit on ~40% of inputs):
        # the float64 exponential rounded once to float32
        pw = torch.exp(d[:, 2].double()).float() * w
        ph = torch.exp(d[:, 3].double()).float() * h
        zero = torch.zeros((), dtype=torch.float32, device=scores.device)
        xmax, ymax = info[1] - 1, info[0] - 1
        boxes = torch.stack(
            [
                torch.maximum(torch.minimum(px - 0.5 * pw, xmax), zero),
                torch.maximum(torch.minimum(py - 0.5 * ph, ymax), zero),
                torch.maximum(torch.minimum(px + 0.5 * pw, xmax), zero),
                torch.maximum(torch.minimum(py + 0.5 * ph, ymax), zero),
            ],
            dim=1,
        )
        least = self.min_size * info[2]
        big = (boxes[:, 2] - boxes[:, 0] + 1 >= least) & (
            boxes[:, 3] - boxes[:, 1] + 1 >= least
        )
        boxes, fg = boxes[big], fg[big]
        order = _rpn_descending(fg)
        if self.pre_nms_top_n > 0:
            order = order[: self.pre_nms_top_n]
        boxes, fg = boxes[order], fg[order]
        order = _rpn_descending(fg)  # the NMS sorts again: ties flip back
        kept = order[_rpn_nms(boxes[order], self.nms_thresh, self.post_nms_top_n)]
        rois = torch.cat([torch.zeros_like(boxes[kept, :1]), boxes[kept]], dim=1)
        return (rois, fg[kept].unsqueeze(1)) if self.scores else rois


def _rpn_overlaps(boxes: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """py-faster-rcnn's ``bbox_overlaps`` (utils/bbox.pyx) in float64: ``(N, 4)`` x ``(K, 4)`` -> ``(N, K)``
    intersection over union, sides counting both edges; 0 where the boxes do not meet."""
    b, q = boxes.double().unsqueeze(1), query.double().unsqueeze(0)
    iw = torch.minimum(b[..., 2], q[..., 2]) - torch.maximum(b[..., 0], q[..., 0]) + 1
    ih = torch.minimum(b[..., 3], q[..., 3]) - torch.maximum(b[..., 1], q[..., 1]) + 1
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    area_q = (q[..., 2] - q[..., 0] + 1) * (q[..., 3] - q[..., 1] + 1)
    inter = iw * ih
    meet = (iw > 0) & (ih > 0)
    return torch.where(
        meet, inter / torch.where(meet, area_b + area_q - inter, 1.0), 0.0
    )


def _rpn_targets(ex: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """py-faster-rcnn's ``bbox_transform``: the deltas taking boxes ``ex`` to ``gt`` (``(N, 4)`` each), in the
    dtypes numpy would use for them (the caller passes float64 or float32 tensors)."""
    dtype = torch.promote_types(ex.dtype, gt.dtype)
    ew, eh = ex[:, 2] - ex[:, 0] + 1.0, ex[:, 3] - ex[:, 1] + 1.0
    ecx, ecy = ex[:, 0] + 0.5 * ew, ex[:, 1] + 0.5 * eh
    gw, gh = gt[:, 2] - gt[:, 0] + 1.0, gt[:, 3] - gt[:, 1] + 1.0
    gcx, gcy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    ew, eh, ecx, ecy = (t.to(dtype) for t in (ew, eh, ecx, ecy))
    gw, gh, gcx, gcy = (t.to(dtype) for t in (gw, gh, gcx, gcy))
    return torch.stack(
        [(gcx - ecx) / ew, (gcy - ecy) / eh, torch.log(gw / ew), torch.log(gh / eh)],
        dim=1,
    )


def _rpn_ground_truth(gt_boxes: torch.Tensor) -> torch.Tensor:
    """Ground-truth rows ``(G, 5)`` on the CPU, from py-faster-rcnn's ``(G, 5)`` or R-FCN's ``(G, 5, 1, 1)``."""
    g = gt_boxes.detach()
    rows = g.reshape(g.shape[0], -1) if g.dim() == 4 else g.reshape(-1, g.shape[-1])
    return rows.cpu()


def _rpn_subsample(index: torch.Tensor, keep: int) -> torch.Tensor:
    """``npr.choice(index, size=keep, replace=False)``: ``keep`` of them at random, in random order (torch's
    generator; numpy's own stream is not reproduced)."""
    return index[torch.randperm(len(index))[:keep]]


class AnchorTargetLayer(nn.Module):
    """py-faster-rcnn's ``rpn.anchor_target_layer.AnchorTargetLayer`` (training): every anchor inside the image
    (``allowed_border``) labelled 1 (the best anchor of each ground truth, and overlaps >= ``positive``), 0
    (overlap < ``negative``, before the positives, as ``RPN_CLOBBER_POSITIVES`` False) or -1; positives
    subsampled to ``fg_fraction * batch``, negatives to the rest of ``batch`` (at random); regression targets
    of every inside anchor to its best ground truth; inside weights 1 on positives; outside weights
    1 / (labelled anchors). Bottoms: scores ``(1, 2A, H, W)`` (for H and W), ground truth ``(G, 5)`` (R-FCN:
    ``(G, 5, 1, 1)``), ``im_info``. Tops: labels ``(1, 1, A*H, W)``, targets, inside and outside weights
    ``(1, 4A, H, W)``. ``target_means``/``target_stds``: R-FCN's OHEM recipe normalises the targets."""

    def __init__(
        self,
        feat_stride: float,
        anchors: tuple[tuple[float, float, float, float], ...],
        allowed_border: float = 0,
        positive: float = 0.7,
        negative: float = 0.3,
        fg_fraction: float = 0.5,
        batch: int = 256,
        target_means: tuple[float, float, float, float] | None = None,
        target_stds: tuple[float, float, float, float] | None = None,
    ) -> None:
        super().__init__()
        self.feat_stride, self.anchors = feat_stride, anchors
        self.allowed_border = allowed_border
        self.positive, self.negative = positive, negative
        self.fg_fraction, self.batch = fg_fraction, batch
        self.target_means, self.target_stds = target_means, target_stds

    @torch.no_grad()
    def forward(
        self,
        scores: torch.Tensor,
        gt_boxes: torch.Tensor,
        im_info: torch.Tensor,
        *_: torch.Tensor,
    ):
        if scores.shape[0] != 1:
            raise ValueError(
                f"AnchorTargetLayer takes one image (py-faster-rcnn asserts it), got {scores.shape[0]}"
            )
        device = scores.device
        height, width = scores.shape[-2:]
        a = len(self.anchors)
        gt = _rpn_ground_truth(gt_boxes)
        if gt.shape[0] == 0 or gt.shape[1] < 4:
            raise ValueError(
                f"AnchorTargetLayer needs ground-truth boxes (G, 5), got {tuple(gt_boxes.shape)}"
            )
        info = im_info.detach().reshape(im_info.shape[0], -1)[0].cpu().double()
        anchors = _rpn_shifted_anchors(self.anchors, self.feat_stride, height, width)
        border = self.allowed_border
        inside = (
            (anchors[:, 0] >= -border)
            & (anchors[:, 1] >= -border)
            & (anchors[:, 2] < info[1] + border)
            & (anchors[:, 3] < info[0] + border)
        ).nonzero()[:, 0]
        overlaps = _rpn_overlaps(anchors[inside], gt[:, :4])
        best, argmax = overlaps.max(dim=1)  # first maximum, as numpy's argmax
        labels = torch.full((len(inside),), -1.0)
        labels[best < self.negative] = 0
        gt_best = overlaps.max(dim=0).values
        # every anchor tying a ground truth's best overlap (all of them at 0 for a box no anchor meets)
        labels[(overlaps == gt_best).any(dim=1)] = 1
        labels[best >= self.positive] = 1
        fg = (labels == 1).nonzero()[:, 0]
        most_fg = int(self.fg_fraction * self.batch)
        if len(fg) > most_fg:
            labels[_rpn_subsample(fg, len(fg) - most_fg)] = -1
        bg = (labels == 0).nonzero()[:, 0]
        most_bg = self.batch - int((labels == 1).sum())
        if len(bg) > most_bg:
            labels[_rpn_subsample(bg, len(bg) - most_bg)] = -1
        targets = _rpn_targets(anchors[inside], gt[argmax, :4]).float()
        if (
            self.target_stds is not None
        ):  # numpy's in-place float32 -= and /= of float64 lists
            means = torch.tensor(self.target_means, dtype=torch.float64)
            stds = torch.tensor(self.target_stds, dtype=torch.float64)
            targets = ((targets.double() - means).float().double() / stds).float()
        inside_w = torch.zeros(len(inside), 4)
        inside_w[labels == 1] = 1.0
        outside_w = torch.zeros(len(inside), 4)
        outside_w[labels >= 0] = float(1.0 / (labels >= 0).sum().double())
        total = len(anchors)

        def unmap(values: torch.Tensor, fill: float) -> torch.Tensor:
            out = torch.full((total, *values.shape[1:]), fill, dtype=torch.float32)
            out[inside] = values.float()
            return out

        def planes(values: torch.Tensor, per_anchor: int) -> torch.Tensor:
            v = values.reshape(1, height, width, a * per_anchor).permute(0, 3, 1, 2)
            return v.contiguous().to(device)

        label_top = planes(unmap(labels, -1.0), 1).reshape(1, 1, a * height, width)
        return (
            label_top,
            planes(unmap(targets, 0.0), 4),
            planes(unmap(inside_w, 0.0), 4),
            planes(unmap(outside_w, 0.0), 4),
        )


class ProposalTargetLayer(nn.Module):
    """py-faster-rcnn's ``rpn.proposal_target_layer.ProposalTargetLayer`` (training), with its end-to-end
    settings: the proposals plus the ground-truth boxes, ``fg_fraction * batch`` foreground ROIs (overlap >=
    ``fg_thresh``) and background ones (overlap in [``bg_lo``, ``bg_hi``)) sampled at random, labelled (0 for
    background), class-specific regression targets normalised by ``means``/``stds``. Bottoms: ROIs
    ``(R, 5)``, ground truth ``(G, 5)`` (x1, y1, x2, y2, class). Tops: ROIs ``(S, 5)``, labels ``(S,)``, targets,
    inside and outside weights ``(S, 4 * num_classes)``. R-FCN's variant: ``batch`` -1 keeps every ROI within
    the thresholds (its OHEM recipe), ``agnostic`` puts every foreground target in columns 4-7 (its
    ``cfg.TRAIN.AGNOSTIC``), ``legacy_4d`` gives the tops two more axes of 1 (its reshapes)."""

    def __init__(
        self,
        num_classes: int,
        batch: int = 128,
        fg_fraction: float = 0.25,
        fg_thresh: float = 0.5,
        bg_hi: float = 0.5,
        bg_lo: float = 0.0,
        means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
        stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2),
        agnostic: bool = False,
        legacy_4d: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.batch = num_classes, batch
        self.fg_fraction, self.fg_thresh = fg_fraction, fg_thresh
        self.bg_hi, self.bg_lo, self.means, self.stds = bg_hi, bg_lo, means, stds
        self.agnostic, self.legacy_4d = agnostic, legacy_4d

    @torch.no_grad()
    def forward(self, rois: torch.Tensor, gt_boxes: torch.Tensor):
        device = rois.device
        gt = _rpn_ground_truth(gt_boxes).float()
        if gt.shape[0] == 0 or gt.shape[1] < 5:
            raise ValueError(
                f"ProposalTargetLayer needs ground-truth boxes (G, 5), got {tuple(gt_boxes.shape)}"
            )
        proposals = rois.detach().reshape(-1, 5).float().cpu()
        all_rois = torch.cat(
            [proposals, torch.cat([torch.zeros(len(gt), 1), gt[:, :4]], dim=1)]
        )
        if bool((all_rois[:, 0] != 0).any()):
            raise ValueError(
                "ProposalTargetLayer takes one image (py-faster-rcnn asserts ROI batch index 0)"
            )
        overlaps = _rpn_overlaps(all_rois[:, 1:5], gt[:, :4])
        best, assignment = overlaps.max(dim=1)
        labels = gt[assignment, 4]
        every = self.batch == -1  # np.inf ROIs per image: all of them
        per_image = len(all_rois) if every else self.batch
        # np.round: halves to even, as Python's round
        fg_per_image = len(all_rois) if every else round(self.fg_fraction * per_image)
        fg = (best >= self.fg_thresh).nonzero()[:, 0]
        fg_count = int(min(fg_per_image, len(fg)))
        fg = _rpn_subsample(fg, fg_count)
        bg = ((best < self.bg_hi) & (best >= self.bg_lo)).nonzero()[:, 0]
        bg = _rpn_subsample(bg, int(min(per_image - fg_count, len(bg))))
        keep = torch.cat([fg, bg])
        labels = labels[keep].clone()
        labels[fg_count:] = 0
        kept = all_rois[keep]
        targets = _rpn_targets(
            kept[:, 1:5], gt[assignment[keep], :4]
        )  # float32, as numpy on float32 rows
        mean = torch.tensor(self.means, dtype=torch.float64)
        std = torch.tensor(self.stds, dtype=torch.float64)
        targets = ((targets.double() - mean) / std).float()
        cls = labels.long()
        bbox = torch.zeros(len(keep), 4 * self.num_classes)
        inside_w = torch.zeros_like(bbox)
        for i in (cls > 0).nonzero()[:, 0].tolist():
            c = 1 if self.agnostic else int(cls[i])
            bbox[i, 4 * c : 4 * c + 4] = targets[i]
            inside_w[i, 4 * c : 4 * c + 4] = 1.0
        outside_w = (inside_w > 0).float()
        tops = (kept, labels, bbox, inside_w, outside_w)
        if self.legacy_4d:
            tops = tuple(t.reshape(len(keep), -1, 1, 1) for t in tops)
        return tuple(t.to(device) for t in tops)
