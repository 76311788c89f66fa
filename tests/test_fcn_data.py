"""FCN's Python data layers built in (voc_layers, siftflow_layers, nyud_layers, pascalcontext_layers): each
pass's arrays equal what FCN's own classes hand the net (a line-by-line port of them below, run on the same
files), in FCN's order (Python's ``random`` seeded with ``seed``; in sequence for other splits); FCN's corpus nets
read their datasets; a solver trains with them (library, pycaffe, CLI); bad files and settings give one line."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from golden import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prototxt2py.data import DataError, open_source
from prototxt2py.data.layers import data_layers
from prototxt2py.reader import read_net_text

Image = pytest.importorskip("PIL.Image")
sio = pytest.importorskip("scipy.io")

SIFT = "spatial_envelope_256x256_static_8outdoorcategories"
SIZES = [(20, 24), (17, 31), (25, 19), (22, 22), (18, 27)]
IDS = [f"2008_{i:06d}" for i in range(len(SIZES))]
VOC_MEAN = (104.00699, 116.66877, 122.67892)


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _labels(h: int, w: int, seed: int, lo: int, hi: int) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(lo, hi, (h, w))


def _write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ids) + "\n")


def _save(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array, mode="P") if palette else Image.fromarray(array)
    if palette:
        im.putpalette(list(range(256)) * 3)
    im.save(path)


def _savemat(path: Path, **values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(str(path), values)


def make_datasets(root: Path) -> dict[str, Path]:
    """The five datasets' layouts, as FCN's layers expect them, with random images of several sizes."""
    voc, sbdd, sift, nyud = root / "voc", root / "sbdd", root / "sift", root / "nyud"
    context, pascal = root / "context", root / "pascal"
    for s, (i, (h, w)) in zip(IDS, enumerate(SIZES), strict=True):
        _save(voc / "JPEGImages" / f"{s}.jpg", _rgb(h, w, i))
        label = _labels(h, w, i, 0, 21).astype(np.uint8)
        label[0, :3] = 255  # void
        _save(voc / "SegmentationClass" / f"{s}.png", label, palette=True)
        _save(sbdd / "img" / f"{s}.jpg", _rgb(h, w, i + 10))
        _savemat(sbdd / "cls" / f"{s}.mat", GTcls={"Segmentation": _labels(h, w, i, 0, 21).astype(np.uint8),
                                                    "CategoriesPresent": np.array([1, 2])})
        _save(sift / "Images" / SIFT / f"{s}.jpg", _rgb(h, w, i + 20))
        _savemat(sift / "SemanticLabels" / SIFT / f"{s}.mat", S=_labels(h, w, i, 0, 34).astype(np.float64))
        _savemat(sift / "GeoLabels" / SIFT / f"{s}.mat", S=_labels(h, w, i + 1, -1, 4).astype(np.int16))
        _save(nyud / "data" / "images" / f"img_{s}.png", _rgb(h, w, i + 30))
        _save(nyud / "data" / "hha" / f"img_{s}.png", _rgb(h, w, i + 40))
        depth = _labels(h, w, i, 0, 9000).astype(np.uint16)
        depth[1, 1] = 0  # log 0
        (nyud / "data" / "depth").mkdir(parents=True, exist_ok=True)
        Image.fromarray(depth).save(nyud / "data" / "depth" / f"img_{s}.png")
        _savemat(nyud / "segmentation" / f"img_{s}.mat", segmentation=_labels(h, w, i, 0, 41).astype(np.uint8))
        _save(pascal / "VOC2010" / "JPEGImages" / f"{s}.jpg", _rgb(h, w, i + 50))
        _savemat(context / "trainval" / f"{s}.mat", LabelMap=_labels(h, w, i, 0, 12).astype(np.uint16))
    _write_list(voc / "ImageSets" / "Segmentation" / "train.txt", IDS)
    _write_list(voc / "ImageSets" / "Segmentation" / "seg11valid.txt", IDS[:3])
    for d in (sbdd, sift, nyud):
        _write_list(d / "train.txt", IDS)
        _write_list(d / "trainval.txt", IDS)
        _write_list(d / "test.txt", IDS[1:])
    _write_list(pascal / "VOC2010" / "ImageSets" / "Main" / "val.txt", IDS)
    _write_list(pascal / "VOC2010" / "ImageSets" / "Main" / "train.txt", IDS)
    names = ["accordion", "aeroplane", "table", "bed clothes", "bird", "cloth", "boat", "bottle", "bus", "car", "cat"]
    (context / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(names, 1)))
    task = ["aeroplane", "bedcloth", "bird", "clothes", "diningtable", "cat", "aeroplane"]  # a name twice
    (context / "59_labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(task, 1)))
    return {"voc": voc, "sbdd": sbdd, "siftflow": sift, "nyud": nyud, "context": context, "pascal": pascal}


# -- FCN's layers, line by line (fcn.berkeleyvision.org @ 2016-2017), on plain arguments -------------------------
class FcnReference:
    """``setup`` + (``reshape``; ``forward``) of FCN's five data layers: the arrays each pass puts in the tops."""

    def __init__(self, dataset: str, params: dict):
        self.dataset, self.params = dataset, params
        split = params["split"]
        self.mean = np.array(params["mean"]) if "mean" in params else None
        if dataset == "voc":
            split_f = f"{params['voc_dir']}/ImageSets/Segmentation/{split}.txt"
        elif dataset == "context":
            self.voc_dir = params["voc_dir"] + "/VOC2010"
            split_f = f"{self.voc_dir}/ImageSets/Main/{split}.txt"
            labels_400 = np.genfromtxt(params["context_dir"] + "/labels.txt", delimiter=":", dtype=None,
                                       encoding="utf-8")
            labels_59 = np.genfromtxt(params["context_dir"] + "/59_labels.txt", delimiter=":", dtype=None,
                                      encoding="utf-8")
            self.labels_400 = [label.replace(" ", "") for idx, label in labels_400]
            self.labels_59 = [label.replace(" ", "") for idx, label in labels_59]
            for main_label, task_label in zip(("table", "bedclothes", "cloth"), ("diningtable", "bedcloth", "clothes"),
                                              strict=True):
                self.labels_59[self.labels_59.index(task_label)] = main_label
        else:
            split_f = f"{params[dataset + '_dir']}/{split}.txt"
        self.indices = open(split_f).read().splitlines()
        self.idx = 0
        self.random = params.get("randomize", True) and "train" in split
        if self.random:
            self.rng = random.Random(params.get("seed"))
            self.idx = self.rng.randint(0, len(self.indices) - 1)

    def next(self) -> list[np.ndarray]:
        idx = self.indices[self.idx]
        tops = [np.asarray(a)[np.newaxis].astype(np.float32) for a in self.load(idx)]
        if self.random:
            self.idx = self.rng.randint(0, len(self.indices) - 1)
        else:
            self.idx = (self.idx + 1) % len(self.indices)
        return tops

    @staticmethod
    def image(path: str, mean: np.ndarray, bgr: bool = True) -> np.ndarray:
        in_ = np.array(Image.open(path), dtype=np.float32)
        if bgr:
            in_ = in_[:, :, ::-1]
        in_ -= mean
        return in_.transpose((2, 0, 1))

    def load(self, idx: str) -> list[np.ndarray]:
        p = self.params
        if self.dataset == "voc":
            label = np.array(Image.open(f"{p['voc_dir']}/SegmentationClass/{idx}.png"), dtype=np.uint8)
            return [self.image(f"{p['voc_dir']}/JPEGImages/{idx}.jpg", self.mean), label[np.newaxis, ...]]
        if self.dataset == "sbdd":
            mat = sio.loadmat(f"{p['sbdd_dir']}/cls/{idx}.mat")
            label = mat["GTcls"][0]["Segmentation"][0].astype(np.uint8)
            return [self.image(f"{p['sbdd_dir']}/img/{idx}.jpg", self.mean), label[np.newaxis, ...]]
        if self.dataset == "siftflow":
            d = p["siftflow_dir"]
            mean = np.array((114.578, 115.294, 108.353), dtype=np.float32)
            out = [self.image(f"{d}/Images/{SIFT}/{idx}.jpg", mean)]
            for kind in ("Semantic", "Geo"):
                label = sio.loadmat(f"{d}/{kind}Labels/{SIFT}/{idx}.mat")["S"]
                if kind == "Geo":
                    label[label == -1] = 0
                label = label.astype(np.uint8)
                label -= 1
                out.append(label[np.newaxis, ...].copy())
            return out
        if self.dataset == "nyud":
            d, out = p["nyud_dir"], []
            for top in p["tops"]:
                if top == "color":
                    out.append(self.image(f"{d}/data/images/img_{idx}.png",
                                          np.array((116.190, 97.203, 92.318), dtype=np.float32)))
                elif top == "hha":
                    out.append(self.image(f"{d}/data/hha/img_{idx}.png",
                                          np.array((132.431, 94.076, 118.477), dtype=np.float32), bgr=False))
                elif top == "depth":
                    depth = np.array(Image.open(f"{d}/data/depth/img_{idx}.png"), dtype=np.float32)
                    with np.errstate(divide="ignore"):
                        depth = np.log(depth)
                    depth -= np.array((7.844,), dtype=np.float32)
                    out.append(depth[np.newaxis, ...])
                else:
                    label = sio.loadmat(f"{d}/segmentation/img_{idx}.mat")["segmentation"].astype(np.uint8)
                    label -= 1
                    out.append(label[np.newaxis, ...])
            return out
        label_400 = sio.loadmat(f"{p['context_dir']}/trainval/{idx}.mat")["LabelMap"]
        label = np.zeros_like(label_400, dtype=np.uint8)
        for i, name in enumerate(self.labels_59):
            idx_400 = self.labels_400.index(name) + 1
            label[label_400 == idx_400] = i + 1
        mean = np.array((104.007, 116.669, 122.679), dtype=np.float32)
        return [self.image(f"{self.voc_dir}/JPEGImages/{idx}.jpg", mean), label[np.newaxis, ...]]


def _params(dirs: dict[str, Path], dataset: str, split: str, **extra) -> dict:
    base = {
        "voc": {"voc_dir": str(dirs["voc"]), "mean": VOC_MEAN},
        "sbdd": {"sbdd_dir": str(dirs["sbdd"]), "mean": (104, 116.66877, 122.67892)},  # an int too
        "siftflow": {"siftflow_dir": str(dirs["siftflow"])},
        "nyud": {"nyud_dir": str(dirs["nyud"]), "tops": ["color", "depth", "hha", "label"]},
        "context": {"voc_dir": str(dirs["pascal"]), "context_dir": str(dirs["context"])},
    }[dataset]
    return {**base, "split": split, "seed": 1337, **extra}


PYTHON_LAYER = {
    "voc": ("voc_layers", "VOCSegDataLayer"),
    "sbdd": ("voc_layers", "SBDDSegDataLayer"),
    "siftflow": ("siftflow_layers", "SIFTFlowSegDataLayer"),
    "nyud": ("nyud_layers", "NYUDSegDataLayer"),
    "context": ("pascalcontext_layers", "PASCALContextSegDataLayer"),
}


def _layer_text(dataset: str, params: dict, tops: list[str], name: str = "data", extra: str = "") -> str:
    module, layer = PYTHON_LAYER[dataset]
    top = " ".join(f'top: "{t}"' for t in tops)
    param_str = repr(params).replace("'", "\\'")
    return (f'layer {{ name: "{name}" type: "Python" {top} {extra} python_param {{ module: "{module}" '
            f'layer: "{layer}" param_str: "{param_str}" }} }}\n')


def _tops(dataset: str, params: dict) -> list[str]:
    if dataset == "siftflow":
        return ["data", "sem", "geo"]
    if dataset == "nyud":
        return list(params["tops"])
    return ["data", "label"]


def _source(dataset: str, params: dict):
    net = read_net_text(_layer_text(dataset, params, _tops(dataset, params))).net
    (layer,) = data_layers(net, "TRAIN")
    return open_source(layer)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    return make_datasets(tmp_path_factory.mktemp("fcn"))


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("dataset", list(PYTHON_LAYER))
def test_passes_equal_fcn_layers(dirs, dataset: str, split: str) -> None:
    """Twelve passes (random order in 'train' splits, the list in order and wrapping in the others): each
    top's values, shape and order equal FCN's layer, exactly."""
    split = {"voc": {"test": "seg11valid"}, "context": {"test": "val"}}.get(dataset, {}).get(split, split)
    if dataset == "siftflow" and split == "train":
        split = "trainval"
    params = _params(dirs, dataset, split)
    ours, ref = _source(dataset, params), FcnReference(dataset, params)
    seen = set()
    for _ in range(12):
        got, want = ours.next_batch(), ref.next()
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == np.float32 and g.shape == w.shape and g.ndim == 4 and g.shape[0] == 1
            np.testing.assert_array_equal(g, w)
        seen.add(got[0].shape)
    assert len(seen) > 1  # images of several sizes went by


def test_random_order_follows_the_seed(dirs) -> None:
    """Another seed, another order; ``randomize: False`` reads a train split in order from its first id."""
    a = [_source("voc", _params(dirs, "voc", "train", seed=s)).next_batch()[0].shape for s in (1, 1, 2) for _ in "x"]
    assert a[0] == a[1]
    in_order = _source("voc", _params(dirs, "voc", "train", randomize=False))
    assert [in_order.next_batch()[0].shape[2:] for _ in SIZES] == SIZES


def test_loader_workers_keep_the_order(dirs) -> None:
    """Two loader processes split the passes (each skips the other's draws): the sequence stays FCN's."""
    from prototxt2py.data.loader import DataFeed

    params = _params(dirs, "voc", "train")
    net = read_net_text(_layer_text("voc", params, ["data", "label"])).net
    feed = DataFeed(data_layers(net, "TRAIN"), workers=2)
    ref = FcnReference("voc", params)
    try:
        for _ in range(7):
            got, want = feed.next(), ref.next()
            np.testing.assert_array_equal(got["data"].numpy(), want[0])
            np.testing.assert_array_equal(got["label"].numpy(), want[1])
    finally:
        feed.close()


# -- the corpus nets ----------------------------------------------------------------------------------------------
def _corpus_tree(tmp: Path, dirs: dict[str, Path], model: str) -> Path:
    """FCN's repository layout around a corpus model directory: ``../data/...`` as its param_str names it."""
    src = CORPUS / "shelhamer__fcn.berkeleyvision.org" / model
    work = tmp / "fcn" / model
    shutil.copytree(src, work)
    data = tmp / "fcn" / "data"
    (data / "sbdd").mkdir(parents=True)
    shutil.copytree(dirs["sbdd"], data / "sbdd" / "dataset")
    shutil.copytree(dirs["voc"], data / "pascal" / "VOC2011")
    shutil.copytree(dirs["siftflow"], data / "sift-flow")
    shutil.copytree(dirs["nyud"], data / "nyud")
    up = tmp / "data"  # PASCAL-Context's param_str names ../../data: the directory above the repository's
    shutil.copytree(dirs["pascal"], up / "pascal")
    shutil.copytree(dirs["context"], up / "pascal-context")
    return work


@pytest.mark.parametrize("model, file, phase", [
    ("voc-fcn-alexnet", "val.prototxt", "TEST"),
    ("voc-fcn8s", "train.prototxt", "TRAIN"),
    ("siftflow-fcn8s", "trainval.prototxt", "TRAIN"),
    ("nyud-fcn32s-color-hha", "test.prototxt", "TEST"),
    ("pascalcontext-fcn8s", "val.prototxt", "TEST"),
])
def test_corpus_net_reads_its_dataset(tmp_path, dirs, monkeypatch, model: str, file: str, phase: str) -> None:
    """``caffe.Net`` of FCN's own net reads the dataset at the relative path its param_str names and reshapes to
    each image: the score map has the image's size (FCN's crop) and one channel per class."""
    from prototxt2py import caffe

    monkeypatch.chdir(_corpus_tree(tmp_path, dirs, model))
    net = caffe.Net(file, getattr(caffe, phase))
    for _ in range(2):
        net.forward()
        image = next(b for b in ("data", "color") if b in net.blobs)
        h, w = net.blobs[image].data.shape[2:]
        score = next(b for b in ("score", "score_sem") if b in net.blobs)
        assert net.blobs[score].data.shape[2:] == (h, w)
        assert np.isfinite(net.blobs["loss" if "loss" in net.blobs else "loss_sem"].data).all()
    assert net.blobs[image].data.shape[2:] in set(SIZES)


def test_corpus_solver_runs_as_solve_py(tmp_path, dirs, monkeypatch) -> None:
    """FCN-8s's own solver.prototxt (SBDD train net, VOC val net) as ``solve.py`` drives it: build, bilinear
    ``surgery.interp`` of the 'up' layers through ``net.params``, steps. The net has no fillers (all weights 0),
    so the first pass's unnormalised loss is exactly (non-void pixels) x log 21."""
    from prototxt2py import caffe

    monkeypatch.chdir(_corpus_tree(tmp_path, dirs, "voc-fcn8s"))
    Path("snapshot").mkdir()  # as in Caffe, the solver refuses a snapshot prefix it cannot write
    solver = caffe.SGDSolver("solver.prototxt")
    for name in [k for k in solver.net.params if "up" in k]:  # surgery.interp
        m, k, h, w = solver.net.params[name][0].data.shape
        factor, centre = (h + 1) // 2, (h - 1) / 2 if h % 2 else (h + 1) // 2 - 0.5
        og = np.ogrid[:h, :h]
        filt = (1 - abs(og[0] - centre) / factor) * (1 - abs(og[1] - centre) / factor)
        solver.net.params[name][0].data[range(m), range(k), :, :] = filt
    assert solver.net.params["upscore2"][0].data[3, 3, 1, 1] == pytest.approx(0.5625)
    solver.step(1)
    label = solver.net.blobs["label"].data
    assert float(solver.net.blobs["loss"].data) == pytest.approx((label != 255).sum() * np.log(21), rel=1e-5)
    assert solver.net.blobs["score"].data.shape[2:] == label.shape[2:]


# -- training ------------------------------------------------------------------------------------------------------
NET = """
{data}
layer {{ name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param {{ num_output: 2 kernel_size: 1 weight_filler {{ type: "constant" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param {{ ignore_label: 255 normalize: false }} }}
"""


def _learnable_voc(root: Path) -> Path:
    """A VOC tree whose labels follow the pixels (1 where the red channel is bright): a 1x1 convolution learns it."""
    voc = root / "voc"
    for s, (i, (h, w)) in zip(IDS, enumerate(SIZES), strict=True):
        rgb = _rgb(h, w, i)
        _save(voc / "JPEGImages" / f"{s}.png", rgb)
        Image.open(voc / "JPEGImages" / f"{s}.png").save(voc / "JPEGImages" / f"{s}.jpg", quality=100)
        label = (np.array(Image.open(voc / "JPEGImages" / f"{s}.jpg"))[..., 0] > 127).astype(np.uint8)
        _save(voc / "SegmentationClass" / f"{s}.png", label, palette=True)
    _write_list(voc / "ImageSets" / "Segmentation" / "train.txt", IDS)
    _write_list(voc / "ImageSets" / "Segmentation" / "val.txt", IDS[:3])
    return voc


def _solver_files(tmp: Path) -> Path:
    _learnable_voc(tmp)
    for split in ("train", "val"):
        params = {"voc_dir": "voc", "seed": 1337, "split": split, "mean": VOC_MEAN}
        (tmp / f"{split}.prototxt").write_text(NET.format(data=_layer_text("voc", params, ["data", "label"])))
    solver = tmp / "solver.prototxt"
    solver.write_text(textwrap.dedent("""\
        train_net: "train.prototxt"
        test_net: "val.prototxt"
        test_iter: 3
        test_interval: 1000
        base_lr: 1e-5
        lr_policy: "fixed"
        momentum: 0.9
        max_iter: 60
        display: 0
        snapshot_prefix: "fcn"
        """))
    return solver


def test_solver_trains_and_scores_as_solve_py(tmp_path, monkeypatch) -> None:
    """FCN's ``solve.py`` + ``score.py`` flow over pycaffe: ``SGDSolver`` steps on the TRAIN split (one image per
    pass, each its size), then ``test_nets[0].share_with(solver.net)`` and ``forward()`` per val image; the
    per-pixel loss falls and the val accuracy rises over chance."""
    from prototxt2py import caffe

    _solver_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    caffe.set_random_seed(0)
    solver = caffe.SGDSolver("solver.prototxt")

    def val_accuracy() -> float:
        net = solver.test_nets[0]
        net.share_with(solver.net)
        right = total = 0
        for _ in range(3):
            net.forward()
            label, pred = net.blobs["label"].data[0, 0], net.blobs["score"].data[0].argmax(0)
            right, total = right + int((label == pred).sum()), total + label.size
        return right / total

    before = val_accuracy()
    solver.step(1)
    first = float(solver.net.blobs["loss"].data) / solver.net.blobs["label"].data.size
    solver.step(59)
    last = float(solver.net.blobs["loss"].data) / solver.net.blobs["label"].data.size
    after = val_accuracy()
    assert first == pytest.approx(np.log(2), rel=1e-5)  # zero weights: both classes equally likely
    assert last < 0.5 * first and after > 0.9 > before


def test_cli_trains_and_tests(tmp_path) -> None:
    """``prototxt2py train`` and ``test`` on the solver and val net as files: exit 0, a snapshot, the test loss."""
    _solver_files(tmp_path)
    run = [sys.executable, "-m", "prototxt2py"]
    out = subprocess.run([*run, "train", "solver.prototxt", "--iterations", "20"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "fcn_iter_20.caffemodel").is_file()
    out = subprocess.run([*run, "test", "val.prototxt", "--weights", "fcn_iter_20.caffemodel", "--iterations", "3"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "loss = " in out.stdout + out.stderr


def test_graph_only_commands_ask_for_the_shapes(dirs) -> None:
    import prototxt2py

    params = _params(dirs, "nyud", "test", tops=["color", "depth", "label"])
    source = read_net_text(_layer_text("nyud", params, ["color", "depth", "label"]))
    g = prototxt2py.graph(source, phase="TEST", allow_unknown_types=True)
    (why,) = g.unresolved().values()
    assert "FCN nyud split" in why and "--input color=1,3,H,W --input depth=1,1,H,W --input label=1,1,H,W" in why


# -- refusals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, message", [
    ({"voc_dir": "x", "split": "train", "mean": "bgr"}, "'mean' must be a tuple of 1 to 4 numbers, got 'bgr'"),
    ({"split": "train", "mean": VOC_MEAN}, "param_str needs 'voc_dir' (FCN's voc_layers.VOCSegDataLayer reads it)"),
    ({"voc_dir": "x", "mean": VOC_MEAN}, "param_str needs 'split'"),
    ({"voc_dir": "x", "split": "train"}, "param_str needs 'mean'"),
    ({"voc_dir": 3, "split": "train", "mean": VOC_MEAN}, "'voc_dir' must be a string, got 3"),
    ({"voc_dir": "x", "split": "train", "mean": VOC_MEAN, "seed": "a"}, "'seed' must be an integer or None"),
])
def test_bad_settings_give_one_line(params: dict, message: str) -> None:
    import prototxt2py
    from prototxt2py.errors import Prototxt2pyError

    with pytest.raises(Prototxt2pyError) as e:
        prototxt2py.graph(read_net_text(_layer_text("voc", params, ["data", "label"])), phase="TRAIN",
                          allow_unknown_types=True)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_code_in_param_str_is_never_run(tmp_path, monkeypatch) -> None:
    """FCN's layers ``eval`` their param_str; here it is read as literals, and code in it is refused."""
    import prototxt2py
    from prototxt2py.errors import Prototxt2pyError

    monkeypatch.chdir(tmp_path)
    text = ('layer { name: "data" type: "Python" top: "data" top: "label" python_param { module: "voc_layers" '
            'layer: "VOCSegDataLayer" param_str: "__import__(\'os\').system(\'touch pwned\')" } }')
    with pytest.raises(Prototxt2pyError, match="is not a YAML mapping of literals"):
        prototxt2py.graph(read_net_text(text), phase="TRAIN", allow_unknown_types=True)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage, message", [
    ("gray", "is a L image of shape (20, 24); the layer needs 3 colour channels"),
    ("label_size", "its tops differ in size (image 20x24, label 21x24)"),
    ("missing", "cannot read '"),
    ("corrupt_mat", "cannot read MATLAB file"),
    ("wrong_mat", "holds no label map where FCN reads it (GTcls)"),
    ("empty_list", "names no image"),
])
def test_bad_files_give_one_line(tmp_path, damage: str, message: str) -> None:
    dirs = make_datasets(tmp_path)
    first = IDS[0]
    dataset = "sbdd" if "mat" in damage else "voc"
    if damage == "gray":
        Image.fromarray(_rgb(20, 24, 0)[..., 0]).save(dirs["voc"] / "JPEGImages" / f"{first}.jpg")
    elif damage == "label_size":
        _save(dirs["voc"] / "SegmentationClass" / f"{first}.png", np.zeros((21, 24), np.uint8), palette=True)
    elif damage == "missing":
        (dirs["voc"] / "JPEGImages" / f"{first}.jpg").unlink()
    elif damage == "corrupt_mat":
        (dirs["sbdd"] / "cls" / f"{first}.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    elif damage == "wrong_mat":
        _savemat(dirs["sbdd"] / "cls" / f"{first}.mat", Other=np.zeros((2, 2)))
    else:
        (dirs["voc"] / "ImageSets" / "Segmentation" / "train.txt").write_text("")
    params = _params(dirs, dataset, "train", randomize=False)
    with pytest.raises(DataError) as e:
        _source(dataset, params).next_batch()
    assert message in str(e.value) and "layer 'data'" in str(e.value) and "\n" not in str(e.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["image", "label", "mat"]), data=st.binary(max_size=400),
       header=st.sampled_from([b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"MATLAB 5.0 MAT-file, " + b" " * 95]))
def test_hostile_files_give_a_batch_or_one_line(tmp_path_factory, which: str, data: bytes, header: bytes) -> None:
    """Any bytes in an image, label or MATLAB file: a batch of float32 arrays or one DataError line."""
    dirs = make_datasets(tmp_path_factory.mktemp("hostile"))
    dataset = "sbdd" if which == "mat" else "voc"
    target = {"image": dirs["voc"] / "JPEGImages" / f"{IDS[0]}.jpg",
              "label": dirs["voc"] / "SegmentationClass" / f"{IDS[0]}.png",
              "mat": dirs["sbdd"] / "cls" / f"{IDS[0]}.mat"}[which]
    target.write_bytes(header + data)
    try:
        batch = _source(dataset, _params(dirs, dataset, "train", randomize=False)).next_batch()
    except DataError as e:
        assert "\n" not in str(e) and "layer 'data'" in str(e)
    else:
        assert all(a.dtype == np.float32 and a.ndim == 4 for a in batch)
