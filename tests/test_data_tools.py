"""convert-imageset and compute-image-mean: records and means byte-identical to Caffe's tools, round trips through
the Data reader, atomic outputs and one-line errors."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from data_helpers import DATASETS, data_net, layer_from

from prototxt2py.cli import main
from prototxt2py.data import DataError, open_source
from prototxt2py.data import images as _images
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
    with pytest.raises(DataError, match=r"holds 765 values, the first record 1440 \(3x20x24\)"):
        compute_image_mean(db)


def test_compute_mean_sums_records_of_one_size_flat(tmp_path: Path) -> None:
    """``compute_image_mean`` checks each record's size only: a 1x3x2 record after a 1x2x3 one adds flat."""
    lmdb = pytest.importorskip("lmdb")
    from prototxt2py.proto import caffe_pb2

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for i, (h, w) in enumerate([(2, 3), (3, 2)]):
            datum = caffe_pb2.Datum(channels=1, height=h, width=w, data=bytes(range(i * 6, i * 6 + 6)))
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()
    mean = compute_image_mean(str(tmp_path / "db"))
    np.testing.assert_array_equal(mean, (np.arange(6, dtype=np.float32).reshape(1, 2, 3) * 2 + 6) / 2)


def bomb_png(path: Path, side: int = 60000) -> Path:
    """A 60 000 x 60 000 PNG of 70 bytes (only the header: OpenCV refuses it before reading any pixel)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--resize-height", "100000", "--resize-width", "100000"],
         "resizing to 100000x100000 with 3 channel(s) needs 30,000,000,000 bytes in one Datum record, over the "
         "2,147,483,583 it holds (protobuf's 2 GiB message limit)"),
        (["--resize-height", "99999999999", "--resize-width", "5"], "resizing to 99999999999x5 with 3 channel(s)"),
        (["--resize-height", "50000", "--resize-width", "50000"], "7,500,000,000 bytes in one Datum record"),
        (["--resize-height", "50000", "--resize-width", "50000", "--gray", "--encoded"],
         "resizing to 50000x50000 with 1 channel(s) needs 2,500,000,000 bytes"),
    ],
)
def test_resize_beyond_a_record_is_refused_before_any_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             flags: list[str], message: str) -> None:
    monkeypatch.setattr(_images, "read", lambda *a, **k: pytest.fail("an image was read"))
    code, out, err = run("convert-imageset", ROOT, str(DATASETS / "color_list.txt"), str(tmp_path / "db"), *flags)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert os.listdir(tmp_path) == []


def test_an_image_beyond_a_record_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prototxt2py.data import datum

    monkeypatch.setattr(datum, "MAX_RECORD_DATA", 1000)  # the 2 GiB limit, scaled down to a 20x24 image
    code, _, err = run("convert-imageset", ROOT, str(DATASETS / "color_list.txt"), str(tmp_path / "db"))
    assert (code, err) == (1, f"error: image '{ROOT}color_00.png' (20x24x3) needs 1,440 bytes in one Datum record, "
                              "over the 1,000 it holds (protobuf's 2 GiB message limit)\n")


def test_opencv_errors_name_the_image() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(DataError, match=r"^cannot resize image 'a\.png' to 99999999999x5: \(-5:Bad argument\)"):
        _images.resize(img, 99999999999, 5, what="image 'a.png'")


@pytest.mark.parametrize("flags", [[], ["--encoded"]])
def test_decompression_bomb_is_one_error_naming_the_file(tmp_path: Path, flags: list[str]) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "ok.png").write_bytes((DATASETS / "images" / "color_00.png").read_bytes())
    bomb_png(imgs / "bomb.png")
    (tmp_path / "list.txt").write_text("ok.png 0\nbomb.png 1\n")
    code, _, err = run("convert-imageset", f"{imgs}/", str(tmp_path / "list.txt"), str(tmp_path / "db"), *flags)
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith(f"error: cannot decode image '{imgs}/bomb.png': it has more pixels than OpenCV's limit")
    assert "OPENCV_IO_MAX_IMAGE_PIXELS" in err
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("color_00.png 0\n\ncolor_0\x001.png 1\n", "list.txt:3: expected a file name without NUL bytes, got "
                                                   "'color_0\\x001.png'"),
        ("color_00.png 0\ncolor_01.png 99999999999999\n",
         "list.txt:2: expected a label in Caffe's int32 range [-2147483648, 2147483647], got 99999999999999"),
        ("color_00.png -2147483649\n",
         "list.txt:1: expected a label in Caffe's int32 range [-2147483648, 2147483647], got -2147483649"),
    ],
)
def test_bad_list_lines_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "list.txt").write_text(text)
    code, _, err = run("convert-imageset", ROOT, str(tmp_path / "list.txt"), str(tmp_path / "db"))
    assert code == 1
    assert err == f"error: {tmp_path}/{message}\n"
    assert sorted(os.listdir(tmp_path)) == ["list.txt"]


def test_int32_labels_at_the_limits_are_written(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("color_00.png -2147483648\ncolor_01.png 2147483647\n")
    convert_imageset(ROOT, str(tmp_path / "list.txt"), str(tmp_path / "db"))
    from prototxt2py.data.datum import parse_datum

    assert [parse_datum(v).label for _, v in records(tmp_path / "db")] == [-2147483648, 2147483647]


def test_list_lines_are_read_as_caffe_reads_them(tmp_path: Path) -> None:
    """``atoi`` of what follows the last space (``1_0`` is 1, ``3abc`` 3, a full-width digit 0), a line without a
    space is all name with ``atoi`` of itself as label, a blank line is an entry no image is read for: the keys
    keep Caffe's line numbers."""
    (tmp_path / "list.txt").write_text("color_00.png 1_0\n\ncolor_02.png 3abc\ncolor_03.png\ncolor_04.png \uff13\n")
    code, _, err = run("convert-imageset", ROOT, str(tmp_path / "list.txt"), str(tmp_path / "db"))
    assert code == 0
    assert err == f"warning: could not read '{ROOT}': skipped\n"
    from prototxt2py.data.datum import parse_datum

    got = [(k.decode(), parse_datum(v).label) for k, v in records(tmp_path / "db")]
    assert got == [("00000000_color_00.png", 1), ("00000002_color_02.png", 3), ("00000003_color_03.png", 0),
                   ("00000004_color_04.png", 0)]


def test_negative_seed_is_refused(tmp_path: Path) -> None:
    args = ["convert-imageset", ROOT, str(DATASETS / "color_list.txt"), str(tmp_path / "db"), "--shuffle"]
    code, _, err = run(*args, "--seed", "-1")
    assert code == 2  # a usage error, as for --resize-height -1
    assert "Invalid value for '--seed': -1 is not in the range x>=0" in err and "Traceback" not in err
    with pytest.raises(DataError, match="the shuffle seed must be 0 or more, got -1"):
        convert_imageset(ROOT, str(DATASETS / "color_list.txt"), str(tmp_path / "db"), shuffle=True, seed=-1)
    assert os.listdir(tmp_path) == []


def test_a_mean_of_several_images_uses_the_first_as_caffe_does(tmp_path: Path) -> None:
    """Caffe's transformer reads a mean blob through channels()/height()/width() only: of an N x C x H x W
    blob it subtracts the first C*H*W values."""
    from prototxt2py.proto import caffe_pb2

    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3, 2, 2])
    blob.data.extend(float(v) for v in range(24))
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(read_mean(str(tmp_path / "mean.binaryproto")),
                                  np.arange(12, dtype=np.float32).reshape(3, 2, 2))
    blob.shape.dim[:] = [2, 12]
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    with pytest.raises(DataError, match="expected an NxCxHxW blob, got 2x12"):
        read_mean(str(tmp_path / "mean.binaryproto"))


def test_a_file_name_that_is_not_utf8_keeps_its_bytes_in_the_key(tmp_path: Path) -> None:
    """convert_imageset builds the key from the list line's bytes; a Latin-1 name (``caf\\xff.png``) was exit 3."""
    import shutil

    name = b"caf\xff.png".decode("utf-8", "surrogateescape")
    shutil.copy(Path(ROOT) / "color_00.png", tmp_path / name)
    (tmp_path / "list.txt").write_bytes(b"caf\xff.png 2\n")
    code, _, err = run("convert-imageset", str(tmp_path) + "/", str(tmp_path / "list.txt"), str(tmp_path / "db"))
    assert code == 0, err
    assert [k for k, _ in records(tmp_path / "db")] == [b"00000000_caf\xff.png"]
