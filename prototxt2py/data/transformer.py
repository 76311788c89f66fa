"""Caffe's ``DataTransformer``: crop, mirror, mean subtraction and scaling of one image, in Caffe's order.

For every output pixel Caffe computes ``(pixel - mean) * scale`` in float32, where ``mean`` is the
``mean_file`` blob at the same (uncropped) position or ``mean_value[c]``; the crop window is random in TRAIN
(``Rand(H - crop + 1)``, ``Rand(W - crop + 1)``) and centred in TEST (offsets rounded down), and mirroring is a
coin flip drawn *before* the crop offsets whenever ``mirror`` is set, in either phase. The same arithmetic in
numpy float32 gives Caffe's numbers bit for bit (no reordering: one subtraction, one multiplication).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import DataError
from .datum import read_mean


class DataTransformer:
    """One layer's ``transform_param`` bound to its phase and a random stream."""

    def __init__(self, param: Any, phase: str, rng: np.random.Generator | None = None, layer: str | None = None):
        self.layer = layer
        self.phase = phase
        self.rng = rng if rng is not None else np.random.default_rng()
        self.scale = np.float32(param.scale if param is not None else 1.0)
        self.mirror = bool(param is not None and param.mirror)
        self.crop = int(param.crop_size) if param is not None else 0
        self.force_color = bool(param is not None and param.force_color)
        self.force_gray = bool(param is not None and param.force_gray)
        self.mean: np.ndarray | None = None
        self.mean_values: np.ndarray | None = None
        if param is None:
            return
        if param.has("mean_file") and param.mean_value:
            raise DataError("cannot specify mean_file and mean_value at the same time", layer=layer)
        if param.has("mean_file"):
            self.mean = read_mean(param.mean_file, layer=layer)
        if param.mean_value:
            self.mean_values = np.asarray(param.mean_value, dtype=np.float32)

    def out_shape(self, chw: tuple[int, ...]) -> tuple[int, int, int]:
        """The transformed shape of a ``(C, H, W)`` image (Caffe's ``InferBlobShape``)."""
        c, h, w = chw
        if c <= 0:
            raise DataError("an image has no channels", layer=self.layer)
        if self.crop and (h < self.crop or w < self.crop):
            raise DataError(f"crop_size {self.crop} is larger than an image of {h}x{w}", layer=self.layer)
        return (c, self.crop, self.crop) if self.crop else (c, h, w)

    def _rand(self, n: int) -> int:
        return int(self.rng.integers(n))

    def __call__(self, img: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Transform a ``(C, H, W)`` uint8 or float32 image into ``out`` (float32, the :meth:`out_shape`)."""
        c, h, w = img.shape
        oc, oh, ow = self.out_shape((c, h, w))
        if out is None:
            out = np.empty((oc, oh, ow), dtype=np.float32)
        elif out.shape != (oc, oh, ow):
            raise DataError(
                f"an image of {c}x{h}x{w} gives {oc}x{oh}x{ow} after transformation, but the batch was sized "
                f"{'x'.join(map(str, out.shape))} by its first image",
                layer=self.layer,
            )
        do_mirror = self.mirror and self._rand(2) == 1
        h_off = w_off = 0
        if self.crop:
            if self.phase == "TRAIN":
                h_off = self._rand(h - self.crop + 1)
                w_off = self._rand(w - self.crop + 1)
            else:
                h_off, w_off = (h - self.crop) // 2, (w - self.crop) // 2
        window = (slice(None), slice(h_off, h_off + oh), slice(w_off, w_off + ow))
        pixels = img[window].astype(np.float32)
        if self.mean is not None:
            if self.mean.shape != (c, h, w):
                raise DataError(
                    f"mean_file is {'x'.join(map(str, self.mean.shape))} but the image is {c}x{h}x{w}", layer=self.layer
                )
            pixels -= self.mean[window]
        elif self.mean_values is not None:
            pixels -= self._channel_means(c)[:, None, None]
        pixels *= self.scale
        out[...] = pixels[:, :, ::-1] if do_mirror else pixels
        return out

    def _channel_means(self, channels: int) -> np.ndarray:
        mv = self.mean_values
        assert mv is not None
        if mv.size == 1:
            return np.repeat(mv, channels)
        if mv.size != channels:
            raise DataError(
                f"specify either 1 mean_value or as many as channels: {channels} (got {mv.size})", layer=self.layer
            )
        return mv
