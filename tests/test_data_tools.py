"""convert-imageset and compute-image-mean: records and means byte-identical to Caffe's tools, round trips through
the Data reader, atomic outputs and one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from data_helpers import DATASETS, data_net, layer_from

from prototxt2py.cli import main
from prototxt2py.data import DataError, open_source
from prototxt2py.data.datum import read_mean
from prototxt2py.data.db import Cursor
from prototxt2py.data.tools import compute_image_mean, convert_imageset

cv2 = pytest.importorskip("cv2")
pytest.importorskip("lmdb")

ROOT = f"{DATASETS}/images/"


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def records(path: str | Path, backend: str = "lmdb") -> list[tuple[bytes, bytes]]:
    out = []
    with Cursor(str(path), backend) as c:
        while c.valid():
            out.append((c.key(), c.value()))
            c.next()
    return out


@pytest.mark.parametrize(
    ("reference", "list_name", "flags"),
    [
        ("color_raw_lmdb", "color_list.txt", []),
        ("gray_raw_lmdb", "gray_list.txt", ["--gray"]),
        ("color_png_lmdb", "color_list.txt", ["--encoded", "--encode-type", "png"]),
        ("color_jpg_lmdb", "color_list.txt", ["--encoded", "--encode-type", "jpg"]),
        ("gray_png_lmdb", "gray_list.txt", ["--gray", "--encoded"]),
    ],
)
def test_convert_imageset_writes_caffes_records(tmp_path: Path, reference: str, list_name: str, flags: list) -> None:
    db = tmp_path / "db"
    code, out, err = run("convert-imageset", ROOT, str(DATASETS / list_name), str(db), *flags)
    assert code == 0, err
    assert out.startswith("wrote ")
    assert records(db) == records(DATASETS / reference)  # keys %08d_name and Datum bytes as Caffe wrote them


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_mean_is_caffes_binaryproto(tmp_path: Path, backend: str) -> None:
    if backend == "leveldb":
        pytest.importorskip("plyvel")
    db = tmp_path / "db"
    assert run("convert-imageset", ROOT, str(DATASETS / "color_list.txt"), str(db), "--backend", backend)[0] == 0
    code, out, err = run("compute-image-mean", str(db), str(tmp_path / "mean.binaryproto"))
    assert code == 0, err
    assert (tmp_path / "mean.binaryproto").read_bytes() == (DATASETS / "color_mean.binaryproto").read_bytes()
    imgs = np.stack([cv2.imread(str(DATASETS / "images" / f"color_{i:02d}.png")) for i in range(16)])
    np.testing.assert_allclose(read_mean(str(tmp_path / "mean.binaryproto")),
                               imgs.astype(np.float64).mean(axis=0).transpose(2, 0, 1), rtol=1e-6)


def test_leveldb_round_trip_through_the_data_reader(tmp_path: Path) -> None:
    pytest.importorskip("plyvel")
    db = str(tmp_path / "db")
    convert_imageset(ROOT, str(DATASETS / "gray_list.txt"), db, gray=True, backend="leveldb")
    got = open_source(layer_from(data_net(db, 12, backend="LEVELDB"))).next_batch()
    want = open_source(layer_from(data_net(str(DATASETS / "gray_raw_lmdb"), 12))).next_batch()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_resize_and_shuffle(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    report = convert_imageset(ROOT, str(DATASETS / "color_list.txt"), db, resize_height=10, resize_width=12,
                              shuffle=True, seed=5)
    assert report.written == 16
    data, labels = open_source(layer_from(data_net(db, 16))).next_batch()
    assert data.shape == (16, 3, 10, 12)
    assert sorted(labels.tolist()) == list(range(16)) and labels.tolist() != list(range(16))
    i = int(labels[0])
    want = cv2.resize(cv2.imread(str(DATASETS / "images" / f"color_{i:02d}.png")), (12, 10))
    np.testing.assert_array_equal(data[0], want.transpose(2, 0, 1).astype(np.float32))
    keys = [k.decode() for k, _ in records(db)]
    assert keys[0] == f"00000000_color_{i:02d}.png"  # keys number the shuffled lines: they sort in shuffled order


def test_unreadable_images_are_skipped_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("color_00.png 0\nnope.png 1\ncolor_02.png 2\n")
    code, out, err = run("convert-imageset", ROOT, str(tmp_path / "list.txt"), str(tmp_path / "db"))
    assert code == 0
    assert f"warning: could not read '{ROOT}nope.png': skipped" in err
    assert [k for k, _ in records(tmp_path / "db")] == [b"00000000_color_00.png", b"00000002_color_02.png"]


def test_failed_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prototxt2py.data import tools

    calls = []

    def failing(*args):
        calls.append(args)
        if len(calls) == 3:
            raise DataError("disk on fire")
        return real(*args)

    real = tools._record
    monkeypatch.setattr(tools, "_record", failing)
    code, _, err = run("convert-imageset", ROOT, str(DATASETS / "color_list.txt"), str(tmp_path / "db"))
    assert (code, err) == (1, "error: disk on fire\n")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["convert-imageset", ROOT, "missing.txt", "{tmp}/db"], "error: cannot read image list 'missing.txt'"),
        (["convert-imageset", ROOT, str(DATASETS / "color_list.txt"), "{tmp}/no/db"], "output folder"),
        (["convert-imageset", "/nowhere/", str(DATASETS / "color_list.txt"), "{tmp}/db"], "no image of"),
        (["convert-imageset", ROOT, str(DATASETS / "color_list.txt"), str(DATASETS / "color_raw_lmdb")],
         "already exists"),
        (["compute-image-mean", "{tmp}/nodb", "{tmp}/m.binaryproto"], "data source '{tmp}/nodb' does not exist"),
        (["compute-image-mean", str(DATASETS / "color_raw_lmdb"), "{tmp}/no/m.binaryproto"],
         "output directory does not exist"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    code, out, err = run(*[a.format(tmp=tmp_path) for a in args])
    assert code == 1
    assert err.count("\n") == 1 and message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_compute_mean_refuses_mixed_sizes(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("color_00.png 0\n../images/gray_00.png 1\n")
    db = str(tmp_path / "db")
    convert_imageset(ROOT, str(tmp_path / "list.txt"), db)
    with pytest.raises(DataError, match="is 3x17x15, the first record 3x20x24"):
        compute_image_mean(db)
