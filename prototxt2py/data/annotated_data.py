"""SSD's ``AnnotatedData`` layer (weiliu89/caffe ``ssd``): images and their boxes from an LMDB of
``AnnotatedDatum`` records (``create_annoset.py``'s databases), ``annotated_data_layer.cpp`` with
``DataTransformer::Transform(AnnotatedDatum)``.

Tops: ``data (N, C, H, W)`` as the ``Data`` layer makes it, after resizing (``resize_param``, WARP, OpenCV's
``cv::resize`` with the named interpolation, one of several at random per image), and ``label (1, 1, B, 8)``:
one row ``[item, group_label, instance_id, xmin, ymin, xmax, ymax, difficult]`` per box kept, in normalised
coordinates of the transformed image (one row of -1 when the batch has none). Boxes go through the same steps
as in the fork, in float32: the resize policy (WARP clips them to the image), the emit constraint against the
crop window, projection into the crop (clipped; boxes left with no area dropped), the mirror flip. Records
without an annotation type (and a layer without ``anno_type``) give the Datum's label instead, ``(N,)``.

SSD's random training augmentation runs before that, per record, in the fork's order
(:mod:`.ssd_augment`): ``distort_param`` (encoded records), ``expand_param``, ``batch_sampler`` crops.

Not implemented, and refused by name: ``noise_param``, the aspect-keeping resize modes and ``crop_h``/``crop_w``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from ..proto import caffe_pb2
from . import DataError, DataLayer, register_reader
from . import ssd_augment as aug
from .datum import datum_image
from .db_data import DbData
from .images import decode, encode, resize
from .seeding import base_seed, stream

F32 = np.float32
#: ``ResizeParameter.Interp_mode`` -> OpenCV's flag name
INTERPOLATION = {"LINEAR": "INTER_LINEAR", "AREA": "INTER_AREA", "NEAREST": "INTER_NEAREST", "CUBIC": "INTER_CUBIC",
                 "LANCZOS4": "INTER_LANCZOS4"}


def _refusals(layer: DataLayer) -> list[str]:
    t = layer.transform
    out = ["noise_param"] if t.has("noise_param") else []
    if t.crop_h or t.crop_w:
        out.append("crop_h/crop_w")
    if t.has("resize_param"):
        r = t.resize_param
        if r.resize_mode != "WARP":
            out.append(f"resize_mode {r.resize_mode}")
    return out


@register_reader("AnnotatedData")
class AnnotatedData(DbData):
    """An ``AnnotatedData`` layer's source: ``next_batch()`` -> ``[data, label]`` (see the module docstring)."""

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        refused = _refusals(layer)
        if refused:
            raise DataError(f"AnnotatedData with {', '.join(refused)} is not implemented", layer=layer.name)
        super().__init__(layer, seed, worker)
        t, a = layer.transform, layer.extra
        self.anno_type = a.anno_type if a is not None and a.has("anno_type") else None
        self.resize_to: tuple[int, int, tuple[str, ...]] | None = None
        if t.has("resize_param"):
            r = t.resize_param
            if r.height <= 0 or r.width <= 0:
                raise DataError(f"resize_param needs height and width > 0, got {r.height} x {r.width}",
                                layer=layer.name)
            self.resize_to = (r.height, r.width, tuple(r.interp_mode) or ("LINEAR",))
        self.emit = (t.emit_constraint.emit_type, t.emit_constraint.emit_overlap) if t.has("emit_constraint") else None
        self.distort = t.distort_param if t.has("distort_param") else None
        self.expand = t.expand_param if t.has("expand_param") else None
        self.samplers = a.batch_sampler if a is not None else ()
        self.rng = stream(base_seed(seed), layer.name, "augment", layer.rank, worker)
        self.means = tuple(t.mean_value)
        if t.has("mean_file") and self.expand is not None:
            raise DataError("expand_param with mean_file is not implemented (the fork fills with the mean blob)",
                            layer=layer.name)

    def _parse(self, raw: bytes, key: str) -> Any:
        anno = caffe_pb2.AnnotatedDatum()
        try:
            anno.ParseFromString(raw)
        except DecodeError:
            raise DataError(f"record '{key}' is not an AnnotatedDatum", layer=self.layer.name) from None
        return anno

    def next_batch(self) -> list[np.ndarray]:
        # box arithmetic is float32 as the fork's: infinite or NaN coordinates in a record propagate silently
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._batch()

    def _batch(self) -> list[np.ndarray]:
        imgs, annos = [], []
        for _ in range(self.batch_size):
            self._to_kept()
            key = self.cursor.key().decode("utf-8", "replace")
            with self.cursor.naming_records():
                anno = self._parse(self.cursor.value(), key)
                img = datum_image(anno.datum, self.transformer.force_color, self.transformer.force_gray, key,
                                  self.layer.name)
                size = (anno.datum.width, anno.datum.height) if anno.datum.height > 0 else img.shape[:0:-1]
                groups = [(g.group_label, [(a.instance_id, [F32(a.bbox.xmin), F32(a.bbox.ymin), F32(a.bbox.xmax),
                                                            F32(a.bbox.ymax)], a.bbox.difficult)
                                           for a in g.annotation]) for g in anno.annotation_group]
                img, groups, size = self._augment(img, groups, size, anno.datum.encoded, key)
                imgs.append(self._resized(img, anno.datum.encoded, key))
            annos.append((anno, key, size, groups))
            self._next()
        placement: list[tuple[int, int, bool]] = []
        data = self.transformer.batch(imgs, placement)
        labelled = self.anno_type is not None or annos[0][0].HasField("type")
        if not labelled:
            return [data, np.array([a.datum.label for a, *_ in annos], np.float32)][: len(self.layer.tops)]
        rows = []
        _, _, oh, ow = data.shape
        for item, ((anno, key, (old_w, old_h), groups), img, (h_off, w_off, mirrored)) in enumerate(
                zip(annos, imgs, placement, strict=True)):
            if self.anno_type is None and not anno.HasField("type"):
                raise DataError(f"record '{key}' has no annotation type (the fork's 'Some datum misses "
                                "AnnotationType')", layer=self.layer.name)
            _, ih, iw = img.shape
            crop = [F32(F32(w_off) / F32(iw)), F32(F32(h_off) / F32(ih)), F32(F32(w_off + ow) / F32(iw)),
                    F32(F32(h_off + oh) / F32(ih))]
            resize_policy = None
            if self.resize_to is not None:
                if old_w <= 0 or old_h <= 0:
                    raise DataError(f"record '{key}' has boxes but no image size", layer=self.layer.name)
                resize_policy = (old_w, old_h, self.resize_to[1], self.resize_to[0])
            for label, members in aug.transform_annotation(groups, crop, self.emit, mirrored, resize_policy):
                rows += [[item, label, instance, *box, float(difficult)] for instance, box, difficult in members]
        label = np.array(rows, np.float32).reshape(1, 1, -1, 8) if rows else np.full((1, 1, 1, 8), -1, np.float32)
        return [data, label][: len(self.layer.tops)]

    def _augment(self, img: np.ndarray, groups: list, size: tuple[int, int], encoded: bool, key: str
                 ) -> tuple[np.ndarray, list, tuple[int, int]]:
        """SSD's random stages of one record, in the fork's order: distortion (encoded records only), expansion,
        a sampled crop. Each stage an encoded record goes through is stored again as a JPEG, as the fork does;
        the record's size becomes the new image's."""
        if self.distort is None and self.expand is None and not self.samplers:
            return img, groups, size
        hwc = img.transpose(1, 2, 0)
        name = self.layer.name

        def stored(out: np.ndarray) -> np.ndarray:
            if not encoded:
                return out
            flat = decode(encode(np.ascontiguousarray(out), "jpg", name, f"record '{key}'"), "native",
                          f"record '{key}'", name)
            return flat if flat.ndim == 3 else flat[:, :, None]

        changed = False
        if self.distort is not None and encoded:
            hwc, changed = stored(aug.distort(hwc, self.distort, self.rng)), True
        if self.expand is not None:
            out, groups = aug.expand(hwc, groups, self.expand, self._fill(hwc.shape[2]), self.emit, self.rng)
            if out is not hwc:
                hwc, changed = stored(out), True
        if self.samplers:
            out, groups = aug.sample_crop(hwc, groups, self.samplers, self.emit, self.rng)
            if out is not hwc:
                hwc, changed = stored(out), True
        if not changed:
            return img, groups, size
        return hwc.transpose(2, 0, 1), groups, (hwc.shape[1], hwc.shape[0])

    def _fill(self, channels: int) -> np.ndarray:
        """The expansion canvas: the mean values as pixels (saturated, rounded), else 0."""
        if not self.means:
            return np.zeros(channels, np.uint8)
        if len(self.means) not in (1, channels):
            raise DataError(f"specify either 1 mean_value or as many as channels: {channels} (got "
                            f"{len(self.means)})", layer=self.layer.name)
        values = self.means * channels if len(self.means) == 1 else self.means
        return np.clip(np.rint(np.asarray(values, np.float32)), 0, 255).astype(np.uint8)

    def _resized(self, img: np.ndarray, encoded: bool, key: str) -> np.ndarray:
        if self.resize_to is None or not encoded:  # the fork resizes decoded images only
            return img
        h, w, modes = self.resize_to
        interp = modes[int(self.rng.integers(len(modes)))] if len(modes) > 1 else modes[0]  # one per image
        out = resize(img.transpose(1, 2, 0), h, w, self.layer.name, f"record '{key}'", INTERPOLATION[interp])
        return out.transpose(2, 0, 1)
