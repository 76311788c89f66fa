"""``caffe.Net`` as pycaffe documents it (BVLC python/caffe/test/test_net.py and pycaffe.py): constructor forms,
names and order, layer ranges, live views, backward semantics (also Caffe's in-place ones), weights I/O."""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import CORPUS, GOLDEN, SHARED, meta, npz

from prototxt2py import caffe
from prototxt2py.errors import Prototxt2pyError

SIMPLE = """name: 'testnet' force_backward: true
layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
  dummy_data_param { num: 5 channels: 2 height: 3 width: 4  num: 5 channels: 1 height: 1 width: 1
    data_filler { type: 'gaussian' std: 1 } data_filler { type: 'constant' } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 11 kernel_size: 2 pad: 3
    weight_filler { type: 'gaussian' std: 1 } bias_filler { type: 'constant' value: 2 } }
  param { decay_mult: 1 } param { decay_mult: 0 } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
  inner_product_param { num_output: 13 weight_filler { type: 'gaussian' std: 2.5 }
    bias_filler { type: 'constant' value: -3 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label' top: 'loss' }
"""


@pytest.fixture()
def simple(tmp_path: Path) -> caffe.Net:
    """pycaffe's test net (TRAIN), its prototxt deleted right after construction, valid labels written."""
    path = tmp_path / "simple.prototxt"
    path.write_text(SIMPLE)
    net = caffe.Net(str(path), caffe.TRAIN)
    path.unlink()
    net.blobs["label"].data[...] = np.random.default_rng(0).integers(13, size=net.blobs["label"].data.shape)
    return net


def write(tmp_path: Path, text: str, name: str = "net.prototxt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- structure -------------------------------------------------------------------------------------------------
def test_names_order_and_structure(simple: caffe.Net) -> None:
    assert list(simple.blobs) == ["data", "label", "conv", "ip_blob", "loss"]
    assert list(simple.params) == ["conv", "ip"]
    assert simple.inputs == [] and simple.outputs == ["loss"]  # DummyData tops are not inputs
    assert simple.top_names == OrderedDict([("data", ["data", "label"]), ("conv", ["conv"]), ("ip", ["ip_blob"]),
                                            ("loss", ["loss"])])
    assert simple.bottom_names == OrderedDict([("data", []), ("conv", ["data"]), ("ip", ["conv"]),
                                               ("loss", ["ip_blob", "label"])])
    assert list(simple.layer_dict) == list(simple._layer_names)
    assert [layer.type for layer in simple.layers] == ["DummyData", "Convolution", "InnerProduct", "SoftmaxWithLoss"]
    assert simple.layer_dict["conv"].blobs[0] is simple.params["conv"][0]
    assert simple.blob_loss_weights == OrderedDict([("data", 0), ("label", 0), ("conv", 0), ("ip_blob", 0),
                                                    ("loss", 1)])
    conv = simple.blobs["conv"]
    assert conv.shape == [5, 11, 8, 9] and conv.count == 5 * 11 * 8 * 9
    assert (conv.num, conv.channels, conv.height, conv.width) == (5, 11, 8, 9)
    assert simple.params["ip"][0].shape == [13, 11 * 8 * 9]
    assert (simple.blobs["loss"].num, simple.blobs["loss"].width) == (1, 1)  # 0-axis blob: legacy dims are 1


def test_input_layers_are_the_inputs_and_levels_filter(tmp_path: Path) -> None:
    text = """
    layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
    layer { name: "NoLevel" type: "InnerProduct" bottom: "data" top: "NoLevel" inner_product_param { num_output: 1 } }
    layer { name: "Level1Only" type: "InnerProduct" bottom: "data" top: "Level1Only"
            include { min_level: 1 max_level: 1 } inner_product_param { num_output: 1 } }
    layer { name: "A" type: "InnerProduct" bottom: "data" top: "A" include { stage: "A" }
            inner_product_param { num_output: 1 } }
    """
    path = write(tmp_path, text)
    assert [b for b in caffe.Net(path, caffe.TEST).blobs if b != "data"] == ["NoLevel"]
    assert [b for b in caffe.Net(path, caffe.TEST, level=1).blobs if b != "data"] == ["NoLevel", "Level1Only"]
    assert [b for b in caffe.Net(path, caffe.TEST, stages=["A"]).blobs if b != "data"] == ["NoLevel", "A"]
    # pycaffe declares (network_file, phase, level, stages, weights): positional works as keywords do
    assert [b for b in caffe.Net(path, caffe.TEST, 1).blobs if b != "data"] == ["NoLevel", "Level1Only"]
    assert [b for b in caffe.Net(path, caffe.TEST, 0, ["A"]).blobs if b != "data"] == ["NoLevel", "A"]
    with pytest.raises(caffe.CaffeUsageError, match="level given twice"):
        caffe.Net(path, caffe.TEST, 1, level=1)
    deploy = caffe.Net(str(CORPUS / "BVLC__caffe/examples/mnist/lenet.prototxt"), caffe.TEST)
    assert deploy.inputs == ["data"] and deploy.outputs == ["prob"]


# -- forward / backward ------------------------------------------------------------------------------------------
def test_forward_backward_and_clear_param_diffs(simple: caffe.Net) -> None:
    labels = simple.blobs["label"].data.copy()
    out = simple.forward()
    assert list(out) == ["loss"] and out["loss"].shape == ()
    np.testing.assert_array_equal(simple.blobs["label"].data, labels)  # constant-filled tops are filled once
    diff = simple.params["conv"][0].diff  # taken before: must see the accumulation and the clearing
    simple.backward()
    first = diff.copy()
    assert np.abs(first).max() > 0
    simple.backward()  # parameter diffs accumulate, as in Caffe
    np.testing.assert_allclose(diff, 2 * first, rtol=1e-5, atol=1e-6)
    simple.clear_param_diffs()
    assert (diff == 0).all()


def test_forward_start_end(simple: caffe.Net) -> None:
    conv, ip = simple.blobs["conv"], simple.blobs["ip_blob"]
    conv.data[...] = np.random.default_rng(1).uniform(size=conv.data.shape)
    out = simple.forward(start="ip", end="ip")
    assert set(out) == {"ip_blob"}
    w, b = simple.params["ip"][0].data, simple.params["ip"][1].data
    want = conv.data.reshape(5, -1) @ w.T + b
    np.testing.assert_allclose(ip.data, want, rtol=1e-4, atol=1e-4)
    assert set(simple.forward(blobs=["conv"], start="ip", end="ip")) == {"ip_blob", "conv"}


def test_backward_start_end(simple: caffe.Net) -> None:
    simple.forward()
    conv, ip = simple.blobs["conv"], simple.blobs["ip_blob"]
    seed = np.random.default_rng(2).uniform(size=ip.data.shape).astype(np.float32)
    ip.diff[...] = seed
    out = simple.backward(start="ip", end="ip")
    assert set(out) == {"conv"}
    want = (seed @ simple.params["ip"][0].data).reshape(conv.data.shape)
    np.testing.assert_allclose(conv.diff, want, rtol=1e-4, atol=1e-5)


def test_live_views_and_reshape(tmp_path: Path) -> None:
    net = caffe.Net(str(CORPUS / "BVLC__caffe/examples/mnist/lenet.prototxt"), caffe.TEST)
    data = net.blobs["data"].data  # taken once, written later: the net must compute on it
    prob = net.blobs["prob"].data
    weights = net.params["conv1"][0].data
    data[...] = np.random.default_rng(3).standard_normal(data.shape)
    weights[...] = 0.01
    first = net.forward()["prob"].copy()
    np.testing.assert_array_equal(prob, first)  # the array taken before forward holds the result
    weights[...] = -0.02  # a write through the old view changes the next forward
    assert not np.allclose(net.forward()["prob"], first)
    runtime_w = net.runtime.layer_blobs("conv1")[0]
    assert runtime_w.data_ptr() == weights.ctypes.data  # a view of the runtime's parameter, not a copy
    net.blobs["data"].reshape(2, 1, 28, 28)
    net.reshape()
    assert net.blobs["prob"].shape == [2, 10] and net.blobs["ip1"].shape == [2, 500]
    net.blobs["data"].data[...] = 0.5
    assert net.forward()["prob"].shape == (2, 10)


def test_forward_kwargs_and_forward_all(tmp_path: Path) -> None:
    net = caffe.Net(str(CORPUS / "BVLC__caffe/examples/mnist/lenet.prototxt"), caffe.TEST)
    net.blobs["data"].reshape(4, 1, 28, 28)
    net.reshape()
    x = np.random.default_rng(4).standard_normal((10, 1, 28, 28)).astype(np.float32)
    batched = net.forward_all(data=x)["prob"]
    assert batched.shape == (10, 10)  # 3 batches of 4, the padding of the last one dropped
    single = np.concatenate([net.forward(data=x[i:i + 4])["prob"].copy() for i in (0, 4)])  # live views: copy
    np.testing.assert_allclose(batched[:8], single, rtol=1e-5, atol=1e-6)
    with pytest.raises(caffe.CaffeUsageError, match="do not match net inputs"):
        net.forward(label=x[:4])
    with pytest.raises(caffe.CaffeUsageError, match="Input is not batch sized"):
        net.forward(data=x[:3])
    with pytest.raises(caffe.CaffeUsageError, match="does not fit blob 'data'"):
        net.forward(data=np.zeros((4, 1, 20, 20), np.float32))
    with pytest.raises(caffe.CaffeUsageError, match="no layer named 'nope'"):
        net.forward(end="nope")
    with pytest.raises(KeyError):
        net.blobs["nope"]


def test_forward_backward_all_matches_backward(tmp_path: Path) -> None:
    text = """force_backward: true
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2
            weight_filler { type: "gaussian" std: 1 } } }
    """
    net = caffe.Net(write(tmp_path, text), caffe.TEST)
    x = np.random.default_rng(5).standard_normal((3, 3)).astype(np.float32)
    g = np.random.default_rng(6).standard_normal((3, 2)).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=x, ip=g)
    w = net.params["ip"][0].data
    np.testing.assert_allclose(outs["ip"], x @ w.T + net.params["ip"][1].data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diffs["data"], g @ w, rtol=1e-5, atol=1e-6)


def test_backward_only_along_paths_to_a_loss(tmp_path: Path) -> None:
    """Without force_backward Caffe skips layers that reach no loss and never differentiates inputs."""
    text = """
    layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 }
            shape { dim: 2 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 4
            weight_filler { type: "gaussian" std: 1 } } }
    layer { name: "side" type: "InnerProduct" bottom: "data" top: "side" inner_product_param { num_output: 2 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """
    net = caffe.Net(write(tmp_path, text), caffe.TEST)
    assert net.layer_need_backward == [False, True, False, True]
    net.blobs["data"].data[...] = 1.0
    net.blobs["data"].diff[...] = 7.0
    net.forward()
    net.backward()
    assert (net.blobs["data"].diff == 7.0).all()  # not differentiated
    assert np.abs(net.params["ip"][0].diff).max() > 0 and (net.params["side"][0].diff == 0).all()
    assert net.blobs["loss"].diff == 1.0  # the loss weight sits in the loss top's diff


def test_a_blob_read_by_a_loss_and_an_accuracy_still_gets_gradients(tmp_path: Path) -> None:
    """Caffe gives each reader of a shared blob its own Split copy: the Accuracy beside the loss (every train_val
    net) needs no diff, but must not switch off the layers below the loss."""
    text = """
    layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 3 }
            shape { dim: 4 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 5
            weight_filler { type: "gaussian" std: 1 } } }
    layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """
    accuracy = 'layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }\n'
    caffe.set_random_seed(3)
    plain = caffe.Net(write(tmp_path, text, "plain.prototxt"), caffe.TRAIN)
    both = caffe.Net(write(tmp_path, text + accuracy, "both.prototxt"), caffe.TRAIN)
    assert both.layer_need_backward == [False, True, True, True, False]
    both.params["ip"][0].data[...] = plain.params["ip"][0].data
    for net in (plain, both):
        net.blobs["data"].data[...] = np.arange(12, dtype=np.float32).reshape(4, 3) / 7 - 0.5
        net.blobs["label"].data[...] = [0, 1, 2, 4]
        net.forward()
        net.backward()
    assert np.abs(both.params["ip"][0].diff).max() > 0
    assert np.array_equal(both.params["ip"][0].diff, plain.params["ip"][0].diff)
    assert np.array_equal(both.params["ip"][1].diff, plain.params["ip"][1].diff)


# -- Caffe's in-place backward semantics --------------------------------------------------------------------------
INPLACE = """force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "h" inner_product_param { num_output: 5
        weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "act" type: "%s" bottom: "h" top: "h" }
layer { name: "after" type: "%s" bottom: "h" top: "h" %s }
"""


def _chain(tmp_path: Path, first: str, second: str, extra: str = "") -> tuple[caffe.Net, np.ndarray, np.ndarray]:
    net = caffe.Net(write(tmp_path, INPLACE % (first, second, extra)), caffe.TEST)
    rng = np.random.default_rng(7)
    net.blobs["data"].data[...] = rng.standard_normal((3, 4))
    net.forward()
    g = rng.standard_normal((3, 5)).astype(np.float32)
    grads = net.backward(h=g)
    return net, g, grads["data"]


def test_inplace_tanh_reads_the_final_blob_value(tmp_path: Path) -> None:
    """TanH's Backward_cpu reads its top data; in place, that is the value after the following Sigmoid."""
    net, g, dx = _chain(tmp_path, "TanH", "Sigmoid")
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    h = net.blobs["data"].data @ w.T + b
    f = net.blobs["h"].data
    np.testing.assert_allclose(f, 1 / (1 + np.exp(-np.tanh(h))), rtol=1e-5, atol=1e-6)
    caffe_dh = g * f * (1 - f) * (1 - f * f)  # Sigmoid exact; TanH with the final value f
    np.testing.assert_allclose(dx, caffe_dh @ w, rtol=1e-4, atol=1e-5)
    exact_dh = g * f * (1 - f) * (1 - np.tanh(h) ** 2)
    assert not np.allclose(caffe_dh @ w, exact_dh @ w, atol=1e-3)  # the test can tell the two apart


def test_inplace_elu_reads_final_values(tmp_path: Path) -> None:
    net, g, dx = _chain(tmp_path, "ELU", "TanH")
    w = net.params["ip"][0].data
    f = net.blobs["h"].data  # ELU's bottom and top data are both the final value
    d1 = g * (1 - f * f)
    caffe_dh = d1 * ((f > 0) + (1.0 + f) * (f <= 0))
    np.testing.assert_allclose(dx, caffe_dh @ w, rtol=1e-4, atol=1e-5)


def test_inplace_relu_reads_final_bottom(tmp_path: Path) -> None:
    """ReLU reads bottom data: after an in-place Power shifting the values, the mask comes from the final value."""
    net, g, dx = _chain(tmp_path, "ReLU", "TanH")
    w = net.params["ip"][0].data
    f = net.blobs["h"].data
    caffe_dh = g * (1 - f * f) * (f > 0)
    np.testing.assert_allclose(dx, caffe_dh @ w, rtol=1e-4, atol=1e-5)


def test_inplace_scale_keeps_its_private_copy(tmp_path: Path) -> None:
    """Scale in place saves its input (temp_) for the scale diff: the forward-time input, not the final value."""
    net, g, dx = _chain(tmp_path, "Scale", "TanH", "")
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    h = net.blobs["data"].data @ w.T + b
    s = net.params["act"][0].data
    f = net.blobs["h"].data
    d1 = g * (1 - f * f)
    np.testing.assert_allclose(net.params["act"][0].diff, (d1 * h).sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, (d1 * s) @ w, rtol=1e-4, atol=1e-5)


def test_inplace_power_aliases_its_diffs_as_caffe(tmp_path: Path) -> None:
    """In place, Power's bottom_diff is its top_diff: Caffe multiplies the derivative by itself."""
    net, g, dx = _chain(tmp_path, "TanH", "Power", "power_param { power: 1 scale: 3 shift: 0.5 }")
    w = net.params["ip"][0].data
    f = net.blobs["h"].data
    np.testing.assert_allclose(dx, (9.0 * (1 - f * f)) @ w, rtol=1e-4, atol=1e-4)


# -- weights -----------------------------------------------------------------------------------------------------
def test_save_and_both_constructor_forms(simple: caffe.Net, tmp_path: Path) -> None:
    model = tmp_path / "saved.caffemodel"
    simple.save(str(model))
    path = write(tmp_path, SIMPLE)
    legacy = caffe.Net(path, str(model), caffe.TRAIN)
    named = caffe.Net(path, caffe.TRAIN, weights=str(model))
    for net in (legacy, named):
        for name, blobs in simple.params.items():
            for i, blob in enumerate(blobs):
                assert np.array_equal(net.params[name][i].data, blob.data), (name, i)


def test_copy_from_and_share_with(simple: caffe.Net, tmp_path: Path) -> None:
    model = tmp_path / "saved.caffemodel"
    simple.save(str(model))
    other = caffe.Net(write(tmp_path, SIMPLE), caffe.TRAIN)
    view = other.params["ip"][0].data  # taken before copy_from: updated in place
    other.copy_from(str(model))
    assert np.array_equal(view, simple.params["ip"][0].data)
    third = caffe.Net(write(tmp_path, SIMPLE), caffe.TRAIN)
    third.share_with(simple)
    simple.params["conv"][0].data[...] = 0.25  # shared data: seen by the other net
    assert (third.params["conv"][0].data == 0.25).all()
    third.params["conv"][0].diff[...] = 3.0  # diffs stay separate
    assert not (simple.params["conv"][0].diff == 3.0).any()
    with pytest.raises(Prototxt2pyError, match="Could not open file"):
        third.copy_from(str(tmp_path / "missing.caffemodel"))
    with pytest.raises(Prototxt2pyError, match="Could not open file"):
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)


def test_hdf5_round_trip(simple: caffe.Net, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "w.h5"
    simple.save_hdf5(str(path))
    with h5py.File(path) as f:
        assert sorted(f["data"]) == ["conv", "data", "ip", "loss"] and sorted(f["data/conv"]) == ["0", "1"]
    other = caffe.Net(write(tmp_path, SIMPLE), caffe.TRAIN)
    other.load_hdf5(str(path))
    for name, blobs in simple.params.items():
        for i, blob in enumerate(blobs):
            assert np.array_equal(other.params[name][i].data, blob.data)


def test_saved_caffemodel_loads_in_opencv_with_the_same_outputs(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    case = GOLDEN / "nets" / "lenet_v2"
    m = meta(case)
    net = caffe.Net(str(SHARED / m["prototxt"]), caffe.TEST, weights=str(SHARED / m["weights"]))
    for blob in net.params["conv1"]:
        blob.data[...] *= 1.5  # saved values must be the current ones, not the file's
    model = tmp_path / "lenet.caffemodel"
    net.save(str(model))
    x = npz(case / "inputs.npz")["data"]
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    ours = net.forward(data=x)["prob"]
    cv_net = cv2.dnn.readNetFromCaffe(str(SHARED / m["prototxt"]), str(model))
    cv_net.setInput(x)
    np.testing.assert_allclose(cv_net.forward().reshape(ours.shape), ours, rtol=1e-4, atol=1e-5)


def test_modes_and_module_functions(tmp_path: Path) -> None:
    caffe.set_mode_gpu()
    caffe.set_device(0)
    try:
        net = caffe.Net(str(CORPUS / "BVLC__caffe/examples/mnist/lenet.prototxt"), caffe.TEST)
        want = "cuda" if torch.cuda.is_available() else "cpu"
        assert net.runtime.layer_blobs("conv1")[0].device.type == want
        net.blobs["data"].data[...] = 0.1
        assert net.forward()["prob"].shape == (64, 10)
    finally:
        caffe.set_mode_cpu()
    caffe.set_random_seed(3)
    a = caffe.Net(write(tmp_path, SIMPLE), caffe.TRAIN).params["conv"][0].data.copy()
    caffe.set_random_seed(3)
    b = caffe.Net(write(tmp_path, SIMPLE), caffe.TRAIN).params["conv"][0].data
    assert np.array_equal(a, b)
    assert {"Convolution", "Input", "SoftmaxWithLoss"} <= set(caffe.layer_type_list())
    assert caffe.TRAIN == 0 and caffe.TEST == 1
    with pytest.raises(caffe.CaffeUsageError, match="needs a phase"):
        caffe.Net(str(CORPUS / "BVLC__caffe/examples/mnist/lenet.prototxt"))


def test_memory_data_set_input_arrays(tmp_path: Path) -> None:
    text = """
    layer { name: "data" type: "MemoryData" top: "data" top: "label"
            memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
    layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
    """
    net = caffe.Net(write(tmp_path, text), caffe.TEST)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(data, np.array([0, 1, 2, 3], dtype=np.float32))
    np.testing.assert_array_equal(net.forward(blobs=["label"])["flat"], data[:2].reshape(2, 4))
    second = net.forward(blobs=["label"])
    np.testing.assert_array_equal(second["flat"], data[2:].reshape(2, 4))
    np.testing.assert_array_equal(second["label"].ravel(), [2, 3])
    with pytest.raises(caffe.CaffeUsageError, match="multiple of batch size"):
        net.set_input_arrays(data[:3], np.zeros(3, np.float32))
    with pytest.raises(RuntimeError, match=r"labels array has shape \(2, 1, 1\) per item, the layer expects "
                                           r"\(1, 1, 1\)"):  # RuntimeError: pycaffe's C++ check
        net.set_input_arrays(data, np.zeros((4, 2, 1, 1), np.float32))


def test_pycaffe_script_deletes_prototxt_after_construction(tmp_path: Path) -> None:
    path = write(tmp_path, SIMPLE)
    net = caffe.Net(path, caffe.TRAIN)
    os.remove(path)
    net.reshape()  # still works: everything was read at construction
    assert net.forward()["loss"].shape == ()


def test_train_val_with_data_layers_needs_shapes_once() -> None:
    path = str(CORPUS / "BVLC__caffe/examples/mnist/lenet_train_test.prototxt")
    with pytest.raises(Prototxt2pyError, match="cannot size this layer's parameters"), \
            pytest.warns(UserWarning, match="Data layer 'mnist' reads nothing: its source "
                                            "'examples/mnist/mnist_train_lmdb' does not exist"):
        caffe.Net(path, caffe.TRAIN)  # the LMDB is absent: one clear line, no traceback from the runtime
    net = caffe.Net(path, caffe.TRAIN, input_shapes={"data": [4, 1, 28, 28], "label": [4]})
    assert net.inputs == [] and net.blobs["ip2"].shape == [4, 10]
    net.blobs["data"].data[...] = np.random.default_rng(8).uniform(size=(4, 1, 28, 28))
    net.blobs["label"].data[...] = [1, 2, 3, 4]
    loss = float(net.forward()["loss"])
    assert 0 < loss < 10 and [layer.type for layer in net.layers][0] == "Data"
    net.backward()
    assert np.abs(net.params["conv1"][0].diff).max() > 0


def test_host_mirror_state_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off the CPU a Blob keeps a host mirror (Caffe's SyncedMemory); simulated here with a CPU 'device' tensor."""
    from prototxt2py.caffe import _blob

    monkeypatch.setattr(_blob._Synced, "on_cpu", property(lambda self: False))
    blob = caffe.Blob(torch.zeros(2, 3))
    view = blob.data
    assert view.ctypes.data != blob._data.tensor.data_ptr()  # a mirror, not the device memory
    view[...] = 4.0  # a host write reaches the device before the next computation
    assert float(blob.tensor().sum()) == 24.0
    blob.write(torch.ones(2, 3))  # a layer result on the device: the next access refreshes the same array
    assert blob.data is not None and (view == 1.0).all()
    blob.tensor().add_(1.0)  # changed by outside code (a solver): still seen by the next access
    assert (blob.data == 2.0).all()
    blob.reshape(3, 2)
    assert blob.data.shape == (3, 2) and blob.shape == [3, 2]


def test_dropout_backward_uses_the_forward_mask(tmp_path: Path) -> None:
    """Dropout keeps its mask (a private copy in Caffe): backward, even twice, scales the same positions."""
    text = """force_backward: true
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 50 } } }
    layer { name: "drop" type: "Dropout" bottom: "data" top: "out" dropout_param { dropout_ratio: 0.4 } }
    """
    net = caffe.Net(write(tmp_path, text), caffe.TRAIN)
    net.blobs["data"].data[...] = np.random.default_rng(9).uniform(1, 2, size=(4, 50))
    out = net.forward()["out"].copy()
    kept = out != 0
    assert 0 < kept.mean() < 1
    for _ in range(2):
        dx = net.backward(out=np.ones((4, 50), np.float32))["data"]
        np.testing.assert_allclose(dx, kept / 0.6, rtol=1e-6)


def test_layers_sharing_a_name_across_phases_use_their_own_phase_settings(tmp_path: Path) -> None:
    """A train_val net may give its TRAIN and TEST data layers the same name (Caffe filters by phase first). Here
    the TRAIN layer's constant filler makes its top fixed (filled once, caller's writes stay); the TEST layer's
    gaussian filler refills on every forward, as Caffe's DummyData does."""
    path = tmp_path / "phases.prototxt"
    path.write_text("""name: 'phases'
layer { type: 'DummyData' name: 'data' top: 'data' include { phase: TRAIN }
  dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'constant' value: 1 } } }
layer { type: 'DummyData' name: 'data' top: 'data' include { phase: TEST }
  dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'gaussian' std: 1 } } }
""")
    train = caffe.Net(str(path), caffe.TRAIN)
    train.blobs["data"].data[...] = 5
    assert (train.forward()["data"] == 5).all()
    test = caffe.Net(str(path), caffe.TEST)
    test.blobs["data"].data[...] = 5
    first = test.forward()["data"].copy()
    assert not (first == 5).any()
    assert not np.array_equal(first, test.forward()["data"])


def test_layers_sharing_a_name_in_one_net_use_their_own_settings(tmp_path: Path) -> None:
    """Caffe lets two layers of one net share a name: each keeps its own filler and ``propagate_down``."""
    path = tmp_path / "twins.prototxt"
    path.write_text("""name: 'twins'
layer { type: 'DummyData' name: 'd' top: 'fixed'
  dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'constant' value: 1 } } }
layer { type: 'DummyData' name: 'd' top: 'noise'
  dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'gaussian' std: 1 } } }
layer { type: 'Eltwise' name: 'sum' bottom: 'fixed' bottom: 'noise' top: 'sum' propagate_down: true
  propagate_down: false }
layer { type: 'Eltwise' name: 'sum' bottom: 'sum' bottom: 'fixed' top: 'sum2' propagate_down: false
  propagate_down: true loss_weight: 1 }
""")
    net = caffe.Net(str(path), caffe.TEST)
    net.blobs["fixed"].data[...] = 5
    out = net.forward()
    np.testing.assert_allclose(out["sum2"], 10 + net.blobs["noise"].data, rtol=1e-6)  # the caller's 5 stayed
    assert not (net.blobs["noise"].data == 1).all()  # the second layer's gaussian, not the first's constant
    assert net._bottom_need == [[], [], [True, False], [False, True]]  # each layer's own propagate_down


def test_blob_reshape_keeps_the_values_as_caffe(simple: caffe.Net) -> None:
    """Caffe's ``Blob::Reshape`` keeps its memory unless the count grows: the values read in the new shape."""
    blob = simple.blobs["conv"]
    blob.reshape(2, 3)
    blob.data[...] = np.arange(6).reshape(2, 3)
    blob.reshape(3, 2)
    np.testing.assert_array_equal(blob.data, np.arange(6).reshape(3, 2))
    blob.reshape(2, 4)  # grown: the old values first, zeros after
    np.testing.assert_array_equal(blob.data.ravel(), [0, 1, 2, 3, 4, 5, 0, 0])


def test_reshape_beyond_the_blob_limit_is_refused_before_allocating(simple: caffe.Net) -> None:
    """A huge ``Blob.reshape`` is the project's limit error, as ``net.reshape()`` gives, not torch's allocator."""
    from prototxt2py.errors import ResourceLimitError

    with pytest.raises(ResourceLimitError, match=r"Blob.reshape: shape \(1048576, 1048576, 28, 28\) has .* over "
                                                 "the limit of 2,147,483,647"):
        simple.blobs["data"].reshape(1 << 20, 1 << 20, 28, 28)
    assert simple.blobs["data"].shape == [5, 2, 3, 4]  # unchanged


def test_load_hdf5_of_another_layout_names_what_caffe_expects(simple: caffe.Net, tmp_path: Path) -> None:
    """An HDF5 file whose ``data`` is a dataset (an HDF5Data source, say) is a WeightsError naming the path."""
    h5py = pytest.importorskip("h5py")
    from prototxt2py.errors import WeightsError

    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((4, 8), np.float32)
    with pytest.raises(WeightsError, match=r"data.h5: '/data' is a dataset, expected a group \(Caffe's layout"):
        simple.load_hdf5(str(path))
    with h5py.File(path, "w") as f:
        f["data/conv/0"] = np.array([b"text"])
    with pytest.raises(WeightsError, match=r"dataset '/data/conv/0' has dtype \|S4, expected real numbers"):
        simple.load_hdf5(str(path))


# -- Caffe's Split layers (insert_splits.cpp), emulated without names ---------------------------------------------
LOSS_READ_NET = """name: "lw"
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" loss_weight: 0.5
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
  inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "pw" type: "Power" bottom: "y" top: "loss" loss_weight: 1 }
"""


def _net(tmp_path: Path, text: str, phase: int = caffe.TRAIN) -> caffe.Net:
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase)


def test_a_loss_weighted_top_read_by_another_layer_sums_both_gradients(tmp_path: Path) -> None:
    """InsertSplits counts the loss weight as one more reader of ``h``: its Split's top 0 carries the constant
    weight, so ``h``'s diff is 0.5 plus ip2's gradient ``W2`` (before: the reader overwrote the 0.5)."""
    net = _net(tmp_path, LOSS_READ_NET)
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    net.backward()
    w2 = net.params["ip2"][0].data
    want = 0.5 + np.ones((2, 1), np.float32) @ w2
    np.testing.assert_allclose(net.blobs["h"].diff, want, rtol=1e-6)
    np.testing.assert_allclose(net.params["ip1"][0].diff, want.T @ x, rtol=1e-5)
    net.backward()  # the Split's constant top 0 does not compound; the parameter diffs accumulate
    np.testing.assert_allclose(net.blobs["h"].diff, want, rtol=1e-6)
    np.testing.assert_allclose(net.params["ip1"][0].diff, 2 * want.T @ x, rtol=1e-5)


def test_a_loss_weighted_top_keeps_its_layer_in_the_backward_pass(tmp_path: Path) -> None:
    """The other reader (a Power that reaches no loss) wants no diff, but the weighted Split top does, so ip1
    still needs backward: its bias diff is the loss weight summed over the batch of 2."""
    net = _net(tmp_path, """
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" loss_weight: 1
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "side" type: "Power" bottom: "h" top: "side" }""")
    net.blobs["x"].data[...] = 1
    net.forward()
    net.backward()
    assert net.layer_need_backward == [False, True, False]
    np.testing.assert_array_equal(net.params["ip1"][1].diff, [2, 2, 2, 2])


def test_backward_ranges_place_the_splits_as_caffe(tmp_path: Path) -> None:
    """Caffe's Split of a fanned-out blob sits just after its producer (index P + 1): a range that starts at P
    leaves it out, so P reads the blob's diff as the caller left it (DeepDream's ``dst.diff[:] = g;
    net.backward(start=end)``); a range that runs past P sums every reader's own diff, kept from earlier calls."""
    net = _net(tmp_path, """
layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "A" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 4
  weight_filler { type: "gaussian" std: 1 } } }
layer { name: "B" type: "InnerProduct" bottom: "h" top: "b" inner_product_param { num_output: 2
  weight_filler { type: "gaussian" std: 1 } } }
layer { name: "C" type: "InnerProduct" bottom: "h" top: "c" inner_product_param { num_output: 2
  weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "b" bottom: "c" top: "loss" }""")
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    net.backward()
    h_diff, a_diff = net.blobs["h"].diff.copy(), net.params["A"][0].diff.copy()
    d = (net.blobs["b"].data - net.blobs["c"].data) / 2  # EuclideanLoss: d loss / d b = (b - c) / N
    want = d @ net.params["B"][0].data - d @ net.params["C"][0].data
    np.testing.assert_allclose(h_diff, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a_diff, want.T @ x, rtol=1e-5, atol=1e-6)

    g = np.arange(8, dtype=np.float32).reshape(2, 4) - 3  # a gradient set by hand on the fanned-out blob
    net.blobs["h"].diff[...] = g
    net.clear_param_diffs()
    net.backward(start="A")
    np.testing.assert_array_equal(net.blobs["h"].diff, g)
    np.testing.assert_allclose(net.params["A"][0].diff, g.T @ x, rtol=1e-5, atol=1e-6)

    net.clear_param_diffs()
    net.backward(start="loss", end="C")  # C's own diff of h is kept apart ...
    net.backward(start="B", end="A")  # ... and summed with B's by A's Split, inside this range
    np.testing.assert_array_equal(net.blobs["h"].diff, h_diff)
    np.testing.assert_array_equal(net.params["A"][0].diff, a_diff)


def test_deepdream_step_backward_from_a_blob_with_several_readers(tmp_path: Path) -> None:
    """DeepDream's ``make_step``: forward to ``end``, set ``dst.diff``, ``backward(start=end)``. Where ``dst``
    feeds several layers (GoogLeNet's inception outputs), the gradient reaching the image is ``dst.diff``
    through ``end`` and below, not the readers' stale diffs."""
    net = _net(tmp_path, """force_backward: true
layer { name: "data" type: "Input" top: "img" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "end" type: "InnerProduct" bottom: "img" top: "dst" inner_product_param { num_output: 4
  weight_filler { type: "gaussian" std: 1 } } }
layer { name: "r1" type: "ReLU" bottom: "dst" top: "r1" }
layer { name: "r2" type: "TanH" bottom: "dst" top: "r2" }""")
    img = np.array([[0.5, -1.0, 2.0]], np.float32)
    net.blobs["img"].data[...] = img
    net.forward(end="end")
    dst = net.blobs["dst"]
    dst.diff[:] = dst.data  # the L2 objective
    net.backward(start="end")
    np.testing.assert_allclose(net.blobs["img"].diff, dst.data @ net.params["end"][0].data, rtol=1e-5)


def test_splits_write_a_diff_only_where_caffes_split_runs(tmp_path: Path) -> None:
    """With force_backward the labels' Split runs and writes the sum of its tops' diffs, zeros (the losses
    never write a label diff); a Split whose bottom needs no backward does not run, so a ``propagate_down``
    gradient stops in its top and ``x``'s diff keeps what was there."""
    net = _net(tmp_path, """force_backward: true
layer { name: "data" type: "Input" top: "x" top: "lab" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "l1" type: "SoftmaxWithLoss" bottom: "x" bottom: "lab" top: "l1" }
layer { name: "l2" type: "SoftmaxWithLoss" bottom: "x" bottom: "lab" top: "l2" }""")
    net.blobs["lab"].diff[...] = 7
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs["lab"].diff, [0, 0])
    net = _net(tmp_path, """
layer { name: "data" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "y" top: "h" inner_product_param { num_output: 3 } }
layer { name: "l1" type: "EuclideanLoss" bottom: "x" bottom: "h" top: "l1" propagate_down: true propagate_down: true }
layer { name: "side" type: "Power" bottom: "x" top: "side" }""")
    net.blobs["x"].data[...] = 1
    net.blobs["x"].diff[...] = 7
    net.forward()
    net.backward()
    np.testing.assert_array_equal(net.blobs["x"].diff, np.full((2, 3), 7))


def test_a_loss_layers_default_weight_is_no_split(tmp_path: Path) -> None:
    """InsertSplits counts only loss weights written in the prototxt: a loss top read by one other layer gets no
    Split, so that reader's gradient overwrites the top's diff (the loss layer's default 1 is added later, by
    LossLayer::LayerSetUp). Here d(p)/d(loss) = 2 loss, not 1 + 2 loss."""
    net = _net(tmp_path, """
layer { name: "data" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 3
  weight_filler { type: "gaussian" std: 1 } } }
layer { name: "L" type: "EuclideanLoss" bottom: "h" bottom: "y" top: "loss" }
layer { name: "pw" type: "Power" bottom: "loss" top: "p" power_param { power: 2 } loss_weight: 1 }""")
    rng = np.random.default_rng(0)
    net.blobs["x"].data[...] = rng.normal(size=(2, 3))
    net.blobs["y"].data[...] = rng.normal(size=(2, 3))
    net.forward()
    net.backward()
    loss = float(net.blobs["loss"].data)
    np.testing.assert_allclose(net.blobs["loss"].diff, 2 * loss, rtol=1e-6)
    np.testing.assert_allclose(net.blobs["h"].diff, 2 * loss * (net.blobs["h"].data - net.blobs["y"].data) / 2,
                               rtol=1e-5)


def test_a_split_weighted_blob_keeps_no_seed_of_its_own(tmp_path: Path) -> None:
    """InsertSplits moves ``h``'s written loss weight to its Split's top 0 and clears ip1's: ``h``'s own diff and
    ``blob_loss_weights['h']`` are 0 until the Split writes it (in TEST nothing needs backward, so never)."""
    net = _net(tmp_path, LOSS_READ_NET, caffe.TEST)
    net.forward()
    assert net.blob_loss_weights["h"] == 0 and net.blob_loss_weights["loss"] == 1
    np.testing.assert_array_equal(net.blobs["h"].diff, np.zeros((2, 4)))


@pytest.mark.parametrize("top", ["y", "x"], ids=["own_top", "in_place"])
def test_fork_bn_backward_uses_what_its_forward_saved(tmp_path: Path, top: str) -> None:
    """SegNet's ``BN`` (LEARN) differentiates from the ``x_norm_`` and std its forward saved: in place (how SegNet
    and PSPNet write it) the blob then holds the output, which a recomputation would read as the input."""
    net = _net(tmp_path, f"""force_backward: true
layer {{ name: "in" type: "Input" top: "x" top: "t" input_param {{ shape {{ dim: 2 dim: 1 dim: 2 dim: 2 }}
  shape {{ dim: 2 dim: 1 dim: 2 dim: 2 }} }} }}
layer {{ name: "bn" type: "BN" bottom: "x" top: "{top}" bn_param {{ bn_mode: LEARN }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "{top}" bottom: "t" top: "loss" }}""")
    net.params["bn"][0].data[...], net.params["bn"][1].data[...] = 2.0, 0.0  # scale, shift
    x = np.array([0, 1, 2, 3, 4, 5, 6, 9], np.float32).reshape(2, 1, 2, 2)
    t = np.array([1, 0, 0, 0, 0, 0, 0, 0], np.float32).reshape(2, 1, 2, 2)
    net.blobs["x"].data[...], net.blobs["t"].data[...] = x, t
    net.forward()
    net.backward()
    std = np.sqrt(x.var() + 1e-9)  # SegNet bn_layer.cpp: Forward_cpu's statistics, Backward_cpu's formula
    xn = (x - x.mean()) / std
    dy = (2 * xn - t) / 2
    want = (2 * dy - (2 * dy).mean() - xn * (2 * dy * xn).mean()) / std
    np.testing.assert_allclose(net.blobs["x"].diff, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.params["bn"][0].diff.ravel(), [(xn * dy).sum()], rtol=1e-5)


def test_net_arguments_and_all_methods_misused_raise_usage_errors(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                    'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    for kwargs, message in (({"level": None}, "level must be an integer, got None"),
                            ({"level": "x"}, "level must be an integer, got 'x'"),
                            ({"stages": 5}, "stages must be a list of strings, got 5")):
        with pytest.raises(caffe.CaffeUsageError, match=message):
            caffe.Net(str(path), caffe.TEST, **kwargs)
    net = caffe.Net(str(path), caffe.TEST)
    with pytest.raises(caffe.CaffeUsageError, match="forward_all needs the arrays"):
        net.forward_all()
    with pytest.raises(caffe.CaffeUsageError, match="forward_backward_all needs the arrays"):
        net.forward_backward_all()


def test_the_runtime_sees_parameters_written_through_pycaffe_views() -> None:
    """``net.runtime`` runs an inference plan with BatchNorm/Scale folded into the convolution and the result
    packed for oneDNN, cached by the tensors' version counters, which numpy writes do not bump: after
    ``net.params['conv'][0].data[...] *= -2`` (net surgery through the arrays the README invites writing into),
    ``net.runtime`` kept computing with the old weights while ``net.forward()`` used the new ones."""
    text = """input: "data" input_shape { dim: 1 dim: 16 dim: 32 dim: 32 }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 32 kernel_size: 3 pad: 1 } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
    layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }"""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.prototxt")
        Path(path).write_text(text)
        net = caffe.Net(path, caffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.uniform(0.5, 1.5, blob.data.shape)
    x = rng.standard_normal((1, 16, 32, 32)).astype(np.float32)
    runtime = net.runtime.eval()

    def both() -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            fused = runtime(torch.from_numpy(x))["conv"].numpy().copy()
        net.blobs["data"].data[...] = x
        return fused, net.forward()["conv"].copy()

    fused, layered = both()
    np.testing.assert_allclose(fused, layered, rtol=1e-4, atol=1e-4)
    net.params["conv"][0].data[...] *= -2.0  # surgery through the numpy view
    net.params["bn"][1].data[...] *= 4.0  # and a BatchNorm statistic (a buffer, folded too)
    fused, layered = both()
    np.testing.assert_allclose(fused, layered, rtol=1e-4, atol=1e-4)
