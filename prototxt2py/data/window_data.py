"""Caffe's ``WindowData`` layer (R-CNN): windows cut from images and warped to ``crop_size``
(``layers/window_data_layer.cpp``).

The window file repeats ``# image_index``, ``image_path``, ``channels height width``, ``num_windows`` and one
``class_index overlap x1 y1 x2 y2`` line per window. Windows with ``overlap >= fg_threshold`` are foreground (label
> 0 required), those with ``overlap < bg_threshold`` background (label 0). Each batch draws
``batch_size - int(batch_size * fg_fraction)`` background windows then the foreground ones, uniformly at random;
each window is expanded by ``context_pad`` (``crop_mode: "square"`` makes it square first), clipped to the image,
warped with ``cv::resize`` (bilinear) and placed where the clipped part falls, the rest stays 0. Geometry is
computed in float32 with C's ``round`` (half away from zero), as Caffe does. Pixels are
``(pixel - mean) * window_data_param.scale`` with the mean file's centre or ``mean_value``; ``mirror`` flips.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..fsutil import open_regular
from . import DataError, DataLayer, register_reader
from . import images as _images
from .datum import read_mean
from .seeding import base_seed, stream

F32 = np.float32


def _cround(x: np.float32) -> int:
    """C's ``round``: halfway cases away from zero."""
    v = float(x)
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def read_window_file(path: str, root: str, layer: str | None = None):
    """Images ``[(path, (c, h, w))]`` and windows ``[(image_index, label, overlap, x1, y1, x2, y2)]``."""
    try:
        with open_regular(path, "rb") as f:  # C-locale whitespace, as ``infile >>`` splits (bytes.split)
            tokens = [os.fsdecode(token) for token in f.read().split()]
    except OSError as e:
        raise DataError(f"failed to open window file '{path}': {e.strerror or e}", layer=layer) from None
    if not tokens:
        raise DataError(f"window file '{path}' is empty", layer=layer)
    images: list[tuple[str, tuple[int, int, int]]] = []
    windows: list[tuple[int, int, float, int, int, int, int]] = []
    it = iter(tokens)
    try:
        for hashtag in it:
            if hashtag != "#":
                raise DataError(f"window file '{path}': expected '#', got {hashtag!r}", layer=layer)
            index = int(next(it))
            image = root + next(it)
            size = (int(next(it)), int(next(it)), int(next(it)))
            images.append((image, size))
            for _ in range(int(next(it))):
                label, overlap = int(next(it)), float(next(it))
                x1, y1, x2, y2 = (int(next(it)) for _ in range(4))
                windows.append((index, label, overlap, x1, y1, x2, y2))
    except (StopIteration, ValueError):
        raise DataError(f"window file '{path}' is truncated or malformed", layer=layer) from None
    return images, windows


@register_reader("WindowData")
class WindowData:
    """A ``WindowData`` layer's source: ``next_batch()`` -> ``[data (N, C, crop, crop), label (N,)]``."""

    independent_batches = True  # every batch is a fresh random draw: loader workers need not skip

    def __init__(self, layer: DataLayer, seed: int | None = None, worker: int = 0):
        self.layer = layer
        p, t = layer.param, layer.transform
        name = layer.name
        if p is None or not p.source:
            raise DataError("window_data_param.source is not set", layer=name)
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise DataError("window_data_param.batch_size must be positive", layer=name)
        self.crop = int(t.crop_size) if t is not None else 0
        if self.crop <= 0:
            raise DataError("WindowData needs transform_param.crop_size > 0", layer=name)
        self.mirror = bool(t is not None and t.mirror)
        self.scale = F32(p.scale)
        self.context_pad = int(p.context_pad)
        if self.context_pad < 0 or 2 * self.context_pad >= self.crop:  # Caffe divides by crop - 2 context_pad
            raise DataError(f"context_pad {self.context_pad} leaves no window inside crop_size {self.crop} (needs "
                            "0 <= 2 context_pad < crop_size)", layer=name)
        self.square = p.crop_mode == "square"
        self.fg_fraction = F32(p.fg_fraction)
        num_fg = int(F32(self.batch_size) * self.fg_fraction) if np.isfinite(self.fg_fraction) else -1
        if not 0 <= num_fg <= self.batch_size:  # Caffe writes past its batch
            raise DataError(f"fg_fraction {p.fg_fraction:g} gives {num_fg} foreground windows in a batch of "
                            f"{self.batch_size}", layer=name)
        self.images, windows = read_window_file(p.source, p.root_folder, name)
        self.channels = self.images[-1][1][0]  # Caffe sizes the top by the last image's channels
        fg_t, bg_t = F32(p.fg_threshold), F32(p.bg_threshold)
        self.fg, self.bg = [], []
        for w in windows:
            overlap = F32(w[2])
            if overlap >= fg_t:
                if w[1] <= 0:
                    raise DataError(f"foreground window of image {w[0]} has label {w[1]} (must be > 0)", layer=name)
                self.fg.append(w)
            elif overlap < bg_t:
                self.bg.append((w[0], 0, 0.0, *w[3:]))
        if not self.fg or not self.bg:
            raise DataError(f"window file has {len(self.fg)} foreground and {len(self.bg)} background windows; "
                            "both must be non-empty", layer=name)
        for w in self.fg + self.bg:
            if not 0 <= w[0] < len(self.images):
                raise DataError(f"window refers to image index {w[0]}, the file lists {len(self.images)}", layer=name)
        self.cache: dict[int, bytes] | None = None
        if p.cache_images:
            self.cache = {}
            for i, (path, _) in enumerate(self.images):
                try:
                    with open_regular(path) as f:
                        self.cache[i] = f.read()
                except OSError as e:
                    raise DataError(f"could not open or find file '{path}': {e.strerror or e}", layer=name) from None
        self.mean: np.ndarray | None = None
        self.mean_values: np.ndarray | None = None
        if t is not None and t.has("mean_file"):
            if t.mean_value:
                raise DataError("cannot specify mean_file and mean_value at the same time", layer=name)
            self.mean = read_mean(t.mean_file, name)
            if self.mean.shape[1] < self.crop or self.mean.shape[2] < self.crop:
                raise DataError(f"mean_file is smaller than crop_size {self.crop}", layer=name)
            if self.mean.shape[0] < self.channels:  # Caffe reads channel c of the mean for channel c of a window
                raise DataError(f"mean_file has {self.mean.shape[0]} channels, the images {self.channels}", layer=name)
        elif t is not None and t.mean_value:
            mv = np.asarray(t.mean_value, dtype=F32)
            if mv.size not in (1, self.channels):
                raise DataError(f"specify either 1 mean_value or as many as channels: {self.channels}", layer=name)
            self.mean_values = np.broadcast_to(mv, (self.channels,)).copy()
        self.rng = stream(base_seed(seed), name, "windows", layer.rank, worker)

    def _rand(self) -> int:
        return int(self.rng.integers(0, 1 << 32))

    def _image(self, index: int) -> np.ndarray:
        if self.cache is not None:
            return _images.decode(self.cache[index], "color", f"image '{self.images[index][0]}'", self.layer.name)
        return _images.read(self.images[index][0], "color", self.layer.name)

    def next_batch(self) -> list[np.ndarray]:
        crop = self.crop
        data = np.zeros((self.batch_size, self.channels, crop, crop), dtype=F32)
        labels = np.empty((self.batch_size,), dtype=F32)
        num_fg = int(F32(self.batch_size) * self.fg_fraction)
        item = 0
        for pool, count in ((self.bg, self.batch_size - num_fg), (self.fg, num_fg)):
            for _ in range(count):
                window = pool[self._rand() % len(pool)]
                do_mirror = self.mirror and self._rand() % 2 == 1
                self._warp(window, do_mirror, data[item])
                labels[item] = window[1]
                item += 1
        return [data, labels]

    def _warp(self, window: tuple, do_mirror: bool, out: np.ndarray) -> None:
        img = self._image(window[0])
        rows, cols = img.shape[:2]
        x1, y1, x2, y2 = window[3:]
        crop = self.crop
        out_w = out_h = crop
        pad_w = pad_h = 0
        if self.context_pad > 0 or self.square:
            context_scale = F32(crop) / F32(crop - 2 * self.context_pad)
            half_h, half_w = F32((y2 - y1 + 1) / 2.0), F32((x2 - x1 + 1) / 2.0)
            cx, cy = F32(x1) + half_w, F32(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1, x2 = _cround(cx - half_w * context_scale), _cround(cx + half_w * context_scale)
            y1, y2 = _cround(cy - half_h * context_scale), _cround(cy + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            scale_x, scale_y = F32(crop) / F32(unclipped_w), F32(crop) / F32(unclipped_h)
            out_w = _cround(F32(x2 - x1 + 1) * scale_x)
            out_h = _cround(F32(y2 - y1 + 1) * scale_y)
            pad_x1, pad_x2 = _cround(F32(pad_x1) * scale_x), _cround(F32(pad_x2) * scale_x)
            pad_y1 = _cround(F32(pad_y1) * scale_y)
            pad_h = pad_y1
            pad_w = pad_x2 if do_mirror else pad_x1
            out_h = min(out_h, crop - pad_h)
            out_w = min(out_w, crop - pad_w)
        if not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows) or out_w <= 0 or out_h <= 0:
            raise DataError(f"window ({x1}, {y1}, {x2}, {y2}) does not fit image '{self.images[window[0]][0]}' "
                            f"of {cols}x{rows}", layer=self.layer.name)
        patch = _images.resize(img[y1 : y2 + 1, x1 : x2 + 1], out_h, out_w, self.layer.name)
        if do_mirror:
            patch = patch[:, ::-1]
        pixels = _images.to_chw(patch).astype(F32)
        c = pixels.shape[0]
        if c != self.channels:
            raise DataError(f"images have {c} channels, the window file says {self.channels}", layer=self.layer.name)
        region = (slice(None), slice(pad_h, pad_h + out_h), slice(pad_w, pad_w + out_w))
        if self.mean is not None:
            off = (self.mean.shape[2] - crop) // 2
            pixels -= self.mean[: len(pixels), off + pad_h : off + pad_h + out_h, off + pad_w : off + pad_w + out_w]
        elif self.mean_values is not None:
            pixels -= self.mean_values[:, None, None]
        out[region] = pixels * self.scale
