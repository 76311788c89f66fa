"""``caffe.io``: pycaffe's image loading, preprocessing (``Transformer``), 10-crop ``oversample`` and conversions
between numpy arrays and Caffe's BlobProto / Datum messages.

pycaffe reads and resizes images with scikit-image and scipy; here OpenCV does both (already a dependency of
the project). Loading gives the same arrays (RGB, float32 in [0, 1], skimage's grey weights). Bilinear resizing
maps pixel centres as skimage does, so interiors agree to float rounding; at the one-pixel border OpenCV
replicates the edge where skimage's result depends on its version (its ``mode='constant'`` pads with zeros in
recent versions, and recent versions also anti-alias when shrinking).
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
        if caffe_in is data:
            caffe_in = caffe_in.copy()  # the scalings below work in place: never on the caller's array
        if in_ in self.raw_scale:
            caffe_in = caffe_in * self.raw_scale[in_]
        if in_ in self.mean:
            caffe_in = caffe_in - self.mean[in_]
        if in_ in self.input_scale:
            caffe_in = caffe_in * self.input_scale[in_]
        return caffe_in.astype(np.float32, copy=False)

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
                ms = (1,) + ms
                mean = mean.reshape(ms)
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            in_shape = self.inputs[in_][1:]
            if ms != tuple(in_shape):
                resized = resize_image(mean.transpose((1, 2, 0)).astype(np.float32), in_shape[1:])
                mean = resized.reshape(tuple(in_shape[1:]) + (ms[0],)).transpose((2, 0, 1))
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Scale applied after the mean subtraction."""
        self._check_input(in_)
        self.input_scale[in_] = scale


# -- image IO --------------------------------------------------------------------------------------------------

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
        raise InputFileError(f"cannot decode the image: {opencv_reason(e)}", Location(path)) from None
    if img is None:
        raise InputFileError("Could not open or decode the image file", Location(path))
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
    """Resize an (H, W, K) array to ``new_dims`` (height, width): nearest (0), bilinear (1) or bicubic (3)."""
    import cv2

    h, w = int(new_dims[0]), int(new_dims[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"new_dims must be positive (height, width), got ({h}, {w})")
    im = np.asarray(im, dtype=np.float32)
    if im.ndim == 2:
        im = im[:, :, np.newaxis]
    # before OpenCV allocates it (its own error is multi-line, or "Insufficient memory" after trying)
    check_temporary((h, w, im.shape[-1]), f"resizing an image to {h}x{w}x{im.shape[-1]} (float32)")
    if im.shape[-1] and im.min() == im.max():  # constant image: avoid interpolation noise
        return np.full((h, w, im.shape[-1]), im.flat[0], dtype=np.float32)
    interp = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}.get(interp_order)
    if interp is None:
        raise ValueError(f"interp_order must be 0, 1 or 3, got {interp_order}")
    parts = []
    for c in range(0, im.shape[-1], 4):  # OpenCV resizes up to 4 channels at a time in every build
        try:
            chunk = cv2.resize(np.ascontiguousarray(im[:, :, c:c + 4]), (w, h), interpolation=interp)
        except cv2.error as e:  # a size OpenCV cannot take (beyond int) or allocate, with the limits turned off
            raise ValueError(f"cannot resize an image to {h}x{w}: {opencv_reason(e)}") from None
        parts.append(chunk.reshape(h, w, -1))
    return np.concatenate(parts, axis=2).astype(np.float32)


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
