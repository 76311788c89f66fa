"""Diagrams: the same nodes (labels, shapes, colours) and edges (with labels) as Caffe's draw.py; every
corpus net draws; rendered files are real images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from golden import CORPUS, SHARED, case_params, meta

from prototxt2py.backends.draw import build_diagram
from prototxt2py.cli import main
from prototxt2py.reader import read_net


def structure(diagram) -> tuple[list, list]:
    nodes = [{"id": n.id, "kind": n.kind, **n.attrs} for n in diagram.nodes.values()]
    edges = sorted([list(e) for e in diagram.edges])
    return nodes, edges


@pytest.mark.parametrize("case", case_params("draw"))
def test_draw_matches_caffe(case: Path) -> None:
    import json

    m = meta(case)
    want = json.loads((case / "expected.json").read_text())
    o = m["options"]
    source = read_net(SHARED / m["input"])
    d = build_diagram(source.raw, o["rankdir"], o["phase"], o["display_lrm"], o["label_edges"])
    nodes, edges = structure(d)
    assert d.name == want["graph_name"] and d.rankdir == want["rankdir"]
    want_nodes = [{k: v for k, v in n.items() if k in ("id", "kind", "shape", "fillcolor", "style")}
                  for n in want["nodes"]]
    assert nodes == want_nodes
    assert edges == sorted(want["edges"])


needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' not installed")


@needs_dot
@pytest.mark.parametrize("net,ext,minimum", [
    ("BVLC__caffe/models/bvlc_alexnet/train_val.prototxt", ".png", 20_000),
    ("BVLC__caffe@v0.99/examples/cifar10/cifar10_quick_train.prototxt", ".svg", 5_000),  # V0, drawn upgraded
    ("chuanqi305__MobileNet-SSD/deploy.prototxt", ".svg", 50_000),  # fork net
])
def test_render_real_image(net: str, ext: str, minimum: int, tmp_path: Path) -> None:
    out = tmp_path / f"net{ext}"
    r = CliRunner().invoke(main, ["draw", str(CORPUS / net), str(out), "--rankdir", "TB", "--shapes"])
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    assert len(data) > minimum
    if ext == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 200 and height > 1000  # a tall TB layout of AlexNet
    else:
        assert b"<svg" in data[:2000] and b"</svg>" in data[-100:]


def test_every_corpus_net_draws_to_dot(tmp_path: Path) -> None:
    import csv

    rows = [r for r in csv.DictReader((CORPUS / "MANIFEST.tsv").open(), delimiter="\t")
            if r["format"] in ("V0", "V1", "V2") and "ERROR" not in r["notes"] and "template" not in r["file"]]
    assert len(rows) > 150
    for r in rows:
        out = tmp_path / "n.dot"
        res = CliRunner().invoke(main, ["draw", str(CORPUS / r["file"]), str(out)])
        assert res.exit_code == 0, (r["file"], res.output)
        assert out.read_text().startswith("digraph")


@needs_dot
@pytest.mark.parametrize(("ext", "head"), [(".eps", b"%!PS-Adobe"), (".raw", b"digraph"), (".json", b"{"),
                                           (".xdot", b"digraph")])
def test_formats_dot_renders_as_draw_net_passes_them(ext: str, head: bytes, tmp_path: Path) -> None:
    """Caffe's draw_net.py hands the extension to dot (``.raw``: the DOT text, as its docstring suggests)."""
    out = tmp_path / f"net{ext}"
    r = CliRunner().invoke(main, ["draw", str(Path(__file__).parents[1] / "fixtures/alexnet/deploy.prototxt"),
                                  str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes().lstrip().startswith(head)
