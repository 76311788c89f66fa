"""Bad input to training: one clear error each, exit code 1 from the CLI, and never a partial snapshot."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("h5py")

from train_util import make_case  # noqa: E402

from prototxt2py.cli import main  # noqa: E402
from prototxt2py.data import DataError  # noqa: E402
from prototxt2py.errors import Prototxt2pyError  # noqa: E402
from prototxt2py.train import DivergedError, SolverError, get_solver  # noqa: E402
from prototxt2py.train import snapshot as snapshot_module  # noqa: E402


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_missing_data_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path)
    (tmp_path / "train_list.txt").unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"layer 'data': HDF5 list file not found: train_list.txt"):
        get_solver(solver.name)
    code, out = _cli("train", solver.name, "--quiet")
    assert code == 1
    assert out.strip().splitlines()[-1].startswith("error: layer 'data': HDF5 list file not found: train_list.txt")
    assert "Traceback" not in out


def test_missing_file_in_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path)
    (tmp_path / "train_list.txt").write_text("train.h5\nmissing.h5\n")
    monkeypatch.chdir(tmp_path)
    s = get_solver(solver.name)
    with pytest.raises(DataError, match=r"HDF5 file not found: missing.h5"):
        s.step(20)  # 32 rows, batch 4: the second file is opened at iteration 8


def test_label_out_of_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.zeros(32, dtype=np.int64)
    labels[5] = 3  # the net predicts 3 classes: 0..2
    solver = make_case(tmp_path, labels=labels)
    monkeypatch.chdir(tmp_path)
    s = get_solver(solver.name)
    with pytest.raises(Prototxt2pyError, match=r"layer 'loss': forward pass failed: .*3.*label outside 0..C-1"):
        s.step(2)
    code, out = _cli("train", solver.name, "--quiet")
    assert code == 1 and "layer 'loss'" in out and "Traceback" not in out


def test_nan_loss_stops_with_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path, base_lr=1e30, max_iter=50)
    monkeypatch.chdir(tmp_path)
    s = get_solver(solver.name)
    with pytest.raises(DivergedError, match=r"loss is (nan|inf) at iteration (\d+); the weights before this "
                                            r"iteration are in snaps/tiny_iter_\2.caffemodel") as info:
        s.solve()
    it = s.iter
    assert (tmp_path / f"snaps/tiny_iter_{it}.caffemodel").is_file()
    assert (tmp_path / f"snaps/tiny_iter_{it}.solverstate").is_file()
    assert str(info.value).count("\n") == 0
    code, out = _cli("train", solver.name, "--quiet")
    assert code == 1 and "error: loss is" in out


def test_unwritable_snapshot_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path, snapshot=5, prefix="no/such/dir/tiny")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SolverError, match=r"cannot write snapshots to prefix 'no/such/dir/tiny': directory "
                                          r"'no/such/dir' does not exist"):
        get_solver(solver.name)
    code, out = _cli("train", solver.name, "--quiet")
    assert code == 1 and "cannot write snapshots" in out


@pytest.mark.parametrize(("prefix", "why"), [
    ("nodir/", "directory 'nodir' does not exist"),  # a prefix ending in "/" names a folder (probe nodir/_iter_0...)
    ("train_list.txt/p", "'train_list.txt' is not a directory"),
])
def test_snapshot_prefix_folders_are_probed_as_caffe_probes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  prefix: str, why: str) -> None:
    """``CheckSnapshotWritePermissions`` probes ``prefix + "_iter_0.tempfile"``: with "nodir/" its folder is
    nodir. The probe went to the working directory, and training died at its first snapshot."""
    solver = make_case(tmp_path, snapshot=5, prefix=prefix)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SolverError) as e:
        get_solver(solver.name)
    assert str(e.value) == f"cannot write snapshots to prefix '{prefix}': {why}"


def test_the_final_snapshot_folder_is_checked_before_training(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a snapshot interval, ``train`` still ends with a snapshot (``snapshot_after_train``): a missing
    folder was found after the whole run (Caffe too: it probes only with an interval). pycaffe's solver, which
    scripts often only ``step``, is built as Caffe builds it."""
    solver = make_case(tmp_path, snapshot=0, prefix="missing/tiny")
    monkeypatch.chdir(tmp_path)
    code, out = _cli("train", solver.name, "--quiet")
    assert (code, out.splitlines()[-1]) == (1, "error: cannot write snapshots to prefix 'missing/tiny': directory "
                                               "'missing' does not exist")
    get_solver(solver.name).step(1)


def test_an_empty_snapshot_prefix_stays_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``UpgradeSnapshotPrefixProperty`` appends the solver's name only to a prefix that is a directory, and
    boost's ``is_directory("")`` is false: the files are ``_iter_N.caffemodel`` in the working directory (the
    solver's name was appended, as for ".")."""
    solver = make_case(tmp_path, snapshot=0, prefix="")
    monkeypatch.chdir(tmp_path)
    s = get_solver(solver.name)
    s.step(2)
    assert s.snapshot() == ("_iter_2.caffemodel", "_iter_2.solverstate")


def test_resuming_from_a_folder_or_a_caffemodel_says_what_it_is(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    s = get_solver(solver.name)
    s.step(1)
    model, _ = s.snapshot()
    code, out = _cli("train", solver.name, "--snapshot", "snaps", "--quiet")
    assert (code, out.splitlines()[-1]) == (1, "error: snaps: is a directory, not a solver state file")
    code, out = _cli("train", solver.name, "--snapshot", model, "--quiet")
    assert (code, out.splitlines()[-1]) == (1, f"error: {model}: holds a net's weights (a .caffemodel), not a "
                                               "solver state: start from weights with --weights (pycaffe: "
                                               "net.copy_from)")


def test_a_test_output_whose_size_changes_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caffe sums test outputs element by element over the batches (and writes past its vector when an output
    grows, a Filter's top): ``test`` and a solver's test pass exited 3 (``zip(strict=True)``)."""
    (tmp_path / "filt.prototxt").write_text("""
layer { name: "data" type: "DummyData" top: "data" top: "sel"
  dummy_data_param { shape { dim: 8 dim: 2 } shape { dim: 8 } data_filler { type: "gaussian" std: 1 }
                     data_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "thr" type: "Threshold" bottom: "sel" top: "mask" threshold_param { threshold: 0 } }
layer { name: "filter" type: "Filter" bottom: "data" bottom: "mask" top: "kept" }""")
    monkeypatch.chdir(tmp_path)
    import torch

    torch.manual_seed(3)  # batches keep 4, 6, ... of 8 rows: the sizes differ by the second batch
    code, out = _cli("test", "filt.prototxt", "--iterations", "5")
    assert code == 1
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"error: the net output 'kept' has \d+ values in batch \d but \d+ in batch 0: outputs are "
                        r"averaged element by element over the batches, so their sizes must not change", last), last


def test_failed_snapshot_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    s = get_solver(solver.name)
    s.step(3)

    def broken(f, *args, **kwargs):
        f.write(b"\x08")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("prototxt2py.train.solver.write_solverstate", broken)
    with pytest.raises(SolverError, match="cannot write snapshot"):
        s.snapshot()
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == []
    monkeypatch.setattr("prototxt2py.train.solver.write_solverstate", snapshot_module.write_solverstate)
    model, state = s.snapshot()
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["tiny_iter_3.caffemodel",
                                                                     "tiny_iter_3.solverstate"]


def test_solverstate_of_another_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from golden import GOLDEN

    other = GOLDEN / "solvers" / "sgd_snapshot_resume" / "snap_iter_12.solverstate"  # an MLP 8-16-3... of Caffe's
    conv = GOLDEN / "solvers" / "sgd_conv_bn_step"
    if not other.exists() or not conv.exists():
        pytest.skip("golden solvers suite absent")
    monkeypatch.chdir(conv)
    s = get_solver("solver.prototxt")
    before = [t.detach().clone() for t in s.net.parameters()]
    with pytest.raises(SolverError, match=r"snap_iter_12.solverstate: the solver state holds 4 history blobs, "
                                          r"this SGD solver on this net needs 8 \(a state of another net or "
                                          r"solver type\?\)"):
        s.restore(str(other))
    assert s.iter == 0
    assert all(torch_equal(a, b) for a, b in zip(before, s.net.parameters(), strict=True))
    # same number of blobs, other shapes: the tiny MLP has 10 hidden units, Caffe's case 16
    solver = make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    s = get_solver(solver.name)
    with pytest.raises(SolverError, match=r"history blob 0 has shape \(16, 8\), parameter 0 of layer 'ip1' has "
                                          r"\(10, 8\) \(a state of another net\?\)"):
        s.restore(str(other))
    code, out = _cli("train", solver.name, "--snapshot", str(other), "--quiet")
    assert code == 1 and "history blob 0 has shape" in out


def test_corrupt_solverstates_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """History blobs are checked as ``Blob::Reshape`` checks them (at most 32 axes, none negative) before numpy
    reshapes them, and a ``learned_net`` of any bytes is a file name: exit 1 with the file named, never exit 3."""
    from prototxt2py.proto import caffe_pb2

    solver = make_case(tmp_path, max_iter=2, snapshot=2)
    monkeypatch.chdir(tmp_path)
    assert _cli("train", solver.name, "--quiet")[0] == 0
    good = caffe_pb2.SolverState.FromString((tmp_path / "snaps/tiny_iter_2.solverstate").read_bytes())
    name = b"snaps/tiny_iter_2\xff.caffemodel"
    cases = {"badname": (good.SerializeToString() + b"\x12" + bytes([len(name)]) + name,
                         "the weights it names, snaps/tiny_iter_2"),
             "manydims": ([1] * 70 + [good.history[1].shape.dim[0]], "history blob 1 has 71 axes (Caffe allows 32)"),
             "negdims": ([-1, -good.history[1].shape.dim[0]], "history blob 1: dim 0 is negative (-1)")}
    for case, (edit, message) in cases.items():
        if isinstance(edit, bytes):
            data = edit
        else:
            state = caffe_pb2.SolverState()
            state.CopyFrom(good)
            state.history[1].shape.ClearField("dim")
            state.history[1].shape.dim.extend(edit)
            data = state.SerializeToString()
        (tmp_path / f"{case}.solverstate").write_bytes(data)
        code, out = _cli("train", solver.name, "--quiet", "--snapshot", f"{case}.solverstate")
        assert code == 1 and f"{case}.solverstate" in out and message in out and "internal error" not in out, out


def torch_equal(a, b) -> bool:
    return bool((a == b.detach()).all())


def test_weights_and_snapshot_together_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out = _cli("train", solver.name, "--weights", "a.caffemodel", "--snapshot", "b.solverstate")
    assert code == 1 and "not both" in out


def test_unknown_solver_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = make_case(tmp_path)
    solver.write_text(solver.read_text() + 'type: "LBFGS"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SolverError, match="unknown solver type 'LBFGS'"):
        get_solver(solver.name)


def test_a_net_given_as_the_solver_is_named_as_such(tmp_path: Path) -> None:
    """Every field of a net is unknown to a solver: it was read as an empty solver ("unknown lr_policy ''")."""
    from prototxt2py import caffe

    net = tmp_path / "lenet.prototxt"
    net.write_text('name: "n"\nlayer { name: "data" type: "Input" top: "data" '
                   "input_param { shape { dim: 1 dim: 2 } } }\n")
    with pytest.raises(Prototxt2pyError, match=r"lenet.prototxt: this is a net file, expected a solver definition"):
        caffe.SGDSolver(str(net))
