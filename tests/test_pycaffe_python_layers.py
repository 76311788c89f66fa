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

    (tmp_path / "net.prototxt").write_text(
        'force_backward: true\n'
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "s" type: "Python" bottom: "x" top: "y" '
        'python_param { module: "m" layer: "Scale" param_str: "2.5" } }\n')
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, python_layers={"m.Scale": Scale})
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
