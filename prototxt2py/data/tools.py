"""Caffe's dataset tools: ``convert_imageset`` (image list -> LMDB/LevelDB of Datums) and ``compute_image_mean``
(database -> ``.binaryproto`` mean), writing exactly what Caffe's data layers read.

Both write atomically: the database is built in a temporary folder next to the target and renamed into place
only when complete, the mean file through :func:`prototxt2py.fsutil.atomic_output`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from ..fsutil import atomic_output
from . import DataError
from . import images as _images
from .datum import (
    check_record_size,
    datum_image,
    encoded_datum,
    image_datum,
    mean_blob,
    parse_datum,
)
from .db import Cursor, Writer
from .image_data import read_list


@dataclass
class ConvertReport:
    """What :func:`convert_imageset` wrote, and the images it skipped (Caffe skips unreadable files too)."""

    written: int = 0
    skipped: list[str] = field(default_factory=list)


def guess_backend(path: str) -> str:
    """``lmdb`` for a folder holding ``data.mdb``, ``leveldb`` for one holding ``CURRENT``, else ``lmdb``."""
    if os.path.exists(os.path.join(path, "CURRENT")):
        return "leveldb"
    return "lmdb"


def _match_ext(filename: str, encoding: str) -> bool:
    ext = filename.rsplit(".", 1)[-1].lower()
    enc = encoding.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def _record(
    path: str, label: int, height: int, width: int, is_color: bool, encoding: str
) -> bytes | None:
    """Caffe's ``ReadImageToDatum`` serialised, or ``None`` for an unreadable image (an image OpenCV refuses,
    a decompression bomb say, is an error: Caffe's tool dies there)."""
    try:
        img = _images.read(path, "color" if is_color else "gray")
    except _images.OpenCVError:
        raise
    except DataError:
        return None
    if height > 0 and width > 0:
        img = _images.resize(img, height, width, what=f"image '{path}'")
    if encoding:
        channels = 1 if img.ndim == 2 else img.shape[2]
        if (channels == 3) == is_color and not height and not width and _match_ext(path, encoding):
            with open(path, "rb") as f:  # the file's own bytes, as Caffe's ReadFileToDatum
                buf = f.read()
        else:
            buf = _images.encode(img, encoding, what=f"image '{path}'")
        check_record_size(len(buf), f"image '{path}' encoded as '{encoding}'")
        return encoded_datum(buf, label).SerializeToString()
    check_record_size(img.size, f"image '{path}' ({'x'.join(map(str, img.shape))})")
    return image_datum(_images.to_chw(img), label).SerializeToString()


def _check_resize(height: int, width: int, channels: int) -> None:
    """Refuse a resize whose records could not be written, before any image is resized to it: a raw record
    holds ``height * width * channels`` bytes, and an encoded one decodes to as many in Caffe's data layer."""
    if height > 0 and width > 0:
        check_record_size(height * width * channels, f"resizing to {height}x{width} with {channels} channel(s)")


def convert_imageset(
    root: str,
    list_file: str,
    db_path: str,
    *,
    resize_height: int = 0,
    resize_width: int = 0,
    gray: bool = False,
    shuffle: bool = False,
    encoded: bool = False,
    encode_type: str = "",
    backend: str = "lmdb",
    check_size: bool = False,
    seed: int | None = None,
) -> ConvertReport:
    """Write the images of ``list_file`` (``path label`` lines, paths relative to ``root`` by string
    concatenation) as Datums keyed ``%08d_path`` (line number, so keys sort in list order). ``encoded`` keeps
    JPEG/PNG bytes (re-encoded as ``encode_type`` when it differs from the file's or the image was resized or
    converted); ``encode_type`` alone implies ``encoded``, as in Caffe."""
    if os.path.lexists(db_path):
        raise DataError(f"output database '{db_path}' already exists")
    parent = os.path.dirname(os.path.abspath(db_path))
    if not os.path.isdir(parent):
        raise DataError(f"output folder '{parent}' does not exist")
    height, width = max(0, resize_height), max(0, resize_width)
    _check_resize(height, width, 1 if gray else 3)
    if seed is not None and seed < 0:
        raise DataError(f"the shuffle seed must be 0 or more, got {seed}")
    lines = read_list(list_file)
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(lines))
        lines = [lines[i] for i in order]
    report = ConvertReport()
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(db_path)}.", suffix=".tmp", dir=parent)
    try:
        target = os.path.join(tmp, "db")
        writer = Writer(target, backend)
        size = None
        try:
            for line_id, (name, label) in enumerate(lines):
                enc = encode_type or (name.rsplit(".", 1)[-1].lower() if encoded else "")
                record = _record(root + name, label, height, width, not gray, enc)
                if record is None:
                    report.skipped.append(root + name)
                    continue
                if check_size and not enc:
                    n = len(parse_datum(record).data)
                    if size is not None and n != size:
                        raise DataError(f"'{root + name}' has {n} bytes of data, the first image {size}")
                    size = n
                writer.put(f"{line_id:08d}_{name}".encode("utf-8", "surrogateescape"), record)  # the name's own bytes
                report.written += 1
        finally:
            writer.close()
        if report.written == 0:
            raise DataError(f"no image of '{list_file}' could be read (first: '{root + lines[0][0]}')")
        if os.path.lexists(db_path):
            raise DataError(f"output database '{db_path}' appeared while converting; not overwritten")
        os.replace(target, db_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def compute_image_mean(db_path: str, backend: str | None = None) -> np.ndarray:
    """The mean ``(C, H, W)`` image of a database as Caffe's tool computes it: float32 running sums over the
    records in key order (encoded Datums decoded natively), divided by the count."""
    backend = backend or guess_backend(db_path)
    with Cursor(db_path, backend) as cursor:
        if not cursor.valid():
            raise DataError(f"database '{db_path}' holds no records")
        total: np.ndarray | None = None
        count = 0
        while cursor.valid():
            key = cursor.key().decode("utf-8", "replace")
            with cursor.naming_records():
                img = datum_image(parse_datum(cursor.value(), key), key=key)
                if total is None:
                    total = np.zeros(img.shape, dtype=np.float32)
                elif img.size != total.size:  # Caffe checks the size only, and sums the values flat
                    raise DataError(f"record '{key}' holds {img.size} values, the first record {total.size} "
                                    f"({'x'.join(map(str, total.shape))})")
            total += img.astype(np.float32).reshape(total.shape)
            count += 1
            cursor.next()
    assert total is not None
    return total / np.float32(count)


def write_mean(mean: np.ndarray, path: str) -> None:
    """Write a ``(C, H, W)`` mean as a ``.binaryproto`` BlobProto (1 x C x H x W), atomically."""
    with atomic_output(path, "wb") as f:
        f.write(mean_blob(mean).SerializeToString())
