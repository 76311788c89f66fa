"""ONNX's protobuf classes and its C++ checker, without the cost of ``import onnx``.

Why: ``import onnx`` runs the package's ``__init__``, which imports ``onnx.helper`` -> ``onnx._mapping`` ->
``ml_dtypes``; that alone took 1.2-2.3 s per process here (measured with ``python -X importtime``), more than
the whole rest of ``convert --to onnx`` for ResNet-50 (issue 21 wants that under 1 s as a process). The
exporter needs only two pieces of the package: the generated protobuf module ``onnx.onnx_ml_pb2`` (about
80 ms) and the C++ extension ``onnx.onnx_cpp2py_export`` (checker and shape inference, under 10 ms). Neither
imports anything else from ``onnx``, so they are loaded from the installed package's files directly.

They are registered in ``sys.modules`` under their own names (``onnx.onnx_ml_pb2``, ``onnx.onnx_cpp2py_export``):
a later ``import onnx`` in the same process (tests, a user's script) reuses them instead of loading them a
second time (the extension cannot be initialised twice), so ``onnx.ModelProto`` *is* the class used here and
every model built here is an ordinary ONNX model. If ``onnx`` is already imported, or anything about the
installed package's layout differs from what is expected, the modules come from a plain ``import onnx``.

The few ``onnx.helper`` functions the exporter used are re-implemented below for the value types the layer
specs pass; tests check that they produce byte-identical protos to ``onnx.helper``'s.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import numbers
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

_PB2 = "onnx.onnx_ml_pb2"
_CPP = "onnx.onnx_cpp2py_export"

#: Oldest IR version that allows each ``ai.onnx`` opset (``onnx.helper.VERSION_TABLE``); opsets beyond the table
#: get the newest IR version listed (the checker rejects an IR version the installed onnx does not know).
_MIN_IR_VERSION = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11, 24: 12,
                   25: 13, 26: 13, 27: 13, 28: 14}


def _load_file(name: str, path: Path, loader: Any = None) -> ModuleType:
    """Module ``name`` executed from ``path`` and registered in ``sys.modules`` (removed again on failure)."""
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _load_direct() -> tuple[ModuleType, ModuleType]:
    """The two modules loaded from the installed ``onnx`` package's files, its ``__init__`` not run."""
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("onnx is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if "from .onnx_ml_pb2 import" not in (folder / "onnx_pb.py").read_text():
        raise ImportError("onnx's protobuf module is not onnx_ml_pb2 in this version")
    pb2 = sys.modules.get(_PB2) or _load_file(_PB2, folder / "onnx_ml_pb2.py")
    cpp = sys.modules.get(_CPP)
    if cpp is None:
        found = [folder / f"onnx_cpp2py_export{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        path = next((p for p in found if p.is_file()), None)
        if path is None:
            raise ImportError("onnx's C++ extension was not found")
        cpp = _load_file(_CPP, path, importlib.machinery.ExtensionFileLoader(_CPP, str(path)))
    return pb2, cpp


@functools.cache
def _modules() -> tuple[ModuleType, ModuleType]:
    if "onnx" not in sys.modules:
        try:
            return _load_direct()
        except (ImportError, OSError, AttributeError):
            pass  # an unexpected layout: the ordinary import below works whatever it is
    import onnx.onnx_cpp2py_export as cpp_module
    import onnx.onnx_ml_pb2 as pb2_module

    return pb2_module, cpp_module


def pb() -> ModuleType:
    """``onnx.onnx_ml_pb2``: ``ModelProto``, ``TensorProto``, ``NodeProto`` ..."""
    return _modules()[0]


def cpp() -> ModuleType:
    """``onnx.onnx_cpp2py_export``: the C++ checker, shape inference and operator schemas."""
    return _modules()[1]


def newest_known_opset() -> int:
    """The newest ``ai.onnx`` opset of the installed onnx (``onnx.defs.onnx_opset_version()``)."""
    return int(cpp().defs.schema_version_map()[""][1])


def min_ir_version(opset: int) -> int:
    """The oldest IR version that allows ``ai.onnx`` ``opset`` (``onnx.helper.find_min_ir_version_for``)."""
    return _MIN_IR_VERSION.get(opset, max(_MIN_IR_VERSION.values()))


def check_model(data: bytes, full_check: bool = True) -> None:
    """``onnx.checker.check_model(data, full_check)`` on a serialized model (raises onnx's ValidationError or
    InferenceError)."""
    cpp().checker.check_model(data, full_check, False, False)


def infer_shapes(model: Any) -> Any:
    """``onnx.shape_inference.infer_shapes(model)``: a new model with the inferred types."""
    return pb().ModelProto.FromString(cpp().shape_inference.infer_shapes(model.SerializeToString(), False, False,
                                                                          False))


def tensor_type(dtype: np.dtype) -> int:
    """The ``TensorProto`` element type of a numpy dtype (those the exporter stores)."""
    t = pb().TensorProto
    types = {"float32": t.FLOAT, "float64": t.DOUBLE, "int64": t.INT64, "int32": t.INT32, "int8": t.INT8,
             "uint8": t.UINT8, "bool": t.BOOL, "float16": t.FLOAT16}
    try:
        return types[np.dtype(dtype).name]
    except KeyError:
        raise TypeError(f"no ONNX tensor type for numpy dtype {np.dtype(dtype)}") from None


def make_opsetid(domain: str, version: int) -> Any:
    opset = pb().OperatorSetIdProto()
    opset.domain, opset.version = domain, version
    return opset


def make_value_info(name: str, elem_type: int, shape: Sequence[int | str | None] | None) -> Any:
    """``onnx.helper.make_tensor_value_info``: a tensor of ``elem_type``, ``shape`` None = unknown rank."""
    info = pb().ValueInfoProto()
    info.name = name
    tensor = info.type.tensor_type
    tensor.elem_type = elem_type
    if shape is not None:
        tensor.shape.SetInParent()
        for d in shape:
            dim = tensor.shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            elif d is not None:
                dim.dim_value = int(d)
    return info


def make_attribute(key: str, value: Any) -> Any:
    """``onnx.helper.make_attribute`` for numbers, strings, sequences of them, graphs and tensors (what the specs
    pass)."""
    attr = pb().AttributeProto()
    attr.name = key
    if isinstance(value, numbers.Integral):
        attr.i, attr.type = int(value), attr.INT
    elif isinstance(value, numbers.Real):
        attr.f, attr.type = float(value), attr.FLOAT
    elif isinstance(value, (str, bytes)):
        attr.s, attr.type = _to_bytes(value), attr.STRING
    elif isinstance(value, pb().GraphProto):  # a Scan/Loop/If body
        attr.g.CopyFrom(value)
        attr.type = attr.GRAPH
    elif isinstance(value, pb().TensorProto):  # a Constant's value
        attr.t.CopyFrom(value)
        attr.type = attr.TENSOR
    elif isinstance(value, Iterable):
        values = list(value)
        if not values:
            raise ValueError(f"cannot infer the type of the empty attribute {key!r}")
        if all(isinstance(v, numbers.Integral) for v in values):
            attr.ints.extend(int(v) for v in values)
            attr.type = attr.INTS
        elif all(isinstance(v, numbers.Real) for v in values):
            attr.floats.extend(float(v) for v in values)
            attr.type = attr.FLOATS
        elif all(isinstance(v, (str, bytes)) for v in values):
            attr.strings.extend(_to_bytes(v) for v in values)
            attr.type = attr.STRINGS
        else:
            raise ValueError(f"attribute {key!r} mixes value types: {values!r}")
    else:
        raise TypeError(f"{value!r} is not an accepted attribute value")
    return attr


def make_node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str | None = None,
              **attrs: Any) -> Any:
    """``onnx.helper.make_node``: attributes sorted by name, None values left out."""
    node = pb().NodeProto()
    node.op_type = op_type
    node.input.extend(inputs)
    node.output.extend(outputs)
    if name:
        node.name = name
    node.attribute.extend(make_attribute(k, v) for k, v in sorted(attrs.items()) if v is not None)
    return node


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value
