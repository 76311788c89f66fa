"""py-faster-rcnn's RoIDataLayer built in: the VOC roidb (annotations, flipped copies, filtering), the
aspect-grouped order and each pass's blobs equal what py-faster-rcnn's own code builds (a port of pascal_voc.py,
imdb.append_flipped_images, filter_roidb and minibatch.py below, run on the same files); the corpus ZF end-to-end
training net trains from the files; bad files give one line."""

from __future__ import annotations

import textwrap
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from golden import CORPUS

from prototxt2py.data import DataError
from prototxt2py.data.layers import data_layers
from prototxt2py.data.loader import open_reader
from prototxt2py.data.roi_data import VOC_CLASSES
from prototxt2py.reader import read_net_text

cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")

#: (height, width, objects: (name, xmin, ymin, xmax, ymax, difficult)) per image, VOC's 1-based corners
IMAGES = [
    (60, 80, [("dog", 5, 6, 40, 50, 0), ("person", 30, 2, 79, 59, 0), ("cat", 1, 1, 10, 10, 1)]),
    (80, 60, [("car", 2, 3, 58, 40, 0)]),
    (50, 70, [("bird", 10, 10, 20, 30, 0)]),
    (70, 50, [("sofa", 1, 1, 50, 70, 0), ("tvmonitor", 3, 4, 20, 22, 0)]),
    (64, 64, [("chair", 4, 4, 30, 30, 1)]),  # only a difficult object: filtered out with its flip
]


def make_devkit(root: Path) -> Path:
    voc = root / "VOCdevkit2007" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    ids = []
    for i, (h, w, objects) in enumerate(IMAGES):
        idx = f"{i:06d}"
        ids.append(idx)
        img = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(voc / "JPEGImages" / f"{idx}.jpg"), img)
        objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                       f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for n, x1, y1, x2, y2, d in objects)
        (voc / "Annotations" / f"{idx}.xml").write_text(f"<annotation><size><width>{w}</width><height>{h}</height>"
                                                        f"</size>{objs}</annotation>")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit2007"


# -- py-faster-rcnn, line by line on plain arguments ---------------------------------------------------------------
def reference_roidb(devkit: Path) -> list[dict]:
    data_path = devkit / "VOC2007"
    index = [x.strip() for x in open(data_path / "ImageSets" / "Main" / "trainval.txt").readlines()]
    class_to_ind = dict(zip(VOC_CLASSES, range(len(VOC_CLASSES)), strict=True))
    roidb = []
    for idx in index:
        objs = [o for o in ElementTree.parse(data_path / "Annotations" / f"{idx}.xml").findall("object")
                if int(o.find("difficult").text) == 0]
        boxes = np.zeros((len(objs), 4), dtype=np.uint16)
        classes = np.zeros((len(objs)), dtype=np.int32)
        for ix, obj in enumerate(objs):
            bbox = obj.find("bndbox")
            boxes[ix, :] = [float(bbox.find(k).text) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]
            classes[ix] = class_to_ind[obj.find("name").text.lower().strip()]
        path = str(data_path / "JPEGImages" / f"{idx}.jpg")
        roidb.append({"image": path, "boxes": boxes, "gt_classes": classes, "flipped": False,
                      "width": Image.open(path).size[0], "height": Image.open(path).size[1]})
    for i in range(len(roidb)):  # append_flipped_images
        boxes = roidb[i]["boxes"].copy()
        oldx1, oldx2 = boxes[:, 0].copy(), boxes[:, 2].copy()
        boxes[:, 0] = roidb[i]["width"] - oldx2 - 1
        boxes[:, 2] = roidb[i]["width"] - oldx1 - 1
        assert (boxes[:, 2] >= boxes[:, 0]).all()
        roidb.append({**roidb[i], "boxes": boxes, "flipped": True})
    return [r for r in roidb if len(r["gt_classes"]) > 0]  # filter_roidb: gt overlaps are 1


def reference_minibatch(entry: dict) -> list[np.ndarray]:
    im = cv2.imread(entry["image"])
    if entry["flipped"]:
        im = im[:, ::-1, :]
    im = im.astype(np.float32, copy=False)
    im -= np.array([[[102.9801, 115.9465, 122.7717]]])
    im_size_min, im_size_max = np.min(im.shape[0:2]), np.max(im.shape[0:2])
    im_scale = float(600) / float(im_size_min)
    if np.round(im_scale * im_size_max) > 1000:
        im_scale = float(1000) / float(im_size_max)
    im = cv2.resize(im, None, None, fx=im_scale, fy=im_scale, interpolation=cv2.INTER_LINEAR)
    blob = np.zeros((1, im.shape[0], im.shape[1], 3), dtype=np.float32)
    blob[0] = im
    blob = blob.transpose((0, 3, 1, 2))
    gt_inds = np.where(entry["gt_classes"] != 0)[0]
    gt_boxes = np.empty((len(gt_inds), 5), dtype=np.float32)
    gt_boxes[:, 0:4] = entry["boxes"][gt_inds, :] * im_scale
    gt_boxes[:, 4] = entry["gt_classes"][gt_inds]
    im_info = np.array([[blob.shape[2], blob.shape[3], im_scale]], dtype=np.float32)
    return [blob, im_info, gt_boxes]


def _layer(devkit: Path | None, imdb: str = "voc_2007_trainval") -> str:
    settings = "'num_classes': 21" + (f", 'imdb': '{imdb}', 'devkit': '{devkit}'" if devkit else "")
    return (f'layer {{ name: "input-data" type: "Python" top: "data" top: "im_info" top: "gt_boxes" '
            f'python_param {{ module: "roi_data_layer.layer" layer: "RoIDataLayer" param_str: "{settings}" }} }}\n')


def _open(devkit: Path | None, **kw):
    (layer,) = data_layers(read_net_text(_layer(devkit, **kw)).net, "TRAIN")
    return open_reader(layer, seed=0)


def test_roidb_and_passes_equal_py_faster_rcnn(tmp_path: Path) -> None:
    """The roidb (8 entries: 4 images with non-difficult objects and their flips) and every pass of two epochs
    equal py-faster-rcnn's; each epoch serves pairs of same-orientation images and leaves out one entry."""
    devkit = make_devkit(tmp_path)
    src, ref = _open(devkit), reference_roidb(devkit)
    assert [(r["image"], r["flipped"]) for r in src.roidb] == [(r["image"], r["flipped"]) for r in ref]
    for ours, theirs in zip(src.roidb, ref, strict=True):
        np.testing.assert_array_equal(ours["boxes"], theirs["boxes"])
        assert ours["boxes"].dtype == np.uint16 and ours["classes"].tolist() == theirs["gt_classes"].tolist()
    for _epoch in range(2):
        served = []
        for _ in range(len(ref) - 1):
            got = src.next_batch()
            entry = int(src.perm[src.cur - 1])
            served.append(entry)
            for g, w in zip(got, reference_minibatch(ref[entry]), strict=True):
                assert g.dtype == np.float32
                np.testing.assert_array_equal(g, w)
        assert len(set(served)) == len(ref) - 1
        landscape = [ref[i]["width"] >= ref[i]["height"] for i in served]
        assert all(landscape[k] == landscape[k + 1] for k in range(0, len(served) - 1, 2))
    assert min(min(g.shape[2:]) for g in [src.next_batch()[0]]) == 600


def test_long_side_capped_at_1000(tmp_path: Path) -> None:
    devkit = make_devkit(tmp_path)
    voc = devkit / "VOC2007"
    cv2.imwrite(str(voc / "JPEGImages" / "000001.jpg"), np.zeros((20, 60, 3), np.uint8))  # 1:3, was 80x60
    (voc / "Annotations" / "000001.xml").write_text(
        "<annotation><object><name>car</name><difficult>0</difficult><bndbox><xmin>2</xmin><ymin>3</ymin>"
        "<xmax>58</xmax><ymax>19</ymax></bndbox></object></annotation>")
    src = _open(devkit)
    for _ in range(20):
        data, im_info, _ = src.next_batch()
        assert max(data.shape[2:]) <= 1000 and (min(data.shape[2:]) == 600 or max(data.shape[2:]) == 1000)
        assert tuple(im_info[0, :2]) == data.shape[2:]


@pytest.mark.parametrize("damage, message", [
    ("no_imdb", "RoIDataLayer reads the imdb py-faster-rcnn's train_net.py names (--imdb)"),
    ("coco", "imdb 'coco_2014_train' is not a PASCAL VOC one"),
    ("class", "class 'unicorn' is not one of PASCAL VOC's 20"),
    ("xml", "is not XML"),
    ("bomb", "is not XML"),
    ("missing", "cannot read '"),
    ("flip", "reaches past the image's width 80"),
])
def test_bad_settings_and_files_give_one_line(tmp_path: Path, damage: str, message: str) -> None:
    devkit = make_devkit(tmp_path)
    notes = devkit / "VOC2007" / "Annotations" / "000000.xml"
    kw = {}
    if damage == "coco":
        kw["imdb"] = "coco_2014_train"
    elif damage == "class":
        notes.write_text(notes.read_text().replace("dog", "unicorn"))
    elif damage == "xml":
        notes.write_text("<annotation><object>")
    elif damage == "bomb":
        entities = "".join(f'<!ENTITY lol{i} "{(f"&lol{i - 1};" if i else "&lol;") * 10}">' for i in range(9))
        notes.write_text(f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">{entities}]>'
                         "<annotation>&lol8;</annotation>")
    elif damage == "missing":
        notes.unlink()
    elif damage == "flip":
        notes.write_text(notes.read_text().replace("<xmax>79</xmax>", "<xmax>95</xmax>"))
    with pytest.raises(DataError) as e:
        _open(None if damage == "no_imdb" else devkit, **kw).next_batch()
    assert message in str(e.value) and "\n" not in str(e.value) and "layer 'input-data'" in str(e.value)


def test_zf_end_to_end_net_trains_from_the_files(tmp_path: Path, monkeypatch) -> None:
    """py-faster-rcnn's ZF end-to-end training net, its RoIDataLayer naming the imdb: the solver reads VOC images
    at 600 pixels, the anchor and proposal target layers sample from them, and the four losses come out finite."""
    from prototxt2py import caffe

    devkit = make_devkit(tmp_path)
    model = CORPUS / "rbgirshick__py-faster-rcnn" / "models" / "pascal_voc" / "ZF" / "faster_rcnn_end2end"
    text = (model / "train.prototxt").read_text().replace(
        "param_str: \"'num_classes': 21\"",
        f"param_str: \"'num_classes': 21, 'imdb': 'voc_2007_trainval', 'devkit': '{devkit}'\"", 1)
    assert "'imdb'" in text
    (tmp_path / "train.prototxt").write_text(text)
    (tmp_path / "solver.prototxt").write_text(textwrap.dedent("""\
        train_net: "train.prototxt"
        base_lr: 0.001
        lr_policy: "fixed"
        momentum: 0.9
        weight_decay: 0.0005
        random_seed: 3
        """))
    monkeypatch.chdir(tmp_path)
    solver = caffe.SGDSolver("solver.prototxt")
    for _ in range(2):
        solver.step(1)
        assert min(solver.net.blobs["data"].data.shape[2:]) == 600
        losses = [float(solver.net.blobs[b].data) for b in ("rpn_cls_loss", "rpn_loss_bbox", "cls_loss", "bbox_loss")]
        assert np.isfinite(losses).all() and losses[2] > 0
        gt = solver.net.blobs["gt_boxes"].data
        assert gt.shape[1] == 5 and set(gt[:, 4]) <= set(range(1, 21))


def test_roidb_is_built_once_per_image_set(tmp_path: Path) -> None:
    """A solver opens the reader several times (shapes, checks, loader workers): the roidb is parsed once, and
    again only when the image set file changes."""
    import os

    devkit = make_devkit(tmp_path)
    first, second = _open(devkit), _open(devkit)
    assert first.roidb is second.roidb
    index = devkit / "VOC2007" / "ImageSets" / "Main" / "trainval.txt"
    index.write_text("000000\n000001\n")
    os.utime(index, ns=(1, 1))
    third = _open(devkit)
    assert third.roidb is not first.roidb and len(third.roidb) == 4  # two images and their flips
