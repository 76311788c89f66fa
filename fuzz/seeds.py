"""Seed corpora for the fuzz targets from ``../shared/corpus`` (written to a work folder, never committed).

Text targets get every text net under 64 KB; the binary target gets the small ``.caffemodel``/``.binaryproto``
files and each text net serialised as a binary NetParameter (small, and every field kind of real nets).
Also writes ``caffe.dict``, a libFuzzer dictionary of field names, enum values and layer types.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "corpus"


def main(out: Path) -> None:
    from google.protobuf.descriptor import FieldDescriptor

    from prototxt2py.errors import Prototxt2pyError
    from prototxt2py.proto import caffe_pb2
    from prototxt2py.reader import read_net_text

    text_dir, bin_dir = out / "seeds-text", out / "seeds-binary"
    text_dir.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader((CORPUS / "MANIFEST.tsv").open(), delimiter="\t"))
    for row in rows:
        path = CORPUS / row["file"]
        if row["format"] not in ("V0", "V1", "V2") or not path.is_file() or path.stat().st_size > 65536:
            continue
        data = path.read_bytes()
        digest = hashlib.sha1(data).hexdigest()[:16]
        (text_dir / digest).write_bytes(data)
        try:
            net = read_net_text(data.decode("utf-8", "replace"), str(path)).net
        except Prototxt2pyError:
            continue
        (bin_dir / digest).write_bytes(net.SerializeToString())
    small_dir = out / "seeds-small"
    small_dir.mkdir(parents=True, exist_ok=True)
    for text in small_nets(rows):
        (small_dir / hashlib.sha1(text.encode()).hexdigest()[:16]).write_text(text)
    for path in list(CORPUS.rglob("*.caffemodel")) + list(CORPUS.rglob("*.binaryproto")):
        if path.stat().st_size <= 400_000:
            (bin_dir / hashlib.sha1(path.read_bytes()).hexdigest()[:16]).write_bytes(path.read_bytes())

    words: set[str] = set()

    def visit(desc, seen: set) -> None:
        if desc.full_name in seen:
            return
        seen.add(desc.full_name)
        for fd in desc.fields:
            words.add(fd.name)
            if fd.type == FieldDescriptor.TYPE_ENUM:
                words.update(v.name for v in fd.enum_type.values)
            if fd.message_type is not None:
                visit(fd.message_type, seen)

    visit(caffe_pb2.NetParameter.DESCRIPTOR, set())
    from prototxt2py.ir import registered_types

    words.update(registered_types())
    lines = [f'"{w}"' for w in sorted(words)] + ['"{"', '"}"', '":"', '"\\""', '"inf"', '"nan"', '"-1"',
                                                  '"2147483648"', '"\\\\x"', '"\\\\"']
    (out / "caffe.dict").write_text("\n".join(lines) + "\n")
    counts = [len(list(d.iterdir())) for d in (small_dir, text_dir, bin_dir)]
    print(f"{counts[0]} small nets, {counts[1]} text seeds, {counts[2]} binary seeds, {len(words)} dictionary words")


def small_nets(rows: list[dict]) -> list[str]:
    """One tiny net per distinct layer definition of the corpus: Input blobs (1, 4, 8, 8) named as its bottoms,
    then the layer. Fast to build, export and run, so the slow targets (onnx, run) get many executions."""
    from google.protobuf import text_format

    from prototxt2py.errors import Prototxt2pyError
    from prototxt2py.reader import read_net_text

    seen: set[str] = set()
    per_type: dict[str, int] = {}
    out = []
    for row in rows:
        path = CORPUS / row["file"]
        if row["format"] not in ("V0", "V1", "V2") or not path.is_file():
            continue
        try:
            net = read_net_text(path.read_text(errors="replace"), str(path)).net
        except Prototxt2pyError:
            continue
        for layer in net.layer:
            if not len(layer.bottom) or layer.type in ("Python",):
                continue
            del layer.blobs[:]
            body = text_format.MessageToString(layer, as_one_line=True)
            bare = type(layer)()
            bare.CopyFrom(layer)
            bare.ClearField("name")
            del bare.bottom[:], bare.top[:]
            key = text_format.MessageToString(bare, as_one_line=True)
            if key in seen or per_type.get(layer.type, 0) >= 6:
                continue
            seen.add(key)
            per_type[layer.type] = per_type.get(layer.type, 0) + 1
            inputs = "".join(
                f'layer {{ name: "in{i}" type: "Input" top: "{b}" input_param {{ shape {{ dim: 1 dim: 4 dim: 8 '
                f'dim: 8 }} }} }}\n' for i, b in enumerate(dict.fromkeys(layer.bottom)))
            out.append(f'name: "small"\n{inputs}layer {{ {body} }}\n')
    return [*out, PROPOSAL_NET, OPENCV_PROPOSAL_NET, RCNN_TARGETS_NET, FCN_DATA_NET, ROI_DATA_NET, SEGNET_LOSS_NET,
            HED_LOSS_NET, RFCN_OHEM_NET, CRF_RNN_NET, FLOWNET_NET, YOLO_NET]


#: The built-in Python layer (py-faster-rcnn's proposals), which the corpus loop skips with the other Python
#: layers: one anchor per position, so that mutated sizes and param_str reach its shapes, module and ONNX graph.
PROPOSAL_NET = (
    'name: "small"\n'
    'layer { name: "in0" type: "Input" top: "s" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 5 } } }\n'
    'layer { name: "in1" type: "Input" top: "d" input_param { shape { dim: 1 dim: 4 dim: 4 dim: 5 } } }\n'
    'layer { name: "in2" type: "Input" top: "info" input_param { shape { dim: 1 dim: 3 } } }\n'
    'layer { name: "proposal" type: "Python" bottom: "s" bottom: "d" bottom: "info" top: "rois" top: "scores" '
    "python_param { module: \"rpn.proposal_layer\" layer: \"ProposalLayer\" "
    "param_str: \"{'feat_stride': 16, 'scales': [1], 'ratios': [1]}\" } }\n"
)

#: py-faster-rcnn's training-target layers over fed inputs (one anchor per position, two classes).
RCNN_TARGETS_NET = (
    'name: "small"\n'
    'layer { name: "in0" type: "Input" top: "s" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 5 } } }\n'
    'layer { name: "in1" type: "Input" top: "gt" input_param { shape { dim: 2 dim: 5 } } }\n'
    'layer { name: "in2" type: "Input" top: "info" input_param { shape { dim: 1 dim: 3 } } }\n'
    'layer { name: "in3" type: "Input" top: "rois" input_param { shape { dim: 3 dim: 5 } } }\n'
    'layer { name: "rpn" type: "Python" bottom: "s" bottom: "gt" bottom: "info" top: "l" top: "t" top: "i" top: "o" '
    "python_param { module: \"rpn.anchor_target_layer\" layer: \"AnchorTargetLayer\" "
    "param_str: \"{'feat_stride': 16, 'scales': [1]}\" } }\n"
    'layer { name: "roi" type: "Python" bottom: "rois" bottom: "gt" top: "r" top: "rl" top: "rt" top: "ri" top: "ro" '
    "python_param { module: \"rpn.proposal_target_layer\" layer: \"ProposalTargetLayer\" "
    "param_str: \"'num_classes': 2\" } }\n"
)

#: The same targets in py-R-FCN's OHEM recipe (the net holds PSROIPooling and BoxAnnotatorOHEM), ranked by the
#: OHEM losses and annotated.
RFCN_OHEM_NET = (
    RCNN_TARGETS_NET
    + 'layer { name: "in4" type: "Input" top: "f" input_param { shape { dim: 1 dim: 8 dim: 4 dim: 5 } } }\n'
    'layer { name: "ps" type: "PSROIPooling" bottom: "f" bottom: "r" top: "ps" psroi_pooling_param { '
    "spatial_scale: 0.0625 output_dim: 2 group_size: 2 } }\n"
    'layer { name: "pool" type: "Pooling" bottom: "ps" top: "cls" pooling_param { pool: AVE global_pooling: true } }\n'
    'layer { name: "cls_l" type: "SoftmaxWithLossOHEM" bottom: "cls" bottom: "rl" top: "lc" top: "pc" top: "per_c" '
    "loss_weight: 0 loss_weight: 0 loss_weight: 0 loss_param { ignore_label: -1 } }\n"
    'layer { name: "box_l" type: "SmoothL1LossOHEM" bottom: "rt" bottom: "rt" bottom: "ri" top: "lb" top: "per_b" '
    "loss_weight: 0 loss_weight: 0 }\n"
    'layer { name: "per" type: "Eltwise" bottom: "per_c" bottom: "per_b" top: "per" }\n'
    'layer { name: "ohem" type: "BoxAnnotatorOHEM" bottom: "r" bottom: "per" bottom: "rl" bottom: "ri" top: "lo" '
    "top: \"wo\" box_annotator_ohem_param { roi_per_img: 2 } }\n"
    'layer { name: "loss" type: "SmoothL1LossOHEM" bottom: "rt" bottom: "ri" bottom: "wo" top: "loss" '
    "loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 2 } }\n"
)

#: CRF-RNN's mean-field layer over a tiny image (its lattices built from positions and colours).
CRF_RNN_NET = (
    'name: "small"\n'
    'layer { name: "in0" type: "Input" top: "u" top: "img" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 4 } '
    "shape { dim: 1 dim: 3 dim: 3 dim: 4 } } }\n"
    'layer { name: "split" type: "Split" bottom: "u" top: "unary" top: "q0" }\n'
    'layer { name: "crf" type: "MultiStageMeanfield" bottom: "unary" bottom: "q0" bottom: "img" top: "pred" '
    "multi_stage_meanfield_param { num_iterations: 2 theta_alpha: 3 theta_beta: 5 theta_gamma: 2 "
    'spatial_filter_weights_str: "3 3" bilateral_filter_weights_str: "5 5" } }\n'
)

#: FlowNet2's layers (lmb-freiburg/flownet2) in the shape of its deploy nets: a one-bottom Eltwise, the mean
#: subtraction, resizing, correlation, Accum, warping and ChannelNorm.
FLOWNET_NET = (
    'name: "small"\n'
    'layer { name: "in0" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 8 } '
    "shape { dim: 1 dim: 3 dim: 6 dim: 8 } } }\n"
    'layer { name: "s" type: "Eltwise" bottom: "a" top: "as" eltwise_param { coeff: 0.5 } }\n'
    'layer { name: "aug" type: "DataAugmentation" bottom: "as" top: "am" augmentation_param { recompute_mean: 2 '
    "mean_per_pixel: false } }\n"
    'layer { name: "r" type: "Resample" bottom: "am" top: "ar" resample_param { width: 8 height: 8 } }\n'
    'layer { name: "rb" type: "Resample" bottom: "b" bottom: "ar" top: "br" resample_param { type: CUBIC } }\n'
    'layer { name: "corr" type: "Correlation" bottom: "ar" bottom: "br" top: "c" correlation_param { pad: 2 '
    "kernel_size: 1 max_displacement: 2 stride_2: 2 } }\n"
    'layer { name: "f" type: "Convolution" bottom: "c" top: "f" convolution_param { num_output: 2 kernel_size: 1 '
    'weight_filler { type: "diagonal" diag_val: 1 } } }\n'
    'layer { name: "up" type: "Accum" bottom: "f" bottom: "ar" top: "fu" accum_param { have_reference: true } }\n'
    'layer { name: "w" type: "FlowWarp" bottom: "br" bottom: "fu" top: "bw" }\n'
    'layer { name: "n" type: "ChannelNorm" bottom: "bw" top: "n" }\n'
)

#: MobileNet-YOLO's YOLOv3 detection output over two scales (one after a nearest Upsample).
YOLO_NET = (
    'name: "small"\n'
    'layer { name: "in0" type: "Input" top: "a" input_param { shape { dim: 1 dim: 14 dim: 2 dim: 3 } } }\n'
    'layer { name: "up" type: "Upsample" bottom: "a" top: "b" upsample_param { scale: 2 } }\n'
    'layer { name: "det" type: "Yolov3DetectionOutput" bottom: "a" bottom: "b" top: "det" '
    "yolov3_detection_output_param { num_classes: 2 num_box: 2 confidence_threshold: 0.3 biases: 10 biases: 14 "
    "biases: 23 biases: 27 anchors_scale: 32 anchors_scale: 16 mask_group_num: 2 mask: 0 mask: 1 mask: 0 mask: 1 } }\n"
)

#: FCN's built-in VOC data layer (its param_str read as literals) feeding a small segmentation head.
FCN_DATA_NET = (
    'name: "small"\n'
    'layer { name: "data" type: "Python" top: "data" top: "label" python_param { module: "voc_layers" '
    "layer: \"VOCSegDataLayer\" param_str: \"{'voc_dir': 'voc', 'seed': 1337, 'split': 'train', "
    "'mean': (104.0, 116.7, 122.7)}\" } }\n"
    'layer { name: "score" type: "Convolution" bottom: "data" top: "score" '
    "convolution_param { num_output: 2 kernel_size: 1 } }\n"
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" '
    "loss_param { ignore_label: 255 normalize: false } }\n"
)

#: py-faster-rcnn's built-in RoIDataLayer naming a VOC imdb, feeding a small convolution.
ROI_DATA_NET = (
    'name: "small"\n'
    'layer { name: "input-data" type: "Python" top: "data" top: "im_info" top: "gt_boxes" python_param { '
    "module: \"roi_data_layer.layer\" layer: \"RoIDataLayer\" "
    "param_str: \"'num_classes': 21, 'imdb': 'voc_2007_trainval', 'devkit': 'VOCdevkit2007'\" } }\n"
    'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 '
    "kernel_size: 3 } }\n"
)

#: SegNet's class-weighted SoftmaxWithLoss and an Accuracy seeing a void label past the classes.
SEGNET_LOSS_NET = (
    'name: "small"\n'
    'layer { name: "in0" type: "Input" top: "x" top: "label" input_param { shape { dim: 1 dim: 3 dim: 2 dim: 2 } '
    "shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }\n"
    'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" loss_param { '
    "weight_by_label_freqs: true class_weighting: 0.5 class_weighting: 2 class_weighting: 1 ignore_label: 3 } }\n"
    'layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" top: "per_class" }\n'
)

#: HED's class-balanced SigmoidCrossEntropyLoss (its dialect: the net holds an ImageLabelmapData layer).
HED_LOSS_NET = (
    'name: "small"\n'
    'layer { name: "data" type: "ImageLabelmapData" top: "img" top: "edges" image_data_param { source: "l.lst" '
    "batch_size: 1 new_height: 2 new_width: 2 } }\n"
    'layer { name: "in0" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 1 dim: 2 dim: 2 } '
    "shape { dim: 2 dim: 1 dim: 2 dim: 2 } } }\n"
    'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" }\n'
)

#: The same proposals spelled as OpenCV's samples do (``type: "Proposal"``), followed by OpenCV's detection
#: stage: a ``DetectionOutput`` over the ROIs as pixel priors without variances.
OPENCV_PROPOSAL_NET = (
    PROPOSAL_NET.split('layer { name: "proposal"')[0]
    + 'layer { name: "proposal" type: "Proposal" bottom: "s" bottom: "d" bottom: "info" top: "rois" '
    "proposal_param { ratio: 1 scale: 1 post_nms_topn: 5 } }\n"
    'layer { name: "crop" type: "Slice" bottom: "rois" top: "ids" top: "boxes" '
    "slice_param { axis: 1 slice_point: 1 } }\n"
    'layer { name: "priors" type: "Reshape" bottom: "boxes" top: "priors" '
    "reshape_param { shape { dim: 1 dim: 1 dim: -1 } } }\n"
    'layer { name: "conf" type: "Reshape" bottom: "ids" top: "conf" reshape_param { shape { dim: 1 dim: -1 } } }\n'
    'layer { name: "loc" type: "Tile" bottom: "conf" top: "loc" tile_param { axis: 1 tiles: 4 } }\n'
    'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "priors" top: "det" '
    "detection_output_param { num_classes: 1 background_label_id: -1 share_location: false code_type: CENTER_SIZE "
    "variance_encoded_in_target: true normalized_bbox: false nms_param { nms_threshold: 0.3 } } }\n"
)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
