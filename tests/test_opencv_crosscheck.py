"""Cross-check against an independent implementation: OpenCV 4.x ``cv2.dnn.readNetFromCaffe`` on the corpus
models with their real weights gives the same outputs as our runtime on the same inputs.

Inputs are the golden cases' real (preprocessed) images where the model has a case; the face detectors get
a natural image assembled from those (OpenCV and we see the same array, which is what matters here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from golden import CORPUS, GOLDEN, npz

import prototxt2py

cv2 = pytest.importorskip("cv2")

MTCNN = "kpzhang93__MTCNN_face_detection_alignment/code/codes/MTCNNv2/model"
YUNET = "ShiqiYu__libfacedetection@96a7cc0/models/caffe"
ULTRA = "Linzaer__Ultra-Light-Fast-Generic-Face-Detector-1MB/caffe/model"

#: name -> (prototxt, caffemodel, golden nets case giving the input, or None for the face-detector image)
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
}


def face_image() -> np.ndarray:
    """A 1x3x240x320 natural image: the MTCNN O-Net face crops (real photo pixels), resized and tiled."""
    crops = npz(GOLDEN / "nets" / "mtcnn_det3_onet" / "inputs.npz")["data"]  # (2, 3, 48, 48) in [-1, 1]
    tiles = [cv2.resize(np.ascontiguousarray(c.transpose(2, 1, 0)), (160, 240)) for c in crops]  # C,W,H -> H,W,C
    image = np.concatenate(tiles, axis=1)  # 240 x 320 x 3
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None]).astype(np.float32)


def load(prototxt: Path, weights: Path, data: np.ndarray) -> prototxt2py.backends.torch_runtime.CaffeNet:
    """The net with its (single) input blob, whatever its name, shaped like ``data``."""
    g = prototxt2py.graph(prototxt, infer=False)
    (input_name,) = [g.values[v].blob for v in g.inputs]
    return prototxt2py.load(prototxt, weights=weights, input_shapes={input_name: list(data.shape)})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_outputs_as_opencv(name: str) -> None:
    prototxt, weights, case = MODELS[name]
    prototxt, weights = CORPUS / prototxt, CORPUS / weights
    if not prototxt.exists() or not weights.exists():
        pytest.skip("corpus model not available")
    data = face_image() if case is None else npz(GOLDEN / "nets" / case / "inputs.npz")["data"]
    net = load(prototxt, weights, data)
    with torch.no_grad():
        ours = net(torch.from_numpy(data))
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    cv_net.setInput(data)
    theirs = dict(zip(net.output_names, cv_net.forward(net.output_names), strict=True))
    producers = {net.graph.values[v].blob: n.type for n in net.graph.nodes for v in n.outputs}
    for blob in net.output_names:
        want, got = theirs[blob], ours[blob].numpy()
        if producers[blob] == "DetectionOutput":  # Caffe (and we) give the kept rows; OpenCV pads to keep_top_k
            assert got.shape[:2] == (1, 1) and 0 < got.shape[2] <= want.shape[2], (got.shape, want.shape)
            assert not want[:, :, got.shape[2]:].any(), "OpenCV has more detections than Caffe's rules keep"
            want = want[:, :, : got.shape[2]]
        assert got.size == want.size, f"{blob}: {got.shape} vs OpenCV {want.shape}"
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                   err_msg=f"{name}: blob '{blob}'")


def test_face_detectors_see_a_face() -> None:
    """The assembled image is a meaningful input: the detectors agree there is at least one confident face."""
    data = face_image()
    for name in ("yufacedetectnet_v2", "ultralight_rfb320"):
        prototxt, weights, _ = MODELS[name]
        if not (CORPUS / weights).exists():
            pytest.skip("corpus model not available")
        net = load(CORPUS / prototxt, CORPUS / weights, data)
        with torch.no_grad():
            out = net(torch.from_numpy(data))
        scores = out["detection_out"][..., 2] if "detection_out" in out else out["scores"][..., 1]
        assert float(scores.max()) > 0.5, name


def test_paths_exist() -> None:
    """Guard against the table silently skipping everything."""
    assert sum((CORPUS / p).exists() for p, _, _ in MODELS.values()) == len(MODELS) or not Path(CORPUS).exists()
