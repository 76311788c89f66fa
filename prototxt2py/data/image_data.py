"""Caffe's ``ImageData`` layer: image files named in a list file (``layers/image_data_layer.cpp``).

Each line of ``source`` is ``path label``, split at the *last* space (paths may contain spaces; other lines are
read as Caffe reads them, see :func:`read_list`); the file read is ``root_folder + path``, plain string
concatenation as in Caffe, relative to the working directory. Images are read with OpenCV (colour as BGR, or
greyscale with ``is_color: false``), resized with ``cv::resize``'s bilinear filter when ``new_height``/``new_width``
are set, then transformed. ``shuffle`` shuffles the list once at the
start and again at every wrap-around; ``rand_skip`` starts at a random line in ``[0, rand_skip)``. Under several
processes in TRAIN each rank keeps every ``world``-th line (offset ``rank``), like the Data layer.
"""

from __future__ import annotations

import re

import numpy as np

from ..fsutil import open_regular
from . import DataError, DataLayer, register_reader
from . import images as _images
from .datum import INT32_MAX, INT32_MIN
from .seeding import base_seed, stream
from .transformer import DataTransformer

#: C's ``atoi``: leading white space (``isspace``), an optional sign, ASCII digits; the rest is ignored.
_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def atoi(text: str) -> int:
    """C's ``atoi`` (0 where no number starts the text: ``'3abc'`` is 3, ``'1_0'`` 1, ``'x'`` 0), not ``int``."""
    m = _ATOI.match(text)
    if not m:
        return 0
    sign, digits = m.group(1)[0] if m.group(1)[0] in "+-" else "", m.group(1).lstrip("+-").lstrip("0")
    return int(sign + (digits[:20] or "0"))  # 20 digits: far out of int32 range (a million would not parse)


def read_list(path: str, layer: str | None = None) -> list[tuple[str, int]]:
    """The ``(path, label)`` entries of an image list, one per line, as Caffe reads them (``getline``, split at
    the *last* space, ``atoi`` of the rest): a line without a space is all name, with ``atoi`` of itself as the
    label; a blank line is the entry ``('', 0)``, which keeps the line numbering (``convert_imageset`` keys).
    A CR before the line end is dropped (lists written on Windows)."""
    try:
        with open_regular(path, "r", encoding="utf-8", errors="surrogateescape", newline="") as f:
            text = f.read()
    except OSError as e:
        raise DataError(f"cannot read image list '{path}': {e.strerror or e}", layer=layer) from None
    rows = text.split("\n")
    if rows and not rows[-1]:
        rows.pop()  # getline yields no line after a final newline
    lines = []
    for number, line in enumerate(rows, 1):
        line = line.removesuffix("\r")
        name, sep, label = line.rpartition(" ")
        if not sep:
            name = label = line
        value = atoi(label)
        # what Caffe would silently mangle: a NUL byte ends its C string; a label is an int32 (atoi overflows)
        if "\0" in name:
            raise DataError(f"{path}:{number}: expected a file name without NUL bytes, got {name!r}", layer=layer)
        if not INT32_MIN <= value <= INT32_MAX:
            raise DataError(f"{path}:{number}: expected a label in Caffe's int32 range [{INT32_MIN}, {INT32_MAX}], "
                            f"got {label.strip()[:40]}", layer=layer)
        lines.append((name, value))
    if not any(name for name, _ in lines):
        raise DataError(f"image list '{path}' is empty", layer=layer)
    return lines


@register_reader("ImageData")
class ImageData:
    """An ``ImageData`` layer's source: ``next_batch()`` -> ``[data (N, C, H, W), label (N,)]``."""

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        self.layer = layer
        p = layer.param
        if p is None or not p.source:
            raise DataError("image_data_param.source is not set", layer=layer.name)
        if len(layer.tops) != 2:
            raise DataError(f"an ImageData layer has 2 tops (data, label), not {len(layer.tops)}", layer=layer.name)
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise DataError("image_data_param.batch_size must be positive", layer=layer.name)
        self.new_height, self.new_width = int(p.new_height), int(p.new_width)
        if (self.new_height > 0) != (self.new_width > 0):
            raise DataError("new_height and new_width must be set together", layer=layer.name)
        self.mode = "color" if p.is_color else "gray"
        self.root = p.root_folder
        self.lines = read_list(p.source, layer.name)
        blank = next((i for i, (name, _) in enumerate(self.lines, 1) if not name), None)
        if blank is not None:  # Caffe stops there: "Could not load "
            raise DataError(f"{p.source}:{blank}: blank line (no image to load)", layer=layer.name)
        seed = base_seed(seed)
        self.shuffle_rng = stream(seed, layer.name, "shuffle") if p.shuffle else None
        if self.shuffle_rng is not None:
            self._shuffle()
        self.transformer = DataTransformer(
            layer.transform, layer.phase, stream(seed, layer.name, "transform", layer.rank, worker), layer.name
        )
        self.pos = 0
        if p.rand_skip:
            skip = int(stream(seed, layer.name, "rand_skip").integers(p.rand_skip))
            if skip >= len(self.lines):
                raise DataError(f"not enough images ({len(self.lines)}) to skip {skip}", layer=layer.name)
            self.pos = skip
        self.offset = 0
        self.stride = layer.world if layer.phase == "TRAIN" and layer.world > 1 else 1
        self._read(self.lines[self.pos][0])  # a missing first image fails at set-up, as in Caffe

    def _shuffle(self) -> None:
        assert self.shuffle_rng is not None
        order = self.shuffle_rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def _read(self, name: str) -> np.ndarray:
        img = _images.read(self.root + name, self.mode, self.layer.name)
        if self.new_height > 0:
            img = _images.resize(img, self.new_height, self.new_width, self.layer.name)
        return _images.to_chw(img)

    def _next(self) -> None:
        self.pos += 1
        self.offset += 1
        if self.pos >= len(self.lines):
            self.pos = 0
            if self.shuffle_rng is not None:
                self._shuffle()

    def _to_kept(self) -> None:
        while self.stride > 1 and self.offset % self.stride != self.layer.rank:
            self._next()

    def next_batch(self) -> list[np.ndarray]:
        imgs = []
        labels = np.empty((self.batch_size,), dtype=np.float32)
        for i in range(self.batch_size):
            self._to_kept()
            name, label = self.lines[self.pos]
            imgs.append(self._read(name))
            labels[i] = label
            self._next()
        return [self.transformer.batch(imgs), labels]

    def skip_batches(self, n: int) -> None:
        """Pass over ``n`` batches without reading their images."""
        for _ in range(n * self.batch_size):
            self._to_kept()
            self._next()
