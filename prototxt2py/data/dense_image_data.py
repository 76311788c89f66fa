"""SegNet's ``DenseImageData`` layer (alexgkendall/caffe-segnet ``dense_image_data_layer.cpp``): images and their
label maps from a list of file pairs, for segmentation training (SegNet-Tutorial's CamVid nets).

As the fork reads them: the list is whitespace-separated tokens taken two at a time (``infile >> image >>
label``); the image is read as ``ImageData`` reads it (colour or greyscale, bilinear ``new_height``/``new_width``),
the label map as greyscale resized with nearest-neighbour interpolation, so class ids stay ids. Per item, in the
fork's order: a horizontal flip of both when ``dense_image_data_param.mirror`` draws one, a random
``crop_height`` x ``crop_width`` window at the same offsets in both (in every phase, as the fork does), then the
image through ``transform_param`` (mean, scale) and the label map as its raw pixel values. ``shuffle``, ``rand_skip``
and the wrap-around reshuffle are ``ImageData``'s. With ``batch_size: 1`` and neither resizing nor cropping, each
batch takes its image's own size (the net reshapes to it); otherwise every image must come out at the size of
the first. The draws are this reader's own (:mod:`.seeding`), not Caffe's random stream.

``transform_param``'s ``mirror`` and ``crop_size`` are refused, as the fork refuses them ("any stochastic
transformation will break layer": the label map would not follow).
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


@register_reader("DenseImageData")
class DenseImageData:
    """A ``DenseImageData`` layer's source: ``next_batch()`` -> ``[data (N, C, H, W), label (N, 1, H, W)]``."""

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        self.layer, name = layer, layer.name
        p = layer.param
        if p is None or not p.source:
            raise DataError("dense_image_data_param.source is not set", layer=name)
        if len(layer.tops) != 2:
            raise DataError(f"a DenseImageData layer has 2 tops (data, label), not {len(layer.tops)}", layer=name)
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise DataError("dense_image_data_param.batch_size must be positive", layer=name)
        self.new_hw = (int(p.new_height), int(p.new_width))
        self.crop_hw = (int(p.crop_height), int(p.crop_width))
        t = layer.transform
        if t is not None and (t.mirror or t.crop_size):
            raise DataError("transform_param mirror and crop_size are refused by SegNet's DenseImageData (the label "
                            "map would not follow); use dense_image_data_param mirror / crop_height and crop_width",
                            layer=name)
        self.mirror = bool(p.mirror)
        self.mode = "color" if p.is_color else "gray"
        self.root = p.root_folder
        self.pairs = read_pairs(p.source, name)
        seed = base_seed(seed)
        self.shuffle_rng = stream(seed, name, "shuffle") if p.shuffle else None
        if self.shuffle_rng is not None:
            self._shuffle()
        self.rng = stream(seed, name, "transform", layer.rank, worker)
        self.transformer = DataTransformer(t, layer.phase, self.rng, name)
        self.pos = 0
        if p.rand_skip:
            skip = int(stream(seed, name, "rand_skip").integers(p.rand_skip))
            if skip >= len(self.pairs):
                raise DataError(f"not enough images ({len(self.pairs)}) to skip {skip}", layer=name)
            self.pos = skip
        #: each batch at its image's size (the fork reshapes then), else the size set up from the first image
        self.reshapes = self.batch_size == 1 and self.new_hw == (0, 0) and self.crop_hw == (0, 0)
        first, _ = self._read(*self.pairs[self.pos])  # a missing first pair fails at set-up, as in Caffe
        self.size = self.crop_hw if self.crop_hw[0] else first.shape[1:]

    def _shuffle(self) -> None:
        assert self.shuffle_rng is not None
        order = self.shuffle_rng.permutation(len(self.pairs))
        self.pairs = [self.pairs[i] for i in order]

    def _read(self, image_name: str, label_name: str) -> tuple[np.ndarray, np.ndarray]:
        """The image ``(C, H, W)`` and label map ``(1, H, W)`` of one pair, resized as the fork reads them."""
        name = self.layer.name
        img = _images.read(self.root + image_name, self.mode, name)
        label = _images.read(self.root + label_name, "gray", name)
        if self.new_hw[0] > 0:
            h, w = self.new_hw
            img = _images.resize(img, h, w, name, f"image '{image_name}'")
            label = _images.resize(label, h, w, name, f"label map '{label_name}'", interpolation="INTER_NEAREST")
        if label.shape[:2] != img.shape[:2]:
            raise DataError(f"label map '{self.root + label_name}' is {label.shape[0]}x{label.shape[1]}, its image "
                            f"'{self.root + image_name}' {img.shape[0]}x{img.shape[1]}: input and label heights and "
                            "widths must match", layer=name)
        return _images.to_chw(img), _images.to_chw(label)

    def _next(self) -> None:
        self.pos += 1
        if self.pos >= len(self.pairs):
            self.pos = 0
            if self.shuffle_rng is not None:
                self._shuffle()

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

    def skip_batches(self, n: int) -> None:
        """Pass over ``n`` batches without reading their images (the mirror and crop draws are per worker)."""
        for _ in range(n * self.batch_size):
            self._next()
