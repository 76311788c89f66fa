"""``caffe.io``: pycaffe's image loading, preprocessing (``Transformer``), 10-crop ``oversample`` and conversions
between numpy arrays and Caffe's BlobProto / Datum messages.

pycaffe reads images with scikit-image; here OpenCV decodes them (already a dependency of the project), giving
the same arrays (RGB, float32 in [0, 1], skimage's grey weights). ``resize_image`` gives Caffe 1.0's pycaffe
numbers: scikit-image 0.13's resize for one or three channels (computed here in numpy: pixel centres, the
image's minimum beyond its border, no anti-aliasing; scikit-image 0.19 and later anti-alias when shrinking, so
a recent pycaffe install differs there), ``scipy.ndimage.zoom`` for other channel counts, as pycaffe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..data import DataError
from ..data.images import opencv_reason
from ..errors import InputFileError, Location
from ..limits import check_temporary
from .proto import caffe_pb2

# -- proto / datum / ndarray conversion ------------------------------------------------------------------------


def blobproto_to_array(blob: Any, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff) as an array of its shape (legacy num/channels/height/width when set)."""
    data = np.array(blob.diff if return_diff else blob.data)
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width"):
        return data.reshape(blob.num, blob.channels, blob.height, blob.width)
    return data.reshape(blob.shape.dim)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> Any:
    """An N-d array (and optionally its diff, same shape) as a BlobProto with ``shape``."""
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(np.asarray(arr).astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist: Sequence[np.ndarray]) -> bytes:
    """Arrays as a serialised BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data: bytes) -> list[np.ndarray]:
    """A serialised BlobProtoVector as a list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None) -> Any:
    """A (C, H, W) array as a Datum: uint8 arrays as bytes in ``data``, anything else in ``float_data``."""
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum: Any) -> np.ndarray:
    """A Datum's values as a (C, H, W) array: uint8 from ``data``, else float from ``float_data`` (the label is
    ``datum.label``). Encoded (JPEG/PNG) datums are decoded first."""
    if datum.encoded:
        import cv2

        try:
            img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as e:  # over OpenCV's pixel limit, say: one line, not OpenCV's multi-line text
            raise DataError(f"cannot decode the encoded Datum: {opencv_reason(e)}") from None
        if img is None:
            raise ValueError("encoded Datum does not hold an image OpenCV can decode")
        return img[np.newaxis] if img.ndim == 2 else img.transpose(2, 0, 1)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(datum.channels, datum.height, datum.width).copy()
    return np.array(datum.float_data).astype(float).reshape(datum.channels, datum.height, datum.width)


# -- preprocessing -------------------------------------------------------------------------------------------------


class Transformer:
    """Prepare images for a net's inputs, as pycaffe's ``caffe.io.Transformer``.

    ``inputs`` maps input names to blob shapes (``{'data': net.blobs['data'].data.shape}``). ``preprocess``
    applies, in this order: float32, resize to the input's H x W, ``transpose``, ``channel_swap``,
    ``raw_scale``, subtract ``mean``, ``input_scale``; ``deprocess`` undoes it.
    """

    def __init__(self, inputs: Mapping[str, Sequence[int]]):
        self.inputs = {k: tuple(v) for k, v in inputs.items()}
        self.transpose: dict[str, Sequence[int]] = {}
        self.channel_swap: dict[str, Sequence[int]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def _check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise ValueError(f"{in_} is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """(H', W', K) image -> (K, H, W) float32 input for ``in_``."""
        self._check_input(in_)
        caffe_in = np.asarray(data).astype(np.float32, copy=False)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != tuple(in_dims):
            caffe_in = resize_image(caffe_in, in_dims)
        if in_ in self.transpose:
            caffe_in = caffe_in.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            caffe_in = caffe_in[list(self.channel_swap[in_]), :, :]
        # pycaffe scales in place on float32, rounding after each step; on a copy here, never the caller's array
        caffe_in = np.array(caffe_in, dtype=np.float32, copy=True)
        if in_ in self.raw_scale:
            caffe_in *= self.raw_scale[in_]
        if in_ in self.mean:
            caffe_in -= self.mean[in_]
        if in_ in self.input_scale:
            caffe_in *= self.input_scale[in_]
        return caffe_in

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """Invert :meth:`preprocess` (but not the resize); ``data`` may have a leading batch axis of 1."""
        self._check_input(in_)
        decaf_in = np.array(data, copy=True).squeeze()
        if in_ in self.input_scale:
            decaf_in /= self.input_scale[in_]
        if in_ in self.mean:
            decaf_in += self.mean[in_]
        if in_ in self.raw_scale:
            decaf_in /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            decaf_in = decaf_in[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            decaf_in = decaf_in.transpose(np.argsort(self.transpose[in_]))
        return decaf_in

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """Order of the image axes, e.g. (2, 0, 1) turns H x W x C into C x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ValueError("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """Channel order after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ValueError("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Scale applied before the mean subtraction (255 for models trained on [0, 255] images)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """Mean to subtract: one value per channel, or a (C,) H x W image (resized to the input if needed)."""
        self._check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms  # for the checks only: pycaffe keeps an H x W mean as it is (it broadcasts)
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            in_shape = self.inputs[in_][1:]
            if ms != tuple(in_shape):
                m = mean.reshape(ms)
                m_min, m_max = m.min(), m.max()
                if m_max > m_min:  # pycaffe: normalised in the mean's dtype, resized, then rescaled in float32
                    normal = (m - m_min) / (m_max - m_min)  # (numpy 1's casting of a float32 array by a scalar)
                    resized = resize_image(normal.transpose((1, 2, 0)), in_shape[1:]).transpose((2, 0, 1))
                    mean = resized * np.float32(m_max - m_min) + np.float32(m_min)
                else:  # a constant mean stays that constant (pycaffe would divide by zero)
                    mean = resize_image(m.transpose((1, 2, 0)), in_shape[1:]).transpose((2, 0, 1))
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Scale applied after the mean subtraction."""
        self._check_input(in_)
        self.input_scale[in_] = scale


# -- image IO --------------------------------------------------------------------------------------------------
class ImageFileError(InputFileError, OSError):
    """An image ``load_image`` cannot open or decode. Also an ``OSError``, what scikit-image raises in pycaffe,
    so scripts that skip bad images with ``except IOError`` keep working."""


_GREY = np.array([0.2125, 0.7154, 0.0721], dtype=np.float64)  # skimage's rgb2gray weights


def load_image(filename: str | os.PathLike, color: bool = True) -> np.ndarray:
    """An image file as float32 in [0, 1]: (H, W, 3) RGB, or (H, W, 1) intensity with ``color=False``
    (grey images are repeated to 3 channels when ``color``; alpha is dropped)."""
    import cv2

    path = os.fspath(filename)
    raw = np.fromfile(path, dtype=np.uint8) if os.path.isfile(path) else None
    try:
        img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw is not None and raw.size else None
    except cv2.error as e:  # a decompression bomb (over CV_IO_MAX_IMAGE_PIXELS), say
        raise ImageFileError(f"cannot decode the image: {opencv_reason(e)}", Location(path)) from None
    if img is None:
        raise ImageFileError("Could not open or decode the image file", Location(path))
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(img.dtype, 1.0)
    img = img.astype(np.float64) / scale
    if img.ndim == 3:
        img = img[:, :, [2, 1, 0, 3][: img.shape[2]]] if img.shape[2] in (3, 4) else img  # BGR(A) -> RGB(A)
        if img.shape[2] == 4:
            img = img[:, :, :3]
        if not color:
            img = img[:, :, :3] @ _GREY
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    return img


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """Resize an (H, W, K) array to ``new_dims`` (height, width) as pycaffe of Caffe 1.0 does.

    One or three channels go through scikit-image 0.13's ``resize`` in pycaffe (pixel centres mapped, the image
    padded with its minimum, which is ``mode='constant'`` on the image scaled to [0, 1], no anti-aliasing,
    results clipped to the image's range); orders 0 (nearest), 1 (bilinear) and 3 (Catmull-Rom bicubic) are
    computed here the same way, tap by tap (other orders use scipy's splines, as recent skimage does). Other
    channel counts go through ``scipy.ndimage.zoom`` (corner-aligned), as pycaffe does."""
    h, w = int(new_dims[0]), int(new_dims[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"new_dims must be positive (height, width), got ({h}, {w})")
    im = np.asarray(im)  # computed in its own dtype, as pycaffe's numpy arithmetic and zoom do (uint8 stays)
    if im.dtype.kind not in "iuf":
        raise ValueError(f"resize_image takes an array of numbers, got dtype {im.dtype}")
    if im.ndim == 2:
        im = im[:, :, np.newaxis]
    if im.ndim != 3:
        raise ValueError(f"resize_image takes an (H, W, K) array, got shape {im.shape}")
    k = im.shape[-1]
    # before anything is allocated (a hostile size would otherwise fail inside numpy or scipy)
    check_temporary((h, w, k), f"resizing an image to {h}x{w}x{k} (float32)")
    check_temporary((h, im.shape[1] + 2, k), f"resizing an image to {h}x{w}x{k} (its first pass, "
                    f"{h}x{im.shape[1]}x{k} in float64)", itemsize=8)
    if im.size == 0:
        raise ValueError(f"cannot resize an empty image (shape {im.shape})")
    if k in (1, 3):
        lo, hi = im.min(), im.max()
        if not hi > lo:  # a constant image (pycaffe avoids dividing by zero the same way)
            return np.full((h, w, k), lo, dtype=np.float32)
        # pycaffe's own rounding: scaled to [0, 1] in the image's dtype, resized in float64 (skimage), scaled back
        std = ((im - lo) / (hi - lo)).astype(np.float64)
        if interp_order in _TAPS:
            out = _resample(_resample(std, h, 0, interp_order, 0.0), w, 1, interp_order, 0.0)
        else:  # skimage's spline orders: pixel centres, zero beyond the border
            out = _zoom(std, (h, w), interp_order, centres_pad=0.0)
        return (np.clip(out, 0.0, 1.0) * (hi - lo) + lo).astype(np.float32)
    return _zoom(im, (h, w), interp_order)


def _catmull_rom(x: np.ndarray) -> np.ndarray:
    """Weights of the taps at -1, 0, 1, 2 for a point ``x`` in [0, 1) past tap 0 (skimage 0.13's bicubic)."""
    x = x[:, None]
    return 0.5 * np.concatenate([-x + 2 * x**2 - x**3, 2 - 5 * x**2 + 3 * x**3,
                                 x + 4 * x**2 - 3 * x**3, -(x**2) + x**3], axis=1)


def _nearest(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rounded = np.where(c > 0, np.floor(c + 0.5), np.ceil(c - 0.5))  # C's round-half-away, as skimage 0.13
    return rounded[:, None].astype(np.int64), np.ones((len(c), 1))


def _linear(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first = np.floor(c)
    frac = (c - first)[:, None]
    return first[:, None].astype(np.int64) + np.arange(2), np.concatenate([1 - frac, frac], axis=1)


def _cubic(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first = np.floor(c)
    return first[:, None].astype(np.int64) + np.arange(-1, 3), _catmull_rom(c - first)


_TAPS = {0: _nearest, 1: _linear, 3: _cubic}


def _resample(im: np.ndarray, size: int, axis: int, order: int, pad: float) -> np.ndarray:
    """Resize one axis: output pixel ``o`` samples input coordinate ``(o + 0.5) * scale - 0.5``; taps outside the
    image read ``pad``."""
    n = im.shape[axis]
    coords = (np.arange(size) + 0.5) * (n / size) - 0.5
    index, weight = _TAPS[order](coords)
    padded = np.concatenate([np.full_like(np.take(im, [0], axis=axis), pad), im,
                             np.full_like(np.take(im, [0], axis=axis), pad)], axis=axis)
    index = np.clip(index + 1, 0, n + 1)  # every tap beyond the border reads the pad
    out = 0.0
    for t in range(index.shape[1]):
        shape = [1] * im.ndim
        shape[axis] = size
        out = out + weight[:, t].reshape(shape) * np.take(padded, index[:, t], axis=axis)
    return out


def _zoom(im: np.ndarray, dims: tuple[int, int], order: int, centres_pad: float | None = None) -> np.ndarray:
    """pycaffe's path for channel counts other than 1 and 3: ``scipy.ndimage.zoom`` (corner-aligned); with
    ``centres_pad``, pixel centres mapped and that value beyond the border (skimage's spline orders)."""
    if isinstance(order, bool) or not hasattr(order, "__index__") or not 0 <= order.__index__() <= 5:
        raise ValueError(f"interp_order must be an int from 0 to 5, got {order!r}")
    order = order.__index__()
    try:
        from scipy import ndimage
    except ImportError:
        raise ValueError(f"resizing {im.shape[-1]}-channel images (or interp_order {order}) needs scipy, as "
                         "pycaffe's does: pip install scipy") from None
    scale = (dims[0] / im.shape[0], dims[1] / im.shape[1], 1.0)
    if centres_pad is None:
        out = ndimage.zoom(im, scale, order=order)
    else:
        out = ndimage.zoom(im, scale, order=order, mode="grid-constant", cval=centres_pad, grid_mode=True)
    if out.shape[:2] != dims:  # zoom rounds the output size; pycaffe's callers assume new_dims
        raise ValueError(f"scipy.ndimage.zoom gave {out.shape[:2]} for new_dims {dims}")
    return out.astype(np.float32)


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """The 10 crops of the AlexNet paper per image: 4 corners and the centre, then the same 5 mirrored
    left-right. ``images``: (H, W, K) arrays of one size; returns (10 N, h, w, K) float32."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0
    crops_ix = np.empty((5, 4), dtype=int)
    corners = [(i, j) for i in (0, im_shape[0] - crop_dims[0]) for j in (0, im_shape[1] - crop_dims[1])]
    for k, (i, j) in enumerate(corners):
        crops_ix[k] = (i, j, i + crop_dims[0], j + crop_dims[1])
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0, crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]  # mirrors
    return crops
