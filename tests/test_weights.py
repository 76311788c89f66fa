""".caffemodel I/O: byte-exact round trips on the corpus models, OpenCV reading what we write, ``convert``
outputs, deferred filling, and one clear error (nothing written) for every kind of bad weights file."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from golden import CORPUS, GOLDEN, npz

import prototxt2py
from prototxt2py.backends.torch_runtime import CaffeNet
from prototxt2py.cli import main
from prototxt2py.errors import WeightsError
from prototxt2py.fillers import deferred_fills, fill
from prototxt2py.proto import caffe_pb2
from prototxt2py.weights import read_caffemodel, write_caffemodel


def corpus_caffemodels() -> list:
    """(caffemodel, its prototxt) for every binary caffemodel of the corpus MANIFEST, paired as its notes say."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    out = []
    with manifest.open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            paired = re.search(r"pairs with (\S+?):", row["notes"])
            if row["format"] == "binary" and row["kind"] == "caffemodel" and paired:
                out.append(pytest.param(row["file"], paired.group(1), id=Path(row["file"]).stem))
    return out


CAFFEMODELS = corpus_caffemodels()
LENET_V1 = ("everpeace__caffe/examples/mnist/lenet.prototxt",
            "everpeace__caffe/examples/mnist/lenet_iter_10000.caffemodel")
LENET_V2 = ("ethereon__caffe-tensorflow/examples/mnist/lenet.prototxt",
            "ethereon__caffe-tensorflow/examples/mnist/lenet_iter_10000.caffemodel")
CIFAR_QUICK = ("everpeace__caffe/examples/cifar10/cifar10_quick.prototxt",
               "everpeace__caffe/examples/cifar10/cifar10_quick_iter_5000.caffemodel")
RFB = ("Linzaer__Ultra-Light-Fast-Generic-Face-Detector-1MB/caffe/model/RFB-320/RFB-320.prototxt",
       "Linzaer__Ultra-Light-Fast-Generic-Face-Detector-1MB/caffe/model/RFB-320/RFB-320.caffemodel")


def corpus(*parts: str) -> str:
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"corpus file {path} not available")
    return str(path)


def resave(net: CaffeNet, path: Path) -> Path:
    with open(path, "wb") as f:
        write_caffemodel(net, f)
    return path


def assert_same_blobs(before: dict, after: dict, net: CaffeNet) -> None:
    """Every layer the net loaded has byte-identical arrays after the round trip; shapes are equal, or the
    original's legacy 4-D shape is the written shape left-padded with 1s (V1 files)."""
    assert set(after) == set(before) - set(net.load_report.extra)
    for name, blobs in after.items():
        assert len(blobs) == len(before[name]), name
        for old, new in zip(before[name], blobs, strict=True):
            assert new.array.dtype == old.array.dtype == np.float32
            assert new.array.tobytes() == old.array.tobytes(), f"layer {name}: values differ"
            padded = (1,) * (4 - new.array.ndim) + new.array.shape
            assert new.array.shape == old.array.shape or (old.legacy and padded == old.array.shape), name
            assert not new.legacy  # we always write the `shape` field


# -- round trips ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("weights", "prototxt"), CAFFEMODELS)
def test_round_trip_is_byte_identical(weights: str, prototxt: str, tmp_path: Path) -> None:
    net = prototxt2py.load(corpus(prototxt), weights=corpus(weights))
    out = resave(net, tmp_path / "resaved.caffemodel")
    assert_same_blobs(read_caffemodel(corpus(weights)), read_caffemodel(out), net)
    # protobuf itself (not our framing walk) reads the file back: a valid V2 NetParameter, same values
    parsed = caffe_pb2.NetParameter.FromString(out.read_bytes())
    assert [layer.name for layer in parsed.layer] == [n.name for n in net.graph.nodes]
    for layer in parsed.layer:
        module = net.layer(layer.name)
        for blob, name in zip(layer.blobs, getattr(module, "blob_names", ()), strict=True):
            assert tuple(blob.shape.dim) == tuple(getattr(module, name).shape)
            np.testing.assert_array_equal(np.asarray(blob.data, np.float32), getattr(module, name).detach().numpy()
                                          .reshape(-1))


def test_v1_files_are_read_with_legacy_shapes() -> None:
    """everpeace's V1 LeNet stores InnerProduct weights as legacy (1, 1, N, K) blobs; they load as (N, K)."""
    blobs = read_caffemodel(corpus(LENET_V1[1]))
    ip1 = blobs["ip1"][0]
    assert ip1.legacy and ip1.array.shape == (1, 1, 500, 800)
    net = prototxt2py.load(corpus(LENET_V1[0]), weights=corpus(LENET_V1[1]))
    assert tuple(net.layer("ip1").weight.shape) == (500, 800)
    np.testing.assert_array_equal(net.layer("ip1").weight.detach().numpy(), ip1.array.reshape(500, 800))
    assert net.load_report.loaded == ["conv1", "conv2", "ip1", "ip2"] and not net.load_report.missing


def test_state_dict_round_trip(tmp_path: Path) -> None:
    """caffemodel -> state_dict -> (fresh net) -> caffemodel gives the same blobs."""
    net = prototxt2py.load(corpus(CIFAR_QUICK[0]), weights=corpus(CIFAR_QUICK[1]))
    fresh = prototxt2py.load(corpus(CIFAR_QUICK[0]))
    fresh.load_state_dict(torch.load(_saved(net.state_dict(), tmp_path), weights_only=True))
    fresh.load_report = net.load_report
    assert_same_blobs(read_caffemodel(corpus(CIFAR_QUICK[1])), read_caffemodel(resave(fresh, tmp_path / "b")), fresh)


def _saved(state: dict, tmp_path: Path) -> Path:
    path = tmp_path / "state.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("prototxt", "weights", "golden"), [
    (*LENET_V1, "lenet_v1"), (*CIFAR_QUICK, "cifar10_quick"),
    ("kpzhang93__MTCNN_face_detection_alignment/code/codes/MTCNNv2/model/det1.prototxt",
     "kpzhang93__MTCNN_face_detection_alignment/code/codes/MTCNNv2/model/det1.caffemodel", "mtcnn_det1_pnet"),
], ids=["lenet_v1", "cifar10_quick", "mtcnn_det1"])
def test_resaved_file_runs_in_opencv(prototxt: str, weights: str, golden: str, tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    inputs = npz(GOLDEN / "nets" / golden / "inputs.npz")["data"]
    net = prototxt2py.load(corpus(prototxt), weights=corpus(weights), input_shapes={"data": list(inputs.shape)})
    out = resave(net, tmp_path / "resaved.caffemodel")
    with torch.no_grad():
        ours = net(torch.from_numpy(inputs))
    results = {}
    for label, path in (("original", corpus(weights)), ("resaved", str(out))):
        cv_net = cv2.dnn.readNetFromCaffe(corpus(prototxt), path)
        cv_net.setInput(inputs)
        results[label] = dict(zip(net.output_names, cv_net.forward(net.output_names), strict=True))
    for name in net.output_names:
        np.testing.assert_array_equal(results["resaved"][name], results["original"][name])
        want = ours[name].numpy()
        np.testing.assert_allclose(results["resaved"][name], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# -- the CLI's convert -----------------------------------------------------------------------------------------
def cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.parametrize("target", ["pytorch", "safetensors", "caffemodel"])
def test_convert_outputs_load(target: str, tmp_path: Path) -> None:
    prototxt, weights = corpus(LENET_V2[0]), corpus(LENET_V2[1])
    out = tmp_path / f"out.{target}"
    code, stdout, stderr = cli("convert", prototxt, "--weights", weights, "--to", target, "-o", str(out))
    assert code == 0, stderr
    assert stderr == "" and f"wrote {out}" in stdout
    ref = prototxt2py.load(prototxt, weights=weights)
    if target == "pytorch":
        fresh = prototxt2py.load(prototxt)
        fresh.load_state_dict(torch.load(out, weights_only=True))
        for (k, a), (k2, b) in zip(fresh.state_dict().items(), ref.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(a, b), k
    elif target == "safetensors":
        from safetensors.torch import load_file

        tensors = load_file(out)
        layers = ("conv1", "conv2", "ip1", "ip2")
        assert sorted(tensors) == sorted(f"{n}.{b}" for n in layers for b in ("weight", "bias"))
        for key, t in tensors.items():
            layer, blob = key.rsplit(".", 1)
            assert torch.equal(t, getattr(ref.layer(layer), blob)), key
    else:
        assert_same_blobs(read_caffemodel(weights), read_caffemodel(out), ref)


# -- bad weights: one clear error, nothing written -------------------------------------------------------------
def _truncated(at: int):
    def make(tmp_path: Path) -> Path:
        data = Path(corpus(LENET_V2[1])).read_bytes()
        path = tmp_path / "bad.caffemodel"
        path.write_bytes(data[: at if at > 0 else len(data) + at])
        return path
    return make


def _random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(np.random.default_rng(0).bytes(10_000))
    return path


def _text(tmp_path: Path) -> Path:
    return Path(corpus(LENET_V2[0]))


def _other_net(tmp_path: Path) -> Path:
    return Path(corpus(CIFAR_QUICK[1]))


def _unrelated_net(tmp_path: Path) -> Path:
    return Path(corpus(RFB[1]))


def _edited(edit):
    """The LeNet V2 file parsed by protobuf, edited, re-serialised."""
    def make(tmp_path: Path) -> Path:
        net = caffe_pb2.NetParameter.FromString(Path(corpus(LENET_V2[1])).read_bytes())
        edit({layer.name: layer for layer in net.layer})
        path = tmp_path / "bad.caffemodel"
        path.write_bytes(net.SerializeToString())
        return path
    return make


def _drop_bias(layers: dict) -> None:
    del layers["conv1"].blobs[1]


def _short_blob(layers: dict) -> None:
    del layers["conv2"].blobs[0].data[10:]


def _wrong_legacy(layers: dict) -> None:
    blob = layers["ip1"].blobs[0]
    blob.ClearField("shape")
    blob.num, blob.channels, blob.height, blob.width = 1, 2, 250, 800


BAD_WEIGHTS = {
    "truncated_in_header": (_truncated(3), "truncated or corrupt"),
    "truncated_in_first_blob": (_truncated(200), "truncated or corrupt"),
    "truncated_in_middle": (_truncated(900_000), "truncated or corrupt"),
    "truncated_last_byte": (_truncated(-1), "truncated or corrupt"),
    "random_bytes": (_random_bytes, "not a valid .caffemodel"),
    "text_prototxt": (_text, "this is a text file (a prototxt?), not a binary .caffemodel"),
    "other_net": (_other_net, "layer 'conv1': blob 0 (weight) has shape (32, 3, 5, 5) in the weights file, "
                              "the net expects (20, 1, 5, 5)"),
    "unrelated_net": (_unrelated_net, "no layer of the weights file matches a layer of the net"),
    "blob_count": (_edited(_drop_bias), "layer 'conv1': weights file has 1 blobs for this layer, the net expects 2"),
    "blob_values": (_edited(_short_blob), "layer 'conv2': blob 0 declares shape (50, 20, 5, 5) but holds 10 values"),
    "legacy_shape": (_edited(_wrong_legacy), "layer 'ip1': blob 0 (weight) has shape (1, 2, 250, 800)"),
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_bad_weights_api(case: str, tmp_path: Path) -> None:
    make, expected = BAD_WEIGHTS[case]
    path = make(tmp_path)
    with pytest.raises(WeightsError) as info:
        prototxt2py.load(corpus(LENET_V2[0]), weights=path)
    assert expected in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("command", ["convert", "run"])
@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_bad_weights_cli_writes_nothing(case: str, command: str, tmp_path: Path) -> None:
    make, expected = BAD_WEIGHTS[case]
    path = make(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "result"
    if command == "convert":
        args = ["convert", corpus(LENET_V2[0]), "--weights", str(path), "--to", "caffemodel", "-o", str(out)]
    else:
        inputs = tmp_path / "in.npz"
        np.savez(inputs, data=np.zeros((1, 1, 28, 28), np.float32))
        args = ["run", corpus(LENET_V2[0]), "--weights", str(path), "--inputs", str(inputs), "-o", str(out)]
    code, stdout, stderr = cli(*args)
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], stderr
    assert list(out_dir.iterdir()) == []


def test_layer_boundary_truncation_reports_missing_layers(tmp_path: Path) -> None:
    """A file cut exactly between layers is valid protobuf: the layers it lost are reported (and filled)."""
    net = caffe_pb2.NetParameter.FromString(Path(corpus(LENET_V2[1])).read_bytes())
    kept = [layer for layer in net.layer if layer.name not in ("ip2", "prob", "loss")]
    del net.layer[:]
    net.layer.extend(kept)
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(net.SerializeToString())
    loaded = prototxt2py.load(corpus(LENET_V2[0]), weights=path)
    assert loaded.load_report.missing == ["ip2"]
    assert loaded.load_report.warnings() == ["layers without weights in the file (left at their fillers): ip2"]
    code, _, stderr = cli("convert", corpus(LENET_V2[0]), "--weights", str(path), "--to", "caffemodel",
                          "-o", str(tmp_path / "o.caffemodel"))
    assert code == 0 and "warning: layers without weights in the file (left at their fillers): ip2" in stderr


# -- deferred filling ------------------------------------------------------------------------------------------
EXTRA_LAYER = """
layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3"
  inner_product_param { num_output: 3
    weight_filler { type: "constant" value: 0.25 } bias_filler { type: "gaussian" std: 2 } } }
"""


def test_layers_missing_from_the_file_are_filled_after_loading(tmp_path: Path) -> None:
    prototxt = tmp_path / "lenet_plus.prototxt"
    prototxt.write_text(Path(corpus(LENET_V2[0])).read_text() + EXTRA_LAYER)
    torch.manual_seed(0)
    net = prototxt2py.load(prototxt, weights=corpus(LENET_V2[1]))
    assert net.load_report.missing == ["ip3"] and net.load_report.loaded == ["conv1", "conv2", "ip1", "ip2"]
    assert torch.equal(net.layer("ip3").weight, torch.full((3, 10), 0.25))
    bias = net.layer("ip3").bias.detach()
    assert bias.abs().max() > 0 and bias.abs().max() < 20  # drawn from N(0, 2), not uninitialised memory
    stored = read_caffemodel(corpus(LENET_V2[1]))
    for name in ("conv1", "ip2"):
        assert net.layer(name).weight.detach().numpy().tobytes() == stored[name][0].array.tobytes()


def test_fixed_dummy_data_is_filled_when_weights_are_loaded(tmp_path: Path) -> None:
    """DummyData's constant top is built by the filler code too: deferral must not leave it uninitialised."""
    prototxt = tmp_path / "dummy.prototxt"
    prototxt.write_text("""
layer { name: "d" type: "DummyData" top: "d"
  dummy_data_param { shape { dim: 2 dim: 4 } data_filler { type: "constant" value: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "d" top: "ip" inner_product_param { num_output: 2 } }
""")
    source = prototxt2py.load(prototxt)
    with torch.no_grad():
        source.layer("ip").weight.copy_(torch.arange(8.0).reshape(2, 4))
        source.layer("ip").bias.copy_(torch.tensor([1.0, -1.0]))
    weights = resave(source, tmp_path / "dummy.caffemodel")
    net = prototxt2py.load(prototxt, weights=weights)
    assert net(all_blobs=True)["ip"].tolist() == [[19.0, 65.0]] * 2  # 3 * (0+1+2+3) + 1, 3 * (4+5+6+7) - 1


def test_deferred_fills_fill_only_live_unwritten_tensors() -> None:
    filler = caffe_pb2.FillerParameter(type="constant", value=7)
    with deferred_fills() as deferred:
        kept, loaded, dropped = fill((3,), filler), fill((2,), filler), fill((4,), filler)
    loaded.copy_(torch.tensor([1.0, 2.0]))
    assert deferred.fill_remaining(written=[loaded], alive=[kept, loaded]) == 1
    assert kept.tolist() == [7.0] * 3 and loaded.tolist() == [1.0, 2.0]
    assert dropped.shape == (4,)  # not filled: nothing held it (its values are whatever memory had)
    assert fill((2,), filler).tolist() == [7.0, 7.0]  # outside the block, fill() fills again


def test_deferred_fills_still_refuse_a_bad_filler(tmp_path: Path) -> None:
    prototxt = tmp_path / "bad_filler.prototxt"
    prototxt.write_text(Path(corpus(LENET_V2[0])).read_text().replace('type: "xavier"', 'type: "nosuch"', 1))
    with pytest.raises(prototxt2py.Prototxt2pyError, match="unknown filler type 'nosuch'"):
        prototxt2py.load(prototxt, weights=corpus(LENET_V2[1]))


def test_loading_bumps_versions_so_derived_caches_see_new_weights() -> None:
    net = prototxt2py.load(corpus(LENET_V2[0]))
    before = net.layer("conv1").weight._version
    from prototxt2py.weights import load_weights

    load_weights(net, corpus(LENET_V2[1]))
    assert net.layer("conv1").weight._version > before


def test_a_zero_axis_blob_round_trips_as_caffe_writes_it(tmp_path: Path) -> None:
    """PReLU ``channel_shared`` has a 0-axis slope. ``Blob::ToProto`` writes it with no shape field (Caffe's
    ``ShapeEquals`` then reads ``[]``); written as ``shape { dim: 1 }``, Caffe and this reader refused the file."""
    net_path = tmp_path / "prelu.prototxt"
    net_path.write_text('layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n'
                        'layer { name: "l" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true '
                        'filler { type: "constant" value: 0.25 } } }\n')
    first = tmp_path / "a.caffemodel"
    with open(first, "wb") as f:
        write_caffemodel(prototxt2py.load(net_path), f)
    for out, to in ((tmp_path / "b.caffemodel", "caffemodel"), (tmp_path / "b.safetensors", "safetensors")):
        result = CliRunner().invoke(main, ["convert", str(net_path), "--weights", str(first), "--to", to,
                                           "-o", str(out)])
        assert result.exit_code == 0, result.output
    for path in (first, tmp_path / "b.caffemodel"):
        blob = caffe_pb2.NetParameter.FromString(path.read_bytes()).layer[1].blobs[0]
        assert not blob.HasField("shape") and list(blob.data) == [0.25]
        net = prototxt2py.load(net_path, weights=path)
        assert tuple(net.layer("l").weight.shape) == () and net.layer("l").weight.item() == 0.25
    from safetensors.numpy import load_file

    assert load_file(tmp_path / "b.safetensors")["l.weight"].shape == ()


IP_NET = """name: "n"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "a" inner_product_param { num_output: 2 } }
layer { name: "relu" type: "ReLU" bottom: "a" top: "a" }
"""


def _blob(shape: tuple[int, ...] | None = None, data: list[float] | None = None, **legacy: int) -> caffe_pb2.BlobProto:
    b = caffe_pb2.BlobProto(**legacy)
    if shape is not None:
        b.shape.dim.extend(shape)
    if data is not None:
        b.data.extend(data)
    return b


def _model(*layers: tuple[str, list]) -> bytes:
    m = caffe_pb2.NetParameter()
    for name, blobs in layers:
        m.layer.add(name=name).blobs.extend(blobs)
    return m.SerializeToString()


def _split_runs_model() -> bytes:
    """ip's bias values written as two packed runs of ``data``, which protobuf concatenates (a legal encoding)."""
    first, second = _blob((2,), [4.0]).SerializeToString(), _blob(data=[6.0]).SerializeToString()
    layer = caffe_pb2.LayerParameter(name="ip")
    layer.blobs.extend([_blob((2, 2), [1.0] * 4)])
    body = layer.SerializeToString() + b"\x3a" + bytes([len(first + second)]) + first + second
    return b"\xa2\x06" + bytes([len(body)]) + body


def _with_doubles() -> caffe_pb2.BlobProto:
    b = _blob((2,), [1.0, 1.0])
    b.double_data.extend([7.0, 7.0])
    return b


@pytest.mark.parametrize(("case", "model", "bias"), [
    ("the last layer of a name wins", _model(("ip", [_blob((2, 2), [1.0] * 4), _blob((2,), [1.0] * 2)]),
                                             ("ip", [_blob((2, 2), [2.0] * 4), _blob((2,), [2.0] * 2)])), 2.0),
    ("legacy fields win over shape", _model(("ip", [_blob((2, 2), [1.0] * 4),
                                                    _blob((1, 2), [5.0] * 2, num=1, channels=1, height=1, width=2)])),
     5.0),
    ("double_data wins over data", _model(("ip", [_blob((2, 2), [1.0] * 4), _with_doubles()])), 7.0),
    ("packed runs concatenate", _split_runs_model(), (4.0, 6.0)),
], ids=["last_of_a_name", "legacy_over_shape", "double_over_data", "packed_runs"])
def test_blobs_are_read_by_caffes_rules(case: str, model: bytes, bias: float | tuple, tmp_path: Path) -> None:
    """``CopyTrainedLayersFrom`` copies every source layer in turn, and ``Blob::FromProto`` prefers the legacy 4-D
    fields and ``double_data``; both loaders (the runtime's and the torch-free store) agree."""
    from prototxt2py.blobstore import GraphBlobs

    (tmp_path / "net.prototxt").write_text(IP_NET)
    (tmp_path / "w.caffemodel").write_bytes(model)
    graph = prototxt2py.graph(tmp_path / "net.prototxt")
    net = prototxt2py.load(graph, weights=tmp_path / "w.caffemodel")
    store = GraphBlobs(graph, tmp_path / "w.caffemodel")
    want = np.broadcast_to(np.asarray(bias, np.float32), (2,))
    np.testing.assert_array_equal(net.layer("ip").bias.detach().numpy(), want, err_msg=case)
    np.testing.assert_array_equal(store.blobs(graph.node("ip"))[1], want, err_msg=case)


def test_blobs_stored_for_a_layer_without_parameters_are_refused(tmp_path: Path) -> None:
    """Caffe checks the blob count of every layer it matches by name, a ReLU's (0) included."""
    from prototxt2py.blobstore import GraphBlobs

    (tmp_path / "net.prototxt").write_text(IP_NET)
    (tmp_path / "w.caffemodel").write_bytes(_model(("ip", [_blob((2, 2), [1.0] * 4), _blob((2,), [1.0] * 2)]),
                                                   ("relu", [_blob((2,), [9.0] * 2)])))
    graph = prototxt2py.graph(tmp_path / "net.prototxt")
    for load in (lambda: prototxt2py.load(graph, weights=tmp_path / "w.caffemodel"),
                 lambda: GraphBlobs(graph, tmp_path / "w.caffemodel")):
        with pytest.raises(WeightsError, match="layer 'relu': weights file has 1 blobs for this layer, the net "
                                               "expects 0"):
            load()


def test_a_file_mixing_v1_and_v2_layers_is_refused(tmp_path: Path) -> None:
    """``UpgradeV1Net`` stops on a NetParameter with both ``layer`` and ``layers`` (it would not merge them)."""
    m = caffe_pb2.NetParameter()
    m.layer.add(name="ip").blobs.extend([_blob((2, 2), [1.0] * 4), _blob((2,), [1.0] * 2)])
    m.layers.add(name="other").blobs.extend([_blob((2,), [1.0] * 2)])
    (tmp_path / "net.prototxt").write_text(IP_NET)
    (tmp_path / "w.caffemodel").write_bytes(m.SerializeToString())
    with pytest.raises(WeightsError, match=r"w.caffemodel: the file has both 'layer' \(V2\) and 'layers' \(V1\) "
                                           "entries, which Caffe refuses to upgrade"):
        prototxt2py.load(tmp_path / "net.prototxt", weights=tmp_path / "w.caffemodel")


def test_a_layer_held_twice_with_other_shapes_is_refused_as_caffe_stops(tmp_path: Path) -> None:
    """``CopyTrainedLayersFrom`` copies every entry of a name in turn, so an earlier entry that does not fit stops
    Caffe; only the last one was checked here. Entries of equal shapes load, the last one's values winning."""
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                   'inner_product_param { num_output: 2 } }\n')

    def model(*entries: list[tuple[int, ...]]) -> Path:
        m = caffe_pb2.NetParameter()
        for k, shapes in enumerate(entries):
            layer = m.layer.add(name="ip", type="InnerProduct")
            for shape in shapes:
                layer.blobs.add(data=[k] * int(np.prod(shape))).shape.dim.extend(shape)
        path = tmp_path / f"w{len(list(tmp_path.iterdir()))}.caffemodel"
        path.write_bytes(m.SerializeToString())
        return path

    cases = ((([(3, 2), (3,)], [(2, 2), (2,)]), "blob 0 of shape (3, 2) where the net expects (2, 2)"),
             (([(2, 2)], [(2, 2), (2,)]), "1 blobs where the net expects 2"))
    for entries, why in cases:
        with pytest.raises(WeightsError) as caught:
            prototxt2py.load(net, weights=model(*entries))
        assert str(caught.value).endswith(f"layer 'ip': the weights file holds this layer more than once, and an "
                                          f"earlier entry has {why}: Caffe copies each entry in turn and stops at "
                                          "that one"), caught.value
        result = CliRunner().invoke(main, ["convert", str(net), "--weights", str(model(*entries)), "--to",
                                           "caffemodel", "-o", str(tmp_path / "o.caffemodel")])  # torch-free
        assert result.exit_code == 1 and "holds this layer more than once" in result.stderr, result.stderr
        assert not (tmp_path / "o.caffemodel").exists()
    loaded = prototxt2py.load(net, weights=model([(2, 2), (2,)], [(2, 2), (2,)]))
    assert loaded.layer("ip").weight.detach().eq(1).all()  # the second entry's values
    # an earlier entry with legacy 4-D dims fits as Blob::ShapeEquals takes them (V1 files carry such blobs)
    legacy = caffe_pb2.NetParameter.FromString(model([(2, 2), (2,)], [(2, 2), (2,)]).read_bytes())
    for blob, dims in zip(legacy.layer[0].blobs, ((1, 1, 2, 2), (1, 1, 1, 2)), strict=True):
        blob.ClearField("shape")
        blob.num, blob.channels, blob.height, blob.width = dims
    (tmp_path / "legacy.caffemodel").write_bytes(legacy.SerializeToString())
    assert prototxt2py.load(net, weights=tmp_path / "legacy.caffemodel").layer("ip").weight.detach().eq(1).all()
    result = CliRunner().invoke(main, ["convert", str(net), "--weights", str(tmp_path / "legacy.caffemodel"), "--to",
                                       "caffemodel", "-o", str(tmp_path / "o.caffemodel")])
    assert result.exit_code == 0, result.stderr
    # a net without the layer ignores its entries, as Caffe's copy does; reading the file alone keeps the last
    other = model([(3, 2), (3,)], [(2, 2), (2,)])
    assert read_caffemodel(other)["ip"][0].array.shape == (2, 2)
    with_fc = caffe_pb2.NetParameter.FromString(other.read_bytes())
    fc = with_fc.layer.add(name="fc", type="InnerProduct")
    fc.blobs.add(data=[7, 7, 7, 7]).shape.dim.extend([2, 2])
    fc.blobs.add(data=[7, 7]).shape.dim.extend([2])
    other.write_bytes(with_fc.SerializeToString())
    renamed = tmp_path / "renamed.prototxt"
    renamed.write_text(net.read_text().replace('name: "ip"', 'name: "fc"'))
    assert prototxt2py.load(renamed, weights=other).load_report.extra == ["ip"]
