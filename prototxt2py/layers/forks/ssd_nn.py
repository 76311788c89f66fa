"""SSD's torch modules (weiliu89/caffe ``ssd``): Permute, PriorBox, DetectionOutput, DetectionEvaluate,
MultiBoxLoss.

PriorBox sizes are float32 values with edges computed in double, as the C++ does.
"""

import math

import torch
from torch import nn


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


def _ssd_box_size(b: torch.Tensor, normalized: bool = True) -> torch.Tensor:
    """SSD's ``BBoxSize``: 0 for inverted boxes; pixel boxes (not normalised) count both edges."""
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    if not normalized:
        w, h = w + 1, h + 1
    invalid = (b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1])
    return torch.where(invalid, torch.zeros_like(w), w * h)


def _ssd_jaccard(b: torch.Tensor) -> torch.Tensor:
    """Pairwise SSD ``JaccardOverlap`` (normalised) of boxes ``(..., K, 4)`` -> ``(..., K, K)``."""
    return _ssd_overlap(b, b)


def _ssd_overlap(
    a: torch.Tensor,
    b: torch.Tensor,
    sizes: tuple[torch.Tensor, torch.Tensor] | None = None,
    pixel: bool = False,
) -> torch.Tensor:
    """SSD's ``JaccardOverlap`` (in float32) of every box of ``a`` ``(..., K, 4)`` with every box of ``b``
    ``(..., M, 4)`` -> ``(..., K, M)``. ``sizes``: the boxes' stored sizes (default: normalised
    ``BBoxSize``); ``pixel``: the intersection counts both edges, so that disjoint boxes, whose
    intersection is the box ``[0, 0, 0, 0]``, still overlap by one pixel, as in the C++."""
    p, q = a.unsqueeze(-2), b.unsqueeze(-3)
    disjoint = (q[..., 0] > p[..., 2]) | (q[..., 2] < p[..., 0])
    disjoint = disjoint | (q[..., 1] > p[..., 3]) | (q[..., 3] < p[..., 1])
    zero = torch.zeros((), dtype=a.dtype)
    iw = torch.minimum(p[..., 2], q[..., 2]) - torch.maximum(p[..., 0], q[..., 0])
    ih = torch.minimum(p[..., 3], q[..., 3]) - torch.maximum(p[..., 1], q[..., 1])
    iw, ih = torch.where(disjoint, zero, iw), torch.where(disjoint, zero, ih)
    if pixel:
        iw, ih = iw + 1, ih + 1
    inter = iw * ih
    size_a, size_b = (
        sizes if sizes is not None else (_ssd_box_size(a), _ssd_box_size(b))
    )
    union = size_a.unsqueeze(-1) + size_b.unsqueeze(-2) - inter
    hit = (iw > 0) & (ih > 0)
    safe = torch.where(hit, union, torch.ones_like(union))
    return torch.where(hit, inter / safe, torch.zeros_like(inter))


def _pixel_jaccard(b: torch.Tensor) -> torch.Tensor:
    """Pairwise overlap of pixel boxes ``(..., K, 4)`` -> ``(..., K, K)`` as OpenCV's
    ``JaccardOverlap<false>``: an intersection with ``xmax >= xmin`` and ``ymax >= ymin`` counts both edges
    (touching boxes share a pixel), an inverted one is 0; areas as :func:`_ssd_box_size` of pixel boxes."""
    p, q = b.unsqueeze(-2), b.unsqueeze(-3)
    iw = torch.minimum(p[..., 2], q[..., 2]) - torch.maximum(p[..., 0], q[..., 0])
    ih = torch.minimum(p[..., 3], q[..., 3]) - torch.maximum(p[..., 1], q[..., 1])
    inter = (iw + 1) * (ih + 1)
    size = _ssd_box_size(b, normalized=False)
    union = size.unsqueeze(-1) + size.unsqueeze(-2) - inter
    hit = (iw >= 0) & (ih >= 0) & (inter > 0)
    safe = torch.where(hit, union, torch.ones_like(union))
    return torch.where(hit, inter / safe, torch.zeros_like(inter))


class DetectionOutput(nn.Module):
    """SSD's DetectionOutput: decode loc against the priors, per-class NMS, ``keep_top_k`` per image;
    rows ``[image, label, score, xmin, ymin, xmax, ymax]`` grouped by image, then label, then score, as
    ``(1, 1, kept, 7)``. No gradient (Caffe has no backward).

    ``code_type`` is "CORNER", "CENTER_SIZE" or "CORNER_SIZE"; ``confidence_threshold`` None lets every
    score pass; ``top_k`` -1 = no limit before NMS. ``keep_top_k`` ranks kept boxes with a stable sort
    (Caffe's ``std::sort`` leaves the order of exactly equal scores unspecified).

    ``normalized_bbox`` False (OpenCV's field, for priors in pixels such as Faster R-CNN's ROIs): widths and
    areas count both edges, a ``CENTER_SIZE`` prior's centre is ``xmin + width / 2``, and two boxes overlap
    when their intersection is not inverted (OpenCV's ``JaccardOverlap<false>``). Priors may then come
    without variances, ``(1, 1, P * 4)``, when ``variance_encoded_in_target``."""

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
        normalized_bbox: bool = True,
    ) -> None:
        super().__init__()
        if code_type not in ("CORNER", "CENTER_SIZE", "CORNER_SIZE"):
            raise ValueError(f"unknown code_type {code_type}")
        self.normalized_bbox = normalized_bbox
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
        if self.normalized_bbox:
            pcx = ((prior[:, 0] + prior[:, 2]).double() / 2.0).float()
            pcy = ((prior[:, 1] + prior[:, 3]).double() / 2.0).float()
        else:  # OpenCV: ``prior_width += 1``, centre ``xmin + prior_width * .5`` (in double, stored as float)
            pw, ph = pw + 1, ph + 1
            pcx = (prior[:, 0].double() + pw.double() * 0.5).float()
            pcy = (prior[:, 1].double() + ph.double() * 0.5).float()
        cx = (var[:, 0] * loc[..., 0] * pw + pcx).double()
        cy = (var[:, 1] * loc[..., 1] * ph + pcy).double()
        # ``float decode_bbox_width = exp(...) * prior_width``: the product is rounded to float
        w = (
            (torch.exp((var[:, 2] * loc[..., 2]).double()) * pw.double())
            .float()
            .double()
        )
        h = (
            (torch.exp((var[:, 3] * loc[..., 3]).double()) * ph.double())
            .float()
            .double()
        )
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
        # float score > float threshold, as the C++ compares (0.3 rounds up in float32: 0.3f > 0.3f is false);
        # GetMaxScoreIndex drops the others (NaN too) before sorting, so they never take a top_k place
        above = scores.float() > torch.tensor(threshold_min, dtype=torch.float32)
        key = torch.where(above, scores, torch.full_like(scores, -math.inf))
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
        valid = above.gather(1, order)
        cand = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
        overlap = (
            _ssd_jaccard(cand) if self.normalized_bbox else _pixel_jaccard(cand)
        )  # (C, K, K)
        keep = torch.zeros_like(valid)
        threshold = torch.full(
            (scores.shape[0],), self.nms_threshold, dtype=torch.float32
        )
        eta = torch.tensor(self.eta, dtype=torch.float32)
        for j in range(k):
            # the C++ keeps ``overlap <= threshold``: a NaN overlap suppresses
            near = ~(overlap[:, j, :j] <= threshold.unsqueeze(1))
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
        prior = prior.detach().float().reshape(-1, p, 4)[:2].cpu()
        # no variances: only with variance_encoded_in_target (the spec checks)
        if len(prior) == 1:
            prior = torch.cat([prior, torch.ones_like(prior)])
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


class DetectionEvaluate(nn.Module):
    """SSD's DetectionEvaluate (TEST nets): detections ``(1, 1, D, 7)`` from DetectionOutput against the
    ground truth ``(1, 1, G, 8)`` rows ``[image, label, instance, xmin, ymin, xmax, ymax, difficult]``
    (normalised boxes). Rows ``[image, label, score, true_pos, false_pos]``: first ``[-1, c, number of
    ground-truth boxes of c, -1, -1]`` per class ``c`` but the background, then one per detection, by
    image then label; where the image has ground truth of the label, by descending score (a stable sort,
    as libstdc++'s ``std::sort`` is for up to 16 boxes; beyond, its introsort reorders equal scores), each
    matched to its best-overlapping box (the first of equal overlaps): a true positive if the overlap
    reaches ``overlap_threshold`` (in float32) and the box was not matched before, neither (0, 0) if that
    box is difficult and ``evaluate_difficult_gt`` is off. The mean average precision is computed from
    these rows. No gradient.

    ``sizes`` (the ``name_size_file``'s ``(height, width)`` per image, in the test set's order): boxes are
    compared in those pixels (``OutputBBox``, after undoing ``resize``: ``(mode, height, width,
    height_scale, width_scale)``), each image with detections taking the next size, as the C++ counts."""

    def __init__(
        self,
        num_classes: int,
        background_label_id: int = 0,
        overlap_threshold: float = 0.5,
        evaluate_difficult_gt: bool = True,
        sizes: tuple[tuple[int, int], ...] = (),
        resize: tuple[str, int, int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.background_label_id = num_classes, background_label_id
        self.overlap_threshold = overlap_threshold
        self.evaluate_difficult_gt = evaluate_difficult_gt
        self.sizes, self.resize = sizes, resize
        self.count = 0  # the size the next image takes (the C++ ``count_``)

    def _groups(self, rows: torch.Tensor, stop: bool, what: str) -> dict:
        """``{image: {label: [row indices]}}`` in ``std::map`` order (GetDetectionResults skips rows of image
        -1, GetGroundTruth stops at the first)."""
        groups: dict = {}
        for i, (image, label) in enumerate(rows[:, :2].tolist()):
            if int(image) == -1:
                if stop:
                    break
                continue
            if int(label) == self.background_label_id:
                raise ValueError(f"found the background label in the {what}")
            groups.setdefault(int(image), {}).setdefault(int(label), []).append(i)
        return {k: dict(sorted(v.items())) for k, v in sorted(groups.items())}

    def _in_pixels(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SSD's ``OutputBBox`` of normalised boxes ``(K, 4)`` for the current image: the boxes in its
        pixels and their sizes, in float32."""
        height, width = self.sizes[self.count]
        mode, rh, rw, hs, ws = self.resize or ("WARP", 0, 0, 0, 0)
        f = torch.float32
        if mode == "FIT_LARGE_SIZE_AND_PAD":
            aspect = torch.tensor(width, dtype=f) / height
            r_h, r_w = torch.tensor(rh, dtype=f), torch.tensor(rw, dtype=f)
            zero, one = torch.zeros((), dtype=f), torch.ones((), dtype=f)
            if aspect > r_w / r_h:
                pad = (r_h - r_w / aspect) / 2
                src = torch.stack([zero, pad / r_h, one, 1 - pad / r_h])
            else:
                pad = (r_w - r_h * aspect) / 2
                src = torch.stack([pad / r_w, zero, 1 - pad / r_w, one])
            outside = (b[:, 0] >= src[2]) | (b[:, 2] <= src[0])
            outside = outside | (b[:, 1] >= src[3]) | (b[:, 3] <= src[1])
            extent = torch.stack([src[2] - src[0], src[3] - src[1]] * 2)
            projected = ((b - src[[0, 1, 0, 1]]) / extent).clamp(0, 1)
            b = torch.where(outside.unsqueeze(1), b, projected)
        if mode == "FIT_SMALL_SIZE" and hs and ws:
            b = b * torch.tensor([ws, hs, ws, hs], dtype=f)
            b = torch.minimum(b, torch.tensor([width, height] * 2, dtype=f)).clamp(
                min=0
            )
            return b, _ssd_box_size(b)  # ClipBBox's size: normalised
        b = b.clamp(0, 1) * torch.tensor([width, height, width, height], dtype=f)
        return b, _ssd_box_size(b, normalized=not (width > 1 or height > 1))

    @torch.no_grad()
    def forward(self, det: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if (
            det.shape[:2] != (1, 1)
            or det.shape[3] != 7
            or gt.shape[:2] != (1, 1)
            or gt.shape[3] != 8
        ):
            raise ValueError(
                f"needs detections (1, 1, D, 7) and ground truth (1, 1, G, 8), got "
                f"{tuple(det.shape)} and {tuple(gt.shape)}"
            )
        device = det.device
        det, gt = det.detach().float().cpu()[0, 0], gt.detach().float().cpu()[0, 0]
        detections = self._groups(det, False, "detection results")
        truth = self._groups(gt, True, "dataset")
        classes = [c for c in range(self.num_classes) if c != self.background_label_id]
        # ``float overlap_threshold_``: 0.7 is 0.69999999 there, which an overlap may equal
        threshold = torch.tensor(self.overlap_threshold, dtype=torch.float32).item()
        out = torch.zeros(len(classes) + int((det[:, 1] != -1).sum()), 5)
        difficult = (gt[:, 7] != 0).tolist()
        for row, c in enumerate(classes):
            boxes = [i for labels in truth.values() for i in labels.get(c, [])]
            n = sum(1 for i in boxes if self.evaluate_difficult_gt or not difficult[i])
            out[row] = torch.tensor([-1.0, c, n, -1.0, -1.0])
        row = len(classes)
        for image, labels in detections.items():
            for label, index in labels.items():
                if label == -1:
                    continue
                boxes_gt = truth.get(image, {}).get(label)
                if boxes_gt is None:
                    # no ground truth of this label: every detection is a false positive, in input order
                    for score in det[index, 2].tolist():
                        out[row] = torch.tensor([image, label, score, 0.0, 1.0])
                        row += 1
                    continue
                order = torch.sort(det[index, 2], descending=True, stable=True).indices
                index = [index[k] for k in order.tolist()]
                found, truths = det[index, 3:7], gt[boxes_gt, 3:7]
                if self.sizes:
                    found, found_size = self._in_pixels(found)
                    truths, truth_size = self._in_pixels(truths)
                    sizes = (found_size, truth_size)
                    overlap = _ssd_overlap(found, truths, sizes, pixel=True)
                else:
                    overlap = _ssd_overlap(found, truths)
                # the first of equal overlaps wins (the C++ loop's ``>``), a NaN one never
                overlap = torch.nan_to_num(overlap, nan=-1.0)
                jbest = overlap.argmax(dim=1)
                best = overlap.gather(1, jbest.unsqueeze(1)).squeeze(1).tolist()
                visited = [False] * len(boxes_gt)
                for k, i in enumerate(index):
                    out[row, :3] = torch.tensor([image, label, float(det[i, 2])])
                    j = int(jbest[k])
                    if best[k] < threshold:
                        out[row, 3:] = torch.tensor([0.0, 1.0])
                    elif self.evaluate_difficult_gt or not difficult[boxes_gt[j]]:
                        tp_fp = [0.0, 1.0] if visited[j] else [1.0, 0.0]
                        out[row, 3:] = torch.tensor(tp_fp)
                        visited[j] = True
                    row += 1
            if self.sizes:
                self.count = (self.count + 1) % len(self.sizes)
        return out.view(1, 1, -1, 5).to(device)


def _ssd_encode(prior: torch.Tensor, box: torch.Tensor, code_type: str) -> torch.Tensor:
    """SSD's ``EncodeBBox`` of ground-truth boxes ``(M, 4)`` against their priors ``(M, 4)`` before any
    variance, in float32 as the C++ (centres halved in double, then stored as float)."""
    if code_type == "CORNER":
        return box - prior
    pw, ph = prior[:, 2] - prior[:, 0], prior[:, 3] - prior[:, 1]
    bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    if not bool(
        (pw > 0).all() and (ph > 0).all() and (bw > 0).all() and (bh > 0).all()
    ):
        raise ValueError(
            "MultiBoxLoss: a matched prior or ground-truth box has no width or height (the fork's CHECK_GT)"
        )
    if code_type == "CORNER_SIZE":
        return (box - prior) / torch.stack([pw, ph, pw, ph], dim=1)

    def centre(b: torch.Tensor, lo: int) -> torch.Tensor:
        return ((b[:, lo] + b[:, lo + 2]).double() / 2.0).float()

    cx = (centre(box, 0) - centre(prior, 0)) / pw
    cy = (centre(box, 1) - centre(prior, 1)) / ph
    return torch.stack([cx, cy, torch.log(bw / pw), torch.log(bh / ph)], dim=1)


def _ssd_match(
    overlap: torch.Tensor, bipartite_only: bool, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD's ``MatchBBox`` of priors to ground truth from their overlaps ``(P, G)``, with ignored priors'
    rows at -1: returns each prior's ground-truth index (-1 none, -2 ignored) and its match overlap.

    Only overlaps above 1e-6 count. Bipartite first: the largest remaining overlap (ties: lowest prior, then
    lowest ground truth, the C++ scan order) pairs a prior with a ground truth until none is left; then, for
    PER_PREDICTION, every other prior takes its best ground truth at ``overlap >= threshold`` (first on ties).
    A prior's match overlap is its overlap with its match, else its largest overlap."""
    ignored = overlap[:, 0] < 0
    counted = overlap > 1e-6
    best = torch.where(counted, overlap, torch.zeros_like(overlap)).amax(dim=1)
    match = torch.full((overlap.shape[0],), -1, dtype=torch.long)
    match[ignored] = -2
    matched_overlap = best.clone()
    pool = torch.where(counted, overlap, torch.full_like(overlap, -1.0))
    pool[ignored] = -1.0
    for _ in range(overlap.shape[1]):
        flat = int(pool.argmax())
        prior, truth = divmod(flat, overlap.shape[1])
        if pool[prior, truth] <= 0:
            break
        match[prior], matched_overlap[prior] = truth, overlap[prior, truth]
        pool[prior, :] = -1.0
        pool[:, truth] = -1.0
    if not bipartite_only:
        free = match == -1
        eligible = counted & (overlap >= threshold) & free.unsqueeze(1)
        ranked = torch.where(eligible, overlap, torch.full_like(overlap, -1.0))
        value, index = ranked.max(dim=1)
        take = free & (value >= 0)
        match[take], matched_overlap[take] = index[take], value[take]
    return match, matched_overlap


class MultiBoxLoss(nn.Module):
    """SSD's MultiBoxLoss (weiliu89/caffe ``ssd``): priors matched to each image's ground truth (by overlap,
    bipartite then per prediction), hard negatives mined among unmatched priors whose overlap is under
    ``neg_overlap`` (the ``neg_pos_ratio`` times the matches with the largest background confidence loss; ties
    by prior index), then ``loc_weight * L_loc / n + L_conf / n`` with ``n`` the normalizer (VALID: the
    matches, at least 1). ``L_loc`` sums smooth L1 (or half squared) differences of the matched priors'
    predictions from their encoded ground truth; ``L_conf`` sums softmax (or logistic) losses of the matched
    and mined priors. Ground truth ``(1, 1, G, 8)`` rows ``[image, label, instance, xmin, ymin, xmax, ymax,
    difficult]`` (image -1: padding). Gradients reach loc and conf only, as in the fork."""

    def __init__(
        self,
        num_classes: int,
        share_location: bool = True,
        background_label_id: int = 0,
        loc_loss_type: str = "SMOOTH_L1",
        conf_loss_type: str = "SOFTMAX",
        loc_weight: float = 1.0,
        match_type: str = "PER_PREDICTION",
        overlap_threshold: float = 0.5,
        use_difficult_gt: bool = True,
        mining_type: str = "MAX_NEGATIVE",
        neg_pos_ratio: float = 3.0,
        neg_overlap: float = 0.5,
        code_type: str = "CORNER",
        encode_variance_in_target: bool = False,
        map_object_to_agnostic: bool = False,
        ignore_cross_boundary_bbox: bool = False,
        normalization: str = "VALID",
        loc_term: bool = True,
        conf_term: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes, self.share_location = num_classes, share_location
        self.background_label_id = background_label_id
        self.loc_loss_type, self.conf_loss_type = loc_loss_type, conf_loss_type
        self.loc_weight, self.match_type = loc_weight, match_type
        self.overlap_threshold, self.use_difficult_gt = (
            overlap_threshold,
            use_difficult_gt,
        )
        self.mining_type, self.neg_pos_ratio = mining_type, neg_pos_ratio
        self.neg_overlap, self.code_type = neg_overlap, code_type
        self.encode_variance_in_target = encode_variance_in_target
        self.map_object_to_agnostic = map_object_to_agnostic
        self.ignore_cross_boundary_bbox = ignore_cross_boundary_bbox
        self.normalization = normalization
        self.loc_term, self.conf_term = loc_term, conf_term

    def ground_truth(self, truth: torch.Tensor, num: int) -> list[torch.Tensor]:
        """Per image, its ground-truth rows ``(G_i, 8)`` in file order (``GetGroundTruth``)."""
        rows = truth.detach().float().reshape(-1, 8).cpu()
        rows = rows[rows[:, 0] != -1]
        label = rows[:, 1].long()
        if bool((label == self.background_label_id).any()):
            raise ValueError(
                f"MultiBoxLoss: a ground-truth box has the background label {self.background_label_id} "
                "(the fork's 'Found background label in the dataset')"
            )
        outside = (label < 0) | (label >= self.num_classes) | (rows[:, 1] != label)
        if bool(outside.any()):
            bad = float(rows[outside][0, 1])
            raise ValueError(
                f"MultiBoxLoss: ground-truth label {bad:g} is not a class in [0, {self.num_classes})"
            )
        if not self.use_difficult_gt:
            rows = rows[rows[:, 7] == 0]
        image = rows[:, 0].long()
        return [rows[image == i] for i in range(num)]

    def matches(
        self, prior: torch.Tensor, truth: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``FindMatches`` with the priors, for one image: ground-truth index per prior and match overlaps."""
        overlap = _ssd_overlap(prior, truth[:, 3:7])
        if self.ignore_cross_boundary_bbox:
            cross = ((prior < 0) | (prior > 1)).any(dim=1)
            overlap[cross] = -1.0
        return _ssd_match(
            overlap, self.match_type == "BIPARTITE", self.overlap_threshold
        )

    def conf_losses(self, conf: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Per row, the confidence loss of ``label`` (``ComputeConfLoss``): ``-log max(p, FLT_MIN)`` of the
        softmax, or the logistic loss of the one-hot target summed over classes."""
        if self.conf_loss_type == "SOFTMAX":
            logp = torch.log_softmax(conf, dim=1).gather(1, label.unsqueeze(1))[:, 0]
            floor = math.log(1.1754943508222875e-38)
            # the clamp changes the value only (Caffe's gradient is softmax - one-hot regardless)
            return -(logp + (logp.clamp(min=floor) - logp).detach())
        classes = torch.arange(self.num_classes, device=conf.device)
        target = (classes == label.unsqueeze(1)).to(conf.dtype)
        return self.logistic(conf, target).sum(dim=1)

    @staticmethod
    def logistic(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Caffe's stable sigmoid cross-entropy per element (its gradient is ``sigmoid(x) - target``)."""
        pos = (x >= 0).to(x.dtype)
        return -(x * (target - pos) - torch.log1p(torch.exp(x - 2 * x * pos)))

    def forward(
        self,
        loc: torch.Tensor,
        conf: torch.Tensor,
        prior: torch.Tensor,
        truth: torch.Tensor,
    ) -> torch.Tensor:
        num, c = loc.shape[0], self.num_classes
        p = prior.shape[2] // 4
        loc_classes = 1 if self.share_location else c
        loc = loc.reshape(num, p, loc_classes, 4)
        conf = conf.reshape(num, p, c)
        boxes = prior.detach().float().reshape(-1, p, 4)[:2].cpu()
        bg, mining = self.background_label_id, self.mining_type != "NONE"
        loc_pred, loc_target, conf_rows, conf_labels = [], [], [], []
        negative_rows, agnostic = [], self.map_object_to_agnostic
        matched = 0
        for i, truth_i in enumerate(self.ground_truth(truth, num)):
            if len(truth_i) == 0:
                if not mining:  # every prior is a background example
                    conf_rows.append(conf[i])
                    conf_labels.append(torch.full((p,), -1, dtype=torch.long))
                continue
            match, overlap = self.matches(boxes[0], truth_i)
            labels = truth_i[:, 1].long()
            # per loc class (the fork's map, ascending): which prior uses which ground truth
            if self.share_location:
                per_class = [(0, match)]
            else:
                per_class = [
                    (
                        k,
                        torch.where(
                            (match > -1) & (labels[match.clamp(min=0)] == k), match, -1
                        ),
                    )
                    for k in range(c)
                    if k != bg
                ]
            for k, m in per_class:
                j = (m > -1).nonzero()[:, 0]
                matched += len(j)
                var = boxes[1][j]
                pred = loc[i, j.to(loc.device), k]
                if self.encode_variance_in_target:
                    # both sides are divided by the variances; the fork copies the gradient of the divided
                    # prediction back unchanged, so the division passes the gradient straight through
                    pred = (
                        pred + (pred / var.to(pred.device, pred.dtype) - pred).detach()
                    )
                loc_pred.append(pred)
                encoded = _ssd_encode(boxes[0][j], truth_i[m[j], 3:7], self.code_type)
                loc_target.append(encoded / var)
                if mining:
                    conf_rows.append(conf[i, j.to(conf.device)])
                    conf_labels.append(labels[m[j]])
            if not mining:
                conf_rows.append(conf[i])
                conf_labels.append(
                    torch.where(match > -1, labels[match.clamp(min=0)], -1)
                )
                continue
            eligible = ((match == -1) & (overlap < self.neg_overlap)).nonzero()[:, 0]
            take = min(
                int(
                    torch.tensor(self.neg_pos_ratio, dtype=torch.float32)
                    * int((match > -1).sum())
                ),
                len(eligible),
            )
            with torch.no_grad():
                background = torch.full((len(eligible),), bg, dtype=torch.long)
                loss = self.conf_losses(
                    conf[i, eligible.to(conf.device)].float(),
                    background.to(conf.device),
                )
            hardest = torch.sort(loss.cpu(), descending=True, stable=True).indices[
                :take
            ]
            negatives = eligible[hardest].sort().values
            negative_rows.append((i, negatives))
            conf_rows.append(conf[i, negatives.to(conf.device)])
            conf_labels.append(torch.full((len(negatives),), -1, dtype=torch.long))
        normalizer = {"FULL": num * p, "VALID": matched, "BATCH_SIZE": num, "NONE": 1}[
            self.normalization
        ]
        normalizer = max(1.0, float(normalizer))
        # an empty sum: zero, in the graph of both predictions (zero gradients where nothing is selected)
        total = loc.reshape(-1)[:0].sum() + conf.reshape(-1)[:0].sum()
        if self.loc_term and matched:
            d = torch.cat(loc_pred) - torch.cat(loc_target).to(loc.device, loc.dtype)
            if self.loc_loss_type == "SMOOTH_L1":
                err = torch.where(d.abs() < 1, 0.5 * d * d, d.abs() - 0.5)
            else:
                err = 0.5 * d * d
            total = total + self.loc_weight * err.sum() / normalizer
        rows = torch.cat(conf_rows) if conf_rows else conf.new_zeros((0, c))
        if self.conf_term and len(rows):
            labels = torch.cat(conf_labels).to(conf.device)
            if agnostic:
                labels = torch.where(
                    labels >= 0, torch.full_like(labels, bg + 1), labels
                )
            if self.conf_loss_type == "SOFTMAX":
                loss = self.conf_losses(
                    rows, torch.where(labels >= 0, labels, torch.full_like(labels, bg))
                )
            else:
                # targets as the fork fills them: every entry the background id's value, 1 at a match's
                # label, 1 at the background column of a mined negative
                target = torch.full_like(rows, float(bg))
                hit = labels >= 0
                target[hit, labels[hit]] = 1.0
                if mining and 0 <= bg < c:
                    target[~hit, bg] = 1.0
                loss = self.logistic(rows, target).sum(dim=1)
            total = total + loss.sum() / normalizer
        return total
