"""Names are data in diagrams: any layer, blob or net name yields DOT that Graphviz accepts, shown as written;
a layer redefined under the same name and type draws as Caffe's draw_net draws it instead of a KeyError."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from prototxt2py.backends.draw import MAX_LABEL_NAME, build_diagram, dot_text
from prototxt2py.cli import main
from prototxt2py.reader import read_net_text

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")

NAMES = ["a\\", "\\", "\\\\", '"q"', 'x\\"y', "<b>h</b>", "<>", "{a|b}", "a:b", "n\nl", "c\x00\x01\x1b",
         "z" * 20000, "if", "node", "digraph", "\u2028", "é€😀", "a; b", "//", "/*", "-1", "", " ", "\\N", "\\G", "%"]


def _quote(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 32:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return "".join(out)


def hostile_net(names: list[str]) -> str:
    lines = [f'name: "{_quote(names[0])}"',
             'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }']
    prev = "data"
    for i, n in enumerate(names):
        top = n or f"blob{i}"  # an empty blob name is refused on its own (test_hostile_inputs)
        kind = "Convolution" if i % 3 == 0 else "ReLU"
        extra = " convolution_param { num_output: 2 kernel_size: 1 }" if kind == "Convolution" else ""
        lines.append(f'layer {{ name: "{_quote(n)}" type: "{kind}" bottom: "{_quote(prev)}" '
                     f'top: "{_quote(top)}"{extra} }}')
        prev = top
    return "\n".join(lines) + "\n"


def dot_canon(source: str) -> str:
    r = subprocess.run(["dot", "-Tcanon"], input=source.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0 and b"syntax error" not in r.stderr, r.stderr[:500]
    return r.stdout.decode()


@pytest.mark.parametrize("rankdir", ["LR", "TB"])
def test_hostile_names_give_valid_dot(rankdir: str) -> None:
    net = read_net_text(hostile_net(NAMES)).net
    canon = dot_canon(build_diagram(net, rankdir).source())
    assert "... (20000 characters)" in canon.replace("\\\n", "")  # canon folds long lines


def test_labels_show_names_as_written(tmp_path: Path) -> None:
    net = read_net_text(hostile_net(["a\\", '"q"', "<b>h</b>", "{a|b}", "n\nl"])).net
    (tmp_path / "n.dot").write_text(build_diagram(net, "LR").source())
    svg = subprocess.run(["dot", "-Tsvg", str(tmp_path / "n.dot")], capture_output=True, check=True).stdout.decode()
    for shown in ["a\\<", "&quot;q&quot;<", "&lt;b&gt;h&lt;/b&gt;<", "{a|b}<", "n\\x0al<"]:
        assert ">" + shown in svg, shown


@pytest.mark.parametrize("name", NAMES)
def test_each_name_alone(name: str) -> None:
    dot_canon(build_diagram(read_net_text(hostile_net([name])).net, "LR").source())


def test_dot_text() -> None:
    assert dot_text("plain_name-1") == "plain_name-1"
    assert dot_text("a\\") == "a\\\\"
    assert dot_text("a\nb") == "a\\\\x0ab"
    assert len(dot_text("x" * 50000)) < MAX_LABEL_NAME + 40


def test_same_name_and_type_with_different_parameters(tmp_path: Path) -> None:
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
            'layer { name: "a" type: "Convolution" bottom: "data" top: "y" convolution_param { num_output: 2 '
            "kernel_size: 1 } }\n"
            'layer { name: "a" type: "Convolution" bottom: "y" top: "z" convolution_param { num_output: 3 '
            "kernel_size: 3 } }\n")
    net = tmp_path / "dup.prototxt"
    net.write_text(text)
    out = tmp_path / "dup.dot"
    r = CliRunner().invoke(main, ["draw", str(net), str(out)])
    assert r.exit_code == 0, r.stderr
    canon = dot_canon(out.read_text())
    # Caffe's draw.py keeps edges by node key ("a_Convolution") and looks the nodes up after the loop: one node,
    # the last definition's label, with the edges of both layers (no node for the first label)
    assert canon.count("kernel size: 3") == 1 and "kernel size: 1" not in canon
    diagram = build_diagram(read_net_text(text).net, "LR")
    (conv,) = [n.id for n in diagram.nodes.values() if "kernel size" in n.id]
    assert "kernel size: 3" in conv
    assert [(src, dst) for src, dst, _ in diagram.edges if conv in (src, dst)] == [
        ("data", conv), (conv, "y"), ("y", conv), (conv, "z")]
