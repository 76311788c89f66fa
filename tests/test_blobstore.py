"""The torch-free blob store (prototxt2py/blobstore.py) and the exports built on it: arrays read as views of
the mapped file (V1 legacy shapes, double_data, unpacked floats), numpy fillers with Caffe's formulas, and ONNX /
.caffemodel / safetensors written from a graph + file exactly as from the runtime net (byte-identical), checked
against Caffe's golden outputs."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import SHARED, case_params, meta, npz, recipe_weights
from test_onnx_export import EXCLUDED, case_net, compare, run_onnx
from test_weights import CAFFEMODELS, CIFAR_QUICK, LENET_V1, LENET_V2, cli, corpus

import prototxt2py
from prototxt2py.backends.onnx_export import to_onnx_model
from prototxt2py.blobstore import GraphBlobs, NetBlobs, read_blobs, read_stored
from prototxt2py.convert import arrays_by_layer_name
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.fillers import bilinear_kernel, fill, fill_array
from prototxt2py.plain import Filler
from prototxt2py.proto import caffe_pb2
from prototxt2py.weights import _enc_varint, read_caffemodel, write_caffemodel, write_caffemodel_blobs


def _mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is a view whose memory is a memory map (no copy of the file was made)."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base.obj if isinstance(base, memoryview) else base, mmap.mmap)


# -- reading -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [LENET_V1, LENET_V2, CIFAR_QUICK], ids=["lenet_v1", "lenet_v2", "cifar_quick"])
def test_read_blobs_are_views_of_the_mapped_file(model: tuple[str, str]) -> None:
    path = corpus(model[1])
    stored, copies = read_blobs(path), read_caffemodel(path)
    assert list(stored) == list(copies)
    for name, arrays in stored.items():
        for got, want in zip(arrays, copies[name], strict=True):
            assert got.dtype == np.float32 and got.shape == want.array.shape, name
            np.testing.assert_array_equal(got, want.array)
            assert _mapped(got) and not got.flags.writeable, name


def test_legacy_shapes_are_kept_and_fitted_to_the_graph() -> None:
    """V1 LeNet: ip1's weight is stored as (1, 1, 500, 800); the graph's blob is (500, 800), same values."""
    prototxt, weights = corpus(LENET_V1[0]), corpus(LENET_V1[1])
    stored = read_stored(weights)
    assert stored["ip1"][0].legacy and stored["ip1"][0].array.shape == (1, 1, 500, 800)
    blobs = GraphBlobs(prototxt2py.graph(prototxt), weights)
    ip1 = blobs.blobs(prototxt2py.graph(prototxt).node("ip1"))[0]
    assert ip1.shape == (500, 800) and _mapped(ip1)
    np.testing.assert_array_equal(ip1, stored["ip1"][0].array.reshape(500, 800))
    assert blobs.report.loaded == ["conv1", "conv2", "ip1", "ip2"] and not blobs.report.missing


def _rewritten(tmp_path: Path, edit) -> Path:
    net = caffe_pb2.NetParameter.FromString(Path(corpus(LENET_V2[1])).read_bytes())
    edit({layer.name: layer for layer in net.layer})
    path = tmp_path / "edited.caffemodel"
    path.write_bytes(net.SerializeToString())
    return path


def test_double_data_is_read_as_float32(tmp_path: Path) -> None:
    original = read_blobs(corpus(LENET_V2[1]))["conv1"][0]

    def to_double(layers: dict) -> None:
        blob = layers["conv1"].blobs[0]
        blob.double_data.extend(float(v) for v in blob.data)
        blob.ClearField("data")

    got = read_blobs(_rewritten(tmp_path, to_double))["conv1"][0]
    assert got.dtype == np.float32 and got.shape == original.shape
    np.testing.assert_array_equal(got, original)


def test_unpacked_floats_go_through_protobuf(tmp_path: Path) -> None:
    """A BlobProto whose floats are written one field each (legal, non-canonical) still reads correctly."""
    values = np.arange(6, dtype="<f4") / 4
    dims = b"".join(_enc_varint(d) for d in (2, 3))
    shape = bytes([0x0A, len(dims)]) + dims  # BlobShape.dim, packed
    blob = bytes([0x3A, len(shape)]) + shape + b"".join(b"\x2d" + v.tobytes() for v in values)  # data: fixed32 each
    layer = b"\x0a\x02ip" + bytes([0x3A, len(blob)]) + blob  # LayerParameter name, blobs
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(b"\xa2\x06" + _enc_varint(len(layer)) + layer)  # NetParameter.layer (field 100)
    got = read_blobs(path)["ip"][0]
    assert got.shape == (2, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, values.reshape(2, 3))


def test_empty_file_has_no_blobs(tmp_path: Path) -> None:
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    assert read_blobs(path) == {}


# -- matching a graph ----------------------------------------------------------------------------------------
SIAMESE = """
layer { name: "data" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } bias_filler { type: "constant"
        value: 0.5 } } }
layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 4 } }
layer { name: "r" type: "Reshape" bottom: "fa" top: "r" reshape_param { shape { dim: 2 dim: 2 dim: 1 dim: 2 } } }
layer { name: "up" type: "Deconvolution" bottom: "r" top: "up" convolution_param { num_output: 3 kernel_size: 4
        stride: 2 bias_term: false weight_filler { type: "bilinear" } } }
"""


def test_shared_blobs_are_one_array_and_fillers_are_the_owners(tmp_path: Path) -> None:
    path = tmp_path / "siamese.prototxt"
    path.write_text(SIAMESE)
    g = prototxt2py.graph(path)
    blobs = GraphBlobs(g, rng=np.random.default_rng(0))
    wa, ba = blobs.blobs(g.node("ip_a"))
    wb, bb = blobs.blobs(g.node("ip_b"))
    assert wa is wb and ba is bb  # one array: stored once by every writer
    np.testing.assert_array_equal(ba, np.full(4, 0.5, np.float32))  # the owner's filler, not ip_b's (zeros)
    assert np.abs(wa).max() <= np.sqrt(3 / 6) and wa.std() > 0
    (up,) = blobs.blobs(g.node("up"))
    np.testing.assert_array_equal(up, bilinear_kernel((2, 3, 4, 4)).numpy())
    assert list(arrays_by_layer_name(g, blobs)) == ["ip_a.weight", "ip_a.bias", "up.weight"]


def test_a_bad_filler_names_the_layer(tmp_path: Path) -> None:
    path = tmp_path / "bad.prototxt"
    path.write_text(SIAMESE.replace("kernel_size: 4", "kernel_h: 4 kernel_w: 3"))
    g = prototxt2py.graph(path)
    with pytest.raises(Prototxt2pyError, match="layer 'up'.*bilinear filler needs a 4-D blob with square kernels"):
        GraphBlobs(g).blobs(g.node("up"))


def test_weights_win_over_fillers_and_missing_layers_are_reported(tmp_path: Path) -> None:
    prototxt = tmp_path / "lenet_plus.prototxt"
    prototxt.write_text(Path(corpus(LENET_V2[0])).read_text() + """
layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3"
  inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0.25 } } }""")
    g = prototxt2py.graph(prototxt)
    blobs = GraphBlobs(g, corpus(LENET_V2[1]))
    assert blobs.report.missing == ["ip3"]
    assert blobs.report.warnings() == ["layers without weights in the file (left at their fillers): ip3"]
    w, b = blobs.blobs(g.node("ip3"))
    assert (w == 0.25).all() and (b == 0).all()
    net = prototxt2py.load(prototxt, weights=corpus(LENET_V2[1]))
    for node in g.nodes:
        for got, want in zip(blobs.blobs(node), net.layer_blobs(node.name), strict=True):
            np.testing.assert_array_equal(got, want.detach().numpy())


# -- numpy fillers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("filler", "shape"), [
    (Filler(type="constant", value=3.5), (4, 5)),
    (Filler(type="uniform", min=-2.0, max=3.0), (300, 200)),
    (Filler(type="gaussian", mean=1.0, std=2.0), (300, 200)),
    (Filler(type="gaussian", std=1.0, sparse=15), (300, 200)),
    (Filler(type="xavier"), (64, 32, 3, 3)),
    (Filler(type="msra"), (64, 32, 3, 3)),
    (Filler(type="positive_unitball"), (50, 40)),
    (Filler(type="bilinear"), (3, 2, 6, 6)),
], ids=["constant", "uniform", "gaussian", "sparse", "xavier", "msra", "positive_unitball", "bilinear"])
def test_numpy_fillers_match_the_torch_fillers(filler: Filler, shape: tuple[int, ...]) -> None:
    """Same formulas: equal where deterministic, same range, mean and spread (and sparsity) where random."""
    got = fill_array(shape, filler, np.random.default_rng(0))
    torch.manual_seed(0)
    want = fill(shape, filler).numpy()
    assert got.dtype == np.float32 and got.shape == shape
    if filler.type in ("constant", "bilinear"):
        np.testing.assert_array_equal(got, want)
        return
    bound = {"uniform": (filler.min, filler.max), "positive_unitball": (0, 1),
             "xavier": (-np.sqrt(3 / 288), np.sqrt(3 / 288))}.get(filler.type)  # fan_in 32 * 3 * 3
    if bound is not None:
        assert bound[0] <= got.min() and got.max() <= bound[1]
    np.testing.assert_allclose([got.mean(), got.std(), (got == 0).mean()],
                               [want.mean(), want.std(), (want == 0).mean()], atol=0.03 * want.std(), rtol=0.03)
    if filler.type == "positive_unitball":
        np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-5)
    if filler.sparse >= 0:  # Caffe keeps sparse / shape(0) of the values
        assert abs((got != 0).mean() - filler.sparse / shape[0]) < 0.01


# -- writers: the graph path is the runtime path, without torch --------------------------------------------------
def test_caffemodel_written_from_the_file_is_the_runtime_s(tmp_path: Path) -> None:
    """LeNet V1 (legacy shapes) and CIFAR quick: the graph path writes the runtime path's bytes."""
    for prototxt, weights in (LENET_V1, LENET_V2, CIFAR_QUICK):
        net = prototxt2py.load(corpus(prototxt), weights=corpus(weights))
        with open(tmp_path / "runtime.caffemodel", "wb") as f:
            write_caffemodel(net, f)
        g = prototxt2py.graph(corpus(prototxt))
        with open(tmp_path / "graph.caffemodel", "wb") as f:
            write_caffemodel_blobs(g, GraphBlobs(g, corpus(weights)), f)
        assert (tmp_path / "graph.caffemodel").read_bytes() == (tmp_path / "runtime.caffemodel").read_bytes()


@pytest.mark.parametrize(("weights", "prototxt"), CAFFEMODELS)
def test_cli_caffemodel_round_trip_equals_the_runtime(weights: str, prototxt: str, tmp_path: Path) -> None:
    out = tmp_path / "out.caffemodel"
    code, _, stderr = cli("convert", corpus(prototxt), "--weights", corpus(weights), "--to", "caffemodel",
                          "-o", str(out))
    assert code == 0, stderr
    net = prototxt2py.load(corpus(prototxt), weights=corpus(weights))
    with open(tmp_path / "runtime.caffemodel", "wb") as f:
        write_caffemodel(net, f)
    assert out.read_bytes() == (tmp_path / "runtime.caffemodel").read_bytes()


def test_cli_safetensors_from_the_file(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    out = tmp_path / "out.safetensors"
    code, _, stderr = cli("convert", corpus(LENET_V1[0]), "--weights", corpus(LENET_V1[1]), "--to", "safetensors",
                          "-o", str(out))
    assert code == 0, stderr
    net = prototxt2py.load(corpus(LENET_V1[0]), weights=corpus(LENET_V1[1]))
    arrays = load_file(out)
    assert sorted(arrays) == sorted(f"{n}.{b}" for n in ("conv1", "conv2", "ip1", "ip2") for b in ("weight", "bias"))
    for key, array in arrays.items():
        layer, blob = key.rsplit(".", 1)
        np.testing.assert_array_equal(array, getattr(net.layer(layer), blob).detach().numpy())


@pytest.mark.parametrize("case", case_params("nets"))
def test_golden_net_onnx_from_the_file(case: Path) -> None:
    """Caffe's trained nets exported from prototxt + caffemodel alone: Caffe's outputs, and the same bytes as the
    export of the runtime net."""
    m = meta(case)
    inputs = npz(case / "inputs.npz")
    shapes = {k: list(v.shape) for k, v in inputs.items()}
    g = prototxt2py.graph(SHARED / m["prototxt"], input_shapes=shapes)
    model = to_onnx_model(g, weights=SHARED / m["weights"])
    compare(run_onnx(model, inputs), npz(case / "outputs.npz"), m.get("rtol", 1e-5), m.get("atol", 1e-6))
    net = prototxt2py.load(g, weights=SHARED / m["weights"])
    assert model.SerializeToString() == to_onnx_model(net).SerializeToString()


@pytest.mark.parametrize("case", case_params("layers") + case_params("mixed"))
def test_golden_layer_case_onnx_from_the_file(case: Path) -> None:
    """Every exportable layer case: the graph + file export is the runtime export, byte for byte."""
    m = meta(case)
    if case.name in EXCLUDED:
        pytest.skip("not exportable")
    net = case_net(case, m)
    weights = case / "weights.caffemodel"
    assert weights.exists() or not any(n.param_shapes for n in net.graph.nodes)  # (nothing left to fillers)
    model = to_onnx_model(net.graph, weights=weights if weights.exists() else None)
    assert model.SerializeToString() == to_onnx_model(net).SerializeToString()


@pytest.mark.parametrize("case", [pytest.param("resnet50", marks=pytest.mark.slow), "mobilenet_v2", "squeezenet_v1_1"])
def test_zoo_onnx_from_a_written_file(case: str, tmp_path: Path) -> None:
    """BatchNorm/Scale (ResNet), depthwise and ReLU6-style nets: weights written by the runtime, exported from the
    file alone, equal to the runtime's export."""
    m = meta(SHARED / "golden" / "zoo" / case)
    g = prototxt2py.graph(SHARED / m["prototxt"])
    net = prototxt2py.load(g)
    recipe_weights(net, m["seed"])
    path = tmp_path / "w.caffemodel"
    with open(path, "wb") as f:
        write_caffemodel(net, f)
    model = to_onnx_model(g, weights=path)
    assert model.SerializeToString() == to_onnx_model(net.eval() if not net.training else net).SerializeToString()
    assert NetBlobs(net).names(g.nodes[1]) == GraphBlobs.names(g.nodes[1])
