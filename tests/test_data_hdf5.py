"""HDF5Data reader: Caffe's row order against golden/data (TEST phase, exact), sharding over ranks, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("h5py")

from golden import GOLDEN, meta, npz  # noqa: E402

from prototxt2py.data import DataError, DataLayer, open_source  # noqa: E402
from prototxt2py.plain import plain  # noqa: E402
from prototxt2py.proto import caffe_pb2  # noqa: E402


def _layer(source: str, tops: tuple[str, ...], batch: int, phase: str = "TEST", rank: int = 0, world: int = 1,
           shuffle: bool = False) -> DataLayer:
    p = caffe_pb2.HDF5DataParameter(source=source, batch_size=batch, shuffle=shuffle)
    return DataLayer("data", "HDF5Data", tops, plain(p), None, phase, rank, world)


def _hdf5_cases() -> list[Path]:
    return [c.parent for c in sorted((GOLDEN / "data").glob("*/case.json"))
            if '"HDF5Data"' in (c.parent / "net.prototxt").read_text()]


@pytest.mark.parametrize("case", _hdf5_cases(), ids=lambda p: p.name)
def test_golden_hdf5_batches(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prototxt2py.reader import read_net

    monkeypatch.chdir(case)
    m = meta(case)
    layer = next(x for x in read_net("net.prototxt").net.layer if x.type == "HDF5Data")
    p = layer.hdf5_data_param
    source = open_source(_layer(p.source, tuple(layer.top), p.batch_size, m["phase"]))
    for k in range(m["forward_passes"]):
        want = npz(case / f"outputs_{k}.npz")
        for top, got in zip(layer.top, source.next_batch(), strict=True):
            np.testing.assert_array_equal(got, want[top], err_msg=f"pass {k} top {top}")


def _rows_file(tmp_path: Path, counts: list[int]) -> str:
    import h5py

    start = 0
    names = []
    for i, n in enumerate(counts):
        with h5py.File(tmp_path / f"f{i}.h5", "w") as f:
            f["x"] = np.arange(start, start + n, dtype=np.int32).reshape(n, 1)
        names.append(str(tmp_path / f"f{i}.h5"))
        start += n
    (tmp_path / "list.txt").write_text("\n".join(names))
    return str(tmp_path / "list.txt")


def test_ranks_interleave_rows_as_caffe_skip(tmp_path: Path) -> None:
    """Under torchrun each TRAIN rank keeps the rows whose global offset % world == rank: 2 ranks of batch 3
    see together exactly what 1 process of batch 6 sees, over file ends and the wrap-around."""
    source = _rows_file(tmp_path, [5, 4])
    single = open_source(_layer(source, ("x",), 6, "TRAIN"))
    ranks = [open_source(_layer(source, ("x",), 3, "TRAIN", r, 2)) for r in range(2)]
    for _ in range(5):
        want = single.next_batch()[0].ravel()
        got = [r.next_batch()[0].ravel() for r in ranks]
        np.testing.assert_array_equal(got[0], want[0::2])
        np.testing.assert_array_equal(got[1], want[1::2])
    # TEST phase never skips (only rank 0 tests)
    test = open_source(_layer(source, ("x",), 4, "TEST", 1, 2))
    np.testing.assert_array_equal(test.next_batch()[0].ravel(), [0, 1, 2, 3])


def test_shuffle_permutes_within_and_keeps_every_row(tmp_path: Path) -> None:
    source = _rows_file(tmp_path, [6])
    src = open_source(_layer(source, ("x",), 6, "TRAIN", shuffle=True))
    epochs = [np.sort(src.next_batch()[0].ravel()) for _ in range(3)]
    for e in epochs:
        np.testing.assert_array_equal(e, np.arange(6))


def test_errors_name_layer_and_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"layer 'data': HDF5 list file not found: nowhere.txt"):
        open_source(_layer("nowhere.txt", ("x",), 2))
    source = _rows_file(tmp_path, [3])
    with pytest.raises(DataError, match=r"layer 'data': HDF5 file .*f0.h5 has no dataset 'label' \(it has: x\)"):
        open_source(_layer(source, ("x", "label"), 2))
    import h5py

    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("x")
    (tmp_path / "g.txt").write_text(f"{tmp_path / 'g.h5'}\n")
    with pytest.raises(DataError, match=r"layer 'data': 'x' in HDF5 file .*g.h5 is a group, not a dataset"):
        open_source(_layer(str(tmp_path / "g.txt"), ("x",), 2))
    p = caffe_pb2.HDF5DataParameter(source=source, batch_size=2)
    transform = plain(caffe_pb2.TransformationParameter(scale=2))
    with pytest.raises(DataError, match="HDF5Data does not transform data"):
        open_source(DataLayer("data", "HDF5Data", ("x",), plain(p), transform, "TEST"))


def test_list_file_tokens_split_on_c_whitespace_only(tmp_path: Path) -> None:
    """Caffe's ``source_file >> line`` splits on C-locale whitespace: a no-break space is part of a name."""
    import h5py

    name = tmp_path / "my\u00a0file.h5"
    with h5py.File(name, "w") as f:
        f["x"] = np.arange(3, dtype=np.float32).reshape(3, 1)
    (tmp_path / "list.txt").write_bytes(f"{name}\r\n".encode())
    got = open_source(_layer(str(tmp_path / "list.txt"), ("x",), 3)).next_batch()[0]
    np.testing.assert_array_equal(got.ravel(), [0, 1, 2])


def test_later_files_of_another_row_shape_but_the_same_size_are_read_flat(tmp_path: Path) -> None:
    """``HDF5DataLayer::Forward_cpu`` copies ``count / num`` values per row into tops shaped by the first file."""
    import h5py

    for name, shape, start in (("a.h5", (2, 6), 0), ("b.h5", (2, 2, 3), 12)):
        with h5py.File(tmp_path / name, "w") as f:
            f["x"] = np.arange(start, start + 12, dtype=np.float32).reshape(shape)
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    got = open_source(_layer(str(tmp_path / "list.txt"), ("x",), 4)).next_batch()[0]
    np.testing.assert_array_equal(got, np.arange(24, dtype=np.float32).reshape(4, 6))
    with h5py.File(tmp_path / "b.h5", "w") as f:  # another size stays refused
        f["x"] = np.zeros((2, 5), dtype=np.float32)
    with pytest.raises(DataError, match=r"b.h5 has row shapes \[\(5,\)\], the first file had \[\(6,\)\]"):
        source = open_source(_layer(str(tmp_path / "list.txt"), ("x",), 4))
        source.next_batch()
