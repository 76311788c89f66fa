"""``prototxt2py convert``: a runtime net to a PyTorch state_dict, safetensors, a .caffemodel, ONNX or Python.

The formats that only store arrays (ONNX, .caffemodel, safetensors) are also written from an IR graph and its
blobs as numpy arrays (:func:`convert_graph`, :mod:`.blobstore`): that path never imports torch, so the CLI
converts a model in well under the time importing torch takes.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

from .errors import InputFileError, Location, Prototxt2pyError
from .fsutil import atomic_output, output_target, replace_together, temp_beside, write_bytes_atomic

#: Targets :func:`convert_graph` writes without torch.
ARRAY_TARGETS = ("onnx", "caffemodel", "safetensors")


def convert_net(net: Any, target: str, output: str | os.PathLike, *, opset: int | None = None,
                dynamic_batch: bool = False, dynamic: bool = False) -> None:
    """Write a runtime net (``CaffeNet``) as ``target``. ONNX: ``dynamic_batch`` makes the batch axis
    symbolic, ``dynamic`` the batch, height and width (see :mod:`.backends.onnx_export`)."""
    if target in ARRAY_TARGETS:
        from .blobstore import NetBlobs

        _write_arrays(net, NetBlobs(net), target, output, opset=opset, dynamic_batch=dynamic_batch,
                      dynamic=dynamic)
    elif target == "pytorch":
        import torch

        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        write_bytes_atomic(output, buf.getvalue())
    elif target == "python":
        write_python(net, output)
    else:  # pragma: no cover - click restricts the choices
        raise Prototxt2pyError(f"unknown target {target!r}")


def convert_graph(graph: Any, blobs: Any, target: str, output: str | os.PathLike, *, opset: int | None = None,
                  dynamic_batch: bool = False, dynamic: bool = False) -> None:
    """Write an IR graph with its blobs (a :class:`~.blobstore.GraphBlobs`) as ONNX, a .caffemodel or
    safetensors, without torch (except for specs not yet converted to torch-free ONNX mappings)."""
    if target not in ARRAY_TARGETS:
        raise Prototxt2pyError(f"--to {target} needs the PyTorch runtime; the array formats are {ARRAY_TARGETS}")
    _write_arrays(graph, blobs, target, output, opset=opset, dynamic_batch=dynamic_batch, dynamic=dynamic)


def _write_arrays(source: Any, blobs: Any, target: str, output: str | os.PathLike, *, opset: int | None,
                  dynamic_batch: bool, dynamic: bool = False) -> None:
    """The array formats, from a net or a graph (``source``) and its blob provider."""
    graph = blobs.graph
    if target == "safetensors":
        try:
            from safetensors.numpy import save
        except ImportError:
            raise Prototxt2pyError("--to safetensors needs the 'safetensors' package (pip install safetensors)") \
                from None
        write_bytes_atomic(output, save(arrays_by_layer_name(graph, blobs)))
    elif target == "caffemodel":
        from .weights import write_caffemodel_blobs

        with atomic_output(output, "wb") as f:
            write_caffemodel_blobs(graph, blobs, f)
    else:
        from .backends.onnx_export import export_onnx

        export_onnx(source, output, opset=opset, dynamic_batch=dynamic_batch, dynamic=dynamic,
                    weights=None if hasattr(source, "layer_blobs") else blobs)


def arrays_by_layer_name(graph: Any, blobs: Any) -> dict[str, Any]:
    """``{"<caffe layer>.<blob name>": array}``, contiguous float32: the safetensors layout. A shared blob is listed
    once (under its first layer); a layer named like an earlier one under ``<name>_2``
    (:meth:`~prototxt2py.ir.Graph.unique_names`), so that no layer's blobs are lost."""
    import numpy as np

    out: dict[str, Any] = {}
    seen: set[int] = set()
    for node, layer in zip(graph.nodes, graph.unique_names(), strict=True):
        for name, array in zip(blobs.names(node), blobs.blobs(node), strict=True):
            if id(array) not in seen:
                seen.add(id(array))
                out[f"{layer}.{name}"] = np.asarray(array, dtype=np.float32, order="C")  # 0-axis blobs stay 0-axis
    return out


def write_python(net: Any, outdir: str | os.PathLike, *, with_weights: bool = True) -> tuple[str, str | None]:
    """``OUTDIR/<net>.py`` (generated source, see :mod:`.backends.codegen`) and, with weights,
    ``OUTDIR/<net>.pt``: a state_dict keyed like the generated module (``torch.load(..., weights_only=True)``).
    Both are written to temporary files and renamed only once both are complete; folders made for them are
    removed again when that fails."""
    from pathlib import Path

    from .backends.codegen import generate

    if not os.fspath(outdir):  # Path("") is the working directory
        raise InputFileError("the output folder name is empty", Location("''"))
    code = generate(net.graph)
    folder = Path(outdir)
    if folder.exists() and not folder.is_dir():
        raise Prototxt2pyError("--to python writes a folder; this path is a file", Location(str(folder)))
    weights = None
    if with_weights:
        import torch

        state = net.state_dict(keep_vars=True)
        copies: dict[int, Any] = {}  # a shared parameter (listed under each of its names) is stored once
        for tensor in state.values():
            if id(tensor) not in copies:
                copies[id(tensor)] = tensor.detach().contiguous().clone()
        weights = {new: copies[id(state[old])] for old, new in code.keys.items()}
        buf = io.BytesIO()
        torch.save(weights, buf)
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        return _write_python_files(net, folder, code.source.encode(), None if weights is None else buf.getvalue())
    except BaseException:
        for made_dir in made:
            with contextlib.suppress(OSError):
                made_dir.rmdir()
        raise


def _write_python_files(net: Any, folder: Any, source: bytes, state: bytes | None) -> tuple[str, str | None]:
    """Write the source (and the state_dict) of :func:`write_python` into ``folder``, made here if needed."""
    from .backends.codegen import file_stem

    path = py_path = pt_path = folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stem = file_stem(net.graph.name)
        py_path, pt_path = output_target(folder / f"{stem}.py"), output_target(folder / f"{stem}.pt")
        files = [(py_path, source)] + ([(pt_path, state)] if state is not None else [])
        with contextlib.ExitStack() as stack:
            temps = []
            for path, data in files:
                fd, tmp = temp_beside(path)  # beside the file a symlink leads to: the rename stays on its device
                stack.callback(lambda t=tmp: os.path.exists(t) and os.unlink(t))
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                temps.append((tmp, path))
            for tmp, _ in temps:
                os.chmod(tmp, 0o644)
            replace_together(temps)  # both or neither: never a new .py beside an old .pt
    except OSError as e:  # a full disk, a file-size limit: one line naming the output (the one renaming failed on)
        named = [str(p) for p in (py_path, pt_path) if str(p) in (e.filename, e.filename2)]
        where = named[0] if named else str(path)
        raise InputFileError(f"cannot write the output: {e.strerror or e}", Location(where)) from None
    return str(py_path), str(pt_path) if state is not None else None
