"""The fused inference plan under ``torch.inference_mode()``: blobs made there are inference tensors, which have
no version counter (issue 21: "A model moved to the GPU inside torch.inference_mode() crashes the fused plan's
weight cache"). Reproduced on CPU with a dtype move, which replaces the blobs just as a device move does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from golden import DEVICE, recipe_weights
from kernel_count import KernelCount

import prototxt2py

#: Convolution -> BatchNorm -> Scale -> ReLU and a residual Eltwise: the chains the inference plan folds.
RESIDUAL = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "sum" }
layer { name: "relu2" type: "ReLU" bottom: "sum" top: "sum" }
"""


@pytest.fixture
def net_path(tmp_path: Path) -> Path:
    path = tmp_path / "residual.prototxt"
    path.write_text(RESIDUAL)
    return path


def _net(path: Path) -> prototxt2py.backends.torch_runtime.CaffeNet:
    net = prototxt2py.load(path).eval()
    recipe_weights(net, 5)
    return net


def _reference(net, x: torch.Tensor) -> torch.Tensor:
    """Every layer as it is (no folding): the plan's reference path."""
    with torch.no_grad():
        return net(x, all_blobs=True)["sum"]


def test_net_moved_inside_inference_mode_runs_fused(net_path: Path) -> None:
    net = _net(net_path)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    with torch.inference_mode():
        net.double()  # new blobs, made as inference tensors (what .to("cuda") there does)
        assert all(p.is_inference() for p in net.parameters())
        got = net(x)["sum"]
        again = net(x)["sum"]  # from the cache
    torch.testing.assert_close(got, _reference(net, x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    with torch.no_grad():  # outside inference mode, the same inference tensors
        torch.testing.assert_close(net(x)["sum"], got, rtol=0, atol=0)


@pytest.mark.skipif(DEVICE.type == "cpu", reason="needs PROTOTXT2PY_TEST_DEVICE naming another device (a GPU)")
def test_net_moved_to_the_test_device_inside_inference_mode(net_path: Path) -> None:
    """The move of the issue itself, on a real device: the fused plan runs, from its cache too."""
    net = _net(net_path)
    x = torch.randn(2, 3, 12, 12)
    want = _reference(net, x)
    with torch.inference_mode():
        net.to(DEVICE)
        assert all(p.is_inference() and p.device.type == DEVICE.type for p in net.parameters())
        got = net(x.to(DEVICE))["sum"]
        again = net(x.to(DEVICE))["sum"]
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_net_built_inside_inference_mode(net_path: Path) -> None:
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        net = _net(net_path)
        got = net(x)["sum"]
    torch.testing.assert_close(got, _reference(net, x), rtol=1e-5, atol=1e-5)


def test_in_place_writes_inside_inference_mode_need_clear_fold_cache(net_path: Path) -> None:
    """Inference tensors bump no version on in-place writes: ``clear_fold_cache()`` makes the plan see them."""
    x = torch.randn(2, 3, 12, 12)
    with torch.inference_mode():
        net = _net(net_path)
        net(x)
        net.layer("scale2").weight.mul_(3)
        net.clear_fold_cache()
        got = net(x)["sum"]
    torch.testing.assert_close(got, _reference(net, x), rtol=1e-5, atol=1e-5)


ROOT = Path(__file__).resolve().parent.parent
HAND_WRITTEN = {"AlexNet": "hand_written_alexnet", "ResNet-50": "hand_written_resnet50"}


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_a_device_pass_launches_no_more_kernels_than_the_hand_written_model(name: str) -> None:
    """Off the CPU the forward runs the plain plan, and at small batches its speed is its launch count: on the
    meta device (which dispatches as a GPU would, running nothing) the net at batch 1 launches no more kernels
    than the benchmark's hand-written model (AlexNet with ``nn.LocalResponseNorm``, ResNet-50 with its
    BatchNorm layers), and with the same convolutions, from its second pass on."""
    spec = importlib.util.spec_from_file_location("bench_runtime", ROOT / "benchmarks" / "runtime.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    proto, shape = bench.MODELS[name]
    if not proto.exists():
        pytest.skip(f"{proto} not in this copy of the corpus")
    net = prototxt2py.load(proto, input_shapes={"data": [1, *shape]})
    hand = getattr(bench, HAND_WRITTEN[name])(net)
    net, hand = net.eval().to("meta"), hand.eval().to("meta")
    x = torch.empty(1, *shape, device="meta")
    with torch.inference_mode():
        net(x)  # the first pass folds BatchNorm into the convolutions' weights, kept for the next ones
        with KernelCount() as ours:
            net(x)
        with KernelCount() as theirs:
            hand(x)
    convolutions = [n for n in ours.names if "conv" in n]
    assert len(convolutions) == {"AlexNet": 5, "ResNet-50": 53}[name], ours.names
    assert convolutions == [n for n in theirs.names if "conv" in n]
    assert len(ours.names) <= len(theirs.names), (len(ours.names), len(theirs.names))
