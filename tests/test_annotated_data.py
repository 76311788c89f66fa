"""SSD's AnnotatedData reader (LMDB of AnnotatedDatum): images resized and transformed as the ``Data`` layer
does, boxes through the fork's resize policy, crop projection, emit constraint and mirror, label rows in the
fork's layout; the refusals of SSD's random augmentation; and an SSD solver run end to end (AnnotatedData +
MultiBoxLoss training, DetectionOutput + DetectionEvaluate testing with ``eval_type: "detection"``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from prototxt2py.data import DataError, open_source
from prototxt2py.data.annotated_data import meets_emit, project, update_by_resize
from prototxt2py.data.db import Writer
from prototxt2py.data.layers import data_layers
from prototxt2py.proto import caffe_pb2
from prototxt2py.reader import read_net_text

cv2 = pytest.importorskip("cv2")
pytest.importorskip("lmdb")

F32 = np.float32

#: per record: image size (h, w) and boxes (label, instance, xmin, ymin, xmax, ymax, difficult)
RECORDS = [
    ((40, 60), [(1, 0, 0.1, 0.2, 0.5, 0.9, False), (3, 1, 0.6, 0.05, 0.95, 0.4, True)]),
    ((50, 30), [(2, 0, -0.1, 0.3, 0.4, 1.2, False)]),  # reaches outside the image: clipped by WARP
    ((36, 36), []),
]


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_annoset(path: Path) -> Path:
    """An LMDB as SSD's create_annoset.py writes it: PNG-encoded Datums with their size, boxes grouped by label."""
    w = Writer(str(path), "lmdb")
    for i, ((h, wd), boxes) in enumerate(RECORDS):
        anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
        anno.datum.data = cv2.imencode(".png", _image(h, wd, i))[1].tobytes()
        anno.datum.encoded, anno.datum.height, anno.datum.width, anno.datum.channels = True, h, wd, 3
        for label in sorted({b[0] for b in boxes}):
            group = anno.annotation_group.add(group_label=label)
            for _, inst, x0, y0, x1, y1, diff in (b for b in boxes if b[0] == label):
                group.annotation.add(instance_id=inst).bbox.CopyFrom(
                    caffe_pb2.NormalizedBBox(xmin=x0, ymin=y0, xmax=x1, ymax=y1, difficult=diff))
        w.put(f"{i:08d}".encode(), anno.SerializeToString())
    w.close()
    return path


LAYER = """
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: {phase} }}
  data_param {{ source: "{source}" batch_size: 3 backend: LMDB }}
  transform_param {{ mean_value: 104 mean_value: 117 mean_value: 123 {transform}
    resize_param {{ prob: 1 resize_mode: WARP height: 24 width: 32 interp_mode: {interp} }} }}
  annotated_data_param {{ {anno} }} }}
"""


def _source(tmp_path: Path, phase: str = "TEST", transform: str = "", anno: str = "", interp: str = "LINEAR"):
    db = tmp_path / "annoset" if (tmp_path / "annoset").exists() else write_annoset(tmp_path / "annoset")
    text = LAYER.format(phase=phase, source=db, transform=transform, anno=anno, interp=interp)
    (layer,) = data_layers(read_net_text(textwrap.dedent(text), "net.prototxt").net, phase)
    return open_source(layer)


@pytest.mark.parametrize("interp", ["LINEAR", "AREA", "NEAREST"])
def test_images_and_boxes_of_a_test_batch(tmp_path: Path, interp: str) -> None:
    data, label = _source(tmp_path, interp=interp).next_batch()
    flag = {"LINEAR": cv2.INTER_LINEAR, "AREA": cv2.INTER_AREA, "NEAREST": cv2.INTER_NEAREST}[interp]
    for i, ((h, w), _) in enumerate(RECORDS):
        want = cv2.resize(_image(h, w, i), (32, 24), interpolation=flag).transpose(2, 0, 1).astype(F32)
        want -= np.array([104, 117, 123], F32)[:, None, None]
        np.testing.assert_array_equal(data[i], want)
    # WARP keeps normalised boxes, clipping them to the image; rows by image, then group (label), then box
    np.testing.assert_allclose(label.reshape(-1, 8), [
        [0, 1, 0, 0.1, 0.2, 0.5, 0.9, 0],
        [0, 3, 1, 0.6, 0.05, 0.95, 0.4, 1],
        [1, 2, 0, 0.0, 0.3, 0.4, 1.0, 0],
    ], rtol=1e-6, atol=1e-7)


def test_crop_projects_and_drops_boxes_and_mirror_flips_them(tmp_path: Path) -> None:
    """crop_size 16 of the 24x32 image, centred in TEST (offsets 4 and 8): the crop window is [0.25, 1/6,
    0.75, 5/6]; boxes are projected into it and clipped; a box outside is dropped. In TRAIN with mirror the
    flip is drawn per image: flipped images come with flipped boxes."""
    _, label = _source(tmp_path, transform="crop_size: 16").next_batch()
    crop = [F32(8 / 32), F32(4 / 24), F32(24 / 32), F32(20 / 24)]
    want = [r for r in ([0, 1, 0, *project(crop, [F32(v) for v in (0.1, 0.2, 0.5, 0.9)]), 0],
                        [0, 3, 1, *(project(crop, [F32(v) for v in (0.6, 0.05, 0.95, 0.4)]) or [None] * 4), 1],
                        [1, 2, 0, *project(crop, [F32(0), F32(0.3), F32(0.4), F32(1.0)]), 0]) if None not in r]
    np.testing.assert_allclose(label.reshape(-1, 8), np.array(want, F32), rtol=1e-6)
    assert project(crop, [F32(0.0), F32(0.0), F32(0.2), F32(0.1)]) is None  # outside the window: dropped

    plain_data, plain_label = _source(tmp_path, phase="TRAIN").next_batch()
    flips = set()
    source = _source(tmp_path, phase="TRAIN", transform="mirror: true")
    for _ in range(4):
        data, label = source.next_batch()
        rows = label.reshape(-1, 8)
        for i in range(3):
            mirrored = not np.array_equal(data[i], plain_data[i])
            flips.add(mirrored)
            if mirrored:
                np.testing.assert_array_equal(data[i], plain_data[i][..., ::-1])
            mine, base = rows[rows[:, 0] == i], plain_label.reshape(-1, 8)
            base = base[base[:, 0] == i]
            if mirrored:
                base = base.copy()
                base[:, [3, 5]] = 1 - base[:, [5, 3]]
            np.testing.assert_allclose(mine, base, rtol=1e-6, atol=1e-7)
    assert flips == {True, False}


def test_box_steps_by_hand() -> None:
    # WARP from 60x40 to 32x24: 0.1 * 60 = 6 px -> 6 * 32 / 60 = 3.2 px -> 0.1; beyond the image clips to it
    assert update_by_resize([F32(0.1), F32(-0.5), F32(1.5), F32(0.5)], 60, 40, 32, 24) == [F32(0.1), 0, 1, 0.5]
    crop = [F32(0.25), F32(0.25), F32(0.75), F32(0.75)]
    assert project(crop, [F32(0.5), F32(0.5), F32(1.0), F32(0.6)]) == [0.5, 0.5, 1.0, (F32(0.6) - F32(0.25)) / F32(0.5)]
    assert meets_emit(crop, [F32(0.2), F32(0.3), F32(0.4), F32(0.5)], "CENTER", 0)  # centre (0.3, 0.4) inside
    assert not meets_emit(crop, [F32(0.0), F32(0.3), F32(0.4), F32(0.5)], "CENTER", 0)  # centre x 0.2
    # MIN_OVERLAP: the share of the box inside the window, strictly above emit_overlap
    assert meets_emit(crop, [F32(0.0), F32(0.3), F32(0.5), F32(0.5)], "MIN_OVERLAP", 0.4)  # half of it inside
    assert not meets_emit(crop, [F32(0.0), F32(0.3), F32(0.5), F32(0.5)], "MIN_OVERLAP", 0.5)


@pytest.mark.parametrize(("transform", "anno", "message"), [
    ("", "batch_sampler { max_sample: 1 max_trials: 1 }", "batch_sampler"),
    ("distort_param { brightness_prob: 0.5 }", "", "distort_param"),
    ("expand_param { prob: 0.5 max_expand_ratio: 4 }", "", "expand_param"),
])
def test_random_augmentation_is_refused_by_name(tmp_path: Path, transform: str, anno: str, message: str) -> None:
    with pytest.raises(DataError, match=f"layer 'data'.*AnnotatedData with {message}.* is not implemented"):
        _source(tmp_path, phase="TRAIN", transform=transform, anno=anno)


def test_a_batch_without_boxes_is_one_row_of_minus_one(tmp_path: Path) -> None:
    db = write_annoset(tmp_path / "annoset")
    text = LAYER.format(phase="TEST", source=db, transform="", anno="", interp="LINEAR").replace("batch_size: 3",
                                                                                                "batch_size: 1")
    (layer,) = data_layers(read_net_text(textwrap.dedent(text), "net.prototxt").net, "TEST")
    source = open_source(layer)
    for _ in range(2):
        source.next_batch()
    _, label = source.next_batch()  # the third record has no box
    np.testing.assert_array_equal(label, np.full((1, 1, 1, 8), -1, F32))


TINY_SSD = """name: "tiny_ssd"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  data_param {{ source: "{db}" batch_size: 3 backend: LMDB }}
  transform_param {{ mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.017
    resize_param {{ resize_mode: WARP height: 24 width: 32 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 8 kernel_size: 3 stride: 2 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "loc" type: "Convolution" bottom: "conv" top: "loc"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm"
  permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" }}
layer {{ name: "conf" type: "Convolution" bottom: "conv" top: "conf"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
  permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }}
layer {{ name: "priors" type: "PriorBox" bottom: "conv" bottom: "data" top: "priors"
  prior_box_param {{ min_size: 8 max_size: 16 variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }} }}
layer {{ name: "loss" type: "MultiBoxLoss" bottom: "loc_flat" bottom: "conf_flat" bottom: "priors" bottom: "label"
  top: "loss" include {{ phase: TRAIN }}
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  multibox_loss_param {{ num_classes: 4 overlap_threshold: 0.3 code_type: CENTER_SIZE }} }}
layer {{ name: "conf_rows" type: "Reshape" bottom: "conf_flat" top: "conf_rows" include {{ phase: TEST }}
  reshape_param {{ shape {{ dim: 0 dim: -1 dim: 4 }} }} }}
layer {{ name: "conf_prob" type: "Softmax" bottom: "conf_rows" top: "conf_prob" include {{ phase: TEST }}
  softmax_param {{ axis: 2 }} }}
layer {{ name: "conf_prob_flat" type: "Flatten" bottom: "conf_prob" top: "conf_prob_flat" include {{ phase: TEST }} }}
layer {{ name: "det" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_prob_flat" bottom: "priors" top: "det"
  include {{ phase: TEST }}
  detection_output_param {{ num_classes: 4 nms_param {{ nms_threshold: 0.45 }} keep_top_k: 20 code_type: CENTER_SIZE
    confidence_threshold: 0.01 }} }}
layer {{ name: "eval" type: "DetectionEvaluate" bottom: "det" bottom: "label" top: "detection_eval"
  include {{ phase: TEST }}
  detection_evaluate_param {{ num_classes: 4 background_label_id: 0 overlap_threshold: 0.3 }} }}
"""


def test_ssd_solver_trains_and_scores_detections(tmp_path: Path) -> None:
    """A small SSD net read from an annoset LMDB, trained by its solver file (MultiBoxLoss) and tested every 2
    iterations with ``eval_type: "detection"`` (DetectionOutput, DetectionEvaluate, mean average precision): the
    loss falls and the mean average precision on its own three images rises (0.08 to 0.67 here)."""
    from click.testing import CliRunner

    from prototxt2py.cli import main

    db = write_annoset(tmp_path / "annoset")
    (tmp_path / "net.prototxt").write_text(TINY_SSD.format(db=db))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}"\ntest_iter: 1\ntest_interval: 2\nbase_lr: 0.01\nmomentum: 0.9\n'
        'lr_policy: "fixed"\nmax_iter: 4\ndisplay: 1\nrandom_seed: 1\neval_type: "detection"\n'
        'ap_version: "11point"\nsnapshot_after_train: false\n')
    result = CliRunner().invoke(main, ["train", str(tmp_path / "solver.prototxt")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = result.output
    losses = [float(line.rsplit("=", 1)[1].split()[0]) for line in text.splitlines() if ", loss = " in line]
    scores = [float(line.rsplit("=", 1)[1]) for line in text.splitlines() if "output #0: detection_eval" in line]
    assert len(losses) == 5 and losses[-1] < losses[0], text  # it learns (three images, seeded fillers)
    assert len(scores) == 3 and 0 <= scores[0] < scores[-1] <= 1, text
