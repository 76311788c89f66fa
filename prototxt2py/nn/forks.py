"""Layers of Caffe forks found in published nets, each as its fork's source computes it.

SSD (weiliu89/caffe): Permute, PriorBox, DetectionOutput. PSPNet/DeepLab: Interp, PSPNet's BN. SegNet:
max-unpooling Upsample, SegNet's BN. Faster R-CNN / R-FCN: ROIPooling, PSROIPooling, SmoothL1Loss.
ShuffleNet's ShuffleChannel (2-D blobs; ``nn.ChannelShuffle`` covers the rest) and SENet ports' Axpy.
The quirks are kept: PriorBox sizes are float32 values with edges computed in double, ROI corners round
half away from zero and a bin's maximum is its first in row-major order, SegNet's unpooling lets a later
mask hit overwrite an earlier one but sends every bottom its top's gradient.
"""

import math
import struct

import torch
import torch.nn.functional as F
from torch import nn


# -- SSD -------------------------------------------------------------------------------------------------
class Permute(nn.Module):
    """SSD's Permute: ``dims`` is the full axis order (listed axes first, then the others in order)."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims).contiguous()


class PriorBox(nn.Module):
    """SSD's PriorBox: default boxes ``(1, 2, H * W * num_priors * 4)`` from the sizes of the feature map
    (bottom 0) and of the image (bottom 1, or ``img_h``/``img_w``). No gradient.

    ``aspect_ratios`` are the layer's derived list (1 first, ``1/ar`` after ``ar`` with flip);
    ``min_sizes``/``max_sizes`` are the integers the layer truncates them to; ``step_h``/``step_w`` 0 =
    image size / feature map size; ``reduce_boxes`` (MobileNet-SSD) halves the first box of each min size.
    """

    def __init__(
        self,
        min_sizes: tuple[int, ...],
        max_sizes: tuple[int, ...] = (),
        aspect_ratios: tuple[float, ...] = (1.0,),
        clip: bool = False,
        variance: tuple[float, ...] = (0.1,),
        img_h: int = 0,
        img_w: int = 0,
        step_h: float = 0.0,
        step_w: float = 0.0,
        offset: float = 0.5,
        reduce_boxes: bool = False,
    ) -> None:
        super().__init__()
        self.min_sizes, self.max_sizes = min_sizes, max_sizes
        self.aspect_ratios, self.clip, self.variance = aspect_ratios, clip, variance
        self.img_h, self.img_w = img_h, img_w
        self.step_h, self.step_w, self.offset = step_h, step_w, offset
        self.reduce_boxes = reduce_boxes

    def priors(
        self, layer_h: int, layer_w: int, img_h: int, img_w: int
    ) -> torch.Tensor:
        """The boxes ``(xmin, ymin, xmax, ymax)`` of every cell (row-major) and prior, then variances.
        Box sizes and centres are float32 values, edges are computed in double (as the layer)."""
        sizes = []  # (width, height) per prior, in Caffe's order
        for s, m in enumerate(self.min_sizes):
            first = m / 2.0 if self.reduce_boxes else float(m)
            sizes.append((first, first))
            if self.max_sizes:
                side = math.sqrt(m * self.max_sizes[s])
                sizes.append((side, side))
            for ar in self.aspect_ratios:
                if abs(ar - 1.0) >= 1e-6:
                    sizes.append((m * math.sqrt(ar), m / math.sqrt(ar)))
        f32 = torch.float32
        wh = torch.tensor(sizes, dtype=f32).double()  # (P, 2)
        if self.step_w:
            step_w = torch.tensor(self.step_w, dtype=f32)
            step_h = torch.tensor(self.step_h, dtype=f32)
        else:  # float(image size) / feature map size, in float
            step_w = torch.tensor(img_w, dtype=f32) / layer_w
            step_h = torch.tensor(img_h, dtype=f32) / layer_h
        offset = torch.tensor(self.offset, dtype=f32)
        cx = (torch.arange(layer_w, dtype=f32) + offset) * step_w
        cy = (torch.arange(layer_h, dtype=f32) + offset) * step_h
        cx = cx.double().view(1, layer_w, 1)
        cy = cy.double().view(layer_h, 1, 1)
        half_w, half_h = wh[:, 0] / 2.0, wh[:, 1] / 2.0
        edges = torch.broadcast_tensors(
            (cx - half_w) / img_w,
            (cy - half_h) / img_h,
            (cx + half_w) / img_w,
            (cy + half_h) / img_h,
        )
        boxes = torch.stack(edges, dim=-1).to(f32)  # (H, W, P, 4)
        if self.clip:
            boxes = boxes.clamp(0.0, 1.0)
        if len(self.variance) == 4:
            variance = torch.tensor(self.variance, dtype=f32)
            variance = variance.expand(boxes.shape[:-1] + (4,))
        else:
            variance = torch.full(boxes.shape, self.variance[0], dtype=f32)
        return torch.stack([boxes.reshape(-1), variance.reshape(-1)]).unsqueeze(0)

    def forward(self, feature: torch.Tensor, *image: torch.Tensor) -> torch.Tensor:
        layer_h, layer_w = (tuple(feature.shape) + (1, 1, 1, 1))[2:4]
        if self.img_h:
            img_h, img_w = self.img_h, self.img_w
        else:
            img_h, img_w = (tuple(image[0].shape) + (1, 1, 1, 1))[2:4]
        return self.priors(layer_h, layer_w, img_h, img_w).to(feature.device)


def _ssd_box_size(b: torch.Tensor) -> torch.Tensor:
    """SSD's ``BBoxSize`` of normalised boxes: 0 for inverted boxes."""
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)


def _ssd_jaccard(b: torch.Tensor) -> torch.Tensor:
    """Pairwise SSD ``JaccardOverlap`` (normalised) of boxes ``(..., K, 4)`` -> ``(..., K, K)``."""
    p, q = b.unsqueeze(-2), b.unsqueeze(-3)
    disjoint = (q[..., 0] > p[..., 2]) | (q[..., 2] < p[..., 0])
    disjoint = disjoint | (q[..., 1] > p[..., 3]) | (q[..., 3] < p[..., 1])
    iw = torch.minimum(p[..., 2], q[..., 2]) - torch.maximum(p[..., 0], q[..., 0])
    ih = torch.minimum(p[..., 3], q[..., 3]) - torch.maximum(p[..., 1], q[..., 1])
    inter = iw * ih
    size = _ssd_box_size(b)
    union = size.unsqueeze(-1) + size.unsqueeze(-2) - inter
    hit = ~disjoint & (iw > 0) & (ih > 0)
    safe = torch.where(hit, union, torch.ones_like(union))
    return torch.where(hit, inter / safe, torch.zeros_like(inter))


class DetectionOutput(nn.Module):
    """SSD's DetectionOutput: decode loc against the priors, per-class NMS, ``keep_top_k`` per image;
    rows ``[image, label, score, xmin, ymin, xmax, ymax]`` grouped by image, then label, then score, as
    ``(1, 1, kept, 7)``. No gradient (Caffe has no backward).

    ``code_type`` is "CORNER", "CENTER_SIZE" or "CORNER_SIZE"; ``confidence_threshold`` None lets every
    score pass; ``top_k`` -1 = no limit before NMS. ``keep_top_k`` ranks kept boxes with a stable sort
    (Caffe's ``std::sort`` leaves the order of exactly equal scores unspecified)."""

    def __init__(
        self,
        num_classes: int,
        share_location: bool = True,
        background_label_id: int = 0,
        code_type: str = "CORNER",
        variance_encoded_in_target: bool = False,
        keep_top_k: int = -1,
        confidence_threshold: float | None = None,
        nms_threshold: float = 0.3,
        eta: float = 1.0,
        top_k: int = -1,
    ) -> None:
        super().__init__()
        if code_type not in ("CORNER", "CENTER_SIZE", "CORNER_SIZE"):
            raise ValueError(f"unknown code_type {code_type}")
        self.num_classes, self.share_location = num_classes, share_location
        self.background_label_id, self.code_type = background_label_id, code_type
        self.variance_encoded_in_target = variance_encoded_in_target
        self.keep_top_k, self.confidence_threshold = keep_top_k, confidence_threshold
        self.nms_threshold, self.eta, self.top_k = nms_threshold, eta, top_k

    def decode(
        self, loc: torch.Tensor, prior: torch.Tensor, var: torch.Tensor
    ) -> torch.Tensor:
        """SSD's ``DecodeBBox`` for loc ``(..., P, 4)`` against priors/variances ``(P, 4)``, in float32
        as the layer (decoded boxes stay unclipped)."""
        if self.variance_encoded_in_target:
            var = torch.ones_like(var)
        if self.code_type == "CORNER":
            return prior + var * loc
        pw = prior[:, 2] - prior[:, 0]
        ph = prior[:, 3] - prior[:, 1]
        if self.code_type == "CORNER_SIZE":
            return prior + var * loc * torch.stack([pw, ph, pw, ph], dim=-1)
        pcx = ((prior[:, 0] + prior[:, 2]).double() / 2.0).float()
        pcy = ((prior[:, 1] + prior[:, 3]).double() / 2.0).float()
        cx = (var[:, 0] * loc[..., 0] * pw + pcx).double()
        cy = (var[:, 1] * loc[..., 1] * ph + pcy).double()
        # ``float decode_bbox_width = exp(...) * prior_width``: the product is rounded to float
        w = (torch.exp((var[:, 2] * loc[..., 2]).double()) * pw.double()).float().double()
        h = (torch.exp((var[:, 3] * loc[..., 3]).double()) * ph.double()).float().double()
        corners = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
        return torch.stack(corners, dim=-1).float()

    def nms(
        self, boxes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SSD's ``ApplyNMSFast`` for all classes at once: boxes ``(C, P, 4)``, scores ``(C, P)``.

        Returns candidate indices ``(C, K)`` in descending score order (stable, as ``std::stable_sort``)
        and a ``(C, K)`` mask of the kept ones. The greedy pass is sequential over the K ranks only,
        vectorised over classes; the adaptive threshold (``eta < 1``) is kept per class."""
        threshold_min = self.confidence_threshold
        if threshold_min is None:
            threshold_min = -3.4028234663852886e38  # -FLT_MAX
        k = scores.shape[1] if self.top_k < 0 else min(self.top_k, scores.shape[1])
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        valid = scores.gather(1, order).double() > threshold_min
        cand = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
        overlap = _ssd_jaccard(cand)  # (C, K, K)
        keep = torch.zeros_like(valid)
        threshold = torch.full(
            (scores.shape[0],), self.nms_threshold, dtype=torch.float32
        )
        eta = torch.tensor(self.eta, dtype=torch.float32)
        for j in range(k):
            near = overlap[:, j, :j] > threshold.unsqueeze(1)
            suppressed = (keep[:, :j] & near).any(dim=1)
            kept = valid[:, j] & ~suppressed
            keep[:, j] = kept
            if self.eta < 1:
                shrink = kept & (threshold > 0.5)
                threshold = torch.where(shrink, threshold * eta, threshold)
        return order, keep

    @torch.no_grad()
    def forward(
        self,
        loc: torch.Tensor,
        conf: torch.Tensor,
        prior: torch.Tensor,
        *_: torch.Tensor,
    ) -> torch.Tensor:
        device = loc.device
        n = loc.shape[0]
        p = prior.shape[2] // 4
        num_loc = 1 if self.share_location else self.num_classes
        loc = loc.detach().float().reshape(n, p, num_loc, 4).transpose(1, 2).cpu()
        conf = (
            conf.detach().float().reshape(n, p, self.num_classes).transpose(1, 2).cpu()
        )
        prior = prior.detach().float().reshape(2, p, 4).cpu()
        labels = [c for c in range(self.num_classes) if c != self.background_label_id]
        classes = torch.tensor(labels, dtype=torch.long)
        rows = []
        for i in range(n):
            decoded = self.decode(loc[i], prior[0], prior[1])  # (L, P, 4)
            if self.share_location:
                boxes = decoded.expand(len(classes), -1, -1)
            else:
                boxes = decoded[classes]
            scores = conf[i][classes]
            order, keep = self.nms(boxes, scores)
            ci, rank = keep.nonzero(
                as_tuple=True
            )  # class-major, score order in a class
            idx = order[ci, rank]
            label, score, box_of = classes[ci], scores[ci, idx], boxes[ci, idx]
            if self.keep_top_k > -1 and len(idx) > self.keep_top_k:
                ranked = torch.sort(score, descending=True, stable=True).indices
                top = ranked[: self.keep_top_k]
                top = top[
                    torch.argsort(label[top], stable=True)
                ]  # std::map: labels ascending
                label, score, box_of = label[top], score[top], box_of[top]
            image = torch.full_like(score, float(i))
            head = torch.stack([image, label.float(), score], dim=1)
            rows.append(torch.cat([head, box_of], dim=1))
        out = torch.cat(rows) if rows else torch.zeros(0, 7)
        if (
            len(out) == 0
        ):  # Caffe's "no detections": one row of -1 per image, image id first
            out = torch.full((n, 7), -1.0)
            out[:, 0] = torch.arange(n, dtype=torch.float32)
        return out.view(1, 1, -1, 7).to(device)


# -- PSPNet / DeepLab: Interp ------------------------------------------------------------------------------
class Interp(nn.Module):
    """PSPNet's Interp: crop by ``-pad_beg``/``-pad_end`` (pads are <= 0), then bilinear resize with
    aligned corners (torch's ``align_corners=True`` is the layer's float32 source coordinate) to ``size``,
    or to the cropped size shrunk ``(s - 1) // shrink_factor + 1`` then zoomed ``s + (s - 1)(zoom - 1)``.
    """

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        zoom_factor: int = 1,
        shrink_factor: int = 1,
        pad_beg: int = 0,
        pad_end: int = 0,
    ) -> None:
        super().__init__()
        self.size, self.zoom_factor, self.shrink_factor = (
            size,
            zoom_factor,
            shrink_factor,
        )
        self.pad_beg, self.pad_end = pad_beg, pad_end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_eff = x.shape[2] + self.pad_beg + self.pad_end
        w_eff = x.shape[3] + self.pad_beg + self.pad_end
        if self.size is not None:
            h, w = self.size
        else:
            s, z = self.shrink_factor, self.zoom_factor
            h, w = (h_eff - 1) // s + 1, (w_eff - 1) // s + 1
            h, w = h + (h - 1) * (z - 1), w + (w - 1) * (z - 1)
        b = -self.pad_beg
        x = x[:, :, b : b + h_eff, b : b + w_eff]
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


# -- SegNet: Upsample ----------------------------------------------------------------------------------------
class _SegNetUnpoolFn(torch.autograd.Function):
    """SegNet's unpooling: top = 0, then ``top[mask[i]] = x[i]`` in increasing i (a later hit
    overwrites); backward gives every bottom element ``top_diff[mask[i]]`` (Caffe's gather)."""

    @staticmethod
    def forward(ctx, x, mask, out_h: int, out_w: int):
        n, c, h, w = x.shape
        idx = mask.reshape(
            n, c, h * w
        ).long()  # float -> int truncates, as static_cast<int>
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= out_h * out_w):
            raise ValueError(
                f"Upsample mask index out of range for a {out_h}x{out_w} top: check that the "
                "scale matches the pooling layer that made the mask"
            )
        pos = torch.arange(h * w, device=x.device).expand(n, c, h * w)
        winner = torch.full(
            (n, c, out_h * out_w), -1, dtype=torch.long, device=x.device
        )
        winner = winner.scatter_reduce(2, idx, pos, reduce="amax")
        flat = x.reshape(n, c, h * w)
        picked = flat.gather(2, winner.clamp(min=0))
        top = torch.where(winner >= 0, picked, torch.zeros((), dtype=x.dtype))
        ctx.save_for_backward(idx)
        ctx.in_shape = x.shape
        return top.view(n, c, out_h, out_w)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        n, c = idx.shape[:2]
        return (
            grad.reshape(n, c, -1).gather(2, idx).view(ctx.in_shape),
            None,
            None,
            None,
        )


class SegNetUpsample(nn.Module):
    """SegNet's Upsample: with a mask (bottom 1) max-unpooling to ``upsample_h`` x ``upsample_w`` (0:
    ``in * scale - pad_out``); without one (YOLO ports) a nearest repeat by the integer scales."""

    def __init__(
        self,
        scale_h: int = 2,
        scale_w: int = 2,
        upsample_h: int = 0,
        upsample_w: int = 0,
        pad_out_h: bool = False,
        pad_out_w: bool = False,
    ) -> None:
        super().__init__()
        self.scale_h, self.scale_w = scale_h, scale_w
        self.upsample_h, self.upsample_w = upsample_h, upsample_w
        self.pad_out_h, self.pad_out_w = pad_out_h, pad_out_w

    def forward(self, x: torch.Tensor, *mask: torch.Tensor) -> torch.Tensor:
        if not mask:
            x = x.repeat_interleave(self.scale_h, dim=2)
            return x.repeat_interleave(self.scale_w, dim=3)
        if self.upsample_h:
            h, w = self.upsample_h, self.upsample_w
        else:
            h = x.shape[2] * self.scale_h - int(self.pad_out_h)
            w = x.shape[3] * self.scale_w - int(self.pad_out_w)
        return _SegNetUnpoolFn.apply(x, mask[0], h, w)


# -- Faster R-CNN / R-FCN: ROIPooling, PSROIPooling, SmoothL1Loss -------------------------------------------
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


# -- PSPNet / SegNet: BN -----------------------------------------------------------------------------------
class SegNetBN(nn.Module):
    """SegNet's BN, blobs ``scale``/``shift`` of shape ``(1, C, 1, 1)``: INFERENCE mode is
    ``x * scale + shift`` (statistics folded in); LEARN normalises with the batch mean and
    ``E[x^2] - E[x]^2`` (+1e-9) in any phase, and returns them as tops 2 and 3 when asked."""

    def __init__(self, channels: int, learn: bool = False, num_tops: int = 1) -> None:
        super().__init__()
        self.learn, self.num_tops = learn, num_tops
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        per_channel = (1, -1) + (1,) * (x.dim() - 2)
        scale, shift = self.scale.reshape(per_channel), self.shift.reshape(per_channel)
        if not self.learn:
            return x * scale + shift
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        var = (x * x).mean(dims, keepdim=True) - mean * mean
        y = (x - mean) / torch.sqrt(var + 1e-9) * scale + shift
        stats = (mean.reshape(self.shift.shape), var.reshape(self.shift.shape))
        return y if self.num_tops == 1 else (y, *stats[: self.num_tops - 1])


class PSPNetBN(nn.Module):
    """PSPNet's BN: blobs ``scale``, ``shift`` (trained) and ``mean``, ``variance`` (buffers), all
    ``(1, C, 1, 1)``. Stored statistics in eval mode or when ``frozen`` (then only the bottom gets a
    gradient); otherwise batch statistics (biased variance), with the stored ones updated as
    ``stat = (1 - momentum) * batch + momentum * stat``."""

    def __init__(
        self,
        channels: int,
        frozen: bool = False,
        momentum: float = 0.9,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.frozen, self.momentum, self.eps = frozen, momentum, eps
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("variance", torch.zeros(1, channels, 1, 1))

    def uses_global_stats(self) -> bool:
        """Whether the stored statistics are used: frozen, or eval mode."""
        return self.frozen or not self.training

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(multiplier, offset)`` with ``x * multiplier + offset`` equal to the
        output with stored statistics up to rounding, for folding into a preceding
        convolution; differentiable with respect to ``scale`` and ``shift`` unless frozen,
        as the forward pass is. Raises when batch statistics are used."""
        if not self.uses_global_stats():
            raise RuntimeError(
                "BN uses batch statistics here (training, not frozen): it has no fixed affine form"
            )
        scale, shift = self.scale.reshape(-1), self.shift.reshape(-1)
        if self.frozen:
            scale, shift = scale.detach(), shift.detach()
        multiplier = (self.variance.reshape(-1) + self.eps).pow(-0.5) * scale
        return multiplier, shift - self.mean.reshape(-1) * multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_channel = (1, -1) + (1,) * (x.dim() - 2)
        scale, shift = self.scale.reshape(per_channel), self.shift.reshape(per_channel)
        if self.frozen:
            scale, shift = scale.detach(), shift.detach()
        if self.frozen or not self.training:
            mean, var = (
                self.mean.reshape(per_channel),
                self.variance.reshape(per_channel),
            )
        else:
            dims = [0, *range(2, x.dim())]
            mean = x.mean(dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dims, keepdim=True)
            m = self.momentum
            with torch.no_grad():
                self.mean.copy_((1 - m) * mean.reshape(self.mean.shape) + m * self.mean)
                new_var = (1 - m) * var.reshape(self.variance.shape) + m * self.variance
                self.variance.copy_(new_var)
        return (x - mean) * (var + self.eps).pow(-0.5) * scale + shift


# -- ShuffleNet, SENet ports: ShuffleChannel, Axpy ---------------------------------------------------------
class ShuffleChannel(nn.Module):
    """ShuffleNet's channel shuffle for blobs ``nn.ChannelShuffle`` refuses (two axes): the ``(g, C/g)``
    channel grid transposed."""

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        grid = x.reshape(n, self.group, c // self.group, *x.shape[2:])
        return grid.transpose(1, 2).reshape(x.shape)


class Axpy(nn.Module):
    """SENet ports' Axpy: ``a * x + y`` with a per-channel scale ``a (N, C, 1, 1)``."""

    def forward(
        self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return a.reshape(*a.shape[:2], *([1] * (x.dim() - 2))) * x + y
