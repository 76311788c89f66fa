"""``CaffeNet.cuda_graph``: an eval-mode forward captured as a CUDA graph and replayed (issue 21's per-layer launch
cost at small batch on a GPU). The errors are checked here on the CPU; the replays need
``PROTOTXT2PY_TEST_DEVICE=cuda`` (``scripts/gpu_checks.sh`` runs this file): Caffe's golden outputs from a
replay, a new capture after the weights change, and outputs that the next replay does not overwrite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden import DEVICE, GOLDEN, assert_close, meta, npz, recipe_weights, to_numpy, zoo_net_and_inputs
from test_inference_mode import RESIDUAL  # Convolution -> BatchNorm -> Scale -> ReLU chains and a residual sum

import prototxt2py
from prototxt2py.backends.cuda_graph import registrations
from prototxt2py.errors import Prototxt2pyError, ShapeError

ON_GPU = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs PROTOTXT2PY_TEST_DEVICE=cuda (a GPU)")
ZOO = ["lenet_deploy", "cifar10_quick_deploy", "squeezenet_v1_1", "mobilenet_v1", "mtcnn_det1", "resnet50"]



@pytest.fixture
def net(tmp_path: Path) -> prototxt2py.backends.torch_runtime.CaffeNet:
    path = tmp_path / "residual.prototxt"
    path.write_text(RESIDUAL)
    net = prototxt2py.load(path).eval()
    recipe_weights(net, 3)
    return net


def test_a_net_on_the_cpu_is_refused_with_where_it_is(net) -> None:
    with pytest.raises(Prototxt2pyError, match=r"one CUDA device \(net.to\('cuda'\), inputs too\); got cpu$"):
        net.cuda_graph(torch.zeros(2, 3, 12, 12))


def test_a_net_in_train_mode_is_refused(net) -> None:
    with pytest.raises(Prototxt2pyError, match=r"call net.eval\(\) first"):
        net.train().cuda_graph(torch.zeros(2, 3, 12, 12))


def test_inputs_are_bound_as_forward_binds_them(net) -> None:
    with pytest.raises(TypeError, match=r"net has no input blob 'image' \(inputs: \['data'\]\)"):
        net.cuda_graph(image=torch.zeros(2, 3, 12, 12))
    with pytest.raises(TypeError, match=r"net takes 1 inputs \['data'\], got 2"):
        net.cuda_graph(torch.zeros(2, 3, 12, 12), torch.zeros(2, 3, 12, 12))


@ON_GPU
def test_replays_give_the_eager_outputs_for_each_new_input(net) -> None:
    net.to(DEVICE)
    graphed = net.cuda_graph(torch.zeros(2, 3, 12, 12, device=DEVICE))
    for seed in range(3):
        x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
        with torch.no_grad():
            want = net(x)["sum"]
        got = graphed(x)["sum"]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert got.device == x.device and got.shape == (2, 8, 12, 12)


def _assert_captures_again_after(net, change) -> None:
    """A replay after ``change(net)`` gives the eager outputs of the changed net, not the captured ones."""
    net.to(DEVICE)
    x = torch.randn(2, 3, 12, 12, device=DEVICE)
    graphed = net.cuda_graph(data=x)
    before = graphed(x)["sum"]
    change(net)
    with torch.no_grad():
        want = net(x)["sum"]
    after = graphed(x)["sum"]
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, want, rtol=1e-6, atol=1e-7)


@ON_GPU
def test_a_weight_edited_in_place_makes_the_next_call_capture_again(net) -> None:
    def edit(net) -> None:
        with torch.no_grad():
            net.layer_blobs("bn1")[0].add_(0.5)  # BatchNorm's mean: folded into conv1's weights at capture

    _assert_captures_again_after(net, edit)


@ON_GPU
def test_a_write_through_data_then_clear_fold_cache_makes_the_next_call_capture_again(net) -> None:
    """``.data`` writes bump no version: ``clear_fold_cache`` is the documented way to make the folds new, and the
    graph, which read the old folds' memory, must follow it."""
    def write(net) -> None:
        net.layer_blobs("conv1")[0].data.mul_(-1.0)
        net.clear_fold_cache()

    _assert_captures_again_after(net, write)


@ON_GPU
def test_a_weight_swapped_for_a_new_parameter_makes_the_next_call_capture_again(net) -> None:
    """The graph read the old parameter's memory, which a new ``nn.Parameter`` object does not share."""
    def swap(net) -> None:
        conv = net.layer("conv1")
        conv.weight = torch.nn.Parameter(-conv.weight.detach().clone())

    _assert_captures_again_after(net, swap)


def test_swapping_a_blob_or_a_layer_is_counted(net) -> None:
    """What makes a graph capture again after a swap (above), checked where no GPU is needed."""
    conv = net.layer("conv1")
    before = registrations()
    conv.weight = torch.nn.Parameter(conv.weight.detach().clone())
    assert registrations() == before + 1
    bn = net.layer("bn1")
    name = bn.blob_names[0]
    setattr(bn, name, getattr(bn, name).clone())  # a buffer assigned again
    assert registrations() == before + 2
    net.layers.add_module(next(k for k, m in net.layers.named_children() if m is conv), torch.nn.Identity())
    assert registrations() == before + 3


@pytest.mark.parametrize("name", ZOO)
def test_a_forward_registers_nothing(name: str) -> None:
    """A pass that assigned a parameter, buffer or submodule would make a graph capture again on every call."""
    case = GOLDEN / "zoo" / name
    if not case.is_dir():
        pytest.skip(f"no golden case {name}")
    net, inputs = zoo_net_and_inputs(case)
    feed = {k: torch.from_numpy(v) for k, v in inputs.items() if k in net.input_names}
    before = registrations()
    with torch.no_grad():
        net.eval()(**feed)
        net(**feed, all_blobs=True)
    with torch.inference_mode():
        net(**feed)
    net.train()(**feed)
    assert registrations() == before


@ON_GPU
def test_a_graph_made_inside_inference_mode_replays_outside_it(net) -> None:
    x = torch.randn(2, 3, 12, 12, device=DEVICE)
    with torch.inference_mode():
        net.to(DEVICE)  # inference tensors, as in issue 21's crash
        graphed = net.cuda_graph(x)
        inside = graphed(x)["sum"]
    outside = graphed(x)["sum"]
    torch.testing.assert_close(outside, inside, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(outside, net(x)["sum"], rtol=1e-6, atol=1e-7)


@ON_GPU
def test_other_shapes_are_refused_with_the_captured_one(net) -> None:
    net.to(DEVICE)
    graphed = net.cuda_graph(torch.zeros(2, 3, 12, 12, device=DEVICE))
    with pytest.raises(ShapeError, match=r"input 'data' was captured as \[2, 3, 12, 12\] float32 on cuda:\d; got "
                                         r"\[1, 3, 12, 12\] float32 on cuda:\d"):
        graphed(torch.zeros(1, 3, 12, 12, device=DEVICE))


@ON_GPU
def test_outputs_are_copies_unless_asked_for_the_graphs_own(net) -> None:
    net.to(DEVICE)
    a, b = torch.randn(2, 3, 12, 12, device=DEVICE), torch.randn(2, 3, 12, 12, device=DEVICE)
    copied = net.cuda_graph(a)
    first = copied(a)["sum"]
    kept = first.clone()
    copied(b)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    own = net.cuda_graph(a, copy_outputs=False)
    first = own(a)["sum"]
    second = own(b)["sum"]
    assert first.data_ptr() == second.data_ptr()  # the graph's memory, overwritten by each replay


@ON_GPU
@pytest.mark.parametrize("name", ZOO)
def test_a_replay_gives_caffes_outputs(name: str) -> None:
    case = GOLDEN / "zoo" / name
    if not case.is_dir():
        pytest.skip(f"no golden case {name}")
    m = meta(case)
    net, inputs = zoo_net_and_inputs(case)
    net = net.to(DEVICE).eval()
    feed = {k: torch.from_numpy(v).to(DEVICE) for k, v in inputs.items() if k in net.input_names}
    graphed = net.cuda_graph(**{k: torch.zeros_like(v) for k, v in feed.items()})
    outputs = graphed(**feed)
    want = npz(case / "outputs.npz")
    compared = [n for n in outputs if n in want]
    assert compared, f"none of the outputs {sorted(outputs)} is stored in the case"
    for n in compared:
        assert_close(to_numpy(outputs[n]), want[n], m.get("rtol", 1e-5), m.get("atol", 1e-6), f"blob '{n}'")
