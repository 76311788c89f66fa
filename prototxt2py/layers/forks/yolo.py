"""YOLOv3 in Caffe (eric612/MobileNet-YOLO, and the darknet YOLOv3 / YOLOv3-tiny / MobileNet-YOLOv3 nets converted
for it): ``Yolov3DetectionOutput``, as the fork's CPU forward computes it. Its nearest ``Upsample`` (one bottom,
``scale``) is the SegNet spec's one-bottom form.

One image per pass: the fork gives every box image id 0 and runs one NMS over the whole batch (and its GPU path
reads later images at the first bottom's offsets), so a batch is refused. Gaussian YOLOv3's ``gaussian_box`` is
refused; YOLOv2's ``Region`` / ``Reorg`` / ``YoloDetectionOutput`` have no spec.

Written as a third-party plugin: public plugin API only; the torch helper in :mod:`.yolo_nn`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prototxt2py.layers import LayerSpec, Unknowable, call, plain, register

FAMILY = "forks"

#: The module holding this fork's torch helpers (imported only when a module is built).
NN = "prototxt2py.layers.forks.yolo_nn"


@dataclass(frozen=True)
class YoloAttrs:
    num_classes: int
    num_box: int
    confidence_threshold: float
    nms_threshold: float
    biases: tuple[float, ...]
    anchors_scale: tuple[int, ...]
    mask: tuple[int, ...]
    groups: int  # masks per bottom: len(mask) // mask_group_num
    scales: int  # mask_group_num: the number of bottoms


@register
class Yolov3DetectionOutput(LayerSpec):
    type = "Yolov3DetectionOutput"
    bottoms = (1, None)
    family = FAMILY
    summary = ("YOLOv3 box decoding and class-agnostic NMS over one bottom per scale (MobileNet-YOLO): rows "
               "[0, label, score, xmin, ymin, xmax, ymax]; one image per pass")

    def attrs(self, layer):
        p = plain(layer.yolov3_detection_output_param)
        if not p.has("num_classes"):
            raise ValueError("yolov3_detection_output_param.num_classes is required")
        if p.gaussian_box:
            raise ValueError("gaussian_box (Gaussian YOLOv3) is not built in")
        if p.mask_group_num < 1 or p.num_box < 1:
            raise ValueError(f"mask_group_num and num_box must be at least 1, got {p.mask_group_num} and "
                             f"{p.num_box}")
        return YoloAttrs(int(p.num_classes), int(p.num_box), float(p.confidence_threshold), float(p.nms_threshold),
                         tuple(float(b) for b in p.biases), tuple(int(s) for s in p.anchors_scale),
                         tuple(int(m) for m in p.mask), len(p.mask) // p.mask_group_num, int(p.mask_group_num))

    def infer_shapes(self, node, in_shapes):
        a: YoloAttrs = node.attrs
        if len(in_shapes) != a.scales:
            raise self.fail(node, f"mask_group_num {a.scales} needs as many bottoms, got {len(in_shapes)}")
        if len(a.anchors_scale) < a.scales:
            raise self.fail(node, f"anchors_scale has {len(a.anchors_scale)} values for {a.scales} bottoms")
        channels = a.num_box * (5 + a.num_classes)
        for t, shape in enumerate(in_shapes):
            if len(shape) != 4 or shape[1] != channels:
                raise self.fail(node, f"bottom {t} {tuple(shape)} must be (1, num_box x (5 + num_classes) = "
                                      f"{channels}, H, W)")
            if shape[0] != 1:
                raise self.fail(node, f"bottom {t} holds {shape[0]} images: the fork decodes one image per pass "
                                      "(it gives every box image id 0 and suppresses across the batch)")
            last = t * a.groups + a.num_box - 1
            if last >= len(a.mask):
                raise self.fail(node, f"bottom {t} reads mask[{last}], but mask has {len(a.mask)} values")
            for m in a.mask[t * a.groups : t * a.groups + a.num_box]:
                if 2 * m + 1 >= len(a.biases):
                    raise self.fail(node, f"mask value {m} reads biases[{2 * m + 1}], but biases has "
                                          f"{len(a.biases)} values")
        raise Unknowable("Yolov3DetectionOutput keeps a data-dependent number of boxes after NMS: top is "
                         "(1, 1, kept, 7)")

    def module(self, node):
        a: YoloAttrs = node.attrs
        return call(f"{NN}:Yolov3DetectionOutput", a.num_classes, a.num_box, a.confidence_threshold,
                    a.nms_threshold, a.biases, a.anchors_scale, a.mask, a.groups)
