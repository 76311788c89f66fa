"""Caffe's record formats: ``Datum`` (one image + label in an LMDB/LevelDB) and ``BlobProto`` (``.binaryproto``
mean files), read and written with the project's generated ``caffe_pb2``.

A Datum holds raw ``uint8`` bytes in Caffe's ``(C, H, W)`` order, or ``float_data``, or (``encoded``) the bytes of
a JPEG/PNG file that Caffe decodes with OpenCV (:mod:`prototxt2py.data.images`).
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.message import DecodeError

from .. import limits
from ..errors import ResourceLimitError
from ..fsutil import open_regular
from ..limits import INT32_MAX
from ..proto import caffe_pb2
from ..weights import as_float32
from . import DataError
from . import images as _images

INT32_MIN = -INT32_MAX - 1
#: The most bytes of pixels (or of an encoded file) one Datum record holds: protobuf serialises no message of
#: 2 GiB or more, and the rest of a Datum (tags and varints of channels, height, width, label, encoded and the
#: length of ``data``) takes under 64 bytes.
MAX_RECORD_DATA = INT32_MAX - 64


def check_record_size(nbytes: int, what: str) -> None:
    """Refuse a Datum of ``nbytes`` of data before the data is made: protobuf fails only when serialising,
    after the allocation, with an error that names no image."""
    if nbytes > MAX_RECORD_DATA:
        raise DataError(f"{what} needs {nbytes:,} bytes in one Datum record, over the {MAX_RECORD_DATA:,} it holds "
                        "(protobuf's 2 GiB message limit)")


def check_label(label: int) -> int:
    """A Datum's label is an ``int32``, as Caffe's; refuse one out of range instead of protobuf's bare ValueError."""
    if not INT32_MIN <= int(label) <= INT32_MAX:
        raise DataError(f"label {label} is out of Caffe's int32 range [{INT32_MIN}, {INT32_MAX}]")
    return int(label)


def parse_datum(raw: bytes, key: str = "", layer: str | None = None) -> caffe_pb2.Datum:
    """A serialised Datum (an LMDB/LevelDB value); a corrupt one is one error naming its key."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(raw)
    except DecodeError:
        raise DataError(f"record '{key}' is not a Caffe Datum", layer=layer) from None
    return datum


def datum_image(
    datum: caffe_pb2.Datum, force_color: bool = False, force_gray: bool = False, key: str = "", layer: str | None = None
) -> np.ndarray:
    """The Datum's pixels as a ``(C, H, W)`` array: ``uint8`` for raw and encoded Datums, ``float32`` for
    ``float_data``. ``force_color``/``force_gray`` only affect encoded Datums (as in Caffe, which ignores them
    with a logged error for raw ones; its check that both are not set sits in the encoded branch too)."""
    if datum.encoded:
        if force_color and force_gray:
            raise DataError("cannot set both force_color and force_gray", layer=layer)
        mode = "color" if force_color else "gray" if force_gray else "native"
        img = _images.decode(datum.data, mode, what=f"encoded record '{key}'", layer=layer)
        return _images.to_chw(img)
    c, h, w = datum.channels, datum.height, datum.width
    if c <= 0 or h <= 0 or w <= 0:
        raise DataError(f"record '{key}' has no image shape (channels {c}, height {h}, width {w})", layer=layer)
    n = c * h * w
    if datum.data:
        if len(datum.data) != n:
            msg = f"record '{key}' holds {len(datum.data)} bytes, its shape {c}x{h}x{w} needs {n}"
            raise DataError(msg, layer=layer)
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != n:
        raise DataError(
            f"record '{key}' holds {len(datum.float_data)} float values, its shape {c}x{h}x{w} needs {n}", layer=layer
        )
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


def image_datum(chw: np.ndarray, label: int) -> caffe_pb2.Datum:
    """A raw ``uint8`` Datum from a ``(C, H, W)`` image (Caffe's ``CVMatToDatum``)."""
    c, h, w = chw.shape
    return caffe_pb2.Datum(
        channels=c,
        height=h,
        width=w,
        data=np.ascontiguousarray(chw, dtype=np.uint8).tobytes(),
        label=check_label(label),
        encoded=False,  # written explicitly, as CVMatToDatum does: records are byte-identical to Caffe's
    )


def encoded_datum(buf: bytes, label: int) -> caffe_pb2.Datum:
    """An ``encoded`` Datum holding image file bytes (shape fields left 0, as Caffe writes them)."""
    return caffe_pb2.Datum(data=buf, label=check_label(label), encoded=True)


# --- BlobProto --------------------------------------------------------------------------------------------------


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """A BlobProto's shape as ``Blob::FromProto`` reads it: the legacy num/channels/height/width when any is
    set, else ``shape.dim``."""
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def read_mean(path: str, layer: str | None = None) -> np.ndarray:
    """A ``.binaryproto`` mean (``compute_image_mean``'s output) as a float32 ``(C, H, W)`` array."""
    try:
        with open_regular(path) as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read mean_file '{path}': {e.strerror or e}", layer=layer) from None
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(raw)
    except DecodeError:
        raise DataError(f"mean_file '{path}' is not a BlobProto (.binaryproto)", layer=layer) from None
    shape = blob_shape(blob)
    try:  # Blob::Reshape's checks (no negative dim, at most INT_MAX values), before any product is taken
        count = limits.check_shape(shape, f"mean_file '{path}' shape", layer=layer) if shape else 0
    except ResourceLimitError as e:
        raise DataError(e.message, layer=layer) from None
    values = as_float32(blob.double_data if len(blob.double_data) else blob.data)
    if count == 0 or values.size != count:
        raise DataError(f"mean_file '{path}': {values.size} values for shape {'x'.join(map(str, shape))}", layer=layer)
    if len(shape) == 4:  # Caffe reads channels/height/width only: the mean is the first C*H*W values
        shape = shape[1:]
        values = values[: math.prod(shape)]
    if len(shape) != 3:  # a C x H x W blob is taken as such (Caffe's legacy accessors would misread it)
        raise DataError(f"mean_file '{path}': expected an NxCxHxW blob, got {'x'.join(map(str, shape))}", layer=layer)
    return values.reshape(shape)


def mean_blob(mean: np.ndarray) -> caffe_pb2.BlobProto:
    """A ``(C, H, W)`` mean as the BlobProto compute_image_mean writes (legacy 1xCxHxW fields, float data)."""
    c, h, w = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(np.asarray(mean, dtype=np.float32).ravel().tolist())
    return blob
