"""A ``caffe.Net``'s data layers read their sources as Caffe's do: each ``forward()`` gives the next batch, the
same blobs as Caffe 1.0's own forward passes over the golden data cases (``../shared/golden/data``). They
read nothing before: a TEST net's accuracy loop scored zeros (BVLC's 02-fine-tuning notebook printed 0%
and 100% accuracies computed on all-zero images)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from golden import GOLDEN, case_params, meta, npz

from prototxt2py import caffe
from prototxt2py.caffe._data import READ_SOURCE
from prototxt2py.reader import read_net_text

pytest.importorskip("lmdb")
pytest.importorskip("cv2")


def _reading_cases() -> list:
    """The non-random golden data cases whose layers all read a source."""
    out = []
    for param in case_params("data"):
        case = param.values[0] if hasattr(param, "values") else param
        net = read_net_text((case / "net.prototxt").read_text()).net
        if {layer.type for layer in net.layer} <= READ_SOURCE and not meta(case).get("random"):
            out.append(param)
    return out


@pytest.mark.parametrize("case", _reading_cases())
def test_forward_reads_the_next_batch_as_caffe(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = meta(case)
    monkeypatch.chdir(case)  # the case's paths are relative to its folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every source exists: no warning
        net = caffe.Net("net.prototxt", caffe.TEST)
    for k in range(m["forward_passes"]):
        net.forward()
        want = npz(case / m["outputs"][k])
        for blob, w in want.items():
            got = net.blobs[blob].data
            np.testing.assert_array_equal(got.reshape(w.shape), w, err_msg=f"{case.name} pass {k} blob {blob}")
            assert got.shape == w.shape


def test_a_range_after_the_data_layer_reads_nothing(tmp_path: Path) -> None:
    """``forward(start=...)`` past the data layer runs on what the blobs hold (what a script wrote), and the
    next pass that runs the data layer reads the batch after the last one read."""
    case = GOLDEN / "data" / "lmdb_jpg_crop"
    text = (case / "net.prototxt").read_text().replace('"../datasets/', f'"{GOLDEN / "data" / "datasets"}/')
    (tmp_path / "net.prototxt").write_text(text + """
layer { name: "double" type: "Power" bottom: "data" top: "double" power_param { scale: 2 } }""")
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    first, second = (npz(case / f"outputs_{k}.npz")["data"] for k in (0, 1))
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, first)
    net.blobs["data"].data[...] = 1.0
    net.forward(start="double")
    assert (net.blobs["double"].data == 2.0).all() and (net.blobs["data"].data == 1.0).all()
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, second)
    np.testing.assert_array_equal(net.blobs["double"].data, second * 2)


def test_a_missing_source_is_left_to_the_caller_with_a_warning(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Caffe stops at a missing source; here the tops are blobs the caller fills (net surgery on a train_val
    far from its data), said once, unless the caller gave their shapes."""
    monkeypatch.chdir(tmp_path)
    Path("net.prototxt").write_text("""
layer { name: "data" type: "ImageData" top: "data" top: "label"
        image_data_param { source: "no_list.txt" batch_size: 2 new_height: 4 new_width: 5 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }""")
    with pytest.warns(UserWarning) as record:
        net = caffe.Net("net.prototxt", caffe.TEST)
    assert [str(w.message) for w in record] == [
        "caffe.Net: ImageData layer 'data' reads nothing: its source 'no_list.txt' does not exist (Caffe would "
        "stop here); fill net.blobs['data'], net.blobs['label'] yourself"]
    net.blobs["data"].data[...] = 1.0
    net.forward()
    np.testing.assert_allclose(net.blobs["ip"].data, np.broadcast_to(
        net.params["ip"][0].data.sum(1) + net.params["ip"][1].data, (2, 3)), rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        caffe.Net("net.prototxt", caffe.TEST, input_shapes={"data": [2, 3, 4, 5], "label": [2]})


TWO_READERS = """
layer {{ name: "d1" type: "Data" top: "data" top: "label"
        data_param {{ source: "{db}" batch_size: 2 backend: LMDB }} }}
layer {{ name: "d2" type: "Data" top: "data2" top: "label2"
        data_param {{ source: "{db}" batch_size: 2 backend: LMDB }} }}
layer {{ name: "{third}" type: "{third_type}" top: "{third}" {third_param} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 2 }} }}
"""


def _two_readers(tmp_path: Path, third: str = "inp", third_type: str = "Input",
                 third_param: str = "input_param { shape { dim: 2 dim: 1 } }") -> Any:
    db = GOLDEN / "data" / "datasets" / "color_raw_lmdb"
    (tmp_path / "net.prototxt").write_text(TWO_READERS.format(db=db, third=third, third_type=third_type,
                                                              third_param=third_param))
    return caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)


def test_only_the_data_layers_a_range_runs_advance(tmp_path: Path) -> None:
    """Each data layer reads its next batch when it runs (Caffe's ``ForwardFromTo``): a range that ran d1 only
    advanced d2 too, and a range starting at the Input layer after them advanced both."""
    net = _two_readers(tmp_path)
    # the database's labels in key order: Caffe's batches of the same database (lmdb_raw_plain reads it too)
    want = [float(v) for k in range(3) for v in npz(GOLDEN / "data" / "lmdb_raw_plain" / f"outputs_{k}.npz")["label"]]
    net.forward(end="d1")
    assert list(net.blobs["label"].data) == want[0:2] and list(net.blobs["label2"].data) == [0, 0]
    net.forward(start="d2", end="d2")
    assert list(net.blobs["label2"].data) == want[0:2]
    net.forward(start="inp")
    net.forward()
    assert list(net.blobs["label"].data) == want[2:4] and list(net.blobs["label2"].data) == want[2:4]


def test_set_input_arrays_beside_a_reading_data_layer(tmp_path: Path) -> None:
    """A MemoryData layer first and a Data layer reading its source: set_input_arrays went to the readers
    ("not an in-process data layer of this net")."""
    db = GOLDEN / "data" / "datasets" / "color_raw_lmdb"
    (tmp_path / "net.prototxt").write_text(f"""
layer {{ name: "mem" type: "MemoryData" top: "mdata" top: "mlabel"
        memory_data_param {{ batch_size: 2 channels: 1 height: 1 width: 1 }} }}
layer {{ name: "d" type: "Data" top: "data" top: "label"
        data_param {{ source: "{db}" batch_size: 2 backend: LMDB }} }}""")
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    net.set_input_arrays(np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1), np.arange(4, dtype=np.float32))
    net.forward()
    assert list(net.blobs["mlabel"].data.ravel()) == [0, 1] and net.blobs["data"].data.shape == (2, 3, 20, 24)


def test_loader_workers_fork_while_a_net_holds_the_database(tmp_path: Path) -> None:
    """A ``caffe.Net`` reading an LMDB keeps its environment open; the loader workers of a solver built next
    were then started with forkserver, which re-runs a script without a ``__main__`` guard (most pycaffe
    scripts): "DataLoader worker exited unexpectedly". Forked workers read through the inherited environment."""
    from prototxt2py.data.layers import data_layers
    from prototxt2py.data.loader import DataFeed, _context
    from prototxt2py.reader import read_net

    net = _two_readers(tmp_path)
    net.forward()
    assert _context().get_start_method() == "fork"
    layers = data_layers(read_net(tmp_path / "net.prototxt").net, "TEST")
    with DataFeed(layers[:1], workers=2) as feed:
        labels = [feed.next()["label"].tolist() for _ in range(3)]
    net2 = _two_readers(tmp_path)
    want = []
    for _ in range(3):
        net2.forward(end="d1")
        want.append(net2.blobs["label"].data.tolist())
    assert labels == want


def test_two_train_nets_draw_their_own_crops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Caffe's transformers seed themselves from its global RNG: two TRAIN nets over one database crop and
    mirror differently. They drew the same (the seed was torch's initial seed and the layer name); a seed set
    before each still makes them equal."""
    case = GOLDEN / "data" / "lmdb_raw_train_mirror_crop"
    monkeypatch.chdir(case)
    first, second = (caffe.Net("net.prototxt", caffe.TRAIN) for _ in range(2))
    batches = []
    for net in (first, second):
        net.forward()
        batches.append(net.blobs["data"].data.copy())
    assert not np.array_equal(*batches)
    again = []
    for _ in range(2):
        caffe.set_random_seed(5)
        net = caffe.Net("net.prototxt", caffe.TRAIN)
        net.forward()
        again.append(net.blobs["data"].data.copy())
    np.testing.assert_array_equal(*again)


def test_a_solvers_weights_do_not_depend_on_its_loader_workers(tmp_path: Path) -> None:
    """Each DataLoader's ``iter()`` drew a base seed from torch's global generator before the fillers ran: the
    same ``random_seed`` gave other starting weights with ``--data-workers 0`` and with workers."""
    from prototxt2py.train import get_solver

    db = GOLDEN / "data" / "datasets" / "color_raw_lmdb"
    (tmp_path / "net.prototxt").write_text(f"""
layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}
        transform_param {{ scale: 0.00390625 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}""")
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.1\n'
                                              'lr_policy: "fixed"\nmax_iter: 1\nrandom_seed: 3\n'
                                              f'snapshot_prefix: "{tmp_path / "s"}"\n')
    weights = []
    for workers in (0, 2):
        solver = get_solver(str(tmp_path / "solver.prototxt"), data_workers=workers)
        weights.append(solver.net.layer("ip").weight.detach().clone())
        solver.close()
    assert torch.equal(*weights)
