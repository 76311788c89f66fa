"""SSD's AnnotatedData reader (LMDB of AnnotatedDatum): images resized and transformed as the ``Data`` layer
does, boxes through the fork's resize policy, crop projection, emit constraint and mirror, label rows in the
fork's layout; the refusals of SSD's random augmentation; and an SSD solver run end to end (AnnotatedData +
MultiBoxLoss training, DetectionOutput + DetectionEvaluate testing with ``eval_type: "detection"``)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prototxt2py.data import DataError, open_source
from prototxt2py.data.annotated_data import AnnotatedData
from prototxt2py.data.db import Writer
from prototxt2py.data.layers import data_layers
from prototxt2py.data.ssd_augment import meets_emit, project, update_by_resize
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


def test_noise_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="layer 'data'.*AnnotatedData with noise_param is not implemented"):
        _source(tmp_path, phase="TRAIN", transform="noise_param { prob: 0.5 }")


def _square_annoset(path: Path) -> Path:
    """Black 60x80 images (PNG) with one white rectangle each, annotated with its exact box."""
    w = Writer(str(path), "lmdb")
    rng = np.random.default_rng(5)
    for i in range(4):
        img = np.zeros((60, 80, 3), np.uint8)
        x0, y0 = int(rng.integers(5, 40)), int(rng.integers(5, 25))
        x1, y1 = x0 + int(rng.integers(15, 35)), y0 + int(rng.integers(15, 30))
        img[y0:y1, x0:x1] = 255
        anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
        anno.datum.data = cv2.imencode(".png", img)[1].tobytes()
        anno.datum.encoded, anno.datum.height, anno.datum.width, anno.datum.channels = True, 60, 80, 3
        anno.annotation_group.add(group_label=1).annotation.add(instance_id=0).bbox.CopyFrom(
            caffe_pb2.NormalizedBBox(xmin=x0 / 80, ymin=y0 / 60, xmax=x1 / 80, ymax=y1 / 60))
        w.put(f"{i:08d}".encode(), anno.SerializeToString())
    w.close()
    return path


AUGMENTED = """
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TRAIN }}
  data_param {{ source: "{source}" batch_size: 4 backend: LMDB }}
  transform_param {{ mirror: true
    resize_param {{ resize_mode: WARP height: 60 width: 80 interp_mode: NEAREST interp_mode: LINEAR }}
    emit_constraint {{ emit_type: CENTER }}
    distort_param {{ brightness_prob: 0.5 brightness_delta: 20 contrast_prob: 0.5 contrast_lower: 0.8
      contrast_upper: 1.2 hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5 saturation_lower: 0.5
      saturation_upper: 1.5 random_order_prob: 0.2 }}
    expand_param {{ prob: 0.5 max_expand_ratio: 2.5 }} }}
  annotated_data_param {{
    batch_sampler {{ max_sample: 1 max_trials: 1 }}
    batch_sampler {{ sampler {{ min_scale: 0.4 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 }}
      sample_constraint {{ min_jaccard_overlap: 0.3 }} max_sample: 1 max_trials: 50 }} }} }}
"""


def test_training_augmentation_keeps_boxes_on_their_objects(tmp_path: Path) -> None:
    """SSD's random stages (distortion, expansion on a black canvas, sampled crops, the emit constraint,
    mirror, resize): every label row still frames its white rectangle in the output image, to within the
    pixels the JPEG re-encoding of each stage and the whole-pixel crop corners move it (seeded); expansion and crops
    happen (outputs whose rectangle is smaller or larger than the original's)."""
    db = _square_annoset(tmp_path / "squares")
    (layer,) = data_layers(read_net_text(textwrap.dedent(AUGMENTED.format(source=db)), "net.prototxt").net, "TRAIN")
    source = AnnotatedData(layer, seed=7)
    areas = []
    for _ in range(6):
        data, label = source.next_batch()
        assert data.shape == (4, 3, 60, 80)
        for row in label.reshape(-1, 8):
            if row[0] < 0:
                continue
            item, lab, _, x0, y0, x1, y1, _ = row
            assert lab == 1 and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            bright = data[int(item)].max(axis=0) > 128
            ys, xs = np.nonzero(bright)
            assert len(xs), row
            got = np.array([xs.min() / 80, ys.min() / 60, (xs.max() + 1) / 80, (ys.max() + 1) / 60])
            # the fork crops pixels at truncated corners but boxes at the exact window: up to a pixel of the
            # cropped image, magnified by the resize back to 60x80
            np.testing.assert_allclose(got, [x0, y0, x1, y1], atol=0.1, err_msg=str(row))
            areas.append((x1 - x0) * (y1 - y0))
    assert min(areas) < 0.05 < 0.2 < max(areas)  # shrunk by expansion, enlarged by crops


def test_sample_constraint_keeps_the_forks_quirk() -> None:
    """``SatisfySampleConstraint`` never resets ``found``: an object passing the jaccard check but failing the
    coverage check still makes the sample positive at the end of the loop."""
    from prototxt2py.data.ssd_augment import _satisfies
    from prototxt2py.plain import plain

    c = plain(caffe_pb2.SampleConstraint(min_jaccard_overlap=0.1, min_sample_coverage=0.99))
    sample = [F32(0.0), F32(0.0), F32(0.5), F32(0.5)]
    obj = [F32(0.25), F32(0.25), F32(0.75), F32(0.75)]  # jaccard 1/7, sample coverage 1/4
    assert _satisfies(sample, [obj], c)
    assert not _satisfies(sample, [[F32(0.8), F32(0.8), F32(0.9), F32(0.9)]], c)  # fails the first check
    assert _satisfies(sample, [], plain(caffe_pb2.SampleConstraint()))  # no constraint: positive


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


MOBILENET_SSD_TRAIN = Path(__file__).resolve().parents[2] / "shared/corpus/chuanqi305__MobileNet-SSD/train.prototxt"


def test_mobilenet_ssd_trains_from_its_own_training_net(tmp_path: Path) -> None:
    """The corpus MobileNet-SSD train.prototxt as written (every SSD augmentation: distortion, expansion, seven
    batch samplers, five interpolations, emit constraint, mirror; MultiBoxLoss), only its LMDB path and batch
    size changed: a solver runs it."""
    import re

    from click.testing import CliRunner

    from prototxt2py.cli import main

    if not MOBILENET_SSD_TRAIN.is_file():
        pytest.skip("needs the shared corpus")
    db = _square_annoset(tmp_path / "squares")
    text = re.sub(r'source: "[^"]*"', f'source: "{db}"', MOBILENET_SSD_TRAIN.read_text())
    (tmp_path / "train.prototxt").write_text(re.sub(r"batch_size: \d+", "batch_size: 2", text))
    (tmp_path / "solver.prototxt").write_text(
        f'train_net: "{tmp_path / "train.prototxt"}"\nbase_lr: 0.0005\nmomentum: 0.9\nlr_policy: "fixed"\n'
        'max_iter: 2\ndisplay: 1\nrandom_seed: 3\nsnapshot_after_train: false\n')
    result = CliRunner().invoke(main, ["train", str(tmp_path / "solver.prototxt")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    losses = [float(v) for v in re.findall(r"mbox_loss = ([0-9.]+) ", result.output)]
    assert len(losses) == 2 and all(np.isfinite(losses)) and min(losses) > 0, result.output


def test_expansion_places_the_image_and_its_boxes() -> None:
    """``ExpandImage``: the image at a whole-pixel offset on a canvas of the mean values, its box moved with it
    (box * image size + offset, over the canvas size)."""
    from prototxt2py.data.ssd_augment import expand
    from prototxt2py.plain import plain

    rng = np.random.default_rng(0)
    img = rng.integers(10, 250, (10, 20, 3), dtype=np.uint8)
    groups = [(4, [(7, [F32(0.25), F32(0.5), F32(0.75), F32(1.0)], True)])]
    param = plain(caffe_pb2.ExpansionParameter(prob=1.0, max_expand_ratio=3.0))
    canvas, moved = expand(img, groups, param, np.array([1, 2, 3], np.uint8), None, rng)
    h, w = canvas.shape[:2]
    assert (h, w) != (10, 20) and h / 10 == pytest.approx(w / 20, abs=0.1)
    ys, xs = np.nonzero((canvas != [1, 2, 3]).any(axis=2))
    y0, x0 = ys.min(), xs.min()
    np.testing.assert_array_equal(canvas[y0:y0 + 10, x0:x0 + 20], img)
    assert (canvas == [1, 2, 3]).all(axis=2).sum() == h * w - 200  # the rest is the fill
    (label, [(instance, box, difficult)]), = moved
    assert (label, instance, difficult) == (4, 7, True)
    np.testing.assert_allclose(box, [(5 + x0) / w, (5 + y0) / h, (15 + x0) / w, (10 + y0) / h], rtol=1e-6)


COORD = st.one_of(st.floats(-3, 3, width=32), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0]))


@settings(max_examples=60, deadline=None)
@given(boxes=st.lists(st.tuples(COORD, COORD, COORD, COORD, st.integers(-5, 5)), max_size=4),
       size=st.tuples(st.integers(-2, 100), st.integers(-2, 100)), encoded=st.booleans())
def test_hostile_records_give_a_batch_or_one_error(tmp_path_factory, boxes, size, encoded) -> None:
    """Records with any box coordinates (NaN, infinite, inverted, outside), any stored size, raw or encoded,
    through every augmentation stage: a batch with finite-shaped tops, or one DataError line."""
    path = tmp_path_factory.mktemp("hostile") / "db"
    w = Writer(str(path), "lmdb")
    img = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
    if encoded:
        anno.datum.data, anno.datum.encoded = cv2.imencode(".png", img)[1].tobytes(), True
    else:
        anno.datum.data = img.transpose(2, 0, 1).tobytes()
    anno.datum.height, anno.datum.width, anno.datum.channels = size[0], size[1], 3
    for x0, y0, x1, y1, label in boxes:
        anno.annotation_group.add(group_label=label).annotation.add().bbox.CopyFrom(
            caffe_pb2.NormalizedBBox(xmin=x0, ymin=y0, xmax=x1, ymax=y1))
    w.put(b"0", anno.SerializeToString())
    w.close()
    text = AUGMENTED.format(source=path).replace("batch_size: 4", "batch_size: 2")
    (layer,) = data_layers(read_net_text(textwrap.dedent(text), "net.prototxt").net, "TRAIN")
    try:
        data, label = AnnotatedData(layer, seed=1).next_batch()
    except DataError as e:
        assert "\n" not in str(e)
    else:
        assert data.shape == (2, 3, 60, 80) and label.shape[:2] == (1, 1) and label.shape[3] == 8


def test_pycaffe_net_reads_the_annoset(tmp_path: Path) -> None:
    """``caffe.Net(train_net, caffe.TRAIN)`` opens the AnnotatedData source as Caffe does: ``forward()`` reads a
    batch (the label blob holds its boxes), ``backward()`` fills the parameter diffs."""
    from prototxt2py import caffe

    db = write_annoset(tmp_path / "annoset")
    (tmp_path / "net.prototxt").write_text(TINY_SSD.format(db=db))
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN)
    out = net.forward()
    assert float(out["loss"]) > 0
    assert net.blobs["data"].data.shape == (3, 3, 24, 32) and net.blobs["label"].data.shape == (1, 1, 3, 8)
    np.testing.assert_array_equal(net.blobs["label"].data[0, 0, :, :3], [[0, 1, 0], [0, 3, 1], [1, 2, 0]])
    net.backward()
    assert np.abs(net.params["conv"][0].diff).sum() > 0
