"""``prototxt2py train | test | time`` end to end, signals, and the pycaffe-style solver API."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("h5py")

from train_util import make_case  # noqa: E402

from prototxt2py.cli import main  # noqa: E402
from prototxt2py.train import AdamSolver, SGDSolver, Solver, get_solver  # noqa: E402
from prototxt2py.train.snapshot import read_solverstate  # noqa: E402
from prototxt2py.weights import read_caffemodel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_train_cli_logs_snapshots_and_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path, max_iter=40, display=10, snapshot=20)
    monkeypatch.chdir(tmp_path)
    code, out, err = _run("train", solver.name)
    assert code == 0, err
    assert "Iteration 0, Testing net (#0)" in err and "Iteration 40, Testing net (#0)" in err
    assert re.search(r"Iteration 10 \([\d.e+-]+ iter/s, [\d.e+-]+s/10 iters\), loss = [\d.]+", err)
    assert "Iteration 10, lr = 0.05" in err
    assert re.search(r"    Train net output #0: loss = [\d.]+ \(\* 1 = [\d.]+ loss\)", err)
    assert re.search(r"    Test net output #0: accuracy = [\d.]+", err)
    assert re.search(r"    Test net output #1: loss = [\d.]+ \(\* 1 = [\d.]+ loss\)", err)
    # not a terminal: plain progress lines with iteration, loss, lr, images/s and ETA
    assert re.search(r"iter 40/40  loss [\d.]+  lr 0.05  \d+ img/s  ETA 0s", err)
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == [
        "tiny_iter_20.caffemodel", "tiny_iter_20.solverstate", "tiny_iter_40.caffemodel", "tiny_iter_40.solverstate"]
    assert read_solverstate(tmp_path / "snaps/tiny_iter_40.solverstate").iter == 40
    final_accuracy = float(re.findall(r"accuracy = ([\d.]+)", err)[-1])
    assert final_accuracy >= 0.85  # separable clusters: the net learns

    # resume from the snapshot at 20: the weights at 40 equal the uninterrupted run's (data differ: Caffe
    # restarts the data at row 0, so compare only that training ran and wrote its snapshot at 40)
    code, out, err = _run("train", solver.name, "--snapshot", "snaps/tiny_iter_20.solverstate", "--quiet")
    assert code == 0, err
    assert "Resuming from snaps/tiny_iter_20.solverstate\nSGDSolver: restoring history\nStarting Optimization\n" in err
    assert "Iteration 20, Testing net (#0)" in err and "Iteration 0, Testing net" not in err

    # test: scores of the trained net over its TEST data layer
    code, out, err = _run("test", "train_val.prototxt", "--weights", "snaps/tiny_iter_40.caffemodel",
                          "--iterations", "4")
    assert code == 0, err
    assert re.search(r"^accuracy = [\d.]+$", out, re.M) and re.search(r"^loss = [\d.]+ \(\* 1 = ", out, re.M)
    assert "Batch 3, accuracy = " in err
    assert "warning" not in err
    # weights lacking a layer: test and train --weights say which one is left at its fillers
    from prototxt2py.proto import caffe_pb2

    full = caffe_pb2.NetParameter.FromString((tmp_path / "snaps/tiny_iter_40.caffemodel").read_bytes())
    partial = caffe_pb2.NetParameter(name=full.name, layer=[la for la in full.layer if la.name != "ip2"])
    (tmp_path / "partial.caffemodel").write_bytes(partial.SerializeToString())
    lacking = "layers without weights in the file (left at their fillers): ip2"
    code, out, err = _run("test", "train_val.prototxt", "--weights", "partial.caffemodel", "--iterations", "1")
    assert code == 0 and f"warning: {lacking}" in err, err
    code, out, err = _run("train", solver.name, "--weights", "partial.caffemodel", "--iterations", "1", "--quiet")
    assert code == 0 and f"warning: partial.caffemodel: {lacking}" in err, err
    # several files: a layer one of them lacks is not left at its fillers if another has it
    code, out, err = _run("train", solver.name, "--weights", "snaps/tiny_iter_40.caffemodel,partial.caffemodel",
                          "--iterations", "1", "--quiet")
    assert code == 0 and "warning" not in err, err
    assert "Finetuning from snaps/tiny_iter_40.caffemodel\nFinetuning from partial.caffemodel\n" in err

    # time: one forward and one backward line per layer, then the averages
    code, out, err = _run("time", "train_val.prototxt", "--iterations", "2")
    assert code == 0, err
    for layer in ("data", "ip1", "relu1", "ip2", "loss"):
        assert re.search(rf"^\s*{layer}\tforward: [\d.e-]+ ms\.$", out, re.M), out
        assert re.search(rf"^\s*{layer}\tbackward: [\d.e-]+ ms\.$", out, re.M), out
    assert "Average Forward-Backward:" in out
    # and caffe time's frame: the clean pass with its loss, then one line per timed iteration (caffe.cpp: time)
    lines = out.splitlines()
    assert lines[:5] == ["Performing Forward", lines[1], "Performing Backward", "*** Benchmark begins ***",
                         "Testing for 2 iterations."] and re.fullmatch(r"Initial loss: [\d.e-]+", lines[1]), lines
    assert [re.sub(r"[\d.e-]+ ms", "T ms", x) for x in lines[5:7]] == [
        "Iteration: 1 forward-backward time: T ms.", "Iteration: 2 forward-backward time: T ms."]
    assert lines[-1] == "*** Benchmark ends ***" and lines[-2].startswith("Total Time: ")
    # times print as caffe's float through an ostream: 6 significant digits (some end in a zero, dropped)
    digits = [len(m.replace(".", "").lstrip("0")) for m in re.findall(r"([\d.]+)(?:e-\d+)? ms\.$", out, re.M)]
    assert len(digits) > 10 and max(digits) == 6, digits
    # a deploy net: no loss reaches any layer, yet caffe time runs (and times) every layer's backward
    (tmp_path / "deploy.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 8 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 } }\n'
        'layer { name: "prob" type: "Softmax" bottom: "y" top: "p" }\n')
    code, out, err = _run("test", "deploy.prototxt", "--iterations", "1")  # caffe test scores it on zeros
    assert code == 0 and "warning: Input blobs x hold zeros" in err, err
    assert re.findall(r"^p = ([\d.]+)$", out, re.M) == ["0.333333"] * 12  # softmax of zero scores, 4 x 3
    code, out, err = _run("time", "deploy.prototxt", "--iterations", "2")
    assert code == 0, err
    for layer in ("ip", "prob"):
        assert float(re.search(rf"^\s*{layer}\tbackward: ([\d.e-]+) ms\.$", out, re.M).group(1)) > 0, out


def test_iterations_override_and_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path, max_iter=100)
    monkeypatch.chdir(tmp_path)
    code, _, err = _run("train", solver.name, "--iterations", "6", "--quiet")
    assert code == 0, err
    assert (tmp_path / "snaps/tiny_iter_6.caffemodel").is_file()  # snapshot_after_train
    code, _, err = _run("train", solver.name, "--iterations", "2", "--weights", "snaps/tiny_iter_6.caffemodel",
                        "--quiet")
    assert code == 0, err
    assert err.startswith("Finetuning from snaps/tiny_iter_6.caffemodel\n")
    assert "Optimization Done.\nOptimization Done.\nlast snapshot: " in err  # Solve's, then caffe.cpp's


def test_glog_prefixes_every_line_as_caffes_log_parsers_expect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--glog``: Caffe's tools/extra/parse_log.py splits each line into ``I<MMDD>``, ``HH:MM:SS.micro`` and reads
    the message after ``]``; a solver's whole log has that form (warnings with ``W``)."""
    solver = make_case(tmp_path, max_iter=2, display=1)
    monkeypatch.chdir(tmp_path)
    code, _, err = _run("train", solver.name, "--glog", "--quiet")
    assert code == 0, err
    lines = err.splitlines()
    glog = re.compile(r"^[IW](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) +\d+ solver\.cpp:0\] (.*)$")
    assert all(glog.match(line) for line in lines), [line for line in lines if not glog.match(line)]
    messages = [glog.match(line).group(7) for line in lines]
    assert "Starting Optimization" in messages and messages[-3:-1] == ["Optimization Done."] * 2
    assert any(m.startswith("Solving ") for m in messages) and any(m.startswith("Iteration 1, lr = ") for m in messages)


def test_iterations_stop_early_without_changing_the_learning_rate_schedule(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``--iterations`` stops training; poly's rate still decays over the solver's max_iter (100):
    0.05 * (1 - it/100), not over the 3 iterations asked for. multistep logs Caffe's status line."""
    solver = make_case(tmp_path, max_iter=100, display=1)
    monkeypatch.chdir(tmp_path)
    text = solver.read_text().replace('lr_policy: "fixed"', 'lr_policy: "poly"\npower: 1')
    solver.write_text(text)
    code, _, err = _run("train", solver.name, "--iterations", "3", "--quiet")
    assert code == 0, err
    assert [f"Iteration {i}, lr = {0.05 * (1 - i / 100):g}" for i in range(3)] == re.findall(
        r"Iteration \d+, lr = [\d.e-]+", err)
    solver.write_text(text.replace('lr_policy: "poly"\npower: 1', 'lr_policy: "multistep"\ngamma: 0.5\n'
                                   "stepvalue: 1\nstepvalue: 2"))
    code, _, err = _run("train", solver.name, "--iterations", "3", "--quiet")
    assert "MultiStep Status: Iteration 1, step = 1\n" in err and "MultiStep Status: Iteration 2, step = 2\n" in err


def _start(solver: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "prototxt2py", "train", solver.name, *extra], cwd=solver.parent,
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _wait_for_progress(proc: subprocess.Popen) -> list[str]:
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if line.startswith("iter "):
            return lines
        if not line and proc.poll() is not None:
            break
    raise AssertionError("no progress: " + "".join(lines))


@pytest.mark.slow  # a subprocess (torch import) and signal round trips: ~10 s
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sighup_snapshots_and_sigint_stops(tmp_path: Path) -> None:
    solver = make_case(tmp_path, max_iter=1_000_000, display=20, test_interval=1_000_000)
    proc = _start(solver)
    try:
        _wait_for_progress(proc)
        proc.send_signal(signal.SIGHUP)  # default effect: snapshot, go on
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list((tmp_path / "snaps").glob("*.solverstate")):
            time.sleep(0.05)
        assert list((tmp_path / "snaps").glob("*.solverstate")), "SIGHUP wrote no snapshot"
        assert proc.poll() is None, "SIGHUP stopped training"
        proc.send_signal(signal.SIGINT)  # default effect: stop (then the final snapshot)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Optimization stopped early." in err
    assert len(list((tmp_path / "snaps").glob("*.solverstate"))) == 2


def test_pycaffe_style_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    s = get_solver(solver.name)
    assert isinstance(s, Solver) and s.type == "SGD" and SGDSolver(solver.name).type == "SGD"
    assert AdamSolver(solver.name).type == "Adam"  # the class decides, as in pycaffe
    assert s.iter == 0 and len(s.test_nets) == 1
    # TEST nets share the TRAIN net's tensors (Caffe's ShareTrainedLayersWith)
    assert s.test_nets[0].layer_blobs("ip1")[0] is s.net.layer_blobs("ip1")[0]
    s.step(3)
    assert s.iter == 3 and [e["iter"] for e in s.trajectory] == [0, 1, 2]
    # apply_update by hand on gradients computed from a forward/backward pass
    w = s.net.layer_blobs("ip2")[0].detach().clone()
    s._clear_diffs()
    s._forward_backward()
    s.apply_update()  # as Caffe's ApplyUpdate: the weights change, the iteration count is step's to advance
    assert s.iter == 3 and not np.array_equal(w.numpy(), s.net.layer_blobs("ip2")[0].detach().numpy())
    s.iter += 1
    model, state = s.snapshot()
    assert model == "snaps/tiny_iter_4.caffemodel" and state == "snaps/tiny_iter_4.solverstate"
    blobs = read_caffemodel(model)
    assert np.array_equal(blobs["ip2"][0].array, s.net.layer_blobs("ip2")[0].detach().numpy())
    fresh = get_solver(solver.name)
    fresh.restore(state)
    assert fresh.iter == 4
    assert np.array_equal(fresh.net.layer_blobs("ip2")[0].detach().numpy(), blobs["ip2"][0].array)
    for a, b in zip(fresh.update.history, s.update.history, strict=True):
        assert np.array_equal(a.numpy(), b.numpy())


def test_loader_workers_keep_caffe_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches from loader worker processes come in a single reader's order: the same trajectory."""
    from golden import GOLDEN

    case = GOLDEN / "solvers" / "sgd_plain_fixed"
    if not case.is_dir():
        pytest.skip("golden solvers suite absent")
    monkeypatch.chdir(case)
    runs = []
    for workers in (0, 2):
        s = get_solver("solver.prototxt", data_workers=workers)
        s.load_weights("init.caffemodel")
        s.step(10)
        s.close()
        runs.append([e["loss"] for e in s.trajectory])
    assert runs[0] == runs[1]


LMDB_NET = """name: "lmdb_net"
layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ scale: 0.00390625 mirror: true crop_size: 16 mean_file: "{mean}" }}
  data_param {{ source: "{source}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param {{ num_output: 16 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""


def test_train_from_lmdb_with_transforms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Data layer (LMDB, mean file, random crops and mirrors in TRAIN) trains through loader workers."""
    from golden import GOLDEN

    pytest.importorskip("lmdb")
    datasets = GOLDEN / "data" / "datasets"
    if not (datasets / "color_raw_lmdb").is_dir():
        pytest.skip("golden data suite absent")
    (tmp_path / "net.prototxt").write_text(LMDB_NET.format(source=datasets / "color_raw_lmdb",
                                                           mean=datasets / "color_mean.binaryproto"))
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: '
                                              '"fixed"\nmax_iter: 8\nsnapshot_after_train: false\nrandom_seed: 3\n')
    monkeypatch.chdir(tmp_path)
    s = get_solver("solver.prototxt")
    assert s.feeder.workers == 2
    assert s.feeder.shapes() == {"data": [4, 3, 16, 16], "label": [4]}
    s.solve()
    s.close()
    assert s.iter == 8 and all(np.isfinite(e["loss"]) for e in s.trajectory)


def test_iteration_counts_that_mean_nothing_are_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``test`` averages over at least one batch (0 gave "Loss: nan", -2 "Loss: -0"); ``train`` refuses a negative
    count but takes 0, which as in Caffe runs no iteration and still snapshots the weights at the end."""
    solver = make_case(tmp_path, max_iter=100)
    monkeypatch.chdir(tmp_path)
    for args, low in ((("test", "train_val.prototxt"), 1), (("time", "train_val.prototxt"), 1),
                      (("train", solver.name), 0)):
        for bad in ("-2", "0") if low else ("-1",):
            code, out, err = _run(*args, "--iterations", bad)
            assert code == 2, (args, bad, code, err)
            assert f"Invalid value for '--iterations': {bad} is not in the range x>={low}" in err
            assert "Loss" not in out and "Optimization Done" not in err
    code, _, err = _run("train", solver.name, "--iterations", "0", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["tiny_iter_0.caffemodel",
                                                                       "tiny_iter_0.solverstate"]


def test_hdf5_weights_of_another_layout_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--weights x.h5`` whose ``data`` is a dataset (or a layer a dataset) names the HDF5 path, exit 1."""
    import h5py

    solver = make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    for layout, where in (("data", "'/data' is a dataset, expected a group"),
                          ("data/ip1", "'/data/ip1' is a dataset, expected a group")):
        with h5py.File(tmp_path / "w.caffemodel.h5", "w") as f:
            f[layout] = np.arange(3)
        code, _, err = _run("train", solver.name, "--weights", "w.caffemodel.h5", "--iterations", "2")
        assert code == 1, err
        assert err.strip().splitlines()[-1].startswith(f"error: w.caffemodel.h5: {where} (Caffe's layout"), err
        assert "internal error" not in err


def test_hdf5_weights_load_wherever_weights_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As Caffe's ``CopyTrainedLayersFrom``, which tells the formats apart by content: a ``.caffemodel.h5`` snapshot
    gives ``test`` and the torch-free ``convert`` the weights its binary twin gives."""
    solver = make_case(tmp_path, max_iter=6, snapshot=6)
    monkeypatch.chdir(tmp_path)
    assert _run("train", solver.name, "--quiet")[0] == 0
    solver.write_text(solver.read_text().replace('"snaps/tiny"', '"snaps/h5"') + "snapshot_format: HDF5\n")
    assert _run("train", solver.name, "--quiet")[0] == 0
    binary, hdf5 = "snaps/tiny_iter_6.caffemodel", "snaps/h5_iter_6.caffemodel.h5"
    outs = [_run("test", "train_val.prototxt", "--weights", w, "--iterations", "2") for w in (binary, hdf5)]
    assert outs[0][0] == 0 and outs[1][0] == 0, outs
    assert "Loss: " in outs[1][1] and outs[0][1] == outs[1][1]
    assert _run("test", "train_val.prototxt", "--iterations", "2")[1] != outs[1][1]  # the fillers score otherwise
    shapes = ("--input", "data=4,1,1,8", "--input", "label=4")  # torch-free: the data's shapes are not read
    assert _run("convert", "train_val.prototxt", "--weights", hdf5, "--to", "caffemodel", "-o", "back.caffemodel",
                *shapes)[0] == 0
    assert _run("test", "train_val.prototxt", "--weights", "back.caffemodel", "--iterations", "2")[1] == outs[0][1]


def test_time_names_the_layer_a_batch_breaks(tmp_path: Path) -> None:
    """``time`` runs layer by layer; a batch a layer cannot take (here a label 7 for 3 classes) is one located
    error, as in ``test`` and ``train`` (it was exit 3 with torch's bare message)."""
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "data" type: "DummyData" top: "data" top: "label" dummy_data_param { '
                   'shape { dim: 2 dim: 4 } shape { dim: 2 } data_filler { type: "constant" value: 1 } '
                   'data_filler { type: "constant" value: 7 } } }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { '
                   'num_output: 3 } }\n'
                   'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    code, _, err = _run("time", str(net), "--iterations", "1")
    assert code == 1, err
    assert err.strip().splitlines()[-1] == (
        f"error: {net}:3:7: layer 'loss': forward pass failed: index 7 is out of bounds for dimension 1 with size 3 "
        "(a label outside 0..C-1 of the prediction's channels?) (bottoms ip (2, 3), label (2,))")


@pytest.mark.parametrize("broken", ["truncated", "bad_header"])
def test_opencvs_own_warnings_stay_out_of_the_log(tmp_path: Path, broken: str) -> None:
    """A broken image in an ImageData list is one error line; OpenCV's own "[ WARN:0 ] ... PNG input buffer is
    incomplete" (a truncated file) or "[ERROR:0] ... IHDR chunk shall be first" (a bad header), its logging on the
    process's stderr, no longer prints beside it. A real process: that is native output, which no in-process
    runner captures."""
    import shutil

    from golden import GOLDEN

    png = GOLDEN / "data" / "datasets" / "images" / "color_00.png"
    if not png.exists():
        pytest.skip("golden images absent")
    (tmp_path / "im").mkdir()
    for i in range(3):
        shutil.copy(png, tmp_path / "im" / f"a{i}.png")
    bad = png.read_bytes()[:100] if broken == "truncated" else b"\x89PNG\r\n\x1a\nxxxx"
    (tmp_path / "im" / "a3.png").write_bytes(bad)
    (tmp_path / "list.txt").write_text("a0.png 1\na1.png 1\na2.png 0\na3.png 1\n")
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "ImageData" top: "data" top: "label" image_data_param { source: "list.txt" '
        'root_folder: "im/" batch_size: 2 new_height: 8 new_width: 8 } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-m", "prototxt2py", "test", "net.prototxt", "--iterations", "3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["warning: no --weights given: testing Caffe's filler values",
                                       "Batch 0, loss = 0.693147",
                                       "error: layer 'data': could not decode image 'im/a3.png'"]


def test_hdf5_solverstate_stores_learned_net_as_caffe_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``H5LTmake_dataset_string``'s layout: a scalar NUL-terminated string of ``len + 1`` bytes. Caffe reads it
    into a buffer of the stored size and takes a C string from it, so without the NUL it reads past the end."""
    h5py = pytest.importorskip("h5py")
    solver = make_case(tmp_path, max_iter=2, snapshot=2)
    solver.write_text(solver.read_text() + "snapshot_format: HDF5\n")
    monkeypatch.chdir(tmp_path)
    assert _run("train", solver.name, "--quiet")[0] == 0
    with h5py.File("snaps/tiny_iter_2.solverstate.h5", "r") as h5:
        kind = h5["learned_net"].id.get_type()
        name = b"snaps/tiny_iter_2.caffemodel.h5"
        got = (kind.get_size(), kind.get_strpad(), h5["learned_net"].shape)
        assert got == (len(name) + 1, h5py.h5t.STR_NULLTERM, ())
        assert h5["learned_net"][()] == name
    assert _run("train", solver.name, "--quiet", "--snapshot", "snaps/tiny_iter_2.solverstate.h5")[0] == 0


def test_time_takes_stages_and_level_as_caffe_time(tmp_path: Path) -> None:
    """``caffe time --stage --level`` builds ``Net(file, phase, level, stages)``: the layers timed follow them."""
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 dim: 3 } } }\n'
                   'layer { name: "hi" type: "ReLU" bottom: "x" top: "hi" include { min_level: 1 } }\n'
                   'layer { name: "st" type: "TanH" bottom: "x" top: "st" include { stage: "s" } }\n')

    def timed(*args: str) -> set[str]:
        code, out, err = _run("time", str(net), "--iterations", "1", *args)
        assert code == 0, err
        return {line.split()[0] for line in out.splitlines() if "\tforward:" in line}

    assert timed() == {"d"}
    assert timed("--level", "1") == {"d", "hi"}
    assert timed("--level", "1", "--stage", "s") == {"d", "hi", "st"}
