"""The exporter's own ONNX plumbing (``backends/onnx_proto.py``, issue 21: ``import onnx`` costs more than a
whole ResNet-50 export): byte-identical to ``onnx.helper``'s protos, the hand-assembled encoding equal to
protobuf's, and a process that exports never runs ``onnx/__init__`` yet can import onnx afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from golden import CORPUS
from onnx import helper

import prototxt2py
from prototxt2py.backends import onnx_export
from prototxt2py.backends import onnx_proto as op
from prototxt2py.backends.onnx_export import MIN_OPSET, newest_opset

ROOT = Path(__file__).resolve().parents[1]
LENET = "ethereon__caffe-tensorflow/examples/mnist/lenet.prototxt"
LENET_WEIGHTS = "ethereon__caffe-tensorflow/examples/mnist/lenet_iter_10000.caffemodel"


def test_classes_are_onnx_s_own() -> None:
    assert op.pb().ModelProto is onnx.ModelProto
    assert op.pb().TensorProto is onnx.TensorProto


@pytest.mark.parametrize("attrs", [
    {}, {"axis": 1}, {"axis": -1, "keepdims": 0}, {"alpha": 0.1, "beta": 2}, {"to": op.pb().TensorProto.FLOAT},
    {"perm": [0, 2, 1, 3]}, {"kernel_shape": (3, 3), "strides": [np.int64(2), 2]}, {"mode": "constant"},
    {"scales": [1.0, 2.5]}, {"largest": True, "sorted": False}, {"names": ["a", b"b"]}, {"value": np.float32(0.5)},
    {"skip": None, "axis": 0}, {"body": helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g", [], [])},
    {"value": helper.make_tensor("t", 1, [2], [0.5, 1.0])},
])
def test_make_node_is_onnx_helper_s(attrs: dict) -> None:
    ours = op.make_node("Op", ["x", "w"], ["y"], name="n", **attrs)
    assert ours.SerializeToString() == helper.make_node("Op", ["x", "w"], ["y"], name="n", **attrs).SerializeToString()


def test_bad_attributes_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        op.make_attribute("a", [])
    with pytest.raises(ValueError, match="mixes"):
        op.make_attribute("a", [1, "x"])
    with pytest.raises(TypeError):
        op.make_attribute("a", object())


@pytest.mark.parametrize("shape", [None, [], [1], [2, 3, 224, 224], ["N", 3, 8], [None, 4]])
def test_value_info_is_onnx_helper_s(shape: list | None) -> None:
    ours = op.make_value_info("x", 1, shape)
    assert ours.SerializeToString() == helper.make_tensor_value_info("x", 1, shape).SerializeToString()


def test_ir_versions_and_opsets_are_onnx_helper_s() -> None:
    assert op.newest_known_opset() == onnx.defs.onnx_opset_version()
    for opset in range(MIN_OPSET, newest_opset() + 1):
        expected = helper.find_min_ir_version_for([helper.make_opsetid("", opset)], ignore_unknown=True)
        assert op.min_ir_version(opset) == expected, opset


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32, np.int8, np.uint8, np.bool_,
                                   np.float16])
def test_tensor_types_are_onnx_helper_s(dtype: type) -> None:
    assert op.tensor_type(np.dtype(dtype)) == helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def test_tensor_type_refuses_unknown_dtypes() -> None:
    with pytest.raises(TypeError, match="complex64"):
        op.tensor_type(np.dtype(np.complex64))


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_encoding_is_protobuf_s(dynamic_batch: bool) -> None:
    """The assembled bytes (weights written straight from the arrays) equal the serialized full proto."""
    if not (CORPUS / LENET_WEIGHTS).exists():
        pytest.skip("corpus LeNet not available")
    g = prototxt2py.graph(CORPUS / LENET)
    built = onnx_export._build(g, None, dynamic_batch, CORPUS / LENET_WEIGHTS)
    data = built.encode()
    assert len(built.initializers) >= 8  # 4 weighted layers, and shape constants
    assert data == built.proto().SerializeToString()
    onnx.checker.check_model(data, full_check=True)


def test_varint() -> None:
    for value in (0, 1, 127, 128, 300, 2**31 - 1, 2**40 + 5):
        # protobuf's own varint: OperatorSetIdProto.version is field 2, an int64
        opset = onnx.OperatorSetIdProto(version=value)
        assert opset.SerializeToString() == b"\x10" + onnx_export._varint(value)


def test_export_never_runs_onnx_init(tmp_path: Path) -> None:
    """``convert --to onnx`` loads only onnx's protobuf module and C++ extension (not ``onnx/__init__``, whose
    ``ml_dtypes`` import took over a second); ``import onnx`` afterwards, in the same process, still works and
    reads the model written."""
    if not (CORPUS / LENET_WEIGHTS).exists():
        pytest.skip("corpus LeNet not available")
    out = tmp_path / "lenet.onnx"
    script = f"""
import json, sys
from prototxt2py.cli import main
try:
    main(["convert", {str(CORPUS / LENET)!r}, "--weights", {str(CORPUS / LENET_WEIGHTS)!r}, "--to", "onnx",
          "-o", {str(out)!r}])
except SystemExit as e:
    assert not e.code, e.code
loaded = {{m: m in sys.modules for m in ("onnx", "onnx.helper", "ml_dtypes", "onnxruntime", "torch")}}
import onnx
model = onnx.load({str(out)!r})
onnx.checker.check_model(model, full_check=True)
print(json.dumps({{"loaded": loaded, "nodes": len(model.graph.node)}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["loaded"] == dict.fromkeys(("onnx", "onnx.helper", "ml_dtypes", "onnxruntime", "torch"), False)
    assert result["nodes"] > 0
