"""Data layer readers beyond the golden cases: random transforms, sharding, shuffling, resizing, WindowData,
MemoryData/DummyData feeding, LevelDB, optional dependencies and the one-line errors for bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import DATASETS, data_net, image_net, layer_from

from prototxt2py.data import DataError, open_source
from prototxt2py.data.lmdb_check import check_file, read_meta
from prototxt2py.data.loader import open_reader
from prototxt2py.data.transformer import DataTransformer
from prototxt2py.plain import plain
from prototxt2py.proto import caffe_pb2

cv2 = pytest.importorskip("cv2")
pytest.importorskip("lmdb")

COLOR_LMDB = str(DATASETS / "color_raw_lmdb")


def _transform(text: str):
    msg = caffe_pb2.TransformationParameter()
    from google.protobuf import text_format

    text_format.Parse(text, msg)
    return plain(msg)


# --- DataTransformer ------------------------------------------------------------------------------------------


def _windows(full: np.ndarray, crop: int) -> list[np.ndarray]:
    """Every crop x crop window of a (C, H, W) array, unmirrored and mirrored."""
    _, h, w = full.shape
    out = []
    for y in range(h - crop + 1):
        for x in range(w - crop + 1):
            win = full[:, y : y + crop, x : x + crop]
            out += [win, win[:, :, ::-1]]
    return out


def test_train_crops_and_mirrors_are_windows_of_the_transformed_image() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 9, 11), dtype=np.uint8)
    t = DataTransformer(_transform("crop_size: 5 mirror: true scale: 0.5 mean_value: 3"), "TRAIN",
                        np.random.default_rng(1))
    full = (img.astype(np.float32) - np.float32(3)) * np.float32(0.5)
    candidates = _windows(full, 5)
    seen = set()
    for _ in range(60):
        out = t(img)
        assert out.shape == (3, 5, 5) and out.dtype == np.float32
        matches = [i for i, c in enumerate(candidates) if np.array_equal(out, c)]
        assert matches, "a TRAIN crop must be a (mirrored) window of the transformed image"
        seen.add(matches[0] % 2)
    assert seen == {0, 1}, "mirror: both flipped and unflipped crops occur"


def test_test_phase_crop_is_centred_and_rounds_down() -> None:
    img = np.arange(2 * 7 * 10, dtype=np.uint8).reshape(2, 7, 10)
    out = DataTransformer(_transform("crop_size: 4"), "TEST")(img)
    np.testing.assert_array_equal(out, img[:, 1:5, 3:7].astype(np.float32))


def test_float_datum_values_are_scaled_not_cast() -> None:
    img = np.array([[[0.25, -1.5]]], dtype=np.float32)
    out = DataTransformer(_transform("scale: 2 mean_value: 0.25"), "TEST")(img)
    np.testing.assert_array_equal(out, [[[0.0, -3.5]]])


@pytest.mark.parametrize(
    ("text", "shape", "message"),
    [
        ("crop_size: 12", (3, 10, 10), "crop_size 12 is larger than an image of 10x10"),
        ("mean_value: 1 mean_value: 2", (3, 4, 4), "specify either 1 mean_value or as many as channels: 3"),
    ],
)
def test_transformer_errors(text: str, shape: tuple, message: str) -> None:
    t = DataTransformer(_transform(text), "TEST", layer="data")
    with pytest.raises(DataError, match=message) as e:
        t(np.zeros(shape, dtype=np.uint8))
    assert str(e.value).startswith("layer 'data': ")


def test_mean_file_and_mean_value_together_are_refused() -> None:
    param = _transform(f'mean_file: "{DATASETS / "color_mean.binaryproto"}" mean_value: 1')
    with pytest.raises(DataError, match="cannot specify mean_file and mean_value"):
        DataTransformer(param, "TEST")


def test_mean_file_of_another_shape_is_refused() -> None:
    t = DataTransformer(_transform(f'mean_file: "{DATASETS / "gray_mean.binaryproto"}"'), "TEST")
    with pytest.raises(DataError, match=r"mean_file is 1x17x15 but the image is 3x20x24"):
        t(np.zeros((3, 20, 24), dtype=np.uint8))


# --- Data -----------------------------------------------------------------------------------------------------


def _labels(source, passes: int) -> list[float]:
    return [float(v) for _ in range(passes) for v in source.next_batch()[1]]


def test_missing_source_names_the_layer_and_the_path() -> None:
    with pytest.raises(DataError) as e:
        open_source(layer_from(data_net("no/such_lmdb")))
    assert str(e.value) == "layer 'data': data source 'no/such_lmdb' does not exist"


def test_a_truncated_lmdb_is_refused_before_it_is_mapped(tmp_path: Path) -> None:
    """LMDB maps its data file: reading a page past the end of a file cut short (an interrupted copy) killed the
    process with SIGBUS. The meta pages say where the last page ends; a shorter file is one error line."""
    copy = tmp_path / "copy_lmdb"
    shutil.copytree(COLOR_LMDB, copy)
    data = copy / "data.mdb"
    with data.open("rb") as f:
        end = read_meta(f.fileno()).end
    assert end == data.stat().st_size  # an intact database ends on its last page
    with data.open("r+b") as f:
        f.truncate(5000)
    with pytest.raises(DataError) as e:
        open_source(layer_from(data_net(str(copy))))
    assert str(e.value) == (f"layer 'data': LMDB '{copy}' is truncated: {data} holds 5000 bytes, its last page "
                            f"ends at byte {end} (an interrupted copy?)")


def test_ranks_read_disjoint_strides_in_train_and_everything_in_test() -> None:
    ranks = [open_source(layer_from(data_net(COLOR_LMDB, 4), "TRAIN", r, 3)) for r in range(3)]
    got = [_labels(s, 4) for s in ranks]  # 16 records each, wrapping around the 16-record database thrice
    for r, labels in enumerate(got):
        assert labels == [float((r + 3 * i) % 16) for i in range(16)]
    test = open_source(layer_from(data_net(COLOR_LMDB, 4), "TEST", 1, 3))
    assert _labels(test, 2) == [float(i) for i in range(8)]


def test_data_rand_skip_is_ignored_as_in_caffe_1_0() -> None:
    """Caffe 1.0's DataLayer never reads ``rand_skip`` (its golden build starts every run at the first record);
    a huge value must not matter either."""
    for skip in (5, 4000000000):
        reader = open_reader(layer_from(data_net(COLOR_LMDB, 4, extra=f"rand_skip: {skip}")), seed=3)
        assert _labels(reader, 2) == [float(i) for i in range(8)]


def test_imagedata_rand_skip_starts_within_range_and_keeps_order(tmp_path: Path) -> None:
    """ImageData still reads it (``lines_id_ = caffe_rng_rand() % rand_skip``)."""
    labels = _labels(open_reader(_image_layer(tmp_path, "rand_skip: 5"), seed=3), 1)
    assert 0 <= labels[0] < 5
    assert labels == [float((labels[0] + i) % 16) for i in range(4)]


def test_leveldb_backend_on_an_lmdb_folder_fails_cleanly() -> None:
    pytest.importorskip("plyvel")
    with pytest.raises(DataError, match="cannot open LevelDB"):
        open_source(layer_from(data_net(COLOR_LMDB, backend="LEVELDB")))


def test_missing_optional_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from prototxt2py.data import _deps

    real = importlib.import_module

    def fake(name: str, *a, **k):
        if name == "lmdb":
            raise ImportError("no lmdb")
        return real(name, *a, **k)

    monkeypatch.setattr(_deps.importlib, "import_module", fake)
    with pytest.raises(DataError) as e:
        open_source(layer_from(data_net(COLOR_LMDB)))
    assert "needs the Python package 'lmdb' (pip install prototxt2py[train])" in str(e.value)


def test_pillow_decodes_like_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OpenCV, Pillow gives the same pixels: BGR order, libpng grey, JPEG as libjpeg decodes it."""
    pytest.importorskip("PIL")
    from prototxt2py.data import images

    cases = [("color_png_lmdb", ""), ("color_png_lmdb", "force_gray: true"), ("gray_png_lmdb", "force_color: true"),
             ("color_jpg_lmdb", ""), ("gray_png_lmdb", "")]
    want = [_data(name, t) for name, t in cases]
    monkeypatch.setattr(images, "optional", lambda name: None)
    for (name, t), w in zip(cases, want, strict=True):
        np.testing.assert_array_equal(_data(name, t), w, err_msg=f"{name} {t}")


def _data(name: str, transform: str) -> np.ndarray:
    return open_source(layer_from(data_net(str(DATASETS / name), 16, transform))).next_batch()[0]


# --- ImageData ------------------------------------------------------------------------------------------------


def _image_layer(tmp_path: Path, extra: str = "", transform: str = "", batch: int = 4, phase: str = "TEST"):
    return layer_from(image_net(str(DATASETS / "color_list.txt"), f"{DATASETS}/images/", batch, extra, transform),
                      phase)


def test_imagedata_resizes_with_opencv_bilinear(tmp_path: Path) -> None:
    data, labels = open_source(_image_layer(tmp_path, "new_height: 9 new_width: 13 is_color: false")).next_batch()
    assert data.shape == (4, 1, 9, 13)
    img = cv2.imread(str(DATASETS / "images" / "color_01.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(data[1, 0], cv2.resize(img, (13, 9)).astype(np.float32))
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])


def test_imagedata_shuffles_every_epoch(tmp_path: Path) -> None:
    source = open_reader(_image_layer(tmp_path, "shuffle: true"), seed=11)
    epochs = [_labels(source, 4) for _ in range(3)]
    for e in epochs:
        assert sorted(e) == [float(i) for i in range(16)]
    assert len({tuple(e) for e in epochs} | {tuple(float(i) for i in range(16))}) == 4


def test_imagedata_paths_are_root_folder_plus_name(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("color_00.png 5\nmissing.png 6\n")
    layer = layer_from(image_net(str(tmp_path / "list.txt"), f"{DATASETS}/images/", 2))
    with pytest.raises(DataError) as e:
        open_source(layer).next_batch()
    assert f"could not open or find file '{DATASETS}/images/missing.png'" in str(e.value)
    assert str(e.value).startswith("layer 'images': ")


@pytest.mark.parametrize(("text", "message"), [("", "is empty"), ("\n \n", "is empty"),
                                               ("color_00.png 1\n\ncolor_01.png 2\n", r"list.txt:2: blank line")])
def test_imagedata_bad_lists(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        open_source(layer_from(image_net(str(tmp_path / "list.txt"))))


# --- MemoryData and DummyData ---------------------------------------------------------------------------------

MEMORY = """layer { name: "mem" type: "MemoryData" top: "data" top: "label" transform_param { scale: 2 }
  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }"""


def test_memorydata_reset_serves_untransformed_arrays_and_wraps() -> None:
    source = open_source(layer_from(MEMORY))
    with pytest.raises(DataError, match=r"call reset\(data, labels\)"):
        source.next_batch()
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    source.reset(data, np.arange(4))
    passes = [source.next_batch() for _ in range(3)]
    np.testing.assert_array_equal(passes[1][0], data[2:4])
    np.testing.assert_array_equal(passes[2][0], data[0:2])
    assert passes[0][1].shape == (2,)
    with pytest.raises(DataError, match=r"positive multiple of batch_size \(2\)"):
        source.reset(data[:3], np.arange(3))


def test_memorydata_add_images_transforms() -> None:
    source = open_source(layer_from(MEMORY))
    imgs = [np.full((1, 2, 3), 10 * i, dtype=np.uint8) for i in range(2)]
    source.add_images(imgs, [7, 8])
    data, labels = source.next_batch()
    np.testing.assert_array_equal(data[1], np.full((1, 2, 3), 20, dtype=np.float32))
    np.testing.assert_array_equal(labels, [7, 8])


def test_dummydata_refills_random_tops_only() -> None:
    text = """layer { name: "d" type: "DummyData" top: "g" top: "c"
      dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 }
        data_filler { type: "gaussian" std: 2 } data_filler { type: "constant" value: 7 } } }"""
    source = open_source(layer_from(text))
    a, b = source.next_batch(), source.next_batch()
    assert a[0].shape == (2, 3) and not np.array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], np.full(4, 7, dtype=np.float32))
    np.testing.assert_array_equal(b[1], a[1])


def test_dummydata_filler_count_is_checked() -> None:
    text = """layer { name: "d" type: "DummyData" top: "a" top: "b" top: "c"
      dummy_data_param { shape { dim: 1 } data_filler { value: 1 } data_filler { value: 2 } } }"""
    with pytest.raises(DataError, match="must be 0, 1 or equal to the number of tops: 3; you specified 2"):
        open_source(layer_from(text))


# --- WindowData -----------------------------------------------------------------------------------------------


def _window_file(tmp_path: Path, windows: list[str]) -> Path:
    path = tmp_path / "windows.txt"
    lines = ["# 0", "color_00.png", "3 20 24", str(len(windows)), *windows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _window_layer(source: Path, crop: int = 8, extra: str = "", transform: str = "", batch: int = 4):
    return layer_from(f"""layer {{ name: "win" type: "WindowData" top: "data" top: "label"
      transform_param {{ crop_size: {crop} {transform} }}
      window_data_param {{ source: "{source}" root_folder: "{DATASETS}/images/" batch_size: {batch}
        fg_fraction: 0.5 {extra} }} }}""", "TRAIN")


def test_windowdata_warps_windows_like_opencv(tmp_path: Path) -> None:
    path = _window_file(tmp_path, ["3 0.9 2 3 11 14", "5 0.1 0 0 23 19"])
    data, labels = open_source(_window_layer(path, extra="scale: 0.5", transform="mean_value: 4")).next_batch()
    np.testing.assert_array_equal(labels, [0, 0, 3, 3])  # background first, then foreground
    img = cv2.imread(str(DATASETS / "images" / "color_00.png"))
    fg = cv2.resize(img[3:15, 2:12], (8, 8)).transpose(2, 0, 1).astype(np.float32)
    bg = cv2.resize(img, (8, 8)).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(data[2], (fg - np.float32(4)) * np.float32(0.5))
    np.testing.assert_array_equal(data[0], (bg - np.float32(4)) * np.float32(0.5))


def test_windowdata_context_pad_leaves_the_outside_zero(tmp_path: Path) -> None:
    path = _window_file(tmp_path, ["2 0.8 0 0 9 9", "1 0.0 14 10 23 19"])
    data, labels = open_source(_window_layer(path, crop=10, extra="context_pad: 2")).next_batch()
    assert data.shape == (4, 3, 10, 10)
    fg = data[2]  # window at the image corner: the expanded region sticks out top-left -> zero padding there
    assert np.all(fg[:, :2, :] == 0) and np.all(fg[:, :, :2] == 0) and np.any(fg[:, 2:, 2:] != 0)


def test_windowdata_needs_both_pools(tmp_path: Path) -> None:
    path = _window_file(tmp_path, ["3 0.9 2 3 11 14"])
    with pytest.raises(DataError, match="1 foreground and 0 background windows"):
        open_source(_window_layer(path))


def test_a_corrupt_lmdb_page_is_a_data_error(tmp_path: Path) -> None:
    """A leaf page whose type flag is cleared: LMDB reports MDB_CORRUPTED while walking (Caffe's MDB_CHECK aborts);
    here it is one error naming the database, for the cursor and for compute-image-mean."""
    import lmdb
    from click.testing import CliRunner

    from prototxt2py.cli import main
    from prototxt2py.data.db import Cursor
    from prototxt2py.proto import caffe_pb2

    db = tmp_path / "db"
    env = lmdb.open(str(db), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"00000000", caffe_pb2.Datum(channels=1, height=2, width=2, data=bytes(4)).SerializeToString())
    env.close()
    raw = bytearray((db / "data.mdb").read_bytes())
    raw[8192 + 10] = 0  # the first leaf page's P_LEAF flag
    (db / "data.mdb").write_bytes(bytes(raw))
    why = f"LMDB '{db}' is corrupt: {db / 'data.mdb'}: page 2 should be a leaf page, its flags are 0x0"
    with pytest.raises(DataError) as e:
        Cursor(str(db), "lmdb", layer="data")
    assert str(e.value) == f"layer 'data': {why}"
    result = CliRunner().invoke(main, ["compute-image-mean", str(db), str(tmp_path / "mean.binaryproto")])
    assert result.exit_code == 1 and result.output == f"error: {why}\n"
    assert not (tmp_path / "mean.binaryproto").exists()


def _lmdb_of(path: Path, sizes: list[int]) -> list[int]:
    """An LMDB of records of ``sizes`` bytes (keys 00000000, ...); returns its leaf pages' numbers."""
    import struct

    import lmdb

    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, n in enumerate(sizes):
            txn.put(b"%08d" % i, bytes([i % 251]) * n)
    env.close()
    raw = (path / "data.mdb").read_bytes()
    return [p for p in range(2, len(raw) // 4096) if struct.unpack_from("<QH", raw, p * 4096 + 2)[1] == 2
            and struct.unpack_from("<Q", raw, p * 4096)[0] == p]


def _read_all(db: Path) -> subprocess.CompletedProcess:
    """Read every record of ``db`` in a child process (the lmdb library kills the process it reads in)."""
    code = ("import sys\nfrom prototxt2py.data import DataError\nfrom prototxt2py.data.db import Cursor\n"
            "try:\n    c = Cursor(sys.argv[1], 'lmdb', layer='data')\n"
            "    while c.valid():\n        c.value(); c.next()\n"
            "except DataError as e:\n    sys.exit(str(e))\n")
    return subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("corruption", ["record size past the file", "a leaf stamped as a branch"])
def test_an_lmdb_that_would_kill_the_lmdb_library_is_refused(tmp_path: Path, corruption: str) -> None:
    """LMDB reads its pages through a memory map and trusts them: a big record whose size reaches past the file
    died with SIGBUS while its value was copied, and a second leaf page whose type flag says "branch" failed
    LMDB's assertion ``IS_LEAF(mp)`` in ``mdb_cursor_next`` (SIGABRT). The tree is checked before LMDB maps it:
    one line naming the database, the page and what is wrong."""
    import struct

    db = tmp_path / "db"
    leaves = _lmdb_of(db, [6000 if i % 4 == 0 else 300 for i in range(120)])  # big and small records, 8 leaves
    raw = bytearray((db / "data.mdb").read_bytes())
    if corruption == "record size past the file":
        page = leaves[0]
        node = struct.unpack_from("<H", raw, page * 4096 + 16)[0]  # the page's first node: a big record
        assert struct.unpack_from("<HHHH", raw, page * 4096 + node)[2] == 1  # F_BIGDATA
        struct.pack_into("<HH", raw, page * 4096 + node, 0xFFFF, 0x7FFF)  # its size: 2 GiB
        what = f"page {page}: record 0 (2147483647 bytes from page "
    else:
        page = leaves[1]
        struct.pack_into("<H", raw, page * 4096 + 10, 1)  # P_BRANCH
        what = f"page {page} should be a leaf page, its flags are 0x1"
    (db / "data.mdb").write_bytes(bytes(raw))
    result = _read_all(db)
    assert result.returncode == 1, (result.returncode, result.stderr[-500:])
    assert result.stderr.startswith(f"layer 'data': LMDB '{db}' is corrupt: {db / 'data.mdb'}: {what}")
    assert result.stderr.count("\n") == 1


def test_the_lmdb_check_passes_databases_caffe_and_the_lmdb_library_wrote(tmp_path: Path) -> None:
    """No false alarm: the golden LMDBs Caffe 1.0 wrote, and multi-level trees the lmdb library writes (small
    and big records, an empty database) pass, and are read whole."""
    for data in sorted(DATASETS.glob("*_lmdb/data.mdb")):
        check_file(str(data))
    _lmdb_of(tmp_path / "empty", [])
    check_file(str(tmp_path / "empty" / "data.mdb"))
    sizes = [6000 if i % 50 == 0 else (i * 7919) % 300 + 1 for i in range(10000)]
    _lmdb_of(tmp_path / "deep", sizes)
    with (tmp_path / "deep" / "data.mdb").open("rb") as f:
        assert read_meta(f.fileno()).depth >= 3
    result = _read_all(tmp_path / "deep")
    assert result.returncode == 0, result.stderr


def test_a_leveldb_source_is_read_by_one_worker(tmp_path: Path) -> None:
    """LevelDB's LOCK takes one opener: with two loader workers each opened it and the second failed ("lock
    ... Resource temporarily unavailable"), so train/test/time never ran on a LevelDB. Now one worker reads it,
    in record order, wrapping around as Caffe's cursor does."""
    plyvel = pytest.importorskip("plyvel")
    from prototxt2py.data.loader import DataFeed
    from prototxt2py.proto import caffe_pb2

    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    for i in range(5):
        datum = caffe_pb2.Datum(channels=1, height=1, width=2, data=bytes([i, i]), label=i)
        db.put(b"%08d" % i, datum.SerializeToString())
    db.close()
    layer = layer_from(data_net(str(tmp_path / "db"), batch=3, backend="LEVELDB"))
    with DataFeed([layer], workers=2) as feed:
        labels = [feed.next()["label"].tolist() for _ in range(3)]
    assert labels == [[0, 1, 2], [3, 4, 0], [1, 2, 3]]


def test_an_error_in_a_loader_worker_is_its_own_line(tmp_path: Path) -> None:
    """torch re-raises a worker's DataError with "Caught DataError in DataLoader worker process 1. Original
    Traceback ..." and the whole traceback as its message; the feed gives the error's own line."""
    import lmdb

    from prototxt2py.data.loader import DataFeed
    from prototxt2py.proto import caffe_pb2

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(4):
            datum = caffe_pb2.Datum(channels=3, height=4, width=5, data=bytes(60 if i < 3 else 7), label=1)
            txn.put(b"%d" % i, datum.SerializeToString())
    env.close()
    layer = layer_from(data_net(str(tmp_path / "db"), batch=2))
    with DataFeed([layer], workers=2) as feed:
        feed.next()
        with pytest.raises(DataError) as e:
            feed.next()  # the second batch comes from worker 1
    db = tmp_path / "db"
    assert str(e.value) == f"layer 'data': database '{db}': record '3' holds 7 bytes, its shape 3x4x5 needs 60"


@pytest.mark.parametrize(("extra", "message"), [
    ("context_pad: 4", "context_pad 4 leaves no window inside crop_size 8 (needs 0 <= 2 context_pad < crop_size)"),
    ("fg_fraction: -1", "fg_fraction -1 gives -4 foreground windows in a batch of 4"),
])
def test_windowdata_parameters_caffe_would_divide_by_zero_or_overrun_with(tmp_path: Path, extra: str,
                                                                           message: str) -> None:
    """Caffe computes ``crop / (crop - 2 context_pad)`` and writes ``batch * fg_fraction`` foreground windows
    without checks; here they were an OverflowError or IndexError (exit 3)."""
    path = _window_file(tmp_path, ["3 0.9 2 3 11 14", "5 0.1 0 0 23 19"])
    text = _window_layer(path, extra=extra.replace("fg_fraction: -1", ""))
    if "fg_fraction" in extra:  # replace the helper's 0.5
        import dataclasses

        text = dataclasses.replace(text, param=dataclasses.replace(text.param, fg_fraction=-1.0))
    with pytest.raises(DataError, match=f"layer 'win': {re.escape(message)}"):
        open_source(text)


def test_hdf5data_link_to_nothing_is_one_error(tmp_path: Path) -> None:
    """A top's name that is a soft link to nothing: h5py raises KeyError on access (exit 3 before)."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["label"] = np.zeros(4, "f4")
        f["data"] = h5py.SoftLink("/missing")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n")
    layer = layer_from(f'layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
                       f'source: "{tmp_path / "list.txt"}" batch_size: 2 }} }}')
    with pytest.raises(DataError, match=r"layer 'd': cannot read HDF5 file .*a.h5: .*"):
        open_source(layer).next_batch()


def test_windowdata_fg_fraction_is_checked_by_the_count_it_gives(tmp_path: Path) -> None:
    """Caffe takes ``int(batch * fg_fraction)`` foreground windows: 1.05 of 4 is 4 (all foreground) and runs."""
    import dataclasses

    path = _window_file(tmp_path, ["3 0.9 2 3 11 14", "5 0.1 0 0 23 19"])
    layer = _window_layer(path)
    layer = dataclasses.replace(layer, param=dataclasses.replace(layer.param, fg_fraction=1.05))
    _, labels = open_source(layer).next_batch()
    np.testing.assert_array_equal(labels, [3, 3, 3, 3])


def test_windowdata_mean_channels(tmp_path: Path) -> None:
    """A mean with more channels than the images is read channel by channel, as Caffe indexes it (a numpy
    broadcast error before); one with fewer is refused."""
    from prototxt2py.proto import caffe_pb2

    path = _window_file(tmp_path, ["3 0.9 2 3 11 14", "5 0.1 0 0 23 19"])
    for channels, ok in ((4, True), (1, False)):
        mean = caffe_pb2.BlobProto(num=1, channels=channels, height=24, width=24)
        mean.data.extend(np.arange(channels * 24 * 24, dtype=np.float32) % 7)
        (tmp_path / "m.binaryproto").write_bytes(mean.SerializeToString())
        layer = _window_layer(path, transform=f'mean_file: "{tmp_path / "m.binaryproto"}"')
        if ok:
            plain = _window_layer(path)
            data, _ = open_source(layer).next_batch()
            raw, _ = open_source(plain).next_batch()
            want = np.arange(4 * 24 * 24, dtype=np.float32).reshape(4, 24, 24)[:3, 8:16, 8:16] % 7
            np.testing.assert_allclose(raw[0] - data[0], want)  # the background window: the mean's centre crop
        else:
            with pytest.raises(DataError, match="mean_file has 1 channels, the images 3"):
                open_source(layer)


def test_raw_datums_ignore_force_color_and_force_gray_together() -> None:
    """Caffe checks ``!(force_color && force_gray)`` only for encoded Datums; a raw one is transformed as is."""
    with pytest.warns(UserWarning, match="only apply to encoded"):
        both = open_source(layer_from(data_net(COLOR_LMDB, 4, "force_color: true force_gray: true"))).next_batch()
    plain_batch = open_source(layer_from(data_net(COLOR_LMDB, 4))).next_batch()
    np.testing.assert_array_equal(both[0], plain_batch[0])


def test_an_lmdb_check_names_what_is_wrong_with_meta_pages_and_sub_databases(tmp_path: Path) -> None:
    """A newer meta page with another page size made the check itself fail (``struct.error``: exit 3); a sound
    LMDB holding named sub-databases was called corrupt, where it is only no Caffe database."""
    import struct

    import lmdb

    _lmdb_of(tmp_path / "db", [10])
    raw = bytearray((tmp_path / "db" / "data.mdb").read_bytes())
    struct.pack_into("<I", raw, 4096 + 40, 1)  # meta page 1 (the newer one): its page size
    (tmp_path / "db" / "data.mdb").write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        open_source(layer_from(data_net(str(tmp_path / "db"))))
    assert str(e.value) == (f"layer 'data': LMDB '{tmp_path / 'db'}' is corrupt: {tmp_path / 'db' / 'data.mdb'}: "
                            "its meta pages give page sizes 4096 and 1")
    env = lmdb.open(str(tmp_path / "named"), map_size=1 << 22, max_dbs=2)
    with env.begin(write=True, db=env.open_db(b"images")) as txn:
        txn.put(b"0", b"x")
    env.close()
    with pytest.raises(DataError) as e:
        open_source(layer_from(data_net(str(tmp_path / "named"))))
    assert str(e.value).startswith(f"layer 'data': LMDB '{tmp_path / 'named'}' is not a Caffe database: ")
    assert str(e.value).endswith("is a named sub-database or a set of duplicate values, which Caffe's databases "
                                 "never hold")


def test_an_lmdb_rebuilt_while_a_reader_holds_it_is_not_read_stale(tmp_path: Path) -> None:
    """The lmdb package opens no second environment on a path while the first is held: a database rebuilt at
    the same path (``convert-imageset`` again) was read from the old environment, old records and all, by every
    later reader of the process. Refused with one line until the holder is gone; then the new one is read."""
    import lmdb

    from prototxt2py.data.db import Cursor

    def build(first: bytes) -> None:
        shutil.rmtree(tmp_path / "db", ignore_errors=True)
        env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
        with env.begin(write=True) as txn:
            txn.put(b"0", first)
        env.close()

    build(b"old")
    holder = Cursor(str(tmp_path / "db"), "lmdb")
    assert holder.value() == b"old"
    build(b"new record")
    with pytest.raises(DataError, match=r"LMDB '.*db' changed on disk while this process still holds the copy it "
                                        r"opened \(a net or solver made before\): let those go \(del net\)"):
        Cursor(str(tmp_path / "db"), "lmdb")
    holder.close()
    with Cursor(str(tmp_path / "db"), "lmdb") as fresh:
        assert fresh.value() == b"new record"
