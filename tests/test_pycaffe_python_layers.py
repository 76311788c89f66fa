"""pycaffe's own Python layer classes (``class L(caffe.Layer)``, setup/reshape/forward/backward on blobs), mapped
with ``python_layers``: forward, backward and solver steps equal the same net with Caffe's built-in layer.

The layer is BVLC's ``examples/pycaffe/layers/pyloss.py`` as its users write it, and the net BVLC's
``examples/pycaffe/linreg.prototxt`` (a Python Euclidean loss on two InnerProducts of DummyData)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prototxt2py import caffe

LINREG = """name: "LinearRegressionExample"
layer { type: "DummyData" name: "x" top: "x"
  dummy_data_param { shape { dim: 10 dim: 3 dim: 2 } data_filler { type: "gaussian" } } }
layer { type: "DummyData" name: "y" top: "y"
  dummy_data_param { shape { dim: 10 dim: 3 dim: 2 } data_filler { type: "gaussian" } } }
layer { type: "InnerProduct" name: "ipx" top: "ipx" bottom: "x"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { type: "InnerProduct" name: "ipy" top: "ipy" bottom: "y"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { type: "Python" name: "loss" top: "loss" bottom: "ipx" bottom: "ipy"
  python_param { module: "pyloss" layer: "EuclideanLossLayer" } loss_weight: 1 }
"""
BUILTIN = LINREG.replace('type: "Python"', 'type: "EuclideanLoss"').replace(
    'python_param { module: "pyloss" layer: "EuclideanLossLayer" } ', "")


class EuclideanLossLayer(caffe.Layer):
    """BVLC's pyloss.py."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


MAPPING = {"pyloss.EuclideanLossLayer": EuclideanLossLayer}


@pytest.fixture
def nets(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "linreg.prototxt").write_text(LINREG)
    (tmp_path / "builtin.prototxt").write_text(BUILTIN)
    return tmp_path / "linreg.prototxt", tmp_path / "builtin.prototxt"


def test_forward_and_backward_equal_caffe_builtin_layer(nets: tuple[Path, Path]) -> None:
    python, builtin = nets
    a = caffe.Net(str(python), caffe.TRAIN, python_layers=MAPPING)
    b = caffe.Net(str(builtin), caffe.TRAIN)
    for name in a.params:
        for i in range(2):
            b.params[name][i].data[...] = a.params[name][i].data
    loss = a.forward()["loss"]
    for name in ("x", "y"):
        b.blobs[name].data[...] = a.blobs[name].data
    assert loss.shape == (1,)  # top[0].reshape(1), as Caffe's Python layer gives it
    np.testing.assert_allclose(loss[0], b.forward(start="ipx")["loss"], rtol=1e-6)
    a.backward()
    b.backward()
    for name in a.params:
        for i in range(2):
            np.testing.assert_allclose(a.params[name][i].diff, b.params[name][i].diff, rtol=1e-5, atol=1e-7)
            assert np.abs(a.params[name][i].diff).max() > 0
    np.testing.assert_allclose(a.blobs["ipx"].diff, b.blobs["ipx"].diff, rtol=1e-5, atol=1e-8)


def _input_net(tmp_path: Path, dims: tuple[int, ...], layers: str, python_layers: dict) -> caffe.Net:
    """A TEST ``caffe.Net`` under ``force_backward``: an Input ``x`` of ``dims``, then ``layers`` (prototxt)."""
    shape = " ".join(f"dim: {d}" for d in dims)
    (tmp_path / "net.prototxt").write_text(
        f'force_backward: true\nlayer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {shape} }} }} }}\n'
        + layers)
    return caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, python_layers=python_layers)


def test_setup_runs_once_and_param_str_and_phase_are_caffe_s(tmp_path: Path) -> None:
    calls: list[tuple[str, str, int]] = []

    class Scale(caffe.Layer):
        def setup(self, bottom, top):
            calls.append(("setup", self.param_str, self.phase))
            self.k = float(self.param_str)

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            calls.append(("forward", self.param_str, self.phase))
            top[0].data[...] = self.k * bottom[0].data

        def backward(self, top, propagate_down, bottom):
            bottom[0].diff[...] = self.k * top[0].diff

    net = _input_net(tmp_path, (2, 3), 'layer { name: "s" type: "Python" bottom: "x" top: "y" '
                     'python_param { module: "m" layer: "Scale" param_str: "2.5" } }\n', {"m.Scale": Scale})
    net.blobs["x"].data[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(net.forward()["y"], 2.5 * np.arange(6).reshape(2, 3))
    net.forward()
    net.blobs["y"].diff[...] = 1
    net.backward()
    np.testing.assert_array_equal(net.blobs["x"].diff, np.full((2, 3), 2.5))
    setups = [c for c in calls if c[0] == "setup"]
    assert len(setups) <= 2 and setups[-1] == ("setup", "2.5", caffe.TEST)  # shape inference may set one up
    assert calls[-1] == ("forward", "2.5", caffe.TEST)


def test_a_solver_trains_a_net_with_a_python_layer_as_caffe_s_builtin(nets: tuple[Path, Path],
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``caffe.SGDSolver(path, python_layers=...)``: it was refused (no such argument; the hint named
    ``prototxt2py.load``)."""
    monkeypatch.chdir(tmp_path)
    solver = 'net: "{}"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 5\nsnapshot_prefix: "s"\n' \
             'random_seed: 3\n'
    Path("python_solver.prototxt").write_text(solver.format("linreg.prototxt"))
    Path("builtin_solver.prototxt").write_text(solver.format("builtin.prototxt"))

    def train(solver: caffe.Solver) -> tuple[list[float], dict[str, np.ndarray]]:
        """Three steps, one after the other (the seed is set when a solver is made; DummyData draws each pass)."""
        losses = []
        for _ in range(3):
            solver.step(1)
            losses.append(float(np.asarray(solver.net.blobs["loss"].data).reshape(-1)[0]))
        return losses, {name: solver.net.params[name][0].data.copy() for name in solver.net.params}

    a_losses, a_params = train(caffe.SGDSolver("python_solver.prototxt", python_layers=MAPPING))
    b_losses, b_params = train(caffe.SGDSolver("builtin_solver.prototxt"))
    np.testing.assert_allclose(a_losses, b_losses, rtol=1e-5)
    assert a_losses[2] != a_losses[0]
    for name in a_params:
        np.testing.assert_allclose(a_params[name], b_params[name], rtol=1e-5, atol=1e-7)


def test_learnable_blobs_of_a_python_layer_are_refused_in_one_line(tmp_path: Path) -> None:
    class WithBlob(caffe.Layer):
        def setup(self, bottom, top):
            self.blobs.add_blob(3)

        def reshape(self, bottom, top):
            top[0].reshape(1)

        def forward(self, bottom, top):
            pass

        def backward(self, top, propagate_down, bottom):
            pass

    (tmp_path / "net.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "s" type: "Python" bottom: "x" top: "y" python_param { module: "m" layer: "W" } }\n')
    with pytest.raises(caffe.CaffeUsageError, match="learnable blobs of Python layers .* are not supported"):
        caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, python_layers={"m.W": WithBlob})


def test_file_errors_are_the_exception_types_pycaffe_raises(tmp_path: Path) -> None:
    """pycaffe's ``CheckFile`` throws a C++ ``runtime_error`` (a ``RuntimeError`` in Python) and ``load_image``'s
    scikit-image an ``OSError``: scripts catch those (they were only ``InputFileError``, an ``Exception``)."""
    with pytest.raises(RuntimeError, match="Could not open file"):
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    for name in ("missing.jpg", "bad.jpg"):
        with pytest.raises(IOError, match="Could not open or decode the image file"):
            caffe.io.load_image(str(tmp_path / name))


class Noisy(caffe.Layer):
    """y = r * x with r drawn in forward (state its backward reads), counting its calls."""

    calls: list[str] = []

    def setup(self, bottom, top):
        Noisy.calls.append(f"setup:{self.phase}")
        self.batch = 4 if self.phase == caffe.TRAIN else 1

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        Noisy.calls.append("forward")
        self.r = np.random.default_rng(len(Noisy.calls)).standard_normal(bottom[0].data.shape).astype(np.float32)
        top[0].data[...] = self.r * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        Noisy.calls.append("backward")
        bottom[0].diff[...] = self.r * top[0].diff


NOISY_NET = ('force_backward: true\n'
             'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
             'layer { name: "n" type: "Python" bottom: "x" top: "y" python_param { module: "m" layer: "Noisy" } }\n')


def test_pycaffe_backward_does_not_run_a_python_layer_forward_again(tmp_path: Path) -> None:
    """Caffe calls forward once a pass; pycaffe's backward replayed it, so the gradient used another ``r``."""
    (tmp_path / "net.prototxt").write_text(NOISY_NET)
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, python_layers={"m.Noisy": Noisy})
    Noisy.calls.clear()
    net.blobs["x"].data[...] = 1
    net.forward()
    net.blobs["y"].diff[...] = 1
    net.backward()
    assert [c for c in Noisy.calls if not c.startswith("setup")] == ["forward", "backward"]
    np.testing.assert_array_equal(net.blobs["x"].diff, net.blobs["y"].data)  # r, the forward's own


def test_setup_sees_the_net_phase_while_shapes_are_inferred(tmp_path: Path) -> None:
    """Caffe sets ``phase`` before ``setup``; shape inference ran setup in TRAIN for a TEST net."""
    (tmp_path / "net.prototxt").write_text(NOISY_NET)
    Noisy.calls.clear()
    caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, python_layers={"m.Noisy": Noisy})
    assert Noisy.calls and all(c == f"setup:{caffe.TEST}" for c in Noisy.calls if c.startswith("setup"))


def test_a_backward_after_a_later_forward_is_refused(tmp_path: Path) -> None:
    """The layer keeps one pass's state (as pyloss keeps ``self.diff``): a backward through an earlier pass would
    silently use the later one's."""
    import torch

    import prototxt2py

    (tmp_path / "net.prototxt").write_text(NOISY_NET)
    net = prototxt2py.load(tmp_path / "net.prototxt", python_layers={"m.Noisy": Noisy})
    a, b = torch.ones(2, 3, requires_grad=True), torch.ones(2, 3, requires_grad=True)
    with pytest.raises(caffe.CaffeUsageError, match="ran forward again before the backward of an earlier pass"):
        (net(a)["y"].sum() + net(b)["y"].sum()).backward()


def test_a_python_layer_without_bottoms_follows_the_net_dtype(tmp_path: Path) -> None:
    import torch

    import prototxt2py

    class Source(caffe.Layer):
        def setup(self, bottom, top):
            pass

        def reshape(self, bottom, top):
            top[0].reshape(2, 3)

        def forward(self, bottom, top):
            top[0].data[...] = 0.5

    (tmp_path / "net.prototxt").write_text(
        'layer { name: "s" type: "Python" top: "x" python_param { module: "m" layer: "Source" } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }\n')
    net = prototxt2py.load(tmp_path / "net.prototxt", python_layers={"m.Source": Source}).to(torch.float64)
    out = net(all_blobs=True)
    assert out["y"].dtype == torch.float64 and out["x"].dtype == torch.float64
    assert out["x"].eq(0.5).all()  # a forward-only layer (no backward) runs, as in Caffe until a gradient is needed


def test_a_solver_net_reshape_keeps_the_python_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``solver.net.reshape()`` built the graph without the mapping: the Python layer's shapes went stale."""
    monkeypatch.chdir(tmp_path)
    Path("net.prototxt").write_text(NOISY_NET + 'layer { name: "ip" type: "InnerProduct" bottom: "y" top: "z" '
                                    'inner_product_param { num_output: 4 } }\n')
    Path("s.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 5\n')
    solver = caffe.SGDSolver("s.prototxt", python_layers={"m.Noisy": Noisy})
    solver.net.blobs["x"].reshape(5, 3)
    solver.net.reshape()
    assert solver.net.blobs["y"].data.shape == (5, 3) and solver.net.blobs["z"].data.shape == (5, 4)


def test_net_layers_hold_the_script_s_own_layer_set_up_once(tmp_path: Path) -> None:
    """py-faster-rcnn hands its data layer the roidb through ``solver.net.layers[0].set_roidb(roidb)``: pycaffe's
    ``net.layers[i]`` is the instance Caffe runs. ``setup`` runs once, at construction (a global RNG used there
    gives Caffe's order); here it ran again at the first forward."""

    class Feed(caffe.Layer):
        setups = 0

        def setup(self, bottom, top):
            Feed.setups += 1
            self.order = np.random.permutation(10)
            self.value = 0.0

        def set_value(self, value):
            self.value = value

        def reshape(self, bottom, top):
            top[0].reshape(2, 3)

        def forward(self, bottom, top):
            top[0].data[...] = self.value

    (tmp_path / "net.prototxt").write_text(
        'layer { name: "feed" type: "Python" top: "x" python_param { module: "m" layer: "Feed" } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }\n')
    np.random.seed(0)
    first = np.random.permutation(10)
    np.random.seed(0)
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, python_layers={"m.Feed": Feed})
    layer = net.layers[list(net._layer_names).index("feed")]
    assert isinstance(layer, Feed) and layer.type == "Python"
    layer.set_value(0.75)
    net.forward()
    assert Feed.setups == 1 and np.array_equal(layer.order, first)
    assert net.blobs["x"].data.ravel().tolist() == [0.75] * 6


def test_each_call_gets_fresh_blob_lists(tmp_path: Path) -> None:
    """boost.python hands a Python layer new lists every call: a layer that pops from ``top`` broke every later
    pass here (and its first pass returned zeros)."""

    class Popper(caffe.Layer):
        def setup(self, bottom, top):
            self.k = 0

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            self.k += 1
            top[0].data[...] = bottom[0].data * 2 * self.k + (self.k - 1) * 2
            top.pop()

        def backward(self, top, propagate_down, bottom):
            pass

    (tmp_path / "net.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "p" type: "Python" bottom: "x" top: "y" python_param { module: "m" layer: "Popper" } }\n')
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, python_layers={"m.Popper": Popper})
    net.blobs["x"].data[...] = 1
    assert net.forward()["y"].ravel().tolist() == [2.0] * 6
    assert net.forward()["y"].ravel().tolist() == [6.0] * 6


def test_an_in_place_python_layer_gets_one_blob_as_bottom_and_top(tmp_path: Path) -> None:
    """Caffe hands an in-place layer one Blob as ``bottom[0]`` and ``top[0]``: after its forward the bottom holds the
    output, which a backward like ``top.diff / bottom.data`` reads (here it read a private copy of the input)."""

    class Log(caffe.Layer):
        def setup(self, bottom, top):
            assert bottom[0] is top[0]

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = np.log(bottom[0].data)

        def backward(self, top, propagate_down, bottom):
            bottom[0].diff[...] = top[0].diff / bottom[0].data

    net = _input_net(tmp_path, (1, 2), 'layer { name: "s" type: "Power" bottom: "x" top: "y" }\n'
                     'layer { name: "l" type: "Python" bottom: "y" top: "y" '
                     'python_param { module: "m" layer: "Log" } }\n',
                     {"m.Log": Log})
    x = np.array([[4.0, 10.0]], np.float32)
    net.blobs["x"].data[...] = x
    np.testing.assert_allclose(net.forward()["y"], np.log(x), rtol=1e-6)
    net.blobs["y"].diff[...] = 1
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, 1 / np.log(x), rtol=1e-6)  # Caffe's: 0.7213, 0.4343


def test_py_faster_rcnn_layers_read_param_str_underscore_and_the_phase_by_name(tmp_path: Path) -> None:
    """py-faster-rcnn's layers (``rpn/proposal_layer.py``) were written for caffe-fast-rcnn: they read
    ``self.param_str_`` and index their configuration by ``str(self.phase)`` ('TRAIN'/'TEST', the printed
    enum). Both failed (AttributeError, then ``cfg['1']``). ``caffe.TEST`` prints as BVLC master's enum does."""
    cfg = {"TRAIN": {"post_nms": 2000}, "TEST": {"post_nms": 300}}

    class Proposal(caffe.Layer):
        def setup(self, bottom, top):
            self.feat_stride = int(self.param_str_)
            self.post_nms = cfg[str(self.phase)]["post_nms"]
            top[0].reshape(1, 5)

        def reshape(self, bottom, top):
            pass

        def forward(self, bottom, top):
            top[0].data[...] = [self.feat_stride, self.post_nms, self.phase == caffe.TEST, 0, 0]

    net = _input_net(tmp_path, (1, 2), 'layer { name: "proposal" type: "Python" bottom: "x" top: "rois" '
                     'python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "16" } }\n',
                     {"rpn.proposal_layer.ProposalLayer": Proposal})
    assert net.forward()["rois"].tolist() == [[16, 300, 1, 0, 0]]
    assert (str(caffe.TRAIN), str(caffe.TEST), caffe.TRAIN == 0, caffe.TEST == 1) == ("TRAIN", "TEST", True, True)
