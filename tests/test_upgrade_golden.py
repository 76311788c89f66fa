"""Golden tests for :mod:`prototxt2py.upgrade` against BVLC Caffe's upgrade tools (``shared/golden/upgrade``).

Each case folder holds a ``case.json`` (see ``shared/golden/SUITES-2.md``, section ``upgrade/``). Upgraded nets
and solvers are compared as messages with Caffe's output parsed by the same schema; binary nets against the
per-layer summary in ``expected.json``; refused inputs must be refused with an error carrying the key fact
of Caffe's error line.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from prototxt2py.errors import ParseError, Prototxt2pyError, UpgradeError
from prototxt2py.proto import caffe_pb2
from prototxt2py.textformat import SourceInfo, parse
from prototxt2py.upgrade import (
    UpgradeReport,
    net_needs_upgrade,
    solver_needs_upgrade,
    upgrade_net,
    upgrade_solver,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SUITE = SHARED / "golden" / "upgrade"

if not SUITE.is_dir():
    pytest.skip(f"golden upgrade suite not found at {SUITE}", allow_module_level=True)

CASES = sorted(p.name for p in SUITE.iterdir() if (p / "case.json").is_file())

# Caffe's protobuf parser messages: "... caffe.NetParameter: 657:31: <what went wrong>".
_PROTOBUF_ERROR = re.compile(r"Error parsing text-format caffe\.\w+: (\d+):(\d+): (.*)$")
_UNKNOWN_FIELD = re.compile(r'Message type "caffe\.(\w+)" has no field named "(\w+)"')
_UNKNOWN_ENUM = re.compile(r'Unknown enumeration value of "(\w+)" for field "(\w+)"')
_TOKEN_GOT = re.compile(r"got: (\S+)")

# Caffe's fatal upgrade errors -> the facts our error text must mention (case-insensitive).
_FATAL_FACTS: list[tuple[re.Pattern[str], object]] = [
    (re.compile(r"Unknown layer name: (\S+)"), lambda m: [m.group(1)]),
    (re.compile(r"non-pooling layer type (\S+)"), lambda m: ["padding", m.group(1)]),
    (re.compile(r"both 'layer' and 'layers'"), lambda m: ["'layer'", "'layers'"]),
    (re.compile(r"solver_type.*type"), lambda m: ["solver_type", "type"]),
]


def load_case(name: str) -> dict:
    case = json.loads((SUITE / name / "case.json").read_text())
    case["_dir"] = SUITE / name
    return case


def input_path(case: dict) -> Path:
    base = SHARED if case.get("input_base") == "shared" else case["_dir"]
    return base / case["input"]


def new_message(case: dict) -> Message:
    return caffe_pb2.SolverParameter() if case["kind"] == "solver_text" else caffe_pb2.NetParameter()


def parse_text(path: Path, message: Message, file: str) -> SourceInfo:
    return parse(path.read_text(encoding="utf-8", errors="replace"), message, file=file)


def assert_same(actual: Message, expected: Message) -> None:
    """Compare messages; on mismatch show a text diff, which is far easier to read than two reprs."""
    if actual == expected:
        return
    diff = difflib.unified_diff(
        text_format.MessageToString(expected).splitlines(),
        text_format.MessageToString(actual).splitlines(),
        "expected (Caffe)",
        "upgraded (ours)",
        lineterm="",
        n=2,
    )
    pytest.fail("upgraded message differs from Caffe's:\n" + "\n".join(list(diff)[:200]))


def run_upgrade(case: dict, message: Message, source: SourceInfo | None) -> UpgradeReport:
    if case["kind"] == "solver_text":
        return upgrade_solver(message, file=case["input"])
    return upgrade_net(message, file=case["input"], source=source)


# --------------------------------------------------------------------------------------------------------
# Cases Caffe upgrades (or leaves unchanged)
# --------------------------------------------------------------------------------------------------------


def check_text_case(case: dict) -> None:
    message = new_message(case)
    source = parse_text(input_path(case), message, case["input"])
    needs = solver_needs_upgrade if case["kind"] == "solver_text" else net_needs_upgrade
    assert needs(message) == (case["status"] != "unchanged")

    report = run_upgrade(case, message, source)

    expected = new_message(case)
    parse_text(case["_dir"] / case["expected"], expected, case["expected"])
    assert_same(message, expected)
    if "upgrade_steps" in case:
        assert report.steps == case["upgrade_steps"]
    assert report.status == case["status"], report.errors
    if case["status"] == "upgraded_with_errors":
        assert report.errors
    else:
        assert not report.errors
    # Upgrading again changes nothing (the BatchNorm pass re-runs, as in Caffe, but is idempotent).
    again = new_message(case)
    again.CopyFrom(message)
    run_upgrade(case, again, None)
    assert again == message, "upgrading twice must be a no-op"


def blob_summary(blob: Message) -> dict:
    if blob.HasField("shape"):
        shape, field = list(blob.shape.dim), "shape"
    else:
        shape, field = [blob.num, blob.channels, blob.height, blob.width], "legacy_num_channels_height_width"
    values = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float64)
    return {"shape": shape, "shape_field": field, "values": values}


def spec_summary(spec: Message) -> dict:
    out = {}
    for fd, value in spec.ListFields():
        out[fd.name] = fd.enum_type.values_by_number[value].name if fd.type == FieldDescriptor.TYPE_ENUM else value
    return out


def check_layout(expected_layout: str, original: Message) -> None:
    v0 = any(entry.HasField("layer") for entry in original.layers)
    if expected_layout.startswith("V0"):
        assert v0
    elif expected_layout.startswith("V1"):
        assert len(original.layers) > 0 and not v0
    elif expected_layout.startswith("V2"):
        assert len(original.layer) > 0 and len(original.layers) == 0


def check_binary_case(case: dict) -> None:
    data = input_path(case).read_bytes()
    net = caffe_pb2.NetParameter.FromString(data)
    original = caffe_pb2.NetParameter.FromString(data)
    assert net_needs_upgrade(net) == (case["status"] != "unchanged")

    report = upgrade_net(net, file=case["input"])

    expected = json.loads((case["_dir"] / case["expected"]).read_text())
    assert report.steps == case.get("upgrade_steps", report.steps)
    assert report.status == case["status"]
    check_layout(expected["input_layout"], original)
    assert net.name == expected["net_name"]
    assert len(net.layers) == expected["output_layers_field_count"]
    assert len(net.layer) == expected["output_layer_field_count"]
    assert list(net.input) == expected["input"] and list(net.input_dim) == expected["input_dim"]
    for layer, want in zip(net.layer, expected["layers"], strict=True):
        check_binary_layer(layer, want)
    # Blobs are carried over untouched, layer by layer.
    source_layers = original.layers if len(original.layers) else original.layer
    with_blobs = [list(layer.blobs) for layer in source_layers if len(layer.blobs)]
    assert with_blobs == [list(layer.blobs) for layer in net.layer if len(layer.blobs)]


def check_binary_layer(layer: Message, want: dict) -> None:
    where = f"layer {want['name']!r}"
    assert layer.name == want["name"]
    assert layer.type == want["type"], where
    assert list(layer.bottom) == want["bottom"], where
    assert list(layer.top) == want["top"], where
    assert [spec_summary(s) for s in layer.param] == want.get("param", []), where
    assert len(layer.blobs) == len(want["blobs"]), where
    for blob, wb in zip(layer.blobs, want["blobs"], strict=True):
        got = blob_summary(blob)
        assert got["shape"] == wb["shape"] and got["shape_field"] == wb["shape_field"], where
        values = got["values"]
        assert values.size == wb["count"], where
        scale = float(np.abs(values).sum())
        assert scale == pytest.approx(wb["abs_sum"], rel=1e-5, abs=1e-6), where
        assert float(values.sum()) == pytest.approx(wb["sum"], rel=1e-5, abs=1e-6 * max(scale, 1.0)), where
        assert values[:5].tolist() == pytest.approx(wb["first5"], rel=1e-6, abs=1e-30), where


# --------------------------------------------------------------------------------------------------------
# Cases Caffe refuses
# --------------------------------------------------------------------------------------------------------


def position_of(text: str, token: str, before: tuple[int, int]) -> tuple[int, int] | None:
    """1-based line:col of the last ``token`` that starts before ``before``."""
    best = None
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in re.finditer(rf"(?<![\w.]){re.escape(token)}(?![\w.])", line):
            if (lineno, m.start() + 1) < before:
                best = (lineno, m.start() + 1)
    return best


def check_refused(case: dict) -> None:
    summary = case.get("error_summary") or (case["_dir"] / case["expected_error"]).read_text().splitlines()[0]
    if case["kind"] == "net_binary":
        with pytest.raises(DecodeError):
            caffe_pb2.NetParameter.FromString(input_path(case).read_bytes())
        return
    m = _PROTOBUF_ERROR.search(summary)
    if m and _UNKNOWN_FIELD.search(m.group(3)):
        check_fork_field_tolerated(case, (int(m.group(1)), int(m.group(2))), _UNKNOWN_FIELD.search(m.group(3)))
    elif m:
        check_parse_refusal(case, (int(m.group(1)), int(m.group(2))), m.group(3))
    else:
        check_upgrade_refusal(case, summary)


def check_parse_refusal(case: dict, caffe_at: tuple[int, int], what: str) -> None:
    """Syntax and enum errors: a ParseError at Caffe's line:col naming the bad token."""
    path = input_path(case)
    with pytest.raises(ParseError) as info:
        parse_text(path, new_message(case), case["input"])
    err = info.value
    assert err.location is not None and err.location.line is not None
    ours = (err.location.line, err.location.col)
    enum = _UNKNOWN_ENUM.search(what)
    if enum:
        # protobuf reports the token *after* a bad enum value; we point at the value itself.
        value_at = position_of(path.read_text(), enum.group(1), caffe_at)
        assert ours in (caffe_at, value_at), (ours, caffe_at, str(err))
        assert enum.group(1) in str(err) and enum.group(2) in str(err)
    else:
        assert ours == caffe_at, str(err)
        got = _TOKEN_GOT.search(what)
        if got:
            assert got.group(1) in str(err)


def check_fork_field_tolerated(case: dict, caffe_at: tuple[int, int], unknown: re.Match[str]) -> None:
    """Files BVLC rejects for a fork field: our fork-aware schema/parser must accept the field.

    A file that is also broken elsewhere (e.g. a web page footer pasted at the end) must still be refused,
    with line:col, at a point *after* the fork field Caffe stopped at.
    """
    message_type, field_name = unknown.groups()
    path = input_path(case)
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        source = parse(text, caffe_pb2.NetParameter(), file=case["input"])
    except ParseError as err:
        assert err.location is not None and err.location.line is not None, str(err)
        assert (err.location.line, err.location.col or 0) > caffe_at, str(err)
        prefix = "\n".join(text.splitlines()[: err.location.line - 1])
        try:
            source = parse(prefix, caffe_pb2.NetParameter(), file=case["input"])
        except Prototxt2pyError:
            return  # the prefix alone is incomplete: nothing more to check
    known = field_name in getattr(caffe_pb2, message_type).DESCRIPTOR.fields_by_name
    dropped = {d.name for d in source.dropped}
    assert known or field_name in dropped, f"{field_name} neither in caffe.{message_type} nor dropped"


def check_upgrade_refusal(case: dict, summary: str) -> None:
    """Caffe's fatal upgrade errors: an UpgradeError mentioning the same facts, with a location."""
    message = new_message(case)
    source = parse_text(input_path(case), message, case["input"])
    with pytest.raises(UpgradeError) as info:
        run_upgrade(case, message, source)
    err = info.value
    text = str(err).lower()
    assert err.location is not None, text
    if case["kind"] == "net_text":
        assert err.location.line is not None, f"net refusal without a line: {err}"
    for pattern, facts in _FATAL_FACTS:
        found = pattern.search(summary)
        if found:
            for fact in facts(found):
                assert fact.lower() in text, f"{fact!r} missing from: {err}"
            break


# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_upgrade_golden(name: str) -> None:
    case = load_case(name)
    if case["status"] == "refused":
        check_refused(case)
    elif case["kind"] == "net_binary":
        check_binary_case(case)
    else:
        check_text_case(case)


TEXT_CASES = [n for n in CASES if load_case(n)["kind"] in ("net_text", "solver_text")
              and str(load_case(n).get("expected", "")).endswith(".prototxt")]


@pytest.mark.parametrize("name", TEXT_CASES)
def test_upgrade_command_writes_caffes_bytes_and_exit_code(name: str, tmp_path: Path) -> None:
    """``prototxt2py upgrade`` as Caffe's ``upgrade_net_proto_text``/``upgrade_solver_proto_text``: the same file,
    byte for byte (floats as C++ writes them: ``lr_mult: 1``), and the same exit code (1 when the upgrade met
    errors: the file is written all the same)."""
    from click.testing import CliRunner

    from prototxt2py.cli import main

    case = load_case(name)
    out = tmp_path / "out.prototxt"
    result = CliRunner().invoke(main, ["upgrade", str(input_path(case)), str(out)])
    assert result.exit_code == case["exit_code"], result.output
    assert out.read_text() == (case["_dir"] / case["expected"]).read_text()


def test_caffe_text_writes_numbers_and_strings_as_cpp_protobuf() -> None:
    """protobuf C++'s FloatToBuffer (%.6g, else %.9g) and DoubleToBuffer (%.15g, else %.17g), and CEscape with
    octal bytes: what Caffe's WriteProtoToTextFile gives for values the golden cases do not hold."""
    from prototxt2py.upgrade_io import caffe_text

    t = caffe_pb2.TransformationParameter(mean_value=[104.00698793, 123456.7, 1.0, -0.0, 1e10, float("inf"), 0.1])
    assert caffe_text(t) == "".join(f"mean_value: {v}\n" for v in
                                    ("104.006989", "123456.703", "1", "-0", "1e+10", "inf", "0.1"))
    b = caffe_pb2.BlobProto(double_data=[16777217.0, 1 / 3, 0.1])
    assert caffe_text(b) == "double_data: 16777217\ndouble_data: 0.33333333333333331\ndouble_data: 0.1\n"
    layer = caffe_pb2.LayerParameter(name='a"\\\u00e9\n', type="X", phase=caffe_pb2.TEST)
    assert caffe_text(layer) == 'name: "a\\"\\\\\\303\\251\\n"\ntype: "X"\nphase: TEST\n'


@pytest.mark.parametrize(("written", "stored"), [(-1, 4294967295), (-7, 4294967289), (5, 5)])
def test_v0_int32_into_a_uint32_field_wraps_as_cpp(written: int, stored: int) -> None:
    """``UpgradeV0LayerParameter`` copies V0's int32 ``new_height`` into ``ImageDataParameter``'s uint32 through
    ``set_new_height``: C++ wraps a negative value (the upgrade was an internal error here)."""
    net = caffe_pb2.NetParameter()
    text_format.Parse('layers { layer { name: "img" type: "images" source: "l.txt" batchsize: 2 '
                      f'new_height: {written} new_width: {written} }} top: "data" top: "label" }}', net)
    upgrade_net(net)
    param = net.layer[0].image_data_param
    assert (param.new_height, param.new_width) == (stored, stored)
