"""Torch helper of MobileNet-YOLO's fork (eric612/MobileNet-YOLO): ``Yolov3DetectionOutput``, YOLOv3's box
decoding and class-agnostic NMS as the fork's CPU forward computes them, float32 and float64 steps included."""

import torch
from torch import nn


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``1. / (1. + exp(-x))`` with a float ``exp`` and the rest in double, stored as float (the fork's)."""
    return (1.0 / (1.0 + torch.exp(-x).double())).float()


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU ``(len(a), len(b))`` (float32, centre form ``x, y, w, h``) as the fork's ``box_iou``: overlaps of the
    half-width edges, 0 when either is negative."""
    a, b = a[:, None], b[None]
    left = torch.maximum(a[..., 0] - a[..., 2] / 2, b[..., 0] - b[..., 2] / 2)
    right = torch.minimum(a[..., 0] + a[..., 2] / 2, b[..., 0] + b[..., 2] / 2)
    top = torch.maximum(a[..., 1] - a[..., 3] / 2, b[..., 1] - b[..., 3] / 2)
    bottom = torch.minimum(a[..., 1] + a[..., 3] / 2, b[..., 1] + b[..., 3] / 2)
    w, h = right - left, bottom - top
    inter = torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / union


class _YoloOutput(nn.Module):
    """What YOLO's detection outputs share (MobileNet-YOLO): candidates (each version's own) sorted by score, ties in
    the order found; greedy NMS over all classes together (IoU >= ``nms_threshold`` suppresses); rows ``[0, label +
    1, score, xmin, ymin, xmax, ymax]`` (not clipped) as ``(1, 1, kept, 7)``, or one row ``[image, -1, ...]`` per
    image when nothing is kept. No gradient (the fork has no backward)."""

    def __init__(
        self,
        num_classes: int,
        num_box: int,
        confidence_threshold: float,
        nms_threshold: float,
        biases: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.num_classes, self.num_box = num_classes, num_box
        self.confidence_threshold, self.nms_threshold = (
            confidence_threshold,
            nms_threshold,
        )
        self.biases = biases

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            boxes, scores, labels = self._candidates(bottoms)
            order = torch.sort(scores, descending=True, stable=True).indices
            boxes, scores, labels = boxes[order], scores[order], labels[order]
            kept = self._nms(boxes)
            return self._rows(boxes[kept], scores[kept], labels[kept], bottoms[0])

    def _nms(self, boxes: torch.Tensor) -> torch.Tensor:
        """Greedy: each box not yet suppressed suppresses every later one of IoU >= the threshold. The boxes
        still in play are kept compacted, so each kept box costs one pass over them (not over every box)."""
        alive = torch.arange(boxes.shape[0], device=boxes.device)
        rest = boxes
        kept = []
        while alive.numel():
            kept.append(alive[:1])
            over = _iou(rest[:1], rest[1:])[0] >= self.nms_threshold
            alive, rest = alive[1:][~over], rest[1:][~over]
        return torch.cat(kept) if kept else alive

    @staticmethod
    def _rows(
        boxes: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        first: torch.Tensor,
    ) -> torch.Tensor:
        if boxes.shape[0] == 0:
            rows = torch.full((first.shape[0], 7), -1.0, device=first.device)
            rows[:, 0] = torch.arange(first.shape[0], device=first.device).float()
            return rows.reshape(1, 1, -1, 7)
        x, y = boxes[:, 0].double(), boxes[:, 1].double()
        half_w, half_h = boxes[:, 2].double() / 2.0, boxes[:, 3].double() / 2.0
        corners = torch.stack(
            [x - half_w, y - half_h, x + half_w, y + half_h], 1
        ).float()
        head = torch.stack([torch.zeros_like(scores), labels.float() + 1, scores], 1)
        return torch.cat([head, corners], 1).reshape(1, 1, -1, 7)


class Yolov3DetectionOutput(_YoloOutput):
    """YOLOv3's detection output (MobileNet-YOLO): for each bottom (one per scale, ``num_box`` anchors of ``4 +
    1 + num_classes`` channels), sigmoid x, y, objectness and class scores; every class whose score times the
    objectness passes ``confidence_threshold`` is a box ``((col + x) / W, (row + y) / H, exp(w) * anchor_w /
    (W * scale), exp(h) * anchor_h / (H * scale))`` (the fork's ``correct_yolo_boxes`` is the identity here: the
    net's input and the map share their aspect ratio); then the shared sort, NMS and rows."""

    def __init__(
        self,
        num_classes: int,
        num_box: int,
        confidence_threshold: float,
        nms_threshold: float,
        biases: tuple[float, ...],
        anchors_scale: tuple[int, ...],
        mask: tuple[int, ...],
        groups: int,
    ) -> None:
        super().__init__(
            num_classes, num_box, confidence_threshold, nms_threshold, biases
        )
        self.anchors_scale, self.mask, self.groups = anchors_scale, mask, groups

    def _candidates(
        self, bottoms: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every (box, score, class) over the threshold, in the fork's order: bottom, image, position, anchor,
        class."""
        all_boxes, all_scores, all_labels = [], [], []
        offset = 0
        length = 5 + self.num_classes
        for t, x in enumerate(bottoms):
            n, _, h, w = x.shape
            v = x.float().reshape(n, self.num_box, length, h * w)
            sig = _sigmoid(v)
            score = sig[:, :, 5:] * sig[:, :, 4:5]  # (N, A, C, S)
            pos = torch.arange(h * w, device=x.device)
            cols, rows = (
                (pos % w).float(),
                torch.div(pos, w, rounding_mode="floor").float(),
            )
            net_w, net_h = w * self.anchors_scale[t], h * self.anchors_scale[t]
            anchors = [self.mask[offset + a] for a in range(self.num_box)]
            bias_w = torch.tensor(
                [self.biases[2 * m] for m in anchors], dtype=torch.float32
            )
            bias_h = torch.tensor(
                [self.biases[2 * m + 1] for m in anchors], dtype=torch.float32
            )
            bias_w, bias_h = bias_w.to(x.device)[:, None], bias_h.to(x.device)[:, None]
            bx = (cols + sig[:, :, 0]) / w
            by = (rows + sig[:, :, 1]) / h
            bw = torch.exp(v[:, :, 2]) * bias_w / net_w
            bh = torch.exp(v[:, :, 3]) * bias_h / net_h
            box = torch.stack([bx, by, bw, bh], -1)  # (N, A, S, 4)
            hit = score.permute(0, 3, 1, 2) > self.confidence_threshold  # (N, S, A, C)
            found = hit.nonzero()
            all_boxes.append(box[found[:, 0], found[:, 2], found[:, 1]])
            all_scores.append(score.permute(0, 3, 1, 2)[hit])
            all_labels.append(found[:, 3])
            offset += self.groups
        return torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)


class YoloDetectionOutput(_YoloOutput):
    """YOLOv2's detection output (MobileNet-YOLO): per cell and anchor of each square bottom (``num_box`` blocks
    of ``4 + 1 + num_classes`` channels), one candidate: the softmax's best class (the first of equal ones), its
    probability times the sigmoid objectness as the score, kept when ``>= confidence_threshold``, the box
    ``((col + sigmoid(x)) / S, (row + sigmoid(y)) / S, exp(w) * bias_w / S, exp(h) * bias_h / S)`` in grid
    units of the side ``S``; then the shared sort, NMS and rows."""

    def _candidates(
        self, bottoms: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        all_boxes, all_scores, all_labels = [], [], []
        length = bottoms[0].shape[1] // self.num_box
        for x in bottoms:
            n, _, side, _ = x.shape
            v = (
                x.float()
                .reshape(n, self.num_box, length, side * side)
                .permute(0, 3, 1, 2)
            )
            sig = _sigmoid(v[..., :2])
            classes = v[..., 5 : 5 + self.num_classes]
            e = torch.exp(classes - classes.max(-1, keepdim=True).values)
            prob = e / e.sum(-1, keepdim=True)
            best, label = prob.max(-1)  # the first of equal maxima
            score = _sigmoid(v[..., 4]) * best  # (N, S*S, A)
            pos = torch.arange(side * side, device=x.device)
            cols = (pos % side).float()[None, :, None]
            rows = torch.div(pos, side, rounding_mode="floor").float()[None, :, None]
            anchors = torch.tensor(self.biases[: 2 * self.num_box], dtype=torch.float32)
            anchors = anchors.reshape(self.num_box, 2).to(x.device)
            box = torch.stack(
                [
                    (cols + sig[..., 0]) / side,
                    (rows + sig[..., 1]) / side,
                    torch.exp(v[..., 2]) * anchors[:, 0] / side,
                    torch.exp(v[..., 3]) * anchors[:, 1] / side,
                ],
                -1,
            )
            hit = score >= self.confidence_threshold
            all_boxes.append(box[hit])
            all_scores.append(score[hit])
            all_labels.append(label[hit])
        return torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
