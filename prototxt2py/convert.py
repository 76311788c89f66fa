"""``prototxt2py convert``: a runtime net to a PyTorch state_dict, safetensors, a .caffemodel, ONNX or Python."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Any

import torch

from .errors import Location, Prototxt2pyError
from .fsutil import atomic_output, write_bytes_atomic


def state_dict_by_caffe_name(net: Any) -> dict[str, torch.Tensor]:
    """``{"<caffe layer>.<blob name>": tensor}`` — stable, readable keys (shared blobs listed once)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for node in net.graph.nodes:
        module = net.layer(node.name)
        for name in getattr(module, "blob_names", ()):
            t = getattr(module, name)
            if id(t) in seen:
                continue
            seen.add(id(t))
            out[f"{node.name}.{name}"] = t.detach().contiguous()
    return out


def convert_net(net: Any, target: str, output: str | os.PathLike, *, opset: int | None = None,
                dynamic_batch: bool = False) -> None:
    if target == "pytorch":
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        write_bytes_atomic(output, buf.getvalue())
    elif target == "safetensors":
        try:
            from safetensors.torch import save
        except ImportError:
            raise Prototxt2pyError("--to safetensors needs the 'safetensors' package (pip install safetensors)") \
                from None
        write_bytes_atomic(output, save(state_dict_by_caffe_name(net)))
    elif target == "caffemodel":
        from .weights import write_caffemodel

        with atomic_output(output, "wb") as f:
            write_caffemodel(net, f)
    elif target == "python":
        write_python(net, output)
    elif target == "onnx":
        from .backends.onnx_export import export_onnx

        export_onnx(net, output, opset=opset, dynamic_batch=dynamic_batch)
    else:  # pragma: no cover - click restricts the choices
        raise Prototxt2pyError(f"unknown target {target!r}")


def write_python(net: Any, outdir: str | os.PathLike, *, with_weights: bool = True) -> tuple[str, str | None]:
    """``OUTDIR/<net>.py`` (generated source, see :mod:`.backends.codegen`) and, with weights,
    ``OUTDIR/<net>.pt``: a state_dict keyed like the generated module (``torch.load(..., weights_only=True)``).
    Both are written to temporary files and renamed only once both are complete."""
    from pathlib import Path

    from .backends.codegen import file_stem, generate

    code = generate(net.graph)
    folder = Path(outdir)
    if folder.exists() and not folder.is_dir():
        raise Prototxt2pyError("--to python writes a folder; this path is a file", Location(str(folder)))
    folder.mkdir(parents=True, exist_ok=True)
    stem = file_stem(net.graph.name)
    py_path, pt_path = folder / f"{stem}.py", folder / f"{stem}.pt"
    weights = None
    if with_weights:
        state = net.state_dict()
        weights = {new: state[old].detach().contiguous().clone() for old, new in code.keys.items()}
        buf = io.BytesIO()
        torch.save(weights, buf)
    with contextlib.ExitStack() as stack:
        files = [(py_path, code.source.encode())] + ([(pt_path, buf.getvalue())] if weights is not None else [])
        temps = []
        for path, data in files:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
            stack.callback(lambda t=tmp: os.path.exists(t) and os.unlink(t))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            temps.append((tmp, path))
        for tmp, path in temps:
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    return str(py_path), str(pt_path) if weights is not None else None
