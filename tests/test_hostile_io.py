"""Inputs that are not what they seem (FIFOs, devices, databases, archives of other things) and outputs that
cannot be written: one error line and exit 1, never a hang, a traceback, exit 3, or a damaged input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from golden import GOLDEN

from prototxt2py.cli import main
from prototxt2py.data import DataError
from prototxt2py.errors import InputFileError

DATASETS = GOLDEN / "data" / "datasets"
NET = """name: "t"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
"""


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed entry point as a process: file descriptor 2 and exit codes as a user sees them."""
    return subprocess.run([sys.executable, "-m", "prototxt2py", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A named pipe nobody writes to (opening it for reading blocks), with an alarm in case a reader does."""
    path = tmp_path / "fifo"
    os.mkfifo(path)

    def hung(*_: object) -> None:
        raise TimeoutError("blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        yield path
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_data_files_that_are_fifos_are_refused(fifo: Path) -> None:
    from prototxt2py.data.datum import read_mean
    from prototxt2py.data.image_data import read_list
    from prototxt2py.data.images import read

    with pytest.raises(DataError, match=r"cannot read mean_file '.*fifo': not a regular file \(a device, FIFO"):
        read_mean(str(fifo))
    with pytest.raises(DataError, match=r"cannot read image list '.*fifo': not a regular file"):
        read_list(str(fifo))
    with pytest.raises(DataError, match=r"could not open or find file '/dev/zero': not a regular file"):
        read("/dev/zero", "color")


def test_weights_and_databases_that_are_fifos_are_refused(fifo: Path, tmp_path: Path) -> None:
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    r = cli("convert", str(net), "--weights", str(fifo), "--to", "onnx", "-o", str(tmp_path / "a.onnx"))
    assert (r.returncode, r.stderr) == (1, f"error: {fifo}: not a regular file\n")
    r = cli("compute-image-mean", str(fifo), str(tmp_path / "m.binaryproto"))
    assert r.returncode == 1 and r.stderr == (f"error: data source '{fifo}' is not a database folder or file (a "
                                              "device, FIFO or socket?)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "net.prototxt"]


def test_outputs_never_land_inside_an_input_database(tmp_path: Path) -> None:
    """``compute-image-mean db db/data.mdb`` once replaced the LMDB it read with the mean (exit 0)."""
    db = tmp_path / "db"
    shutil.copytree(DATASETS / "color_raw_lmdb", db)
    before = {p.name: p.read_bytes() for p in db.iterdir()}
    for target in (db / "data.mdb", tmp_path / "." / "db" / ".." / "db" / "lock.mdb", db / "new.binaryproto"):
        r = cli("compute-image-mean", str(db), str(target))
        assert r.returncode == 1, r.stderr
        assert r.stderr == (f"error: {target}: refusing to overwrite an input file (or a file of an input "
                            "database) with the output\n")
    r = cli("compute-image-mean", str(db), str(tmp_path / "m.binaryproto"), "--backend", "leveldb")
    assert r.returncode == 1 and "not a LevelDB folder (no CURRENT file)" in r.stderr
    assert {p.name: p.read_bytes() for p in db.iterdir()} == before  # no LOCK or LOG left by LevelDB either
    r = cli("compute-image-mean", str(db), str(tmp_path / "m.binaryproto"))
    assert r.returncode == 0 and (tmp_path / "m.binaryproto").is_file()


def test_inputs_archive_of_something_else(tmp_path: Path) -> None:
    from prototxt2py.runner import read_inputs

    plain = tmp_path / "plain.npz"
    with open(plain, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(InputFileError, match=r"plain.npz: a single .npy array, expected an .npz of named arrays"):
        read_inputs(plain)
    other = tmp_path / "other.npz"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("x.txt", "hi")
    with pytest.raises(InputFileError, match=r"other.npz: member 'x.txt' of the archive is not a .npy array"):
        read_inputs(other)
    text = tmp_path / "text.npz"
    text.write_text("data: 1 2 3\n")  # numpy would call it pickled data and suggest allow_pickle=True
    with pytest.raises(InputFileError, match=r"text.npz: not an .npz archive of arrays \(np.savez"):
        read_inputs(text)


def test_a_directory_as_output_is_exit_1(tmp_path: Path) -> None:
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    (tmp_path / "out").mkdir()
    for args in (["upgrade", str(net), str(tmp_path / "out")], ["deploy", str(net), "-o", str(tmp_path / "out")],
                 ["draw", str(net), str(tmp_path / "out")],
                 ["compute-image-mean", str(DATASETS / "color_raw_lmdb"), str(tmp_path / "out")]):
        r = CliRunner().invoke(main, args)
        assert (r.exit_code, r.stderr) == (1, f"error: {tmp_path / 'out'}: output is a directory, expected a file "
                                              "name\n"), args


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_standard_output_that_cannot_be_written(tmp_path: Path) -> None:
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "prototxt2py", "summary", str(net), "--json"], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (1, "error: cannot write to standard output: No space left on device\n")


def test_native_image_library_lines_do_not_reach_stderr(tmp_path: Path) -> None:
    """libpng prints ``libpng error: IHDR: CRC error`` and OpenCV a ``[ WARN ]`` line on their own; the tool's
    warning per skipped image is all a user sees."""
    pytest.importorskip("cv2")
    png = (DATASETS / "images" / "color_00.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(png[:100])
    crc = bytearray(png)
    crc[29] ^= 0xFF  # inside IHDR: its CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(crc))
    (tmp_path / "ok.png").write_bytes(png)
    (tmp_path / "list.txt").write_text("trunc.png 1\ncrc.png 0\nok.png 1\n")
    r = cli("convert-imageset", "./", "list.txt", "db", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "warning: could not read './trunc.png': skipped\nwarning: could not read './crc.png': skipped\n"
    assert r.stdout == "wrote 1 images to db (lmdb)\n"
