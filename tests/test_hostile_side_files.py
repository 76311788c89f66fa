"""Hostile side files: HDF5 weights and solver states, mean files, database records, and outputs that cannot be
written. Sizes a file declares are checked before anything is read; every bad file is one error line naming it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prototxt2py.cli import main

h5py = pytest.importorskip("h5py")

NET = """name: "t"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
"""


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stderr


def run_net(net: Path, weights: Path) -> tuple[int, str]:
    """``run`` of the net on ``in.npz`` with these weights, into ``o.npz`` beside it."""
    return run("run", str(net), "--inputs", str(net.parent / "in.npz"), "--weights", str(weights), "-o",
               str(net.parent / "o.npz"))


def convert_net(net: Path, weights: Path) -> tuple[int, str]:
    """``convert --to caffemodel`` (torch-free) of the net with these weights, into ``o.caffemodel`` beside it."""
    out = net.parent / "o.caffemodel"
    return run("convert", str(net), "--weights", str(weights), "--to", "caffemodel", "-o", str(out))


@pytest.fixture
def net(tmp_path: Path) -> Path:
    """The net, and ``in.npz`` beside it for ``run --inputs``."""
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    np.savez(tmp_path / "in.npz", data=np.ones((1, 2), "f4"))
    return path


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The HDF5 datasets whose values are read (every reader goes through ``read_blob``)."""
    import prototxt2py.hdf5_weights as hdf5_weights

    seen: list[str] = []
    real = hdf5_weights.read_blob

    def spy(obj: object) -> np.ndarray:
        seen.append(obj.name)  # type: ignore[attr-defined]
        return real(obj)

    monkeypatch.setattr(hdf5_weights, "read_blob", spy)
    return seen


def weights_h5(path: Path, ip: dict[str, object], **extra: dict[str, object]) -> Path:
    """``data/ip`` (and other layer groups) with datasets given as arrays or as shapes of never-written ones."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.create_group("data")
        for layer, datasets in {"ip": ip, **extra}.items():
            group = data.create_group(layer)
            for name, value in datasets.items():
                if isinstance(value, tuple):  # declared, never written: HDF5 keeps no bytes for it
                    group.create_dataset(name, shape=value, dtype="f4", chunks=(1 << 16,))
                else:
                    group[name] = value
    return path


GOOD = {"0": np.arange(4, dtype="f4").reshape(2, 2), "1": np.ones(2, "f4")}


def test_hdf5_weights_shapes_are_checked_before_the_values_are_read(net: Path, tmp_path: Path,
                                                                   reads: list[str]) -> None:
    """A few KB may declare 500M values: Caffe's ``hdf5_load_nd_dataset`` compares the dims first (it was read
    whole, 2 GB, before the mismatch was found)."""
    big = weights_h5(tmp_path / "big.caffemodel.h5", {"0": (500_000_000,), "1": np.ones(2, "f4")})
    for command in (run_net, convert_net):
        code, err = command(net, big)
        assert code == 1, err
        assert err.strip().endswith("big.caffemodel.h5: layer 'ip': blob 0 has shape (500000000,) in the weights "
                                    "file, the net expects (2, 2) (Caffe: dimensions mismatch)"), err
    assert "/data/ip/0" not in reads
    assert not (tmp_path / "o.npz").exists() and not (tmp_path / "o.caffemodel").exists()


def test_hdf5_groups_the_net_lacks_are_never_read(net: Path, tmp_path: Path, reads: list[str]) -> None:
    """``CopyTrainedLayersFromHDF5`` skips a source layer the net lacks ("Ignoring source layer")."""
    w = weights_h5(tmp_path / "w.caffemodel.h5", GOOD, old_fc={"0": (500_000_000,)})
    code, err = convert_net(net, w)
    assert code == 0, err
    assert "layers in the weights file that the net does not have (ignored): old_fc" in err
    assert sorted(reads) == ["/data/ip/0", "/data/ip/1"]
    from prototxt2py.weights import read_caffemodel

    assert np.array_equal(read_caffemodel(tmp_path / "o.caffemodel")["ip"][0].array, GOOD["0"])


def test_hdf5_dataset_beyond_caffe_int_dims_is_a_limit(net: Path, tmp_path: Path) -> None:
    w = weights_h5(tmp_path / "w.caffemodel.h5", {"0": (3_000_000_000,), "1": np.ones(2, "f4")})
    code, err = run_net(net, w)
    assert code == 1, err
    assert "dataset '/data/ip/0': dim 0 = 3000000000 is beyond Caffe's 32-bit int dims" in err


def test_pycaffe_load_hdf5_checks_the_shape_before_reading(net: Path, tmp_path: Path, reads: list[str]) -> None:
    from prototxt2py import caffe
    from prototxt2py.errors import WeightsError

    big = weights_h5(tmp_path / "big.caffemodel.h5", {"0": (500_000_000,), "1": np.ones(2, "f4")})
    pnet = caffe.Net(str(net), caffe.TEST)
    with pytest.raises(WeightsError, match=r"blob 0 has shape \(500000000,\) in the file, the net expects \(2, 2\)"):
        pnet.load_hdf5(str(big))
    assert reads == []
    pnet.load_hdf5(str(weights_h5(tmp_path / "good.caffemodel.h5", GOOD)))
    assert np.array_equal(pnet.params["ip"][0].data, GOOD["0"])


def test_hdf5_links_that_lead_nowhere_or_outside_are_one_line(net: Path, tmp_path: Path) -> None:
    """h5py yields None or raises ``KeyError`` for a dangling link (exit 3 before), and follows an external
    link into another file of the machine: both refused, naming the link, for a layer the net loads. A layer the
    net lacks is never opened, as in Caffe ("Ignoring source layer"), whatever its link."""

    def replace(f: h5py.File, path: str, link: object) -> None:
        del f[path]
        f[path] = link

    cases = {
        "layer": lambda f: replace(f, "data/ip", h5py.SoftLink("/nowhere")),
        "blob": lambda f: replace(f, "data/ip/1", h5py.SoftLink("/nowhere")),
        "external": lambda f: replace(f, "data/ip", h5py.ExternalLink(str(tmp_path / "x.h5"), "/x")),
        "ghost": lambda f: f["data"].__setitem__("ghost", h5py.SoftLink("/nowhere")),
    }
    expected = {"layer": "'/data/ip' cannot be opened (a link that leads nowhere?)",
                "blob": "'/data/ip/1' cannot be opened (a link that leads nowhere?)",
                "external": "'/data/ip' is an external link to '" + str(tmp_path / "x.h5") + "'"}
    from prototxt2py import caffe

    for name, damage in cases.items():
        w = weights_h5(tmp_path / f"{name}.caffemodel.h5", GOOD)
        with h5py.File(w, "a") as f:
            damage(f)
        code, err = run_net(net, w)
        if name == "ghost":
            assert code == 0 and "does not have (ignored): ghost" in err, err
            caffe.Net(str(net), str(w), caffe.TEST).load_hdf5(str(w))  # pycaffe's reader agrees
            continue
        assert code == 1, (name, err)
        assert f"{name}.caffemodel.h5: {expected[name]}" in err, (name, err)
        assert len(err.strip().splitlines()) == 1, err


def solver_case(tmp_path: Path) -> Path:
    from train_util import make_case

    return make_case(tmp_path)


def state_h5(path: Path, it: object = np.array([1], "i4"), history: object = "good",
             learned: object = None) -> Path:
    with h5py.File(path, "w") as f:
        if isinstance(it, str):
            f.create_group("iter")
        else:
            f["iter"] = it
        f["current_step"] = np.array([0], "i4")
        if learned == "group":
            f.create_group("learned_net")
        if history == "dataset":
            f["history"] = np.zeros(3, "f4")
        else:
            g = f.create_group("history")
            shapes = [(10, 8), (10,), (3, 10), (3,)]
            if history == "big":
                shapes[0] = (400_000_000,)
            for i, shape in enumerate(shapes):
                if shape == (400_000_000,):
                    g.create_dataset(str(i), shape=shape, dtype="f4", chunks=(1 << 16,))
                else:
                    g[str(i)] = np.zeros(shape, "f4")
    return path


def test_malformed_hdf5_solver_states_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   reads: list[str]) -> None:
    """Each was exit 3 (IndexError, ValueError, TypeError); a 400M-value history dataset was read (1.6 GB) before
    its size was compared with the parameter's."""
    solver = solver_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    cases = {
        "empty": ({"it": np.zeros(0, "i4")}, "'iter' is not one number (Caffe's layout is int datasets iter"),
        "nan": ({"it": np.array([np.nan])}, "'iter' is nan, not a 32-bit integer"),
        "text": ({"it": np.array([b"abc"])}, "'iter' is not one number"),
        "group": ({"it": "group"}, "'iter' is not one number"),
        "history": ({"history": "dataset"}, "'history' is missing or not a group"),
        "learned": ({"learned": "group"}, "'learned_net' is not one string"),
        "big": ({"history": "big"}, "history blob 0 has shape (400000000,), parameter 0 of layer 'ip1' has (10, 8)"),
    }
    for name, (kwargs, message) in cases.items():
        state = state_h5(tmp_path / f"{name}.solverstate.h5", **kwargs)
        code, err = run("train", solver.name, "--snapshot", state.name, "--quiet")
        assert code == 1, (name, err)
        assert f"error: {name}.solverstate.h5: {message}" in err, (name, err)
    assert not any(r.startswith("/history/0") for r in reads), reads
    good = state_h5(tmp_path / "good.solverstate.h5", it=np.array([3], "i4"))
    code, err = run("train", solver.name, "--snapshot", good.name, "--iterations", "4", "--quiet")
    assert code == 0, err


def test_mean_file_with_negative_or_wrapping_dims_names_the_file(tmp_path: Path) -> None:
    """``Blob::Reshape`` refuses a negative dim and a count over INT_MAX; a product taken in int64 wrapped to the
    number of values stored (exit 3 before)."""
    from prototxt2py.data import DataError
    from prototxt2py.data.datum import read_mean
    from prototxt2py.proto import caffe_pb2

    a, b = 5249979066121302519, 1714306180857713984  # a * b == 192 (mod 2**64)
    for name, dims, message in (("neg", [-1, -1, 192], r"dim 0 is negative \(-1\)"),
                                ("wrap", [1, a, b], r"dim 1 = 5249979066121302519 is beyond Caffe's 32-bit int dims"),
                                ("neg4", [-1, -1, 3, 64], r"dim 0 is negative")):
        blob = caffe_pb2.BlobProto(data=np.zeros(192, "f4"))
        blob.shape.dim.extend(dims)
        path = tmp_path / f"{name}.binaryproto"
        path.write_bytes(blob.SerializeToString())
        with pytest.raises(DataError, match=rf"^layer 'data': mean_file '.*{name}.binaryproto' shape: {message}"):
            read_mean(str(path), "data")


def test_double_data_beyond_float_range_is_inf_without_a_numpy_warning(net: Path, tmp_path: Path) -> None:
    """Caffe's cast gives inf; numpy printed a two-line RuntimeWarning on stderr."""
    from prototxt2py.proto import caffe_pb2

    model = caffe_pb2.NetParameter()
    layer = model.layer.add(name="ip", type="InnerProduct")
    layer.blobs.add(double_data=[1e300, 0, 0, 0]).shape.dim.extend([2, 2])
    layer.blobs.add(data=[0, 0]).shape.dim.extend([2])
    w = tmp_path / "w.caffemodel"
    w.write_bytes(model.SerializeToString())
    for to in ("safetensors", "pytorch"):
        out = tmp_path / f"o.{to}"
        proc = subprocess.run([sys.executable, "-W", "default", "-m", "prototxt2py", "convert", str(net), "--weights",
                               str(w), "--to", to, "-o", str(out)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "RuntimeWarning" not in proc.stderr and "overflow" not in proc.stderr, proc.stderr
    import torch

    assert torch.load(tmp_path / "o.pytorch", weights_only=True)["layers.ip.weight"][0, 0] == float("inf")


def test_convert_to_python_that_cannot_be_written_names_the_file_and_leaves_no_folder(net: Path,
                                                                                      tmp_path: Path) -> None:
    """Under a file-size limit the message blamed standard output, and the new folder stayed behind, empty."""
    from prototxt2py.proto import caffe_pb2

    model = caffe_pb2.NetParameter()
    layer = model.layer.add(name="ip", type="InnerProduct")
    layer.blobs.add(data=np.zeros(4)).shape.dim.extend([2, 2])
    layer.blobs.add(data=np.zeros(2)).shape.dim.extend([2])
    big = "\n".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "ip" top: "ip" }}' for i in range(400))
    (tmp_path / "big.prototxt").write_text(NET + big)
    (tmp_path / "w.caffemodel").write_bytes(model.SerializeToString())

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    out = tmp_path / "new" / "py"
    proc = subprocess.run([sys.executable, "-m", "prototxt2py", "convert", str(tmp_path / "big.prototxt"),
                           "--weights", str(tmp_path / "w.caffemodel"), "--to", "python", "-o", str(out)],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {out}/t.py: cannot write the output: File too "
                                                           "large"), proc.stderr
    assert not (tmp_path / "new").exists()


def test_bad_database_records_name_the_database(tmp_path: Path) -> None:
    lmdb = pytest.importorskip("lmdb")
    from prototxt2py.data.datum import image_datum

    db = tmp_path / "db"
    env = lmdb.open(str(db), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"a", image_datum(np.zeros((1, 2, 2), np.uint8), 0).SerializeToString())
        txn.put(b"zz", b"\xff\xff\xff")
    env.close()
    code, err = run("compute-image-mean", str(db), str(tmp_path / "mean.binaryproto"))
    assert code == 1, err
    assert err.strip() == f"error: database '{db}': record 'zz' is not a Caffe Datum", err


def test_outputs_with_names_near_the_file_name_limit_are_written(net: Path, tmp_path: Path) -> None:
    """A temporary named ``.<name>.XXXXXXXX.tmp`` was 14 characters longer than a name that fits (255 bytes)."""
    name = "n" * 245
    (tmp_path / "long.prototxt").write_text(f'name: "{name}"\n' + NET.split("\n", 1)[1])
    code, err = run("convert", str(tmp_path / "long.prototxt"), "--to", "python", "-o", str(tmp_path / "py"))
    assert code == 0, err
    assert (tmp_path / "py" / f"{name}.py").is_file()
    out = tmp_path / ("w" * 243 + ".caffemodel")
    code, err = run("convert", str(net), "--to", "caffemodel", "-o", str(out))
    assert code == 0, err
    assert out.is_file()


def test_convert_to_python_writes_through_a_symlink_to_another_device(net: Path, tmp_path: Path) -> None:
    """The temporary was made in the output folder and renamed onto the link's target on another file system
    (EXDEV), after the .py had already been replaced: a mismatched pair and a message naming the temporary."""
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to link to")
    from prototxt2py.proto import caffe_pb2

    model = caffe_pb2.NetParameter()
    layer = model.layer.add(name="ip", type="InnerProduct")
    layer.blobs.add(data=[1, 2, 3, 4]).shape.dim.extend([2, 2])
    layer.blobs.add(data=[5, 6]).shape.dim.extend([2])
    (tmp_path / "w.caffemodel").write_bytes(model.SerializeToString())
    folder = tmp_path / "py"
    folder.mkdir()
    target = other / f"prototxt2py-test-{os.getpid()}.pt"
    target.write_bytes(b"old")
    try:
        (folder / "t.pt").symlink_to(target)
        code, err = run("convert", str(net), "--weights", str(tmp_path / "w.caffemodel"), "--to", "python", "-o",
                        str(folder))
        assert code == 0, err
        assert (folder / "t.pt").is_symlink()
        import torch

        state = torch.load(target, weights_only=True)
        assert state and next(iter(state.values())).flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
        assert not list(folder.glob(".*.tmp")) and not list(other.glob(".t.pt.*.tmp"))
    finally:
        target.unlink()


def test_convert_to_python_into_an_empty_folder_name_is_refused(net: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``-o ''`` wrote into the working directory (``Path("")`` is ``.``)."""
    monkeypatch.chdir(tmp_path)
    code, err = run("convert", str(net), "--to", "python", "-o", "")
    assert code == 1 and err.strip() == "error: '': the output folder name is empty", err
    assert not (tmp_path / "t.py").exists()


def test_hdf5_data_sizes_are_checked_before_the_rows_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A never-written 3e9-row dataset (beyond Caffe's INT_MAX blob) was read into 12 GB before any check."""
    from prototxt2py.data import DataError
    from prototxt2py.data.hdf5 import load_file

    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(3_000_000_000, 1), dtype="f4", chunks=(1 << 16, 1))
        f.create_dataset("label", shape=(3,), dtype="f4")
    with pytest.raises(DataError, match=r"^layer 'd': dataset 'data' of .*d.h5: dim 0 = 3000000000 is beyond "
                                        r"Caffe's 32-bit int dims"):
        load_file(str(path), ("data", "label"), "d")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(100_000_000, 4), dtype="f4", chunks=(1 << 16, 4))  # 1.6 GB declared
        f.create_dataset("label", shape=(3,), dtype="f4")
    read = []
    monkeypatch.setattr(np, "ascontiguousarray", lambda *a, **k: read.append(a) or np.zeros(1))
    with pytest.raises(DataError, match=r"different row counts \('data' 100000000, 'label' 3\)"):
        load_file(str(path), ("data", "label"), "d")
    assert read == []


def test_hdf5_oddities_from_review_are_one_line(net: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A null dataspace (``h5py.Empty``) as a blob, and a ``learned_net`` that is an object reference: both were
    exit 3 (TypeError); a variable-length int array as ``learned_net`` was taken as the name ''."""
    w = weights_h5(tmp_path / "empty.caffemodel.h5", GOOD)
    with h5py.File(w, "a") as f:
        del f["data/ip/1"]
        f["data/ip"].create_dataset("1", data=h5py.Empty("f4"))
    code, err = run_net(net, w)
    assert code == 1 and "dataset '/data/ip/1' is empty (a null dataspace" in err, err
    solver = solver_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name, make in (("ref", lambda f: f.create_dataset("learned_net", data=f["iter"].ref,
                                                          dtype=h5py.ref_dtype)),
                       ("vlen", lambda f: f.create_dataset("learned_net", (1,), dtype=h5py.vlen_dtype("i4")))):
        state = state_h5(tmp_path / f"{name}.solverstate.h5")
        with h5py.File(state, "a") as f:
            make(f)
        code, err = run("train", solver.name, "--snapshot", state.name, "--quiet")
        assert code == 1 and "'learned_net' is not one string" in err, (name, err)


def test_double_data_overflow_is_silent_in_mean_files_and_states(tmp_path: Path) -> None:
    import warnings

    from prototxt2py.data.datum import read_mean
    from prototxt2py.proto import caffe_pb2
    from prototxt2py.train.snapshot import read_solverstate

    blob = caffe_pb2.BlobProto(double_data=[1e300, 0, 0])
    blob.shape.dim.extend([1, 1, 3])
    (tmp_path / "m.binaryproto").write_bytes(blob.SerializeToString())
    state = caffe_pb2.SolverState(iter=1)
    state.history.add().CopyFrom(blob)
    (tmp_path / "s.solverstate").write_bytes(state.SerializeToString())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_mean(str(tmp_path / "m.binaryproto"))[0, 0, 0] == np.inf
        assert read_solverstate(tmp_path / "s.solverstate").history[0][0, 0, 0] == np.inf


def test_fuzz_findings_are_one_line(net: Path, tmp_path: Path) -> None:
    """A dataset named with a non-ASCII digit ('²'.isdigit() is true, int('²') raises), a soft link that loops
    (h5py raises RuntimeError), and a blob of no values in a shape numpy cannot index: each was exit 3."""
    from prototxt2py.data import DataError
    from prototxt2py.data.hdf5 import load_file
    from prototxt2py.proto import caffe_pb2

    sup = weights_h5(tmp_path / "sup.caffemodel.h5", {**GOOD, "²": np.ones(2, "f4")})
    code, err = run_net(net, sup)
    assert code == 1 and "group '/data/ip' holds '²', expected datasets named 0, 1" in err, err
    loop = weights_h5(tmp_path / "loop.caffemodel.h5", GOOD)
    with h5py.File(loop, "a") as f:
        del f["data/ip/0"]
        f["data/ip/0"] = h5py.SoftLink("/data/ip/0")
    code, err = run_net(net, loop)
    assert code == 1 and "'/data/ip/0' cannot be opened" in err, err
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data"] = h5py.SoftLink("/data")
        f["label"] = np.zeros(2, "f4")
    with pytest.raises(DataError, match="cannot read HDF5 file .*d.h5"):
        load_file(str(tmp_path / "d.h5"), ("data", "label"), "d")
    model = caffe_pb2.NetParameter()
    model.layer.add(name="ip", type="InnerProduct").blobs.add().shape.dim.extend([0, 2147483647, 2147483647])
    (tmp_path / "zero.caffemodel").write_bytes(model.SerializeToString())
    code, err = convert_net(net, tmp_path / "zero.caffemodel")
    assert code == 1 and "blob 0 has shape (0, 2147483647, 2147483647), which numpy cannot hold" in err, err


def test_a_pair_of_outputs_is_replaced_both_or_neither(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``convert --to python`` (.py + .pt), ONNX with external data and solver snapshots replace two files; when
    the second rename failed, the first was already new (or, for ONNX, the earlier data file was deleted)."""
    from prototxt2py import fsutil

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    b.write_text("old b")
    (tmp_path / "new_a").write_text("new a")
    (tmp_path / "new_b").write_text("new b")
    real = fsutil.os.replace

    def failing(src: object, dst: object) -> None:
        if Path(dst) == b and Path(src).name == "new_b":
            raise PermissionError(1, "Operation not permitted", str(dst))
        real(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", failing)
    with pytest.raises(PermissionError):
        fsutil.replace_together([(tmp_path / "new_a", a), (tmp_path / "new_b", b)])
    assert a.read_text() == "old a" and b.read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "new_b"]  # new_a went in and was taken out
    monkeypatch.setattr(fsutil.os, "replace", real)
    fsutil.replace_together([(tmp_path / "new_b", b)])
    assert b.read_text() == "new b" and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_a_state_naming_a_folder_as_its_weights_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    solver = solver_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    for learned, why in ((str(tmp_path), "are not a regular file"), ("gone.caffemodel", "do not exist")):
        state = state_h5(tmp_path / "s.solverstate.h5")
        with h5py.File(state, "a") as f:
            f["learned_net"] = np.bytes_(learned.encode())
        code, err = run("train", solver.name, "--snapshot", state.name, "--quiet")
        assert code == 1 and f"the weights it names, {learned}, {why}" in err, err
