"""Cross-check against an independent implementation: OpenCV 4.x ``cv2.dnn.readNetFromCaffe`` on the corpus
models gives the same outputs as our runtime AND as onnxruntime on our ONNX export, on the same inputs,
including the final detections of SSD's DetectionOutput.

Real weights where the corpus has them; MobileNet-SSD and PSPNet ship none, so they get the golden README's
``zoo-recipe-1`` weights (seed 0), written to a ``.caffemodel`` that OpenCV reads. Inputs are the golden cases'
real (preprocessed) images where the model has a case; the detectors get a natural image assembled from those
(OpenCV and we see the same array, which is what matters here).

Not covered, because OpenCV 4.x cannot load them: hszhao's PSPNet (OpenCV's parser rejects ``bn_param``) and
SegNet (no ``BN``/``Upsample`` layers in OpenCV); the PSPNet here is soeaver's SE-ResNet-50 PSPNet (Interp,
pyramid pooling), and SegNet's layers are checked against the runtime in test_onnx_export/test_layers_forks.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import CORPUS, GOLDEN, assert_same_detections, detection_rows, npz, recipe_weights

import prototxt2py
from prototxt2py.backends.onnx_export import to_onnx_model
from prototxt2py.weights import write_caffemodel

cv2 = pytest.importorskip("cv2")
ort = pytest.importorskip("onnxruntime")

MTCNN = "kpzhang93__MTCNN_face_detection_alignment/code/codes/MTCNNv2/model"
YUNET = "ShiqiYu__libfacedetection@96a7cc0/models/caffe"
ULTRA = "Linzaer__Ultra-Light-Fast-Generic-Face-Detector-1MB/caffe/model"
SSD = "chuanqi305__MobileNet-SSD"
ROOT = Path(__file__).resolve().parents[1]
PSPNET = "soeaver__caffe-model/seg/pspnet/models/pascal_voc/se-resnet50/deploy_psp_se-resnet50-hik-merge.prototxt"

#: name -> (prototxt, caffemodel (None: recipe weights), golden nets case giving the input, or None for the
#: face-detector image)
MODELS = {
    "lenet_v1": ("everpeace__caffe/examples/mnist/lenet.prototxt",
                 "everpeace__caffe/examples/mnist/lenet_iter_10000.caffemodel", "lenet_v1"),
    "lenet_v2": ("ethereon__caffe-tensorflow/examples/mnist/lenet.prototxt",
                 "ethereon__caffe-tensorflow/examples/mnist/lenet_iter_10000.caffemodel", "lenet_v2"),
    "cifar10_quick": ("everpeace__caffe/examples/cifar10/cifar10_quick.prototxt",
                      "everpeace__caffe/examples/cifar10/cifar10_quick_iter_5000.caffemodel", "cifar10_quick"),
    "cifar10_full": ("everpeace__caffe/examples/cifar10/cifar10_full.prototxt",
                     "everpeace__caffe/examples/cifar10/cifar10_full_iter_70000.caffemodel", "cifar10_full"),
    "mtcnn_det1": (f"{MTCNN}/det1.prototxt", f"{MTCNN}/det1.caffemodel", "mtcnn_det1_pnet"),
    "mtcnn_det2": (f"{MTCNN}/det2.prototxt", f"{MTCNN}/det2.caffemodel", "mtcnn_det2_rnet"),
    "mtcnn_det3": (f"{MTCNN}/det3.prototxt", f"{MTCNN}/det3.caffemodel", "mtcnn_det3_onet"),
    "mtcnn_det4": (f"{MTCNN}/det4.prototxt", f"{MTCNN}/det4.caffemodel", "mtcnn_det4_lnet"),
    "yufacedetectnet_v1": (f"{YUNET}/yufacedetectnet-open-v1.prototxt", f"{YUNET}/yufacedetectnet-open-v1.caffemodel",
                           None),
    "yufacedetectnet_v2": (f"{YUNET}/yufacedetectnet-open-v2.prototxt", f"{YUNET}/yufacedetectnet-open-v2.caffemodel",
                           None),
    "ultralight_rfb320": (f"{ULTRA}/RFB-320/RFB-320.prototxt", f"{ULTRA}/RFB-320/RFB-320.caffemodel", None),
    "ultralight_slim320": (f"{ULTRA}/Slim-320/slim-320.prototxt", f"{ULTRA}/Slim-320/slim-320.caffemodel", None),
    "mobilenet_ssd": (f"{SSD}/deploy.prototxt", None, None),  # BatchNorm + Scale; no class passes 0.25 here
    "mobilenet_ssd_voc": (f"{SSD}/voc/MobileNetSSD_deploy.prototxt", None, None),  # BN merged; 100 detections
    "pspnet_se_resnet50": (PSPNET, None, "pspnet"),
}
#: Over ~5 s each on two cores (PSPNet: 177 GMAC at 513 x 513, about two minutes for the three backends).
SLOW = {"pspnet_se_resnet50", "mobilenet_ssd"}


def face_image() -> np.ndarray:
    """A 1x3x240x320 natural image: the MTCNN O-Net face crops (real photo pixels), resized and tiled."""
    crops = npz(GOLDEN / "nets" / "mtcnn_det3_onet" / "inputs.npz")["data"]  # (2, 3, 48, 48) in [-1, 1]
    tiles = [cv2.resize(np.ascontiguousarray(c.transpose(2, 1, 0)), (160, 240)) for c in crops]  # C,W,H -> H,W,C
    image = np.concatenate(tiles, axis=1)  # 240 x 320 x 3
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None]).astype(np.float32)


def model_inputs(case: str | None, input_names: list[str]) -> dict[str, np.ndarray]:
    """The model's inputs: a golden case's image, the face image, or (PSPNet) the face image scaled to 513 x 513
    with its unused ``data_dim`` input zero."""
    if case == "pspnet":
        image = cv2.resize(face_image()[0].transpose(1, 2, 0), (513, 513), interpolation=cv2.INTER_LINEAR)
        data = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
    else:
        data = face_image() if case is None else npz(GOLDEN / "nets" / case / "inputs.npz")["data"]
    return {name: data if i == 0 else np.zeros((1, 1, 1, 2), np.float32) for i, name in enumerate(input_names)}


def load(prototxt: Path, weights: Path | None, case: str | None, tmp_path: Path):
    """The runtime net shaped for its inputs, the inputs, and the weights file OpenCV reads (the recipe weights
    written as a .caffemodel where the corpus has none)."""
    g = prototxt2py.graph(prototxt, infer=False)
    feed = model_inputs(case, [g.values[v].blob for v in g.inputs])
    shapes = {k: list(v.shape) for k, v in feed.items()}
    if weights is not None:
        return prototxt2py.load(prototxt, weights=weights, input_shapes=shapes), feed, weights
    net = prototxt2py.load(prototxt, input_shapes=shapes)
    recipe_weights(net, 0)
    with torch.no_grad():  # the recipe draws BatchNorm variances like weights: keep them valid
        for name, blob in net.named_buffers():
            if name.endswith(".variance"):
                blob.abs_()
    buf = io.BytesIO()
    write_caffemodel(net, buf)
    weights = tmp_path / "recipe.caffemodel"
    weights.write_bytes(buf.getvalue())
    return net, feed, weights


def check_outputs(name: str, net, got: dict[str, np.ndarray], theirs: dict[str, np.ndarray], backend: str) -> None:
    producers = {net.graph.values[v].blob: n.type for n in net.graph.nodes for v in n.outputs}
    for blob, want in theirs.items():
        what = f"{name} ({backend}): blob '{blob}'"
        if producers[blob] == "DetectionOutput":
            assert got[blob].shape[:2] == (1, 1) and got[blob].shape[3] == 7, got[blob].shape
            assert_same_detections(detection_rows(got[blob], False), detection_rows(want, True), what)
            continue
        assert got[blob].size == want.size, f"{what}: {got[blob].shape} vs OpenCV {want.shape}"
        np.testing.assert_allclose(got[blob].reshape(want.shape), want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                   err_msg=what)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] * (n in SLOW)) for n in sorted(MODELS)])
def test_same_outputs_as_opencv(name: str, tmp_path: Path) -> None:
    """Runtime and onnxruntime (our ONNX export) against OpenCV; runtime and onnxruntime give the same
    number of detection rows and the same detections."""
    prototxt, weights, case = MODELS[name]
    prototxt, weights = CORPUS / prototxt, None if weights is None else CORPUS / weights
    if not prototxt.exists() or (weights is not None and not weights.exists()):
        pytest.skip("corpus model not available")
    net, feed, weights = load(prototxt, weights, case, tmp_path)
    outputs = [b for b in net.output_names if b not in feed]
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in net(**{k: torch.from_numpy(v) for k, v in feed.items()}).items()}
    session = ort.InferenceSession(to_onnx_model(net).SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_out = dict(zip(outputs, session.run(outputs, {i.name: feed[i.name] for i in session.get_inputs()}),
                        strict=True))
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    consumed = {net.graph.values[v].blob for n in net.graph.nodes for v in n.inputs}
    for k, v in feed.items():
        if k in consumed:  # OpenCV refuses to be fed an input no layer reads (PSPNet's data_dim)
            cv_net.setInput(v, k)
    theirs = dict(zip(outputs, cv_net.forward(outputs), strict=True))
    check_outputs(name, net, ours, theirs, "runtime")
    check_outputs(name, net, onnx_out, theirs, "onnxruntime")
    producers = {net.graph.values[v].blob: n.type for n in net.graph.nodes for v in n.outputs}
    for blob in outputs:
        if producers[blob] == "DetectionOutput":
            # paired: backbones differing in the last bit may swap near-equal scores (the order itself is checked
            # bit for bit on equal inputs in test_onnx_export)
            assert onnx_out[blob].shape == ours[blob].shape, (onnx_out[blob].shape, ours[blob].shape)
            assert_same_detections(detection_rows(onnx_out[blob], False), detection_rows(ours[blob], False), blob)


def test_face_detectors_see_a_face(tmp_path: Path) -> None:
    """The assembled image is a meaningful input: the detectors agree there is at least one confident face."""
    for name in ("yufacedetectnet_v2", "ultralight_rfb320"):
        prototxt, weights, _ = MODELS[name]
        if not (CORPUS / weights).exists():
            pytest.skip("corpus model not available")
        net, feed, _ = load(CORPUS / prototxt, CORPUS / weights, None, tmp_path)
        with torch.no_grad():
            out = net(**{k: torch.from_numpy(v) for k, v in feed.items()})
        scores = out["detection_out"][..., 2] if "detection_out" in out else out["scores"][..., 1]
        assert float(scores.max()) > 0.5, name


def test_paths_exist() -> None:
    """Guard against the table silently skipping everything."""
    files = [p for prototxt, weights, _ in MODELS.values() for p in (prototxt, weights) if p is not None]
    assert all((CORPUS / p).exists() for p in files) or not Path(CORPUS).exists()


PSROI_NET = """
layer {{ name: "in" type: "Input" top: "x" top: "rois"
        input_param {{ shape {{ dim: 2 dim: {c} dim: 13 dim: 17 }} shape {{ dim: 6 dim: 5 }} }} }}
layer {{ name: "psroi" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y"
        psroi_pooling_param {{ output_dim: {d} group_size: {g} spatial_scale: 0.0625 }} }}
"""


@pytest.mark.parametrize("d,g", [(3, 3), (2, 7)])
def test_psroi_pooling_same_as_opencv(d: int, g: int, tmp_path: Path) -> None:
    """R-FCN's PSROIPooling: runtime and onnxruntime against OpenCV's own implementation, with ROIs that are
    clipped, tiny (bins of less than a pixel), on both images and with half-pixel corners."""
    path = tmp_path / "psroi.prototxt"
    path.write_text(PSROI_NET.format(c=d * g * g, d=d, g=g))
    net = prototxt2py.load(path)
    x = np.random.default_rng(3).standard_normal((2, d * g * g, 13, 17)).astype(np.float32)
    rois = np.array([[0, 0, 0, 100, 100], [1, 10.5, 20.5, 200, 150], [0, 150, 100, 160, 110],
                     [1, -20, -20, 500, 400], [0, 33.3, 47.9, 33.3, 47.9], [1, 255.5, 190.2, 300, 250]], np.float32)
    with torch.no_grad():
        ours = net(x=torch.from_numpy(x), rois=torch.from_numpy(rois))["y"].numpy()
    session = ort.InferenceSession(to_onnx_model(net).SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["y"], {"x": x, "rois": rois})
    cv_net = cv2.dnn.readNetFromCaffe(str(path))
    cv_net.setInput(x, "x")
    cv_net.setInput(rois, "rois")
    theirs = cv_net.forward("psroi")
    assert np.abs(theirs).max() > 0.1  # not all bins empty
    for got, what in ((ours, "runtime"), (onnx_out, "onnxruntime")):
        np.testing.assert_allclose(got, theirs, rtol=1e-5, atol=1e-6, err_msg=what)


def test_face_demo_detections_equal_opencv(tmp_path: Path) -> None:
    """examples/detect_faces.py (the README's demo): on scikit-image's astronaut, onnxruntime on our export and
    the runtime give OpenCV's detections; the one confident face is the astronaut's (upper middle)."""
    pytest.importorskip("skimage")
    import importlib.util

    spec = importlib.util.spec_from_file_location("detect_faces", ROOT / "examples" / "detect_faces.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    if not demo.WEIGHTS.exists():
        pytest.skip("corpus model not available")
    rgb = demo.astronaut()
    blob = demo.preprocess(rgb)
    cv_net = cv2.dnn.readNetFromCaffe(str(demo.PROTOTXT), str(demo.WEIGHTS))
    cv_net.setInput(blob)
    want = detection_rows(cv_net.forward("detection_out"), True)
    assert len(want) > 1
    for backend in ("onnx", "runtime"):
        got = demo.detections(demo.PROTOTXT, demo.WEIGHTS, blob, backend)
        assert_same_detections(detection_rows(got, False), want, f"demo ({backend})")
    (face,) = demo.faces(got)
    _, _, score, x0, y0, x1, y1 = face
    assert score > 0.99 and 0.25 < x0 < x1 < 0.6 and 0.05 < y0 < y1 < 0.4, face
    demo.draw(rgb, demo.faces(got), tmp_path / "faces.png")
    assert cv2.imread(str(tmp_path / "faces.png")).shape == (320, 320, 3)
    assert (ROOT / "docs" / "astronaut_faces.png").stat().st_size < 200_000


PIXEL_DETECTION_NET = """
input: "loc" input_shape {{ dim: 1 dim: {loc} }}
input: "conf" input_shape {{ dim: 1 dim: {conf} }}
input: "prior" input_shape {{ dim: 1 dim: 1 dim: {prior} }}
layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"
  detection_output_param {{ num_classes: {c} share_location: {shared} background_label_id: 0
    nms_param {{ nms_threshold: 0.3 }} code_type: CENTER_SIZE keep_top_k: 25 confidence_threshold: 0.05
    variance_encoded_in_target: true normalized_bbox: false }} }}
"""


@pytest.mark.parametrize("seed", range(8))
def test_pixel_box_detection_output_same_as_opencv(seed: int, tmp_path: Path) -> None:
    """OpenCV's ``normalized_bbox: false`` (its Faster R-CNN nets: ROIs in pixels as priors without variances,
    per-class boxes): runtime and onnxruntime give OpenCV's detections. Priors on whole pixels in every other
    case, so boxes touch and share edges (where counting both edges decides an overlap). A one-off run of 200
    such cases found no difference; the same nets with pixel boxes read as normalised differ in all 200. Half the
    cases share boxes across classes (R-FCN's class-agnostic boxes, as OpenCV's R-FCN net has them)."""
    p, c = 60, 5
    shared = seed >= 4
    path = tmp_path / "det.prototxt"
    loc_classes = 1 if shared else c
    path.write_text(PIXEL_DETECTION_NET.format(loc=p * loc_classes * 4, conf=p * c, prior=p * 4, c=c,
                                               shared=str(shared).lower()))
    rng = np.random.default_rng(seed)
    corner, size = rng.uniform(0, 200, (p, 2)), rng.uniform(1, 120, (p, 2))
    prior = np.concatenate([corner, corner + size], 1).astype(np.float32)
    if seed % 2:
        prior = np.round(prior)
    logits = rng.standard_normal((p, c)) * 2
    inputs = {"loc": (rng.standard_normal((1, p * loc_classes * 4)) * 0.2).astype(np.float32),
              "conf": (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32).reshape(1, -1),
              "prior": prior.reshape(1, 1, -1)}
    cv_net = cv2.dnn.readNetFromCaffe(str(path))
    for name, value in inputs.items():
        cv_net.setInput(value, name)
    want = detection_rows(cv_net.forward("det"), True)
    assert len(want) > 5
    net = prototxt2py.load(path).eval()
    with torch.no_grad():
        ours = net(**{k: torch.from_numpy(v) for k, v in inputs.items()})["det"].numpy()
    session = ort.InferenceSession(to_onnx_model(net).SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(["det"], inputs)
    assert_same_detections(detection_rows(ours, False), want, "runtime")
    assert_same_detections(detection_rows(onnx_out, False), want, "onnxruntime")
