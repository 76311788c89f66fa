"""pycaffe's solver API (``caffe.SGDSolver(path)``, ``solver.net.blobs``, ``solver.test_nets[0].forward()``, ...)
against Caffe 1.0's training runs in golden/solvers: the loops of Caffe's own tutorials, unchanged."""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from golden import DEVICE, GOLDEN, assert_close, meta

from prototxt2py import caffe
from prototxt2py.errors import Prototxt2pyError
from prototxt2py.train import read_solver_param
from prototxt2py.weights import read_caffemodel

SOLVERS = GOLDEN / "solvers"
LOSS_RTOL, LOSS_ATOL = 2e-5, 1e-6
W_RTOL, W_ATOL = 1e-5, 1e-5


@pytest.fixture(autouse=True)
def _caffe_mode():
    """On ``golden.DEVICE`` through pycaffe's own switch (scripts/gpu_checks.sh runs this file on a GPU)."""
    if DEVICE.type == "cuda":
        caffe.set_mode_gpu()
        caffe.set_device(DEVICE.index or 0)
    yield
    caffe.set_mode_cpu()


def _case(name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    case = SOLVERS / name
    if not case.is_dir():
        pytest.skip(f"golden case {name} absent")
    monkeypatch.chdir(case)
    return case


def _param(tmp_path: Path):
    """The case's solver file, its snapshots redirected away from the shared golden folder."""
    param = read_solver_param("solver.prototxt")
    param.snapshot_prefix = str(tmp_path / "snap")
    return param


def _rows(case: Path, dataset: str, batch: int, batch_size: int, file: str = "data.h5") -> np.ndarray:
    """Rows of batch ``batch`` of an HDF5Data layer without shuffle: (b*bs + i) mod rows."""
    with h5py.File(case / file) as f:
        data = f[dataset][()]
    return data[[(batch * batch_size + i) % len(data) for i in range(batch_size)]]


def _check_params(net: caffe.Net, path: Path) -> None:
    want = read_caffemodel(path)
    assert list(net.params) == [name for name in net.params if name in want]
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            assert_close(blob.data, want[name][i].array.reshape(blob.shape), W_RTOL, W_ATOL, f"{name}[{i}]")


@pytest.mark.parametrize("name", ["sgd_conv_bn_step", "sgd_iter_size3", "sgd_shared_weights"])
def test_tutorial_loop_reads_caffes_losses_batches_and_weights(name: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``solver.step(1); solver.net.blobs['loss'].data`` each iteration gives Caffe's loss of the iteration's last
    forward pass, ``blobs['data']`` holds its batch, and ``net.params`` ends at Caffe's final weights."""
    case = _case(name, monkeypatch)
    m = meta(case)
    want = json.loads((case / m["trajectory"]).read_text())
    solver = caffe.SGDSolver(_param(tmp_path))
    assert isinstance(solver, caffe.Solver) and isinstance(solver.net, caffe.Net) and solver.type == "SGD"
    assert solver.trainer.device.type == DEVICE.type
    assert solver.net.blobs["data"].shape[0] == m["data"]["train"]["batch_size"]
    solver.net.copy_from(m["initial_weights"])
    loss_array = solver.net.blobs["loss"].data  # taken once: Caffe's blobs persist, so it follows the training
    losses, held = [], []
    for _ in range(m["iterations"]):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
        held.append(float(loss_array))
    iter_size = solver.param.iter_size
    last = [e["sub_losses"][-1] if iter_size > 1 else e["loss"] for e in want]
    assert_close(np.array(losses), np.array(last), LOSS_RTOL, LOSS_ATOL, "loss blob after each step")
    assert held == losses
    assert solver.iter == m["final_iter"] == solver.max_iter
    bs = m["data"]["train"]["batch_size"]
    batch = m["iterations"] * iter_size - 1
    assert np.array_equal(solver.net.blobs["data"].data, _rows(case, "data", batch, bs))
    assert np.array_equal(solver.net.blobs["label"].data.ravel(), _rows(case, "label", batch, bs).ravel())
    _check_params(solver.net, case / m["final_weights"])


def test_test_net_forward_reads_the_next_test_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TEST net's blobs hold the solver's last test batch; its ``forward()`` reads the next batch from the same
    cursor with the current weights, which is the first batch of Caffe's next test."""
    case = _case("sgd_test_interval", monkeypatch)
    tests = json.loads((case / "test_outputs.json").read_text())
    solver = caffe.get_solver(_param(tmp_path))
    solver.net.copy_from("init.caffemodel")
    assert len(solver.test_nets) == 1 and solver.test_nets[0].blobs["data"].shape[0] == 4
    solver.step(10)  # tests at iteration 0 (3 batches), none yet at 10
    net = solver.test_nets[0]
    assert float(net.blobs["accuracy"].data) == tests[0]["per_batch"][-1]["accuracy"]
    assert_close(net.blobs["loss"].data, np.float32(tests[0]["per_batch"][-1]["loss"]), LOSS_RTOL, LOSS_ATOL,
                 "last test batch at iteration 0")
    out = net.forward()
    assert sorted(out) == ["accuracy", "loss"]
    assert float(out["accuracy"]) == tests[1]["per_batch"][0]["accuracy"]
    assert_close(out["loss"], np.float32(tests[1]["per_batch"][0]["loss"]), LOSS_RTOL, LOSS_ATOL,
                 "test batch 3 after 10 updates")
    assert np.array_equal(net.blobs["data"].data, _rows(case, "data", 3, 4, "test.h5"))
    # the TEST net reads the TRAIN net's parameters, not a copy
    solver.net.params["ip2"][1].data[...] = 0
    assert not net.params["ip2"][1].data.any()


def test_manual_forward_backward_apply_update_is_caffes_training(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``net.forward(); net.backward(); solver.apply_update()`` (diffs cleared each time) is Caffe's training
    step written out: the same losses and final weights; ``apply_update`` leaves ``iter`` alone, as Caffe's."""
    case = _case("sgd_plain_fixed", monkeypatch)
    m = meta(case)
    want = json.loads((case / m["trajectory"]).read_text())
    solver = caffe.SGDSolver(_param(tmp_path))
    solver.net.copy_from("init.caffemodel")
    losses = []
    for _ in range(m["iterations"]):
        solver.net.clear_param_diffs()
        losses.append(float(solver.net.forward()["loss"]))
        solver.net.backward()
        solver.apply_update()
    assert solver.iter == 0
    assert_close(np.array(losses), np.array([e["loss"] for e in want]), LOSS_RTOL, LOSS_ATOL, "losses")
    _check_params(solver.net, case / m["final_weights"])


def test_param_diffs_hold_the_update_and_callbacks_can_change_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """After a step, a parameter's diff is the update just subtracted (Caffe's ``Update``: data -= diff). In an
    ``on_gradients`` callback the diffs are the gradients, and what the callback writes there is what the update
    uses: zeroed gradients leave plain SGD's weights where they were."""
    _case("sgd_plain_fixed", monkeypatch)
    solver = caffe.SGDSolver(_param(tmp_path))
    solver.net.copy_from("init.caffemodel")
    before = {k: [b.data.copy() for b in v] for k, v in solver.net.params.items()}
    solver.step(1)
    for name, blobs in solver.net.params.items():
        for b, w in zip(blobs, before[name], strict=True):
            assert b.diff.any()
            assert_close(w - b.data, b.diff, 1e-6, 1e-7, f"{name} update")
    seen: list[str] = []

    def on_gradients() -> None:
        for blobs in solver.net.params.values():
            for b in blobs:
                assert b.diff.any()
                b.diff[...] = 0
        seen.append("gradients")

    solver.add_callback(lambda: seen.append("start"), on_gradients)
    weights = {k: [b.data.copy() for b in v] for k, v in solver.net.params.items()}
    solver.step(2)
    assert seen == ["start", "gradients"] * 2 and solver.iter == 3
    for name, blobs in solver.net.params.items():
        for b, w in zip(blobs, weights[name], strict=True):
            assert np.array_equal(b.data, w)


def test_weights_written_through_params_are_trained_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Net surgery before training (FCN's bilinear init, a re-initialised classifier) writes ``params[..].data``;
    the solver trains those very tensors, and ``share_weights`` lets a deploy Net follow them."""
    case = _case("sgd_plain_fixed", monkeypatch)
    solver = caffe.SGDSolver(_param(tmp_path))
    solver.net.copy_from("init.caffemodel")
    fc = solver.net.params["ip2"][0]
    fc.data[...] = 0
    solver.step(1)
    assert fc.data.any() and np.array_equal(fc.data, -fc.diff)  # zero minus the update
    other = caffe.Net(str(case / "train_val.prototxt"), caffe.TRAIN, input_shapes={"data": [4, 8], "label": [4]})
    solver.share_weights(other)
    assert np.array_equal(other.params["ip2"][0].data, fc.data)
    solver.step(1)
    assert np.array_equal(other.params["ip2"][0].data, fc.data)


def test_solver_classes_choose_the_update_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in pycaffe, ``caffe.AdamSolver(path)`` trains with Adam whatever the file says; ``get_solver`` follows
    the file. A missing file is one clear error."""
    _case("sgd_plain_fixed", monkeypatch)
    param = _param(tmp_path)
    assert caffe.get_solver(param).type == "SGD"
    adam = caffe.AdamSolver(param)
    assert adam.type == "Adam" and isinstance(adam, caffe.Solver) and len(adam.trainer.update.history) > 0
    assert repr(caffe.SGDSolver(param)) == "<caffe.SGDSolver '<solver>' iter=0>"
    with pytest.raises(Prototxt2pyError, match="missing.prototxt"):
        caffe.SGDSolver(str(tmp_path / "missing.prototxt"))


def test_test_nets_share_data_not_diffs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As Caffe's ShareTrainedLayersWith: a TEST net reads the TRAIN parameters, but its backward and
    ``clear_param_diffs`` leave the TRAIN diffs (what ``apply_update`` applies) alone."""
    _case("sgd_test_interval", monkeypatch)
    solver = caffe.get_solver(_param(tmp_path))
    solver.net.copy_from("init.caffemodel")
    solver.step(1)
    train_diff = solver.net.params["ip2"][0].diff.copy()
    test = solver.test_nets[0]
    assert np.abs(train_diff).max() > 0
    test.clear_param_diffs()
    test.forward()
    test.backward()
    assert np.abs(test.params["ip2"][0].diff).max() > 0
    assert np.array_equal(solver.net.params["ip2"][0].diff, train_diff)
    w = solver.net.params["ip2"][0].data.copy()
    solver.apply_update()  # momentum 0.9, lr 0.1 on the TRAIN diff (the last update): the same update again
    assert_close(solver.net.params["ip2"][0].data, w - train_diff, 1e-6, 1e-7, "update from the TRAIN diffs")
    assert np.abs(test.params["ip2"][0].diff - train_diff).max() > 1e-3  # which the TEST gradients are not


def test_files_read_earlier_in_a_session_may_be_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-lived pycaffe session restores a snapshot and writes it again, or saves over weights it loaded:
    Caffe overwrites (only a CLI command refuses to replace its own inputs)."""
    _case("sgd_plain_fixed", monkeypatch)
    first = caffe.SGDSolver(_param(tmp_path))
    first.step(2)
    first.snapshot()
    state, model = tmp_path / "snap_iter_2.solverstate", tmp_path / "snap_iter_2.caffemodel"
    again = caffe.SGDSolver(_param(tmp_path))
    again.restore(str(state))
    assert again.iter == 2
    again.snapshot()  # the files it was restored from
    again.net.copy_from(str(model))
    again.net.params["ip2"][1].data[...] = 7
    again.net.save(str(model))
    assert (read_caffemodel(model)["ip2"][1].array == 7).all()


MEMORY_NET = """name: "memory"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 3 height: 1 width: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _memory_solver(tmp_path: Path) -> Path:
    (tmp_path / "memory.prototxt").write_text(MEMORY_NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{tmp_path / "memory.prototxt"}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 10\n'
                      f'snapshot_prefix: "{tmp_path / "snap"}"\n')
    return solver


def test_memory_data_solver_trains_on_set_input_arrays(tmp_path: Path) -> None:
    """pycaffe's way to train from numpy: ``solver.net.set_input_arrays`` feeds the solver's MemoryData reader,
    for ``step`` and ``forward`` alike (one cursor)."""
    solver = caffe.SGDSolver(str(_memory_solver(tmp_path)))
    data = np.arange(24, dtype=np.float32).reshape(8, 3, 1, 1)
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1], np.float32)
    solver.net.set_input_arrays(data, labels)
    solver.step(1)
    assert np.array_equal(solver.net.blobs["data"].data, data[:2])
    assert float(solver.net.blobs["loss"].data) == pytest.approx(np.log(2), rel=1e-6)  # equal scores at first
    solver.net.forward()
    assert np.array_equal(solver.net.blobs["label"].data.ravel(), labels[2:4])
    solver.step(1)
    assert np.array_equal(solver.net.blobs["data"].data, data[4:6]) and solver.iter == 2


def test_misuse_is_refused_in_one_line(tmp_path: Path) -> None:
    path = str(_memory_solver(tmp_path))
    with pytest.raises(TypeError, match="a solver needs a solver file path or a SolverParameter, got NoneType"):
        caffe.get_solver(None)
    with pytest.raises(Prototxt2pyError, match="unknown device 'bogus'"):
        caffe.get_solver(path, device="bogus")
    solver = caffe.SGDSolver(path)
    with pytest.raises(TypeError, match="share_weights: expected a caffe.Net, got str"):
        solver.share_weights("deploy.prototxt")
    with pytest.raises(TypeError, match="add_callback: on_gradients must be callable, got int"):
        solver.add_callback(lambda: None, 2)
    for iters in (1.7, "2", None):
        with pytest.raises(TypeError, match="step: iters must be an int"):
            solver.step(iters)
    solver.step(np.int64(0))
    with pytest.raises(AttributeError, match=r"solver.param.average_loss cannot be set \(pycaffe lets scripts set "
                                             "base_lr only"):
        solver.param.average_loss = 0
    with pytest.raises(TypeError, match="base_lr must be a number, got str"):
        solver.param.base_lr = "0.1"
    assert solver.param.base_lr == pytest.approx(0.1) and solver.param.average_loss == 1
    solver.close()
    with pytest.raises(Prototxt2pyError, match="data readers are closed"):
        solver.step(1)


def test_dropping_a_solver_frees_it_without_the_cycle_collector(tmp_path: Path) -> None:
    """Loader worker processes stop when the solver goes: nothing it hands the trainer refers back to it."""
    import gc
    import weakref

    solver = caffe.SGDSolver(str(_memory_solver(tmp_path)))
    solver.add_callback(lambda: None, lambda: None)
    gone = weakref.ref(solver)
    trainer = weakref.ref(solver.trainer)
    gc.disable()
    try:
        del solver
        assert gone() is None and trainer() is None
    finally:
        gc.enable()


def test_a_test_layer_with_other_blobs_than_its_train_namesake_is_refused(tmp_path: Path) -> None:
    test_ip = ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" include { phase: TEST }\n'
               '        inner_product_param { num_output: 2 bias_term: false } }\n')
    net = MEMORY_NET.replace('layer { name: "ip"', 'layer { name: "ip" include { phase: TRAIN }')
    net = net.replace('layer { name: "loss"', test_ip + 'layer { name: "loss"')
    (tmp_path / "memory.prototxt").write_text(net)
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{tmp_path / "memory.prototxt"}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 10\n'
                      "test_iter: 1\ntest_interval: 5\n")
    with pytest.raises(Prototxt2pyError, match="Incompatible number of blobs for layer ip: 2 in the TRAIN net, 1 here"):
        caffe.SGDSolver(str(solver))


def test_unknown_solver_fields_are_named(tmp_path: Path) -> None:
    """A typo (``max_iters``) is dropped as Caffe's forks' fields are, but never silently."""
    path = _memory_solver(tmp_path)
    path.write_text(path.read_text() + "max_iters: 5\n")
    dropped = r"solver.prototxt:6:1: dropped unknown field 'max_iters' in caffe.SolverParameter"
    with pytest.warns(UserWarning, match=dropped):
        solver = caffe.SGDSolver(str(path))
    assert solver.max_iter == 10


def test_ctrl_c_during_an_update_lands_after_it(tmp_path: Path) -> None:
    """A KeyboardInterrupt arriving mid-update is held until weights, ``iter`` and the trajectory agree (pycaffe
    raises it between steps); the interrupted step's update is then complete."""
    import os
    import signal

    solver = caffe.SGDSolver(str(_memory_solver(tmp_path)))
    solver.net.set_input_arrays(np.arange(24, dtype=np.float32).reshape(8, 3, 1, 1), np.ones(8, np.float32))
    trainer = solver.trainer
    update = trainer.apply_update

    def interrupted_update() -> float:
        os.kill(os.getpid(), signal.SIGINT)
        return update()

    trainer.apply_update = interrupted_update
    with pytest.raises(KeyboardInterrupt):
        solver.step(3)
    assert solver.iter == 1 and len(trainer.trajectory) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert np.abs(solver.net.params["ip"][0].data - 0.1).max() > 0  # updated once, fully


HELD_NET = """name: "held"
layer { name: "d" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_a_written_constant_dummydata_top_is_what_training_reads(tmp_path: Path) -> None:
    """Caffe fills a constant DummyData top once: ``solver.net.blobs['label'].data[...] = 2`` is the label of
    every later step (the runtime's module once refilled 0 at the next step). ip = 3 * 0.5 = 1.5 per item,
    loss = sum((ip - label)^2) / (2 * batch)."""
    (tmp_path / "net.prototxt").write_text(HELD_NET)
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0 lr_policy: "fixed" '
                                              f'max_iter: 9 snapshot_prefix: "{tmp_path / "s"}"\n')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    solver.step(1)
    assert float(solver.net.blobs["loss"].data) == pytest.approx(1.5**2 / 2)
    solver.net.blobs["label"].data[...] = 2
    for _ in range(2):
        solver.step(1)
        assert float(solver.net.blobs["loss"].data) == pytest.approx(0.5**2 / 2)
        np.testing.assert_array_equal(solver.net.blobs["label"].data, 2)


INPUT_NET = """name: "fed"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_input_blobs_written_before_each_step_are_trained_on(tmp_path: Path) -> None:
    """The pycaffe loop over Input layers: ``solver.net.blobs['data'].data[...] = batch`` then ``step(1)``. Caffe's
    Input blobs persist and start as zeros; the update is SGD's ``w -= lr * X^T (Xw + b - y) / N`` (the
    EuclideanLoss gradient), checked by hand. The CLI, which has nothing to write them, still refuses the net."""
    (tmp_path / "net.prototxt").write_text(INPUT_NET)
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.1 lr_policy: "fixed" '
                                              f'max_iter: 9 snapshot_prefix: "{tmp_path / "s"}"\n')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    solver.step(1)  # zeros in: ip = 0 (bias 0), label 0, no gradient
    assert float(solver.net.blobs["loss"].data) == 0
    w, b = np.full((1, 3), 0.5, np.float32), np.zeros(1, np.float32)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, y = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 1)).astype(np.float32)
        solver.net.blobs["data"].data[...] = x
        solver.net.blobs["label"].data[...] = y
        solver.step(1)
        residual = x @ w.T + b - y
        assert float(solver.net.blobs["loss"].data) == pytest.approx(float((residual**2).sum() / 4), rel=1e-5)
        w, b = w - 0.1 * (residual.T @ x) / 2, b - 0.1 * residual.sum(0) / 2
        np.testing.assert_allclose(solver.net.params["ip"][0].data, w, rtol=1e-5)
        np.testing.assert_allclose(solver.net.params["ip"][1].data, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(solver.net.blobs["data"].data, x)  # the blob keeps what was written
    with pytest.raises(Prototxt2pyError, match=r"inputs without a data layer to fill them: data, label \(train from "
                                               "a solver file needs data layers"):
        from prototxt2py.train import get_solver

        get_solver(str(tmp_path / "solver.prototxt"))


def test_base_lr_set_through_param_is_the_next_updates_rate(tmp_path: Path) -> None:
    """Master pycaffe binds ``solver.param.base_lr``'s setter on the live message and ``solver.lr`` to
    ``GetLearningRate``: scripts that decay the rate by hand train with the rate they set. Checked by hand with
    SGD's update ``w -= lr * X^T (Xw - y) / N`` on the Input net above."""
    (tmp_path / "net.prototxt").write_text(INPUT_NET)
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.1 lr_policy: "step" '
                                              f'gamma: 0.5 stepsize: 2 max_iter: 9 snapshot_prefix: "{tmp_path}/s"')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    assert solver.lr == pytest.approx(0.1)
    rng = np.random.default_rng(1)
    w = np.full((1, 3), 0.5, np.float32)
    for base_lr in (0.0, 0.2, 0.2):
        solver.param.base_lr = base_lr
        rate = base_lr * 0.5 ** (solver.iter // 2)  # the step policy over the new base
        assert solver.lr == pytest.approx(rate) and solver.param.base_lr == pytest.approx(base_lr)
        x, y = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 1)).astype(np.float32)
        solver.net.blobs["data"].data[...] = x
        solver.net.blobs["label"].data[...] = y
        b = solver.net.params["ip"][1].data.copy()
        solver.step(1)
        w = w - rate * ((x @ w.T + b - y).T @ x) / 2
        np.testing.assert_allclose(solver.net.params["ip"][0].data, w, rtol=1e-5)
    assert solver.iter == 3


def test_caffes_multi_gpu_names_are_the_no_nccl_builds(tmp_path: Path) -> None:
    """``python/train.py``'s calls, as a Caffe built without NCCL answers them: one solver, an NCCL stub that
    callbacks accept and ignore, and ``Timer`` (CPU mode: whole milliseconds, 0 before any start)."""
    assert caffe.has_nccl() is False and caffe.solver_count() == 1 and caffe.solver_rank() == 0
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    caffe.set_multiprocess(True)
    with pytest.raises(caffe.CaffeUsageError, match=r"set_solver_count\(2\): pycaffe here trains in one process"):
        caffe.set_solver_count(2)
    with pytest.raises(caffe.CaffeUsageError, match=r"set_solver_rank\(1\): the solver count is 1"):
        caffe.set_solver_rank(1)
    assert not hasattr(caffe.NCCL, "new_uid") and not hasattr(caffe.NCCL, "bcast")
    solver = caffe.SGDSolver(str(_memory_solver(tmp_path)))
    nccl = caffe.NCCL(solver, "uid")
    solver.add_callback(nccl)
    solver.net.after_backward(nccl)
    fprop = caffe.Timer()
    assert fprop.ms == 0.0
    ran: list[int] = []
    solver.net.before_forward(lambda layer: (fprop.start(), ran.append(layer)))
    solver.net.after_forward(lambda layer: fprop.stop())
    solver.net.set_input_arrays(np.ones((2, 3, 1, 1), np.float32), np.zeros(2, np.float32))
    solver.net.forward()
    assert ran == list(range(len(solver.net.layers)))
    assert fprop.ms >= 0 and fprop.ms == int(fprop.ms)
    timer = caffe.Timer()
    timer.start()
    time.sleep(0.02)
    assert timer.ms >= 20 and timer.ms == int(timer.ms)  # reading stops a running timer
    assert timer.ms == timer.ms
