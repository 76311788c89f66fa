"""Layers whose names repeat (Caffe accepts them): each keeps blobs of its own everywhere, weights go into the
first layer of a name only, as Caffe's ``CopyTrainedLayersFrom`` does, and what cannot be stored is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import prototxt2py
from prototxt2py import caffe
from prototxt2py.blobstore import GraphBlobs
from prototxt2py.convert import arrays_by_layer_name
from prototxt2py.errors import WeightsError
from prototxt2py.proto import caffe_pb2
from prototxt2py.weights import read_caffemodel, write_caffemodel

NET = """name: "twice"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "a"
        inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "a" top: "b"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.25 } } }
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """The net, and weights holding one layer 'ip' with the first layer's shapes (what Caffe would copy)."""
    net = tmp_path / "twice.prototxt"
    net.write_text(NET)
    msg = caffe_pb2.NetParameter()
    layer = msg.layer.add(name="ip", type="InnerProduct")
    for shape, value in (((3, 4), 2.0), ((3,), 1.0)):
        blob = layer.blobs.add()
        blob.shape.dim.extend(shape)
        blob.data.extend([value] * int(np.prod(shape)))
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(msg.SerializeToString())
    return net, weights


def test_runtime_loads_the_first_of_a_name_and_reports_the_second(files: tuple[Path, Path]) -> None:
    net_file, weights = files
    net = prototxt2py.load(prototxt2py.graph(str(net_file)), weights=str(weights))
    (_, first), (_, second) = [(n, m) for n, m in net.node_layers() if n.name == "ip"]
    assert first is not second and first is net.layer("ip")
    assert (first.weight == 2).all() and (first.bias == 1).all()
    assert (second.weight == 0.25).all() and tuple(second.weight.shape) == (2, 3)  # its filler, as in Caffe
    assert net.load_report.repeated == ["ip"] and net.load_report.missing == []
    assert any("named like an earlier layer" in w and "ip" in w for w in net.load_report.warnings())
    out = net(data=torch.ones(2, 4))
    # a = 4*2 + 1 = 9 per unit; b = 3 * 9 * 0.25 = 6.75 (bias filler 0)
    assert np.allclose(out["b"].detach().numpy(), 6.75)


def test_torch_free_store_and_caffemodel_keep_both_layers(files: tuple[Path, Path], tmp_path: Path) -> None:
    net_file, weights = files
    graph = prototxt2py.graph(str(net_file))
    store = GraphBlobs(graph, str(weights))
    first, second = (store.blobs(n) for n in graph.nodes if n.name == "ip")
    assert (first[0] == 2).all() and first[0].shape == (3, 4)
    assert (second[0] == 0.25).all() and second[0].shape == (2, 3)
    assert store.report.repeated == ["ip"]
    assert list(arrays_by_layer_name(graph, store)) == ["ip.weight", "ip.bias", "ip_2.weight", "ip_2.bias"]
    out = tmp_path / "both.caffemodel"
    net = prototxt2py.load(graph, weights=str(weights))
    with open(out, "wb") as f:
        write_caffemodel(net, f)
    saved = caffe_pb2.NetParameter.FromString(out.read_bytes())
    assert [[tuple(b.shape.dim) for b in la.blobs] for la in saved.layer if la.name == "ip"] == [
        [(3, 4), (3,)], [(2, 3), (2,)]]
    # reading back, the last layer of a name wins: CopyTrainedLayersFrom copies every source layer in turn
    assert (read_caffemodel(out)["ip"][0].array == 0.25).all()


def test_pycaffe_net_gives_each_layer_its_own_blobs(files: tuple[Path, Path]) -> None:
    net_file, weights = files
    net = caffe.Net(str(net_file), caffe.TEST, weights=str(weights))
    first, second = (layer.blobs for layer in net.layers if layer.type == "InnerProduct")
    assert first[0].shape == [3, 4] and second[0].shape == [2, 3]
    net.forward(data=np.ones((2, 4), np.float32))
    net.blobs["b"].diff[...] = 1
    net.backward()
    # d b / d W2 = a = 9 for every entry, summed over the batch of 2
    assert second[0].diff.shape == (2, 3) and np.allclose(second[0].diff, 18)


def test_hdf5_weights_refuse_a_repeated_name_with_blobs(files: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    net_file, weights = files
    net = caffe.Net(str(net_file), caffe.TEST, weights=str(weights))
    out = tmp_path / "w.h5"
    with pytest.raises(WeightsError, match="a layer named 'ip' comes earlier in the net: HDF5 weights hold one group"):
        net.save_hdf5(str(out))
    assert {p.name for p in tmp_path.iterdir()} == {"twice.prototxt", "w.caffemodel"}  # nothing half-written


def test_unique_names_never_collide_with_a_real_layer(tmp_path: Path) -> None:
    """safetensors keys and ``summary --json``: a later 'ip' becomes 'ip_3' where a layer 'ip_2' exists."""
    text = NET + ('layer { name: "ip_2" type: "InnerProduct" bottom: "b" top: "c" inner_product_param { '
                  'num_output: 1 } }\nlayer { name: "ip" type: "ReLU" bottom: "c" top: "c" }\n')
    net = tmp_path / "three.prototxt"
    net.write_text(text)
    graph = prototxt2py.graph(str(net))
    assert graph.unique_names() == ["data", "ip", "ip_3", "ip_2", "ip_4"]
    assert len(set(graph.layer_keys())) == len(graph.nodes)
    keys = list(arrays_by_layer_name(graph, GraphBlobs(graph)))
    assert keys == ["ip.weight", "ip.bias", "ip_3.weight", "ip_3.bias", "ip_2.weight", "ip_2.bias"]
    from prototxt2py.summary import summary_json

    shapes = summary_json(graph)["param_shapes"]
    assert shapes == {"ip": [[3, 4], [3]], "ip_3": [[2, 3], [2]], "ip_2": [[1, 2], [1]]}


def test_generated_module_loads_the_weights_of_every_layer(files: tuple[Path, Path], tmp_path: Path) -> None:
    """``convert --to python``: the ``.pt`` keys follow each layer's own submodule, so it loads into the
    generated module and gives the runtime's outputs."""
    import importlib.util

    from prototxt2py.convert import write_python

    net_file, weights = files
    net = prototxt2py.load(prototxt2py.graph(str(net_file)), weights=str(weights))
    source, state = write_python(net, tmp_path / "gen")
    spec = importlib.util.spec_from_file_location("twice_generated", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = next(v for v in vars(module).values()
                     if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__)()
    generated.load_state_dict(torch.load(state, weights_only=True))  # strict: every key, every shape
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(generated(x), net(data=x)["b"])


SHARED = """name: "shared_twice"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "a" top: "c" param { name: "v" }
        inner_product_param { num_output: 3 bias_term: false weight_filler { type: "constant" value: 0.25 } } }
layer { name: "ip" type: "InnerProduct" bottom: "c" top: "d" param { name: "w" } param { name: "b" }
        inner_product_param { num_output: 3 } }
layer { name: "later" type: "InnerProduct" bottom: "d" top: "e" param { name: "v" }
        inner_product_param { num_output: 3 bias_term: false } }
"""


def test_param_sharing_follows_layer_positions_not_names(tmp_path: Path) -> None:
    """Caffe's ``param { name }`` owner is the first *layer* (by position) using the name: the third 'ip' shares
    the first's blobs, 'later' shares the second 'ip''s weight (0.25), in the runtime, the torch-free store and
    the generated module alike."""
    from prototxt2py.backends.codegen import generate
    from prototxt2py.convert import write_python

    path = tmp_path / "shared.prototxt"
    path.write_text(SHARED)
    graph = prototxt2py.graph(str(path))
    assert [[p.owner for p in n.params] for n in graph.nodes[1:]] == [
        [None, None], [None], [("ip", 0), ("ip", 1)], [("ip_2", 0)]]
    net = prototxt2py.load(graph)
    (_, first), (_, second), (_, third), (_, later) = net.node_layers()[1:]
    assert third.weight is first.weight and third.bias is first.bias
    assert later.weight is second.weight and (later.weight == 0.25).all()
    x = torch.ones(2, 3)
    want = x @ torch.full((3, 3), 0.5).T  # a: 1.5 each; c = 3 * 1.5 * 0.25; d = 3 * c * 0.5; e = 3 * d * 0.25
    want = (want @ torch.full((3, 3), 0.25).T) @ torch.full((3, 3), 0.5).T @ torch.full((3, 3), 0.25).T
    with torch.no_grad():
        assert torch.allclose(net(data=x)["e"], want)
    store = GraphBlobs(graph)
    blobs = [store.blobs(n) for n in graph.nodes[1:]]
    assert blobs[2][0] is blobs[0][0] and blobs[3][0] is blobs[1][0] and (blobs[3][0] == 0.25).all()
    code = generate(graph)
    scope: dict = {}
    exec(compile(code.source, "<generated>", "exec"), scope)
    module = scope[code.class_name]()
    gen = module.layers
    assert gen.ip_3.weight is gen.ip.weight and gen.later.weight is gen.ip_2.weight
    # convert --to python's .pt lists a tied tensor under each of its names (once stored): a strict load works
    _, state = write_python(net, tmp_path / "gen")
    saved = torch.load(state, weights_only=True)
    assert saved["layers.ip_3.weight"].data_ptr() == saved["layers.ip.weight"].data_ptr()
    module.load_state_dict(saved)
    with torch.no_grad():
        assert torch.allclose(module(x), want)


SLASH_NET = """name: "slash"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "conv1" type: "InnerProduct" bottom: "data" top: "a" inner_product_param { num_output: 2 } }
layer { name: "conv1/scale" type: "Scale" bottom: "a" top: "a" scale_param { filler { value: 3 } } }
"""


def test_hdf5_weights_refuse_a_layer_name_with_a_slash(tmp_path: Path) -> None:
    """'/' separates HDF5 groups: ``conv1/scale`` would nest inside ``conv1`` (Caffe's ``H5Gcreate2`` fails or
    nests it, and its reader then refuses the file), so saving refuses it before writing, a solver with HDF5
    snapshots refuses it at set-up, and a file with such nesting is refused when read."""
    h5py = pytest.importorskip("h5py")
    net_file = tmp_path / "slash.prototxt"
    net_file.write_text(SLASH_NET)
    net = caffe.Net(str(net_file), caffe.TEST)
    with pytest.raises(WeightsError, match="layer 'conv1/scale': HDF5 weights cannot hold layer 'conv1/scale': a "
                                           "layer name with '/'"):
        net.save_hdf5(str(tmp_path / "w.h5"))
    assert not (tmp_path / "w.h5").exists()
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net_file}" base_lr: 0.1 lr_policy: "fixed" max_iter: 1 snapshot_format: HDF5 '
                      f'snapshot_prefix: '
                      f'"{tmp_path}/s"\n')
    from prototxt2py.train import SolverError

    with pytest.raises(SolverError, match=r"solver.prototxt: layer 'conv1/scale': HDF5 weights cannot hold .* "
                                          r"\(snapshot_format: HDF5 in the solver\)"):
        caffe.SGDSolver(str(solver))
    with h5py.File(tmp_path / "nested.h5", "w") as f:  # what a nesting writer leaves
        f["data/conv1/0"] = np.zeros((2, 4), np.float32)
        f["data/conv1/1"] = np.zeros(2, np.float32)
        f["data/conv1/scale/0"] = np.full(2, 3, np.float32)
    with pytest.raises(WeightsError, match=r"nested.h5: group '/data/conv1' holds 'scale', expected datasets "
                                           r"named 0, 1, ..."):
        prototxt2py.load(str(net_file), weights=str(tmp_path / "nested.h5"))


def test_hdf5_weights_fill_the_last_layer_of_a_name_in_pycaffe(files: tuple[Path, Path], tmp_path: Path) -> None:
    """``CopyTrainedLayersFromHDF5`` looks layers up in ``layer_names_index_``, where a later layer of a name
    replaced the earlier: the last 'ip' (2x3 here) takes the group."""
    h5py = pytest.importorskip("h5py")
    net_file, _ = files
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f["data/ip/0"] = np.full((2, 3), 5, np.float32)
        f["data/ip/1"] = np.full(2, 6, np.float32)
    net = caffe.Net(str(net_file), caffe.TEST)
    net.load_hdf5(str(tmp_path / "w.h5"))
    first, second = (layer.blobs for layer in net.layers if layer.name == "ip")
    assert (second[0].data == 5).all() and (second[1].data == 6).all() and not (first[0].data == 5).any()
    graph = prototxt2py.graph(str(net_file))  # the runtime's loader and the torch-free store alike
    runtime = prototxt2py.load(graph, weights=str(tmp_path / "w.h5"))
    store = GraphBlobs(graph, str(tmp_path / "w.h5"))
    second_node, second_module = [(n, m) for n, m in runtime.node_layers() if n.name == "ip"][1]
    assert (second_module.weight == 5).all()
    assert (store.blobs(second_node)[0] == 5).all() and runtime.load_report.repeated == ["ip"]


def test_hdf5_weights_of_a_layer_sharing_one_of_its_blobs_load(tmp_path: Path) -> None:
    """``Net::ToHDF5`` stores only the blobs a layer owns, so a layer sharing its weight keeps dataset ``1`` alone;
    ``CopyTrainedLayersFromHDF5`` skips the missing shared one. Every reader takes such a file."""
    pytest.importorskip("h5py")
    path = tmp_path / "share.prototxt"
    path.write_text('name: "s"\n'
                    'layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                    'layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } '
                    'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }\n'
                    'layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" } '
                    'inner_product_param { num_output: 3 bias_filler { type: "constant" value: 4 } } }\n')
    net = caffe.Net(str(path), caffe.TEST)
    net.save_hdf5(str(tmp_path / "w.h5"))
    import h5py

    with h5py.File(tmp_path / "w.h5") as f:
        assert sorted(f["data/a"]) == ["0", "1"] and sorted(f["data/b"]) == ["1"]
    graph = prototxt2py.graph(str(path))
    runtime = prototxt2py.load(graph, weights=str(tmp_path / "w.h5"))
    store = GraphBlobs(graph, str(tmp_path / "w.h5"))
    want = net.params["a"][0].data
    np.testing.assert_array_equal(runtime.layer("b").weight.detach().numpy(), want)
    np.testing.assert_array_equal(store.blobs(graph.node("b"))[0], want)
    np.testing.assert_array_equal(store.blobs(graph.node("b"))[1], np.full(3, 4, np.float32))


def test_hdf5_weights_are_checked_against_the_last_layer_of_a_name_only(tmp_path: Path) -> None:
    """Only the last 'ip' takes the group, so only its blob count matters: a first 'ip' with a bias the file lacks
    is no error (it keeps its fillers), as in CopyTrainedLayersFromHDF5."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "rep.prototxt"
    path.write_text('name: "r"\n'
                    'layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                    'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { '
                    'num_output: 3 } }\n'
                    'layer { name: "ip" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { '
                    'num_output: 3 bias_term: false } }\n')
    _write_h5(h5py, tmp_path / "rep.h5", {"data/ip/0": np.full((3, 3), 5, np.float32)})
    net = prototxt2py.load(str(path), weights=str(tmp_path / "rep.h5"))
    first, second = (m for n, m in net.node_layers() if n.name == "ip")
    assert (second.weight == 5).all() and not (first.weight == 5).any()


def test_hdf5_datasets_are_matched_by_number(tmp_path: Path) -> None:
    """Datasets 0 and 2 for an InnerProduct: Caffe reads dataset 1 by its number and stops when it is missing
    (dataset 2 was taken as the bias); a shared blob whose owner is an earlier layer of a repeated name is not
    in the file either (that name's group fills the last layer), and was given that layer's weights."""
    h5py = pytest.importorskip("h5py")
    one = tmp_path / "one.prototxt"
    one.write_text('layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { '
                   'num_output: 3 } }\n')
    _write_h5(h5py, tmp_path / "g.h5", {"data/ip/0": np.full((3, 3), 5, np.float32),
                                        "data/ip/2": np.full(3, 6, np.float32)})
    with pytest.raises(WeightsError, match="layer 'ip': Incompatible number of blobs for layer ip: dataset 1 is "
                                           "missing"):
        prototxt2py.load(str(one), weights=str(tmp_path / "g.h5"))
    shared = tmp_path / "shared.prototxt"
    shared.write_text('layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                      'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } '
                      'inner_product_param { num_output: 3 } }\n'
                      'layer { name: "ip" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { '
                      'num_output: 3 } }\n'
                      'layer { name: "s" type: "InnerProduct" bottom: "x" top: "c" param { name: "w" } '
                      'inner_product_param { num_output: 3 } }\n')
    _write_h5(h5py, tmp_path / "w.h5", {"data/ip/0": np.full((3, 3), 5, np.float32),
                                        "data/ip/1": np.full(3, 6, np.float32), "data/s/1": np.full(3, 7, np.float32)})
    with pytest.raises(WeightsError, match=r"layer 's': .* dataset 0 is missing \(shared, and its owner's group "
                                           r"lacks it\)"):
        GraphBlobs(prototxt2py.graph(str(shared)), str(tmp_path / "w.h5"))


def _write_h5(h5py, path: Path, datasets: dict) -> None:
    """An HDF5 file holding ``datasets`` (path -> array), groups made on the way."""
    with h5py.File(path, "w") as f:
        for name, array in datasets.items():
            f[name] = array
