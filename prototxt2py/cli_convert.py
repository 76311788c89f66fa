"""``prototxt2py convert --to onnx|caffemodel|safetensors``: torch-free conversion for the CLI.

These targets only store arrays, so the command builds the IR graph and takes the blobs from the weights file
as numpy views (:mod:`.blobstore`) instead of building the PyTorch runtime: the process never imports torch
(about 1.3 s of a 2-3 s conversion otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence


def convert_arrays(net: str, weights: str | None, target: str, output: str, phase: str, stages: Iterable[str],
                   level: int, input_shapes: Mapping[str, Sequence[int]], opset: int | None, dynamic_batch: bool,
                   as_deploy: bool, warn: Callable[[list[str]], None], dynamic: bool = False) -> None:
    """Read NET (or derive its deploy net), match the weights file to it and write ``target``. Warnings (fork
    fields dropped, layers without weights, extra layers in the file) go to ``warn``."""
    from . import graph as build
    from .blobstore import GraphBlobs
    from .cli_deploy import net_source
    from .convert import convert_graph

    source = net_source(net, as_deploy, input_shapes, stages, level)
    warn(source.warnings)
    g = build(source, phase.upper(), tuple(stages), level, input_shapes)
    blobs = GraphBlobs(g, weights or None)
    if weights:
        warn(blobs.report.warnings())
    else:
        warn(["no --weights given: parameters hold Caffe's filler values"])
    convert_graph(g, blobs, target, output, opset=opset, dynamic_batch=dynamic_batch, dynamic=dynamic)
