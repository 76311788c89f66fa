"""SSD's ``AnnotatedData`` layer (weiliu89/caffe ``ssd``): images and their boxes from an LMDB of
``AnnotatedDatum`` records (``create_annoset.py``'s databases), ``annotated_data_layer.cpp`` with
``DataTransformer::Transform(AnnotatedDatum)``.

Tops: ``data (N, C, H, W)`` as the ``Data`` layer makes it, after resizing (``resize_param``, WARP, OpenCV's
``cv::resize`` with the named interpolation), and ``label (1, 1, B, 8)``: one row ``[item, group_label,
instance_id, xmin, ymin, xmax, ymax, difficult]`` per box kept, in normalised coordinates of the transformed
image (one row of -1 when the batch has none). Boxes go through the same steps as in the fork, in float32:
the resize policy (WARP clips them to the image), the emit constraint against the crop window, projection into
the crop (clipped; boxes left with no area dropped), the mirror flip. Records without an annotation type (and a
layer without ``anno_type``) give the Datum's label instead, ``(N,)``.

Not implemented, and refused by name: the random data augmentation of SSD's training nets (``batch_sampler``
crops, ``distort_param``, ``expand_param``, ``noise_param``), the aspect-keeping resize modes, a random choice
among several ``interp_mode`` values, and ``crop_h``/``crop_w``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from ..proto import caffe_pb2
from . import DataError, DataLayer, register_reader
from .datum import datum_image
from .db_data import DbData
from .images import resize

F32 = np.float32
#: ``ResizeParameter.Interp_mode`` -> OpenCV's flag name
INTERPOLATION = {"LINEAR": "INTER_LINEAR", "AREA": "INTER_AREA", "NEAREST": "INTER_NEAREST", "CUBIC": "INTER_CUBIC",
                 "LANCZOS4": "INTER_LANCZOS4"}


def _refusals(layer: DataLayer) -> list[str]:
    t, a = layer.transform, layer.extra
    out = []
    if a is not None and a.batch_sampler:
        out.append("batch_sampler (random crops)")
    out += [f for f in ("distort_param", "expand_param", "noise_param") if t.has(f)]
    if t.crop_h or t.crop_w:
        out.append("crop_h/crop_w")
    if t.has("resize_param"):
        r = t.resize_param
        if r.resize_mode != "WARP":
            out.append(f"resize_mode {r.resize_mode}")
        if len(r.interp_mode) > 1:
            out.append("several interp_mode values (a random choice per image)")
    return out


def update_by_resize(box: list[F32], old_w: int, old_h: int, new_w: int, new_h: int) -> list[F32]:
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


def _size(b: list[F32]) -> F32:
    if b[2] < b[0] or b[3] < b[1]:
        return F32(0)
    return F32(F32(b[2] - b[0]) * F32(b[3] - b[1]))


def meets_emit(crop: list[F32], box: list[F32], emit_type: str, emit_overlap: float) -> bool:
    """``MeetEmitConstraint``: the box's centre inside the crop window (CENTER), or the share of the box
    inside it above ``emit_overlap`` (MIN_OVERLAP)."""
    if emit_type == "CENTER":
        cx, cy = F32(F32(box[0] + box[2]) / F32(2)), F32(F32(box[1] + box[3]) / F32(2))
        return bool(crop[0] <= cx <= crop[2] and crop[1] <= cy <= crop[3])
    if box[0] > crop[2] or box[2] < crop[0] or box[1] > crop[3] or box[3] < crop[1]:
        return False
    inter = [max(box[0], crop[0]), max(box[1], crop[1]), min(box[2], crop[2]), min(box[3], crop[3])]
    size = _size(inter)
    return bool(size > 0 and F32(size / _size(box)) > F32(emit_overlap))


def project(crop: list[F32], box: list[F32]) -> list[F32] | None:
    """``ProjectBBox``: the box in the crop window's normalised coordinates, clipped to it; None when it lies
    outside or keeps no area."""
    if box[0] >= crop[2] or box[2] <= crop[0] or box[1] >= crop[3] or box[3] <= crop[1]:
        return None
    w, h = F32(crop[2] - crop[0]), F32(crop[3] - crop[1])
    out = [F32(F32(box[0] - crop[0]) / w), F32(F32(box[1] - crop[1]) / h), F32(F32(box[2] - crop[0]) / w),
           F32(F32(box[3] - crop[1]) / h)]
    out = [max(min(v, F32(1)), F32(0)) for v in out]
    return out if _size(out) > 0 else None


@register_reader("AnnotatedData")
class AnnotatedData(DbData):
    """An ``AnnotatedData`` layer's source: ``next_batch()`` -> ``[data, label]`` (see the module docstring)."""

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        refused = _refusals(layer)
        if refused:
            raise DataError(f"AnnotatedData with {', '.join(refused)} is not implemented (SSD's random training "
                            "augmentation); TEST-style layers read", layer=layer.name)
        super().__init__(layer, seed, worker)
        t, a = layer.transform, layer.extra
        self.anno_type = a.anno_type if a is not None and a.has("anno_type") else None
        self.resize_to: tuple[int, int, str] | None = None
        if t.has("resize_param"):
            r = t.resize_param
            if r.height <= 0 or r.width <= 0:
                raise DataError(f"resize_param needs height and width > 0, got {r.height} x {r.width}",
                                layer=layer.name)
            self.resize_to = (r.height, r.width, r.interp_mode[0] if r.interp_mode else "LINEAR")
        self.emit = (t.emit_constraint.emit_type, t.emit_constraint.emit_overlap) if t.has("emit_constraint") else None

    def _parse(self, raw: bytes, key: str) -> Any:
        anno = caffe_pb2.AnnotatedDatum()
        try:
            anno.ParseFromString(raw)
        except DecodeError:
            raise DataError(f"record '{key}' is not an AnnotatedDatum", layer=self.layer.name) from None
        return anno

    def next_batch(self) -> list[np.ndarray]:
        imgs, annos = [], []
        for _ in range(self.batch_size):
            self._to_kept()
            key = self.cursor.key().decode("utf-8", "replace")
            with self.cursor.naming_records():
                anno = self._parse(self.cursor.value(), key)
                img = datum_image(anno.datum, self.transformer.force_color, self.transformer.force_gray, key,
                                  self.layer.name)
                size = (anno.datum.width, anno.datum.height) if anno.datum.height > 0 else img.shape[:0:-1]
                imgs.append(self._resized(img, anno.datum.encoded, key))
            annos.append((anno, key, size))
            self._next()
        placement: list[tuple[int, int, bool]] = []
        data = self.transformer.batch(imgs, placement)
        labelled = self.anno_type is not None or annos[0][0].HasField("type")
        if not labelled:
            return [data, np.array([a.datum.label for a, _, _ in annos], np.float32)][: len(self.layer.tops)]
        rows = []
        for item, ((anno, key, (old_w, old_h)), img, (h_off, w_off, mirrored)) in enumerate(
                zip(annos, imgs, placement, strict=True)):
            if self.anno_type is None and not anno.HasField("type"):
                raise DataError(f"record '{key}' has no annotation type (the fork's 'Some datum misses "
                                "AnnotationType')", layer=self.layer.name)
            _, ih, iw = img.shape
            _, _, oh, ow = data.shape
            crop = [F32(F32(w_off) / F32(iw)), F32(F32(h_off) / F32(ih)), F32(F32(w_off + ow) / F32(iw)),
                    F32(F32(h_off + oh) / F32(ih))]
            rows += self._boxes(item, anno, crop, mirrored, old_w, old_h)
        label = np.array(rows, np.float32).reshape(1, 1, -1, 8) if rows else np.full((1, 1, 1, 8), -1, np.float32)
        return [data, label][: len(self.layer.tops)]

    def _resized(self, img: np.ndarray, encoded: bool, key: str) -> np.ndarray:
        if self.resize_to is None or not encoded:  # the fork resizes decoded images only
            return img
        h, w, interp = self.resize_to
        out = resize(img.transpose(1, 2, 0), h, w, self.layer.name, f"record '{key}'", INTERPOLATION[interp])
        return out.transpose(2, 0, 1)

    def _boxes(self, item: int, anno: Any, crop: list[F32], mirrored: bool, old_w: int, old_h: int) -> list:
        """``TransformAnnotation`` of one record: its label rows."""
        rows = []
        for group in anno.annotation_group:
            for a in group.annotation:
                b = a.bbox
                box = [F32(b.xmin), F32(b.ymin), F32(b.xmax), F32(b.ymax)]
                if self.resize_to is not None:
                    if old_w <= 0 or old_h <= 0:
                        raise DataError("a record with boxes has no image size", layer=self.layer.name)
                    box = update_by_resize(box, old_w, old_h, self.resize_to[1], self.resize_to[0])
                if self.emit is not None and not meets_emit(crop, box, *self.emit):
                    continue
                proj = project(crop, box)
                if proj is None:
                    continue
                if mirrored:
                    proj = [F32(1 - proj[2]), proj[1], F32(1 - proj[0]), proj[3]]
                rows.append([item, group.group_label, a.instance_id, *proj, float(b.difficult)])
        return rows
