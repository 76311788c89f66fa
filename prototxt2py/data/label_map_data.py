"""Readers of image + label map pairs for segmentation and edge training: SegNet's ``DenseImageData``
(alexgkendall/caffe-segnet ``dense_image_data_layer.cpp``; SegNet-Tutorial's CamVid nets) and HED's
``ImageLabelmapData`` (s9xie/hed ``image_labelmap_data_layer.cpp``; its BSDS edge maps).

Both read their list as whitespace-separated tokens taken two at a time (``infile >> image >> label``), shuffle,
``rand_skip`` and reshuffle at the wrap-around as ``ImageData`` does, read the image as ``ImageData`` reads it and
the label map as greyscale, and move the label map with every flip and crop of its image. The random draws are
this reader's own (:mod:`.seeding`), not Caffe's random stream.

SegNet's: the label map is resized with nearest-neighbour interpolation (class ids stay ids); per item, in the
fork's order, a horizontal flip of both when ``dense_image_data_param.mirror`` draws one and a random
``crop_height`` x ``crop_width`` window at the same offsets in both (in every phase, as the fork does); then the
image through ``transform_param`` (mean, scale) and the label map as its raw values. With ``batch_size: 1`` and
neither resizing nor cropping each batch takes its image's own size; otherwise every image must come out at the
size of the first. ``transform_param``'s ``mirror`` and ``crop_size`` are refused, as the fork refuses them ("any
stochastic transformation will break layer").

HED's: image and edge map are resized bilinearly (``new_height``/``new_width``), the edge map becomes ``map / 255``
as OpenCV rounds it (1 from 128 up, else 0), and ``transform_param`` mirrors and crops both the same way, the crop
random in every phase (HED's ``LocTransform``), the edge map without mean or scale. Each batch takes the size of
its first image.
"""

from __future__ import annotations

import numpy as np

from ..fsutil import open_regular
from . import DataError, DataLayer, register_reader
from . import images as _images
from .seeding import base_seed, stream
from .transformer import DataTransformer


def read_pairs(path: str, layer: str | None = None) -> list[tuple[str, str]]:
    """The ``(image, label)`` file pairs of a list, as ``infile >> image >> label`` reads them: tokens split at
    white space, taken two at a time (a last unpaired token is dropped)."""
    try:
        with open_regular(path, "r", encoding="utf-8", errors="surrogateescape") as f:
            tokens = f.read().split()
    except OSError as e:
        raise DataError(f"cannot read image/label list '{path}': {e.strerror or e}", layer=layer) from None
    pairs = list(zip(tokens[0::2], tokens[1::2], strict=False))
    if not pairs:
        raise DataError(f"image/label list '{path}' names no image/label pair", layer=layer)
    return pairs


class _PairSource:
    """What both readers share: the list of pairs, its order (shuffle, ``rand_skip``, wrap-around), reading a
    pair at one size. Subclasses set :attr:`field` and :attr:`label_interpolation`, and make the batches."""

    field = ""  # the layer's parameter field, for messages
    label_interpolation = "INTER_LINEAR"
    #: when the image and label sizes must agree: as read (HED), or after resizing both (SegNet)
    sizes_checked = "read"

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        self.layer, name = layer, layer.name
        p = layer.param
        if p is None or not p.source:
            raise DataError(f"{self.field}.source is not set", layer=name)
        if len(layer.tops) != 2:
            raise DataError(f"a {layer.type} layer has 2 tops (data, label), not {len(layer.tops)}", layer=name)
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise DataError(f"{self.field}.batch_size must be positive", layer=name)
        self.new_hw = (int(p.new_height), int(p.new_width))
        if (self.new_hw[0] > 0) != (self.new_hw[1] > 0):
            raise DataError("new_height and new_width must be set together", layer=name)
        self.mode = "color" if p.is_color else "gray"
        self.root = p.root_folder
        self.pairs = read_pairs(p.source, name)
        seed = base_seed(seed)
        self.shuffle_rng = stream(seed, name, "shuffle") if p.shuffle else None
        if self.shuffle_rng is not None:
            self._shuffle()
        self.rng = stream(seed, name, "transform", layer.rank, worker)
        self.pos = 0
        if p.rand_skip:
            skip = int(stream(seed, name, "rand_skip").integers(p.rand_skip))
            if skip >= len(self.pairs):
                raise DataError(f"not enough images ({len(self.pairs)}) to skip {skip}", layer=name)
            self.pos = skip

    def _shuffle(self) -> None:
        assert self.shuffle_rng is not None
        order = self.shuffle_rng.permutation(len(self.pairs))
        self.pairs = [self.pairs[i] for i in order]

    def _read(self, image_name: str, label_name: str) -> tuple[np.ndarray, np.ndarray]:
        """The image ``(C, H, W)`` and label map ``(1, H, W)`` of one pair, resized as the layer reads them."""
        name = self.layer.name
        img = _images.read(self.root + image_name, self.mode, name)
        label = _images.read(self.root + label_name, "gray", name)
        if self.sizes_checked == "read":
            self._check_sizes(img, label, image_name, label_name)
        if self.new_hw[0] > 0:
            h, w = self.new_hw
            img = _images.resize(img, h, w, name, f"image '{image_name}'")
            label = _images.resize(label, h, w, name, f"label map '{label_name}'",
                                   interpolation=self.label_interpolation)
        if self.sizes_checked == "resized":
            self._check_sizes(img, label, image_name, label_name)
        return _images.to_chw(img), _images.to_chw(label)

    def _check_sizes(self, img: np.ndarray, label: np.ndarray, image_name: str, label_name: str) -> None:
        if label.shape[:2] != img.shape[:2]:
            raise DataError(f"label map '{self.root + label_name}' is {label.shape[0]}x{label.shape[1]}, its image "
                            f"'{self.root + image_name}' {img.shape[0]}x{img.shape[1]}: input and label heights and "
                            "widths must match", layer=self.layer.name)

    def _next(self) -> None:
        self.pos += 1
        if self.pos >= len(self.pairs):
            self.pos = 0
            if self.shuffle_rng is not None:
                self._shuffle()

    def skip_batches(self, n: int) -> None:
        """Pass over ``n`` batches without reading their images (the flip and crop draws are per worker)."""
        for _ in range(n * self.batch_size):
            self._next()


@register_reader("DenseImageData")
class DenseImageData(_PairSource):
    """A ``DenseImageData`` layer's source: ``next_batch()`` -> ``[data (N, C, H, W), label (N, 1, H, W)]``."""

    field = "dense_image_data_param"
    label_interpolation = "INTER_NEAREST"
    sizes_checked = "resized"

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        super().__init__(layer, seed, worker)
        p, t = layer.param, layer.transform
        self.crop_hw = (int(p.crop_height), int(p.crop_width))
        if (self.crop_hw[0] > 0) != (self.crop_hw[1] > 0):
            raise DataError("crop_height and crop_width must be set together", layer=layer.name)
        if t is not None and (t.mirror or t.crop_size):
            raise DataError("transform_param mirror and crop_size are refused by SegNet's DenseImageData (the label "
                            "map would not follow); use dense_image_data_param mirror / crop_height and crop_width",
                            layer=layer.name)
        self.mirror = bool(p.mirror)
        self.transformer = DataTransformer(t, layer.phase, self.rng, layer.name)
        #: each batch at its image's size (the fork reshapes then), else the size set up from the first image
        self.reshapes = self.batch_size == 1 and self.new_hw == (0, 0) and self.crop_hw == (0, 0)
        first, _ = self._read(*self.pairs[self.pos])  # a missing first pair fails at set-up, as in Caffe
        self.size = self.crop_hw if self.crop_hw[0] else first.shape[1:]

    def _draw(self, n: int) -> int:
        return int(self.rng.integers(0, 1 << 32)) % n

    def next_batch(self) -> list[np.ndarray]:
        images, labels = [], []
        for _ in range(self.batch_size):
            image_name, label_name = self.pairs[self.pos]
            img, label = self._read(image_name, label_name)
            if self.mirror and self._draw(2):
                img, label = img[:, :, ::-1], label[:, :, ::-1]
            if self.crop_hw[0]:
                (h, w), (ch, cw) = img.shape[1:], self.crop_hw
                if h < ch or w < cw:
                    raise DataError(f"crop {ch}x{cw} is larger than image '{self.root + image_name}' of {h}x{w}",
                                    layer=self.layer.name)
                y, x = self._draw(h - ch + 1), self._draw(w - cw + 1)
                img, label = img[:, y:y + ch, x:x + cw], label[:, y:y + ch, x:x + cw]
            elif not self.reshapes and img.shape[1:] != self.size:
                raise DataError(f"image '{self.root + image_name}' is {img.shape[1]}x{img.shape[2]}, the batch "
                                f"{self.size[0]}x{self.size[1]} (set new_height/new_width or crop_height/crop_width, "
                                "or batch_size 1)", layer=self.layer.name)
            images.append(np.ascontiguousarray(img))
            labels.append(label.astype(np.float32))
            self._next()
        return [self.transformer.batch(images), np.stack(labels)]


@register_reader("ImageLabelmapData")
class ImageLabelmapData(_PairSource):
    """An ``ImageLabelmapData`` layer's source: ``next_batch()`` -> ``[data (N, C, H, W), edges (N, 1, H, W)]``."""

    field = "image_data_param"

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        super().__init__(layer, seed, worker)
        # HED's LocTransform crops at random in every phase: the transformer's TRAIN behaviour
        self.transformer = DataTransformer(layer.transform, "TRAIN", self.rng, layer.name)
        self._read(*self.pairs[self.pos])  # a missing first pair fails at set-up, as in Caffe

    def next_batch(self) -> list[np.ndarray]:
        images, edges = [], []
        for _ in range(self.batch_size):
            img, edge = self._read(*self.pairs[self.pos])
            if images and self.transformer.out_shape(img.shape) != self.transformer.out_shape(images[0].shape):
                raise DataError(f"image '{self.root + self.pairs[self.pos][0]}' is {img.shape[1]}x{img.shape[2]}, "
                                f"the batch {images[0].shape[1]}x{images[0].shape[2]} (HED sizes a batch by its "
                                "first image: set new_height/new_width or crop_size, or batch_size 1)",
                                layer=self.layer.name)
            images.append(img)
            edges.append((edge >= 128).astype(np.float32))  # cv::Mat / 255 on uint8, rounded
            self._next()
        placement: list[tuple[int, int, bool]] = []
        data = self.transformer.batch(images, placement)
        h, w = data.shape[2:]
        label = np.stack([e[:, y:y + h, x:x + w] for e, (y, x, _) in zip(edges, placement, strict=True)])
        mirrored = np.array([m for _, _, m in placement], dtype=bool)
        if mirrored.any():
            label[mirrored] = label[mirrored][..., ::-1]
        return [data, label]
