"""Every command that writes leaves nothing behind when it fails, and never overwrites one of its inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prototxt2py.cli import main

NET = ('name: "t"\n'
       'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n'
       'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 '
       "kernel_size: 1 } }\n")
# Parses and builds, but the runtime refuses it only late (a Reshape that cannot hold the elements).
LATE_FAILURE = NET + ('layer { name: "r" type: "Reshape" bottom: "conv" top: "r" '
                      "reshape_param { shape { dim: 7 dim: -1 } } }\n")


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stderr


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "netdot.dot").write_text(NET)
    (tmp_path / "late.prototxt").write_text(LATE_FAILURE)
    (tmp_path / "bad.prototxt").write_text(NET + "layer { name: 'x' \n")
    np.savez(tmp_path / "in.npz", data=np.zeros((1, 3, 4, 4), np.float32))
    return {p.stem: p for p in tmp_path.iterdir()}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


COMMANDS = {
    "upgrade": lambda f, out: ["upgrade", str(f["bad"]), out],
    "draw_dot": lambda f, out: ["draw", str(f["bad"]), out + ".dot"],
    "draw_svg": lambda f, out: ["draw", str(f["bad"]), out + ".svg"],
    "convert_pytorch": lambda f, out: ["convert", str(f["late"]), "--to", "pytorch", "-o", out],
    "convert_onnx": lambda f, out: ["convert", str(f["late"]), "--to", "onnx", "-o", out],
    "convert_caffemodel": lambda f, out: ["convert", str(f["late"]), "--to", "caffemodel", "-o", out],
    "run": lambda f, out: ["run", str(f["late"]), "--inputs", str(f["in"]), "-o", out],
    "run_bad_weights": lambda f, out: ["run", str(f["net"]), "--weights", str(f["bad"]), "--inputs", str(f["in"]),
                                       "-o", out],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_failure_leaves_nothing(command: str, files: dict[str, Path], tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    code, err = cli(*COMMANDS[command](files, str(tmp_path / "out")))
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert snapshot(tmp_path) == before  # no output, no temporary file, inputs untouched


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_failure_keeps_an_existing_output(command: str, files: dict[str, Path], tmp_path: Path) -> None:
    args = COMMANDS[command](files, str(tmp_path / "out"))
    out = Path(args[args.index("-o") + 1] if "-o" in args else args[2])
    out.write_bytes(b"previous result")
    before = snapshot(tmp_path)
    code, err = cli(*args)
    assert code == 1, err
    assert snapshot(tmp_path) == before


OVERWRITE = {
    "upgrade": lambda f: ["upgrade", str(f["net"]), str(f["net"])],
    "draw": lambda f: ["draw", str(f["netdot"]), str(f["netdot"])],  # a net saved as .dot, drawn onto itself
    "convert": lambda f: ["convert", str(f["net"]), "--to", "onnx", "-o", str(f["net"])],
    "run_inputs": lambda f: ["run", str(f["net"]), "--inputs", str(f["in"]), "-o", str(f["in"])],
    "run_net": lambda f: ["run", str(f["net"]), "--inputs", str(f["in"]), "-o", str(f["net"])],
}


@pytest.mark.parametrize("command", sorted(OVERWRITE))
def test_output_never_overwrites_an_input(command: str, files: dict[str, Path], tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    code, err = cli(*OVERWRITE[command](files))
    assert code == 1 and "refusing to overwrite an input file" in err, err
    assert snapshot(tmp_path) == before


def test_output_through_another_path_spelling(files: dict[str, Path], tmp_path: Path) -> None:
    link = tmp_path / "link.prototxt"
    link.symlink_to(files["net"])
    code, err = cli("upgrade", str(files["net"]), str(link))
    assert code == 1 and "refusing to overwrite" in err
    assert files["net"].read_text() == NET


def test_success_still_writes(files: dict[str, Path], tmp_path: Path) -> None:
    code, err = cli("draw", str(files["net"]), str(tmp_path / "ok.dot"))
    assert code == 0, err
    assert (tmp_path / "ok.dot").read_text().startswith("digraph")


WRITERS = {
    "upgrade": lambda f, out: ["upgrade", str(f["net"]), out],
    "draw": lambda f, out: ["draw", str(f["net"]), out + ".dot"],
    "convert_onnx": lambda f, out: ["convert", str(f["net"]), "--to", "onnx", "-o", out],
    "convert_caffemodel": lambda f, out: ["convert", str(f["net"]), "--to", "caffemodel", "-o", out],
    "run": lambda f, out: ["run", str(f["net"]), "--inputs", str(f["in"]), "-o", out],
}


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_an_output_path_holding_a_pipe_is_refused(command: str, files: dict[str, Path], tmp_path: Path) -> None:
    """Renaming the result over a pipe or device replaced it with a regular file (``-o /dev/null`` run as root
    turned the device node into a file); such a path is refused before anything is written."""
    args = WRITERS[command](files, str(tmp_path / "out"))
    out = Path(args[-1])
    os.mkfifo(out)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = cli(*args)
    assert code == 1 and err.splitlines()[-1] == f"error: {out}: output exists and is not a regular file (a " \
                                                  "device, pipe or socket); refusing to replace it", err
    assert out.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_output_symlink_is_written_through(files: dict[str, Path], tmp_path: Path) -> None:
    """As ``cp`` does: the link's target gets the output and the link stays a link."""
    target, link = tmp_path / "real.prototxt", tmp_path / "link.prototxt"
    target.write_text("old")
    link.symlink_to(target)
    code, err = cli("upgrade", str(files["net"]), str(link))
    assert code == 0, err
    assert link.is_symlink() and 'name: "t"' in target.read_text()


def test_pycaffe_save_refuses_a_pipe(files: dict[str, Path], tmp_path: Path) -> None:
    from prototxt2py import caffe
    from prototxt2py.errors import InputFileError

    out = tmp_path / "weights.caffemodel"
    os.mkfifo(out)
    net = caffe.Net(str(files["net"]), caffe.TEST)
    with pytest.raises(InputFileError, match="output exists and is not a regular file"):
        net.save(str(out))
    assert out.is_fifo()


def test_a_nul_byte_in_an_output_name_is_one_error(tmp_path: Path) -> None:
    """pycaffe's ``net.save`` (and every writer through ``atomic_output``) names the output; a NUL byte reached
    ``tempfile`` and raised a bare "embedded null byte"."""
    from prototxt2py import caffe
    from prototxt2py.errors import InputFileError

    (tmp_path / "n.prototxt").write_text('layer { name: "data" type: "Input" top: "x" input_param { shape { '
                                         'dim: 1 dim: 2 } } }\n')
    net = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST)
    with pytest.raises(InputFileError, match=r"x\\x00.caffemodel: the output file name holds a NUL byte"):
        net.save(str(tmp_path / "x\0.caffemodel"))
