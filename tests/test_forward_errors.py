"""A forward pass that fails names the layer and what it expected (``backends/forward_errors.py``), on every
path a pass can take: the oneDNN plan, the plain plan, autograd, ``all_blobs`` and training mode."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from golden import CORPUS, corpus_deploy_params
from test_runtime import build, randomise

import prototxt2py
from prototxt2py.backends import forward_errors, fusion, torch_runtime
from prototxt2py.backends.torch_runtime import CaffeNet
from prototxt2py.errors import ForwardError, Prototxt2pyError
from prototxt2py.fillers import deferred_fills
from prototxt2py.ir.shapes import reinferred

NET = """layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 5 } }
"""

#: How a caller runs the net: each path raises the same error.
PASSES: dict[str, Callable[[CaffeNet, torch.Tensor], object]] = {
    "plan": lambda net, x: _no_grad(net.eval(), x),
    "autograd": lambda net, x: net.eval()(x),
    "all_blobs": lambda net, x: _no_grad(net.eval(), x, all_blobs=True),
    "train": lambda net, x: net.train()(x),
}


def _no_grad(net: CaffeNet, x: torch.Tensor, **kwargs: bool) -> object:
    with torch.no_grad():
        return net(x, **kwargs)


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CaffeNet:
    monkeypatch.setattr(fusion, "ONEDNN_MIN_MACS", 0)  # the oneDNN calls run too, whose own errors say nothing
    net = build(tmp_path, NET)
    randomise(net)
    return net


def _error(net: CaffeNet, how: str, x: torch.Tensor) -> ForwardError:
    with pytest.raises(ForwardError) as caught:
        PASSES[how](net, x)
    error = caught.value
    assert isinstance(error, RuntimeError) and isinstance(error, Prototxt2pyError)
    assert "\n" not in str(error)
    return error


@pytest.mark.parametrize("how", PASSES)
def test_a_bigger_image_names_the_inner_product_and_its_weight(net: CaffeNet, how: str) -> None:
    error = _error(net, how, torch.randn(1, 3, 10, 10))
    assert str(error) == (f"{net.graph.file}:7:7: layer 'ip': blob 0 (weight) has shape (5, 36); "
                          "inputs data (1, 3, 10, 10) need (5, 64)")


@pytest.mark.parametrize("how", PASSES)
def test_another_channel_count_names_the_convolution(net: CaffeNet, how: str) -> None:
    error = _error(net, how, torch.randn(2, 4, 8, 8))
    assert error.layer == "conv"
    assert error.message == "blob 0 (weight) has shape (4, 3, 3, 3); inputs data (2, 4, 8, 8) need (4, 4, 3, 3)"


@pytest.mark.parametrize("how", PASSES)
def test_a_missing_batch_axis_is_told_as_such(net: CaffeNet, how: str) -> None:
    error = _error(net, how, torch.randn(3, 8, 8))
    assert str(error) == ("input 'data' has 3 axes (3, 8, 8); the net takes 4 axes, as in its declared shape "
                          "(1, 3, 8, 8)")


@pytest.mark.parametrize("how", PASSES)
def test_an_image_too_small_for_a_layer_names_that_layer(net: CaffeNet, how: str) -> None:
    error = _error(net, how, torch.randn(1, 3, 2, 2))
    assert str(error) == (f"{net.graph.file}:2:7: layer 'conv': inputs data (1, 3, 2, 2): output size 0 <= 0 "
                          "(input 2, kernel 3, pad 0, stride 1)")


@pytest.mark.parametrize("how", ["plan", "all_blobs"])
def test_other_failures_keep_torchs_message_with_the_layer_and_its_bottoms(net: CaffeNet, how: str) -> None:
    error = _error(net, how, torch.zeros(1, 3, 8, 8, dtype=torch.int64))
    assert error.layer == "conv"
    assert re.fullmatch(r"forward pass failed: .* \(bottoms \(1, 3, 8, 8\) int64; inputs data \(1, 3, 8, 8\)\)",
                        error.message)
    assert isinstance(error.__cause__, RuntimeError) and str(error.__cause__).split("\n")[0] in error.message


def test_a_chain_run_layer_by_layer_names_its_failing_member(net: CaffeNet, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the rectifier broke")

    monkeypatch.setattr(net.layer("relu"), "forward", broken)
    error = _error(net, "all_blobs", torch.randn(1, 3, 8, 8))
    assert error.layer == "relu"
    assert error.message == ("forward pass failed: the rectifier broke (bottoms (1, 4, 6, 6) float32; "
                             "inputs data (1, 3, 8, 8))")


def test_errors_that_are_not_about_the_inputs_pass_through(net: CaffeNet, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("no memory left")

    monkeypatch.setattr(net.layer("ip"), "forward", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match="no memory left"):
        _no_grad(net.eval(), torch.randn(1, 3, 8, 8), all_blobs=True)


def test_an_explanation_that_fails_leaves_the_original_error(net: CaffeNet, monkeypatch: pytest.MonkeyPatch) -> None:
    def explain(*args: object) -> ForwardError:
        raise KeyError("explaining broke")

    monkeypatch.setattr(forward_errors, "forward_error", explain)
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied") as caught:
        _no_grad(net.eval(), torch.randn(1, 3, 10, 10), all_blobs=True)
    assert not isinstance(caught.value, ForwardError) and caught.value.__cause__ is None


def test_pycaffe_reshape_refuses_blobs_the_new_shapes_do_not_fit(tmp_path: Path) -> None:
    """As Caffe's ``Net::Reshape`` ("Input size incompatible with inner product parameters")."""
    from prototxt2py import caffe

    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = caffe.Net(str(path), caffe.TEST)
    net.blobs["data"].reshape(2, 3, 8, 8)
    net.reshape()  # another batch size fits
    assert net.blobs["ip"].data.shape == (2, 5)
    net.blobs["data"].reshape(1, 3, 10, 10)
    with pytest.raises(ForwardError) as caught:
        net.reshape()
    assert str(caught.value) == f"{path}:7:7: layer 'ip': blob 0 (weight) has shape (5, 36); inputs data (1, 3, 10, " \
                                "10) need (5, 64)"


def test_pycaffe_forward_without_reshape_names_the_unfit_blob(tmp_path: Path) -> None:
    """pycaffe runs layer by layer; a forward after resizing an input but not the net fails at the first layer
    whose blobs the new bottoms do not fit, with the same kind of message."""
    from prototxt2py import caffe

    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = caffe.Net(str(path), caffe.TEST)
    net.blobs["data"].reshape(1, 3, 10, 10)
    with pytest.raises(ForwardError) as caught:
        net.forward()
    assert str(caught.value) == f"{path}:7:7: layer 'ip': blob 0 (weight) has shape (5, 36); bottoms pool (1, 4, 4, " \
                                "4) need (5, 64)"


@pytest.mark.parametrize("rel", corpus_deploy_params())
def test_every_corpus_net_fits_its_own_blobs_at_any_batch_size(rel: str) -> None:
    """No false alarm: the blobs a net was built with fit its declared shapes, and batch 3 (shared parameters
    of another shape, legacy shapes, plugins' blobs)."""
    try:
        graph = prototxt2py.graph(CORPUS / rel)
        with deferred_fills():  # blobs of the right shapes, never filled
            net = torch_runtime.build(graph)
    except Prototxt2pyError as e:
        pytest.skip(f"no runtime module from the file alone: {e}")
    assert forward_errors.unfit_blobs(graph, net.layer, "") is None
    shapes = {graph.values[v].blob: graph.values[v].shape for v in graph.inputs}
    if all(s is not None and len(s) > 1 for s in shapes.values()):
        try:
            batched = reinferred(graph, {blob: (3, *shape[1:]) for blob, shape in shapes.items()})
        except Prototxt2pyError:
            return  # a batch baked into the net (a Reshape to fixed sizes)
        assert forward_errors.unfit_blobs(batched, net.layer, "") is None
