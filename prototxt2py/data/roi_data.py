"""The reader of py-faster-rcnn's ``roi_data_layer.layer.RoIDataLayer`` (spec in
:mod:`prototxt2py.layers.forks.rcnn`), for its end-to-end training nets: PASCAL VOC images and boxes as the
``voc_<year>_<split>`` imdb that ``train_net.py --imdb`` names, with the settings of its end-to-end recipe.

As py-faster-rcnn builds and serves its roidb:

* the split's ids (``ImageSets/Main/<split>.txt``), each image's objects from ``Annotations/<id>.xml`` (difficult
  ones left out), corners made 0-based and stored as uint16, classes by name among VOC's 20 (+ background);
* every image again, flipped (``x1' = width - x2 - 1``, ``x2' = width - x1 - 1``); images without an object are
  dropped (``filter_roidb``);
* the order: landscape and portrait images each permuted, concatenated, cut into pairs and the pairs permuted
  (``ASPECT_GROUPING``), again whenever the next image would be the last (the layer's ``>=``);
* each pass one image: read as BGR (flipped when the entry is), the float64 pixel means subtracted in float32,
  scaled so its short side is 600 unless its long side would pass 1000 (OpenCV's bilinear resize by that factor);
  tops ``data (1, 3, H, W)``, ``im_info (1, 3)`` = (H, W, scale) and ``gt_boxes (G, 5)`` = corners x scale and
  class.

The permutations are drawn from this reader's own numpy generator (seeded from the net's seed), not from the
global numpy stream py-faster-rcnn shares with its target layers. Annotations are parsed with the standard
library's XML parser (expat, which refuses entity expansion bombs); nothing in them is executed.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..fsutil import open_regular
from . import DataError, DataLayer, register_reader
from . import images as _images
from ._deps import require
from .seeding import base_seed, stream

VOC_CLASSES = ("__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
#: ``cfg.PIXEL_MEANS`` (BGR, float64) and the end-to-end recipe's ``TRAIN.SCALES``/``TRAIN.MAX_SIZE``
PIXEL_MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])
SCALE, MAX_SIZE = 600, 1000
#: (VOC directory, image set file, its mtime) -> roidb. py-faster-rcnn caches its gt roidb in a pickle file; here
#: it is kept in memory for the readers this process (and the workers it forks) opens: parsing 5,000 annotations
#: and image headers takes seconds, and a solver opens a reader several times (shapes, checks, workers)
_ROIDBS: dict[tuple[str, str, int], list[dict[str, Any]]] = {}


class RoIData:
    """One RoIDataLayer's passes over its VOC roidb: ``next_batch()`` -> ``[data, im_info, gt_boxes]``."""

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        self.name, p = layer.name, layer.param
        if not p.imdb:
            raise DataError("RoIDataLayer reads the imdb py-faster-rcnn's train_net.py names (--imdb): add "
                            "'imdb': 'voc_2007_trainval' (and 'devkit': 'data/VOCdevkit2007') to its param_str",
                            layer=self.name)
        if not p.data_path:
            raise DataError(f"imdb '{p.imdb}' is not a PASCAL VOC one (voc_<year>_<split>); only VOC is read",
                            layer=self.name)
        if len(layer.tops) != 3:
            raise DataError(f"RoIDataLayer is read for end-to-end (RPN) training: tops data, im_info, gt_boxes; "
                            f"this one has {len(layer.tops)}", layer=self.name)
        self.data_path = p.data_path
        try:
            key = (p.data_path, p.source, os.stat(p.source).st_mtime_ns)  # an edited image set is read again
        except OSError as e:
            raise self._fail(f"cannot read the image set '{p.source}': {e.strerror or e}") from None
        if key not in _ROIDBS:  # built once per process (loader workers fork after the first reader opened)
            _ROIDBS[key] = self._roidb(p.source)
        self.roidb = _ROIDBS[key]
        self.rng = stream(base_seed(seed), self.name, "roidb order")
        self._shuffle()

    def _fail(self, message: str) -> DataError:
        return DataError(message, layer=self.name)

    # -- the roidb ----------------------------------------------------------------------------------------------
    def _roidb(self, index_file: str) -> list[dict[str, Any]]:
        try:
            with open_regular(index_file, "r", encoding="utf-8", errors="surrogateescape") as f:
                ids = [line.strip() for line in f.readlines()]
        except OSError as e:
            raise self._fail(f"cannot read the image set '{index_file}': {e.strerror or e}") from None
        entries = [self._entry(i) for i in ids]
        flipped = []
        for e in entries:
            boxes = e["boxes"].astype(np.int64)
            boxes[:, [0, 2]] = e["width"] - boxes[:, [2, 0]] - 1
            if (boxes[:, 0] < 0).any() or not (boxes[:, 2] >= boxes[:, 0]).all():  # py-faster-rcnn's assert
                raise self._fail(f"a box of '{e['image']}' reaches past the image's width {e['width']} (its flip "
                                 "is not a box)")
            flipped.append({**e, "boxes": boxes.astype(np.uint16), "flipped": True})
        roidb = [e for e in entries + flipped if len(e["classes"])]  # filter_roidb: gt boxes have overlap 1
        if len(roidb) < 2:
            raise self._fail(f"image set '{index_file}' has no image with a (non-difficult) object")
        return roidb

    def _entry(self, idx: str) -> dict[str, Any]:
        from xml.etree import ElementTree

        xml = f"{self.data_path}/Annotations/{idx}.xml"
        image = f"{self.data_path}/JPEGImages/{idx}.jpg"
        try:
            with open_regular(xml) as f:
                tree = ElementTree.parse(f)
        except OSError as e:
            raise self._fail(f"cannot read '{xml}': {e.strerror or e}") from None
        except ElementTree.ParseError as e:
            raise self._fail(f"'{xml}' is not XML: {e}") from None
        boxes, classes = [], []
        for obj in tree.findall("object"):
            try:
                if int(obj.find("difficult").text) != 0:
                    continue
                box = obj.find("bndbox")
                corners = [float(box.find(k).text) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]
                name = obj.find("name").text.lower().strip()
            except (AttributeError, TypeError, ValueError) as e:
                raise self._fail(f"'{xml}': an object without a difficult flag, name or bndbox corners ({e})") from None
            if name not in VOC_CLASSES[1:]:
                raise self._fail(f"'{xml}': class '{name[:40]}' is not one of PASCAL VOC's 20")
            if not all(math.isfinite(c) and 0 <= c < 65536 for c in corners):
                raise self._fail(f"'{xml}': box corners {corners} outside 1..65536")
            boxes.append(corners)
            classes.append(VOC_CLASSES.index(name))
        width, height = self._size(image)
        return {"image": image, "width": width, "height": height, "flipped": False,
                "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4).astype(np.uint16),
                "classes": np.array(classes, dtype=np.int32)}

    def _size(self, path: str) -> tuple[int, int]:
        image_mod = require("PIL.Image", f"reading {path}", self.name)
        try:
            with open_regular(path) as f, image_mod.open(f) as im:
                return im.size
        except OSError as e:
            raise self._fail(f"cannot read '{path}': {getattr(e, 'strerror', None) or e}") from None
        except Exception as e:  # Pillow's many errors on corrupt or hostile files
            raise self._fail(f"cannot decode '{path}': {e}") from None

    # -- order --------------------------------------------------------------------------------------------------
    def _shuffle(self) -> None:
        """``_shuffle_roidb_inds`` with ASPECT_GROUPING: pairs of landscape or portrait images, pairs permuted."""
        widths = np.array([r["width"] for r in self.roidb])
        heights = np.array([r["height"] for r in self.roidb])
        horz = widths >= heights
        inds = np.hstack((self.rng.permutation(np.where(horz)[0]), self.rng.permutation(np.where(~horz)[0])))
        if len(inds) % 2:  # (py-faster-rcnn's reshape would fail; with the flipped copies it never happens)
            inds = inds[:-1]
        pairs = inds.reshape(-1, 2)
        self.perm = pairs[self.rng.permutation(len(pairs))].reshape(-1)
        self.cur = 0

    def _next_index(self) -> int:
        if self.cur + 1 >= len(self.roidb):
            self._shuffle()
        i = int(self.perm[self.cur])
        self.cur += 1
        return i

    def skip_batches(self, n: int) -> None:
        for _ in range(n):
            self._next_index()

    # -- one pass -----------------------------------------------------------------------------------------------
    def next_batch(self) -> list[np.ndarray]:
        entry = self.roidb[self._next_index()]
        cv2 = require("cv2", f"reading {entry['image']}", self.name)
        im = _images.read(entry["image"], "color", self.name)
        if im.shape[1] != entry["width"] or im.shape[0] != entry["height"]:
            raise self._fail(f"'{entry['image']}' changed size since the roidb was built")
        if entry["flipped"]:
            im = im[:, ::-1, :]
        im = im.astype(np.float32, copy=False)
        im -= PIXEL_MEANS
        size_min, size_max = min(im.shape[:2]), max(im.shape[:2])
        scale = float(SCALE) / float(size_min)
        if np.round(scale * size_max) > MAX_SIZE:
            scale = float(MAX_SIZE) / float(size_max)
        im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        data = im.transpose(2, 0, 1)[np.newaxis].astype(np.float32)
        gt = np.empty((len(entry["classes"]), 5), dtype=np.float32)
        gt[:, 0:4] = entry["boxes"] * scale
        gt[:, 4] = entry["classes"]
        im_info = np.array([[data.shape[2], data.shape[3], scale]], dtype=np.float32)
        return [data, im_info, gt]


register_reader("roi_data_layer.layer.RoIDataLayer")(RoIData)
