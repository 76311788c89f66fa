"""Snapshots as Caffe writes them: ``<prefix>_iter_<N>.caffemodel`` + ``<prefix>_iter_<N>.solverstate``.

The ``.solverstate`` is Caffe's ``SolverState`` message (``iter``, ``learned_net`` = the model file's name as
written, ``history`` = one ``BlobProto`` (shape + float data) per history blob in Caffe's order,
``current_step``), encoded here field by field from the tensors' memory, byte-compatible with Caffe's own,
so Caffe resumes from ours and we resume from Caffe's. Both files of a snapshot are written to temporary
files first and renamed into place together: a failed snapshot leaves neither behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from .. import limits
from ..errors import Location, ResourceLimitError
from ..fsutil import current_umask, output_target, replace_together, temp_beside
from ..weights import MAX_BLOB_AXES, as_float32
from .errors import SolverError

_LEN, _VARINT = 2, 0


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # protobuf's two's-complement encoding of negative int32/int64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _blob_proto(t: torch.Tensor) -> list[bytes | np.ndarray]:
    """``Blob::ToProto`` without diff: ``data`` (5, packed float) then ``shape`` (7), field-number order."""
    arr = t.detach().to(torch.float32).contiguous().cpu().numpy().astype("<f4", copy=False)
    dims = b"".join(_varint(int(d)) for d in arr.shape)
    shape = _key(1, _LEN) + _varint(len(dims)) + dims if arr.ndim else b""
    parts: list[bytes | np.ndarray] = []
    if arr.size:
        parts += [_key(5, _LEN) + _varint(arr.nbytes), arr]
    parts.append(_key(7, _LEN) + _varint(len(shape)) + shape)
    return parts


def write_solverstate(f: IO[bytes], it: int, learned_net: str, current_step: int,
                      history: Sequence[torch.Tensor]) -> None:
    """Caffe's ``SnapshotSolverStateToBinaryProto`` (``SolverState``: iter 1, learned_net 2, history 3,
    current_step 4)."""
    f.write(_key(1, _VARINT) + _varint(it))
    name = learned_net.encode()
    f.write(_key(2, _LEN) + _varint(len(name)) + name)
    for h in history:
        parts = _blob_proto(h)
        size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
        f.write(_key(3, _LEN) + _varint(size))
        for p in parts:
            f.write(p if isinstance(p, bytes) else memoryview(p).cast("B"))
    f.write(_key(4, _VARINT) + _varint(current_step))


@dataclass
class SolverState:
    """A read ``.solverstate``."""

    iter: int
    learned_net: str | None
    current_step: int
    history: list[np.ndarray]


def _blob_array(blob, file: str, i: int) -> np.ndarray:
    """One history blob, by ``Blob::FromProto``'s rules (legacy 4-D fields first, then ``shape``; ``double_data``
    when it has values), its shape checked as ``Blob::Reshape`` checks it (at most 32 axes, none negative)."""
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    elif blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = (len(blob.data) or len(blob.double_data),)
    if len(shape) > MAX_BLOB_AXES:
        raise SolverError(f"history blob {i} has {len(shape)} axes (Caffe allows {MAX_BLOB_AXES})", Location(file))
    try:
        count = limits.check_shape(shape, f"history blob {i}", location=Location(file))
    except ResourceLimitError as e:
        raise SolverError(e.message, Location(file)) from None
    arr = as_float32(blob.double_data if len(blob.double_data) else blob.data)
    if arr.size != count:
        raise SolverError(f"history blob {i} holds {arr.size} values for shape {shape}", Location(file))
    return arr.reshape(shape)


def read_solverstate(path: str | os.PathLike, sizes: Sequence[int] | None = None) -> SolverState:
    """Read a ``.solverstate`` (binary proto, or HDF5 when the name ends in ``.h5``, as Caffe decides); ``sizes``:
    the solver's history blob sizes, which HDF5 datasets are checked against before they are read."""
    from ..proto import caffe_pb2

    file = str(path)
    if file.endswith(".h5"):
        from .hdf5_snapshot import read_solverstate_h5

        return read_solverstate_h5(file, sizes)
    p = Path(file)
    if not p.is_file():
        raise SolverError("is a directory, not a solver state file" if p.is_dir() else "solver state file not found",
                          Location(file))
    state = caffe_pb2.SolverState()
    raw = p.read_bytes()
    try:
        state.ParseFromString(raw)
    except Exception:  # protobuf's DecodeError classes differ across versions
        raise SolverError("not a valid binary SolverState (truncated or not a .solverstate?)", Location(file)) from None
    if not state.history and _holds_layers(raw):
        raise SolverError("holds a net's weights (a .caffemodel), not a solver state: start from weights with "
                          "--weights (pycaffe: net.copy_from)", Location(file))
    history = [_blob_array(b, file, i) for i, b in enumerate(state.history)]
    learned = state.learned_net if state.HasField("learned_net") else None
    if isinstance(learned, bytes):  # not UTF-8 (protobuf hands back the bytes): a file name, as Caffe takes it
        learned = os.fsdecode(learned)
    return SolverState(state.iter, learned, state.current_step, history)


def _holds_layers(raw: bytes) -> bool:
    """Whether ``raw`` reads as a NetParameter with layers (a ``.caffemodel`` given where a state belongs: as a
    SolverState it holds no history, and would only be refused for its blob count)."""
    from ..proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(raw)
    except Exception:  # protobuf's DecodeError classes differ across versions
        return False
    return bool(len(net.layer) or len(net.layers))


def snapshot_filename(prefix: str, it: int, extension: str) -> str:
    """Caffe's ``SnapshotFilename``: ``prefix + "_iter_" + N + extension``."""
    return f"{prefix}_iter_{it}{extension}"


def check_writable(prefix: str) -> None:
    """Caffe's ``CheckSnapshotWritePermissions``: fail at start, not after hours of training. Like Caffe, it
    probes the folder of ``prefix_iter_0.tempfile`` (a prefix ending in "/" names a folder of its own)."""
    probe_name = snapshot_filename(prefix, 0, ".tempfile")
    directory = os.path.dirname(probe_name) or "."
    if not os.path.isdir(directory):
        why = f"'{directory}' is not a directory" if os.path.exists(directory) else \
            f"directory '{directory}' does not exist"
        raise SolverError(f"cannot write snapshots to prefix '{prefix}': {why}")
    try:
        fd, probe = temp_beside(Path(probe_name), ".tempfile")
    except OSError as e:
        raise SolverError(f"cannot write snapshots to prefix '{prefix}': {e.strerror}") from None
    os.close(fd)
    os.unlink(probe)


def write_together(files: Sequence[tuple[str, Callable[[IO[bytes]], None]]]) -> None:
    """Write several files through temporaries and rename them into place only when all succeeded."""
    temps: list[tuple[str, str]] = []
    try:
        for name, writer in files:
            target = output_target(name)
            try:
                fd, tmp = temp_beside(target)
            except OSError as e:
                raise SolverError(f"cannot write snapshot {target}: {e.strerror}") from None
            temps.append((tmp, target))
            with os.fdopen(fd, "w+b") as f:  # h5py needs to read what it writes
                writer(f)
        mask = current_umask()
        for tmp, _ in temps:
            os.chmod(tmp, 0o666 & ~mask)
        replace_together(temps)  # the weights and the state, both or neither
    except OSError as e:
        raise SolverError(f"cannot write snapshot: {e}") from None
    finally:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
