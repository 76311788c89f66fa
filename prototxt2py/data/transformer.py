"""Caffe's ``DataTransformer``: crop, mirror, mean subtraction and scaling of images, in Caffe's order.

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
        self._draws: list[int] = []
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
        """Caffe's ``Rand(n)``: a 32-bit draw modulo ``n`` (draws are buffered: one numpy call per 4096)."""
        if not self._draws:
            self._draws = self.rng.integers(0, 1 << 32, size=4096, dtype=np.uint64).tolist()[::-1]
        return self._draws.pop() % n

    def __call__(self, img: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Transform one ``(C, H, W)`` uint8 or float32 image into ``out`` (float32, the :meth:`out_shape`)."""
        result = self.batch([img])[0]
        if out is None:
            return result
        if out.shape != result.shape:
            raise DataError(
                f"an image of {'x'.join(map(str, img.shape))} gives {'x'.join(map(str, result.shape))} after "
                f"transformation, the blob is {'x'.join(map(str, out.shape))}",
                layer=self.layer,
            )
        out[...] = result
        return out

    def batch(self, imgs: list[np.ndarray], placement: list[tuple[int, int, bool]] | None = None) -> np.ndarray:
        """Transform a batch of ``(C, H, W)`` images into one float32 ``(N, C', H', W')`` array. The batch is
        sized by its first image (as Caffe's data layers do); the others must give the same shape. Random
        draws are made per image in Caffe's order (mirror, then crop offsets); the arithmetic runs on the
        whole batch at once, element for element the same float32 operations as Caffe's loop. ``placement``
        receives each image's crop offsets and mirror flag ``(h_off, w_off, mirrored)`` (for its boxes)."""
        c, oh, ow = self.out_shape(imgs[0].shape)
        n = len(imgs)
        stacked = np.empty((n, c, oh, ow), dtype=np.result_type(*(im.dtype for im in imgs)))
        mirrors = np.zeros(n, dtype=bool)
        offsets = []
        for i, img in enumerate(imgs):
            ic, h, w = img.shape
            if self.out_shape(img.shape) != (c, oh, ow):
                raise DataError(
                    f"an image of {ic}x{h}x{w} gives {'x'.join(map(str, self.out_shape(img.shape)))} after "
                    f"transformation, but the batch was sized {c}x{oh}x{ow} by its first image",
                    layer=self.layer,
                )
            mirrors[i] = self.mirror and self._rand(2) == 1
            h_off = w_off = 0
            if self.crop:
                if self.phase == "TRAIN":
                    h_off = self._rand(h - self.crop + 1)
                    w_off = self._rand(w - self.crop + 1)
                else:
                    h_off, w_off = (h - self.crop) // 2, (w - self.crop) // 2
            offsets.append((h_off, w_off))
            stacked[i] = img[:, h_off : h_off + oh, w_off : w_off + ow]
        out = stacked.astype(np.float32)
        if self.mean is not None:
            for img in imgs:
                if self.mean.shape != img.shape:
                    raise DataError(
                        f"mean_file is {'x'.join(map(str, self.mean.shape))} but the image is "
                        f"{'x'.join(map(str, img.shape))}",
                        layer=self.layer,
                    )
            if len(set(offsets)) == 1:
                h_off, w_off = offsets[0]
                out -= self.mean[None, :, h_off : h_off + oh, w_off : w_off + ow]
            else:
                out -= np.stack([self.mean[:, y : y + oh, x : x + ow] for y, x in offsets])
        elif self.mean_values is not None:
            out -= self._channel_means(c)[None, :, None, None]
        out *= self.scale
        if placement is not None:
            placement.extend((h, w, bool(m)) for (h, w), m in zip(offsets, mirrors, strict=True))
        if mirrors.any():
            out[mirrors] = out[mirrors][..., ::-1]
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
