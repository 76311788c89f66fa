"""``prototxt2py run``: named input arrays in, output (or all) blobs out, as .npz files."""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .errors import InputFileError, Location, UnknownInputError
from .fsutil import write_bytes_atomic
from .reader import read_bytes

#: dtype kinds the runner converts to float32 without losing anything but precision: bool, int, uint, float.
#: Complex would drop its imaginary part; structured, string, datetime and object arrays are no tensor at all.
_REAL_KINDS = "biuf"


def read_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz, as contiguous float32; refuses a file np.load cannot read and any array that is
    not real numbers, naming the array and its dtype."""
    data = read_bytes(path)
    loc = Location(str(path))
    if not data.startswith((b"PK", b"\x93NUMPY")):  # numpy takes anything else for a pickle (never loaded)
        raise InputFileError("not an .npz archive of arrays (np.savez(path, data=array) writes one)", loc)
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy: no names to match the inputs by
            raise InputFileError("a single .npy array, expected an .npz of named arrays (np.savez(path, "
                                 "data=array))", loc)
        with loaded as f:
            out = {}
            for k in f.files:
                arr = f[k]
                if not isinstance(arr, np.ndarray):  # a zip member that is not .npy comes back as bytes
                    raise InputFileError(f"member '{k}' of the archive is not a .npy array", loc)
                if arr.dtype.kind not in _REAL_KINDS:
                    raise InputFileError(f"array '{k}' has dtype {arr.dtype}, expected a real numeric array "
                                         "(bool, int or float)", loc)
                out[k] = np.ascontiguousarray(arr, dtype=np.float32)
            return out
    # np.load raises zipfile's and zlib's own errors (and EOFError) for a truncated or corrupt archive
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise InputFileError(f"not a readable .npz of arrays: {e}", loc) from None


def run_npz(make_net: Callable[[dict], Any], inputs_path: str, output: str, all_blobs: bool) -> None:
    """Build the net for the given input shapes, run it, write an .npz atomically."""
    arrays = read_inputs(inputs_path)
    try:
        net = make_net({k: list(v.shape) for k, v in arrays.items()})
    except UnknownInputError as e:  # said of the .npz's array, not of an --input option run does not have
        raise InputFileError(f"array '{e.blob}' matches no input blob (the net's inputs: {e.inputs}): leave it "
                             "out of the file", Location(inputs_path)) from None
    unknown = [k for k in arrays if k not in net.input_names]
    if unknown:
        raise InputFileError(
            f"arrays {unknown} match no input blob (the net's inputs: {net.input_names})", Location(inputs_path)
        )
    missing = [k for k in net.input_names if k not in arrays]
    if missing:
        raise InputFileError(f"no array for input blob(s) {missing}", Location(inputs_path))
    with torch.no_grad():
        blobs = net(**{k: torch.from_numpy(v) for k, v in arrays.items()}, all_blobs=all_blobs)
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().cpu().numpy() for k, v in blobs.items()})
    write_bytes_atomic(output, buf.getvalue())
