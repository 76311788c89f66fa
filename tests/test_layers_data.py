"""Data-reading layers for the IR: the shapes a prototxt fixes (batch, crop, resize, MemoryData's dims), the
``Unknowable`` reason and ``--input`` hint for the rest, net inputs in torch, and Python layers never run.

Truth: the shapes BVLC Caffe gave the tops of the ``data/`` golden cases (``outputs_content`` /
``recorded``), and sizes derived from Caffe's ``DataLayerSetUp`` methods for corpus nets."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from golden import CORPUS, case_params, meta

import prototxt2py
from prototxt2py.errors import GraphError, ShapeError, UnsupportedLayerError
from prototxt2py.reader import read_net, read_net_text

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not available")
HINT = re.compile(r"--input (\w+)=((?:\w+,)*(?:\w+|\.\.\.))")


def graph_of(text: str, **kw) -> prototxt2py.Graph:
    return prototxt2py.graph(read_net_text(text), **kw)


def golden_shapes(m: dict) -> dict[str, tuple[int, ...]]:
    if m.get("outputs_content"):
        return {k: tuple(v) for k, v in m["outputs_content"].items()}
    return {k: tuple(v["shape"]) for k, v in m["recorded"][0].items()}


@pytest.mark.parametrize("case", case_params("data"))
def test_golden_data_layer_shapes(case) -> None:
    """Every top is either Caffe's shape, or unknown with a reason whose --input hint agrees with Caffe on
    every dim it states."""
    m = meta(case)
    g = prototxt2py.graph(read_net(case / m["net"]), phase=m["phase"])
    want = golden_shapes(m)
    shapes = g.blob_shapes()
    why = g.unresolved()
    for blob, shape in want.items():
        if shapes[blob] is not None:
            if g.node(g.final_value(blob).producer).type == "MemoryData" and blob == g.node(
                    g.final_value(blob).producer).tops[1]:
                # the golden top is the post-forward (batch, 1, 1, 1) view; the net's shape is setup's (batch,)
                assert shapes[blob] == (shape[0],) and shape[1:] == (1, 1, 1), blob
                continue
            assert shapes[blob] == shape, blob
            continue
        producer = g.final_value(blob).producer
        assert producer in why, f"{blob} unknown without a reason"
        hints = dict(HINT.findall(why[producer]))
        assert blob in hints, why[producer]
        for name, dims in hints.items():
            hint = dims.split(",")
            if hint[-1] == "...":  # HDF5: only the batch size is in the prototxt
                assert int(hint[0]) == want[name][0], why[producer]
                continue
            assert len(hint) == len(want[name])
            assert all(h in "NCHW" or int(h) == d for h, d in zip(hint, want[name], strict=True)), why[producer]


def test_memory_data_shapes_and_inputs() -> None:
    # Caffe's MemoryDataLayer::DataLayerSetUp: data (batch, C, H, W), label (batch,)
    text = """
        layer { name: "mem" type: "MemoryData" top: "data" top: "label"
                memory_data_param { batch_size: 4 channels: 3 height: 5 width: 6 } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
    """
    g = graph_of(text)
    assert g.blob_shapes()["data"] == (4, 3, 5, 6) and g.blob_shapes()["label"] == (4,)
    assert [g.values[v].blob for v in g.inputs] == ["data", "label"]
    net = prototxt2py.load(g)
    assert net(torch.zeros(4, 3, 5, 6), torch.zeros(4))["ip"].shape == (4, 2)
    with pytest.raises(TypeError, match=r"\['data', 'label'\] were not given"):
        net()
    with pytest.raises(GraphError, match="must all be positive"):
        graph_of(text.replace("height: 5", ""))


@needs_corpus
def test_lmdb_train_val_needs_input() -> None:
    g = prototxt2py.graph(CORPUS / "BVLC__caffe/models/bvlc_alexnet/train_val.prototxt", phase="TRAIN")
    why = g.unresolved()
    assert list(why) == ["data"]
    # batch 256 (data_param), 227x227 (transform_param crop_size); channels only the LMDB knows
    assert "examples/imagenet/ilsvrc12_train_lmdb" in why["data"] and "(LMDB)" in why["data"]
    assert "--input data=256,C,227,227" in why["data"]
    assert g.blob_shapes()["conv1"] is None
    assert g.blob_shapes()["label"] == (256,)  # known without the data: one label per item
    g = prototxt2py.graph(CORPUS / "BVLC__caffe/models/bvlc_alexnet/train_val.prototxt", phase="TRAIN",
                          input_shapes={"data": (256, 3, 227, 227)})
    assert g.unresolved() == {}
    assert g.blob_shapes()["conv1"] == (256, 96, 55, 55) and g.blob_shapes()["loss"] == ()


@needs_corpus
def test_image_data_resize_and_crop() -> None:
    # new_height/new_width 256 then crop_size 227; is_color (default) -> 3 channels; batch 50
    g = prototxt2py.graph(CORPUS / "BVLC__caffe/examples/feature_extraction/imagenet_val.prototxt")
    assert g.blob_shapes()["data"] == (50, 3, 227, 227) and g.blob_shapes()["label"] == (50,)
    assert g.blob_shapes()["fc8"] == (50, 1000)


def test_image_data_gray_resize_without_crop() -> None:
    g = graph_of("""
        layer { name: "d" type: "ImageData" top: "data" top: "label"
                image_data_param { source: "list.txt" batch_size: 3 new_height: 20 new_width: 30 is_color: false } }
    """)
    assert g.blob_shapes()["data"] == (3, 1, 20, 30) and g.blob_shapes()["label"] == (3,)
    with pytest.raises(GraphError, match="new_height and new_width must be set together"):
        graph_of("""
            layer { name: "d" type: "ImageData" top: "data" top: "label"
                    image_data_param { source: "list.txt" batch_size: 3 new_height: 20 } }
        """)


def test_window_data_knows_all_but_channels() -> None:
    g = graph_of("""
        layer { name: "d" type: "WindowData" top: "data" top: "label" transform_param { crop_size: 227 }
                window_data_param { source: "windows.txt" batch_size: 128 } }
    """)
    why = g.unresolved()["d"]
    assert "windows.txt (window file)" in why and "channel count" in why and "--input data=128,C,227,227" in why
    assert g.blob_shapes() == {"data": None, "label": (128,)}


def test_hdf5_data_and_output() -> None:
    text = """
        layer { name: "h5" type: "HDF5Data" top: "data" top: "label"
                hdf5_data_param { source: "train.txt" batch_size: 10 } }
        layer { name: "out" type: "HDF5Output" bottom: "data" bottom: "label"
                hdf5_output_param { file_name: "out.h5" } }
    """
    g = graph_of(text)
    why = g.unresolved()
    assert list(why) == ["h5"] and "train.txt (HDF5 file list)" in why["h5"]
    g = graph_of(text, input_shapes={"data": (10, 4), "label": (10,)})
    assert g.unresolved() == {} and g.node("out").outputs == []
    assert prototxt2py.load(g)(torch.zeros(10, 4), torch.zeros(10)) == {}
    with pytest.raises(ShapeError, match="same first dimension"):
        graph_of(text, input_shapes={"data": (10, 4), "label": (9,)})


def test_python_layer_is_never_imported() -> None:
    module = "prototxt2py_test_untrusted_module"
    text = f"""
        layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
        layer {{ name: "py" type: "Python" bottom: "x" top: "y" top: "z"
                python_param {{ module: "{module}" layer: "Evil" param_str: "boom" }} }}
        layer {{ name: "relu" type: "ReLU" bottom: "y" top: "r" }}
    """
    g = graph_of(text)
    why = g.unresolved()["py"]
    assert why.startswith(f"Python layer {module}.Evil is user code and is not run; map it explicitly: ")
    assert f"python_layers={{'{module}.Evil': MyLayer}}" in why
    assert g.blob_shapes()["r"] is None  # downstream shapes stay unknown, the reason sits on the Python layer
    with pytest.raises(UnsupportedLayerError, match=f"layer 'py' at .*python_layers={{'{module}.Evil'"):
        prototxt2py.load(g)
    assert module not in sys.modules


def test_python_data_layer_tops_are_net_inputs() -> None:
    """A Python layer without bottoms (FCN's VOC reader) is a data layer: never imported, its tops are net
    inputs the caller feeds, and the rest of the net runs."""
    module = "prototxt2py_test_untrusted_reader"
    text = f"""
        layer {{ name: "data" type: "Python" top: "data" top: "label"
                python_param {{ module: "{module}" layer: "VOCSegDataLayer" param_str: "boom" }} }}
        layer {{ name: "score" type: "Convolution" bottom: "data" top: "score"
                convolution_param {{ num_output: 3 kernel_size: 1 }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
                loss_param {{ normalize: false }} }}
    """
    g = graph_of(text)
    assert [g.values[v].blob for v in g.inputs] == ["data", "label"]
    assert g.unresolved() == {"data": f"Python data layer {module}.VOCSegDataLayer is user code and is not run: its "
                                      "tops are net inputs of unknown shape; give --input data=... --input label=... "
                                      "(from Python: input_shapes={...}), or run the class: python_layers="
                                      f"{{'{module}.VOCSegDataLayer': VOCSegDataLayer}} (caffe.Net, caffe.SGDSolver, "
                                      "prototxt2py.load)"}
    g = graph_of(text, input_shapes={"data": (2, 4, 3, 5), "label": (2, 1, 3, 5)})
    assert g.unresolved() == {} and g.blob_shapes()["score"] == (2, 3, 3, 5)
    net = prototxt2py.load(g)
    x = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    label = torch.randint(0, 3, (2, 1, 3, 5), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        score = torch.nn.functional.conv2d(x, net.layer("score").weight, net.layer("score").bias)
        want = torch.nn.functional.cross_entropy(score, label[:, 0].long(), reduction="sum") / 2  # by batch size
        torch.testing.assert_close(net(x, label)["loss"], want)
    with pytest.raises(TypeError, match=r"\['data', 'label'\] were not given"):
        net()
    assert module not in sys.modules


@needs_corpus
def test_fcn_train_net_with_a_python_data_layer() -> None:
    g = prototxt2py.graph(CORPUS / "shelhamer__fcn.berkeleyvision.org/voc-fcn32s/train.prototxt",
                          input_shapes={"data": (1, 3, 100, 120), "label": (1, 1, 100, 120)})
    assert [g.values[v].blob for v in g.inputs] == ["data", "label"] and g.unresolved() == {}
    # FCN's 100-pixel padding and 32x upscoring, cropped back to the input by the Crop layer
    assert g.blob_shapes()["score"] == (1, 21, 100, 120) and g.blob_shapes()["loss"] == ()
