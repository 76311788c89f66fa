"""Each class of hostile or broken model file found by fuzzing (issue 20) ends as one located error line and
exit 1 — never an internal error (exit 3), a traceback, a forged line, or a read proportional to a file that
is refused."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from prototxt2py import limits
from prototxt2py.cli import main
from prototxt2py.errors import GraphError, ParseError, Prototxt2pyError, ResourceLimitError, one_line
from prototxt2py.proto import caffe_pb2
from prototxt2py.reader import read_net, read_net_binary_data, read_net_text

HEAD = (
    'name: "t"\n'
    'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
)


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stderr


def one_error_line(code: int, err: str) -> str:
    assert code == 1, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def write(tmp_path: Path, text: str | bytes, name: str = "net.prototxt") -> str:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


# -- text parser ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("escape", ['"\\x"', '"ab\\x"', '"\\xg"', '"\\X"'])
def test_hex_escape_without_digits(escape: str, tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + f'layer {{ name: {escape} type: "ReLU" bottom: "data" top: "y" }}\n')
    line = one_error_line(*cli("summary", path))
    assert f"{path}:3:15: escape '\\" in line and "without hex digits" in line


def test_hex_escape_with_digits_still_works() -> None:
    src = read_net_text(HEAD + 'layer { name: "a\\x41\\x4a" type: "ReLU" bottom: "data" top: "y" }\n')
    assert src.net.layer[1].name == "aAJ"


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "infinity", "1e999", "-1e400"])
def test_non_finite_layer_parameter(value: str, tmp_path: Path) -> None:
    # PriorBox min_size: inf used to reach an int() conversion inside shape inference.
    path = write(tmp_path, HEAD + 'layer { name: "pb" type: "PriorBox" bottom: "data" bottom: "data" top: "p" '
                                  f"prior_box_param {{ min_size: {value} }} }}\n")
    line = one_error_line(*cli("summary", path))
    assert f"{path}:3:104: field 'min_size' is" in line and "not a finite number" in line


def test_infinity_allowed_where_meaningful() -> None:
    src = read_net_text(HEAD + 'layer { name: "c" type: "Clip" bottom: "data" top: "c" '
                               "clip_param { min: -inf max: inf } }\n")
    assert src.net.layer[1].clip_param.max == float("inf")
    with pytest.raises(ParseError, match="'max' is 'nan'"):
        read_net_text(HEAD + 'layer { name: "c" type: "Clip" bottom: "data" top: "c" clip_param { min: 0 max: nan } }')


@pytest.mark.parametrize("dim", ["2147483648", "9223372036854775807", "-2147483649"])
def test_dims_beyond_int32(dim: str, tmp_path: Path) -> None:
    path = write(tmp_path, f'layer {{ name: "d" type: "Input" top: "d" input_param {{ shape {{ dim: 1 dim: {dim} }} }} '
                           "}")
    line = one_error_line(*cli("summary", path))
    assert f"{path}:1:" in line and "out of range for field 'dim' (Caffe holds it in a 32-bit int)" in line


def test_int32_max_dim_parses_and_is_refused_by_the_element_limit() -> None:
    src = read_net_text('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 2147483647 dim: 2 } } }')
    assert list(src.net.layer[0].input_param.shape[0].dim) == [2**31 - 1, 2]
    with pytest.raises(ResourceLimitError, match="4,294,967,294 elements, over the limit of 2,147,483,647"):
        limits.check_shape((2**31 - 1, 2), "top 'd'")


@pytest.mark.parametrize("field", ["top", "bottom"])
def test_empty_blob_name(field: str, tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + f'layer {{ name: "r" type: "ReLU" bottom: "data" top: "y" {field}: "" }}\n')
    line = one_error_line(*cli("summary", path))
    assert f"{path}:3:7: layer 'r': {field} 1 has an empty blob name" in line


def test_nesting_depth_is_limited() -> None:
    # No Caffe message nests itself; a hostile file still must not reach a RecursionError.
    from prototxt2py import textformat
    from prototxt2py.proto import caffe_pb2 as pb

    text = "layer { " * 50
    with pytest.raises(ParseError):
        textformat.parse(text, pb.NetParameter())
    msg = pb.NetParameter()
    parser = textformat._Parser("layer { name: 'a' }", "<s>", False)
    parser.depth = textformat.MAX_DEPTH
    with pytest.raises(ParseError, match="nested more than 100 deep"):
        parser.parse_fields(msg, (), None)


def test_huge_numbers_are_one_short_line(tmp_path: Path) -> None:
    digits = "9" * 20000
    path = write(tmp_path, HEAD + f'layer {{ name: "r" type: "ReLU" bottom: "data" top: "y" '
                                  f"relu_param {{ negative_slope: 0x{digits} }} }}\n")
    line = one_error_line(*cli("summary", path))
    assert len(line) < 400 and "characters)" in line


# -- names are data --------------------------------------------------------------------------------------------
FORGING = ["a\nerror: forged", "a\rerror: x", "a\x1b[31mred", "a\u2028b", "a\x85b", "a\x00b", "a\u202eb"]


@pytest.mark.parametrize("name", FORGING)
def test_names_cannot_forge_error_lines(name: str, tmp_path: Path) -> None:
    quoted = name.encode("unicode_escape").decode().replace('"', '\\"')
    quoted = quoted.replace("\\u2028", "\u2028").replace("\\u202e", "\u202e").replace("\\x85", "\\302\\205")
    path = write(tmp_path, HEAD + f'layer {{ name: "{quoted}" type: "ReLU" bottom: "nothere" top: "y" }}\n')
    line = one_error_line(*cli("summary", path))
    assert "is not produced by any earlier layer" in line
    assert line.isprintable()


def test_one_line_escapes_every_line_break() -> None:
    breaks = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    text = one_line(f"a{breaks}b")
    assert len(text.splitlines()) == 1 and text.isprintable()
    assert str(GraphError("x\ny", layer="l\nm")) == "layer 'l\\nm': x\\ny"


def test_warnings_are_one_line_each(tmp_path: Path) -> None:
    from prototxt2py.cli import _warn

    runner = CliRunner()
    r = runner.invoke(main, ["layers"])  # any command; _warn is tested directly below
    assert r.exit_code == 0
    import click

    @click.command()
    def cmd() -> None:
        _warn(["one\nerror: two"])

    r = runner.invoke(cmd)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("warning: one\\nerror: two")


# -- binary nets ---------------------------------------------------------------------------------------------
def _binary_net_with_name(name: bytes) -> bytes:
    layer = caffe_pb2.LayerParameter(name="PLACEHOLDER", type="ReLU", bottom=["data"], top=["y"])
    raw = layer.SerializeToString().replace(b"\x0a\x0bPLACEHOLDER", b"\x0a" + bytes([len(name)]) + name)
    return b"\xa2\x06" + bytes([len(raw)]) + raw


def test_binary_net_names_not_utf8(tmp_path: Path) -> None:
    data = _binary_net_with_name(b"\xff\xfe bad")
    with pytest.raises(ParseError, match="field .name. is not valid UTF-8"):
        read_net_binary_data(data, "net.bin")
    path = write(tmp_path, data, "net.caffemodel")
    line = one_error_line(*cli("upgrade", path, str(tmp_path / "out.prototxt")))
    assert "field 'name' is not valid UTF-8" in line
    assert not (tmp_path / "out.prototxt").exists()


def test_binary_net_non_finite_parameter() -> None:
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="pb", type="PriorBox", bottom=["a", "b"], top=["p"])
    layer.prior_box_param.min_size.append(float("inf"))
    with pytest.raises(ParseError, match="layer 'pb': field 'min_size' is inf"):
        read_net_binary_data(net.SerializeToString(), "net.bin")


def test_binary_net_dims_beyond_int32() -> None:
    net = caffe_pb2.NetParameter()
    net.layer.add(name="d", type="Input", top=["d"]).input_param.shape.add(dim=[1, 2**40])
    with pytest.raises(ParseError, match="layer 'd': integer 1099511627776 out of range for field 'dim'"):
        read_net_binary_data(net.SerializeToString(), "net.bin")


def test_binary_net_empty_top() -> None:
    net = caffe_pb2.NetParameter()
    net.layer.add(name="d", type="Input", top=[""])
    with pytest.raises(GraphError, match="layer 'd': top 0 has an empty blob name"):
        read_net_binary_data(net.SerializeToString(), "net.bin")


# -- files refused without being read whole --------------------------------------------------------------
def _sparse(path: Path, head: bytes, size: int) -> str:
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)
    return str(path)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("command", ["summary", "upgrade", "draw", "weights"])
def test_big_random_file_is_refused_without_reading_it(command: str, tmp_path: Path) -> None:
    big = _sparse(tmp_path / "random.bin", os.urandom(4096), 1 << 30)  # 1 GB, costs no disk
    net = write(tmp_path, HEAD)
    args = {
        "summary": ["summary", big],
        "upgrade": ["upgrade", big, str(tmp_path / "out.prototxt")],
        "draw": ["draw", big, str(tmp_path / "out.dot")],
        "weights": ["convert", net, "--weights", big, "--to", "pytorch", "-o", str(tmp_path / "out.pt")],
    }[command]
    result: list = []
    peak = _peak_bytes(lambda: result.append(cli(*args)))
    one_error_line(*result[0])
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MB allocated to refuse a 1 GB file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt", "random.bin"]


def test_big_text_file_is_refused_before_parsing(tmp_path: Path) -> None:
    text = HEAD + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n' * 200
    big = _sparse(tmp_path / "big.prototxt", text.encode() + b"#", 200 << 20)  # text, then 200 MB of NULs
    result: list = []
    peak = _peak_bytes(lambda: result.append(cli("summary", big)))
    line = one_error_line(*result[0])
    assert "text file of 200.0 MiB is over the 16.0 MiB limit" in line and "PROTOTXT2PY_MAX_TEXT_BYTES" in line
    assert peak < 16 << 20


def test_text_limit_can_be_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, HEAD + "# padding\n" * 300)
    with limits.override(max_text_bytes=1000), pytest.raises(ResourceLimitError, match="over the 1000 bytes limit"):
        read_net(path)
    monkeypatch.setenv("PROTOTXT2PY_MAX_TEXT_BYTES", "2000")
    monkeypatch.setattr(limits, "_current", None)
    with pytest.raises(ResourceLimitError):
        read_net(path)
    monkeypatch.setenv("PROTOTXT2PY_MAX_TEXT_BYTES", "none")
    monkeypatch.setattr(limits, "_current", None)
    assert read_net(path).net.name == "t"
    monkeypatch.setattr(limits, "_current", None)


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null"])
def test_device_files_are_refused(special: str) -> None:
    if not os.path.exists(special):
        pytest.skip(f"no {special}")
    line = one_error_line(*cli("summary", special))
    assert "not a regular file" in line


def test_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.prototxt"
    os.mkfifo(fifo)
    line = one_error_line(*cli("summary", str(fifo)))
    assert "not a regular file" in line


def test_errors_are_the_projects_own_type() -> None:
    assert issubclass(ResourceLimitError, Prototxt2pyError)


# -- caffemodel framing walk bounds ------------------------------------------------------------------------
def test_caffemodel_of_millions_of_tiny_layers_is_refused_quickly(tmp_path: Path) -> None:
    import time

    from prototxt2py.errors import WeightsError
    from prototxt2py.weights import MAX_LAYERS, read_caffemodel

    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(b"\xa2\x06\x00" * (MAX_LAYERS + 10))  # 3 MB of empty V2 layers
    start = time.monotonic()
    with pytest.raises(WeightsError, match="more than 1,000,000 layers"):
        read_caffemodel(path)
    assert time.monotonic() - start < 30


def test_caffemodel_blob_with_too_many_axes(tmp_path: Path) -> None:
    from prototxt2py.errors import WeightsError
    from prototxt2py.weights import read_caffemodel

    net = caffe_pb2.NetParameter()
    net.layer.add(name="c").blobs.add().shape.dim.extend([1] * 40)
    path = tmp_path / "axes.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match="more than 32 axes"):
        read_caffemodel(path)


def test_caffemodel_unpacked_doubles_are_read(tmp_path: Path) -> None:
    """Legal but non-canonical (unpacked) arrays go to protobuf instead of being misread."""
    import struct

    from prototxt2py.weights import read_caffemodel

    unpacked = b"".join(b"\x41" + struct.pack("<d", v) for v in (1.5, -2.0))  # field 8, wire type 1, per value
    blob = b"\x3a\x02\x08\x02" + unpacked  # shape { dim: 2 }, then the doubles
    layer = b"\x0a\x01c" + b"\x3a" + bytes([len(blob)]) + blob  # name "c", blobs (field 7)
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(b"\xa2\x06" + bytes([len(layer)]) + layer)
    assert list(caffe_pb2.NetParameter.FromString(path.read_bytes()).layer[0].blobs[0].double_data) == [1.5, -2.0]
    assert read_caffemodel(path)["c"][0].array.tolist() == [1.5, -2.0]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom"])
def test_a_net_saved_as_utf16_text_reads_as_its_utf8_copy(encoding: str, tmp_path: Path) -> None:
    """A Windows editor's "Unicode" is UTF-16 with a byte-order mark: its NUL bytes once made it "a binary
    protobuf file (a .caffemodel?)"."""
    text = 'name: "é"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
    data = text.encode("utf-16") if encoding == "utf-16" else b"\xfe\xff" + text.encode("utf-16-be")
    (tmp_path / "wide.prototxt").write_bytes(data)
    (tmp_path / "plain.prototxt").write_text(text, encoding="utf-8")
    wide, plain = read_net(tmp_path / "wide.prototxt"), read_net(tmp_path / "plain.prototxt")
    assert wide.net == plain.net and wide.net.name == "é"


def test_a_path_the_system_refuses_is_one_line(tmp_path: Path) -> None:
    """A name over the file system's limit (ENAMETOOLONG, raised by whichever call meets it first) was an
    internal error, exit 3."""
    net = tmp_path / "net.prototxt"
    net.write_text(HEAD + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    out = str(tmp_path / ("o" * 300))
    for args in (("upgrade", str(net), out), ("convert", str(net), "--to", "onnx", "-o", out)):
        code, err = cli(*args)
        assert code == 1, err
        assert err.splitlines()[-1] == f"error: {out[:80]}... ({len(out)} characters): File name too long", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt"]


@pytest.mark.parametrize("spelling", ["17", "017", "00", "0", "-017", "08", "019", "0x1F", "-0x10", "1e3", "0.5",
                                      "017.5", "0e5", ".5", "5f"])
def test_numbers_are_read_as_protobufs_text_format(spelling: str) -> None:
    """Caffe reads prototxt with protobuf's text format: a leading zero means octal (``kernel_size: 017`` is 15;
    ``08`` is refused), and float fields take decimal numbers only (no hex, no octal). Differential against
    protobuf's own Python parser, field by field; a value both accept must be the same."""
    from google.protobuf import text_format

    from prototxt2py import textformat

    for message, field in ((caffe_pb2.ConvolutionParameter, "kernel_size"), (caffe_pb2.ConvolutionParameter, "pad"),
                           (caffe_pb2.ParamSpec, "lr_mult"), (caffe_pb2.BlobShape, "dim")):
        text = f"{field}: {spelling}"
        try:
            want = text_format.Parse(text, message())
        except text_format.ParseError:
            want = None
        got = message()
        try:
            textformat.parse(text, got)
        except ParseError:
            got = None
        assert (got is None) == (want is None), (text, got, want)
        assert got == want, text


def test_one_stray_control_byte_in_a_text_net_is_located(tmp_path: Path) -> None:
    """One control byte in a text prototxt is that text's syntax error at its line:col (it was called "a binary
    protobuf file"); a binary's keys and lengths give several such bytes, and it is still told apart."""
    text = 'name: "n"\nlayer { name: "data" type: "Input" top: "data"\x01 input_param { shape { dim: 1 } } }\n'
    (tmp_path / "stray.prototxt").write_text(text)
    with pytest.raises(ParseError, match=r"stray.prototxt:2:47: unexpected character '\\x01'"):
        read_net(tmp_path / "stray.prototxt")
    (tmp_path / "binary.prototxt").write_bytes(caffe_pb2.NetParameter(name="n", input=["data"]).SerializeToString())
    with pytest.raises(Prototxt2pyError, match="binary.prototxt: this is a binary protobuf file"):
        read_net(tmp_path / "binary.prototxt")


def test_a_long_digit_run_before_a_letter_is_refused_at_once(tmp_path: Path) -> None:
    """The number pattern is atomic: without it, ``finditer`` backtracked over every digit at every position
    after the bad token (3,000 digits took minutes). Run in a subprocess so that a regression fails on its
    timeout instead of hanging the suite."""
    import subprocess
    import sys

    path = tmp_path / "digits.prototxt"
    path.write_text('layer { name: "a" type: "Input" top: "x" input_param { shape { dim: ' + "1" * 3000 + "x } } }\n")
    proc = subprocess.run([sys.executable, "-m", "prototxt2py", "summary", str(path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {path}:1:69: unexpected character '1'"
