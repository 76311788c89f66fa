"""Image decoding and resizing as Caffe does it with OpenCV (``cv::imread``/``cv::imdecode``, ``cv::resize``).

OpenCV is used when installed, so results are Caffe's bit for bit (colour images come out in BGR order, greyscale
PNGs through libpng's ``rgb_to_gray``, greyscale JPEGs as libjpeg's luma plane). Without OpenCV, Pillow decodes
and the same conventions are reproduced by hand; resizing (Caffe's ``INTER_LINEAR``) then needs OpenCV.

Every function returns ``uint8`` arrays: ``(H, W, C)`` for colour, ``(H, W)`` for one channel, like a ``cv::Mat``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Literal

import numpy as np

from ..fsutil import open_regular
from . import DataError
from ._deps import optional, require

Mode = Literal["native", "color", "gray"]


class OpenCVError(DataError):
    """OpenCV refused an image it could open: more pixels than ``CV_IO_MAX_IMAGE_PIXELS`` (a decompression
    bomb), not enough memory, a size it cannot make. Caffe's tools skip a missing or undecodable file but die on
    these (OpenCV throws), so callers that skip unreadable images stop at this one."""


def opencv_reason(err: Exception) -> str:
    """A ``cv2.error`` as one short line: OpenCV's own text spans lines and names its source files."""
    text = str(err)
    if "CV_IO_MAX_IMAGE_PIXELS" in text:
        limit = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", "").strip() or f"{1 << 30:,}"
        return (f"it has more pixels than OpenCV's limit of {limit} (CV_IO_MAX_IMAGE_PIXELS; a decompression "
                "bomb?); raise it with OPENCV_IO_MAX_IMAGE_PIXELS=N")
    reason = text.split(" error: ", 1)[-1].strip()
    return reason.splitlines()[0] if reason else type(err).__name__


def decode(buf: bytes, mode: Mode, what: str = "image", layer: str | None = None) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) like ``cv::imdecode`` with IMREAD_UNCHANGED / COLOR / GRAYSCALE."""
    cv2 = optional("cv2")
    if cv2 is not None:
        flag = {"native": cv2.IMREAD_UNCHANGED, "color": cv2.IMREAD_COLOR, "gray": cv2.IMREAD_GRAYSCALE}[mode]
        try:
            img = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), flag)
        except cv2.error as e:
            raise OpenCVError(f"cannot decode {what}: {opencv_reason(e)}", layer=layer) from None
    else:
        img = _decode_pillow(buf, mode, layer)
    if img is None:
        raise DataError(f"could not decode {what}", layer=layer)
    if img.dtype != np.uint8:
        raise DataError(f"{what}: image data type must be unsigned byte (got {img.dtype})", layer=layer)
    return img


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Drop what native image libraries print to the process's stderr themselves (libpng's ``libpng error:
    IHDR: CRC error``, OpenCV's ``[ WARN:0 ] ... PNG input buffer is incomplete``) while a single-threaded CLI
    tool decodes: the tool reports every unreadable image in its own one-line format. File descriptor 2 is
    restored on the way out, before any error is printed."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        sink = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(sink, 2)
        finally:
            os.close(sink)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def read(path: str, mode: Mode, layer: str | None = None) -> np.ndarray:
    """``cv::imread(path, flag)``: a missing or undecodable file is one error naming the path."""
    if "\0" in path:  # open() would raise ValueError; a C string (Caffe's imread) ends at the NUL
        raise DataError(f"could not open or find file {path!r}: the path contains a NUL byte", layer=layer)
    try:
        with open_regular(path) as f:
            buf = f.read()
    except OSError as e:
        raise DataError(f"could not open or find file '{path}': {e.strerror or e}", layer=layer) from None
    return decode(buf, mode, what=f"image '{path}'", layer=layer)


def resize(img: np.ndarray, height: int, width: int, layer: str | None = None, what: str = "image",
           interpolation: str = "INTER_LINEAR") -> np.ndarray:
    """``cv::resize(img, Size(width, height))`` with its default bilinear interpolation (INTER_LINEAR), or the
    OpenCV flag named. ``what`` names the image in an error (a size OpenCV cannot make or allocate)."""
    cv2 = require("cv2", "resizing images (new_height/new_width, WindowData, resize_param)", layer)
    try:
        out = cv2.resize(img, (int(width), int(height)), interpolation=getattr(cv2, interpolation))
    except cv2.error as e:
        raise OpenCVError(f"cannot resize {what} to {height}x{width}: {opencv_reason(e)}", layer=layer) from None
    if img.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing axis of size 1
        out = out[:, :, None]
    return out


def encode(img: np.ndarray, ext: str, layer: str | None = None, what: str = "image") -> bytes:
    """``cv::imencode("." + ext, img)`` (convert_imageset's ``--encode-type``; JPEG at OpenCV's quality 95)."""
    cv2 = require("cv2", "encoding images", layer)
    try:
        ok, buf = cv2.imencode("." + ext, img)
    except cv2.error as e:
        raise OpenCVError(f"OpenCV cannot encode {what} as '{ext}': {opencv_reason(e)}", layer=layer) from None
    if not ok:
        raise DataError(f"OpenCV cannot encode images as '{ext}'", layer=layer)
    return buf.tobytes()


def to_chw(img: np.ndarray) -> np.ndarray:
    """An OpenCV-style ``(H, W[, C])`` image as Caffe's ``(C, H, W)`` layout (a view where possible)."""
    if img.ndim == 2:
        return img[None, :, :]
    return img.transpose(2, 0, 1)


# --- Pillow fallback ------------------------------------------------------------------------------------------


def _decode_pillow(buf: bytes, mode: Mode, layer: str | None) -> np.ndarray | None:
    """Pillow decoding with OpenCV's conventions (BGR channel order, libpng/libjpeg greyscale)."""
    image_mod = require("PIL.Image", "decoding images (OpenCV or Pillow)", layer)
    try:
        im = image_mod.open(io.BytesIO(buf))
        if mode == "gray" and im.format == "JPEG":
            im.draft("L", im.size)  # libjpeg outputs the luma plane, as OpenCV asks it to
        im.load()
    except Exception:  # Pillow raises many types for corrupt data; all mean "cannot decode"
        return None
    if im.mode in ("I;16", "I;16B", "I", "F") and mode == "native":
        return np.asarray(im)  # refused by the caller: not 8 bit
    if mode == "gray":
        return _gray(im)
    if mode == "color" or im.mode not in ("L", "LA", "RGBA"):
        rgb = np.asarray(im.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1])
    if im.mode == "L":
        return np.asarray(im)
    if im.mode == "LA":
        la = np.asarray(im)
        return np.ascontiguousarray(np.stack([la[..., 0]] * 3 + [la[..., 1]], axis=-1))
    rgba = np.asarray(im)
    return np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])


def _gray(im) -> np.ndarray:
    """One channel as OpenCV gets it: libpng's fixed-point ``rgb_to_gray`` (exact for PNG; JPEGs never get
    here, libjpeg gives their luma plane; other formats may differ from OpenCV by a grey level)."""
    if im.mode == "L":
        return np.asarray(im)
    if im.mode in ("LA",):
        return np.asarray(im)[..., 0]
    rgb = np.asarray(im.convert("RGB")).astype(np.uint32)
    gray = (9797 * rgb[..., 0] + 19234 * rgb[..., 1] + 3737 * rgb[..., 2]) >> 15
    return gray.astype(np.uint8)
