"""Bad input gives one line naming the place, exit code 1, no traceback and no output file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from golden import GOLDEN, SHARED

from prototxt2py.cli import main

GOOD_HEAD = (
    'name: "t"\n'
    'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
)


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def write(tmp_path: Path, text: str | bytes, name: str = "net.prototxt") -> str:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


BAD = {
    "missing_file": (None, "no such file"),
    "empty_file": ("", "file is empty"),
    "binary_as_text": (b"\x0a\x05lenet\x12\x00\x00\x01", "binary protobuf"),
    "syntax_error": (
        GOOD_HEAD + "layer { name: 'x' type: 'ReLU' bottom: 'data' top: 'data' \n", ":4:1: unexpected end of file"
    ),
    "unknown_layer_type": (GOOD_HEAD + 'layer { name: "odd" type: "NoSuchLayer" bottom: "data" top: "o" }\n',
                           "unknown layer type: 'NoSuchLayer' (layer 'odd' at"),
    "missing_bottom": (GOOD_HEAD + 'layer { name: "r" type: "ReLU" bottom: "nothere" top: "r" }\n',
                       "layer 'r': bottom 'nothere' is not produced by any earlier layer"),
    "duplicate_top": (GOOD_HEAD + 'layer { name: "a" type: "ReLU" bottom: "data" top: "x" }\n'
                      'layer { name: "b" type: "ReLU" bottom: "data" top: "x" }\n',
                      "layer 'b': top 'x' is produced by more than one layer"),
    "inplace_after_a_reader": (GOOD_HEAD + 'layer { name: "a" type: "AbsVal" bottom: "data" top: "y" }\n'
                               'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n',
                               "layer 'r': top 'data' is rewritten in place but has 2 readers ('a', 'r')"),
    "propagate_down_count": (GOOD_HEAD + 'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data" '
                             'top: "e" propagate_down: false }\n',
                             "layer 'e': propagate_down is given 1 times for 2 bottom(s)"),
    "include_and_exclude": (
        GOOD_HEAD + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" '
        'include { phase: TEST } exclude { phase: TRAIN } }\n',
        "layer 'r': layer has both include",
    ),
    "unclosed_string": ('name: "a\nb"\n', ":1:7: string opened here is not closed on this line"),
    "long_field_name": ("y" * 4096, f"after field '{'y' * 40}... (4096 characters)', got ''"),
    "bad_enum": (
        GOOD_HEAD + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MEDIAN } }\n',
        ":3:81: unknown value 'MEDIAN'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line(case: str, tmp_path: Path) -> None:
    content, expected = BAD[case]
    path = str(tmp_path / "absent.prototxt") if content is None else write(tmp_path, content)
    code, out, err = run("summary", path)
    assert code == 1, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert path in lines[0] or case in ("unknown_layer_type",)
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [
    ("summary", "{dir}"), ("upgrade", "{dir}", "{tmp}/up.prototxt"), ("draw", "{dir}", "{tmp}/net.svg"),
    ("deploy", "{dir}", "-o", "{tmp}/deploy.prototxt"), ("convert", "{dir}", "--to", "onnx", "-o", "{tmp}/n.onnx"),
    ("convert", "{net}", "--weights", "{dir}", "--to", "onnx", "-o", "{tmp}/n.onnx"),
    ("run", "{net}", "--inputs", "{dir}", "-o", "{tmp}/o.npz"), ("train", "{dir}"), ("time", "{dir}"),
])
def test_a_directory_given_for_an_input_file_is_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    """As a missing file: exit 1 and one line naming it (click's own check gave exit 2 and a usage text)."""
    folder = tmp_path / "folder.prototxt"
    folder.mkdir()
    net = write(tmp_path, GOOD_HEAD)
    code, out, err = run(*(a.format(dir=folder, tmp=tmp_path, net=net) for a in args))
    assert code == 1, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}: "), err
    assert "directory" in err or "not a regular file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.prototxt", "net.prototxt"]  # nothing written


@pytest.mark.parametrize("value", ["data=1,1,0,28", "data=-1,3", "data=a,b", "data", "=1,2", "data=1,,28,28",
                                   "data=1,1,28x"])
def test_a_malformed_input_shape_is_a_usage_error(value: str, tmp_path: Path) -> None:
    """A bad ``--input`` value is a command-line mistake: click's usage error (exit 2), not an internal error."""
    net = write(tmp_path, GOOD_HEAD)
    for args in (("summary", net), ("convert", net, "--to", "onnx", "-o", str(tmp_path / "n.onnx"))):
        code, _, err = run(*args, "--input", value)
        assert code == 2, (code, err)
        assert f"Invalid value for --input: {value!r}: expected NAME=D0,D1,... with positive integers" in err
        assert "internal error" not in err and "Traceback" not in err
    assert not (tmp_path / "n.onnx").exists()


@pytest.mark.parametrize("value", ["data=9223372036854775808,1", "data=2147483648,3,227,227"])
def test_an_input_shape_beyond_caffes_ints_is_one_error(value: str, tmp_path: Path) -> None:
    """Dims beyond Caffe's 32-bit ints are refused where ``--input`` is read, for every command (``deploy`` wrote
    one into a net, and protobuf's range error was exit 3)."""
    net = write(tmp_path, GOOD_HEAD)
    for args in (("summary", net), ("deploy", net, "-o", str(tmp_path / "d.prototxt"))):
        code, _, err = run(*args, "--input", value)
        assert code == 1, (code, err)
        assert err.strip() == (f"error: --input data: dim 0 = {value.split('=')[1].split(',')[0]} is beyond Caffe's "
                               f"32-bit int dims (shape ({value.split('=')[1].replace(',', ', ')}))")
    assert not (tmp_path / "d.prototxt").exists()


def test_upgrade_failure_writes_nothing(tmp_path: Path) -> None:
    src = write(tmp_path, 'layers { name: "a" type: NOT_A_TYPE }\n')
    dst = tmp_path / "out.prototxt"
    code, _, err = run("upgrade", src, str(dst))
    assert code == 1 and "1:26" in err and "NOT_A_TYPE" in err
    assert not dst.exists() and list(tmp_path.iterdir()) == [Path(src)]


def test_summary_json_alexnet_total_params() -> None:
    case = json.loads((GOLDEN / "zoo/bvlc_alexnet/case.json").read_text())
    code, out, err = run("summary", str(SHARED / case["prototxt"]), "--json")
    assert code == 0, err
    js = json.loads(out)
    assert js["total_params"] == 60_965_224
    assert js["blob_shapes"]["pool5"] == [10, 256, 6, 6]


def test_summary_input_override() -> None:
    case = json.loads((GOLDEN / "zoo/bvlc_alexnet/case.json").read_text())
    code, out, err = run("summary", str(SHARED / case["prototxt"]), "--json", "--input", "data=1,3,227,227")
    assert code == 0, err
    assert json.loads(out)["blob_shapes"]["prob"] == [1, 1000]


def test_console_script_runs() -> None:
    exe = Path(sys.executable).with_name("prototxt2py")
    r = subprocess.run([str(exe), "layers"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Convolution" in r.stdout


def test_run_without_known_input_shapes_names_the_cause() -> None:
    import prototxt2py

    net = SHARED / "corpus/alexgkendall__SegNet-Tutorial/Models/segnet_inference.prototxt"
    with pytest.raises(prototxt2py.Prototxt2pyError) as e:
        prototxt2py.load(net)
    assert "shapes are unknown from layer 'data'" in str(e.value) and "--input data=" in str(e.value)



@pytest.mark.parametrize("kind, expected", [
    ("structured", "array 'data' has dtype [('a', '<f4'), ('b', '<i4')], expected a real numeric array"),
    ("complex", "array 'data' has dtype complex64, expected a real numeric array"),
    ("truncated", "not a readable .npz of arrays"),
])
def test_run_refuses_inputs_that_are_no_real_arrays(kind: str, expected: str, tmp_path: Path) -> None:
    """A structured or complex array, or a truncated .npz, is one line naming the file (complex is not cut
    silently to its real part)."""
    import numpy as np

    dtype = {"structured": [("a", "<f4"), ("b", "<i4")], "complex": np.complex64}.get(kind, np.float32)
    net = write(tmp_path, GOOD_HEAD)
    inputs = tmp_path / "in.npz"
    np.savez(inputs, data=np.zeros((1, 3, 8, 8), dtype=dtype))
    if kind == "truncated":
        inputs.write_bytes(inputs.read_bytes()[:100])
    code, _, err = run("run", net, "--inputs", str(inputs), "-o", str(tmp_path / "out.npz"))
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {inputs}: "), err
    assert expected in err and "Warning" not in err
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize(("dims", "bottom", "where"), [
    ("1 3 4 4", "nonexistent", ":7:7: layer 'input': bottom 'nonexistent' is not produced by any earlier layer"),
    ("1 -3 4 4", "data", ": layer 'input': negative output dimension (1, -3, 4, 4) for top 'data'"),
])
def test_a_layer_named_input_keeps_its_location_beside_net_level_inputs(tmp_path: Path, dims: str, bottom: str,
                                                                       where: str) -> None:
    """Net-level inputs become an Input layer named "input" on upgrade; a layer of the file with that name
    keeps its own line (the generated layer took it, and errors of either pointed at the wrong one)."""
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n"\ninput: "data"\n' + "".join(f"input_dim: {d}\n" for d in dims.split())
                    + f'layer {{\n  name: "input"\n  type: "ReLU"\n  bottom: "{bottom}"\n  top: "x"\n}}\n')
    code, _, err = run("summary", str(path))
    assert code == 1
    assert err == f"error: {path}{where}\n"
    # inputs without shapes are dropped (no layer is made): the file's first layer keeps its line
    path.write_text('name: "n"\ninput: "data"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom: "nope"\n  top: "x"\n}\n')
    assert f"error: {path}:3:7: layer 'a': bottom 'nope'" in run("summary", str(path))[2]


def test_comma_separated_stages_are_several_as_in_caffe(tmp_path: Path) -> None:
    """``caffe train --stage=a,b`` splits at commas (get_stages_from_flags); ``--stage a,b`` was one stage
    named "a,b", silently dropping both layers."""
    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'
                    'layer { name: "la" type: "ReLU" bottom: "x" top: "a" include { stage: "a" } }\n'
                    'layer { name: "lb" type: "ReLU" bottom: "x" top: "b" include { stage: "b" } }\n')
    outputs = {}
    for flags in (["--stage", "a,b"], ["--stage", "a", "--stage", "b"], ["--stage", "a"]):
        code, out, err = run("summary", str(path), "--json", *flags)
        assert code == 0, err
        outputs[" ".join(flags)] = list(json.loads(out)["blob_shapes"])
    assert outputs == {"--stage a,b": ["x", "a", "b"], "--stage a --stage b": ["x", "a", "b"],
                       "--stage a": ["x", "a"]}


def test_loss_weights_are_one_per_top_or_none(tmp_path: Path) -> None:
    """Caffe's Layer::SetLossWeights: CHECK_EQ(top.size(), loss_weight_size()) when any is given (a second
    weight on a one-top layer was silently ignored)."""
    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } } }\n'
                    'layer { name: "eu" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "l"\n'
                    "  loss_weight: 0.5 loss_weight: 2 }\n")
    code, _, err = run("summary", str(path))
    assert code == 1
    assert err == (f"error: {path}:2:7: layer 'eu': loss_weight must be unspecified or given once per top: 2 for "
                   "1 top(s)\n")
