"""The torch DataLoader wrapper: worker processes give the batch sequence of a single reader, DataFeed runs a
net's data layers, and layer descriptions survive pickling into a fresh worker process."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest
import torch
from data_helpers import DATASETS, data_net, layer_from

from prototxt2py import plain as plain_mod
from prototxt2py.data import DataError
from prototxt2py.data.loader import DataFeed, LayerBatches, make_loader

pytest.importorskip("lmdb")
pytest.importorskip("cv2")

LAYER = data_net(str(DATASETS / "color_raw_lmdb"), 5, "crop_size: 16 scale: 0.5")


def _take(loader, n: int) -> list[tuple[torch.Tensor, ...]]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_workers_keep_the_single_reader_order() -> None:
    layer = layer_from(LAYER)
    want = _take(make_loader(layer, workers=0), 7)
    got = _take(make_loader(layer, workers=2, prefetch=2), 7)
    assert [b[1].tolist() for b in got] == [[float((5 * i + j) % 16) for j in range(5)] for i in range(7)]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g[0], w[0]) and g[0].shape == (5, 3, 16, 16)


def test_missing_source_fails_in_the_callers_process() -> None:
    with pytest.raises(DataError, match="layer 'data': data source 'nope' does not exist"):
        make_loader(layer_from(data_net("nope")), workers=2)


def test_datafeed_runs_every_data_layer() -> None:
    mem = layer_from("""layer { name: "mem" type: "MemoryData" top: "m" top: "ml"
      memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 } }""")
    with DataFeed([layer_from(LAYER), mem], workers=1) as feed:
        feed.source("mem").reset(np.ones((4, 1, 1, 2), np.float32), np.array([3, 4, 5, 6]))
        a, b = feed.next(), feed.next()
    assert set(a) == {"data", "label", "m", "ml"}
    assert a["label"].tolist() == [0, 1, 2, 3, 4] and b["label"].tolist() == [5, 6, 7, 8, 9]
    assert b["ml"].tolist() == [5, 6]


def test_memorydata_cannot_go_to_workers() -> None:
    mem = layer_from("""layer { name: "mem" type: "MemoryData" top: "m" top: "ml"
      memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 } }""")
    with pytest.raises(DataError, match="fed from Python"):
        make_loader(mem, workers=1)


def test_layer_survives_pickling_into_a_fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawned worker has not generated the plain classes yet; unpickling must make them first."""
    ds = LayerBatches(layer_from(LAYER), seed=1)
    blob = pickle.dumps(ds)
    for name in ("DataParameter", "TransformationParameter"):
        monkeypatch.delattr(plain_mod, name)
    monkeypatch.setattr(plain_mod, "_CLASSES", {})
    back = pickle.loads(blob)
    assert back.layer.param.batch_size == 5 and back.layer.transform.crop_size == 16
    assert next(iter(back))[0].shape == (5, 3, 16, 16)


@pytest.mark.slow
def test_forked_workers_while_an_lmdb_is_open() -> None:
    """With an LMDB environment open here (a pycaffe Net's data layer), workers are still forked (a fresh start
    re-runs a script without a ``__main__`` guard), read through the environment they inherit, and give the
    single reader's sequence."""
    from prototxt2py.data import open_source

    layer = layer_from(LAYER)
    held = open_source(layer)  # keeps the environment open in this process
    try:
        loader = make_loader(layer, workers=2)
        if "fork" in multiprocessing.get_all_start_methods():
            assert loader.multiprocessing_context.get_start_method() == "fork"
        got = _take(loader, 3)
    finally:
        held.close()
    assert [b[1].tolist() for b in got] == [[float((5 * i + j) % 16) for j in range(5)] for i in range(3)]


def test_train_val_net_gives_the_phase_data_layer_and_its_shapes() -> None:
    """NetState rules pick the layer; top_shapes sizes the net's inputs from the data, as Caffe's set-up does."""
    import prototxt2py
    from prototxt2py.data.layers import data_layers, top_shapes
    from prototxt2py.reader import read_net_text

    def data(phase: str, batch: int, crop: int) -> str:
        return f"""layer {{ name: "d_{phase}" type: "Data" top: "data" top: "label" include {{ phase: {phase} }}
          transform_param {{ crop_size: {crop} }}
          data_param {{ source: "{DATASETS / 'color_raw_lmdb'}" batch_size: {batch} backend: LMDB }} }}"""

    text = data("TRAIN", 4, 16) + data("TEST", 2, 12) + """
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }"""
    src = read_net_text(text)
    (train,) = data_layers(src.net, "TRAIN")
    (test,) = data_layers(src.net, "TEST")
    assert (train.name, test.name) == ("d_TRAIN", "d_TEST")
    assert top_shapes([test]) == {"data": [2, 3, 12, 12], "label": [2]}
    net = prototxt2py.load(src, phase="TRAIN", input_shapes=top_shapes([train]))
    with DataFeed([train], workers=0) as feed:
        loss = net(**feed.next())["loss"]
    assert loss.shape == () and torch.isfinite(loss)


class _Counter:
    """A reader without skip_batches: batch i holds the number i."""

    def __init__(self, layer) -> None:
        self.i = 0

    def next_batch(self) -> list[np.ndarray]:
        self.i += 1
        return [np.array([self.i - 1], dtype=np.float32)]


def test_readers_without_skip_keep_their_order_under_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from prototxt2py.data import READERS, DataLayer, db

    monkeypatch.setitem(READERS, "Counter", _Counter)  # registered here only: the workers must be forked
    monkeypatch.setattr(db, "_LMDB_ENVS", {})
    layer = DataLayer("c", "Counter", ("n",), None, None, "TRAIN")
    assert [b[0].item() for b in _take(make_loader(layer, workers=2), 6)] == [0, 1, 2, 3, 4, 5]


def test_training_takes_data_layers_from_the_plain_attrs() -> None:
    """feeding.data_layer_for builds a reader's DataLayer from the IR node's plain attrs (no protobuf): for every
    reader type it equals the one built from the LayerParameter (data.layers.data_layer), param and transform
    included, and HDF5Data keeps the transform_param it must refuse. (DummyData is no input: its module fills
    its tops in the net.)"""
    import prototxt2py
    from prototxt2py.data.layers import data_layers
    from prototxt2py.reader import read_net_text
    from prototxt2py.train.feeding import data_layer_for, is_data_node

    text = f"""
    layer {{ name: "lmdb" type: "Data" top: "a" top: "al"
      transform_param {{ crop_size: 4 mirror: true scale: 0.5 mean_value: 3 }}
      data_param {{ source: "{DATASETS / 'color_raw_lmdb'}" batch_size: 2 backend: LMDB rand_skip: 3 }} }}
    layer {{ name: "list" type: "ImageData" top: "b" top: "bl" transform_param {{ force_gray: true }}
      image_data_param {{ source: "list.txt" batch_size: 3 new_height: 5 new_width: 6 shuffle: true }} }}
    layer {{ name: "h5" type: "HDF5Data" top: "c" top: "cl" transform_param {{ scale: 2 }}
      hdf5_data_param {{ source: "h5.txt" batch_size: 4 shuffle: true }} }}
    layer {{ name: "mem" type: "MemoryData" top: "d" top: "dl"
      memory_data_param {{ batch_size: 2 channels: 1 height: 3 width: 3 }} }}
    layer {{ name: "dummy" type: "DummyData" top: "e"
      dummy_data_param {{ shape {{ dim: 2 dim: 3 }} data_filler {{ type: "gaussian" std: 2 }} }} }}
    layer {{ name: "win" type: "WindowData" top: "f" top: "fl" transform_param {{ crop_size: 8 }}
      window_data_param {{ source: "windows.txt" batch_size: 2 fg_threshold: 0.4 }} }}
    """
    src = read_net_text(text)
    g = prototxt2py.graph(src, "TRAIN", infer=False)
    got = [data_layer_for(n, "TRAIN", 1, 2) for n in g.nodes if is_data_node(n)]
    want = [x for x in data_layers(src.net, "TRAIN", 1, 2) if x.type != "DummyData"]
    assert [x.type for x in got] == ["Data", "ImageData", "HDF5Data", "MemoryData", "WindowData"]
    assert got == want
    assert got[0].param.rand_skip == 3 and got[0].transform.mirror and got[0].transform.crop_size == 4
    assert got[1].param.new_width == 6 and got[1].transform.force_gray and (got[1].rank, got[1].world) == (1, 2)
    assert got[2].transform.has("scale") and got[4].param.fg_threshold == pytest.approx(0.4)
