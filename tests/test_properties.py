"""Property-based tests (hypothesis, derandomized so CI is deterministic): every input either succeeds or raises
the project's own error type, and where a reference exists the results agree with it.

* the text parser against ``google.protobuf.text_format`` on texts both accept;
* the ``.caffemodel`` framing reader against ``ParseFromString``;
* IR building and shape inference, ``draw`` (Graphviz accepts every DOT), ONNX export (the checker accepts it
  or a clean error) and ``run`` (output shapes are the inferred shapes) on random small nets.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import prototxt2py
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.proto import caffe_pb2
from prototxt2py.reader import read_net_text
from prototxt2py.textformat import parse

FAST = settings(derandomize=True, deadline=None, max_examples=80, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(FAST, max_examples=25)


# -- text parser vs text_format ------------------------------------------------------------------------------
def _quote(raw: bytes) -> str:
    """A protobuf text string literal for ``raw`` using every escape form."""
    out = []
    for b in raw:
        ch = chr(b)
        if ch in "\"\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif 32 <= b < 127:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}" if b % 2 else f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


string_values = st.text(min_size=0, max_size=12).map(lambda s: _quote(s.encode("utf-8")))
int_literals = st.one_of(st.integers(-5, 300).map(str), st.integers(0, 255).map(hex))
uint_literals = st.one_of(st.integers(0, 300).map(str), st.integers(0, 255).map(hex))
float_literals = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["0", "-0", "1.", ".5", "1e-3", "2E+2", "1.5f", "3F", "7", "-2"]),
)


@st.composite
def layer_texts(draw) -> str:
    parts = [f"name: {draw(string_values)}", f"type: {draw(string_values)}"]
    for field in ("bottom", "top"):
        parts += [f"{field}: {draw(string_values)}" for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        bias = draw(st.sampled_from(["true", "false", "t", "0"]))
        conv = [f"num_output: {draw(uint_literals)}", f"bias_term: {bias}"]
        conv += [f"kernel_size: {draw(uint_literals)}" for _ in range(draw(st.integers(0, 2)))]
        conv += [f"pad: [{', '.join(draw(st.lists(uint_literals, max_size=3)))}]"]
        parts.append("convolution_param { " + " ".join(conv) + " }")
    if draw(st.booleans()):
        parts.append(f"pooling_param: < pool: {draw(st.sampled_from(['MAX', 'AVE', 'STOCHASTIC', '1']))} >")
    if draw(st.booleans()):
        parts.append(f"relu_param {{ negative_slope: {draw(float_literals)} }}")
    if draw(st.booleans()):
        parts.append(f"loss_weight: {draw(float_literals)}")
    if draw(st.booleans()):
        parts.append(f"reshape_param {{ shape {{ dim: {draw(int_literals)} dim: {draw(int_literals)} }} }}")
    sep = draw(st.sampled_from([" ", "\n", " ; ", ", ", " # comment\n"]))
    return "layer { " + sep.join(parts) + " }"


@FAST
@given(st.lists(layer_texts(), max_size=4), st.sampled_from(["", 'name: "n"\n', "force_backward: true\n"]))
def test_text_parser_matches_text_format(layers: list[str], head: str) -> None:
    text = head + "\n".join(layers)
    want = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, want)
    except text_format.ParseError:
        want = None
    got = caffe_pb2.NetParameter()
    try:
        parse(text, got, strict=True)
    except Prototxt2pyError:
        got = None
    assume(want is not None and got is not None)
    assert got == want


@FAST
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_text_parser_never_crashes(data: bytes) -> None:
    try:
        read_net_text(data.decode("utf-8", "replace"), "<h>")
    except Prototxt2pyError as e:
        assert len(str(e).splitlines()) == 1


# -- caffemodel framing reader vs ParseFromString ------------------------------------------------------------
@st.composite
def caffemodels(draw) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter(name=draw(st.text(max_size=5)))
    for i in range(draw(st.integers(1, 4))):
        layer = net.layer.add(name=draw(st.sampled_from(["a", "b", "c", f"l{i}", "é"])), type="Convolution")
        for _ in range(draw(st.integers(0, 3))):
            blob = layer.blobs.add()
            shape = draw(st.lists(st.integers(0, 4), max_size=4))
            if draw(st.booleans()) or len(shape) != 4:
                blob.shape.dim.extend(shape)
            else:
                blob.num, blob.channels, blob.height, blob.width = shape
            values = draw(st.lists(st.floats(width=32, allow_nan=False), min_size=math.prod(shape),
                                   max_size=math.prod(shape)))
            if draw(st.integers(0, 4)) == 0:
                blob.double_data.extend(values)
            else:
                blob.data.extend(values)
    return net


def _expected_blobs(net: caffe_pb2.NetParameter) -> dict:
    """Caffe's reading: ``CopyTrainedLayersFrom`` copies every source layer in turn (the last of a name wins);
    ``Blob::FromProto`` takes the legacy 4-D fields when any is set, and ``double_data`` when it has values."""
    out = {}
    for layer in net.layer:
        blobs = []
        for b in layer.blobs:
            legacy = any(b.HasField(f) for f in ("num", "channels", "height", "width"))
            shape = (b.num, b.channels, b.height, b.width) if legacy else tuple(b.shape.dim)
            blobs.append((shape, legacy, [float(v) for v in (b.double_data if len(b.double_data) else b.data)]))
        out[layer.name] = blobs
    return {name: blobs for name, blobs in out.items() if blobs}


@FAST
@given(caffemodels())
def test_caffemodel_reader_matches_protobuf(tmp_path_factory: pytest.TempPathFactory, net) -> None:
    from prototxt2py.weights import read_caffemodel

    path = tmp_path_factory.mktemp("cm") / "w.caffemodel"
    path.write_bytes(net.SerializeToString())
    want = _expected_blobs(caffe_pb2.NetParameter.FromString(path.read_bytes()))
    try:
        got = read_caffemodel(path)
    except Prototxt2pyError as e:
        assert not want and "no layers" in str(e) or "holds" in str(e), str(e)
        return
    assert set(got) == set(want)
    for name, blobs in want.items():
        assert len(got[name]) == len(blobs)
        for g, (shape, legacy, values) in zip(got[name], blobs, strict=True):
            assert g.array.shape == shape and g.legacy == legacy
            assert g.array.reshape(-1).tolist() == pytest.approx(values, nan_ok=True)


@FAST
@given(caffemodels(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3))
def test_corrupted_caffemodel_is_a_clean_error(tmp_path_factory, net, flips) -> None:
    from prototxt2py.weights import read_caffemodel

    data = bytearray(net.SerializeToString())
    for pos, value in flips:
        data[pos % len(data)] = value
    path = tmp_path_factory.mktemp("cm") / "w.caffemodel"
    path.write_bytes(bytes(data))
    try:
        got = read_caffemodel(path)
    except Prototxt2pyError:
        return
    try:
        ref = caffe_pb2.NetParameter.FromString(bytes(data))
    except Exception:  # protobuf is stricter on some framing (tags it does not know): not a property here
        return
    names = {n if isinstance(n, str) else n.decode("utf-8", "replace") for n in (x.name for x in ref.layer)}
    assert set(got) <= names | {""}


# -- random small nets: IR, draw, ONNX, run --------------------------------------------------------------------
PLAIN_NAMES = st.sampled_from(["x"])


@st.composite
def small_nets(draw, names: st.SearchStrategy[str] = PLAIN_NAMES) -> str:
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    lines = [f'layer {{ name: "data" type: "Input" top: "b0" input_param {{ shape {{ dim: 1 dim: {c} dim: {h} '
             f"dim: {w} }} }} }}"]
    blobs = ["b0"]
    small = st.integers(0, 4)
    for i in range(1, draw(st.integers(1, 5)) + 1):
        kind = draw(st.sampled_from(["Convolution", "Pooling", "ReLU", "InnerProduct", "Concat", "Eltwise", "Flatten",
                                     "Reshape", "Softmax", "LRN", "Power", "Tile", "Crop", "Slice", "Sigmoid",
                                     "Deconvolution", "BatchNorm", "Scale"]))
        a = draw(st.sampled_from(blobs))
        b = draw(st.sampled_from(blobs))
        bottoms, params = [a], ""
        if kind in ("Convolution", "Deconvolution"):
            params = (f"convolution_param {{ num_output: {draw(st.integers(1, 3))} kernel_size: {draw(small)} "
                      f"stride: {draw(st.integers(1, 3))} pad: {draw(small)} dilation: {draw(st.integers(1, 2))} }}")
        elif kind == "Pooling":
            params = (f"pooling_param {{ pool: {draw(st.sampled_from(['MAX', 'AVE']))} kernel_size: "
                      f"{draw(st.integers(1, 4))} stride: {draw(st.integers(1, 3))} pad: {draw(st.integers(0, 2))} }}")
        elif kind == "InnerProduct":
            params = f"inner_product_param {{ num_output: {draw(st.integers(1, 4))} }}"
        elif kind in ("Concat", "Eltwise", "Crop"):
            bottoms = [a, b]
            if kind == "Concat":
                params = f"concat_param {{ axis: {draw(st.integers(-1, 3))} }}"
        elif kind == "Reshape":
            dims = " ".join(f"dim: {d}" for d in draw(st.lists(st.sampled_from([0, -1, 1, 2, 3]), max_size=4)))
            params = f"reshape_param {{ shape {{ {dims} }} }}"
        elif kind == "LRN":
            params = f"lrn_param {{ local_size: {draw(st.sampled_from([1, 3, 5]))} }}"
        elif kind == "Power":
            params = f"power_param {{ power: {draw(st.sampled_from([1, 2, 0.5]))} scale: 0.5 shift: 1 }}"
        elif kind == "Tile":
            params = f"tile_param {{ axis: {draw(st.integers(0, 3))} tiles: {draw(st.integers(1, 3))} }}"
        elif kind == "Slice":
            params = f"slice_param {{ axis: {draw(st.integers(0, 3))} }}"
        elif kind == "Scale":
            params = "scale_param { bias_term: true }"
        name = draw(names)
        top = f"b{i}"
        lines.append(f'layer {{ name: "{name}{i}" type: "{kind}" '
                     + " ".join(f'bottom: "{x}"' for x in bottoms) + f' top: "{top}" {params} }}')
        blobs.append(top)
    return "\n".join(lines) + "\n"


def _graph(text: str):
    try:
        return prototxt2py.graph(read_net_text(text, "<h>"))
    except Prototxt2pyError as e:
        assert len(str(e).splitlines()) == 1
        return None


@FAST
@given(small_nets())
def test_ir_shapes(text: str) -> None:
    g = _graph(text)
    if g is None:
        return
    for value in g.values.values() if isinstance(g.values, dict) else g.values:
        if value.shape is not None:
            assert all(isinstance(d, int) and d >= 0 for d in value.shape), value.shape


@SLOW
@given(small_nets())
def test_run_shapes_are_the_inferred_shapes(text: str) -> None:
    g = _graph(text)
    if g is None:
        return
    try:
        net = prototxt2py.load(g)
        shape = g.values[g.inputs[0]].shape
        with torch.no_grad():
            out = net.eval()(torch.randn(shape), all_blobs=True)
    except Prototxt2pyError:
        return
    for vid in [v for n in g.nodes for v in n.outputs]:
        value = g.values[vid]
        if value.shape is not None and value.blob in out and g.values[vid].version == max(
                x.version for x in (g.values.values() if isinstance(g.values, dict) else g.values)
                if x.blob == value.blob):
            assert tuple(out[value.blob].shape) == value.shape, value.blob


@SLOW
@given(small_nets())
def test_onnx_export_is_checked_or_a_clean_error(tmp_path_factory, text: str) -> None:
    import onnx

    from prototxt2py.backends.onnx_export import export_onnx

    g = _graph(text)
    if g is None:
        return
    out = tmp_path_factory.mktemp("onnx") / "m.onnx"
    try:
        export_onnx(prototxt2py.load(g), out)
    except Prototxt2pyError:
        assert not out.exists()
        return
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


HOSTILE_NAMES = st.text(st.characters(codec="utf-8", exclude_characters='"\\\n'), max_size=8) | st.sampled_from(
    ["a\\\\", '\\"', "<b>", "{|}", "\\n", "\\001", "if", "node", "\\\\\\\\"])


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@SLOW
@given(small_nets(HOSTILE_NAMES), st.sampled_from(["LR", "TB"]), st.booleans())
def test_every_dot_is_accepted_by_graphviz(text: str, rankdir: str, no_blobs: bool) -> None:
    from prototxt2py.backends.draw import build_diagram

    try:
        net = read_net_text(text, "<h>").raw
    except Prototxt2pyError:
        return
    dot = build_diagram(net, rankdir, no_blobs=no_blobs).source()
    r = subprocess.run(["dot", "-Tcanon"], input=dot.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0 and b"syntax error" not in r.stderr, (r.stderr[:300], dot[:500])


def test_hypothesis_is_derandomized() -> None:
    assert FAST.derandomize and SLOW.derandomize and Path(__file__).exists()
