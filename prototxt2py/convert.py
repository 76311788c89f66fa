"""``prototxt2py convert``: a runtime net to a PyTorch state_dict, safetensors, a .caffemodel or ONNX."""

from __future__ import annotations

import io
import os
from typing import Any

import torch

from .errors import Prototxt2pyError
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
    elif target == "onnx":
        from .backends.onnx_export import export_onnx

        export_onnx(net, output, opset=opset, dynamic_batch=dynamic_batch)
    else:  # pragma: no cover - click restricts the choices
        raise Prototxt2pyError(f"unknown target {target!r}")
